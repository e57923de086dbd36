"""Decoding Kraken v2 frames into quotes: recorded frames, control frames and every bad frame."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from parse_cases import KRAKEN, LAX_NUMBERS, Harness, open_harness

from oracled.model import Quote
from oracled.sources.kraken import KrakenSource

FIXTURES = Path(__file__).parent.parent / "fixtures" / "kraken"
TICKER = (FIXTURES / "ws_ticker_snapshot.json").read_text()
ACK = (FIXTURES / "ws_subscribe_ack.json").read_text()
PONG = (FIXTURES / "ws_pong.json").read_text()
REST_TICKER = (FIXTURES / "rest_ticker_XBTUSDT.json").read_bytes()
TICKER_TS = 1_671_960_659_123  # 2022-12-25T09:30:59.123456Z in whole milliseconds
# Received just after the ticker's time: a quote received before its venue time by more than the
# clock-skew bound is dropped as `future`.
RECV = TICKER_TS + 5
HEARTBEAT = '{"channel":"heartbeat"}'


def status(system: str) -> str:
    return (
        '{"channel":"status","data":[{"api_version":"v2","connection_id":13834774380200032777,'
        f'"system":"{system}","version":"2.0.0"}}],"type":"update"}}'
    )


@pytest.fixture
async def harness() -> AsyncIterator[Harness[KrakenSource]]:
    async with open_harness(KRAKEN) as h:
        yield h


def test_symbols_follow_the_v2_naming(harness: Harness[KrakenSource]) -> None:
    """v2 symbols keep the slash and use BTC and DOGE, never v1's XBT and XDG."""
    assert harness.source.symbols == ("BTC/USD", "BTC/USDT", "DOGE/USD", "ETH/USD", "SOL/USDC")
    assert harness.source.stream_url() == "wss://ws.kraken.com/v2"


def test_recorded_ticker_snapshot_becomes_one_quote(harness: Harness[KrakenSource]) -> None:
    """The recorded snapshot gives the exact bid, ask, last price and venue time in ms."""
    harness.source.on_message(TICKER, RECV)
    assert harness.quotes == [
        Quote("kr", "BTC/USD", RECV, 105899.4, 105944.2, 105944.3, venue_ts=TICKER_TS)
    ]
    assert harness.stats.malformed == 0
    assert harness.stats.quotes == 1 and harness.stats.last_quote_ms == RECV


def test_ticker_as_bytes_and_without_timestamp(harness: Harness[KrakenSource]) -> None:
    """Bytes decode like text; a ticker without `timestamp` (older docs) has no venue time."""
    harness.source.on_message(TICKER.encode(), RECV)
    no_ts = TICKER.replace('"timestamp": "2022-12-25T09:30:59.123456Z"', '"vwap2": 1')
    harness.source.on_message(no_ts.replace("BTC/USD", "ETH/USD"), RECV + 1)
    assert [q.venue_ts for q in harness.quotes] == [TICKER_TS, None]


def test_older_ticker_is_dropped_as_out_of_order(harness: Harness[KrakenSource]) -> None:
    """A frame older than the newest emitted one for its symbol is counted and not emitted."""
    src = harness.source
    src.on_message(TICKER, RECV + 1)
    src.on_message(TICKER.replace("59.123456Z", "58.000000Z"), RECV + 2)
    src.on_message(TICKER.replace("59.123456Z", "59.123999Z"), RECV + 3)  # same ms: kept
    src.on_message(TICKER.replace("59.123456Z", "59.500000Z"), RECV + 377 + 4)
    assert [q.venue_ts for q in harness.quotes] == [TICKER_TS, TICKER_TS, TICKER_TS + 377]
    assert harness.stats.dropped == {"out_of_order": 1}
    assert harness.stats.malformed == 0


def test_a_bad_price_does_not_raise_the_out_of_order_bar(harness: Harness[KrakenSource]) -> None:
    """A dropped zero-price frame with a late timestamp does not make good frames look stale."""
    src = harness.source
    src.on_message(TICKER.replace("105944.20", "0.0").replace("2022-12", "2030-12"), RECV + 1)
    src.on_message(TICKER, RECV + 2)
    assert len(harness.quotes) == 1
    assert harness.stats.dropped == {"non_positive": 1}


def test_symbol_not_configured_is_dropped_not_malformed(harness: Harness[KrakenSource]) -> None:
    """A well-formed ticker for a symbol we did not ask for is counted as unknown_symbol only."""
    harness.source.on_message(TICKER.replace("BTC/USD", "ADA/EUR"), 1)
    assert harness.quotes == []
    assert harness.stats.dropped == {"unknown_symbol": 1}
    assert harness.stats.malformed == 0


def test_heartbeat_pong_and_status_are_signs_of_life_not_errors(
    harness: Harness[KrakenSource],
) -> None:
    """heartbeat, pong and status frames count nothing but the frame (done by the base)."""
    for frame in (HEARTBEAT, PONG, status("online"), status("maintenance"), status("online")):
        harness.source.on_message(frame, 1)
    assert harness.stats.malformed == 0
    assert harness.stats.dropped == {}
    assert harness.source._system == "online"


def test_recorded_ack_settles_its_symbol(harness: Harness[KrakenSource]) -> None:
    """The recorded per-symbol ack settles BTC/USD of request 1 and clears its failure."""
    src, stats = harness.source, harness.stats
    src._pending[1] = ("BTC/USD", "ETH/USD")
    stats.failed_instruments["BTC/USD"] = "old failure"
    src.on_message(ACK, 1)
    assert src._pending == {1: ("ETH/USD",)}
    assert stats.failed_instruments == {}
    assert stats.malformed == 0 and stats.dropped == {}


def test_per_symbol_acks_and_errors_of_one_request(harness: Harness[KrakenSource]) -> None:
    """One request, three answers: two acks and one error; only the refused symbol fails."""
    src, stats = harness.source, harness.stats
    src._pending[4] = ("BTC/USD", "DOGE/USD", "ETH/USD")
    src.on_message(ACK.replace('"req_id": 1', '"req_id": 4'), 1)
    src.on_message(
        '{"error":"Currency pair not supported DOGE/USD","method":"subscribe","req_id":4,'
        '"success":false,"symbol":"DOGE/USD","time_in":"2023-09-25T09:04:31.742599Z",'
        '"time_out":"2023-09-25T09:04:31.742648Z"}',
        2,
    )
    assert stats.failed_instruments == {"DOGE/USD": "Currency pair not supported DOGE/USD"}
    ack_eth = ACK.replace('"req_id": 1', '"req_id": 4').replace("BTC/USD", "ETH/USD")
    src.on_message(ack_eth, 3)
    assert src._pending == {}
    assert src._outbox.qsize() == 0  # per-symbol errors never split or resend anything
    assert stats.malformed == 0 and stats.dropped == {}


def test_subscribe_message_follows_the_documented_shape(harness: Harness[KrakenSource]) -> None:
    """subscribe names the ticker channel, the symbols, the bbo trigger and the request id."""
    text = harness.source.subscribe_message(3, ["BTC/USD", "ETH/USD"])
    assert text == (
        '{"method":"subscribe","params":{"channel":"ticker","symbol":["BTC/USD","ETH/USD"],'
        '"event_trigger":"bbo"},"req_id":3}'
    )


def test_rest_request_asks_for_every_symbol_by_its_rest_name(
    harness: Harness[KrakenSource],
) -> None:
    """One Ticker request per poll, pairs named as REST knows them (XBT, XDG)."""
    url, query = harness.source.rest_request(list(harness.source.symbols)) or ("", {})
    assert url == "https://api.kraken.com/0/public/Ticker"
    assert query == {"pair": "XBTUSD,XBTUSDT,XDGUSD,ETHUSD,SOLUSDC"}


def test_recorded_rest_ticker_maps_its_legacy_key_back(harness: Harness[KrakenSource]) -> None:
    """The recorded answer filed under XBTUSDT becomes a quote of the configured XBT/USDT, with
    the last trade closed (``c``) as its last price."""
    harness.source.on_rest(REST_TICKER, 42)
    assert harness.quotes == [Quote("kr", "XBT/USDT", 42, 105899.4, 105944.2, 105944.3)]
    assert harness.stats.malformed == 0


def test_rest_legacy_prefixed_keys_map_back(harness: Harness[KrakenSource]) -> None:
    """XXBTZUSD and XETHZUSD map to BTC/USD and ETH/USD; unknown keys and bad rows are counted."""
    body = (
        b'{"error":[],"result":{"XXBTZUSD":{"a":["67000.2","1","1.000"],"b":["67000.1","1",'
        b'"1.000"]},"XETHZUSD":{"a":["3500.2","1","1.000"],"b":["3500.1","1","1.000"]},'
        b'"XDGUSD":{"a":["0.2","1","1.0"],"b":["nan","1","1.0"]},"ZZZUSD":{"a":["1"],"b":["1"]},'
        b'"SOLUSDC":{"a":[],"b":[]}}}'
    )
    harness.source.on_rest(body, 7)
    assert [(q.pair, q.bid, q.ask) for q in harness.quotes] == [
        ("BTC/USD", 67000.1, 67000.2),
        ("ETH/USD", 3500.1, 3500.2),
    ]
    assert harness.stats.dropped == {"not_finite": 1, "unknown_symbol": 1, "shape": 1}
    harness.source.on_rest(b'{"error":["EGeneral:Internal error"]}', 8)
    assert len(harness.quotes) == 2
    harness.source.on_rest(b"<html>", 9)
    assert harness.stats.dropped["decode"] == 1


async def test_rest_keys_with_a_prefix_on_one_side_only_map_back() -> None:
    """Kraken files a few pairs under keys prefixed on one side only: USDT/USD comes back as
    USDTZUSD (asked as USDTUSD), EUR/USD as ZEURZUSD. Both are quotes of their pairs, not
    unknown symbols (USDT/USD is the shipped config's conversion leg for every USDT market)."""
    case = dataclasses.replace(KRAKEN, pairs=(("USDT/USD", "spot"), ("EUR/USD", "spot")))
    async with open_harness(case) as h:
        _, query = h.source.rest_request(list(h.source.symbols)) or ("", {})
        assert query == {"pair": "USDTUSD,EURUSD"}
        body = (
            b'{"error":[],"result":{"USDTZUSD":{"a":["1.0002","1","1.000"],"b":["1.0001","1",'
            b'"1.000"]},"ZEURZUSD":{"a":["1.1602","1","1.000"],"b":["1.1601","1","1.000"]}}}'
        )
        h.source.on_rest(body, 7)
        assert [(q.pair, q.bid, q.ask) for q in h.quotes] == [
            ("USDT/USD", 1.0001, 1.0002),
            ("EUR/USD", 1.1601, 1.1602),
        ]
        assert h.stats.dropped == {}


def test_rest_rows_with_unreadable_numbers(harness: Harness[KrakenSource]) -> None:
    """A REST row whose bid or ask is no number is dropped as bad_number; one whose last trade
    is unreadable still gives its bid and ask, without a last price."""
    body = (
        b'{"error":[],"result":{"XXBTZUSD":{"a":["67000.2","1","1.000"],"b":["abc","1",'
        b'"1.000"],"c":["67000.0","0.1"]},"XETHZUSD":{"a":["3500.2","1","1.000"],"b":['
        b'"3500.1","1","1.000"],"c":["n/a","0.1"]}}}'
    )
    harness.source.on_rest(body, 7)
    assert harness.quotes == [Quote("kr", "ETH/USD", 7, None, 3500.1, 3500.2)]
    assert harness.stats.dropped == {"bad_number": 1}


@pytest.mark.parametrize("text", LAX_NUMBERS)
def test_a_rest_last_trade_float_would_read_is_left_out(
    harness: Harness[KrakenSource], text: str
) -> None:
    """A REST row's last trade written as text float() reads but no venue sends ("1_000",
    " 12.5 ", "١٢٣", ...) is left out like any unreadable one: the bid and ask are quoted
    without a last price, and nothing is counted malformed."""
    body = REST_TICKER.replace(b'"105899.40000"', json.dumps(text).encode())
    harness.source.on_rest(body, 7)
    assert harness.quotes == [Quote("kr", "XBT/USDT", 7, None, 105944.2, 105944.3)]
    assert harness.stats.malformed == 0


@pytest.mark.parametrize("last", ['"105899.4"', "0.0", "-1.0", "null"])
def test_a_bad_last_price_never_spoils_the_book(harness: Harness[KrakenSource], last: str) -> None:
    """A ticker whose last price is text, zero, negative or null still gives its bid and ask,
    without a last price, and is not counted as malformed."""
    frame = TICKER.replace('"last": 105899.40', f'"last": {last}')
    assert frame != TICKER
    harness.source.on_message(frame, RECV)
    assert harness.quotes == [
        Quote("kr", "BTC/USD", RECV, None, 105944.2, 105944.3, venue_ts=TICKER_TS)
    ]
    assert harness.stats.malformed == 0 and harness.stats.dropped == {}


def test_timestamp_without_zone_is_taken_as_utc(harness: Harness[KrakenSource]) -> None:
    """A ticker time printed without its ``Z`` is read as UTC: the same venue time in ms."""
    frame = TICKER.replace('"2022-12-25T09:30:59.123456Z"', '"2022-12-25T09:30:59.123456"')
    assert frame != TICKER
    harness.source.on_message(frame, RECV)
    assert [q.venue_ts for q in harness.quotes] == [TICKER_TS]
    assert harness.stats.malformed == 0


# RFC 3339 forms and the whole milliseconds they stand for, worked out by hand (floor: a time
# 0.9 ms past a millisecond is still in that millisecond).
STAMPS = [
    ("2022-12-25T09:30:59.123456Z", 1_671_960_659_123),
    ("2022-12-25T09:30:59.000000Z", 1_671_960_659_000),
    ("2022-12-25T09:30:59.999999Z", 1_671_960_659_999),
    ("2022-12-25T09:30:59.9Z", 1_671_960_659_900),
    ("2022-12-25T09:30:59Z", 1_671_960_659_000),
    ("2022-12-25T10:30:59.123456+01:00", 1_671_960_659_123),
    ("2022-12-25T01:00:59.1234-08:30", 1_671_960_659_123),
    ("2022-12-25T09:30:59.123456z", 1_671_960_659_123),
    ("1970-01-01T00:00:00.000999Z", 0),
    ("2024-02-29T23:59:59.999999Z", 1_709_251_199_999),
]


@pytest.mark.parametrize(("stamp", "ms"), STAMPS)
def test_venue_time_is_the_exact_millisecond_of_every_rfc3339_form(
    harness: Harness[KrakenSource], stamp: str, ms: int
) -> None:
    """Fraction of any length or none, ``Z`` or an offset: the quote's venue time is the whole
    millisecond the ticker's time falls in, never rounded up."""
    frame = TICKER.replace("2022-12-25T09:30:59.123456Z", stamp)
    harness.source.on_message(frame, ms + 5)  # received just after its time
    assert [q.venue_ts for q in harness.quotes] == [ms]
    assert harness.stats.malformed == 0
