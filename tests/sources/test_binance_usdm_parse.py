"""Decoding Binance USD-M frames: the documented frames, every kind of bad frame."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from parse_cases import BINANCE_USDM, Harness, open_harness

from oracled.model import Quote
from oracled.sim.binance_usdm import GARBAGE
from oracled.sources.binance_usdm import BinanceUsdmSource

FIXTURES = Path(__file__).parent.parent / "fixtures" / "binance_usdm"


def combined(stream: str, name: str) -> str:
    """A recorded raw payload, byte for byte, inside the combined-stream envelope."""
    return f'{{"stream":"{stream}","data":{(FIXTURES / name).read_text()}}}'


BOOK = combined("bnbusdt@bookTicker", "ws_bookTicker.json")
MARK = combined("btcusdt@markPrice@1s", "ws_markPrice.json")
# Receive times just after the frames' venue times (a quote received before its venue time by
# more than the clock-skew bound is dropped as `future`): the bookTicker's E, the REST rows' time.
RECV = 1568014460893 + 5
REST_RECV = 1589437530011 + 5


@pytest.fixture
async def harness() -> AsyncIterator[Harness[BinanceUsdmSource]]:
    async with open_harness(BINANCE_USDM) as h:
        yield h


@pytest.fixture
def source(harness: Harness[BinanceUsdmSource]) -> BinanceUsdmSource:
    return harness.source


@pytest.fixture
def quotes(harness: Harness[BinanceUsdmSource]) -> list[Quote]:
    return harness.quotes


def test_documented_book_ticker_becomes_a_perp_quote_with_event_time(
    source: BinanceUsdmSource, quotes: list[Quote]
) -> None:
    """The docs' bookTicker gives one perp quote; venue_ts is the event time E."""
    source.on_message(BOOK, RECV)
    assert quotes == [
        Quote("bu", "BNB/USDT", RECV, bid=25.3519, ask=25.3652, kind="perp", venue_ts=1568014460893)
    ]
    assert source.stats.quotes == 1 and source.stats.malformed == 0


def test_older_or_repeated_update_ids_are_dropped_as_stale(
    source: BinanceUsdmSource, quotes: list[Quote]
) -> None:
    """A frame whose update id u is not newer than the last applied one never overrides it."""
    newer = BOOK.replace('"u": 400900217', '"u": 400900300').replace("25.36520000", "25.40000000")
    source.on_message(newer, RECV + 1)
    source.on_message(BOOK, RECV + 2)  # older u
    source.on_message(newer, RECV + 3)  # duplicate
    assert [q.ask for q in quotes] == [25.4]
    assert source.stats.dropped == {"stale": 2}
    assert source.stats.malformed == 0


def test_a_bad_frame_does_not_advance_the_sequence(
    source: BinanceUsdmSource, quotes: list[Quote]
) -> None:
    """A refused frame with a high update id does not block the good frames that follow."""
    bad = BOOK.replace('"u": 400900217', '"u": 999999999999').replace("25.35190000", "NaN")
    source.on_message(bad, RECV + 1)
    source.on_message(BOOK, RECV + 2)
    assert len(quotes) == 1
    assert source.stats.dropped == {"not_finite": 1}


async def test_a_new_connection_forgets_update_ids(
    source: BinanceUsdmSource, quotes: list[Quote]
) -> None:
    """Update ids are compared within one connection only (a venue reset cannot freeze a pair)."""
    source.on_message(BOOK, RECV + 1)
    assert await source.connect_url() == "wss://fstream.binance.com/public/stream"
    source.on_message(BOOK, RECV + 2)
    assert len(quotes) == 2


def test_a_mark_price_frame_is_a_wrong_shape_not_a_quote(
    source: BinanceUsdmSource, quotes: list[Quote]
) -> None:
    """A markPriceUpdate (a stream the source does not subscribe) is dropped as `shape` and
    counted: its mark or index price never becomes a quote."""
    source.on_message(MARK, RECV)
    assert quotes == []
    assert source.stats.dropped == {"shape": 1}


def test_subscriptions_and_url_follow_the_split_endpoints(
    source: BinanceUsdmSource, quotes: list[Quote]
) -> None:
    """Book tickers are read from /public, as lower-case stream names."""
    assert source.stream_url() == "wss://fstream.binance.com/public/stream"
    assert source.subscribe_message(3, ["BTCUSDT"]) == (
        '{"method":"SUBSCRIBE","params":["btcusdt@bookTicker"],"id":3}'
    )


def test_rest_asks_for_one_symbol_alone_and_for_several_all_at_once(
    source: BinanceUsdmSource, quotes: list[Quote]
) -> None:
    """One symbol costs weight 2 with `symbol=`; several take the all-symbols answer (weight 5)."""
    url = "https://fapi.binance.com/fapi/v1/ticker/bookTicker"
    assert source.rest_request(["BTCUSDT"]) == (url, {"symbol": "BTCUSDT"})
    assert source.rest_request(["BTCUSDT", "BNBUSDT"]) == (url, {})


def test_rest_bodies_become_quotes_and_unasked_rows_are_skipped(
    source: BinanceUsdmSource, quotes: list[Quote]
) -> None:
    """An all-symbols list and a single object both decode; rows not configured are ignored."""

    def row(symbol: str, bid: str, ask: str) -> str:
        return (
            f'{{"symbol":"{symbol}","bidPrice":"{bid}","bidQty":"1.0","askPrice":"{ask}",'
            '"askQty":"2.0","time":1589437530011,"lastUpdateId":1027024}'
        )

    body = f"[{row('BTCUSDT', '4.00000000', '4.00000200')},{row('XYZUSDT', '1', '2')}]"
    source.on_rest(body.encode(), REST_RECV)
    source.on_rest(row("BNBUSDT", "0", "1").encode(), REST_RECV + 1)
    assert quotes == [
        Quote(
            "bu", "BTC/USDT", REST_RECV, bid=4.0, ask=4.000002, kind="perp", venue_ts=1589437530011
        )
    ]
    assert source.stats.dropped == {"non_positive": 1}
    source.on_rest(b'{"code":-1121,"msg":"Invalid symbol."}', REST_RECV + 2)
    assert source.stats.dropped["shape"] == 1


def _outcome(source: BinanceUsdmSource, quotes: list[Quote]) -> object:
    return list(quotes), dict(source._last_u), dict(source.stats.dropped), source.stats.malformed


def _compact(frame: str) -> str:
    return json.dumps(json.loads(frame), separators=(",", ":"))


FRAMES = [
    _compact(BOOK),
    BOOK,
    _compact(BOOK.replace('"u": 400900217', '"u": 400900100')),  # older than the first
    _compact(BOOK.replace("25.35190000", "1e1")),
    _compact(BOOK.replace("BNBUSDT", "XRPUSDT")),
    _compact(BOOK.replace('"A": "40.66000000"', '"A": 40.66')),  # a bare quantity
    _compact(BOOK.replace('"25.35190000"', "25.3519").replace('"25.36520000"', "25.3652")),
    _compact(BOOK.replace('"25.35190000"', "25.3519").replace('"25.36520000"', '"abc"')),
    _compact(BOOK.replace('"25.35190000"', "25.3519")).replace('"u":400900217,', ""),
    _compact(BOOK).replace('"e":"bookTicker",', ""),
    *GARBAGE[2:],
]


@pytest.mark.parametrize("frame", FRAMES)
def test_fast_path_agrees_with_the_text_path(
    source: BinanceUsdmSource, quotes: list[Quote], frame: str
) -> None:
    """Prices read straight into floats give the same quotes, update ids and drop reasons as the
    text path that every refused frame takes (both after the same first frame)."""
    first = _compact(BOOK.replace('"u": 400900217', '"u": 400900200'))
    source.on_message(first, RECV + 1)
    source.on_message(frame, RECV + 2)
    fast = _outcome(source, quotes)
    quotes.clear()
    source._last_u.clear()
    source.stats.dropped.clear()
    source.stats.malformed = 0
    source._slow(first, RECV + 1)
    source._slow(frame, RECV + 2)
    assert _outcome(source, quotes) == fast


def test_bare_number_prices_give_the_same_quote_as_quoted_ones(
    source: BinanceUsdmSource, quotes: list[Quote]
) -> None:
    """A price sent as a bare JSON number instead of a quoted decimal is a valid price (as on spot):
    the documented frame with bare prices and sizes gives exactly the quote of the quoted frame,
    spaced or compact, with or without the optional update id."""
    bare = BOOK
    for text in ("25.35190000", "31.21000000", "25.36520000", "40.66000000"):
        bare = bare.replace(f'"{text}"', text)
    assert '"25.35190000"' not in bare
    frames = [BOOK, bare, _compact(bare), _compact(bare).replace('"u":400900217,', "")]
    assert '"u"' not in frames[-1]
    for frame in frames:
        source._last_u.clear()  # each frame on its own, not as a replay of the one before
        source.on_message(frame, RECV)
    assert len(quotes) == 4 and all(q == quotes[0] for q in quotes)
    assert quotes[0].bid == 25.3519 and source.stats.malformed == 0


@pytest.mark.parametrize("event_time", ["1568014460893.5", '"soon"', "[]"])
def test_book_with_an_unreadable_event_time_is_dropped_not_quoted_without_it(
    source: BinanceUsdmSource, quotes: list[Quote], event_time: str
) -> None:
    """A book ticker whose event time E is not an integer is a frame of the wrong shape: dropped
    and counted, never quoted. It used to fall through to the spot text path, which quoted it
    without its venue time, past the update-id check, stamped as received at time 0."""
    frame = BOOK.replace('"E": 1568014460893', f'"E": {event_time}')
    assert frame != BOOK
    source.on_message(frame, RECV)
    assert quotes == []
    assert source.stats.dropped == {"shape": 1} and source.stats.malformed == 1
    assert source.stats.last_quote_ms is None


def _book(u: int, event_ts: int, ask: str = "25.36520000") -> str:
    """The recorded book ticker with another update id, event time and ask."""
    return (
        BOOK.replace('"u": 400900217', f'"u": {u}')
        .replace('"E": 1568014460893', f'"E": {event_ts}')
        .replace("25.36520000", ask)
    )


def test_one_far_ahead_update_id_does_not_freeze_the_symbol(
    source: BinanceUsdmSource, quotes: list[Quote]
) -> None:
    """A frame with good prices and u = 10^15 is used, but the next frames (ids back where they
    were, event times moving on) are not refused until the next reconnect: the far-ahead id is
    forgotten at once (counted and logged as a sequence reset) and the symbol streams on."""
    e = 1568014460893
    source.on_message(_book(400900217, e), RECV)
    source.on_message(_book(10**15, e + 1), RECV + 1)
    source.on_message(_book(400900218, e + 2, "25.40000000"), RECV + 2)
    source.on_message(_book(400900219, e + 3, "25.41000000"), RECV + 3)
    assert [q.ask for q in quotes] == [25.3652, 25.3652, 25.4, 25.41]
    assert source.stats.sequence_resets == 1
    assert source.stats.dropped == {}


def test_an_id_a_little_ahead_is_forgotten_after_five_newer_frames_in_a_row(
    source: BinanceUsdmSource, quotes: list[Quote]
) -> None:
    """An id only a little ahead is believed at first (frames are refused as stale); the fifth
    frame in a row that it refuses while newer by event time resets it. Replays (older event
    times) are dropped without counting towards a reset."""
    e = 1568014460893
    source.on_message(_book(400900217 + 10**6, e), RECV)
    for i in range(1, 5):
        source.on_message(_book(400900217 + i, e + i), RECV + i)
        source.on_message(_book(400900217 + i, e - 1), RECV + i)  # a replay: older
    assert len(quotes) == 1 and source.stats.dropped == {"stale": 8}
    source.on_message(_book(400900222, e + 5, "25.40000000"), RECV + 5)
    assert [q.ask for q in quotes] == [25.3652, 25.4]
    assert source.stats.sequence_resets == 1
    source.on_message(_book(400900221, e + 6), RECV + 6)  # below the new bar: stale again
    assert len(quotes) == 2 and source.stats.dropped == {"stale": 9}


@pytest.mark.parametrize("event_ts", [-1, -(10**20)])
def test_an_event_time_before_1970_is_a_bad_number_not_a_quote(
    event_ts: int, harness: Harness[BinanceUsdmSource]
) -> None:
    """Frames are ordered by update id, so nothing refused an `E` before 1970: it is
    `bad_number`, and the update id stays where it was (found by test_adapter_fuzz)."""
    sample = BINANCE_USDM.stream_numbers
    assert sample is not None
    frame = json.loads(sample.body)
    frame["data"]["E"] = event_ts
    harness.source.on_message(json.dumps(frame), sample.recv_ts)
    assert harness.quotes == []
    assert harness.stats.dropped == {"bad_number": 1}
    harness.source.on_message(sample.body, sample.recv_ts)  # the same id: not refused as stale
    assert len(harness.quotes) == 1
