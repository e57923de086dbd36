"""Decoding Pyth Hermes updates into quotes: real recorded responses, the SSE framing, bad input."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from parse_cases import PYTH, Harness, open_harness

from oracled.clock import ManualClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sources import SourceStats
from oracled.sources.pyth_hermes import PythHermesSource, _SseLines, normalize_feed_id

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pyth_hermes"
BTC_BODY = (FIXTURES / "v2_latest_parsed_btc.json").read_bytes().strip()
TWO_BODY = (FIXTURES / "v2_latest_base64_two_items.json").read_bytes().strip()
V1_BODY = (FIXTURES / "v1_latest_item_with_vaa.json").read_bytes().strip()
BTC = "e62df6c8b4a85fe1a67db44dc12de5db330f7ac66b72dc658afedf0f4a415b43"
ETH = "ff61491a931112ddf1bd8147cd1b641375f79f5825126d665480874634fd0ace"
# The ids the recording's author put in place of the placeholders (the prices are other feeds').
PLACEHOLDERS = {"<feed_ids[0]>": BTC, "<feed_ids[1]>": ETH}
# Received just after the recordings' publish times (in whole seconds): a quote received before
# its venue time by more than the clock-skew bound is dropped as `future`.
RECV = 1_708_363_256_000 + 5  # the BTC update and the v1 item
TWO_RECV = 1_708_529_433_000 + 5  # the two-item update


@pytest.fixture
async def harness() -> AsyncIterator[Harness[PythHermesSource]]:
    async with open_harness(PYTH) as h:
        yield h


def with_placeholders_replaced(body: bytes) -> bytes:
    text = body.decode()
    for placeholder, feed in PLACEHOLDERS.items():
        text = text.replace(placeholder, feed)
    return text.encode()


def test_recorded_btc_update_becomes_a_quote_around_the_pyth_price(
    harness: Harness[PythHermesSource],
) -> None:
    """price ± conf scaled by 10**expo gives bid/ask; the mid is Pyth's price; venue_ts in ms."""
    harness.source.on_rest(BTC_BODY, RECV)
    assert harness.quotes == [
        Quote(
            "pyth",
            "BTC/USD",
            RECV,
            bid=51874.14335271,
            ask=51927.37499999,
            venue_ts=1_708_363_256_000,
        )
    ]
    quote = harness.quotes[0]
    assert quote.bid is not None and quote.ask is not None
    assert (quote.bid + quote.ask) / 2 == pytest.approx(51900.75917635, abs=1e-8)
    assert harness.stats.malformed == 0 and harness.stats.quotes == 1


@pytest.mark.parametrize("expo", [0, 2, 5])
def test_a_non_negative_exponent_multiplies_price_and_confidence(
    harness: Harness[PythHermesSource], expo: int
) -> None:
    """bid and ask are (price -+ conf) * 10**expo for an exponent of zero or above too (the
    recorded feed's is -8): the scale multiplies, it never divides."""
    body = BTC_BODY.replace(b'"expo":-8,', f'"expo":{expo},'.encode(), 1)  # the price's, not ema's
    assert body != BTC_BODY
    harness.source.on_rest(body, RECV)
    price, conf = 5190075917635, 2661582364
    [quote] = harness.quotes
    assert quote.bid == float((price - conf) * 10**expo)
    assert quote.ask == float((price + conf) * 10**expo)
    assert harness.stats.malformed == 0


def test_recorded_two_item_update_gives_one_quote_per_feed(
    harness: Harness[PythHermesSource],
) -> None:
    """A base64 update with two feeds (expo -8 and -5) yields two exact quotes in order."""
    harness.source.on_rest(with_placeholders_replaced(TWO_BODY), TWO_RECV)
    assert harness.quotes == [
        Quote(
            "pyth", "BTC/USD", TWO_RECV, bid=3.45025827, ask=3.45656905, venue_ts=1_708_529_433_000
        ),
        Quote(
            "pyth", "ETH/USD", TWO_RECV, bid=399.00909, ask=399.78441, venue_ts=1_708_529_433_000
        ),
    ]


def test_the_same_update_as_an_sse_event_decodes_like_rest(
    harness: Harness[PythHermesSource],
) -> None:
    """The stream's event data is the same PriceUpdate JSON as the REST body."""
    harness.source.on_message(BTC_BODY.decode(), RECV)
    assert [(q.pair, q.bid, q.venue_ts) for q in harness.quotes] == [
        ("BTC/USD", 51874.14335271, 1_708_363_256_000)
    ]


def test_placeholder_ids_are_unknown_feeds_not_malformed(
    harness: Harness[PythHermesSource],
) -> None:
    """An update for a feed we did not ask for is counted as unknown_symbol, never raised."""
    harness.source.on_rest(TWO_BODY, TWO_RECV)
    assert harness.quotes == []
    assert harness.stats.dropped == {"unknown_symbol": 2}
    assert harness.stats.malformed == 0


def test_v1_response_is_refused_and_its_json_is_taken_without_vaa_check(
    harness: Harness[PythHermesSource],
) -> None:
    """A legacy v1 item is not a v2 update (shape); put in a v2 envelope, its JSON price is used.

    In this recording the JSON says 29206.79 while the signed VAA inside says 29319.99: we do not
    verify VAAs, so the JSON is the venue's word, like an exchange ticker.
    """
    harness.source.on_rest(V1_BODY, RECV + 1)
    assert harness.stats.dropped == {"shape": 1}
    item = json.loads(V1_BODY)
    v2 = {"binary": {"encoding": "base64", "data": [item["vaa"]]}, "parsed": [item]}
    harness.source.on_rest(json.dumps(v2).encode(), RECV + 2)
    assert [(q.bid, q.ask) for q in harness.quotes] == [(29201.69999998, 29211.89)]


def test_feed_ids_are_normalized_and_unmapped_pairs_fail_clearly(
    harness: Harness[PythHermesSource],
) -> None:
    """Ids lose 0x and case; a pair without an id, a malformed id or a perp pair is failed."""
    assert harness.source.symbols == (BTC, ETH)
    failed = harness.stats.failed_instruments
    assert failed["XRP/USD"] == "no Pyth feed id configured for XRP/USD"
    assert "not a Pyth feed id" in failed["SOL/USD"]
    assert "perp" in failed["BTC/USD"]
    assert normalize_feed_id(" 0xABCDEF" + "0" * 58) == "abcdef" + "0" * 58
    assert normalize_feed_id("xyz") is None


async def test_two_pairs_on_one_feed_id_keep_the_first() -> None:
    """Mapping two pairs to the same id would merge their quotes: the second pair is failed."""
    stats = SourceStats("pyth")
    cfg = SourceConfig(type="pyth_hermes", instruments={"BTC/USD": BTC, "XBT/USD": "0x" + BTC})
    pairs: list[tuple[str, Kind]] = [("BTC/USD", "spot"), ("XBT/USD", "spot")]
    async with aiohttp.ClientSession() as http:
        source = PythHermesSource("p", cfg, pairs, lambda q: None, ManualClock(), http, stats)
    assert source.symbols == (BTC,)
    assert "already used" in stats.failed_instruments["XBT/USD"]


def test_older_and_repeated_updates_never_override_newer_ones(
    harness: Harness[PythHermesSource],
) -> None:
    """Per feed, an update older by (publish_time, slot) or an exact repeat is dropped."""
    newer = BTC_BODY
    older_slot = BTC_BODY.replace(b'"slot":125976528', b'"slot":125976527')
    older_time = BTC_BODY.replace(b'"publish_time":1708363256', b'"publish_time":1708363200')
    later_slot = BTC_BODY.replace(b'"slot":125976528', b'"slot":125976529')
    for body in (newer, older_slot, newer, older_time, later_slot):
        harness.source.on_rest(body, RECV)
    assert len(harness.quotes) == 2  # the first and the later slot
    assert harness.stats.dropped == {"out_of_order": 2, "duplicate": 1}
    assert harness.stats.malformed == 0


def test_sse_parser_splits_events_comments_and_error_events() -> None:
    """data lines form events, ':' lines are keep-alives, event:error keeps its type; CRLF too."""
    parser = _SseLines()
    wire = (
        b'data:{"a":1}\n\n:\n\nevent:error\ndata:Connection timeout reached (24h)\n\n'
        b"id:7\r\nretry:100\r\ndata: spaced\r\ndata:two\r\n\r\nunknown:x\n\n"
    )
    events = [e for i in range(len(wire)) for e in parser.feed(wire[i : i + 1])]
    assert events == [
        ("message", '{"a":1}'),
        (None, ""),
        ("error", "Connection timeout reached (24h)"),
        ("message", "spaced\ntwo"),
    ]
    assert parser.pending == 0


def test_stream_and_rest_requests_follow_the_documented_shape(
    harness: Harness[PythHermesSource],
) -> None:
    """Ids go as repeated ids[] parameters with parsed=true, on the v2 paths."""
    src = harness.source
    assert src.stream_url() == "https://hermes.pyth.network/v2/updates/price/stream"
    url, query = src.rest_request([BTC, ETH]) or ("", {})
    assert url == "https://hermes.pyth.network/v2/updates/price/latest"
    assert list(query.items()) == [
        ("ids[]", BTC),
        ("ids[]", ETH),
        ("parsed", "true"),
        ("encoding", "base64"),
    ]
    with pytest.raises(NotImplementedError):
        src.subscribe_message(1, [BTC])


def test_not_found_answer_fails_exactly_the_named_ids(harness: Harness[PythHermesSource]) -> None:
    """Hermes's ``404 Price ids not found: 0x..`` marks those ids failed, and only ids we use."""
    text = f"Price ids not found: 0x{ETH}, 0x{'ab' * 32}"
    assert harness.source._fail_missing(text) == 1
    assert harness.stats.failed_instruments[ETH] == text
    assert BTC not in harness.stats.failed_instruments
    assert harness.source._fail_missing("Update data not found") == 0


def test_a_band_wider_than_max_conf_ratio_is_flagged_confidence(
    harness: Harness[PythHermesSource],
) -> None:
    """A band of 40 % of the price (conf below the price, so it has a bid) is still Pyth's word
    but not a usable price: quoted with its band and flagged `confidence` (default
    max_conf_ratio 0.02), so the slot shows why it is excluded; the recorded update's 0.05 %
    band is not flagged."""
    harness.source.on_rest(BTC_BODY, RECV)
    wide = BTC_BODY.replace(b'"conf":"2661582364"', b'"conf":"2076030367054"', 1)
    wide = wide.replace(b'"publish_time":1708363256', b'"publish_time":1708363257', 1)
    assert wide.count(b"2076030367054") == 1
    harness.source.on_rest(wide, RECV + 1_000)
    assert [q.flag for q in harness.quotes] == [None, "confidence"]
    assert harness.quotes[1].bid == pytest.approx(51900.75917635 * 0.6, rel=1e-9)
    assert harness.stats.quotes == 2 and not harness.stats.dropped


async def test_max_conf_ratio_is_configurable_per_source() -> None:
    """With `max_conf_ratio = 0.0001` the recorded update's band (about 0.05 % of the price)
    is beyond the limit and flagged `confidence`; 0.001 lets it vote."""
    async with open_harness(PYTH, max_conf_ratio=0.0001) as tight:
        tight.source.on_rest(BTC_BODY, RECV)
    async with open_harness(PYTH, max_conf_ratio=0.001) as loose:
        loose.source.on_rest(BTC_BODY, RECV)
    assert [q.flag for q in tight.quotes] == ["confidence"]
    assert [q.flag for q in loose.quotes] == [None]


async def test_a_band_of_exactly_max_conf_ratio_is_not_flagged() -> None:
    """A band of exactly `max_conf_ratio` of the price is not wider than it: 15.57 on 51,900 at
    0.0003 votes, as the gates take a band of exactly `max_confidence_ratio` (BAND_SLACK).
    Before, 5,190,000,000,000 x 0.0003 rounded to 1,556,999,999.9999998, under the conf of
    1,557,000,000, and the quote was flagged `confidence`; a conf one unit wider still is."""
    exact = BTC_BODY.replace(
        b'"price":"5190075917635","conf":"2661582364"',
        b'"price":"5190000000000","conf":"1557000000"',
        1,
    )
    wider = exact.replace(b'"conf":"1557000000"', b'"conf":"1557000001"', 1)
    assert BTC_BODY != exact != wider
    flags = []
    for body in (exact, wider):
        async with open_harness(PYTH, max_conf_ratio=0.0003) as h:
            h.source.on_rest(body, RECV)
        flags.extend(q.flag for q in h.quotes)
    assert flags == [None, "confidence"]


@pytest.mark.parametrize("publish_time", [-1, -(10**17)])
def test_a_publish_time_before_1970_is_a_bad_number_not_a_quote(
    publish_time: int, harness: Harness[PythHermesSource]
) -> None:
    """A feed's first update meets no bar: a `publish_time` before 1970 is `bad_number`, not a
    quote with that time, and sets no bar (found by test_adapter_fuzz)."""
    body = json.loads(BTC_BODY)
    body["parsed"][0]["price"]["publish_time"] = publish_time
    harness.source.on_rest(json.dumps(body).encode(), RECV)
    assert harness.quotes == []
    assert harness.stats.dropped == {"bad_number": 1}
    harness.source.on_rest(BTC_BODY, RECV)
    assert len(harness.quotes) == 1


def test_an_update_of_no_feed_is_a_shape_drop(harness: Harness[PythHermesSource]) -> None:
    """`"parsed":[]`, on the stream or in a REST answer, quotes nothing and is counted `shape`,
    as an empty push is on Kraken and OKX. Before, it left no trace at all: no quote, no drop
    (found by test_adapter_fuzz)."""
    body = json.loads(BTC_BODY)
    body["parsed"] = []
    harness.source.on_message(json.dumps(body), RECV)
    harness.source.on_rest(json.dumps(body).encode(), RECV)
    assert harness.quotes == []
    assert harness.stats.dropped == {"shape": 2} and harness.stats.malformed == 2
