"""Decoding Bybit v5 frames: documented frames, state merging, control frames, bad frames."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from parse_cases import BYBIT_LINEAR, BYBIT_SPOT, LAX_NUMBERS, make_source

from oracled.model import Quote
from oracled.sim.bybit import GARBAGE
from oracled.sources.bybit import BybitLinearSource, BybitSpotSource

FIXTURES = Path(__file__).parent.parent / "fixtures" / "bybit"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


LINEAR_SNAPSHOT = fixture("ws_tickers_linear_snapshot.json")
BOOK_SNAPSHOT = fixture("ws_orderbook_snapshot.json")
BOOK_DELTA = fixture("ws_orderbook_delta.json")
ACK = fixture("ws_subscribe_ack.json")
REFUSAL = fixture("ws_subscribe_error.json")
# Receive times just after the venue times (`ts`) of the frames fed: a quote received before its
# venue time by more than the clock-skew bound is dropped as `future`.
LINEAR_RECV = 1673272862086 + 5  # the linear snapshot (...1686) and the deltas after it
SPOT_RECV = 1709891679600 + 5  # the level 1 snapshot (...9000) and the deltas after it
REST_RECV = 1673859087947 + 5


class Harness:
    """Both categories' adapters, emitting into one list of quotes."""

    def __init__(
        self, spot: BybitSpotSource, linear: BybitLinearSource, quotes: list[Quote]
    ) -> None:
        self.spot, self.linear, self.quotes = spot, linear, quotes


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    quotes: list[Quote] = []
    async with aiohttp.ClientSession() as http:
        spot = make_source(BYBIT_SPOT, http, quotes)
        linear = make_source(BYBIT_LINEAR, http, quotes)
        yield Harness(spot, linear, quotes)


def test_documented_linear_ticker_snapshot_becomes_a_perp_quote(h: Harness) -> None:
    """The docs' linear ticker snapshot gives best bid/ask, last price, and venue_ts from `ts`."""
    h.linear.on_message(LINEAR_SNAPSHOT, LINEAR_RECV)
    assert h.quotes == [
        Quote(
            "bl",
            "BTC/USDT",
            LINEAR_RECV,
            price=17216.0,
            bid=17215.5,
            ask=17216.0,
            kind="perp",
            venue_ts=1673272861686,
        )
    ]
    assert h.linear.stats.malformed == 0


def test_linear_deltas_are_merged_into_the_last_full_state(h: Harness) -> None:
    """A delta without prices (a best size changed) keeps the book's prices; a delta with one
    side changes only that side."""
    h.linear.on_message(LINEAR_SNAPSHOT, LINEAR_RECV + 1)
    no_price = (
        '{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT",'
        '"bid1Size":"84.000"},"cs":24987956060,"ts":1673272861786}'
    )
    one_side = (
        '{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT",'
        '"ask1Price":"17217.00","ask1Size":"1.0"},"cs":24987956061,"ts":1673272861886}'
    )
    h.linear.on_message(no_price, LINEAR_RECV + 2)
    h.linear.on_message(one_side, LINEAR_RECV + 3)
    assert [(q.bid, q.ask, q.venue_ts) for q in h.quotes] == [
        (17215.5, 17216.0, 1673272861686),
        (17215.5, 17216.0, 1673272861786),
        (17215.5, 17217.0, 1673272861886),
    ]
    h.linear.on_message(one_side.replace("1673272861886", "1673272861000"), LINEAR_RECV + 4)
    assert h.linear.stats.dropped == {"stale": 1}
    assert len(h.quotes) == 3


def test_bad_linear_delta_is_not_merged(h: Harness) -> None:
    """A delta with a bad price is dropped whole; the kept state still quotes afterwards."""
    h.linear.on_message(LINEAR_SNAPSHOT, LINEAR_RECV + 1)
    h.linear.on_message(GARBAGE[13], LINEAR_RECV + 2)  # NaN bid and ask, far-future ts
    no_price = (
        '{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT",'
        '"ask1Size":"80.5"},"cs":24987956060,"ts":1673272861786}'
    )
    h.linear.on_message(
        no_price, LINEAR_RECV + 3
    )  # the NaN frame's far-future ts was not kept either
    assert h.linear.stats.dropped == {"not_finite": 1}
    assert [q.bid for q in h.quotes] == [17215.5, 17215.5]


def test_documented_level1_snapshot_and_delta(h: Harness) -> None:
    """A snapshot quotes its best levels; a delta removing the kept ask leaves no quote."""
    h.spot.on_message(BOOK_SNAPSHOT, SPOT_RECV + 5)
    assert h.quotes == [
        Quote(
            "bs",
            "BTC/USDT",
            SPOT_RECV + 5,
            bid=27450.0,
            ask=27451.0,
            kind="spot",
            venue_ts=1709891679000,
        )
    ]
    h.spot.on_message(BOOK_DELTA, SPOT_RECV + 6)
    assert len(h.quotes) == 1
    assert h.spot.stats.dropped == {"one_sided": 1} and h.spot.stats.malformed == 0
    refill = BOOK_DELTA.replace('"b": [["27450.00", "0.400"]]', '"b": []')
    refill = refill.replace('["27451.00", "0"]', '["27452.50", "0.3"]').replace("790", "791")
    h.spot.on_message(refill.replace("1709891679500", "1709891679600"), SPOT_RECV + 7)
    assert (h.quotes[-1].bid, h.quotes[-1].ask, h.quotes[-1].venue_ts) == (
        27450.0,
        27452.5,
        1709891679600,
    )


def test_level1_update_ids_order_the_frames(h: Harness) -> None:
    """Deltas not newer than the kept update id are stale; u = 1 (venue restart) resets."""
    h.spot.on_message(BOOK_SNAPSHOT, SPOT_RECV + 1)
    h.spot.on_message(BOOK_SNAPSHOT.replace('"type": "snapshot"', '"type": "delta"'), SPOT_RECV + 2)
    assert h.spot.stats.dropped == {"stale": 1}
    restart = BOOK_SNAPSHOT.replace('"u": 123456789', '"u": 1').replace("27450.00", "27449.75")
    h.spot.on_message(restart, SPOT_RECV + 3)
    assert h.quotes[-1].bid == 27449.75


def test_level1_level_replacement_and_removal(h: Harness) -> None:
    """A new level replaces the side; size 0 removes it only if it is the kept price."""
    h.spot.on_message(BOOK_SNAPSHOT, SPOT_RECV + 1)
    delta = (
        '{"topic":"orderbook.1.BTCUSDT","type":"delta","ts":2,"data":{"s":"BTCUSDT",'
        '"b":[["27450.00","0"],["27449.00","2.0"]],"a":[["27460.00","0"]],"u":123456790}}'
    )
    h.spot.on_message(delta, SPOT_RECV + 2)
    assert (h.quotes[-1].bid, h.quotes[-1].ask) == (27449.0, 27451.0)


@pytest.mark.parametrize("frame", [GARBAGE[i] for i in range(len(GARBAGE))])
def test_each_garbage_frame_counts_once_on_either_category(h: Harness, frame: str) -> None:
    """Every simulator garbage frame is one malformed frame for spot and for linear alike."""
    h.spot.on_message(BOOK_SNAPSHOT, SPOT_RECV + 1)  # a kept state for deltas to merge into
    h.linear.on_message(LINEAR_SNAPSHOT, LINEAR_RECV + 1)
    h.spot.on_message(frame, SPOT_RECV + 2)
    h.linear.on_message(frame, LINEAR_RECV + 2)
    assert h.spot.stats.malformed == 1 and h.linear.stats.malformed == 1
    assert len(h.quotes) == 2  # only the two snapshots


def test_acks_pongs_and_refusals(h: Harness) -> None:
    """Acks settle requests; pongs are life only; refusals fail the symbol they name."""
    src, stats = h.linear, h.linear.stats
    src._pending[3] = ("BTCUSDT",)
    src.on_message('{"success":true,"ret_msg":"","conn_id":"c","req_id":"3","op":"subscribe"}', 1)
    assert src._pending == {}
    src.on_message('{"success":true,"ret_msg":"pong","conn_id":"c","req_id":"","op":"ping"}', 2)
    src.on_message('{"req_id":"x","op":"pong","args":["1675418560633"],"conn_id":"c"}', 3)
    src.on_message(ACK, 4)  # someone else's id
    assert stats.dropped == {"unsolicited": 1} and stats.malformed == 0
    src._pending[4] = ("BTCPERP",)
    refusal = (
        '{"success":false,"ret_msg":"Invalid symbol :[tickers.BTCPERP]","conn_id":"c",'
        '"req_id":"4","op":"subscribe"}'
    )
    src.on_message(refusal, 5)
    assert stats.failed_instruments == {"BTCPERP": "Invalid symbol :[tickers.BTCPERP]"}


def test_a_refusal_without_request_id_is_matched_by_topic(h: Harness) -> None:
    """The recorded refusal has no req_id: the topic in its message picks the request."""
    src, stats = h.spot, h.spot.stats
    src.on_message(REFUSAL, 1)  # names no topic of ours: counted, blames nobody
    assert stats.dropped == {"venue_error": 1} and stats.failed_instruments == {}
    src._pending[7] = ("ETHUSDT",)
    src._pending[8] = ("BTCUSDT",)
    named = REFUSAL.replace("invalid.topic.BTCUSDT", "[orderbook.1.BTCUSDT]")
    src.on_message(named, 2)
    assert stats.failed_instruments == {"BTCUSDT": "Invalid topic: [orderbook.1.BTCUSDT]"}
    assert list(src._pending) == [7]


def test_already_subscribed_counts_as_an_ack(h: Harness) -> None:
    """A resubscribe of a live topic (after a split batch) is not a failure."""
    src = h.spot
    src._pending[9] = ("BTCUSDT",)
    src.on_message(
        '{"success":false,"ret_msg":"error:already subscribed,topic:orderbook.1.BTCUSDT",'
        '"conn_id":"c","req_id":"9","op":"subscribe"}',
        1,
    )
    assert src._pending == {} and src.stats.failed_instruments == {}


def test_messages_symbols_and_urls(h: Harness) -> None:
    """Subscribe and ping texts, topics, USDC perpetual names and URLs follow the docs."""
    assert h.spot.subscribe_message(1, ["BTCUSDT", "ETHUSDT"]) == (
        '{"op":"subscribe","args":["orderbook.1.BTCUSDT","orderbook.1.ETHUSDT"],"req_id":"1"}'
    )
    assert h.linear.subscribe_message(2, ["BTCUSDT"]) == (
        '{"op":"subscribe","args":["tickers.BTCUSDT"],"req_id":"2"}'
    )
    assert h.spot.app_ping() == '{"op":"ping"}' and h.linear.app_ping_interval_s == 20.0
    assert h.linear.symbols == ("BTCUSDT", "ETHPERP")
    assert h.spot.stream_url() == "wss://stream.bybit.com/v5/public/spot"
    assert h.linear.stream_url() == "wss://stream.bybit.com/v5/public/linear"
    assert h.spot.max_symbols_per_request == 10


def test_rest_request_and_body(h: Harness) -> None:
    """One request per category; rows not configured are skipped; error codes are counted. The
    answer's `time` is the server's clock when it answered, not a time of any book: quotes carry
    no venue time (they carried it before, and a frozen book polled looked fresh every time)."""
    url = "https://api.bybit.com/v5/market/tickers"
    assert h.linear.rest_request(["BTCUSDT", "ETHPERP"]) == (url, {"category": "linear"})
    body = (
        b'{"retCode":0,"retMsg":"OK","result":{"category":"linear","list":[{"symbol":"BTCUSDT",'
        b'"bid1Price":"17215.50","bid1Size":"1","ask1Price":"17216.00","ask1Size":"1",'
        b'"lastPrice":"17216.00"},{"symbol":"XRPUSDT","bid1Price":"0.5","ask1Price":"0.6"}]},'
        b'"retExtInfo":{},"time":1673859087947}'
    )
    h.linear.on_rest(body, REST_RECV)
    assert h.quotes == [
        Quote(
            "bl",
            "BTC/USDT",
            REST_RECV,
            bid=17215.5,
            ask=17216.0,
            kind="perp",
        )
    ]
    assert h.spot.rest_request(["BTCUSDT"]) == (url, {"category": "spot", "symbol": "BTCUSDT"})
    h.spot.on_rest(
        b'{"retCode":10001,"retMsg":"Not supported symbols","result":{},"retExtInfo":{},"time":1}',
        10,
    )
    assert h.spot.stats.failed_instruments == {"BTCUSDT": "10001: Not supported symbols"}
    assert h.spot.stats.dropped == {"rest_error": 1}
    h.spot.on_rest(b"<html>", 11)
    assert h.spot.stats.dropped["decode"] == 1


def test_an_error_code_for_a_whole_category_fails_no_symbol(h: Harness) -> None:
    """An error code (a rate limit, say) answering the request for every symbol of a category
    names no symbol: it is counted as a REST error and fails none of them."""
    request = h.linear.rest_request(["BTCUSDT", "ETHPERP"])
    assert request is not None and request[1] == {"category": "linear"}
    h.linear.on_rest(
        b'{"retCode":10006,"retMsg":"Too many visits!","result":{},"retExtInfo":{},"time":1}', 9
    )
    assert h.linear.stats.dropped == {"rest_error": 1}
    assert h.linear.stats.failed_instruments == {} and h.quotes == []


@pytest.mark.parametrize("text", LAX_NUMBERS)
def test_a_linear_last_price_float_would_read_is_left_out(h: Harness, text: str) -> None:
    """A delta whose `lastPrice` is text float() reads but no venue sends ("1_000", " 12.5 ",
    "١٢٣", ...) keeps the last price it had, and its book change is quoted."""
    h.linear.on_message(LINEAR_SNAPSHOT, LINEAR_RECV + 1)
    delta = (
        '{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT",'
        f'"lastPrice":{json.dumps(text)},"ask1Price":"17216.50"}},"cs":24987956060,'
        '"ts":1673272861786}'
    )
    h.linear.on_message(delta, LINEAR_RECV + 2)
    assert [(q.price, q.bid, q.ask) for q in h.quotes] == [
        (17216.0, 17215.5, 17216.0),
        (17216.0, 17215.5, 17216.5),
    ]
    assert h.linear.stats.malformed == 0 and h.linear.stats.dropped == {}


def test_linear_last_price_is_merged_like_the_book(h: Harness) -> None:
    """`lastPrice` becomes the quote's price, is kept across deltas that leave it out, and a bad
    one is left out without dropping the book."""
    h.linear.on_message(LINEAR_SNAPSHOT, LINEAR_RECV + 1)

    def delta(ts: int, fields: str) -> str:
        return (
            '{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT",'
            f'{fields}}},"cs":24987956060,"ts":{ts}}}'
        )

    h.linear.on_message(delta(1673272861786, '"bid1Price":"17215.00"'), LINEAR_RECV + 2)
    h.linear.on_message(delta(1673272861886, '"lastPrice":"17215.50"'), LINEAR_RECV + 3)
    h.linear.on_message(
        delta(1673272861986, '"lastPrice":"abc","ask1Price":"17216.50"'), LINEAR_RECV + 4
    )
    h.linear.on_message(delta(1673272862086, '"lastPrice":"NaN"'), LINEAR_RECV + 5)
    assert [(q.price, q.bid, q.ask) for q in h.quotes] == [
        (17216.0, 17215.5, 17216.0),
        (17216.0, 17215.0, 17216.0),
        (17215.5, 17215.0, 17216.0),
        (17215.5, 17215.0, 17216.5),
        (17215.5, 17215.0, 17216.5),
    ]
    assert h.linear.stats.malformed == 0 and h.linear.stats.dropped == {}


def compact(frame: str) -> str:
    """The same JSON without any spaces, as the venue sends it."""
    return json.dumps(json.loads(frame), separators=(",", ":"))


def _parseable(frames: tuple[str, ...]) -> list[str]:
    parsed = []
    for frame in frames:
        try:
            json.loads(frame)
        except ValueError:
            continue
        parsed.append(frame)
    return parsed


def _bare(frame: str) -> str:
    """The same frame with every quoted decimal (price or size) sent as a bare JSON number."""
    return re.sub(r'"(-?[0-9]+(?:\.[0-9]+)?)"', r"\1", frame)


# Level 1 as the venue pushes it now: snapshots only, one level a side, each with a new `u`.
SPOT_NEXT = (
    '{"topic":"orderbook.1.BTCUSDT","type":"snapshot","ts":1709891679500,"data":{"s":"BTCUSDT",'
    '"b":[["27450.50","0.400"]],"a":[["27451.00","0.750"]],"u":123456790,"seq":987654322},'
    '"cts":1709891679497}'
)
SPOT_FRAMES = [
    SPOT_NEXT,
    SPOT_NEXT.replace('"0.400"', '"0"'),  # a side of size 0: no level
    SPOT_NEXT.replace('"a":[["27451.00","0.750"]]', '"a":[]'),  # an empty side
    SPOT_NEXT.replace('"27450.50"', '"27452.00"'),  # crossed
    SPOT_NEXT.replace('"27450.50","0.400"]]', '"27450.50","0.400"],["27450.00","1"]]'),
    SPOT_NEXT.replace('"u":123456790', '"u":123456789'),  # the same u: a push again
    SPOT_NEXT.replace('"u":123456790', '"u":123456788'),  # an older u
    SPOT_NEXT.replace('"0.750"', '"NaN"'),
    BOOK_DELTA,
    BOOK_DELTA.replace('"27450.00", "0.400"', '"27452.00", "1"'),
    BOOK_DELTA.replace('"a": [["27451.00", "0"]]', '"a": [["27450.50", "2"], ["27451.00", "0"]]'),
    BOOK_DELTA.replace('"u": 123456790', '"u": 123456789'),
    BOOK_SNAPSHOT.replace('"u": 123456789', '"u": 1'),
    BOOK_SNAPSHOT.replace('"u": 123456789', '"u": 5'),
    BOOK_SNAPSHOT.replace("BTCUSDT", "XRPUSDT"),
    _bare(BOOK_DELTA),
    _bare(BOOK_DELTA).replace("0.400", '"x"'),  # a bare price beside a size that is no number
    *_parseable(GARBAGE),
]
LINEAR_FRAMES = [
    '{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","bid1Price":"17215.00",'
    '"lastPrice":"17216.5"},"cs":24987956060,"ts":1673272861786}',
    '{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","markPrice":"17217"},'
    '"cs":24987956061,"ts":1673272861886}',
    '{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","ask1Price":"17216"},'
    '"cs":24987956061,"ts":1673272861000}',
    '{"topic":"tickers.ETHPERP","type":"delta","data":{"symbol":"ETHPERP","bid1Price":"3500.1",'
    '"ask1Price":"3500.2"},"cs":24987956061,"ts":1673272861886}',
    '{"topic":"tickers.XRPUSDT","type":"snapshot","data":{"symbol":"XRPUSDT","bid1Price":"1",'
    '"ask1Price":"2"},"cs":24987956061,"ts":1673272861886}',
    '{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","bid1Price":17215.0,'
    '"ask1Price":"abc"},"cs":24987956060,"ts":1673272861786}',
    *_parseable(GARBAGE),
]


def _spot_outcome(source: BybitSpotSource, quotes: list[Quote]) -> object:
    tops = {s: (t.bid, t.ask, t.seq) for s, t in source._tops.items()}
    return list(quotes), tops, dict(source.stats.dropped)


@pytest.mark.parametrize("frame", [f for f in SPOT_FRAMES for f in (f, compact(f))])
def test_spot_fast_path_agrees_with_the_text_path(h: Harness, frame: str) -> None:
    """Prices read straight into floats give the same quotes, kept state and drop reasons as the
    text path that every refused frame takes (tried on both after the same snapshot)."""
    h.spot.on_message(compact(BOOK_SNAPSHOT), SPOT_RECV + 1)
    h.spot.on_message(frame, SPOT_RECV + 2)
    fast = _spot_outcome(h.spot, h.quotes)
    h.quotes.clear()
    h.spot._tops.clear()
    h.spot.stats.dropped.clear()
    h.spot._slow(BOOK_SNAPSHOT, SPOT_RECV + 1)
    h.spot._slow(frame, SPOT_RECV + 2)
    assert _spot_outcome(h.spot, h.quotes) == fast


def _linear_outcome(source: BybitLinearSource, quotes: list[Quote]) -> object:
    tops = {s: (t.bid, t.ask, t.last, t.seq) for s, t in source._tops.items()}
    return list(quotes), tops, dict(source.stats.dropped)


@pytest.mark.parametrize("frame", [f for f in LINEAR_FRAMES for f in (f, compact(f))])
def test_linear_fast_path_agrees_with_the_text_path(h: Harness, frame: str) -> None:
    """The linear fast path and the text path agree on quotes, kept state and drop reasons."""
    h.linear.on_message(compact(LINEAR_SNAPSHOT), LINEAR_RECV + 1)
    h.linear.on_message(frame, LINEAR_RECV + 2)
    fast = _linear_outcome(h.linear, h.quotes)
    h.quotes.clear()
    h.linear._tops.clear()
    h.linear.stats.dropped.clear()
    h.linear._slow(LINEAR_SNAPSHOT, LINEAR_RECV + 1)
    h.linear._slow(frame, LINEAR_RECV + 2)
    assert _linear_outcome(h.linear, h.quotes) == fast


@pytest.mark.parametrize("layout", [str, compact])
def test_bare_number_prices_give_the_same_quotes_as_quoted_ones(
    h: Harness, layout: Callable[[str], str]
) -> None:
    """A price (or size) sent as a bare JSON number instead of a quoted decimal is a valid price:
    the bare form of each frame produces exactly the quotes and kept state of the quoted form,
    spaced or compact, on spot and on linear."""
    delta = BOOK_DELTA.replace('[["27451.00", "0"]]', '[["27451.50", "2"]]')
    sessions = (
        (h.spot, SPOT_RECV, [BOOK_SNAPSHOT, delta]),
        (h.linear, LINEAR_RECV, [LINEAR_SNAPSHOT, LINEAR_FRAMES[0]]),
    )
    for source, recv, frames in sessions:
        runs = []
        for form in (frames, [_bare(f) for f in frames]):
            h.quotes.clear()
            source._tops.clear()
            for i, frame in enumerate(form):
                source.on_message(layout(frame), recv + i)
            runs.append(
                (list(h.quotes), {s: (t.bid, t.ask, t.last) for s, t in source._tops.items()})
            )
        assert len(runs[0][0]) == 2 and runs[1] == runs[0]
        assert source.stats.malformed == 0 and source.stats.dropped == {}
    assert '"27451.00"' not in _bare(BOOK_SNAPSHOT) and '"17215.50"' not in _bare(LINEAR_SNAPSHOT)


@pytest.mark.parametrize("text", [False, True], ids=["fast", "text"])
def test_a_level1_stream_of_snapshots_quotes_each_book(h: Harness, text: bool) -> None:
    """Bybit pushes level 1 as snapshots only (its orderbook page says so), each the whole best
    level of both sides with a new `u`: each replaces the
    kept book and is quoted at its `cts`; one with an empty side is kept and not quoted
    (`one_sided`), and the next full one quotes again. The simulator pushed deltas before, so the
    adapter's straight line (and the ingest benchmark) served a frame the venue does not send."""
    t = 1709891679000
    feed = h.spot._slow if text else h.spot.on_message
    books = [("27450.00", "27451.00"), ("27450.50", "27451.00"), ("27449.00", "27449.50")]
    for k, (bid, ask) in enumerate(books):
        at = t + 100 * k
        feed(_with_cts(_level1("snapshot", 7 + k, at, bid, ask), at - 3), SPOT_RECV + 100 * k)
    one_sided = _level1("snapshot", 10, t + 300, "27449.00", "27449.50")
    feed(one_sided.replace('"a":[["27449.50","1.0"]]', '"a":[]'), SPOT_RECV + 300)
    feed(_with_cts(_level1("snapshot", 11, t + 400, "27448.00", "27449.00"), t + 397), SPOT_RECV)
    assert [(q.bid, q.ask, q.venue_ts) for q in h.quotes] == [
        (27450.0, 27451.0, t - 3),
        (27450.5, 27451.0, t + 97),
        (27449.0, 27449.5, t + 197),
        (27448.0, 27449.0, t + 397),
    ]
    assert h.spot.stats.dropped == {"one_sided": 1} and h.spot.stats.malformed == 0
    top = h.spot._tops["BTCUSDT"]
    assert (top.bid, top.ask, top.seq, top.ts) == (27448.0, 27449.0, 11, t + 397)


def _level1(kind: str, u: int, ts: int, bid: str, ask: str) -> str:
    """A spot level-1 frame of BTCUSDT with one level a side."""
    return (
        f'{{"topic":"orderbook.1.BTCUSDT","type":"{kind}","ts":{ts},"data":{{"s":"BTCUSDT",'
        f'"b":[["{bid}","1.0"]],"a":[["{ask}","1.0"]],"u":{u}}}}}'
    )


def test_one_far_ahead_spot_update_id_does_not_freeze_the_symbol(h: Harness) -> None:
    """A spot delta with good prices and u = 10^15 is used, but the frames after it (ids back
    where they were, times moving on) are not refused until the next reconnect: the far-ahead id
    is forgotten with the state it set, and the next frame is read as the symbol's first."""
    t = 1709891679000
    h.spot.on_message(_level1("snapshot", 123456789, t, "27450.00", "27451.00"), SPOT_RECV)
    h.spot.on_message(_level1("delta", 10**15, t + 100, "27450.50", "27451.00"), SPOT_RECV + 1)
    h.spot.on_message(_level1("delta", 123456790, t + 200, "27449.00", "27450.00"), SPOT_RECV + 2)
    h.spot.on_message(_level1("delta", 123456791, t + 300, "27448.00", "27449.00"), SPOT_RECV + 3)
    assert [q.bid for q in h.quotes] == [27450.0, 27450.5, 27449.0, 27448.0]
    assert h.spot.stats.sequence_resets == 1 and h.spot.stats.dropped == {}


def test_a_spot_update_id_a_little_ahead_is_forgotten_after_five_newer_frames(
    h: Harness,
) -> None:
    """An id a little ahead refuses four newer frames (text path and fast path alike) as
    stale; the fifth in a row resets it. A replayed frame (older ts) never counts."""
    t = 1709891679000
    h.spot.on_message(_level1("snapshot", 123457789, t, "27450.00", "27451.00"), SPOT_RECV)
    for i in range(1, 5):
        h.spot.on_message(_level1("delta", 123456789 + i, t + i, "27449.00", "27450.00"), SPOT_RECV)
        h.spot.on_message(_level1("delta", 123456789 + i, t - 1, "27449.00", "27450.00"), SPOT_RECV)
    assert len(h.quotes) == 1 and h.spot.stats.dropped == {"stale": 8}
    h.spot.on_message(_level1("delta", 123456795, t + 5, "NaN", "27450.00"), SPOT_RECV)
    assert h.spot.stats.sequence_resets == 1 and h.spot.stats.dropped["not_finite"] == 1
    h.spot.on_message(_level1("delta", 123456796, t + 6, "27447.00", "27448.00"), SPOT_RECV)
    assert [q.bid for q in h.quotes] == [27450.0, 27447.0]


def _with_cts(frame: str, cts: int) -> str:
    """A level-1 frame with the matching-engine time the venue prints after `data`."""
    return frame[:-1] + f',"cts":{cts}}}'


@pytest.mark.parametrize("text", [False, True], ids=["fast", "text"])
def test_spot_venue_time_is_the_books_matching_engine_time(h: Harness, text: bool) -> None:
    """A spot frame's venue time is its `cts` (when the matching engine produced the book), not
    `ts` (when the push service sent it), on the fast path and on the text path alike; a frame
    without `cts` (the docs' older examples) falls back to `ts`. Before, `ts` was used."""
    t = 1709891679000
    feed = h.spot._slow if text else h.spot.on_message  # the strict path, or the one-pass one
    frames = (
        _with_cts(_level1("snapshot", 7, t, "27450.00", "27451.00"), t - 40),
        _with_cts(_level1("delta", 8, t + 100, "27450.50", "27451.00"), t + 60),
        _level1("delta", 9, t + 200, "27449.00", "27450.00"),
    )
    for i, frame in enumerate(frames):
        feed(frame, SPOT_RECV + i)
    assert [q.venue_ts for q in h.quotes] == [t - 40, t + 60, t + 200]
    assert h.spot.stats.dropped == {} and h.spot.stats.malformed == 0


@pytest.mark.parametrize("text", [False, True], ids=["fast", "text"])
def test_a_repushed_unchanged_spot_book_is_not_a_new_quote(h: Harness, text: bool) -> None:
    """Bybit pushes a level-1 book that has not changed for 3 s again, as a snapshot with the
    same `u` and `cts` and a new `ts`: it is dropped as `unchanged`, so the quote keeps the age
    of the book's last change. Before, each re-push was a quote stamped with its fresh `ts`,
    and a book that had stopped changing never aged (the sequence-reset counter was not fed
    either). A later delta is used as usual."""
    t = 1709891679000
    feed = h.spot._slow if text else h.spot.on_message  # the strict path, or the one-pass one
    book = _level1("snapshot", 7, t, "27450.00", "27451.00")
    feed(_with_cts(book, t - 40), SPOT_RECV)
    for k in range(1, 7):  # 18 s of re-pushes
        again = _level1("snapshot", 7, t + 3000 * k, "27450.00", "27451.00")
        feed(_with_cts(again, t - 40), SPOT_RECV + 3000 * k)
    assert [q.venue_ts for q in h.quotes] == [t - 40]
    assert h.spot.stats.dropped == {"unchanged": 6} and h.spot.stats.sequence_resets == 0
    delta = _with_cts(_level1("delta", 8, t + 20_000, "27449.00", "27450.00"), t + 19_990)
    feed(delta, SPOT_RECV + 20_000)
    assert [q.venue_ts for q in h.quotes] == [t - 40, t + 19_990]


@pytest.mark.parametrize("text", [False, True], ids=["fast", "text"])
def test_a_linear_delta_that_leaves_the_book_is_not_a_new_quote(h: Harness, text: bool) -> None:
    """A linear ticker delta carries only the fields that changed, and its `ts` is when any of
    them did: mark, index, funding and open interest move on (every 100 ms) while the best bid
    and ask may not, so a delta with no bid, ask, size or last price is dropped as `unchanged`
    and the quote keeps the age of the book's last change. Before, each such delta was a quote
    stamped with its fresh `ts`, and a book that had stopped changing never aged. A delta that
    changes a best size, the last price or a price is used as usual, on both paths."""
    t = 1673272861686
    feed = h.linear._slow if text else h.linear.on_message

    def delta(ts: int, fields: str) -> str:
        return (
            '{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT",'
            f'{fields}}},"cs":24987956060,"ts":{ts}}}'
        )

    feed(LINEAR_SNAPSHOT, LINEAR_RECV)
    for k in range(1, 181):  # 18 s of index and mark moves on a book that does not move
        fields = f'"markPrice":"{17217 + k / 100:.2f}","indexPrice":"{17227 + k / 100:.2f}"'
        feed(delta(t + 100 * k, fields), LINEAR_RECV + 100 * k)
    funding = '"fundingRate":"-0.0002","openInterest":"68745.0"'
    feed(delta(t + 18_100, funding), LINEAR_RECV + 18_100)
    assert [q.venue_ts for q in h.quotes] == [t]
    assert h.linear.stats.dropped == {"unchanged": 181}
    feed(delta(t + 18_200, '"bid1Size":"80.1"'), LINEAR_RECV + 18_200)
    feed(delta(t + 18_300, '"lastPrice":"17215.50"'), LINEAR_RECV + 18_300)
    feed(delta(t + 18_400, '"ask1Price":"17216.50","ask1Size":"2"'), LINEAR_RECV + 18_400)
    assert [(q.venue_ts, q.price, q.ask) for q in h.quotes] == [
        (t, 17216.0, 17216.0),
        (t + 18_200, 17216.0, 17216.0),
        (t + 18_300, 17215.5, 17216.0),
        (t + 18_400, 17215.5, 17216.5),
    ]
    assert h.linear.stats.malformed == 0


@pytest.mark.parametrize(
    ("headers", "wait_s"),
    [
        ({"X-Bapi-Limit-Reset-Timestamp": "2500"}, 2.5),  # epoch ms; the clock here is at 0
        ({"X-Bapi-Limit-Reset-Timestamp": "600000"}, 60.0),  # past a minute: not believed
        ({"X-Bapi-Limit-Reset-Timestamp": "9" * 40}, 60.0),
        ({"X-Bapi-Limit-Reset-Timestamp": "2500", "Retry-After": "4"}, 4.0),
        ({"X-Bapi-Limit-Reset-Timestamp": "0"}, 1.0),  # the current time: the 1 s window
        ({"X-Bapi-Limit-Reset-Timestamp": "-5"}, 1.0),
        ({"X-Bapi-Limit-Reset-Timestamp": "NaN"}, 1.0),
        ({"X-Bapi-Limit-Reset-Timestamp": "soon"}, 1.0),
        ({}, 1.0),
    ],
)
def test_a_rate_limit_waits_until_the_reset_it_names(
    h: Harness, headers: dict[str, str], wait_s: float
) -> None:
    """A 10006 names its reset in X-Bapi-Limit-Reset-Timestamp (epoch ms): waited for when it
    lies ahead, up to a minute; a Retry-After wins; anything else rests the API limit's 1 s
    window."""
    assert h.spot.rate_limit_wait_s(headers) == wait_s
    assert h.linear.rate_limit_wait_s(headers) == wait_s


@pytest.mark.parametrize("ts", [-1, -(10**20)])
def test_a_frame_time_before_1970_is_a_bad_number_not_a_quote(h: Harness, ts: int) -> None:
    """A symbol's first frame meets no bar: a `ts` before 1970 is `bad_number` on both
    categories, not a quote with that time (found by test_adapter_fuzz)."""
    linear = json.loads(LINEAR_SNAPSHOT)
    linear["ts"] = ts
    h.linear.on_message(json.dumps(linear), LINEAR_RECV)
    spot = json.loads(BOOK_SNAPSHOT)
    spot["ts"] = ts
    spot.pop("cts", None)
    h.spot.on_message(json.dumps(spot), SPOT_RECV)
    assert h.quotes == []
    assert h.linear.stats.dropped == {"bad_number": 1}
    assert h.spot.stats.dropped == {"bad_number": 1}


def _spot_book(u: int, ts: int, bid: str) -> str:
    return json.dumps(
        {
            "topic": "orderbook.1.BTCUSDT",
            "type": "snapshot",
            "ts": ts,
            "data": {"s": "BTCUSDT", "b": [[bid, "1"]], "a": [["27460.00", "1"]], "u": u},
        }
    )


@pytest.mark.parametrize("far_u", [10**15, 101])
def test_a_spot_frame_from_the_future_leaves_the_kept_book_and_its_id_alone(
    h: Harness, far_u: int
) -> None:
    """A level-1 frame stamped further ahead than the clock-skew bound is dropped (`future`)
    before it touches the kept state. Before, it was applied and only its quote dropped: its time
    became the kept one, so that with a far-ahead `u` beside it no later frame was ever newer
    by time and the counter reset never came; every good frame after it was `stale` until the
    next reconnect (found reading the adapter while fuzzing it)."""
    t = SPOT_RECV
    h.spot.on_message(_spot_book(100, t, "27450.00"), t + 5)
    h.spot.on_message(_spot_book(far_u, t + 10**9, "27440.00"), t + 10)
    for i in range(1, 8):
        h.spot.on_message(_spot_book(100 + i, t + 100 * i, f"2745{i}.00"), t + 100 * i + 5)
    assert [q.bid for q in h.quotes] == [27450.0, *(27450.0 + i for i in range(1, 8))]
    assert h.spot.stats.dropped == {"future": 1}
