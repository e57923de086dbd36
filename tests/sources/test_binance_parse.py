"""Decoding Binance frames into quotes: real recorded frames, and every kind of bad frame."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from oracled.clock import ManualClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sim import GARBAGE
from oracled.sources import BinanceSource, SourceStats

FIXTURES = Path(__file__).parent.parent / "fixtures" / "binance"
BOOK_FRAMES = (FIXTURES / "ws_bookTicker.jsonl").read_text().splitlines()
OTHER_FRAMES = (FIXTURES / "ws_other_streams.jsonl").read_text().splitlines()


class Harness:
    def __init__(self, source: BinanceSource, stats: SourceStats, quotes: list[Quote]) -> None:
        self.source, self.stats, self.quotes = source, stats, quotes


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    stats = SourceStats("bn")
    quotes: list[Quote] = []
    cfg = SourceConfig(type="binance", instruments={"BLZ/WETH": "BLZETH"})
    pairs: list[tuple[str, Kind]] = [
        ("NKN/USDT", "spot"),
        ("LRC/BTC", "spot"),
        ("BLZ/WETH", "spot"),
        ("BTC/USDT", "spot"),
    ]
    async with aiohttp.ClientSession() as http:
        source = BinanceSource("bn", cfg, pairs, quotes.append, ManualClock(), http, stats)
        yield Harness(source, stats, quotes)


def test_recorded_frames_become_quotes(harness: Harness) -> None:
    """Each real bookTicker frame yields one quote: canonical pair, float bid/ask, no venue time."""
    for i, frame in enumerate(BOOK_FRAMES):
        harness.source.on_message(frame, 1_000 + i)
    assert harness.stats.malformed == 0
    first, *_, last = harness.quotes
    assert len(harness.quotes) == len(BOOK_FRAMES)
    assert first == Quote("bn", "NKN/USDT", 1_000, bid=0.3521, ask=0.3526, venue_ts=None)
    assert last == Quote("bn", "BLZ/WETH", 1_004, bid=0.00006547, ask=0.0000656)  # override
    assert harness.stats.quotes == len(BOOK_FRAMES)
    assert harness.stats.last_quote_ms == 1_004


def test_frames_as_bytes_decode_too(harness: Harness) -> None:
    """A frame delivered as bytes (binary WebSocket message) decodes like text."""
    harness.source.on_message(BOOK_FRAMES[2].encode(), 5)
    assert harness.quotes == [Quote("bn", "LRC/BTC", 5, bid=0.00000637, ask=0.00000638)]


def test_symbol_not_configured_is_dropped_not_malformed(harness: Harness) -> None:
    """A well-formed frame for a symbol we did not ask for is counted as unknown_symbol only."""
    frame = BOOK_FRAMES[0].replace("NKNUSDT", "DOGEUSDT")
    harness.source.on_message(frame, 1)
    assert harness.quotes == []
    assert harness.stats.dropped["unknown_symbol"] == 1
    assert harness.stats.malformed == 0


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (GARBAGE[0], "decode"),
        (GARBAGE[1], "decode"),
        (GARBAGE[2], "shape"),
        (GARBAGE[3], "shape"),
        (GARBAGE[4], "shape"),
        (GARBAGE[5], "shape"),
        (GARBAGE[6], "not_finite"),
        (GARBAGE[7], "not_finite"),
        (GARBAGE[8], "non_positive"),
        (GARBAGE[9], "non_positive"),
        (GARBAGE[10], "bad_number"),
        (GARBAGE[11], "crossed"),
        (OTHER_FRAMES[0], "shape"),
        (OTHER_FRAMES[1], "shape"),
        ("", "decode"),
        (b"\xff\xfe", "decode"),
    ],
)
def test_bad_frames_are_counted_and_never_emitted(
    harness: Harness, frame: str | bytes, reason: str
) -> None:
    """Broken JSON, wrong shapes, NaN/inf/zero/negative/crossed prices: dropped, not raised."""
    harness.source.on_message(frame, 1)
    assert harness.quotes == []
    assert harness.stats.malformed == 1
    assert harness.stats.dropped == {reason: 1}


def test_every_simulator_garbage_kind_is_covered() -> None:
    """The parametrized cases above cover the whole garbage catalogue of the simulator."""
    assert len(GARBAGE) == 12


def test_ack_and_error_frames_settle_requests(harness: Harness) -> None:
    """An ack clears a failed symbol; an error on a one-symbol request marks that symbol failed."""
    src, stats = harness.source, harness.stats
    src._pending[7] = ("BTCUSDT",)
    src.on_message('{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":7}', 1)
    assert stats.failed_instruments == {"BTCUSDT": "2: Invalid request: invalid stream"}
    src._pending[8] = ("BTCUSDT",)
    src.on_message('{"result":null,"id":8}', 2)
    assert stats.failed_instruments == {}
    assert stats.malformed == 0


def test_error_on_a_batch_splits_it_into_single_requests(harness: Harness) -> None:
    """A refused batch is retried symbol by symbol instead of failing every symbol in it."""
    src = harness.source
    src._pending[3] = ("NKNUSDT", "BTCUSDT")
    src.on_message('{"code":2,"msg":"Invalid request: invalid stream","id":3}', 1)
    assert harness.stats.failed_instruments == {}
    queued = [src._outbox.get_nowait()[1] for _ in range(src._outbox.qsize())]
    assert queued == [("NKNUSDT",), ("BTCUSDT",)]


def test_unsolicited_acks_and_errors_are_counted(harness: Harness) -> None:
    """Replies to ids we never sent are counted, not crashed on and not blamed on a symbol."""
    harness.source.on_message('{"result":null,"id":99}', 1)
    harness.source.on_message('{"code":3,"msg":"Invalid JSON: expected value","id":null}', 2)
    assert harness.stats.dropped == {"unsolicited": 1, "venue_error": 1}
    assert harness.stats.failed_instruments == {}


def test_rest_body_becomes_quotes(harness: Harness) -> None:
    """The REST book ticker list decodes into one quote per row; bad rows are dropped."""
    body = (
        b'[{"symbol":"NKNUSDT","bidPrice":"0.35210000","bidQty":"1.0","askPrice":"0.35260000",'
        b'"askQty":"2.0"},{"symbol":"LRCBTC","bidPrice":"nan","bidQty":"1","askPrice":"1",'
        b'"askQty":"1"}]'
    )
    harness.source.on_rest(body, 42)
    assert harness.quotes == [Quote("bn", "NKN/USDT", 42, bid=0.3521, ask=0.3526)]
    assert harness.stats.dropped == {"not_finite": 1}
    harness.source.on_rest(b'{"code":-1121,"msg":"Invalid symbol."}', 43)
    assert harness.stats.dropped["shape"] == 1


def test_subscribe_message_follows_the_documented_shape(harness: Harness) -> None:
    """SUBSCRIBE lists lower-case `<symbol>@bookTicker` streams under the request id."""
    text = harness.source.subscribe_message(5, ["BTCUSDT", "NKNUSDT"])
    assert text == (
        '{"method":"SUBSCRIBE","params":["btcusdt@bookTicker","nknusdt@bookTicker"],"id":5}'
    )


def test_rest_request_asks_for_all_symbols_at_once(harness: Harness) -> None:
    """One REST request carries every symbol (one weight charge per poll)."""
    url, query = harness.source.rest_request(["BTCUSDT", "NKNUSDT"]) or ("", {})
    assert url == "https://api.binance.com/api/v3/ticker/bookTicker"
    assert query == {"symbols": '["BTCUSDT","NKNUSDT"]'}
