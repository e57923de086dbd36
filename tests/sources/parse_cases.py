"""What the shared parse suite needs to know of each venue: one `ParseCase` a venue (or category).

`test_parse_shared.py` writes the behaviours every adapter's decoder shares once (each frame of the
simulator's garbage catalogue, and any other bad frame, is dropped for its own reason and never
quoted; replies to nothing we asked are counted, never blamed on a symbol; a refused batch is split;
an older frame is dropped on the one-pass and the text decoding path alike)
and runs them for every case here. The venue's own parse file keeps what only that venue does, and
builds its adapter from the same case with `open_harness`, so that both see the same pairs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiohttp

from oracled.clock import ManualClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sim import GARBAGE as BINANCE_GARBAGE
from oracled.sim.binance_usdm import GARBAGE as BINANCE_USDM_GARBAGE
from oracled.sim.bitstamp import GARBAGE as BITSTAMP_GARBAGE
from oracled.sim.bybit import GARBAGE as BYBIT_GARBAGE
from oracled.sim.coinbase import GARBAGE as COINBASE_GARBAGE
from oracled.sim.gemini import GARBAGE as GEMINI_GARBAGE
from oracled.sim.gemini_ws import GARBAGE as GEMINI_WS_GARBAGE
from oracled.sim.kraken import GARBAGE as KRAKEN_GARBAGE
from oracled.sim.kucoin import GARBAGE as KUCOIN_GARBAGE
from oracled.sim.okx import GARBAGE as OKX_GARBAGE
from oracled.sim.pyth_hermes import GARBAGE as PYTH_GARBAGE
from oracled.sources import Source, SourceStats, build_source
from oracled.sources.binance import BinanceSource
from oracled.sources.binance_usdm import BinanceUsdmSource
from oracled.sources.bitstamp import BitstampSource
from oracled.sources.bybit import BybitLinearSource, BybitSpotSource
from oracled.sources.coinbase import CoinbaseSource
from oracled.sources.gemini import GeminiSource
from oracled.sources.gemini_ws import GeminiWsSource
from oracled.sources.kraken import KrakenSource
from oracled.sources.kucoin import KucoinSource
from oracled.sources.okx import OkxSource
from oracled.sources.pyth_hermes import PythHermesSource

FIXTURES = Path(__file__).parent.parent / "fixtures"
S = TypeVar("S", bound=Source)


def recorded(venue: str, name: str) -> str:
    """A recorded fixture file of `venue`, as text."""
    return (FIXTURES / venue / name).read_text()


def recorded_lines(venue: str, name: str) -> list[str]:
    """A recorded fixture file of `venue` holding one frame a line."""
    return recorded(venue, name).splitlines()


@dataclass
class Harness(Generic[S]):
    """An adapter fed by hand (no socket), with what it emitted."""

    source: S
    stats: SourceStats
    quotes: list[Quote]


# Bad frames every decoder is handed as well: an empty message and bytes that are not UTF-8.
UNDECODABLE: tuple[tuple[str | bytes, str], ...] = (("", "decode"), (b"\xff\xfe", "decode"))


@dataclass(frozen=True)
class Refusal:
    """A venue's refusal of a one-symbol request, then its ack of a later request for the same
    symbol (how a failed symbol comes back)."""

    symbol: str  # the venue's name for the symbol
    refusal: str  # answers request `refusal_id`
    refusal_id: int
    says: str  # the failure as the adapter records it
    ack: str  # answers request `ack_id`
    ack_id: int


# Text that Python's float() reads as a finite number and no venue sends: digits grouped with an
# underscore, padded with ASCII or Unicode blanks, non-ASCII digits (Arabic-Indic, full-width),
# a plus sign, a bare or trailing point, leading zeros.
LAX_NUMBERS = (
    "1_000",
    " 12.5 ",
    "\t3\n",
    "12.5\u00a0",
    "\u20071",
    "١٢٣",
    "１２",
    "+5",
    ".5",
    "5.",
    "00012",
)


# Text in a venue time or sequence number that Python's int() or float() read and no venue sends,
# or that spells no time: each drops its frame as `bad_number`, but "-1", older than any time or
# number a symbol can have (the order bars start at 0), which is `out_of_order`.
BAD_COUNTERS = ("1_000", " 12", "+5", "nan", "inf", "١٢٣", "1e400", "-1", "")
# Request ids echoed as text that str.isdigit() takes and no request of ours has: superscript
# two (on which int() raises), Arabic-Indic and full-width one.
ODD_IDS = ("²", "١", "１")


@dataclass(frozen=True)
class Numbers:
    """A good frame (or REST answer) of the venue's real shape, and the quoted numbers in it that
    the adapter reads as decimal text, each written as it appears (``'"0.35210000"'``) and found
    once: a test puts other text in one of their places."""

    body: str
    numbers: tuple[str, ...]
    recv_ts: int = 0  # at or after the body's venue time, if it has one
    symbol: str = ""  # REST: the venue symbol the poll asks for (`Source.rest_request`)


@dataclass(frozen=True)
class ParseCase(Generic[S]):
    """One venue (or one category of a venue) as the shared parse suite drives it."""

    id: str  # the source type, and the pytest id
    cls: type[S]  # the adapter the registry builds for `id`
    name: str  # the source's name in its quotes
    pairs: tuple[tuple[str, Kind], ...]
    garbage: tuple[str, ...]  # the simulator's garbage catalogue
    reasons: tuple[str, ...]  # the drop reason of each catalogue frame, in catalogue order
    # Further bad frames and their reasons (recorded frames of channels we never subscribe to).
    other: tuple[tuple[str | bytes, str], ...] = UNDECODABLE
    instruments: Mapping[str, str] = field(default_factory=dict)
    # Catalogue frames, at its end, that the venue's own file covers because they do more than
    # drop (Gemini's crossing diff also forces a resync).
    covered_elsewhere: int = 0
    # Made ready before a bad frame: a kept book, or a symbol the catalogue's frames name.
    prime: Callable[[Harness[S]], None] | None = None
    # After the bad frame: what must still hold (the kept book was left alone).
    settled: Callable[[Harness[S]], None] | None = None
    # An ack and an error that answer nothing we sent (a further frame: life only).
    unsolicited: tuple[str, ...] = ()
    # A refusal naming no symbol, for request `split_id` asking for the two `split_symbols`.
    split: str | None = None
    split_id: int = 0
    split_symbols: tuple[str, str] = ("", "")
    refusal: Refusal | None = None  # None: not covered by the refuse-then-ack test
    # Two frames of one instrument, (older, newer): after the newer, the older is dropped as
    # `stale` (by sequence or venue time). None: not covered by the shared order tests.
    order: tuple[str, str] | None = None
    stale: str = "out_of_order"
    # The same frame moved off the one-pass decoder onto the text path (None: one path only).
    text_path: Callable[[str], str] | None = None
    # A frame with a zero bid and a stamp (or number) past both of `order`. None: the venue's
    # sequence counts every message of the connection, a bad one too (Coinbase).
    poisoned: Callable[[str], str] | None = None
    # A frame whose bid equals its ask, for a venue that judges crossing itself (a kept book, a
    # confidence band); the others leave it to the base's one check.
    locked: str | None = None
    # When `order`'s and `locked`'s frames are received: at or just after their venue times, as on
    # a live connection (a quote received more than the clock-skew bound before its venue time is
    # dropped as `future`). The shared tests add a millisecond a frame to it.
    recv_ts: int = 0
    # A stream frame (read after `prime`) and a REST answer whose numbers are venue decimal text;
    # None: the venue has no such path (Kraken's stream sends JSON numbers).
    stream_numbers: Numbers | None = None
    rest_numbers: Numbers | None = None
    # A stream frame (read after `prime`) whose venue time or sequence number is text read by
    # the adapter, that number in `numbers`; None: the venue reads none from text.
    counters: Numbers | None = None
    # An ack echoing our request id as text, with ``{id}`` where the id goes, answering no
    # request but number 1 (which holds `pairs`' first symbol); None: ids are JSON numbers.
    echo: str | None = None

    def bad_frames(self) -> list[tuple[str | bytes, str]]:
        """Every bad frame this case knows, with the one reason it must be dropped for."""
        catalogue = self.garbage[: len(self.garbage) - self.covered_elsewhere]
        return [*zip(catalogue, self.reasons, strict=True), *self.other]


def make_source(
    case: ParseCase[S], http: aiohttp.ClientSession, quotes: list[Quote], **config: Any
) -> S:
    """The case's adapter from the registry, emitting into `quotes`, on a manual clock."""
    cfg = SourceConfig(type=case.id, instruments=dict(case.instruments), **config)
    stats = SourceStats(case.name)
    pairs = list(case.pairs)
    source = build_source(case.name, cfg, pairs, quotes.append, ManualClock(), http, stats)
    assert isinstance(source, case.cls)
    return source


@asynccontextmanager
async def open_harness(case: ParseCase[S], **config: Any) -> AsyncIterator[Harness[S]]:
    """A harness for `case` with its own HTTP session (the adapter never uses it here)."""
    quotes: list[Quote] = []
    async with aiohttp.ClientSession() as http:
        source = make_source(case, http, quotes, **config)
        yield Harness(source, source.stats, quotes)


def edited(frame: str, edit: Callable[[Any], None]) -> str:
    """`frame` decoded, changed in place by `edit`, and encoded again."""
    data = json.loads(frame)
    edit(data)
    return json.dumps(data)


def _reasons(words: str) -> tuple[str, ...]:
    """The drop reasons of a catalogue, one word a frame, in catalogue order."""
    return tuple(words.split())


BINANCE = ParseCase(
    id="binance",
    cls=BinanceSource,
    name="bn",
    pairs=(("NKN/USDT", "spot"), ("LRC/BTC", "spot"), ("BLZ/WETH", "spot"), ("BTC/USDT", "spot")),
    instruments={"BLZ/WETH": "BLZETH"},
    garbage=BINANCE_GARBAGE,
    reasons=_reasons(
        "decode decode shape shape shape shape not_finite not_finite non_positive "
        "non_positive bad_number crossed"
    ),
    # Streams we never subscribe to (an aggTrade and a kline frame, recorded).
    other=(
        *((f, "shape") for f in recorded_lines("binance", "ws_other_streams.jsonl")),
        *UNDECODABLE,
    ),
    unsolicited=(
        '{"result":null,"id":99}',
        '{"code":3,"msg":"Invalid JSON: expected value","id":null}',
    ),
    split='{"code":2,"msg":"Invalid request: invalid stream","id":3}',
    split_id=3,
    split_symbols=("NKNUSDT", "BTCUSDT"),
    stream_numbers=Numbers(recorded_lines("binance", "ws_bookTicker.jsonl")[0], ('"0.35210000"',)),
    rest_numbers=Numbers(
        '[{"symbol":"NKNUSDT","bidPrice":"0.35210000","bidQty":"1.0","askPrice":"0.35260000",'
        '"askQty":"2.0"}]',
        ('"0.35210000"',),
        symbol="NKNUSDT",
    ),
    refusal=Refusal(  # the nested error shape; USD-M's below is the flat one
        symbol="BTCUSDT",
        refusal='{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":7}',
        refusal_id=7,
        says="2: Invalid request: invalid stream",
        ack='{"result":null,"id":8}',
        ack_id=8,
    ),
)


def _usdm_ticker() -> str:
    """The recorded 24 h ticker in the combined-stream envelope: a stream we never subscribe to."""
    return f'{{"stream":"btcusdt@ticker","data":{recorded("binance_usdm", "ws_24hrTicker.json")}}}'


BINANCE_USDM = ParseCase(
    id="binance_usdm",
    cls=BinanceUsdmSource,
    name="bu",
    pairs=(("BNB/USDT", "perp"), ("BTC/USDT", "perp")),
    garbage=BINANCE_USDM_GARBAGE,
    reasons=BINANCE.reasons,  # the same catalogue layout as spot
    other=((_usdm_ticker(), "shape"), *UNDECODABLE),
    stream_numbers=Numbers(
        '{"stream":"bnbusdt@bookTicker","data":'
        + recorded("binance_usdm", "ws_bookTicker.json")
        + "}",
        ('"25.35190000"',),
        recv_ts=1568014460893 + 5,  # the frame's E
    ),
    rest_numbers=Numbers(
        '{"symbol":"BTCUSDT","bidPrice":"4.00000000","bidQty":"1.0","askPrice":"4.00000200",'
        '"askQty":"2.0","time":1589437530011,"lastUpdateId":1027024}',
        ('"4.00000000"',),
        recv_ts=1589437530011 + 5,  # the row's time
        symbol="BTCUSDT",
    ),
    refusal=Refusal(  # the spot control protocol applies
        symbol="BTCUSDT",
        refusal='{"code":2,"msg":"Invalid request: invalid stream","id":4}',
        refusal_id=4,
        says="2: Invalid request: invalid stream",
        ack='{"result":null,"id":5}',
        ack_id=5,
    ),
)

_BITSTAMP_ACK_SGB, _BITSTAMP_ACK_ETH, BITSTAMP_TRADE, BITSTAMP_DIFF = recorded_lines(
    "bitstamp", "ws_recorded.jsonl"
)


def bitstamp_book(market: str) -> str:
    """A channel event around a recorded order book object (the channel shares its fields)."""
    data = recorded("bitstamp", f"rest_order_book_{market}.json")
    return f'{{"data":{data},"channel":"order_book_{market}","event":"data"}}'


def _bitstamp_short_level(frame: str) -> str:
    """The best bid without its amount: the one-pass decoder refuses the level."""

    def edit(d: Any) -> None:
        d["data"]["bids"][0] = d["data"]["bids"][0][:1]

    return edited(frame, edit)


def _bitstamp_poisoned(frame: str) -> str:
    def edit(d: Any) -> None:
        d["data"]["bids"][0][0] = "0"
        d["data"]["microtimestamp"] = "1741343696039184"

    return edited(frame, edit)


_BITSTAMP_NEWER = bitstamp_book("usdtusd")
BITSTAMP = ParseCase(
    id="bitstamp",
    cls=BitstampSource,
    name="bs",
    pairs=(
        ("USDT/USD", "spot"),
        ("BAT/BTC", "spot"),
        ("GALA/EUR", "spot"),
        ("ETH/USD", "spot"),
        ("BTC/USD", "spot"),
    ),
    garbage=BITSTAMP_GARBAGE,
    # The last: a microtimestamp of "soon", a venue number refused as OKX's ts and KuCoin's
    # sequence are (it was `shape` while int() read Bitstamp's times).
    reasons=_reasons(
        "decode decode shape shape shape shape not_finite not_finite non_positive "
        "non_positive bad_number crossed bad_number"
    ),
    other=(
        (BITSTAMP_TRADE, "shape"),  # live_trades: a channel we never subscribe to
        (BITSTAMP_DIFF, "shape"),  # diff_order_book: likewise
        ('{"event":"bts:something_new","channel":"","data":{}}', "shape"),
        *UNDECODABLE,
    ),
    order=(_BITSTAMP_NEWER.replace("1641343696039184", "1641343695000000"), _BITSTAMP_NEWER),
    text_path=_bitstamp_short_level,
    poisoned=_bitstamp_poisoned,
    stream_numbers=Numbers(_BITSTAMP_NEWER, ('"0.99948"',), recv_ts=1_641_343_696_039 + 5),
    counters=Numbers(_BITSTAMP_NEWER, ('"1641343696039184"',), recv_ts=1_641_343_696_039 + 5),
    rest_numbers=Numbers(
        '[{"timestamp":"1686068944","bid":"0.9994","ask":"0.9996","pair":"USDT/USD"}]',
        ('"0.9994"',),
        symbol="usdtusd",
    ),
    recv_ts=1_641_343_696_039 + 5,  # the newer book's microtimestamp, in ms
)


def _bybit_rest(category: str) -> Numbers:
    """A tickers answer of `category` with one row, BTCUSDT's."""
    return Numbers(
        f'{{"retCode":0,"retMsg":"OK","result":{{"category":"{category}","list":[{{'
        '"symbol":"BTCUSDT","bid1Price":"17215.50","bid1Size":"1","ask1Price":"17216.00",'
        '"ask1Size":"1","lastPrice":"17216.00"}]},"retExtInfo":{},"time":1673859087947}',
        ('"17215.50"',),
        symbol="BTCUSDT",
    )


# One catalogue serves both categories; a frame of the other category's shape is a shape error.
BYBIT_SPOT = ParseCase(
    id="bybit_spot",
    cls=BybitSpotSource,
    name="bs",
    pairs=(("BTC/USDT", "spot"), ("ETH/USDT", "spot")),
    garbage=BYBIT_GARBAGE,
    reasons=_reasons(
        "decode decode shape shape shape not_finite not_finite non_positive "
        "non_positive bad_number bad_number crossed shape shape shape shape shape shape"
    ),
    # A level's price and its size are both read as text when the one pass refuses the frame.
    stream_numbers=Numbers(
        recorded("bybit", "ws_orderbook_snapshot.json"),
        ('"27450.00"', '"0.500"'),
        recv_ts=1709891679000 + 5,  # the frame's ts
    ),
    rest_numbers=_bybit_rest("spot"),
    echo='{"success":true,"ret_msg":"","conn_id":"c","req_id":"{id}","op":"subscribe"}',
    # Trade and kline frames (never subscribed).
    other=(
        (recorded("bybit", "ws_publicTrade.json"), "shape"),
        (recorded("bybit", "ws_kline.json"), "shape"),
        *UNDECODABLE,
    ),
)
BYBIT_LINEAR = ParseCase(
    id="bybit_linear",
    cls=BybitLinearSource,
    name="bl",
    pairs=(("BTC/USDT", "perp"), ("ETH/USDC", "perp")),
    garbage=BYBIT_GARBAGE,
    reasons=_reasons(
        "decode decode shape shape shape shape shape shape shape shape shape shape "
        "shape not_finite bad_number non_positive crossed shape"
    ),
    stream_numbers=Numbers(
        recorded("bybit", "ws_tickers_linear_snapshot.json"),
        ('"17215.50"',),
        recv_ts=1673272861686 + 5,  # the frame's ts
    ),
    rest_numbers=_bybit_rest("linear"),
    echo='{"success":true,"ret_msg":"","conn_id":"c","req_id":"{id}","op":"subscribe"}',
    other=BYBIT_SPOT.other,
)


def _coinbase_text_path(frame: str) -> str:
    """The ticker without best_bid_quantity: the one-pass decoder refuses it."""

    def edit(d: Any) -> None:
        del d["events"][0]["tickers"][0]["best_bid_quantity"]

    return edited(frame, edit)


# The documented ticker is the subscription's snapshot, which a source drops when it repeats the
# last quote's book: as the update the stream goes on with, it is judged by its order alone.
_COINBASE_NEWER = recorded("coinbase", "ws_ticker.json").replace(
    '"type": "snapshot"', '"type": "update"'
)
COINBASE = ParseCase(
    id="coinbase",
    cls=CoinbaseSource,
    name="cb",
    pairs=(("XBT/USD", "spot"), ("ETH/USD", "spot"), ("SOL/USDC", "spot")),
    instruments={"XBT/USD": "BTC-USD"},
    garbage=COINBASE_GARBAGE,
    reasons=_reasons(
        "decode decode shape shape shape shape not_finite not_finite non_positive "
        "non_positive bad_number bad_number crossed shape"
    ),
    # An error names no request: the oldest (here the only) batch is split.
    split='{"type":"error","message":"Failed to subscribe","reason":"FOO-USD is not valid"}',
    split_id=3,
    split_symbols=("BTC-USD", "ETH-USD"),
    order=(_COINBASE_NEWER.replace('"sequence_num": 12', '"sequence_num": 11'), _COINBASE_NEWER),
    stale="stale_sequence",
    text_path=_coinbase_text_path,
    stream_numbers=Numbers(_COINBASE_NEWER, ('"68900.00"',), recv_ts=1_775_572_203_000 + 5),
    rest_numbers=Numbers(
        recorded("coinbase", "rest_market_products_ticker.json"), ('"68923.66"',), symbol="BTC-USD"
    ),
    recv_ts=1_775_572_203_000 + 5,  # the ticker's time
)

GEMINI_BOOK = (
    '{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy","100","1"],["sell","101","1"]],'
    '"trades":[]}'
)


def _gemini_book(h: Harness[GeminiSource]) -> None:
    h.source.on_message(GEMINI_BOOK, 1)


def _gemini_book_untouched(h: Harness[GeminiSource]) -> None:
    """The next good update quotes the true top: the bad frame changed nothing in the book."""
    h.source.on_message('{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy","99","1"]]}', 3)
    assert [(q.bid, q.ask) for q in h.quotes] == [(100.0, 101.0), (100.0, 101.0)]


GEMINI = ParseCase(
    id="gemini",
    cls=GeminiSource,
    name="gm",
    pairs=(("GRT/USD", "spot"), ("ETH/EUR", "spot"), ("BTC/USD", "spot")),
    garbage=GEMINI_GARBAGE,
    reasons=_reasons(
        "decode decode shape shape shape shape not_finite non_positive non_positive "
        "bad_number shape bad_quantity"
    ),
    covered_elsewhere=1,  # the crossing diff: dropped and resynced, test_gemini_parse.py
    prime=_gemini_book,
    settled=_gemini_book_untouched,
    # A diff of the primed book: a level's price and quantity, read as text once refused.
    stream_numbers=Numbers(
        '{"type":"l2_updates","symbol":"BTCUSD","changes":[["buy","100.5","2"]]}',
        ('"100.5"', '"2"'),
    ),
    rest_numbers=Numbers(
        '{"bid":"9345.70","ask":"9347.67","volume":{"BTC":"2210.50","USD":"20592180.16",'
        '"timestamp":1483018200000},"last":"9346.20"}',
        ('"9345.70"',),
        symbol="BTCUSD",
    ),
    locked=GEMINI_BOOK.replace('["sell","101","1"]', '["sell","100","1"]'),
)

# Gemini's new API has no recording yet: frames of the documented bookTicker shape, our values.
GEMINI_WS_OLDER = (
    '{"u":2000001,"E":1764200000000000000,"s":"btcusd","b":"91250.10","B":"0.40000000",'
    '"a":"91250.90","A":"0.12000000"}'
)
GEMINI_WS_NEWER = (
    '{"u":2000002,"E":1764200000250000000,"s":"btcusd","b":"91251.20","B":"0.30000000",'
    '"a":"91252.00","A":"0.05000000"}'
)


def _gemini_ws_poisoned(frame: str) -> str:
    """A zero bid, its event time past both of `order`."""
    return frame.replace('"b":"91251.20"', '"b":"0.00"').replace(
        "1764200000250000000", "1764200000500000000"
    )


GEMINI_WS = ParseCase(
    id="gemini_ws",
    cls=GeminiWsSource,
    name="gmw",
    pairs=(("BTC/USD", "spot"), ("ETH/USD", "spot")),
    garbage=GEMINI_WS_GARBAGE,
    reasons=BINANCE.reasons,  # the same catalogue layout as Binance spot
    # Streams we never subscribe to, in the documented shapes (partial and differential depth).
    other=(
        ('{"lastUpdateId":7,"bids":[["91250.10","0.4"]],"asks":[["91250.90","0.1"]]}', "shape"),
        (
            '{"e":"depthUpdate","E":1764200000000000000,"s":"btcusd","U":6,"u":7,'
            '"b":[["91250.10","0.4"]],"a":[["91250.90","0"]]}',
            "shape",
        ),
        *UNDECODABLE,
    ),
    unsolicited=(
        '{"id":99,"status":200,"result":null}',
        '{"id":null,"status":400,"error":{"code":-1000,"msg":"Invalid JSON"}}',
    ),
    split='{"id":3,"status":400,"error":{"code":-1100,"msg":"Invalid params"}}',
    split_id=3,
    split_symbols=("btcusd", "ethusd"),
    refusal=Refusal(
        symbol="btcusd",
        refusal='{"id":7,"status":400,"error":{"code":"-1100","msg":"Invalid stream"}}',
        refusal_id=7,
        says="-1100: Invalid stream",
        ack='{"id":8,"status":200,"result":null}',
        ack_id=8,
    ),
    order=(GEMINI_WS_OLDER, GEMINI_WS_NEWER),
    poisoned=_gemini_ws_poisoned,
    stream_numbers=Numbers(GEMINI_WS_NEWER, ('"91251.20"',), recv_ts=1_764_200_000_250 + 5),
    rest_numbers=Numbers(
        '{"bid":"3010.25","ask":"3010.75","last":"3010.5"}', ('"3010.25"',), symbol="btcusd"
    ),
    recv_ts=1_764_200_000_250 + 5,  # the newer frame's event time, in ms
)

KRAKEN = ParseCase(
    id="kraken",
    cls=KrakenSource,
    name="kr",
    pairs=(
        ("BTC/USD", "spot"),
        ("XBT/USDT", "spot"),
        ("DOGE/USD", "spot"),
        ("ETH/USD", "spot"),
        ("SOL/USDC", "spot"),
    ),
    instruments={"WBTC/USD": "WBTC/USD"},
    garbage=KRAKEN_GARBAGE,
    # 6: NaN is not JSON: Kraken sends numbers, never NaN
    # 7: 1e999 is out of the float range
    reasons=_reasons(
        "decode decode shape shape shape shape decode shape non_positive non_positive "
        "crossed shape shape"
    ),
    # Book/trade/ohlc frames we never subscribed to, and v1 frames (recorded).
    other=(
        *(
            (recorded("kraken", f"ws_{name}.json"), "shape")
            for name in ("book_snapshot", "trade_update", "ohlc_update")
        ),
        *((f, "shape") for f in recorded_lines("kraken", "ws_v1_frames.jsonl")),
        *UNDECODABLE,
    ),
    rest_numbers=Numbers(
        recorded("kraken", "rest_ticker_XBTUSDT.json"), ('"105944.20000"',), symbol="BTC/USDT"
    ),
    unsolicited=(
        recorded("kraken", "ws_subscribe_ack.json").replace('"req_id": 1', '"req_id": 77'),
        '{"error":"Malformed request","success":false}',
    ),
    split='{"error":"Exceeded msg rate","method":"subscribe","req_id":9,"success":false}',
    split_id=9,
    split_symbols=("BTC/USD", "ETH/USD"),
)


def _kucoin_btc(h: Harness[KucoinSource]) -> None:
    """The catalogue names BTC-USDT: make it a known symbol, so that only the frame is bad."""
    h.source._by_symbol["BTC-USDT"] = ("BTC/USDT", "spot")


def _kucoin_text_path(frame: str) -> str:
    """The ticker without bestBidSize: the one-pass decoder refuses it."""

    def edit(d: Any) -> None:
        del d["data"]["bestBidSize"]

    return edited(frame, edit)


def _kucoin_poisoned(frame: str) -> str:
    def edit(d: Any) -> None:
        d["data"].update(bestBid="0", sequence="9612844051654")

    return edited(frame, edit)


_KUCOIN_TICKERS = recorded_lines("kucoin", "ws_ticker.jsonl")
KUCOIN = ParseCase(
    id="kucoin",
    cls=KucoinSource,
    name="kc",
    pairs=(("SNX/BTC", "spot"), ("BSV/USDT", "spot"), ("ANKR/BTC", "spot")),
    instruments={"BSV/USDT": "BCHSV-USDT"},
    garbage=KUCOIN_GARBAGE,
    reasons=_reasons(
        "decode decode shape shape shape shape not_finite not_finite non_positive "
        "non_positive shape bad_number crossed shape"
    ),
    other=(
        *((f, "shape") for f in recorded_lines("kucoin", "ws_other_topics.jsonl")),
        # Ticker data under another message type, a ticker's data on another topic, and a
        # sequence that is no number: each leaves the one-pass decoder for the strict path.
        (
            '{"type":"notice","topic":"/market/ticker:BTC-USDT","subject":"trade.ticker",'
            '"data":{"sequence":"7","bestBid":"1.0","bestAsk":"1.1","time":1619378326330}}',
            "shape",
        ),
        (
            '{"type":"message","topic":"/market/snapshot:BTC-USDT","subject":"trade.snapshot",'
            '"data":{"sequence":"7","bestBid":"1.0","bestAsk":"1.1","time":1619378326330}}',
            "shape",
        ),
        (
            '{"type":"message","topic":"/market/ticker:BTC-USDT","subject":"trade.ticker",'
            '"data":{"sequence":"7th","bestBid":"1.0","bestAsk":"1.1","bestBidSize":"1",'
            '"time":1619378326330}}',
            "bad_number",
        ),
        *UNDECODABLE,
    ),
    prime=_kucoin_btc,
    unsolicited=(
        '{"id":"17","type":"pong"}',  # life only
        '{"id":"99","type":"ack"}',
        '{"id":null,"type":"error","code":401,"data":"token is expired"}',
    ),
    split='{"id":"4","type":"error","code":404,"data":"topic is not found"}',
    split_id=4,
    split_symbols=("SNX-BTC", "BCHSV-USDT"),
    refusal=Refusal(  # the recorded ack returns our numeric id as a string ("1")
        symbol="ANKR-BTC",
        refusal=(
            '{"id":"3","type":"error","code":404,'
            '"data":"topic /market/ticker:ANKR-BTC is not found"}'
        ),
        refusal_id=3,
        says="404: topic /market/ticker:ANKR-BTC is not found",
        ack=recorded_lines("kucoin", "ws_control.jsonl")[1],
        ack_id=1,
    ),
    order=(_KUCOIN_TICKERS[0], _KUCOIN_TICKERS[3]),  # SNX-BTC, sequence ...653 then ...654
    text_path=_kucoin_text_path,
    poisoned=_kucoin_poisoned,
    stream_numbers=Numbers(_KUCOIN_TICKERS[0], ('"0.00028678"',), recv_ts=1619378326323 + 5),
    counters=Numbers(_KUCOIN_TICKERS[0], ('"1612844051653"',), recv_ts=1619378326323 + 5),
    echo='{"id":"{id}","type":"ack"}',
    rest_numbers=Numbers(
        '{"code":"200000","data":' + json.dumps(json.loads(_KUCOIN_TICKERS[0])["data"]) + "}",
        ('"0.00028678"',),
        recv_ts=1619378326323 + 5,  # the ticker's time
        symbol="SNX-BTC",
    ),
    recv_ts=1619378326423 + 5,  # the newer ticker's time
)


def _okx_text_path(frame: str) -> str:
    """The ticker without bidSz: the one-pass decoder refuses it."""

    def edit(d: Any) -> None:
        del d["data"][0]["bidSz"]

    return edited(frame, edit)


def _okx_poisoned(frame: str) -> str:
    def edit(d: Any) -> None:
        d["data"][0].update(bidPx="0", ts="1752459226240")

    return edited(frame, edit)


_OKX_TICKERS = recorded_lines("okx", "ws_tickers.jsonl")
OKX = ParseCase(
    id="okx",
    cls=OkxSource,
    name="okx",
    pairs=(
        ("BTC/USDQ", "spot"),  # a dated future named through the config
        ("UNI/USD", "perp"),  # -> UNI-USD-SWAP
        ("BTC/USDT", "spot"),
        ("ETH/USDT", "spot"),
    ),
    instruments={"BTC/USDQ": "BTC-USD-220527", "UNI/USD": "UNI-USD"},
    garbage=OKX_GARBAGE,
    reasons=_reasons(
        "decode decode shape shape shape shape not_finite not_finite non_positive "
        "non_positive bad_number bad_number crossed shape"
    ),
    other=(
        *((f, "shape") for f in recorded_lines("okx", "ws_other_channels.jsonl")),
        # A push in the ticker's shape on another channel, and a ticker whose ts is no number:
        # both leave the one-pass decoder and are judged on the strict path.
        (
            '{"arg":{"channel":"index-tickers","instId":"BTC-USDT"},"data":[{"instId":'
            '"BTC-USDT","bidPx":"30210.4","askPx":"30220.1","ts":"1652459223003"}]}',
            "shape",
        ),
        (
            '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
            '"bidPx":"30210.4","askPx":"30220.1","bidSz":"4","ts":"soon"}]}',
            "bad_number",
        ),
        *UNDECODABLE,
    ),
    unsolicited=(
        '{"event":"subscribe","arg":{"channel":"tickers","instId":"ETH-USDT"}}',
        '{"event":"error","code":"60012","msg":"Invalid request: {op:x}"}',
    ),
    # A request-level error (60012) with our id.
    split='{"id":"6","event":"error","code":"60012","msg":"Invalid request"}',
    split_id=6,
    split_symbols=("BTC-USDT", "ETH-USDT"),
    order=(_OKX_TICKERS[2], _OKX_TICKERS[4]),  # BTC-USDT, ts ...224956 then ...226240
    text_path=_okx_text_path,
    poisoned=_okx_poisoned,
    stream_numbers=Numbers(_OKX_TICKERS[2], ('"30228.6"',), recv_ts=1652459224956 + 5),
    counters=Numbers(_OKX_TICKERS[2], ('"1652459224956"',), recv_ts=1652459224956 + 5),
    echo='{"id":"{id}","event":"subscribe","arg":{"channel":"tickers","instId":"ETH-USDT"}}',
    rest_numbers=Numbers(
        '{"code":"0","msg":"","data":[' + json.dumps(json.loads(_OKX_TICKERS[2])["data"][0]) + "]}",
        ('"30228.6"',),
        recv_ts=1652459224956 + 5,  # the ticker's ts
        symbol="BTC-USDT",
    ),
    recv_ts=1652459226240 + 5,  # the newer ticker's ts
)

PYTH_BTC = "e62df6c8b4a85fe1a67db44dc12de5db330f7ac66b72dc658afedf0f4a415b43"
PYTH_ETH = "ff61491a931112ddf1bd8147cd1b641375f79f5825126d665480874634fd0ace"
PYTH = ParseCase(
    id="pyth_hermes",
    cls=PythHermesSource,
    name="pyth",
    pairs=(
        ("BTC/USD", "spot"),
        ("ETH/USD", "spot"),
        ("SOL/USD", "spot"),
        ("XRP/USD", "spot"),
        ("BTC/USD", "perp"),
    ),
    instruments={"BTC/USD": "0x" + PYTH_BTC.upper(), "ETH/USD": PYTH_ETH, "SOL/USD": "0x1234"},
    garbage=PYTH_GARBAGE,
    reasons=_reasons(
        "decode decode shape shape shape shape bad_number non_positive non_positive "
        "bad_number crossed wide_confidence bad_number"
    ),
    # The recorded BTC update with a zero confidence: the band is the price itself.
    locked=recorded("pyth_hermes", "v2_latest_parsed_btc.json")
    .strip()
    .replace('"conf":"2661582364"', '"conf":"0"'),
    # The price and the confidence, integers as text (a REST answer takes the same decoder).
    stream_numbers=Numbers(
        recorded("pyth_hermes", "v2_latest_parsed_btc.json").strip(),
        ('"5190075917635"', '"2661582364"'),
        recv_ts=1_708_363_256_000 + 5,
    ),
    recv_ts=1_708_363_256_000 + 5,  # the update's publish time
)

CASES: tuple[ParseCase[Any], ...] = (
    BINANCE,
    BINANCE_USDM,
    BITSTAMP,
    BYBIT_SPOT,
    BYBIT_LINEAR,
    COINBASE,
    GEMINI,
    GEMINI_WS,
    KRAKEN,
    KUCOIN,
    OKX,
    PYTH,
)
