"""Decoding Bitstamp frames into quotes: recorded books and control frames, and every bad frame."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from parse_cases import BITSTAMP, Harness, open_harness
from parse_cases import bitstamp_book as book_event

from oracled.model import Quote
from oracled.sim.bitstamp import GARBAGE
from oracled.sources.bitstamp import BitstampSource

FIXTURES = Path(__file__).parent.parent / "fixtures" / "bitstamp"
ACK_SGB, ACK_ETH = (FIXTURES / "ws_recorded.jsonl").read_text().splitlines()[:2]
REQUESTS = (FIXTURES / "ws_subscribe_requests.jsonl").read_text().splitlines()
# Receive times just after the venue times of the frames fed (a quote received before its venue
# time by more than the clock-skew bound is dropped as `future`): the recorded books were stamped
# 1_641_343_696_039 to ..._956 ms, the REST tickers 1_686_068_944 s.
RECV = 1_641_343_697_000
REST_RECV = 1_686_068_944_000 + 9


@pytest.fixture
async def harness() -> AsyncIterator[Harness[BitstampSource]]:
    async with open_harness(BITSTAMP) as h:
        yield h


def test_symbols_are_lower_case_without_slash(harness: Harness[BitstampSource]) -> None:
    """BTC/USD -> btcusd; the socket is the venue's root path."""
    assert harness.source.symbols == ("usdtusd", "batbtc", "galaeur", "ethusd", "btcusd")
    assert harness.source.stream_url() == "wss://ws.bitstamp.net/"


def test_recorded_books_give_the_exact_top_of_book(harness: Harness[BitstampSource]) -> None:
    """The best bid and ask of each recorded book, with its microtimestamp in milliseconds."""
    for i, market in enumerate(("usdtusd", "batbtc", "galaeur")):
        harness.source.on_message(book_event(market), RECV + i)
    assert harness.quotes == [
        Quote("bs", "USDT/USD", RECV, bid=0.99948, ask=0.99992, venue_ts=1_641_343_696_039),
        Quote(
            "bs", "BAT/BTC", RECV + 1, bid=0.00002835, ask=0.00002843, venue_ts=1_641_343_696_436
        ),
        Quote("bs", "GALA/EUR", RECV + 2, bid=0.38083, ask=0.38172, venue_ts=1_641_343_696_956),
    ]
    assert harness.stats.malformed == 0 and harness.stats.dropped == {}


def test_older_book_is_dropped_as_out_of_order(harness: Harness[BitstampSource]) -> None:
    """A book older than the newest emitted one of its pair is counted, not emitted."""
    frame = book_event("usdtusd")
    harness.source.on_message(frame, RECV + 1)
    harness.source.on_message(frame.replace("1641343696039184", "1641343695000000"), RECV + 2)
    harness.source.on_message(frame, RECV + 3)  # a duplicate of the newest is harmless
    assert [q.recv_ts for q in harness.quotes] == [RECV + 1, RECV + 3]
    assert harness.stats.dropped == {"out_of_order": 1}


def test_one_sided_book_is_dropped_but_not_malformed(harness: Harness[BitstampSource]) -> None:
    """A book with no ask (a real state of a thin market) is counted as one_sided only."""
    frame = book_event("usdtusd")
    empty = frame[: frame.index('"asks": [')] + '"asks": []}' + frame[frame.rindex("]}") + 2 :]
    harness.source.on_message(empty, 1)
    assert harness.quotes == []
    assert harness.stats.dropped == {"one_sided": 1} and harness.stats.malformed == 0


def test_garbage_with_a_future_stamp_does_not_hide_good_books(
    harness: Harness[BitstampSource],
) -> None:
    """A dropped bad book stamped in the future leaves the out-of-order bar where it was."""
    harness.source.on_message(GARBAGE[8].replace("btcusd", "usdtusd"), RECV + 1)
    harness.source.on_message(book_event("usdtusd"), RECV + 2)
    assert len(harness.quotes) == 1


def test_recorded_acks_settle_their_request(harness: Harness[BitstampSource]) -> None:
    """A recorded subscription_succeeded settles the request of its channel and its failure."""
    src, stats = harness.source, harness.stats
    src._pending[3] = ("ethusd",)
    stats.failed_instruments["ethusd"] = "old failure"
    src.on_message(ACK_ETH.replace("diff_order_book_", "order_book_"), 1)
    assert src._pending == {} and stats.failed_instruments == {}
    src.on_message(ACK_SGB, 2)  # an ack for a channel we never asked for
    assert stats.dropped == {"unsolicited": 1} and stats.malformed == 0


def test_error_naming_a_channel_fails_that_symbol(harness: Harness[BitstampSource]) -> None:
    """bts:error for our channel marks that symbol failed; others stay pending."""
    src, stats = harness.source, harness.stats
    src._pending.update({1: ("usdtusd",), 2: ("ethusd",)})
    src.on_message(
        '{"event":"bts:error","channel":"order_book_ethusd",'
        '"data":{"code":null,"message":"Bad subscription string."}}',
        1,
    )
    assert stats.failed_instruments == {"ethusd": "Bad subscription string."}
    assert src._pending == {1: ("usdtusd",)}


def test_error_naming_no_channel_is_blamed_on_the_oldest_request(
    harness: Harness[BitstampSource],
) -> None:
    """Answers come in order, so an anonymous bts:error belongs to the oldest open request."""
    src, stats = harness.source, harness.stats
    src._pending.update({5: ("batbtc",), 6: ("ethusd",)})
    error = '{"event":"bts:error","channel":"","data":{"message":"Incorrect JSON format."}}'
    src.on_message(error, 1)
    assert stats.failed_instruments == {"batbtc": "Incorrect JSON format."}
    src._pending.clear()
    src.on_message(error, 2)  # nothing open: counted, blamed on nobody
    assert stats.dropped == {"venue_error": 1}


def test_heartbeat_answers_and_unsubscribe_acks_are_quiet(harness: Harness[BitstampSource]) -> None:
    """The answer to our heartbeat and unsubscribe acks count nothing but the frame."""
    src = harness.source
    src.on_message('{"event":"bts:heartbeat","channel":"","data":{"status":"success"}}', 1)
    src.on_message('{"event":"bts:unsubscription_succeeded","channel":"order_book_x","data":{}}', 2)
    assert harness.stats.malformed == 0 and harness.stats.dropped == {}


def test_subscribe_message_matches_the_recorded_request_shape(
    harness: Harness[BitstampSource],
) -> None:
    """Our request is byte for byte the recorded one, for the order_book channel."""
    recorded = REQUESTS[0].replace("diff_order_book_", "order_book_")
    assert harness.source.subscribe_message(1, ["sgbeur"]) == recorded
    assert harness.source.app_ping() == '{"event":"bts:heartbeat"}'


def test_rest_all_tickers_maps_pairs_and_skips_the_rest(harness: Harness[BitstampSource]) -> None:
    """One all-pairs answer: our pairs become quotes, without a venue time: the ticker's
    `timestamp` is documented only as a Unix time in whole seconds, not as the time of its book,
    so the quote's age runs from receipt (it was read as the venue time before)."""
    url, query = harness.source.rest_request(list(harness.source.symbols)) or ("", {})
    assert (url, dict(query)) == ("https://www.bitstamp.net/api/v2/ticker/", {})
    body = (
        b'[{"timestamp":"1686068944","open":"1","high":"1","low":"1","last":"0.9995",'
        b'"volume":"1","vwap":"1","bid":"0.9994","ask":"0.9996","side":"0","open_24":"1",'
        b'"percent_change_24":"0","pair":"USDT/USD","market_type":"SPOT"},'
        b'{"timestamp":"1686068944","bid":"0.51","ask":"0.52","pair":"XRP/USD"},'
        b'{"timestamp":"1686068944","bid":null,"ask":null,"pair":"ETH/USD"},'
        b'{"timestamp":"1686068944","bid":"0","ask":"0.4","pair":"GALA/EUR"}]'
    )
    harness.source.on_rest(body, REST_RECV)
    assert harness.quotes == [Quote("bs", "USDT/USD", REST_RECV, bid=0.9994, ask=0.9996)]
    assert harness.stats.dropped == {"one_sided": 1, "non_positive": 1}
    harness.source.on_rest(b'{"status":"error"}', REST_RECV + 1)
    assert harness.stats.dropped["shape"] == 1


def test_rest_row_without_a_numeric_timestamp_is_quoted_without_venue_time(
    harness: Harness[BitstampSource],
) -> None:
    """A REST row whose timestamp is missing or not whole seconds still gives its prices, with
    no venue time (its age then counts from receipt), never a made-up one."""
    body = (
        b'[{"bid":"0.9994","ask":"0.9996","pair":"USDT/USD"},'
        b'{"timestamp":"1686068944.5","bid":"0.51","ask":"0.52","pair":"GALA/EUR"}]'
    )
    harness.source.on_rest(body, 9)
    assert harness.quotes == [
        Quote("bs", "USDT/USD", 9, bid=0.9994, ask=0.9996),
        Quote("bs", "GALA/EUR", 9, bid=0.51, ask=0.52),
    ]
    assert harness.stats.malformed == 0


def test_a_book_of_a_channel_never_subscribed_is_an_unknown_symbol(
    harness: Harness[BitstampSource],
) -> None:
    """A well-formed book on the channel of a pair we did not ask for leaves the one-pass path
    and is dropped as unknown_symbol by the strict one: not a quote, not malformed."""
    frame = book_event("usdtusd").replace("order_book_usdtusd", "order_book_xrpusd")
    assert "order_book_xrpusd" in frame
    harness.source.on_message(frame, 1)
    assert harness.quotes == []
    assert harness.stats.dropped == {"unknown_symbol": 1} and harness.stats.malformed == 0


def test_book_out_of_the_documented_shape_gives_the_same_top(
    harness: Harness[BitstampSource],
) -> None:
    """A best level without its amount leaves the one-pass decoder; the text path gives the
    same top of book, and the next book in the usual shape follows it."""
    frame = book_event("usdtusd")
    short = frame.replace('["0.99948", "3105.20768"]', '["0.99948"]', 1)
    assert short != frame
    harness.source.on_message(short, RECV + 1)
    harness.source.on_message(frame, RECV + 2)
    assert [(q.recv_ts, q.bid, q.ask) for q in harness.quotes] == [
        (RECV + 1, 0.99948, 0.99992),
        (RECV + 2, 0.99948, 0.99992),
    ]
    assert harness.stats.malformed == 0 and harness.stats.dropped == {}


def test_bare_number_price_beside_a_string_amount_is_read_as_a_number(
    harness: Harness[BitstampSource],
) -> None:
    """The known limit of the one-pass decoder: a best level printed as [number, "amount"] gives
    that price (a level of bare numbers only is refused, see GARBAGE)."""
    frame = book_event("usdtusd").replace('["0.99948", "3105.20768"]', '[0.99948, "3105.20768"]')
    harness.source.on_message(frame, RECV)
    assert [(q.bid, q.ask) for q in harness.quotes] == [(0.99948, 0.99992)]
