"""Decoding KuCoin frames into quotes: real recorded frames, control messages, every bad frame."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from parse_cases import KUCOIN, Harness, edited, open_harness

from oracled.clock import ManualClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sources import SourceStats
from oracled.sources.kucoin import KucoinSource

FIXTURES = Path(__file__).parent.parent / "fixtures" / "kucoin"
TICKERS = (FIXTURES / "ws_ticker.jsonl").read_text().splitlines()
WELCOME = (FIXTURES / "ws_control.jsonl").read_text().splitlines()[0]  # its ack: parse_cases
# Received just after the recorded tickers' times (1619378326323 to ...430): a quote received
# before its venue time by more than the clock-skew bound is dropped as `future`.
RECV = 1619378326430 + 5


@pytest.fixture
async def harness() -> AsyncIterator[Harness[KucoinSource]]:
    async with open_harness(KUCOIN) as h:
        yield h


def test_symbols_follow_the_venue_rule(harness: Harness[KucoinSource]) -> None:
    """BASE/QUOTE -> BASE-QUOTE; a config name wins (BSV/USDT is BCHSV-USDT on KuCoin)."""
    assert harness.source.symbols == ("SNX-BTC", "BCHSV-USDT", "ANKR-BTC")


def test_recorded_tickers_become_quotes_with_venue_time(harness: Harness[KucoinSource]) -> None:
    """Each real ticker frame yields one quote: float bid/ask, last price, the venue's time."""
    for i, frame in enumerate(TICKERS):
        harness.source.on_message(frame, RECV + i)
    assert harness.stats.malformed == 0
    assert harness.quotes == [
        Quote("kc", "SNX/BTC", RECV, 0.00028676, 0.00028678, 0.00028717, venue_ts=1619378326323),
        Quote("kc", "BSV/USDT", RECV + 1, 243.65, 242.654, 242.951, venue_ts=1619378326330),
        Quote(
            "kc",
            "ANKR/BTC",
            RECV + 2,
            0.0000026071,
            0.0000026033,
            0.0000026192,
            venue_ts=1619378326388,
        ),
        Quote(
            "kc", "SNX/BTC", RECV + 3, 0.00028676, 0.00028678, 0.00028717, venue_ts=1619378326423
        ),
        Quote("kc", "BSV/USDT", RECV + 4, 243.65, 242.649, 242.951, venue_ts=1619378326430),
    ]
    assert harness.stats.last_quote_ms == RECV + 4


def test_welcome_releases_the_held_subscriptions_once(harness: Harness[KucoinSource]) -> None:
    """Nothing is queued at connect; the recorded welcome queues one batch, a second does not."""
    src = harness.source
    src._queue_subscriptions()
    assert src._outbox.qsize() == 0
    src.on_message(WELCOME, 1)
    assert src._outbox.get_nowait()[1] == ("SNX-BTC", "BCHSV-USDT", "ANKR-BTC")
    src.on_message(WELCOME, 2)
    assert src._outbox.qsize() == 0
    assert harness.stats.malformed == 0


def test_older_or_repeated_sequence_never_overrides_a_newer_ticker(
    harness: Harness[KucoinSource],
) -> None:
    """A ticker whose sequence is not newer than the last used one for its symbol is dropped."""
    src = harness.source
    src.on_message(TICKERS[3], RECV + 1)  # SNX-BTC sequence ...654
    src.on_message(TICKERS[0], RECV + 2)  # SNX-BTC sequence ...653, arriving late
    src.on_message(TICKERS[3], RECV + 3)  # a duplicate
    assert [q.recv_ts for q in harness.quotes] == [RECV + 1]
    assert harness.stats.dropped == {"out_of_order": 2}


def test_subscribe_and_ping_follow_the_documented_shape(harness: Harness[KucoinSource]) -> None:
    """One subscribe names every symbol in one ticker topic; pings carry their own ids."""
    text = harness.source.subscribe_message(5, ["SNX-BTC", "ANKR-BTC"])
    assert json.loads(text) == {
        "id": 5,
        "type": "subscribe",
        "topic": "/market/ticker:SNX-BTC,ANKR-BTC",
        "privateChannel": False,
        "response": True,
    }
    assert json.loads(harness.source.app_ping()) == {"id": "1", "type": "ping"}
    assert json.loads(harness.source.app_ping()) == {"id": "2", "type": "ping"}


def test_few_symbols_poll_level1_one_by_one(harness: Harness[KucoinSource]) -> None:
    """Three symbols cost 6 weight one by one, under allTickers' 15: batches of one, level1."""
    src = harness.source
    assert src.rest_batch_size == 1
    assert src.rest_request(["SNX-BTC"]) == (
        "https://api.kucoin.com/api/v1/market/orderbook/level1",
        {"symbol": "SNX-BTC"},
    )
    data = json.loads(TICKERS[0])["data"]
    src.on_rest(json.dumps({"code": "200000", "data": data}).encode(), RECV)
    assert harness.quotes == [
        Quote("kc", "SNX/BTC", RECV, 0.00028676, 0.00028678, 0.00028717, venue_ts=1619378326323)
    ]
    src.on_rest(b'{"code":"200000","data":null}', RECV + 1)
    src.on_rest(b'{"code":"429000","msg":"Too Many Requests"}', RECV + 2)
    assert harness.stats.dropped == {"unknown_symbol": 1, "venue_error": 1}


@pytest.mark.parametrize(
    ("headers", "wait_s"),
    [
        ({"gw-ratelimit-reset": "12500"}, 12.5),  # ms until the pool's quota resets
        ({"gw-ratelimit-reset": "600000"}, 30.0),  # past the pool's 30 s window: not believed
        ({"gw-ratelimit-reset": "500", "Retry-After": "4"}, 4.0),  # the longer of the two
        ({"gw-ratelimit-reset": "NaN"}, 0.0),
        ({"gw-ratelimit-reset": "-5"}, 0.0),
        ({"gw-ratelimit-reset": "soon"}, 0.0),
        ({"gw-ratelimit-reset": "soon", "Retry-After": "4"}, 4.0),
        ({}, 0.0),
    ],
)
def test_a_rate_limit_answer_waits_the_reset_it_names(
    harness: Harness[KucoinSource], headers: dict[str, str], wait_s: float
) -> None:
    """A 429 names the wait in gw-ratelimit-reset (ms); a value that is no wait names none."""
    assert harness.source.rate_limit_wait_s(headers) == wait_s


async def test_many_symbols_poll_all_tickers_in_one_request() -> None:
    """Eight or more symbols take one allTickers request; rows of other symbols are skipped.
    The answer's `time` is when the whole snapshot was made, not a time of any book: the rows
    carry no venue time (they carried it before)."""
    pairs: list[tuple[str, Kind]] = [(f"C{i}/USDT", "spot") for i in range(8)]
    stats, quotes = SourceStats("kc"), []  # type: ignore[var-annotated]
    async with aiohttp.ClientSession() as http:
        src = KucoinSource(
            "kc", SourceConfig(type="kucoin"), pairs, quotes.append, ManualClock(), http, stats
        )
    assert src.rest_batch_size == 1000
    assert src.rest_request(list(src.symbols)) == (
        "https://api.kucoin.com/api/v1/market/allTickers",
        {},
    )
    body = {
        "code": "200000",
        "data": {
            "time": 1602832092060,
            "ticker": [
                {"symbol": "C1-USDT", "buy": "1.5", "sell": "1.6", "last": "1.55"},
                {"symbol": "C2-USDT", "buy": None, "sell": None, "last": None},
                {"symbol": "ZZZ-USDT", "buy": "9", "sell": "10", "last": "9"},
            ],
        },
    }
    recv = 1602832092060 + 5  # just after the answer's time
    src.on_rest(json.dumps(body).encode(), recv)
    assert quotes == [Quote("kc", "C1/USDT", recv, 1.55, 1.5, 1.6)]
    assert stats.dropped == {"no_book": 1}


@pytest.mark.parametrize("last", ['"abc"', '""', '"0"', '"-1"', '"NaN"', "null", "{}"])
def test_a_bad_last_price_never_spoils_the_book(harness: Harness[KucoinSource], last: str) -> None:
    """A ticker whose last price is unreadable, empty, zero, negative or NaN still gives its
    bid and ask, without a last price, and is not counted as malformed."""
    frame = TICKERS[0].replace('"price":"0.00028676"', f'"price":{last}')
    assert frame != TICKERS[0]
    harness.source.on_message(frame, RECV)
    assert harness.quotes == [
        Quote("kc", "SNX/BTC", RECV, None, 0.00028678, 0.00028717, venue_ts=1619378326323)
    ]
    assert harness.stats.malformed == 0 and harness.stats.dropped == {}


def test_ticker_out_of_the_documented_shape_gives_the_same_quote(
    harness: Harness[KucoinSource],
) -> None:
    """A ticker without bestBidSize leaves the one-pass decoder; the text path quotes it alike."""
    data = json.loads(TICKERS[1])
    del data["data"]["bestBidSize"]
    harness.source.on_message(json.dumps(data), RECV + 1)
    harness.source.on_message(TICKERS[4], RECV + 2)  # the pair's next ticker, in the usual shape
    assert harness.quotes == [
        Quote("kc", "BSV/USDT", RECV + 1, 243.65, 242.654, 242.951, venue_ts=1619378326330),
        Quote("kc", "BSV/USDT", RECV + 2, 243.65, 242.649, 242.951, venue_ts=1619378326430),
    ]
    assert harness.stats.malformed == 0


def test_bare_number_prices_beside_string_sizes_are_read_as_numbers(
    harness: Harness[KucoinSource],
) -> None:
    """The known limit of the one-pass decoder: with its sizes printed as strings, a ticker whose
    prices are bare JSON numbers gives those prices (sizes missing too: refused, see above)."""
    frame = TICKERS[1].replace('"bestBid":"242.654"', '"bestBid":242.654')
    harness.source.on_message(frame.replace('"bestAsk":"242.951"', '"bestAsk":242.951'), RECV)
    assert [(q.bid, q.ask) for q in harness.quotes] == [(242.654, 242.951)]


def test_a_ticker_on_the_topic_of_a_symbol_never_subscribed_is_an_unknown_symbol(
    harness: Harness[KucoinSource],
) -> None:
    """A well-formed ticker for a symbol we did not ask for leaves the one-pass path and is
    dropped as unknown_symbol by the strict one: not a quote, not malformed."""
    frame = TICKERS[0].replace("/market/ticker:SNX-BTC", "/market/ticker:XRP-USDT")
    assert frame != TICKERS[0]
    harness.source.on_message(frame, 1)
    assert harness.quotes == []
    assert harness.stats.dropped == {"unknown_symbol": 1} and harness.stats.malformed == 0


def test_rest_answers_out_of_shape_or_refused_are_counted(harness: Harness[KucoinSource]) -> None:
    """A level-1 answer that is no JSON (decode) or JSON of another shape (shape), and an
    allTickers answer carrying an error code (venue_error): counted, never quoted."""
    src = harness.source
    src.rest_request(["SNX-BTC"])  # one symbol: the level-1 endpoint
    src.on_rest(b"<html>busy</html>", 1)
    src.on_rest(b'{"code":200000,"data":null}', 2)  # the code is a string at KuCoin
    src.rest_request(list(src.symbols))  # several: allTickers
    src.on_rest(b'{"code":"429000","msg":"Too Many Requests"}', 3)
    assert harness.quotes == []
    assert harness.stats.dropped == {"decode": 1, "shape": 1, "venue_error": 1}


def _snx(sequence: int, time_ms: int, ask: str = "0.00028717") -> str:
    """The recorded SNX-BTC ticker with another sequence, time and best ask."""

    def edit(d: dict[str, dict[str, object]]) -> None:
        d["data"].update(sequence=str(sequence), time=time_ms, bestAsk=ask)

    return edited(TICKERS[0], edit)


def test_one_far_ahead_sequence_does_not_freeze_the_symbol(harness: Harness[KucoinSource]) -> None:
    """A ticker with good prices and sequence 10^15 is used, but the tickers after it (sequences
    back where they were, times moving on) are not refused until the next reconnect: the
    far-ahead sequence is forgotten at once, counted as a sequence reset."""
    src, t = harness.source, 1619378326323
    src.on_message(_snx(1612844051653, t), RECV)
    src.on_message(_snx(10**15, t + 1), RECV + 1)
    src.on_message(_snx(1612844051654, t + 2, "0.00028720"), RECV + 2)
    src.on_message(_snx(1612844051655, t + 3, "0.00028721"), RECV + 3)
    assert [q.ask for q in harness.quotes] == [0.00028717, 0.00028717, 0.0002872, 0.00028721]
    assert harness.stats.sequence_resets == 1 and harness.stats.dropped == {}


def test_a_sequence_a_little_ahead_is_forgotten_after_five_newer_tickers_in_a_row(
    harness: Harness[KucoinSource],
) -> None:
    """A sequence only a little ahead refuses newer tickers as out of order four times; the
    fifth in a row resets it. Late tickers (older times) never count towards a reset; the
    strict path (text prices) follows the same rule."""
    src, t, seq = harness.source, 1619378326323, 1612844051653
    src.on_message(_snx(seq + 1000, t), RECV)
    for i in range(1, 5):
        src.on_message(_snx(seq + i, t + i), RECV + i)
        src.on_message(_snx(seq + i, t - 1), RECV + i)  # late: older than the bar's ticker
    assert len(harness.quotes) == 1 and harness.stats.dropped == {"out_of_order": 8}
    text = _snx(seq + 5, t + 5, "0.00028720").replace('"bestBidSize": "3.70422021", ', "")
    src.on_message(text, RECV + 5)
    assert [q.ask for q in harness.quotes] == [0.00028717, 0.0002872]
    assert harness.stats.sequence_resets == 1


@pytest.mark.parametrize("time", [-1, -(10**20)])
def test_a_ticker_time_before_1970_is_a_bad_number_not_a_quote(
    time: int, harness: Harness[KucoinSource]
) -> None:
    """KuCoin orders tickers by `sequence`, not `time`, so no bar refuses a time before 1970:
    it is `bad_number`, not a quote with that time (which went to the tape and the audit trail
    and added 1e20 ms to the latency sum; found by test_adapter_fuzz)."""
    frame = edited(TICKERS[0], lambda d: d["data"].update(time=time))
    harness.source.on_message(frame, RECV)
    assert harness.quotes == []
    assert harness.stats.dropped == {"bad_number": 1}
    assert harness.stats.latency_sum_ms == 0
