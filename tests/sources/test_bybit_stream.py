"""The Bybit spot and linear adapters on their loopback simulator: client pings, a refusal without
req_id, REST rate limits, and the limits on our IP that a spot and a linear source share. Shared
faults (first connection, REST fallback among them): test_stream_faults.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import pytest
from structlog.testing import capture_logs
from test_stream_faults import (
    test_unknown_symbol_fails_alone_without_reconnecting as unknown_symbol_fails_alone,
)
from venue_cases import CASE, Case, Start, Wait

from oracled.clock import ManualClock
from oracled.sim.bybit import BybitSim
from oracled.sources import ConnState
from oracled.sources.bybit import BybitLinearSource, BybitSpotSource
from oracled.sources.hostrests import HostRests

PRICES = {"BTCUSDT": 67_000.0, "ETHUSDT": 3_500.0}  # what the cases' simulator starts from


@pytest.fixture(
    params=[CASE["bybit_spot"], CASE["bybit_linear"]], ids=["bybit_spot", "bybit_linear"]
)
def case(request: pytest.FixtureRequest) -> Case:
    """Each test runs once per category: `sim` and `start` build that category's adapter."""
    return request.param  # type: ignore[no-any-return]


async def test_client_pings_keep_a_strict_venue_happy(start_config: Start, wait: Wait) -> None:
    """The adapter's JSON pings arrive on schedule: a venue that cuts non-pingers keeps it."""

    class QuickPings(BybitLinearSource):
        app_ping_interval_s: ClassVar[float | None] = 0.1

    async with BybitSim(PRICES, ping_timeout_s=0.4) as venue:
        cfg = CASE["bybit_linear"].make_config(venue, liveness_timeout_s=2.0)
        run = await start_config(cfg, [("BTC/USDT", "perp")], QuickPings)
        await wait(lambda: venue.pings_received >= 8)
        assert venue.stats.pong_timeouts == 0 and venue.stats.connections == 1
        assert run.stats.reconnects == 0 and run.stats.malformed == 0


async def test_refusal_without_req_id_still_fails_the_unknown_symbol_alone(
    sim: BybitSim, case: Case, start: Start, wait: Wait
) -> None:
    """Bybit may leave the req_id out of a refusal (as in a recorded frame): the refused topic
    still names the symbol, and everything the shared unknown-symbol test checks holds."""
    sim.error_req_id = False
    await unknown_symbol_fails_alone(case, sim, start, wait)


async def _one_poll_then_rest(sim: BybitSim, case: Case, start: Start, wait: Wait) -> Any:
    """Start one symbol on REST (the simulator set to refuse it): its first answer must rest the
    polls, so one request and none in five poll intervals, counted `rest_error`, the source down.
    Returns the running source."""
    run = await start(pairs=[case.pairs[0]])
    await wait(lambda: sim.stats.rest_requests >= 1)
    await asyncio.sleep(0.5)  # five poll intervals
    assert sim.stats.rest_requests == 1
    assert run.stats.dropped["rest_error"] == 1 and run.state() is ConnState.DOWN
    return run


@pytest.mark.parametrize(
    ("code", "reset_ms", "window_s"),
    [(10006, 2_000, 1.0), (10006, 0, 1.0), (10018, 0, 5.0)],
    ids=["10006-reset-ahead", "10006-no-reset", "10018"],
)
async def test_a_rate_limit_code_rests_polls_then_they_go_on(
    sim: BybitSim,
    case: Case,
    start: Start,
    wait: Wait,
    code: int,
    reset_ms: int,
    window_s: float,
) -> None:
    """Bybit says a rate limit inside HTTP 200 (retCode 10006 "Too many visits!", or 10018 for
    the IP limit) with ``X-Bapi-Limit-Reset-Timestamp``. Polls rest until that reset when it
    lies ahead, else the API limit's 1 s window (10018: the IP limit's 5 s): one request, none
    in five poll intervals, counted `rest_error`, logged `rest rate limited` with the wait; the
    one symbol polled is not blamed; after the wait polls go on and price. Before, the code was
    read as a refusal of that symbol, which was marked failed and never polled again. The wait
    until a reset is the reset's lead less the time the answer took to be read: at most the
    time between the start and the check, however long that was."""
    sim.ws_enabled, sim.rest_status = False, 429
    sim.rate_limit_code, sim.rate_limit_reset_ms = code, reset_ms
    with capture_logs() as logs:
        before = time.time()  # the wall clock: both the stamp and the wait are read on it
        run = await _one_poll_then_rest(sim, case, start, wait)
        read_within_s = time.time() - before  # the answer was sent and read meanwhile
        sim.rest_status = None
        await wait(lambda: run.state() is ConnState.POLLING, within_s=reset_ms / 1000 + 10.0)
    assert run.stats.failed_instruments == {}
    limited = [e for e in logs if e["event"] == "rest rate limited"]
    assert [e["status"] for e in limited] == [429]
    if reset_ms:
        lead_s = reset_ms / 1000
        assert lead_s - read_within_s <= limited[0]["delay_s"] <= lead_s
    else:
        assert limited[0]["delay_s"] == window_s


def _garbled(digits: str, form: str) -> str:
    """`digits` written as int() reads them and no venue sends them."""
    if form == "underscores":
        return f"{digits[:4]}_{digits[4:]}"
    if form == "plus":
        return f"+{digits}"
    return digits.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))


@pytest.mark.parametrize("form", ["underscores", "plus", "arabic-indic", "1e400", "inf"])
async def test_a_reset_timestamp_that_is_no_time_rests_the_default_window(
    sim: BybitSim, case: Case, start: Start, wait: Wait, form: str
) -> None:
    """A 10006 whose X-Bapi-Limit-Reset-Timestamp is not ASCII digits names no reset: polls
    rest the API limit's 1 s window (the recorded wait and the `rest rate limited` line), go
    on after it, and the text is logged as `header refused`. Before, int() read a reset 30 s
    ahead written with an underscore, a plus sign or Arabic-Indic digits, and polls rested
    those 30 s."""
    ahead = str(int(time.time() * 1000) + 30_000)
    text = form if form in ("1e400", "inf") else _garbled(ahead, form)
    sim.ws_enabled, sim.rest_status, sim.rate_limit_reset_text = False, 429, text
    with capture_logs() as logs:
        run = await start(pairs=[case.pairs[0]])
        await wait(lambda: sim.stats.rest_requests >= 2)
    assert run.source._retry_after_s == 1.0
    assert {e["delay_s"] for e in logs if e["event"] == "rest rate limited"} == {1.0}
    refused = {(e["header"], e["text"]) for e in logs if e["event"] == "header refused"}
    assert refused == {("X-Bapi-Limit-Reset-Timestamp", repr(text))}


class ShortBanSpot(BybitSpotSource):
    rest_ip_ban_s: ClassVar[float] = 1.0  # the documented 10 minutes, test-sized


class ShortBanLinear(BybitLinearSource):
    rest_ip_ban_s: ClassVar[float] = 1.0


async def test_an_ip_ban_403_rests_polls_for_the_documented_ten_minutes(
    sim: BybitSim, case: Case, start: Start, wait: Wait
) -> None:
    """Past the IP limit Bybit answers HTTP 403 "access too frequent": the IP is banned for at
    least 10 minutes (v5 rate-limit page). One request, then none in five poll intervals;
    counted `rest_error`, the source down, no symbol blamed, and one `rest rate limited` line
    with the 600 s wait and the venue's words. Before, a 403 was a failed poll like any other,
    sent again every interval into the ban."""
    sim.ws_enabled, sim.rest_status = False, 403
    with capture_logs() as logs:
        run = await _one_poll_then_rest(sim, case, start, wait)
    assert run.stats.failed_instruments == {} and run.quotes == []
    limited = [e for e in logs if e["event"] == "rest rate limited"]
    assert [(e["delay_s"], e["error"]) for e in limited] == [
        (600.0, "HTTP 403: access too frequent")
    ]


async def test_polls_go_on_once_the_ip_ban_is_over(
    sim: BybitSim, case: Case, start: Start, wait: Wait
) -> None:
    """With the ban shortened to 1 s and lifted during it: polls rest the ban's 1 s, the first
    poll after the rest finds the ban over and prices, and the source is polling again; the one
    403 is the only failed request, and no symbol is blamed."""
    sim.ws_enabled, sim.rest_status = False, 403
    cls = ShortBanSpot if case.id == "bybit_spot" else ShortBanLinear
    with capture_logs() as logs:
        run = await start(pairs=[case.pairs[0]], cls=cls)
        await wait(lambda: sim.stats.rest_requests >= 1)
        sim.rest_status = None  # the ban lifts while the source rests
        await wait(lambda: run.state() is ConnState.POLLING)
    assert sim.stats.rest_requests >= 2 and run.stats.dropped["rest_error"] == 1
    assert run.stats.failed_instruments == {} and len(run.quotes) >= 1
    assert [e["delay_s"] for e in logs if e["event"] == "rest rate limited"] == [1.0]


async def test_a_frozen_spot_book_repushed_by_the_venue_ages(
    start_config: Start, wait: Wait
) -> None:
    """A level-1 book that stops changing is pushed again by the venue (every 3 s there, every
    0.1 s here) with its `u` and `cts` and a new `ts`: the stream stays up, no quote newer than
    the book's last change is made, and each re-push is counted as `unchanged`. Before, every
    re-push was a quote stamped with its new `ts`, and the frozen book looked fresh for ever."""
    async with BybitSim(PRICES, rate_hz=40.0, repush_s=0.1) as venue:
        cfg = CASE["bybit_spot"].make_config(venue, liveness_timeout_s=2.0)
        run = await start_config(cfg, [("BTC/USDT", "spot")])
        await wait(lambda: len(run.quotes) >= 5)
        venue.freeze(None)
        await wait(lambda: venue.repushed >= 2)  # the frames before the freeze are all in
        seen = len(run.quotes)
        newest = max(q.venue_ts or 0 for q in run.quotes)
        await wait(lambda: venue.repushed >= 8)
        await wait(lambda: run.stats.dropped["unchanged"] >= 7)
        assert len(run.quotes) == seen and max(q.venue_ts or 0 for q in run.quotes) == newest
        assert run.stats.state is ConnState.STREAMING and run.stats.reconnects == 0
        venue.reset()  # the book moves again: quotes follow
        await wait(lambda: len(run.quotes) > seen)
        assert (run.quotes[-1].venue_ts or 0) > newest


#: The test clock's start: past every reset stamp the simulator sends, so that a rate limit
#: rests its window (10006: 1 s, 10018: 5 s), not the time until a stamp.
_AHEAD = 4_000_000_000_000


async def _spot_and_linear(
    venue: BybitSim, start_config: Start, wait: Wait, clock: ManualClock
) -> tuple[Any, Any]:
    """A spot and a linear source on one simulator (one REST host), both polling (the stream is
    refused), on `clock` and sharing one `HostRests`, as the service's sources do."""
    venue.ws_enabled = False
    rests = HostRests()
    runs = [
        await start_config(CASE[kind].make_config(venue), [pair], clock=clock, host_rests=rests)
        for kind, pair in (
            ("bybit_spot", ("BTC/USDT", "spot")),
            ("bybit_linear", ("BTC/USDT", "perp")),
        )
    ]
    await wait(lambda: all(run.state() is ConnState.POLLING for run in runs))
    return runs[0], runs[1]


@pytest.mark.parametrize(
    ("code", "delay_s", "error"),
    [
        (403, 600.0, "HTTP 403: access too frequent"),
        (10018, 5.0, "10018: Too many requests from this IP"),
    ],
    ids=["403-ban", "10018-ip-limit"],
)
async def test_a_limit_on_our_ip_met_by_linear_rests_spot_on_the_same_host(
    start_config: Start, wait: Wait, code: int, delay_s: float, error: str
) -> None:
    """The IP limit and its 403 ban count all our IP's traffic to the host, spot's and linear's
    alike. Once the linear source meets one, the spot source polling the same host sends no
    request until the instant the linear source rests to (600 s, or 10018's 5 s, on the injected
    clock, which stands still meanwhile): counted at the simulator, none in five poll intervals,
    and one `rest host rested` line naming the linear source and its answer; spot counts no
    failed request of its own. Once the clock passes that instant, spot polls and prices again.
    Before, each source learnt the ban from its own refused request."""
    clock = ManualClock(_AHEAD)
    async with BybitSim(PRICES) as venue:
        with capture_logs() as logs:
            spot, linear = await _spot_and_linear(venue, start_config, wait, clock)
            if code == 403:
                venue.rest_status_of["linear"] = 403
            else:
                venue.rate_limit_code, venue.rest_status_of["linear"] = code, 429
            await wait(lambda: linear.stats.dropped["rest_error"] == 1)
            await wait(lambda: any(e["event"] == "rest host rested" for e in logs))
            sent = venue.rest_requests_of["spot"]  # spot's rounds before it saw the rest are done
            await asyncio.sleep(0.5)  # five poll intervals
            assert venue.rest_requests_of["spot"] == sent
            assert spot.state() is ConnState.DOWN and spot.stats.dropped["rest_error"] == 0
            clock.advance(int(delay_s * 1000))
            await wait(lambda: venue.rest_requests_of["spot"] > sent)
            await wait(lambda: spot.state() is ConnState.POLLING)
    rested = [
        (e["source"], e["by"], e["delay_s"], e["error"])
        for e in logs
        if e["event"] == "rest host rested"
    ]
    assert rested == [("bybit_spot", "bybit_linear", delay_s, error)]
    assert spot.stats.failed_instruments == {} == linear.stats.failed_instruments


async def test_an_api_limit_met_by_linear_leaves_spot_polling(
    start_config: Start, wait: Wait
) -> None:
    """10006, the API limit, is counted per UID and endpoint, not per IP: the linear source that
    meets it rests alone, and the spot source on the same host polls on at its interval."""
    async with BybitSim(PRICES) as venue:
        with capture_logs() as logs:
            spot, linear = await _spot_and_linear(venue, start_config, wait, ManualClock(_AHEAD))
            venue.rest_status_of["linear"] = 429  # 10006: linear rests the API window, 1 s
            await wait(lambda: linear.stats.dropped["rest_error"] == 1)
            sent = venue.rest_requests_of["spot"]
            await wait(lambda: venue.rest_requests_of["spot"] >= sent + 3)
    assert spot.state() is ConnState.POLLING and spot.stats.dropped["rest_error"] == 0
    assert not any(e["event"] == "rest host rested" for e in logs)
