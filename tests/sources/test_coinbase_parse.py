"""Decoding Coinbase Advanced Trade frames: recorded frames, control frames and every bad frame."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from parse_cases import COINBASE, Harness, open_harness

from oracled.model import Quote
from oracled.sources import coinbase
from oracled.sources.coinbase import CoinbaseSource

FIXTURES = Path(__file__).parent.parent / "fixtures" / "coinbase"
# The documented ticker message is the subscription's snapshot; the stream goes on with updates
# of the same shape, the frames most tests here read.
SNAPSHOT = (FIXTURES / "ws_ticker.json").read_text()
TICKER = SNAPSHOT.replace('"type": "snapshot"', '"type": "update"')
HEARTBEAT = (FIXTURES / "ws_heartbeats.json").read_text()
SUBSCRIPTIONS = (FIXTURES / "ws_subscriptions.json").read_text()
TRADES = (FIXTURES / "ws_market_trades.json").read_text()
REST = (FIXTURES / "rest_market_products_ticker.json").read_bytes()
TICKER_MS = 1_775_572_203_000  # 2026-04-07T14:30:03.000000Z
# Received just after the ticker's time: a quote received before its venue time by more than the
# clock-skew bound is dropped as `future`.
RECV = TICKER_MS + 5


@pytest.fixture
async def harness() -> AsyncIterator[Harness[CoinbaseSource]]:
    async with open_harness(COINBASE) as h:
        yield h


def test_recorded_ticker_becomes_a_quote_with_venue_time(harness: Harness[CoinbaseSource]) -> None:
    """The documented ticker frame gives one quote: mapped pair, bid/ask, last price (the
    ticker's ``price``), envelope time in ms."""
    harness.source.on_message(TICKER, RECV)
    assert harness.quotes == [
        Quote("cb", "XBT/USD", RECV, 68_900.5, 68_900.0, 68_901.0, venue_ts=TICKER_MS)
    ]
    assert harness.stats.malformed == 0
    assert harness.stats.quotes == 1 and harness.stats.last_quote_ms == RECV


def test_ticker_as_bytes_decodes_too(harness: Harness[CoinbaseSource]) -> None:
    """A frame delivered as bytes decodes like text."""
    harness.source.on_message(TICKER.encode(), RECV)
    assert [q.pair for q in harness.quotes] == ["XBT/USD"]


def test_heartbeat_is_life_not_data(harness: Harness[CoinbaseSource]) -> None:
    """A recorded heartbeat is accepted silently: no quote, nothing malformed, nothing dropped."""
    harness.source.on_message(HEARTBEAT, 1)
    assert harness.quotes == []
    assert harness.stats.malformed == 0 and harness.stats.dropped == {}


def test_frame_of_another_channel_is_counted_apart(harness: Harness[CoinbaseSource]) -> None:
    """A well-formed market_trades frame is not malformed, only counted as another channel."""
    harness.source.on_message(TRADES, 1)
    assert harness.quotes == []
    assert harness.stats.malformed == 0
    assert harness.stats.dropped == {"other_channel": 1}


def test_usdc_symbol_accepts_frames_of_its_usd_twin(harness: Harness[CoinbaseSource]) -> None:
    """-USDC products are served with -USD data: a SOL-USD ticker feeds the SOL/USDC pair."""
    assert harness.source.symbols == ("BTC-USD", "ETH-USD", "SOL-USDC")
    harness.source.on_message(TICKER.replace("BTC-USD", "SOL-USD"), RECV)
    assert [q.pair for q in harness.quotes] == ["SOL/USDC"]


def test_duplicate_and_older_sequence_numbers_are_dropped(harness: Harness[CoinbaseSource]) -> None:
    """A frame whose sequence_num is not above the last one seen is a replay and is dropped."""
    src = harness.source
    src.on_message(TICKER, RECV + 1)
    src.on_message(TICKER, RECV + 2)
    src.on_message(TICKER.replace('"sequence_num": 12', '"sequence_num": 11'), RECV + 3)
    src.on_message(TICKER.replace('"sequence_num": 12', '"sequence_num": 13'), RECV + 4)
    assert [q.recv_ts for q in harness.quotes] == [RECV + 1, RECV + 4]
    assert harness.stats.dropped == {"stale_sequence": 2}
    assert harness.stats.malformed == 0


def test_subscriptions_ack_settles_the_oldest_request(harness: Harness[CoinbaseSource]) -> None:
    """The heartbeats request and the ticker request are settled in order by their acks."""
    src, stats = harness.source, harness.stats
    src._pending[1] = ()
    src._pending[2] = ("BTC-USD", "ETH-USD")
    stats.failed_instruments["ETH-USD"] = "old failure"
    ack = (
        '{"channel":"subscriptions","sequence_num":%d,"events":[{"subscriptions":'
        '{"heartbeats":["heartbeats"],"ticker":["BTC-USD","ETH-USD"]}}]}'
    )
    src.on_message(ack % 1, 1)
    assert list(src._pending) == [2]
    src.on_message(ack % 2, 2)
    assert src._pending == {}
    assert stats.failed_instruments == {}  # an acked symbol has recovered
    assert stats.malformed == 0 and stats.dropped == {}


def test_symbol_missing_from_the_ack_counts_as_refused(harness: Harness[CoinbaseSource]) -> None:
    """The recorded ack lists no ticker channel: a one-symbol ticker request is marked failed."""
    src = harness.source
    src._pending[4] = ("BTC-USD",)
    src.on_message(SUBSCRIPTIONS, 1)
    assert harness.stats.failed_instruments == {"BTC-USD": "not in the venue's subscriptions"}
    assert src._pending == {}


def test_error_frame_refuses_the_oldest_one_symbol_request(
    harness: Harness[CoinbaseSource],
) -> None:
    """An error names no request: the oldest, a single symbol, is marked failed with the
    venue's message and reason (a batch is split: test_parse_shared.py)."""
    src, stats = harness.source, harness.stats
    error = '{"type":"error","message":"Failed to subscribe","reason":"FOO-USD is not valid"}'
    src._pending[9] = ("ETH-USD",)
    src.on_message(error, 2)
    assert stats.failed_instruments == {"ETH-USD": "Failed to subscribe: FOO-USD is not valid"}
    assert src._outbox.qsize() == 0
    assert stats.malformed == 0


def test_unsolicited_acks_and_errors_are_counted(harness: Harness[CoinbaseSource]) -> None:
    """Answers with nothing open, or an error for the heartbeats request, blame no symbol."""
    src, stats = harness.source, harness.stats
    src.on_message(SUBSCRIPTIONS, 1)
    src.on_message('{"type":"error","message":"rate limited"}', 2)
    src._pending[5] = ()
    src.on_message('{"type":"error","message":"Failed to subscribe"}', 3)
    assert stats.dropped == {"unsolicited": 1, "venue_error": 2}
    assert stats.failed_instruments == {} and src._pending == {}


def test_rest_ticker_becomes_a_quote_for_the_requested_product(
    harness: Harness[CoinbaseSource],
) -> None:
    """The recorded public ticker answer is quoted for the product of the request it answers,
    with its latest trade as the last price."""
    src = harness.source
    url, query = src.rest_request(["BTC-USD"]) or ("", {})
    assert url == "https://api.coinbase.com/api/v3/brokerage/market/products/BTC-USD/ticker"
    assert query == {"limit": "1"}
    src.on_rest(REST, 42)
    assert harness.quotes == [Quote("cb", "XBT/USD", 42, 68_923.67, 68_923.66, 68_923.67)]
    src.on_rest(b'{"error":"NOT_FOUND","message":"no such product"}', 43)
    src.on_rest(b"<html>", 44)
    assert harness.stats.dropped == {"shape": 1, "decode": 1}


def test_subscribe_messages_follow_the_documented_shape(harness: Harness[CoinbaseSource]) -> None:
    """One channel per message: tickers with product ids, heartbeats without."""
    src = harness.source
    assert src.subscribe_message(1, ["BTC-USD", "ETH-USD"]) == (
        '{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channel":"ticker"}'
    )
    assert src.subscribe_message(2, []) == '{"type":"subscribe","channel":"heartbeats"}'
    assert src.stream_url() == "wss://advanced-trade-ws.coinbase.com"
    assert src.venue_symbol("BTC/USD") == "BTC-USD"


@pytest.mark.parametrize("last", ['"abc"', '""', '"0.00"', '"-1"', '"NaN"', "null", "{}"])
def test_a_bad_last_price_never_spoils_the_book(
    harness: Harness[CoinbaseSource], last: str
) -> None:
    """A ticker whose last price is unreadable, empty, zero, negative or NaN still gives its
    bid and ask, without a last price, and is not counted as malformed."""
    frame = TICKER.replace('"price": "68900.50"', f'"price": {last}')
    assert frame != TICKER
    harness.source.on_message(frame, RECV)
    assert harness.quotes == [
        Quote("cb", "XBT/USD", RECV, None, 68_900.0, 68_901.0, venue_ts=TICKER_MS)
    ]
    assert harness.stats.malformed == 0 and harness.stats.dropped == {}


def test_ticker_out_of_the_documented_shape_gives_the_same_quote(
    harness: Harness[CoinbaseSource],
) -> None:
    """A ticker without best_bid_quantity leaves the one-pass decoder; the text path quotes it
    the same, and a message of two tickers gives two quotes."""
    data = json.loads(TICKER)
    del data["events"][0]["tickers"][0]["best_bid_quantity"]
    harness.source.on_message(json.dumps(data), RECV + 1)
    two = json.loads(TICKER)
    ticker = two["events"][0]["tickers"][0]
    two["events"][0]["tickers"].append({**ticker, "product_id": "ETH-USD"})
    two["sequence_num"] = 13
    harness.source.on_message(json.dumps(two), RECV + 2)
    assert [(q.pair, q.recv_ts, q.price, q.bid, q.ask) for q in harness.quotes] == [
        ("XBT/USD", RECV + 1, 68_900.5, 68_900.0, 68_901.0),
        ("XBT/USD", RECV + 2, 68_900.5, 68_900.0, 68_901.0),
        ("ETH/USD", RECV + 2, 68_900.5, 68_900.0, 68_901.0),
    ]
    assert harness.stats.malformed == 0


def test_ticker_message_without_tickers_is_a_shape_error(harness: Harness[CoinbaseSource]) -> None:
    """A ticker message in the documented envelope whose event lists no ticker is malformed,
    and so is one whose event has no tickers key at all (judged on the strict path)."""
    data = json.loads(TICKER)
    data["events"][0]["tickers"] = []
    harness.source.on_message(json.dumps(data), 1)
    assert harness.quotes == [] and harness.stats.dropped == {"shape": 1}
    del data["events"][0]["tickers"]
    data["sequence_num"] += 1
    harness.source.on_message(json.dumps(data), 2)
    assert harness.quotes == [] and harness.stats.dropped == {"shape": 2}


def test_an_ack_without_heartbeats_refuses_the_heartbeats_request(
    harness: Harness[CoinbaseSource],
) -> None:
    """The heartbeats request (no symbols) answered by a subscriptions message that does not
    list heartbeats was refused: counted as a venue error and closed, with no symbol failed;
    the ticker request behind it is still open for the next answer."""
    src, stats = harness.source, harness.stats
    src._pending[1] = ()
    src._pending[2] = ("BTC-USD",)
    ack = (
        '{"channel":"subscriptions","sequence_num":1,"events":[{"subscriptions":'
        '{"ticker":["BTC-USD"]}}]}'
    )
    src.on_message(ack, 1)
    assert src._pending == {2: ("BTC-USD",)}
    assert stats.dropped == {"venue_error": 1}
    assert stats.failed_instruments == {} and stats.malformed == 0


def test_bare_number_prices_beside_string_quantities_are_read_as_numbers(
    harness: Harness[CoinbaseSource],
) -> None:
    """The known limit of the one-pass decoder: with its quantities printed as strings, a ticker
    whose prices are bare JSON numbers gives those prices (quantities missing too: refused)."""
    frame = TICKER.replace('"best_bid": "68900.00"', '"best_bid": 68900.0')
    harness.source.on_message(frame.replace('"best_ask": "68901.00"', '"best_ask": 68901.0'), RECV)
    assert [(q.bid, q.ask) for q in harness.quotes] == [(68_900.0, 68_901.0)]


# Venue times in the order one connection sends them, and the whole millisecond each stands for
# (worked out by hand: the floor, never rounded up). The first of a second is read in full, later
# ones in the same second from their digits; nanoseconds as in the venue's documented samples.
SECOND = 1_687_552_286_000  # 2023-06-23T20:31:26Z
STAMPS = [
    ("2023-06-23T20:31:26.122969572Z", SECOND + 122),
    ("2023-06-23T20:31:26.122999572Z", SECOND + 122),  # a microsecond reading says 123
    ("2023-06-23T20:31:26.999999999Z", SECOND + 999),  # ... and 27.000
    ("2023-06-23T20:31:26.5Z", SECOND + 500),
    ("2023-06-23T20:31:26Z", SECOND),
    ("2023-06-23T20:31:26.000000Z", SECOND),
    ("2023-06-23T20:31:27.000999999Z", SECOND + 1_000),
    ("2023-06-23T22:31:27.123456789+02:00", SECOND + 1_123),
    ("2023-06-23T20:31:27.124z", SECOND + 1_124),
    ("2023-06-23T20:31:26.001Z", SECOND + 1),  # back to an earlier second
    ("2023-06-24T00:00:00.000000001Z", 1_687_564_800_000),
]


def _ticker(stamp: str, seq: int) -> str:
    frame = json.loads(TICKER)
    frame["timestamp"], frame["sequence_num"] = stamp, seq
    return json.dumps(frame)


def test_venue_time_is_the_exact_millisecond_of_every_documented_form(
    harness: Harness[CoinbaseSource],
) -> None:
    """Nanosecond, microsecond, millisecond and whole-second times, ``Z``, ``z`` or an offset,
    in the same second or not: every quote's venue time is the millisecond its time falls in."""
    for seq, (stamp, ms) in enumerate(STAMPS, start=100):
        harness.source.on_message(_ticker(stamp, seq), ms + 5)  # received just after its time
    assert [q.venue_ts for q in harness.quotes] == [ms for _, ms in STAMPS]
    assert harness.stats.malformed == 0 and harness.stats.dropped == {}


@pytest.mark.parametrize(
    "stamp",
    [
        "2023-06-23T20:31:26.1a3Z",
        "2023-06-23T20:31:26.12 Z",
        "2023-06-23T20:31:26.+12Z",
        "2023-06-23T20:31:26.1_2Z",
        "2023-06-23T20:31:26.١٢٣Z",
        "2023-06-23T20:31:26.123",
        "2023-06-23T20:31:26.123Q",
        "2023-06-23T20:31:26.Z",
        "2023-06-23T20:31:60.123Z",
        "2023-06-23",
        "",
    ],
)
def test_a_time_that_is_not_rfc3339_with_offset_drops_the_frame(
    harness: Harness[CoinbaseSource], stamp: str
) -> None:
    """A ticker whose time is not RFC 3339 with an offset gives no quote and counts as out of
    shape, also right after a good time of the same second (which the next ones are read by)."""
    harness.source.on_message(_ticker("2023-06-23T20:31:26.122969572Z", 1), SECOND + 127)
    harness.source.on_message(_ticker(stamp, 2), SECOND + 128)
    assert [q.recv_ts for q in harness.quotes] == [SECOND + 127]
    assert harness.stats.dropped == {"shape": 1} and harness.stats.malformed == 1


def test_venue_times_stay_exact_across_many_seconds_and_the_cache_stays_small(
    harness: Harness[CoinbaseSource],
) -> None:
    """Three hundred tickers, each in a second of its own and twice within it: every venue time
    is the exact millisecond, including after the remembered seconds were forgotten, and the
    memory of seconds never holds more than its 64 entries (a long run must not grow it)."""
    data = json.loads(TICKER)
    expected = []
    for n in range(300):
        for ms in (123, 987):
            second = TICKER_MS // 1000 + n
            when = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            data["timestamp"] = f"{when}.{ms}456Z"
            data["sequence_num"] = 100 + len(expected)
            harness.source.on_message(json.dumps(data), second * 1000 + ms + 5)
            expected.append(second * 1000 + ms)
            assert len(coinbase._SECONDS) <= 64
    assert [q.venue_ts for q in harness.quotes] == expected
    assert harness.stats.malformed == 0


def test_sequence_numbers_are_held_per_product(harness: Harness[CoinbaseSource]) -> None:
    """The docs do not say what sequence_num counts. Were it counted per product (or per
    channel), a quiet product's numbers would sit far below a busy one's: each product's tickers
    are held to their own last number, so neither is refused behind the other, and a replay of
    either is still dropped. Heartbeats' numbers are not checked (they carry no price)."""
    src = harness.source
    busy = TICKER.replace('"sequence_num": 12', '"sequence_num": 5000')
    quiet = TICKER.replace("BTC-USD", "ETH-USD").replace('"sequence_num": 12', '"sequence_num": 7')
    beat = json.loads(HEARTBEAT)
    beat["sequence_num"] = 9000
    src.on_message(busy, RECV + 1)
    src.on_message(json.dumps(beat), RECV + 2)
    src.on_message(quiet, RECV + 3)
    src.on_message(quiet, RECV + 4)  # a replay of the quiet product
    src.on_message(busy.replace('"sequence_num": 5000', '"sequence_num": 4999'), RECV + 5)
    btc, eth = harness.source._by_symbol["BTC-USD"][0], harness.source._by_symbol["ETH-USD"][0]
    assert [(q.pair, q.recv_ts) for q in harness.quotes] == [(btc, RECV + 1), (eth, RECV + 3)]
    assert harness.stats.dropped == {"stale_sequence": 2}
    assert harness.stats.sequence_resets == 0


def test_a_made_up_product_does_not_grow_the_sequence_table(
    harness: Harness[CoinbaseSource],
) -> None:
    """Frames naming products nobody subscribed to are counted as unknown symbols, and their
    numbers are kept nowhere: the table holds the configured products only."""
    src = harness.source
    before = dict(src._seq_of)
    for n in range(50):
        src.on_message(
            TICKER.replace("BTC-USD", f"NOPE{n}-USD").replace(
                '"sequence_num": 12', f'"sequence_num": {100 + n}'
            ),
            RECV + n,
        )
    assert harness.quotes == []
    assert harness.stats.dropped == {"unknown_symbol": 50}
    assert src._seq_of == before
