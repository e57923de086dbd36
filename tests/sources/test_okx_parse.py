"""Decoding OKX v5 frames into quotes: real recorded frames, control events, and every bad frame."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from parse_cases import OKX, Harness, open_harness
from structlog.testing import capture_logs

from oracled.clock import ManualClock
from oracled.config import SourceConfig
from oracled.model import Quote
from oracled.sources import SourceStats
from oracled.sources.okx import OkxSource

FIXTURES = Path(__file__).parent.parent / "fixtures" / "okx"
TICKERS = (FIXTURES / "ws_tickers.jsonl").read_text().splitlines()
EVENTS = (FIXTURES / "ws_events.jsonl").read_text().splitlines()
# Received just after the newest recorded ticker (ts 1652459223003 to ...6240): a quote received
# before its venue time by more than the clock-skew bound is dropped as `future`.
RECV = 1652459226240 + 5


@pytest.fixture
async def harness() -> AsyncIterator[Harness[OkxSource]]:
    async with open_harness(OKX) as h:
        yield h


def test_instrument_names_follow_the_venue_rule(harness: Harness[OkxSource]) -> None:
    """BASE/QUOTE -> BASE-QUOTE, perp adds -SWAP, config names win."""
    assert harness.source.symbols == ("BTC-USD-220527", "UNI-USD-SWAP", "BTC-USDT", "ETH-USDT")
    src = harness.source
    assert src.instrument("BTC/USDT", "perp") == "BTC-USDT-SWAP"
    assert src.instrument("SOL/USDC", "spot") == "SOL-USDC"


async def test_spot_and_perp_of_one_pair_are_two_instruments() -> None:
    """Asking for BTC/USDT spot and perp subscribes both BTC-USDT and BTC-USDT-SWAP."""
    async with aiohttp.ClientSession() as http:
        src = OkxSource(
            "okx",
            SourceConfig(type="okx"),
            [("BTC/USDT", "spot"), ("BTC/USDT", "perp")],
            lambda q: None,
            ManualClock(),
            http,
            SourceStats("okx"),
        )
    assert src.symbols == ("BTC-USDT", "BTC-USDT-SWAP")
    assert src._by_symbol["BTC-USDT-SWAP"] == ("BTC/USDT", "perp")


def test_recorded_tickers_become_quotes_with_venue_time(harness: Harness[OkxSource]) -> None:
    """Each real tickers frame yields one quote: pair, kind, float bid/ask, the last trade price
    and the venue's ts."""
    for i, frame in enumerate(TICKERS):
        harness.source.on_message(frame, RECV + i)
    assert harness.stats.malformed == 0
    assert harness.quotes == [
        Quote("okx", "BTC/USDQ", RECV, 30218.8, 30210.4, 30220.1, venue_ts=1652459223003),
        Quote("okx", "UNI/USD", RECV + 1, 5.123, 5.134, 5.142, "perp", venue_ts=1652459223143),
        Quote("okx", "BTC/USDT", RECV + 2, 30236.0, 30228.6, 30228.7, venue_ts=1652459224956),
        Quote("okx", "BTC/USDT", RECV + 3, 30243.5, 30228.6, 30228.7, venue_ts=1652459226124),
        Quote("okx", "BTC/USDT", RECV + 4, 30243.5, 30243.4, 30243.5, venue_ts=1652459226240),
    ]
    assert harness.stats.quotes == 5
    assert harness.stats.last_quote_ms == RECV + 4


def test_recorded_acks_settle_each_instrument_of_a_request(harness: Harness[OkxSource]) -> None:
    """The recorded per-arg acks (no id, as in 2022) settle the request instrument by instrument."""
    src = harness.source
    src._pending[4] = ("BTC-USD-220527", "UNI-USD-SWAP", "BTC-USDT")
    src.on_message(EVENTS[0], 1)
    assert src._pending == {4: ("UNI-USD-SWAP", "BTC-USDT")}
    for frame in EVENTS[1:]:
        src.on_message(frame, 2)
    assert src._pending == {}
    assert harness.stats.malformed == 0
    assert harness.stats.dropped == {}


def test_ack_with_echoed_id_clears_a_failed_instrument(harness: Harness[OkxSource]) -> None:
    """An ack carrying the request id (current API) settles that request and revives the symbol."""
    src, stats = harness.source, harness.stats
    stats.failed_instruments["ETH-USDT"] = "60018: gone"
    src._pending[9] = ("ETH-USDT",)
    src.on_message(
        '{"id":"9","event":"subscribe","arg":{"channel":"tickers","instId":"ETH-USDT"},'
        '"connId":"a4d3ae55"}',
        1,
    )
    assert src._pending == {}
    assert stats.failed_instruments == {}


def test_error_for_one_instrument_fails_only_that_one(harness: Harness[OkxSource]) -> None:
    """A 60018 error naming an instId fails it; the other args of the request stay pending."""
    src, stats = harness.source, harness.stats
    src._pending[5] = ("BTC-USDT", "ETH-USDT")
    src.on_message(
        '{"id":"5","event":"error","code":"60018","msg":"Wrong URL or channel:tickers,'
        "instId:ETH-USDT doesn't exist. Please use the correct URL, channel and parameters "
        'referring to API document.","connId":"a4d3ae55"}',
        1,
    )
    assert list(stats.failed_instruments) == ["ETH-USDT"]
    assert stats.failed_instruments["ETH-USDT"].startswith("60018: Wrong URL")
    assert src._pending == {5: ("BTC-USDT",)}
    assert src._outbox.qsize() == 0  # nothing is retried, nothing reconnects
    assert stats.malformed == 0


def test_pong_and_connection_count_are_life_not_errors(harness: Harness[OkxSource]) -> None:
    """The text pong and channel-conn-count events are accepted silently."""
    src = harness.source
    src.on_message("pong", 1)
    src.on_message(b"pong", 2)
    src.on_message(
        '{"event":"channel-conn-count","channel":"tickers","connCount":"2","connId":"a4d3ae55"}', 3
    )
    assert harness.stats.malformed == 0
    assert harness.stats.dropped == {}


def test_upgrade_notice_asks_for_a_rotation(harness: Harness[OkxSource]) -> None:
    """Notice 64008 is the venue's shutdown notice: accepted, not counted as malformed."""
    harness.source.on_message(
        '{"event":"notice","code":"64008","msg":"The connection will soon be closed for a '
        'service upgrade. Please reconnect.","connId":"a4d3ae55"}',
        1,
    )
    assert harness.stats.malformed == 0


def test_older_ticker_never_overrides_a_newer_one(harness: Harness[OkxSource]) -> None:
    """A ticker whose ts is older than the last one seen for its instrument is dropped."""
    src = harness.source
    src.on_message(TICKERS[4], RECV + 1)
    src.on_message(TICKERS[2], RECV + 2)  # an older frame arriving late
    assert [q.venue_ts for q in harness.quotes] == [1652459226240]
    assert harness.stats.dropped == {"out_of_order": 1}
    assert harness.stats.malformed == 0


def test_subscribe_message_follows_the_documented_shape(harness: Harness[OkxSource]) -> None:
    """One subscribe op with a string id and one tickers arg per instrument."""
    text = harness.source.subscribe_message(5, ["BTC-USDT", "UNI-USD-SWAP"])
    assert json.loads(text) == {
        "id": "5",
        "op": "subscribe",
        "args": [
            {"channel": "tickers", "instId": "BTC-USDT"},
            {"channel": "tickers", "instId": "UNI-USD-SWAP"},
        ],
    }
    assert harness.source.app_ping() == "ping"


def test_rest_polls_alternate_instrument_types_one_request_each(
    harness: Harness[OkxSource],
) -> None:
    """A batch of both kinds asks SWAP and SPOT by turns; one instrument uses the single ticker."""
    src = harness.source
    seen = [src.rest_request(list(src.symbols)) for _ in range(4)]
    assert [q for _, q in filter(None, seen)] == [
        {"instType": "SWAP"},
        {"instType": "SPOT"},
        {"instType": "SWAP"},
        {"instType": "SPOT"},
    ]
    assert seen[0] is not None and seen[0][0] == "https://www.okx.com/api/v5/market/tickers"
    one = src.rest_request(["ETH-USDT"])
    assert one == ("https://www.okx.com/api/v5/market/ticker", {"instId": "ETH-USDT"})


def test_rest_body_becomes_quotes_for_our_instruments_only(harness: Harness[OkxSource]) -> None:
    """A tickers reply lists every instrument; ours become quotes with their last trade price,
    the rest are skipped quietly."""
    rows = [json.loads(frame)["data"][0] for frame in TICKERS[1:3]]
    rows.append({**rows[1], "instId": "DOGE-USDT"})
    body = json.dumps({"code": "0", "msg": "", "data": rows}).encode()
    harness.source.on_rest(body, RECV)
    assert harness.quotes == [
        Quote("okx", "UNI/USD", RECV, 5.123, 5.134, 5.142, "perp", venue_ts=1652459223143),
        Quote("okx", "BTC/USDT", RECV, 30236.0, 30228.6, 30228.7, venue_ts=1652459224956),
    ]
    assert harness.stats.dropped == {}


def test_rest_errors_are_counted(harness: Harness[OkxSource]) -> None:
    """A business error code, a broken body and a wrong shape are counted, never raised."""
    src = harness.source
    src.on_rest(b'{"code":"50011","msg":"Too Many Requests","data":[]}', 1)
    src.on_rest(b"{", 2)
    src.on_rest(b'{"code":"0","data":{"instId":"BTC-USDT"}}', 3)
    assert harness.quotes == []
    assert harness.stats.dropped == {"venue_error": 1, "decode": 1, "shape": 1}


@pytest.mark.parametrize("last", ['"abc"', '""', '"0"', '"-1"', '"NaN"', "null", "{}"])
def test_a_bad_last_price_never_spoils_the_book(harness: Harness[OkxSource], last: str) -> None:
    """A ticker whose last price is unreadable, empty (no trade yet), zero, negative or NaN
    still gives its bid and ask, without a last price, and is not counted as malformed."""
    frame = TICKERS[2].replace('"last":"30236"', f'"last":{last}')
    assert frame != TICKERS[2]
    harness.source.on_message(frame, RECV)
    assert harness.quotes == [
        Quote("okx", "BTC/USDT", RECV, None, 30228.6, 30228.7, venue_ts=1652459224956)
    ]
    assert harness.stats.malformed == 0 and harness.stats.dropped == {}


def test_ticker_out_of_the_documented_shape_gives_the_same_quote(
    harness: Harness[OkxSource],
) -> None:
    """A ticker without bidSz leaves the one-pass decoder; the text path quotes it the same,
    and a push of two tickers gives two quotes."""
    push = json.loads(TICKERS[2])
    del push["data"][0]["bidSz"]
    harness.source.on_message(json.dumps(push), RECV + 1)
    two = json.loads(TICKERS[3])
    two["data"].append({**two["data"][0], "instId": "ETH-USDT"})
    harness.source.on_message(json.dumps(two), RECV + 2)
    assert [(q.pair, q.recv_ts, q.price, q.bid, q.ask) for q in harness.quotes] == [
        ("BTC/USDT", RECV + 1, 30236.0, 30228.6, 30228.7),
        ("BTC/USDT", RECV + 2, 30243.5, 30228.6, 30228.7),
        ("ETH/USDT", RECV + 2, 30243.5, 30228.6, 30228.7),
    ]
    assert harness.stats.malformed == 0


def test_bare_number_prices_beside_string_sizes_are_read_as_numbers(
    harness: Harness[OkxSource],
) -> None:
    """The known limit of the one-pass decoder: with its sizes printed as strings, a ticker whose
    prices are bare JSON numbers gives those prices (sizes missing too: refused, see GARBAGE)."""
    frame = TICKERS[2].replace('"askPx":"30228.7"', '"askPx":30228.7')
    harness.source.on_message(frame.replace('"bidPx":"30228.6"', '"bidPx":30228.6'), RECV)
    assert [(q.bid, q.ask) for q in harness.quotes] == [(30228.6, 30228.7)]


def test_connection_limit_error_is_a_counted_and_logged_venue_error(
    harness: Harness[OkxSource],
) -> None:
    """channel-conn-count-error (too many connections on the channel) is not a bad frame but
    the venue refusing us: counted as venue_error and logged with the venue's message."""
    with capture_logs() as logs:
        harness.source.on_message(
            '{"event":"channel-conn-count-error","channel":"tickers","connCount":"30",'
            '"connId":"a4d3ae55","code":"60030","msg":"Connection limit exceeded"}',
            1,
        )
    assert harness.stats.dropped == {"venue_error": 1}
    assert harness.stats.malformed == 0
    assert [(e["event"], e["message"]) for e in logs] == [
        ("venue connection limit", "Connection limit exceeded")
    ]


def test_a_venue_repeating_the_connection_limit_error_is_logged_once_a_minute(
    harness: Harness[OkxSource],
) -> None:
    """The connection-limit error sent with every frame is counted each time but logged once,
    like any venue error: a venue cannot flood the log with it."""
    with capture_logs() as logs:
        for i in range(100):
            harness.source.on_message(
                '{"event":"channel-conn-count-error","channel":"tickers","connCount":"30",'
                '"connId":"a4d3ae55","code":"60030","msg":"Connection limit exceeded"}',
                i + 1,
            )
    assert harness.stats.dropped == {"venue_error": 100}
    assert [e["event"] for e in logs] == ["venue connection limit"]
