"""What the shared fault suite needs to know about each venue: one `Case` a venue (or category).

`test_stream_faults.py` writes each behaviour once and runs it for every case here. A case says how
to build the venue's simulator and its source, which pairs it streams, and the facts that differ
from venue to venue (how many sockets, how many subscribe messages, what its garbage drops as).
Anything a single venue does that the others do not stays in that venue's own test file.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp

from oracled.clock import Clock, SystemClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sim import BinanceSim
from oracled.sim._base import VenueSim
from oracled.sim.binance_usdm import BinanceUsdmSim
from oracled.sim.bitstamp import BitstampSim
from oracled.sim.bybit import BybitSim
from oracled.sim.coinbase import CoinbaseSim
from oracled.sim.gemini import GeminiSim
from oracled.sim.gemini_ws import GeminiWsSim
from oracled.sim.kraken import KrakenSim
from oracled.sim.kucoin import KucoinSim
from oracled.sim.okx import OkxSim
from oracled.sim.pyth_hermes import PythHermesSim
from oracled.sources import ConnState, Source, SourceStats, build_source, source_class
from oracled.sources.binance_usdm import BinanceUsdmSource
from oracled.sources.bitstamp import BitstampSource
from oracled.sources.gemini_ws import GeminiWsSource
from oracled.sources.hostrests import HostRests
from oracled.sources.kraken import KrakenSource
from oracled.sources.okx import OkxSource

Key = tuple[str, str]  # (pair, kind): one instrument as the core sees it
Start = Callable[..., Any]  # the `start` fixture: `await start(...)` gives a Running
Wait = Callable[..., Any]  # the `wait` fixture: `await wait(check, within_s=5.0)`
PYTH_BTC = "e62df6c8b4a85fe1a67db44dc12de5db330f7ac66b72dc658afedf0f4a415b43"
PYTH_ETH = "ff61491a931112ddf1bd8147cd1b641375f79f5825126d665480874634fd0ace"


@dataclass
class Running:
    """A source running in a task on a case's simulator, with what it emitted."""

    source: Any  # the concrete adapter: tests read venue-specific attributes
    stats: SourceStats
    quotes: list[Quote]
    task: asyncio.Task[None]

    def keys(self, since: int = 0) -> set[Key]:
        """Instruments quoted since quote number `since`."""
        return {(q.pair, q.kind) for q in self.quotes[since:]}

    def pairs(self, since: int = 0) -> set[str]:
        """Pairs quoted since quote number `since`, whatever their kind."""
        return {q.pair for q in self.quotes[since:]}

    def state(self) -> ConnState:
        """The state now (a call, so that type narrowing from an earlier assert does not stick)."""
        return self.stats.state


class FastPingOkx(OkxSource):
    """OKX with a test-sized ping interval (the venue's rule is: under 30 s), so that a silent
    venue is noticed through unanswered pings as in production, not only through no data."""

    app_ping_interval_s: ClassVar[float | None] = 0.3
    #: A rate limit (50011) rests polls one poll interval, not the venue's 2 s: the shared REST
    #: failures count several 429s in a row (test_okx_stream checks the real window).
    rest_limit_window_s: ClassVar[float] = 0.1


class FastLimitKraken(KrakenSource):
    """Kraken resting one poll interval after a rate-limit error, not the adapter's 5 s: the
    shared REST failures count several in a row (test_kraken_stream checks the real window)."""

    rest_limit_window_s: ClassVar[float] = 0.1


class RapidPingOkx(OkxSource):
    """OKX pinging ten times a second (under a 30-a-second message limit), for a quiet market
    that must outlive the watchdog in about a second."""

    app_ping_interval_s: ClassVar[float | None] = 0.1
    max_messages_per_s: ClassVar[int] = 30


class RapidPingBinanceUsdm(BinanceUsdmSource):
    """Binance USD-M asking its keep-alive ten times a second (under a 30-a-second message
    limit), for a quiet market that must outlive the watchdog in about a second."""

    app_ping_interval_s: ClassVar[float | None] = 0.1
    max_messages_per_s: ClassVar[int] = 30


class FastHeartbeatBitstamp(BitstampSource):
    """Bitstamp with a bts:heartbeat interval that fits a half-second liveness window."""

    app_ping_interval_s: ClassVar[float | None] = 0.1


class RapidPingGeminiWs(GeminiWsSource):
    """Gemini's new API pinging ten times a second (under a 30-a-second message limit), for a
    quiet market that must outlive the watchdog in about a second."""

    app_ping_interval_s: ClassVar[float | None] = 0.1
    max_messages_per_s: ClassVar[int] = 30


def book_matches(run: Running, sim: GeminiSim, symbol: str) -> bool:
    """The adapter's latest quote of `symbol` equals the top of the simulator's published book."""
    levels = sim._books.get(symbol, {})
    bids = [float(p) for side, p in levels if side == "buy"]
    asks = [float(p) for side, p in levels if side == "sell"]
    pair = f"{symbol[:-3]}/{symbol[-3:]}"
    last = [q for q in run.quotes if q.pair == pair][-1:]
    return bool(last and bids and asks) and (last[0].bid, last[0].ask) == (max(bids), min(asks))


def _gemini_book_matches(run: Running, sim: VenueSim) -> Callable[[], bool]:
    """The adapter's latest quote of each symbol equals the top of the simulator's book."""
    assert isinstance(sim, GeminiSim)
    return lambda: all(book_matches(run, sim, symbol) for symbol in ("BTCUSD", "ETHUSD"))


def _kucoin_one_bullet(run: Running, sim: VenueSim) -> None:
    """One bullet token opened the one connection, at the address the bullet named."""
    assert isinstance(sim, KucoinSim)
    assert sim.bullets == 1 and sim.stats.connections == 1
    assert run.source.stream_url().startswith(f"{sim.ws_url}/endpoint?token=")


def _okx_swap_near_its_own_price(run: Running, sim: VenueSim) -> None:
    """Swap quotes are the swap's own book (67,020), within 1 %, not the spot's."""
    perp = [q for q in run.quotes if q.kind == "perp"]
    assert perp and all(abs((q.bid or 0) / 67_020.0 - 1) < 0.01 for q in perp)


def _pyth_confidence_brackets(run: Running, sim: VenueSim) -> None:
    """Bid and ask are the price less and plus its confidence: never equal."""
    assert all(q.bid is not None and q.ask is not None and q.bid < q.ask for q in run.quotes)


def _kucoin_fresh_token_each_time(run: Running, sim: VenueSim) -> None:
    """Every connection, the replacement too, was opened with a fresh bullet token."""
    assert isinstance(sim, KucoinSim)
    assert sim.bullets == sim.stats.connections


@dataclass(frozen=True)
class Unknown:
    """How a venue refuses a subscription for a symbol it does not list (FOO, quoted like the
    case's first pair), as seen after the refusal has settled."""

    symbol: str  # the venue's name for it: the key of failed_instruments
    says: str  # the refusal as the adapter records it
    requests: int  # control messages in all (pings aside): subscribes, the batch, any retries
    errors: int  # error frames the venue sent


@dataclass(frozen=True)
class Quiet:
    """How a venue keeps a connection with no market data alive: its own heartbeats, or the
    answers to the client's pings, which arrive often enough to beat the watchdog."""

    sim: Callable[[], VenueSim]  # the venue with (almost) no updates and test-sized keep-alives
    keepalives: Callable[[VenueSim], int]  # keep-alives so far (venue heartbeats, client pings)
    at_least: int  # keep-alives by the end of the quiet spell
    data_frames: int  # frames of market data the venue sends in all (snapshots)
    cls: type[Source] | None = None  # an adapter pinging at a test-sized interval
    config: Mapping[str, Any] = field(default_factory=dict)  # overrides (pairs among them)


@dataclass(frozen=True)
class Failing:
    """One REST failure while the stream is refused: every request answers `status` until the
    source has counted `errors` more; `window`: (seconds, fewest, most): at least `fewest`
    requests, at most `most` per that many seconds (of the time the check truly spans)."""

    status: int
    errors: int = 3
    window: tuple[float, int, int] | None = None


def _heartbeats(sim: VenueSim) -> int:
    return sim.stats.heartbeats_sent


def _snapshots_then_heartbeats(
    venue: Callable[..., VenueSim], prices: Mapping[str, float], rate_hz: float, at_least: int
) -> Quiet:
    """A venue that sends a snapshot per symbol (two), then next to nothing but its heartbeats,
    ten a second."""
    return Quiet(
        sim=lambda: venue(prices, rate_hz=rate_hz, heartbeat_s=0.1),
        keepalives=_heartbeats,
        at_least=at_least,
        data_frames=2,
    )


def _bitstamp_heartbeats(sim: VenueSim) -> int:
    return sim.stats.requests - 2  # after the two subscribes, only bts:heartbeat


def _binance_pings(sim: VenueSim) -> int:
    assert isinstance(sim, BinanceSim)
    return sim.pings_received


def _okx_pings(sim: VenueSim) -> int:
    assert isinstance(sim, OkxSim)
    return sim.pings_received


def _gemini_ws_pings(sim: VenueSim) -> int:
    assert isinstance(sim, GeminiWsSim)
    return sim.pings_received


def quoting_again(logs: list[dict[str, Any]]) -> bool:
    """Whether captured log lines say that silent instruments quote again."""
    return any(e["event"] == "instruments quoting again" for e in logs)


def control_requests(sim: VenueSim) -> int:
    """Text messages the venue received, less application pings (Binance USD-M's GET_PROPERTY,
    Bybit, Gemini's new API, KuCoin and OKX count a client's text ping among its requests)."""
    pingers = (BinanceSim, BybitSim, GeminiWsSim, KucoinSim, OkxSim)
    pings = sim.pings_received if isinstance(sim, pingers) else 0
    return sim.stats.requests - pings


@dataclass(frozen=True)
class Case:
    """One venue (or one category of a venue) as the shared fault suite drives it."""

    id: str  # the source type, and the pytest id
    sim: Callable[[], VenueSim]  # the simulator at test-sized rates
    pairs: tuple[tuple[str, Kind], ...]
    reference: Mapping[Key, float]  # starting prices: no emitted quote may stray 5 % from these
    spike: tuple[str, Key, float, float]  # (venue symbol, key, factor, bid the quote must pass)
    garbage_reasons: Mapping[str, int]  # what the catalogue, sent `garbage_rounds` times, drops as
    rest_venue_time: bool  # REST quotes carry a venue time
    sockets: int = 1  # WebSocket connections the source keeps
    subscribes: int = 1  # control messages a connection sends to subscribe everything
    garbage_rounds: int = 2  # times the garbage catalogue is sent
    garbage_resyncs: int = 0  # reconnections the catalogue forces (a crossed book: resync)
    burst: int = 200  # fresh frames per instrument
    replay: int = 20  # frames sent again
    replay_exact: bool = True  # replay_stale returns exactly `replay`
    replay_dropped: Callable[[Counter[str], int], bool] | None = None  # None: no replay test
    active_lags: bool = False  # the venue may count a dropped socket a moment after the drop
    rotation: bool = True  # covered by the max-connection-age test
    # Each subscription is answered with the symbol's state (a muted symbol's too), so a
    # reconnect quotes every symbol once.
    snapshots: bool = False
    # The socket's address is a REST answer (KuCoin's bullet): REST faults refuse the stream too.
    rest_connects: bool = False
    # Called once a fault is over; the condition it returns must come true (book, second feed).
    settled: Callable[[Running, VenueSim], Callable[[], bool]] | None = None
    after_reconnect: Callable[[Running, VenueSim], None] | None = None
    send_garbage: Callable[[VenueSim, int], int] | None = None  # default: sim.garbage(n)
    # Every connection's counters (a second feed has its own watchdog); default: the source's.
    feeds: Callable[[Running], list[SourceStats]] | None = None
    cls: type[Source] | None = None  # default: the registered adapter of `id`
    config: Mapping[str, Any] = field(default_factory=dict)
    unknown: Unknown | None = None  # None: not covered by the unknown-symbol test
    # Stream quotes carry the venue's time, at most this far (ms) from receipt; None: no time.
    venue_lag_ms: int | None = 2_000
    # Venue facts checked once the first connection streams every instrument (a second feed...).
    on_streaming: Callable[[Running, VenueSim], None] | None = None
    # With the stream refused, REST answers these statuses in turn, each until so many errors.
    rest_failures: tuple[Failing, ...] = (Failing(429), Failing(503))
    rest_slow_s: float = 0.0  # how slowly REST answers once it answers again (under 1 s)
    quiet: Quiet | None = None  # None: not covered by the quiet-market test
    # The REST answer for the case's pairs lists every symbol the venue lists (of a type, a
    # category) and leaves out one it does not, without a word; False: the venue refuses a
    # request for an unlisted symbol, and the symbol fails.
    rest_leaves_out: bool = False

    @property
    def keys(self) -> set[Key]:
        return {(p, k) for p, k in self.pairs}

    @property
    def adapter(self) -> type[Source]:
        """The adapter class the suite runs: `cls`, else the one registered for `id`."""
        return self.cls or source_class(self.id)

    @property
    def unknown_pair(self) -> tuple[str, Kind]:
        """A pair no venue lists, quoted and of the kind of the case's first pair."""
        pair, kind = self.pairs[0]
        return f"FOO/{pair.split('/')[1]}", kind

    def make_config(self, sim: VenueSim, **overrides: Any) -> SourceConfig:
        """Test-sized timings: reconnects and polls show in well under a second."""
        values: dict[str, Any] = {
            "type": self.id,
            "ws_url": sim.ws_url,
            "rest_url": sim.rest_url,
            "liveness_timeout_s": 0.5,
            "rest_poll_interval_s": 0.1,
            "reconnect_max_s": 0.2,
            **self.config,
        }
        if self.id == "kucoin":
            del values["ws_url"]  # the socket's address comes from the bullet call
        values.update(overrides)
        return SourceConfig(**values)


Pairs = tuple[tuple[str, Kind], ...]
SPOT_USDT: Pairs = (("BTC/USDT", "spot"), ("ETH/USDT", "spot"))
SPOT_USD: Pairs = (("BTC/USD", "spot"), ("ETH/USD", "spot"))
PERP_USDT: Pairs = (("BTC/USDT", "perp"), ("ETH/USDT", "perp"))
BINANCE_PRICES = {"BTCUSDT": 67_000.0, "ETHUSDT": 3_500.0}
GEMINI_WS_PRICES = {"btcusd": 67_000.0, "ethusd": 3_500.0}
JUMP = 900 * 67_000.0


def _ref(pairs: tuple[tuple[str, Kind], ...], btc: float = 67_000.0) -> dict[Key, float]:
    return {(p, k): btc if p.startswith("BTC") else 3_500.0 for p, k in pairs}


def _at_least(reason: str, floor: int) -> Callable[[Counter[str], int], bool]:
    return lambda dropped, _queued: dropped[reason] >= floor


def _exactly(*reasons: str, less: int = 0) -> Callable[[Counter[str], int], bool]:
    return lambda dropped, queued: sum(dropped[r] for r in reasons) == queued - less


def _bybit_stale(spot: bool) -> Callable[[Counter[str], int], bool]:
    # Spot orders by update id, so every replay is dropped: stale, or, for the newest frame of a
    # symbol (level 1 comes as snapshots only), a push again of the same book (`unchanged`);
    # linear orders by ts, and a replay of the newest frame of a symbol (same ts) is a harmless
    # duplicate that may be applied again.
    if spot:
        return lambda dropped, queued: dropped["stale"] + dropped["unchanged"] >= queued
    return lambda dropped, queued: dropped["stale"] >= queued - 2


BYBIT_SPOT_GARBAGE = {
    "decode": 4,
    "shape": 18,
    "not_finite": 4,
    "non_positive": 4,
    "bad_number": 4,
    "crossed": 2,
}
BYBIT_LINEAR_GARBAGE = {
    "decode": 4,
    "shape": 24,
    "not_finite": 2,
    "bad_number": 2,
    "non_positive": 2,
    "crossed": 2,
}
OKX_PAIRS: tuple[tuple[str, Kind], ...] = (*SPOT_USDT, ("BTC/USDT", "perp"))
OKX_60018 = (
    "60018: Wrong URL or channel:tickers,instId:FOO-USDT doesn't exist. Please use the correct "
    "URL, channel and parameters referring to API document."
)

CASES: tuple[Case, ...] = (
    Case(
        id="binance",
        garbage_reasons={
            "decode": 6,
            "shape": 12,
            "not_finite": 6,
            "non_positive": 6,
            "bad_number": 3,
            "crossed": 3,
        },
        sim=lambda: BinanceSim(BINANCE_PRICES, seed=7, rate_hz=40.0, ping_interval_s=1.0),
        pairs=SPOT_USDT,
        reference=_ref(SPOT_USDT),
        # A plausible but wrong price, not only an absurd one: still the core's call.
        spike=("BTCUSDT", ("BTC/USDT", "spot"), 1.5, 1.4 * 67_000),
        garbage_rounds=3,
        rest_venue_time=False,
        venue_lag_ms=None,  # bookTicker frames carry no event time
        unknown=Unknown("FOOUSDT", "2: Invalid request: invalid stream", requests=4, errors=2),
    ),
    Case(
        id="binance_usdm",
        garbage_reasons={
            "decode": 4,
            "shape": 8,
            "not_finite": 4,
            "non_positive": 4,
            "bad_number": 2,
            "crossed": 2,
        },
        sim=lambda: BinanceUsdmSim(BINANCE_PRICES, seed=5, rate_hz=40.0, ping_interval_s=1.0),
        pairs=PERP_USDT,
        reference=_ref(PERP_USDT),
        spike=("BTCUSDT", ("BTC/USDT", "perp"), 1000.0, JUMP),
        replay_dropped=_exactly("stale"),
        rest_venue_time=True,  # the REST row's transaction time
        rest_leaves_out=True,  # every symbol's book in one answer
        active_lags=True,
        # The venue pings every 3 minutes: the client's GET_PROPERTY answers keep it alive.
        quiet=Quiet(
            sim=lambda: BinanceUsdmSim(BINANCE_PRICES, rate_hz=0.1, message_limit=30),
            keepalives=_binance_pings,
            at_least=10,
            data_frames=0,
            cls=RapidPingBinanceUsdm,
        ),
        # The batch, then one request per symbol.
        unknown=Unknown("FOOUSDT", "2: Invalid request: invalid stream", requests=4, errors=2),
    ),
    Case(
        id="bitstamp",
        rest_venue_time=False,  # the ticker's `timestamp` is not its book's time
        garbage_reasons={
            "decode": 4,
            "shape": 8,
            "not_finite": 4,
            "non_positive": 4,
            "bad_number": 4,  # a price and a microtimestamp ("soon") that are no venue numbers
            "crossed": 2,
        },
        sim=lambda: BitstampSim({"BTC/USD": 67_000.0, "ETH/USD": 3_500.0}, seed=5, rate_hz=40.0),
        pairs=SPOT_USD,
        reference=_ref(SPOT_USD),
        spike=("btcusd", ("BTC/USD", "spot"), 1000.0, JUMP),
        subscribes=2,
        replay_exact=False,
        replay_dropped=_at_least("out_of_order", 10),
        venue_lag_ms=1_000,  # the book's microtimestamp
        # A 400 on the all-pairs request names no pair: it blames none.
        rest_failures=(Failing(429), Failing(400), Failing(503)),
        rest_leaves_out=True,  # every pair's ticker in one answer
        quiet=Quiet(
            sim=lambda: BitstampSim({"BTC/USD": 67_000.0, "ETH/USD": 3_500.0}, rate_hz=0.1),
            keepalives=_bitstamp_heartbeats,
            at_least=10,
            data_frames=0,
            cls=FastHeartbeatBitstamp,
        ),
        unknown=Unknown("foousd", "Bad subscription string.", requests=3, errors=1),
    ),
    *(
        Case(
            id=kind,
            # A 429 (retCode 10006) names its reset 100 ms ahead, one poll interval: polling
            # goes on (test_bybit_stream checks the longer waits).
            sim=lambda: BybitSim(BINANCE_PRICES, seed=9, rate_hz=40.0, rate_limit_reset_ms=100),
            pairs=pairs,
            reference=_ref(pairs),
            spike=(f"{category}:BTCUSDT", pairs[0], 1000.0, JUMP),
            garbage_reasons=reasons,
            burst=150,
            replay=30,
            replay_exact=False,
            replay_dropped=_bybit_stale(kind == "bybit_spot"),
            rest_venue_time=False,  # the answer's `time` is its server clock
            active_lags=True,
            rotation=False,
            snapshots=True,
            unknown=Unknown("FOOUSDT", f"Invalid symbol :[{topic}.FOOUSDT]", requests=4, errors=2),
            rest_failures=(Failing(429), Failing(502)),
            rest_leaves_out=True,  # the category's tickers in one answer
        )
        for kind, category, topic, pairs, reasons in (
            ("bybit_spot", "spot", "orderbook.1", SPOT_USDT, BYBIT_SPOT_GARBAGE),
            ("bybit_linear", "linear", "tickers", PERP_USDT, BYBIT_LINEAR_GARBAGE),
        )
    ),
    Case(
        id="coinbase",
        snapshots=True,
        garbage_reasons={
            "decode": 4,
            "shape": 10,
            "not_finite": 4,
            "non_positive": 4,
            "bad_number": 4,
            "crossed": 2,
        },
        sim=lambda: CoinbaseSim(
            {"BTC-USD": 67_000.0, "ETH-USD": 3_500.0}, seed=5, rate_hz=40.0, heartbeat_s=0.1
        ),
        pairs=SPOT_USD,
        reference=_ref(SPOT_USD),
        spike=("BTC-USD", ("BTC/USD", "spot"), 1000.0, JUMP),
        subscribes=2,  # heartbeats, then the ticker
        replay=10,
        replay_dropped=_exactly("stale_sequence"),
        rest_venue_time=False,
        quiet=_snapshots_then_heartbeats(
            CoinbaseSim, {"BTC-USD": 67_000.0, "ETH-USD": 3_500.0}, rate_hz=0.01, at_least=5
        ),
        # Heartbeats, the batch, then one request per product.
        unknown=Unknown(
            "FOO-USD", "Failed to subscribe: FOO-USD is not a valid product", requests=5, errors=2
        ),
    ),
    Case(
        id="gemini",
        snapshots=True,
        rest_venue_time=False,
        garbage_reasons={
            "decode": 2,
            "shape": 5,
            "not_finite": 1,
            "non_positive": 2,
            "bad_number": 1,
            "bad_quantity": 1,
            "crossed": 1,
        },
        sim=lambda: GeminiSim(
            {"BTCUSD": 67_000.0, "ETHUSD": 3_500.0}, seed=5, rate_hz=40.0, heartbeat_s=0.1
        ),
        pairs=SPOT_USD,
        reference=_ref(SPOT_USD),
        spike=("BTCUSD", ("BTC/USD", "spot"), 1000.0, JUMP),
        garbage_rounds=1,  # a crossing frame forces a resync; one round keeps that to one
        garbage_resyncs=1,
        active_lags=True,
        rotation=False,
        settled=_gemini_book_matches,
        venue_lag_ms=None,  # book updates carry no time
        # One public request a second after a burst of five: fewer errors to wait for.
        rest_failures=(Failing(429, errors=2), Failing(502, errors=1)),
        quiet=_snapshots_then_heartbeats(
            GeminiSim, {"BTCUSD": 67_000.0, "ETHUSD": 3_500.0}, rate_hz=0.01, at_least=5
        ),
        unknown=Unknown(
            "FOOUSD", "InvalidSymbol: Supplied value 'FOOUSD' is not a symbol", requests=4, errors=2
        ),
    ),
    Case(
        id="gemini_ws",
        garbage_reasons={
            "decode": 4,
            "shape": 8,
            "not_finite": 4,
            "non_positive": 4,
            "bad_number": 2,
            "crossed": 2,
        },
        sim=lambda: GeminiWsSim(GEMINI_WS_PRICES, seed=5, rate_hz=40.0),
        pairs=SPOT_USD,
        reference=_ref(SPOT_USD),
        spike=("btcusd", ("BTC/USD", "spot"), 1000.0, JUMP),
        rest_venue_time=False,
        replay_dropped=_exactly("out_of_order", "duplicate"),
        # One public request a second after a burst of five, as v2's: fewer errors to wait for.
        rest_failures=(Failing(429, errors=2), Failing(502, errors=1)),
        quiet=Quiet(
            sim=lambda: GeminiWsSim(GEMINI_WS_PRICES, rate_hz=0.01, message_limit=30),
            keepalives=_gemini_ws_pings,
            at_least=10,
            data_frames=0,  # nothing is sent on subscribing
            cls=RapidPingGeminiWs,
            config={"liveness_timeout_s": 0.4},
        ),
        # The batch is refused whole, then one request per symbol.
        unknown=Unknown("foousd", "-1100: Invalid stream: foousd@bookTicker", requests=4, errors=2),
    ),
    Case(
        id="kraken",
        cls=FastLimitKraken,
        snapshots=True,
        garbage_reasons={"decode": 6, "shape": 14, "non_positive": 4, "crossed": 2},
        sim=lambda: KrakenSim(
            {"BTC/USD": 67_000.0, "ETH/USD": 3_500.0}, seed=11, rate_hz=40.0, heartbeat_s=0.2
        ),
        pairs=SPOT_USD,
        reference=_ref(SPOT_USD),
        spike=("BTC/USD", ("BTC/USD", "spot"), 1000.0, JUMP),
        replay_exact=False,
        replay_dropped=_at_least("out_of_order", 10),
        rest_venue_time=False,  # REST has no event time
        venue_lag_ms=1_000,
        rest_failures=(Failing(429), Failing(502)),
        quiet=_snapshots_then_heartbeats(
            KrakenSim, {"BTC/USD": 67_000.0, "ETH/USD": 3_500.0}, rate_hz=0.1, at_least=10
        ),
        # The venue answers each symbol of the one request: no split, no retry.
        unknown=Unknown("FOO/USD", "Currency pair not supported FOO/USD", requests=1, errors=1),
    ),
    Case(
        id="kucoin",
        rest_venue_time=True,
        garbage_reasons={
            "decode": 4,
            "shape": 12,
            "not_finite": 4,
            "non_positive": 4,
            "bad_number": 2,
            "crossed": 2,
        },
        sim=lambda: KucoinSim(
            {"BTC-USDT": 67_000.0, "ETH-USDT": 3_500.0},
            seed=9,
            rate_hz=40.0,
            ping_interval_s=0.2,
            ping_timeout_s=0.2,
            rate_limit_reset_ms=100,  # a 429 names one poll interval: polling goes on
        ),
        pairs=SPOT_USDT,
        reference=_ref(SPOT_USDT),
        spike=("BTC-USDT", ("BTC/USDT", "spot"), 1000.0, 60_000_000.0),
        burst=300,
        replay_dropped=_at_least("out_of_order", 18),
        rotation=False,
        rest_connects=True,
        after_reconnect=_kucoin_fresh_token_each_time,
        on_streaming=_kucoin_one_bullet,
        rest_failures=(Failing(429), Failing(500, window=(0.55, 4, 14))),  # 2 symbols a poll
        rest_slow_s=0.3,
        unknown=Unknown(
            "FOO-USDT", "404: topic /market/ticker:FOO-USDT is not found", requests=4, errors=2
        ),
    ),
    Case(
        id="okx",
        rest_venue_time=True,
        garbage_reasons={
            "decode": 4,
            "shape": 10,
            "not_finite": 4,
            "non_positive": 4,
            "bad_number": 4,
            "crossed": 2,
        },
        sim=lambda: OkxSim(
            {"BTC-USDT": 67_000.0, "ETH-USDT": 3_500.0, "BTC-USDT-SWAP": 67_020.0},
            seed=5,
            rate_hz=40.0,
        ),
        pairs=OKX_PAIRS,
        reference={**_ref(OKX_PAIRS), ("BTC/USDT", "perp"): 67_020.0},
        spike=("ETH-USDT", ("ETH/USDT", "spot"), 1000.0, 3_000_000.0),
        replay_dropped=_at_least("out_of_order", 17),
        rotation=False,
        snapshots=True,  # each tickers arg is answered with the current ticker (the recording)
        cls=FastPingOkx,
        on_streaming=_okx_swap_near_its_own_price,
        rest_failures=(Failing(429), Failing(503, window=(0.55, 2, 7))),  # 1 request a poll
        rest_slow_s=0.3,
        rest_leaves_out=True,  # the tickers of an instrument type in one answer
        quiet=Quiet(
            sim=lambda: OkxSim(
                {"BTC-USDT": 67_000.0, "ETH-USDT": 3_500.0, "BTC-USDT-SWAP": 67_020.0},
                rate_hz=0.01,
                message_limit=30,
            ),
            keepalives=_okx_pings,
            at_least=10,
            data_frames=3,  # the snapshots, one per instrument
            cls=RapidPingOkx,
            config={"liveness_timeout_s": 0.4},
        ),
        # The venue settles each arg of the one request: no split, no retry.
        unknown=Unknown("FOO-USDT", OKX_60018, requests=1, errors=1),
    ),
    Case(
        id="pyth_hermes",
        rest_venue_time=True,
        garbage_reasons={
            "decode": 4,
            "shape": 8,
            "bad_number": 6,
            "non_positive": 4,
            "crossed": 2,
            "wide_confidence": 2,
        },
        sim=lambda: PythHermesSim(
            {PYTH_BTC: 67_000.0, PYTH_ETH: 3_500.0}, seed=7, rate_hz=40.0, keepalive_s=0.2
        ),
        pairs=SPOT_USD,
        reference=_ref(SPOT_USD),
        spike=(PYTH_BTC, ("BTC/USD", "spot"), 1000.0, JUMP),
        subscribes=0,  # the ids are in the stream's URL
        burst=100,
        replay_dropped=_exactly("out_of_order", "duplicate"),
        active_lags=True,
        config={"instruments": {"BTC/USD": "0x" + PYTH_BTC, "ETH/USD": PYTH_ETH}},
        venue_lag_ms=5_000,  # publish_time is in whole seconds
        on_streaming=_pyth_confidence_brackets,
        # A 429 holds polls for Hermes's 60 s ban: test_pyth_stream.py covers it.
        rest_failures=tuple(Failing(s, window=(0.35, 1, 6)) for s in (500, 503)),
        quiet=Quiet(
            sim=lambda: PythHermesSim(
                {PYTH_BTC: 67_000.0, PYTH_ETH: 3_500.0}, rate_hz=0.1, keepalive_s=0.1
            ),
            keepalives=_heartbeats,
            at_least=8,
            data_frames=0,
            config={"pairs": [("BTC/USD", "spot")], "instruments": {"BTC/USD": PYTH_BTC}},
        ),
    ),
)


CASE: Mapping[str, Case] = {c.id: c for c in CASES}  # a venue file's own case, by source type


@asynccontextmanager
async def running(
    source_id: str,
    cfg: SourceConfig,
    pairs: Sequence[tuple[str, Kind]],
    http: aiohttp.ClientSession,
    cls: type[Source] | None = None,
    *,
    clock: Clock | None = None,
    host_rests: HostRests | None = None,
) -> AsyncIterator[Running]:
    """Run an adapter (the registered one of `source_id`, or `cls`) on `clock` (the system's by
    default), sharing `host_rests` if given as the service's sources share its one; it must end
    only by cancellation, never by a crash."""
    stats, quotes = SourceStats(source_id), list[Quote]()
    args = (source_id, cfg, list(pairs), quotes.append, clock or SystemClock(), http, stats)
    source = cls(*args) if cls is not None else build_source(*args)
    if host_rests is not None:
        source.host_rests = host_rests
    task = asyncio.create_task(source.run(), name=f"test:{source_id}")
    try:
        yield Running(source, stats, quotes, task)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not task.cancelled():
            task.result()


@asynccontextmanager
async def running_source(
    case: Case,
    sim: VenueSim,
    http: aiohttp.ClientSession,
    *,
    pairs: Sequence[tuple[str, Kind]] | None = None,
    cls: type[Source] | None = None,
    **overrides: Any,
) -> AsyncIterator[Running]:
    """Run the case's adapter (or `cls`) on `sim` for its pairs (or `pairs`), with test-sized
    timings and config `overrides`."""
    cfg = case.make_config(sim, **overrides)
    chosen = pairs if pairs is not None else case.pairs
    async with running(case.id, cfg, chosen, http, cls or case.cls) as run:
        yield run
