"""Decoding frames of Gemini's current WebSocket API into quotes, and its answers to requests.

No live recording exists yet: the frames follow the documented bookTicker shape (see
oracled/sources/gemini_ws.py), with values of our own. The bad frames every venue shares run from
test_parse_shared.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from parse_cases import GEMINI_WS, GEMINI_WS_NEWER, GEMINI_WS_OLDER, Harness, open_harness

from oracled.model import Quote
from oracled.sources.gemini_ws import GeminiWsSource

E_MS = 1_764_200_000_000  # GEMINI_WS_OLDER's event time, in ms


@pytest.fixture
async def harness() -> AsyncIterator[Harness[GeminiWsSource]]:
    async with open_harness(GEMINI_WS) as h:
        yield h


def test_book_ticker_becomes_a_quote_at_its_event_time(harness: Harness[GeminiWsSource]) -> None:
    """A bookTicker frame is one quote of the canonical pair; its nanosecond `E` is the venue
    time in ms (the latency observed is receipt less that)."""
    harness.source.on_message(GEMINI_WS_OLDER, E_MS + 7)
    assert harness.quotes == [
        Quote("gmw", "BTC/USD", E_MS + 7, bid=91250.10, ask=91250.90, venue_ts=E_MS)
    ]
    assert harness.stats.latency_sum_ms == 7 and harness.stats.malformed == 0


def test_frames_as_bytes_and_without_an_event_time_decode_too(
    harness: Harness[GeminiWsSource],
) -> None:
    """A binary frame decodes like text; a frame without `E` is quoted at its receipt."""
    harness.source.on_message(GEMINI_WS_OLDER.encode(), E_MS)
    bare = GEMINI_WS_NEWER.replace('"E":1764200000250000000,', "")
    harness.source.on_message(bare, E_MS + 900)
    assert [(q.bid, q.venue_ts) for q in harness.quotes] == [(91250.10, E_MS), (91251.20, None)]


def test_the_same_event_again_is_a_duplicate(harness: Harness[GeminiWsSource]) -> None:
    """A frame whose event time equals the last quoted one of its symbol is dropped as
    `duplicate`, an older one as `out_of_order`; another symbol has its own order."""
    source = harness.source
    source.on_message(GEMINI_WS_NEWER, E_MS + 300)
    source.on_message(GEMINI_WS_NEWER, E_MS + 301)
    source.on_message(GEMINI_WS_OLDER, E_MS + 302)
    source.on_message(GEMINI_WS_OLDER.replace('"btcusd"', '"ethusd"'), E_MS + 303)
    assert [(q.pair, q.recv_ts) for q in harness.quotes] == [
        ("BTC/USD", E_MS + 300),
        ("ETH/USD", E_MS + 303),
    ]
    assert harness.stats.dropped == {"duplicate": 1, "out_of_order": 1}
    assert harness.stats.malformed == 0


async def test_a_new_connection_starts_the_order_afresh(harness: Harness[GeminiWsSource]) -> None:
    """Event times are compared within a connection: after a reconnect an older frame of the
    symbol is quoted again (the core keeps its own order across connections)."""
    harness.source.on_message(GEMINI_WS_NEWER, E_MS + 300)
    assert await harness.source.connect_url() == "wss://ws.gemini.com"
    harness.source.on_message(GEMINI_WS_OLDER, E_MS + 400)
    assert len(harness.quotes) == 2 and not harness.stats.dropped


def test_a_future_event_time_is_dropped_and_moves_no_bar(
    harness: Harness[GeminiWsSource],
) -> None:
    """An event time further ahead of receipt than the clock-skew bound is dropped by the base
    as `future`; it does not become the symbol's order bar, so the next good frame is quoted."""
    ahead = GEMINI_WS_NEWER.replace("1764200000250000000", "1764200999000000000")
    harness.source.on_message(ahead, E_MS + 300)
    harness.source.on_message(GEMINI_WS_NEWER, E_MS + 301)
    assert [q.recv_ts for q in harness.quotes] == [E_MS + 301]
    assert harness.stats.dropped == {"future": 1}


@pytest.mark.parametrize("bid", ["91_250.10", " 91250.10", "91250.10 ", ""])
def test_a_price_that_is_no_venue_decimal_is_never_quoted(
    harness: Harness[GeminiWsSource], bid: str
) -> None:
    """A price msgspec cannot read as a decimal (an underscore, blanks, nothing), though Python's
    float() reads some of them, is `bad_number` and never quoted."""
    frame = GEMINI_WS_OLDER.replace('"b":"91250.10"', f'"b":"{bid}"')
    assert frame != GEMINI_WS_OLDER
    harness.source.on_message(frame, E_MS)
    assert harness.quotes == []
    assert harness.stats.dropped == {"bad_number": 1} and harness.stats.malformed == 1


def test_answers_to_our_pings_are_life_only(harness: Harness[GeminiWsSource]) -> None:
    """Whatever the venue answers to our ``ping`` (its result is not documented) is counted as
    nothing: not an ack, not an error, not malformed."""
    for answer in (
        '{"id":"ping","status":200,"result":{}}',
        '{"id":"ping","status":200}',
        '{"id":"ping","status":429,"error":{"code":-1003,"msg":"Too many requests"}}',
    ):
        harness.source.on_message(answer, 1)
    assert not harness.stats.dropped and harness.stats.malformed == 0


def test_a_refusal_without_an_error_object_names_its_status(
    harness: Harness[GeminiWsSource],
) -> None:
    """An answer to a one-symbol request with a failing status and no `error` refuses it, in the
    status's words."""
    harness.source._pending[4] = ("btcusd",)
    harness.source.on_message('{"id":4,"status":503}', 1)
    assert harness.stats.failed_instruments == {"btcusd": "status 503"}
    assert harness.source._pending == {}


def test_requests_follow_the_documented_shapes(harness: Harness[GeminiWsSource]) -> None:
    """SUBSCRIBE lists lower-case `<symbol>@bookTicker` streams under a numeric id; the ping is
    the documented `ping` method under the id its answer is known by."""
    source = harness.source
    assert source.symbols == ("btcusd", "ethusd")
    assert source.subscribe_message(5, ["btcusd", "ethusd"]) == (
        '{"id":5,"method":"SUBSCRIBE","params":["btcusd@bookTicker","ethusd@bookTicker"]}'
    )
    assert source.app_ping() == '{"id":"ping","method":"ping"}'
    assert source.stream_url() == "wss://ws.gemini.com"


def test_rest_pubticker_is_read_for_the_symbol_asked(harness: Harness[GeminiWsSource]) -> None:
    """REST asks v2's public pubticker for one symbol; its answer is quoted for that symbol, a
    bad one is dropped for its reason."""
    url, query = harness.source.rest_request(["ethusd"]) or ("", {})
    assert (url, query) == ("https://api.gemini.com/v1/pubticker/ethusd", {})
    harness.source.on_rest(b'{"bid":"3010.25","ask":"3010.75","last":"3010.5"}', 42)
    assert harness.quotes == [Quote("gmw", "ETH/USD", 42, bid=3010.25, ask=3010.75)]
    harness.source.on_rest(b'{"result":"error","reason":"InvalidSymbol"}', 43)
    harness.source.on_rest(b'{"bid":"x","ask":"1"}', 44)
    assert harness.stats.dropped == {"shape": 1, "bad_number": 1}


@pytest.mark.parametrize("event_ns", ["-1000000", "-10000000000000000000000000"])
def test_an_event_time_before_1970_is_a_bad_number_not_a_quote(
    event_ns: str, harness: Harness[GeminiWsSource]
) -> None:
    """A symbol's first `E` meets no bar: one before 1970 is `bad_number`, not a quote with that
    time, and sets no bar (found by test_adapter_fuzz)."""
    harness.source.on_message(GEMINI_WS_OLDER.replace("1764200000000000000", event_ns), E_MS)
    assert harness.quotes == []
    assert harness.stats.dropped == {"bad_number": 1}
    harness.source.on_message(GEMINI_WS_OLDER, E_MS)
    assert len(harness.quotes) == 1
