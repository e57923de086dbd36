"""Decoding Gemini v2 market data: a recorded book session, control frames and every bad frame."""

from __future__ import annotations

import json
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from parse_cases import GEMINI, LAX_NUMBERS, Harness, open_harness

from oracled.clock import ManualClock
from oracled.model import Quote
from oracled.sim.gemini import GARBAGE
from oracled.sources.gemini import GeminiSource

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gemini"
L2 = (FIXTURES / "ws_l2_updates.jsonl").read_text().splitlines()
TRADE, HEARTBEAT = (FIXTURES / "ws_other.jsonl").read_text().splitlines()
SUBSCRIBE = (FIXTURES / "ws_subscribe_request.json").read_text()

# Best bid and ask after each recorded message, in session order (GRT/USD then ETH/EUR).
EXPECTED = [
    ("GRT/USD", 0.6157, 0.6165),
    ("ETH/EUR", 1648.98, 1656.75),
    ("GRT/USD", 0.6145, 0.6165),
    ("GRT/USD", 0.6146, 0.6165),
    ("ETH/EUR", 1648.98, 1656.75),
    ("ETH/EUR", 1648.98, 1656.6),
    ("GRT/USD", 0.6146, 0.6178),
    ("GRT/USD", 0.6146, 0.6178),
    ("GRT/USD", 0.6146, 0.6178),
    ("GRT/USD", 0.6155, 0.6178),
    ("GRT/USD", 0.6155, 0.6164),
    ("ETH/EUR", 1648.98, 1656.6),
    ("ETH/EUR", 1648.98, 1656.6),
    ("ETH/EUR", 1648.98, 1656.6),
    ("ETH/EUR", 1648.98, 1656.58),
    ("ETH/EUR", 1648.98, 1656.77),
]


@pytest.fixture
async def harness() -> AsyncIterator[Harness[GeminiSource]]:
    async with open_harness(GEMINI) as h:
        yield h


def test_recorded_session_gives_the_exact_top_of_book_after_each_message(
    harness: Harness[GeminiSource],
) -> None:
    """Snapshots then diffs (zero quantity removes, removing the best finds the next best)."""
    for i, frame in enumerate(L2):
        harness.source.on_message(frame, 100 + i)
    got = [(q.pair, q.bid, q.ask) for q in harness.quotes]
    assert got == EXPECTED
    assert all(q.venue_ts is None and q.kind == "spot" for q in harness.quotes)
    assert [q.recv_ts for q in harness.quotes] == list(range(100, 100 + len(L2)))
    assert harness.stats.malformed == 0 and harness.stats.dropped == {}


def test_snapshots_acknowledge_the_request_that_asked_for_them(
    harness: Harness[GeminiSource],
) -> None:
    """The venue sends no ack: a request is settled once every symbol in it has its snapshot."""
    src = harness.source
    src._pending[1] = ("GRTUSD", "ETHEUR")
    src.stats.failed_instruments["ETHEUR"] = "old failure"
    src.on_message(L2[0], 1)
    assert 1 in src._pending
    src.on_message(L2[1], 2)
    assert src._pending == {}
    assert harness.stats.failed_instruments == {}


def test_a_new_snapshot_replaces_the_book(harness: Harness[GeminiSource]) -> None:
    """A second snapshot (it carries trades) starts the symbol's book afresh."""
    src = harness.source
    src.on_message(L2[0], 1)
    src.on_message(
        '{"type":"l2_updates","symbol":"GRTUSD","changes":[["buy","0.5","1"],["sell","0.7","1"]],'
        '"trades":[],"auction_events":[]}',
        2,
    )
    assert (harness.quotes[-1].bid, harness.quotes[-1].ask) == (0.5, 0.7)


async def test_overdue_request_is_split_then_failed(harness: Harness[GeminiSource]) -> None:
    """An unanswered batch is split into single requests; an unanswered single is failed."""
    src, clock = harness.source, harness.source._clock
    assert isinstance(clock, ManualClock)
    src.subscribe_message(3, ["GRTUSD", "BTCUSD"])
    src._pending[3] = ("GRTUSD", "BTCUSD")
    src.on_message(HEARTBEAT, 1)
    assert 3 in src._pending  # not overdue yet
    clock.advance(31_000)  # past the default 30 s liveness timeout
    src.on_message(HEARTBEAT, 2)
    queued = [src._outbox.get_nowait()[1] for _ in range(src._outbox.qsize())]
    assert queued == [("GRTUSD",), ("BTCUSD",)]
    src.subscribe_message(4, ["BTCUSD"])
    src._pending[4] = ("BTCUSD",)
    clock.advance(31_000)
    src.on_message(TRADE, 3)
    assert harness.stats.failed_instruments == {"BTCUSD": "no snapshot within the liveness timeout"}


def test_heartbeat_and_trade_are_life_not_data(harness: Harness[GeminiSource]) -> None:
    """Recorded heartbeat and trade frames are accepted silently (no quote, nothing counted)."""
    harness.source.on_message(HEARTBEAT, 1)
    harness.source.on_message(TRADE, 2)
    harness.source.on_message('{"type":"candles_1m_updates","symbol":"BTCUSD","changes":[]}', 3)
    assert harness.quotes == []
    assert harness.stats.malformed == 0
    assert harness.stats.dropped == {"other_channel": 1}


def test_one_sided_book_gives_no_quote(harness: Harness[GeminiSource]) -> None:
    """A book with bids but no asks has no top of book to publish: counted, not malformed."""
    harness.source.on_message(
        '{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy","1","1"]]}', 1
    )
    assert harness.quotes == []
    assert harness.stats.dropped == {"one_sided": 1} and harness.stats.malformed == 0


def test_error_frame_refuses_the_oldest_request(harness: Harness[GeminiSource]) -> None:
    """An error splits the oldest batch; refused alone, a symbol is marked failed."""
    src, stats = harness.source, harness.stats
    error = '{"type":"error","result":"error","reason":"InvalidSymbol","message":"bad"}'
    src._pending[2] = ("GRTUSD", "BTCUSD")
    src.on_message(error, 1)
    queued = [src._outbox.get_nowait()[1] for _ in range(src._outbox.qsize())]
    assert queued == [("GRTUSD",), ("BTCUSD",)]
    src._pending[7] = ("BTCUSD",)
    src.on_message(error, 2)
    assert stats.failed_instruments == {"BTCUSD": "InvalidSymbol: bad"}
    src.on_message(error, 3)  # nothing open any more
    assert stats.dropped == {"venue_error": 1}


def test_unknown_symbol_is_dropped_not_malformed(harness: Harness[GeminiSource]) -> None:
    """A well-formed book message for a symbol we did not configure is only counted."""
    harness.source.on_message(L2[0].replace("GRTUSD", "DOGEUSD"), 1)
    assert harness.quotes == []
    assert harness.stats.dropped == {"unknown_symbol": 1} and harness.stats.malformed == 0


def test_crossed_book_is_dropped_and_rebuilt_from_a_new_snapshot(
    harness: Harness[GeminiSource],
) -> None:
    """A diff that leaves the book crossed is counted; nothing is quoted until a resync."""
    src = harness.source
    src.on_message(
        '{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy","100","1"],["sell","101","1"]],"trades":[]}',
        1,
    )
    src.on_message(GARBAGE[-1], 2)
    src.on_message('{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy","99","1"]]}', 3)
    assert len(harness.quotes) == 1
    assert harness.stats.dropped == {"crossed": 1, "resync": 1}
    src._queue_subscriptions()  # what the next connection does first
    src.on_message(
        '{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy","100","1"],["sell","101","1"]],"trades":[]}',
        4,
    )
    assert harness.quotes[-1].bid == 100.0


def test_rest_ticker_becomes_a_quote_for_the_requested_symbol(
    harness: Harness[GeminiSource],
) -> None:
    """pubticker has no symbol in its body: the quote is for the symbol that was asked for."""
    src = harness.source
    url, query = src.rest_request(["BTCUSD"]) or ("", {})
    assert (url, query) == ("https://api.gemini.com/v1/pubticker/btcusd", {})
    body = (
        b'{"bid":"9345.70","ask":"9347.67","volume":{"BTC":"2210.50","USD":"20592180.16",'
        b'"timestamp":1483018200000},"last":"9346.20"}'
    )
    src.on_rest(body, 42)
    assert harness.quotes == [Quote("gm", "BTC/USD", 42, bid=9345.70, ask=9347.67)]
    src.on_rest(b'{"result":"error","reason":"InvalidSymbol","message":"x"}', 43)
    src.on_rest(b"{", 44)
    assert harness.stats.dropped == {"shape": 1, "decode": 1}


def test_subscribe_message_matches_the_recorded_request(harness: Harness[GeminiSource]) -> None:
    """The subscribe request has the recorded shape; the URL is the v2 market-data path."""
    text = harness.source.subscribe_message(1, ["BTCGBP", "LINKETH"])
    assert (
        text
        == '{"type":"subscribe","subscriptions":[{"name":"l2","symbols":["BTCGBP","LINKETH"]}]}'
    )
    assert SUBSCRIBE.startswith(text[: text.index("[", 40) + 1])
    assert harness.source.stream_url() == "wss://api.gemini.com/v2/marketdata"
    assert harness.source.venue_symbol("BTC/USD") == "BTCUSD"


def test_quotes_carry_the_newest_trade_price(harness: Harness[GeminiSource]) -> None:
    """The snapshot's newest trade, then each trade frame, is the last price of later quotes."""
    src = harness.source
    for i, frame in enumerate(L2):
        src.on_message(frame, i)
    prices = {q.pair: q.price for q in harness.quotes}
    assert prices == {"GRT/USD": 0.6183, "ETH/EUR": 1648.19}  # the first trade of each snapshot
    src.on_message(TRADE.replace("ANKRUSD", "GRTUSD"), 50)
    src.on_message(TRADE.replace("ANKRUSD", "GRTUSD").replace('"0.07946"', '"abc"'), 51)
    src.on_message('{"type":"l2_updates","symbol":"GRTUSD","changes":[["buy","0.6101","5"]]}', 52)
    assert harness.quotes[-1].price == 0.07946
    assert harness.stats.malformed == 0 and harness.stats.dropped == {}


@pytest.mark.parametrize("text", LAX_NUMBERS)
def test_a_trade_price_float_would_read_never_reaches_a_quote(
    harness: Harness[GeminiSource], text: str
) -> None:
    """A trade, or a snapshot's newest trade, whose price is text float() reads but no venue
    sends ("1_000", " 12.5 ", "١٢٣", ...) is no last price: quotes go on with the one before."""
    src = harness.source
    src.on_message(L2[0], 1)
    src.on_message(TRADE.replace("ANKRUSD", "GRTUSD").replace('"0.07946"', json.dumps(text)), 2)
    src.on_message('{"type":"l2_updates","symbol":"GRTUSD","changes":[["buy","0.6101","5"]]}', 3)
    assert harness.quotes[-1].price == 0.6183 and harness.quotes[-1].bid == 0.6157
    trades = f"{_TRADE_A},{_TRADE_B.replace('98.7', json.dumps(text))}"  # B is the newer
    src.on_message(f'{{"type":"l2_updates","symbol":"BTCUSD",{_BOOK},"trades":[{trades}]}}', 4)
    assert harness.quotes[-1].pair == "BTC/USD" and harness.quotes[-1].price == 98.5
    assert harness.stats.malformed == 0


def test_a_bad_trade_price_never_reaches_a_quote(harness: Harness[GeminiSource]) -> None:
    """A trade whose price is not a positive number leaves the book quoted without a last."""
    src = harness.source
    src.on_message(L2[0], 1)
    src.on_message(TRADE.replace("ANKRUSD", "GRTUSD").replace('"0.07946"', '"-1"'), 2)
    src.on_message('{"type":"l2_updates","symbol":"GRTUSD","changes":[["buy","0.6101","5"]]}', 3)
    assert harness.quotes[-1].price is None and harness.quotes[-1].bid == 0.6157


def _outcome(harness: Harness[GeminiSource]) -> object:
    books = {s: (b.bid, b.ask, b.last, sorted(b.bids), sorted(b.asks)) for s, b in
             harness.source._books.items()}  # fmt: skip
    return list(harness.quotes), books, dict(harness.stats.dropped), harness.source._resyncing


DIFFS = [
    '{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy","100.5","1"],["sell","100.5","0"]]}',
    '{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy","100","0"],["sell","101","0"]]}',
    '{"type":"l2_updates","symbol":"BTCUSD","changes":[["sell","101","0"],["sell","102","1"]]}',
    '{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy","100","0"],["buy","100","2"]]}',
    '{"type":"l2_updates","symbol":"BTCUSD","changes":[]}',
    '{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy","1e2","1.0E0"],["sell","Infinity","1"]]}',
    '{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy"," 99","1"],["sell","101 ","-0"]]}',
    '{"type":"l2_updates","symbol":"DOGEUSD","changes":[["buy","1","1"]]}',
    '{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy","100","1"]],"extra":1}',
    '{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy",100.5,1],["sell",100.7,"2"]]}',
    '{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy",100.5,"x"]]}',
    '{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy",100.5,1],["sell","abc","1"]]}',
    *GARBAGE[2:],
]
SNAPSHOT = (
    '{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy","100","1"],["buy","99","1"],'
    '["sell","101","1"],["sell","102","1"]],"trades":[],"auction_events":[]}'
)

# Snapshots taken by the fast path (or refused to the slow one), with trades read the same way.
_BOOK = (
    '"changes":[["buy","98","1"],["sell","103","2"],["buy","97.5","0"],["sell","103","0"],'
    '["sell","104","1"]]'
)
_TRADE_A = '{"type":"trade","event_id":7,"price":"98.5","quantity":"1","side":"buy"}'
_TRADE_B = '{"type":"trade","event_id":9,"price":98.7,"quantity":"1","side":"sell"}'
SNAPSHOTS = (
    [
        f'{{"type":"l2_updates","symbol":"BTCUSD",{_BOOK},"trades":[{t}],"auction_events":[]}}'
        for t in (
            f"{_TRADE_A},{_TRADE_B}",
            f"{_TRADE_B},{_TRADE_A}",
            _TRADE_A.replace('"98.5"', '"abc"') + f",{_TRADE_B}",
            _TRADE_B.replace("98.7", '"-1"') + f",{_TRADE_A}",
            _TRADE_B.replace("9,", '"9",') + f",{_TRADE_A}",
            _TRADE_B.replace("9,", "9.0,") + f",{_TRADE_A}",
            _TRADE_B.replace("9,", "-4,"),
            f"1,{_TRADE_A}",
            "",
        )
    ]
    + [
        f'{{"type":"l2_updates","symbol":"BTCUSD",{_BOOK},"trades":{t}}}'
        for t in ("{}", "5", "null")
    ]
    + [
        f'{{"type":"l2_updates","symbol":"BTCUSD",{_BOOK.replace(p, q)},"trades":[]}}'
        for p, q in (('"98"', '"Infinity"'), ('"104","1"', '"104","-1"'), ('"97.5"', '"x"'))
    ]
    + [
        f'{{"type":"l2_updates","symbol":"DOGEUSD",{_BOOK},"trades":[{_TRADE_A}]}}',
    ]
)


@pytest.mark.parametrize("frame", DIFFS + SNAPSHOTS)
def test_fast_path_agrees_with_the_text_path(harness: Harness[GeminiSource], frame: str) -> None:
    """Levels read straight into floats, and a snapshot's trades read in one piece, give the same
    quotes, book, last price and drop reasons as the text path that every refused message takes
    (both after the same snapshot)."""
    src = harness.source
    src.on_message(SNAPSHOT, 1)
    src.on_message(frame, 2)
    fast = _outcome(harness)
    harness.quotes.clear()
    harness.stats.dropped.clear()
    src._queue_subscriptions()  # a new connection: empty books, no resync
    src._slow(SNAPSHOT, 1)
    src._slow(frame, 2)
    assert _outcome(harness) == fast


def _bare(frame: str) -> str:
    """The same frame with every quoted decimal (price, quantity) sent as a bare JSON number."""
    return re.sub(r'"(-?[0-9]+(?:\.[0-9]+)?)"', r"\1", frame)


def test_bare_number_prices_give_the_same_quotes_as_quoted_ones(
    harness: Harness[GeminiSource],
) -> None:
    """A price or quantity sent as a bare JSON number instead of a quoted decimal is a valid one:
    the recorded session with every decimal bare (snapshots, their trades and the diffs) gives
    exactly the quotes, last prices included, of the quoted session."""
    src = harness.source
    for i, frame in enumerate(L2):
        src.on_message(frame, 100 + i)
    quoted = list(harness.quotes)
    harness.quotes.clear()
    src._queue_subscriptions()  # a new connection: empty books
    for i, frame in enumerate(L2):
        src.on_message(_bare(frame), 100 + i)
    assert '"0.6157"' in L2[0] and '"0.6157"' not in _bare(L2[0])
    assert len(quoted) == len(EXPECTED) and harness.quotes == quoted
    assert harness.stats.malformed == 0 and harness.stats.dropped == {}


def _deep_session(seed: int) -> tuple[list[str], list[tuple[float, float]]]:
    """A snapshot of 150 levels a side, then 3,000 diffs that keep taking the best level away
    (and re-adding old prices, resizing, dropping deep or absent levels; for 600 of them only a
    deep bid is added and removed again, for 600 more a deep ask), with the best bid and ask a
    plain model of the book has after each message."""
    rng = random.Random(seed)
    bids = {round(99.99 - i * 0.01, 2): 1.0 for i in range(150)}
    asks = {round(100.01 + i * 0.01, 2): 1.0 for i in range(150)}
    levels = [["buy", f"{p:.2f}", "1"] for p in bids] + [["sell", f"{p:.2f}", "1"] for p in asks]
    frames = [json.dumps({"type": "l2_updates", "symbol": "BTCUSD", "changes": levels,
                          "trades": [], "auction_events": []})]  # fmt: skip
    tops = [(max(bids), min(asks))]
    for n in range(3_000):
        changes: list[list[str]] = []
        if 1_000 <= n < 1_600:  # deep levels come and go, the top stays: stale prices pile up
            price = round(99.99 - (100 + n % 50) * 0.01, 2)
            bids.pop(price, None)
            changes = [["buy", f"{price:.2f}", "1.5"], ["buy", f"{price:.2f}", "0"]]
        elif 1_600 <= n < 2_200:  # the same on the ask side
            price = round(100.01 + (100 + n % 50) * 0.01, 2)
            asks.pop(price, None)
            changes = [["sell", f"{price:.2f}", "1.5"], ["sell", f"{price:.2f}", "0"]]
        for _ in range(0 if changes else rng.randint(1, 3)):
            side, book = ("buy", bids) if rng.random() < 0.5 else ("sell", asks)
            grid = [round(99.99 - i * 0.01, 2) if side == "buy" else round(100.01 + i * 0.01, 2)
                    for i in range(300)]  # fmt: skip
            move = rng.random()
            if move < 0.35 and len(book) > 2:
                price = max(book) if side == "buy" else min(book)  # the best level leaves
            elif move < 0.55:
                price = rng.choice(grid)  # a level anywhere, present or not
            else:
                price = rng.choice(grid[:40])  # near the top: often one removed before
            qty = 0.0 if move < 0.45 else rng.choice((0.5, 2.0, 3.25))
            if qty:
                book[price] = qty
            else:
                book.pop(price, None)
            changes.append([side, f"{price:.2f}", f"{qty}"])
        frames.append(json.dumps({"type": "l2_updates", "symbol": "BTCUSD", "changes": changes}))
        tops.append((max(bids), min(asks)))
    return frames, tops


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_deep_book_keeps_the_exact_top_through_thousands_of_diffs(
    harness: Harness[GeminiSource], seed: int
) -> None:
    """A book of hundreds of levels whose best level keeps leaving: after every message the quote
    is the best bid and ask of the levels left, on the fast path and on the text path alike, and
    the prices kept for finding the next best never grow past twice the book."""
    frames, tops = _deep_session(seed)
    src = harness.source
    for read in (src.on_message, src._slow):
        harness.quotes.clear()
        src._queue_subscriptions()  # a new connection: empty books
        longest = 0
        for i, frame in enumerate(frames):
            read(frame, i)
            book = src._books["BTCUSD"]
            for heap, side in ((book.bid_heap, book.bids), (book.ask_heap, book.asks)):
                if heap is not None:
                    assert len(heap) <= 2 * len(side) + 32
                    longest = max(longest, len(heap))
        assert [(q.bid, q.ask) for q in harness.quotes] == tops
        assert longest > 32  # the heaps were used, not only the scan
    assert harness.stats.malformed == 0 and harness.stats.dropped == {}
