"""A frame stamped further ahead of its receive time than the clock-skew bound is refused by the
source itself (`future`), before it can become a venue's per-symbol ordering bar.

Found by exploratory testing: the core refused such a quote, but the adapter had already moved
its bar to the frame's time, so every later good frame of that instrument was dropped as
`out_of_order` (or `stale`) until the next reconnect, up to 23 h, while the source looked up.
Run for each venue that orders frames by venue time, on one of its recorded frames re-stamped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from parse_cases import (
    BITSTAMP,
    BYBIT_LINEAR,
    KRAKEN,
    OKX,
    PYTH,
    ParseCase,
    bitstamp_book,
    open_harness,
    recorded,
    recorded_lines,
)

from oracled.config import DEFAULT_MAX_CLOCK_SKEW_MS


@dataclass(frozen=True)
class Stamped:
    """A venue's recorded frame and how to stamp it with another venue time."""

    case: ParseCase[Any]
    at: Callable[[int], str]  # the frame with its venue time set to this many ms
    ts: int  # the recorded venue time, ms
    step: int = 1  # the venue time's resolution, ms


_OKX = recorded_lines("okx", "ws_tickers.jsonl")[2]
_BITSTAMP = bitstamp_book("usdtusd")
_KRAKEN = recorded("kraken", "ws_ticker_snapshot.json")
_BYBIT = recorded("bybit", "ws_tickers_linear_snapshot.json")
_PYTH = recorded("pyth_hermes", "v2_latest_parsed_btc.json").strip()


def _rfc3339(ms: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )


def _bybit_delta(ms: int) -> str:
    """A linear ticker delta with both sides (the fast path's in-place merge)."""
    return (
        '{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT",'
        f'"bid1Price":"17215.00","ask1Price":"17216.00"}},"cs":24987956060,"ts":{ms}}}'
    )


VENUES = [
    pytest.param(
        Stamped(
            OKX, lambda ms: _OKX.replace('"ts":"1652459224956"', f'"ts":"{ms}"'), 1652459224956
        ),
        id="okx",
    ),
    pytest.param(
        Stamped(
            BITSTAMP,
            lambda ms: _BITSTAMP.replace(
                '"microtimestamp": "1641343696039184"', f'"microtimestamp": "{ms * 1000}"'
            ),
            1_641_343_696_039,
        ),
        id="bitstamp",
    ),
    pytest.param(
        Stamped(
            KRAKEN,
            lambda ms: _KRAKEN.replace('"2022-12-25T09:30:59.123456Z"', f'"{_rfc3339(ms)}"'),
            1_671_960_659_123,
        ),
        id="kraken",
    ),
    pytest.param(
        Stamped(
            BYBIT_LINEAR,
            lambda ms: _BYBIT.replace('"ts": 1673272861686', f'"ts": {ms}'),
            1673272861686,
        ),
        id="bybit_linear-snapshot",
    ),
    pytest.param(Stamped(BYBIT_LINEAR, _bybit_delta, 1673272861686), id="bybit_linear-delta"),
    pytest.param(
        Stamped(
            PYTH,
            lambda ms: _PYTH.replace('"publish_time":1708363256', f'"publish_time":{ms // 1000}'),
            1_708_363_256_000,
            step=1_000,
        ),
        id="pyth_hermes",
    ),
]


def test_the_stamping_changes_the_venue_time() -> None:
    """Each re-stamping edit finds its field (a silent no-op would make the tests below vacuous)."""
    for param in VENUES:
        (venue,) = param.values
        assert isinstance(venue, Stamped)
        assert venue.at(venue.ts + venue.step) != venue.at(venue.ts)


@pytest.mark.parametrize("venue", VENUES)
async def test_a_frame_from_far_in_the_future_is_dropped_and_later_good_frames_are_quoted(
    venue: Stamped,
) -> None:
    """Between good frames, one stamped at ten times its venue time is dropped as `future`, and
    the good frames after it are quoted: it did not become the symbol's ordering bar (before,
    it was emitted, the core refused it, and every later frame was dropped as out of order)."""
    ts, step = venue.ts, 100 * venue.step
    async with open_harness(venue.case) as h:
        h.source.on_message(venue.at(ts), ts + 5)
        h.source.on_message(venue.at(ts * 10), ts + 6)
        later = [ts + step, ts + 2 * step]
        for ms in later:
            h.source.on_message(venue.at(ms), ms + 5)  # each received just after its time
        assert [q.venue_ts for q in h.quotes] == [ts, *later]
        assert h.stats.dropped == {"future": 1}
        assert h.stats.malformed == 0 and h.stats.quotes == 3


@pytest.mark.parametrize("venue", VENUES)
async def test_a_venue_time_at_the_skew_bound_is_quoted_and_one_ms_past_it_is_not(
    venue: Stamped,
) -> None:
    """By default a source takes the core's default bound (2,000 ms): a venue time exactly that
    far ahead of the receive time is quoted, one a millisecond further ahead is dropped."""
    skew, ts, step = DEFAULT_MAX_CLOCK_SKEW_MS, venue.ts, venue.step
    async with open_harness(venue.case) as h:
        assert h.source.max_clock_skew_ms == skew == 2_000
        h.source.on_message(venue.at(ts + skew), ts)
        assert [q.venue_ts for q in h.quotes] == [ts + skew]
        h.source.on_message(venue.at(ts + skew + step), ts + step - 1)  # skew + 1 ms ahead
        assert len(h.quotes) == 1
        assert h.stats.dropped == {"future": 1}


@pytest.mark.parametrize("venue", VENUES)
async def test_the_bound_set_by_the_caller_is_the_one_applied(venue: Stamped) -> None:
    """A source given 5,000 ms (as the service sets `oracle.max_clock_skew_ms`) quotes a venue
    time 4,000 ms ahead, which the default bound refuses, and refuses one 5,001 ms ahead."""
    ts, step = venue.ts, venue.step
    async with open_harness(venue.case) as default:
        default.source.on_message(venue.at(ts + 4_000), ts)
        assert default.quotes == [] and default.stats.dropped == {"future": 1}
    async with open_harness(venue.case) as h:
        h.source.max_clock_skew_ms = 5_000
        h.source.on_message(venue.at(ts + 4_000), ts)
        assert [q.venue_ts for q in h.quotes] == [ts + 4_000]
        h.source.on_message(venue.at(ts + 5_000 + step), ts + step - 1)  # 5,001 ms ahead
        assert len(h.quotes) == 1
        assert h.stats.dropped == {"future": 1}
