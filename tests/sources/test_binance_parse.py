"""Decoding Binance frames into quotes: real recorded frames, and every kind of bad frame."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from parse_cases import BINANCE, Harness, open_harness

from oracled.model import Quote
from oracled.sources import BinanceSource

FIXTURES = Path(__file__).parent.parent / "fixtures" / "binance"
BOOK_FRAMES = (FIXTURES / "ws_bookTicker.jsonl").read_text().splitlines()


@pytest.fixture
async def harness() -> AsyncIterator[Harness[BinanceSource]]:
    async with open_harness(BINANCE) as h:
        yield h


def test_recorded_frames_become_quotes(harness: Harness[BinanceSource]) -> None:
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


def test_frames_as_bytes_decode_too(harness: Harness[BinanceSource]) -> None:
    """A frame delivered as bytes (binary WebSocket message) decodes like text."""
    harness.source.on_message(BOOK_FRAMES[2].encode(), 5)
    assert harness.quotes == [Quote("bn", "LRC/BTC", 5, bid=0.00000637, ask=0.00000638)]


def test_symbol_not_configured_is_dropped_not_malformed(harness: Harness[BinanceSource]) -> None:
    """A well-formed frame for a symbol we did not ask for is counted as unknown_symbol only."""
    frame = BOOK_FRAMES[0].replace("NKNUSDT", "DOGEUSDT")
    harness.source.on_message(frame, 1)
    assert harness.quotes == []
    assert harness.stats.dropped["unknown_symbol"] == 1
    assert harness.stats.malformed == 0


def test_rest_body_becomes_quotes(harness: Harness[BinanceSource]) -> None:
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


def test_subscribe_message_follows_the_documented_shape(harness: Harness[BinanceSource]) -> None:
    """SUBSCRIBE lists lower-case `<symbol>@bookTicker` streams under the request id."""
    text = harness.source.subscribe_message(5, ["BTCUSDT", "NKNUSDT"])
    assert text == (
        '{"method":"SUBSCRIBE","params":["btcusdt@bookTicker","nknusdt@bookTicker"],"id":5}'
    )


def test_rest_request_asks_for_all_symbols_at_once(harness: Harness[BinanceSource]) -> None:
    """One REST request carries every symbol (one weight charge per poll)."""
    url, query = harness.source.rest_request(["BTCUSDT", "NKNUSDT"]) or ("", {})
    assert url == "https://api.binance.com/api/v3/ticker/bookTicker"
    assert query == {"symbols": '["BTCUSDT","NKNUSDT"]'}


@pytest.mark.parametrize("bid", ["0.3_521", " 0.3521", "0.3521 "])
def test_book_the_float_decoder_refused_is_never_quoted(
    harness: Harness[BinanceSource], bid: str
) -> None:
    """A book whose price is no venue decimal (an underscore, blanks), though Python's float()
    would read it, is dropped as bad_number: the path that only names what was wrong never
    quotes. It used to quote it stamped as received at time 0 (1970), which also reset the
    source's last-quote time by 56 years (found by mutating recorded frames)."""
    frame = BOOK_FRAMES[0].replace('"b":"0.35210000"', f'"b":"{bid}"')
    assert frame != BOOK_FRAMES[0]
    harness.source.on_message(frame, 7)
    assert harness.quotes == []
    assert harness.stats.dropped == {"bad_number": 1} and harness.stats.malformed == 1
    assert harness.stats.last_quote_ms is None
