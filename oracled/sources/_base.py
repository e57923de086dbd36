"""Everything a streaming source does that does not depend on the venue.

A venue subclass declares its URLs and wire types and implements five small hooks (`stream_url`,
`subscribe_message`, `on_message`, `rest_request`, `on_rest`); this module does the rest:

- one WebSocket connection at a time; venue pings are answered with their own payload by the read
  loop (autoping is off so that pings count as signs of life for the watchdog);
- a liveness watchdog: nothing at all (no data, no ping) for ``liveness_timeout_s`` means the
  socket is dead even if TCP says otherwise; it is closed and replaced;
- reconnects with exponential backoff and full jitter, capped at ``reconnect_max_s`` and reset
  after a healthy connection; a planned rotation before ``max_connection_age_s`` (or on a venue's
  shutdown notice) reconnects at once without declaring the stream down, unless the connection
  it ends lived less than ``healthy_after_s``: that one waits its backoff (still not down);
- REST polling every ``rest_poll_interval_s`` while the stream is down, stopped by the first
  streamed quote (or book resent unchanged), and held for as long as a rate-limit answer asks
  (`rate_limit_wait_s`: ``Retry-After`` unless the venue says it another way), and, for a limit
  the venue documents as one on our IP, every source polling the same REST host rests with it
  until the same instant (`HostRests`), and a REST rate documented per IP paces them as one
  (`rest_rate_per_ip`); while an answer is read, quotes go through a filtering
  emitter (`_emit_polled`) that drops, as ``unchanged``, a quote without a venue time repeating
  its instrument's last book, the stream's last included, so that a frozen book is not made
  fresh by polls;
- on a venue whose subscription is answered with a snapshot (``snapshot_on_subscribe``, stamped
  when sent on several venues), the first quote of each instrument on a new connection goes
  through another (`_emit_first`), which drops it as ``unchanged`` when it repeats the
  instrument's last book; once every instrument has had its first quote, or after
  ``liveness_timeout_s``, streamed quotes go straight to the emitter again. A venue that only
  pushes changes sends no snapshot: its first push is a new event, quoted like any other;
- subscription bookkeeping: every request id is tracked until its ack; a refused batch is split
  into one request per symbol (paced under the venue's message limit) so that only the bad symbol
  ends in ``stats.failed_instruments``, with no reconnect;
- price hygiene: a quote whose bid or ask is unparseable, not finite, not positive, or crossed is
  dropped here and counted (``stats.malformed`` and ``stats.dropped[reason]``). The core checks
  again; the source drops first so that one venue's garbage never reaches the book. A quote whose
  venue time is more than ``max_clock_skew_ms`` ahead of its receive time is dropped too
  (``stats.dropped["future"]``, not malformed), before a venue's ordering bar moves to it, and
  one before 1970 as ``bad_number``;
- a venue counter that stopped being believable (`_counter_refused`): an adapter that orders a
  symbol's frames by a venue counter (an update id, a sequence) asks here before it drops a frame
  whose counter is not above the bar; a frame newer by venue time whose counter fell below half
  the bar, or the `COUNTER_RESET_AFTER`-th such frame in a row, means the venue restarted its
  count or the frame that set the bar was bad: the bar is forgotten, the frame used, and the
  reset counted (``stats.sequence_resets``) and logged. Otherwise one far-ahead number would
  freeze the symbol on a connection that looks healthy until the next reconnect;
- silent instruments (`_check_silent`): a subscribed symbol (a configured pair's, quoted under any
  of its venue names) without a quote for longer than its limit (`silent_after_ms`, the
  service's: the longest age any market allows it), counted from its last quote (or, if none
  came yet, from the opening of the first connection that subscribed it)
  across reconnects, the latest outage aside, is listed in ``stats.silent_instruments`` while the
  connection streams, with a line on entering and on quoting again (each at most once a minute). A
  venue that accepts a subscription to a symbol it does not list (Binance does) or stops sending
  one symbol shows nowhere else: the connection and the other symbols are fine. While the source
  polls instead, a symbol is listed the same way when the latest answer that asked for it
  (`rest_scope`) left it out, and its limit has passed: an all-symbols answer (OKX's tickers of a
  type, Bybit's of a category, Bitstamp's, KuCoin's allTickers, Binance USD-M's) just leaves out a
  symbol the venue does not list. Silence is measured on the monotonic clock (a stepped wall
  clock lists or hides nothing), from a stamp taken once per frame or REST answer: the hot path
  pays one dict store per quote; the scan runs a few times a limit.

Only state changes (and each reconnect's backoff) are logged, never a message.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import ClassVar, Final, TypeVar

import aiohttp
import msgspec
import structlog

from oracled.clock import Clock
from oracled.config import DEFAULT_MAX_CLOCK_SKEW_MS, SourceConfig
from oracled.headers import delay_seconds, redirected_to
from oracled.lograte import LogEveryMinute
from oracled.model import Kind, Quote
from oracled.sources.hostrests import HostRests, rest_host
from oracled.sources.stats import LATENCY_BOUNDS_MS, LATENCY_BUCKET_OF_MS, ConnState, SourceStats

__all__ = [
    "COUNTER_RESET_AFTER",
    "DEFAULT_SILENT_AFTER_MS",
    "UNDECODABLE",
    "RestPacer",
    "Source",
    "backoff_delay",
    "read_decimal",
    "read_integer",
    "read_request_id",
]

_T = TypeVar("_T")


class _NotSent(Exception):
    """While a poll's request waited for its turn (the REST pacer), the stream came back or a
    limit on our IP was learnt (by this source or another of the host): it is not sent, and
    the poll round ends (`_poll_loop`)."""


class BodyTooLarge(aiohttp.ClientPayloadError):
    """A REST answer over `MAX_REST_BODY`: a failed request like any transport error."""


async def read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """The (decompressed) body of `resp`, read no further than `MAX_REST_BODY`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > MAX_REST_BODY:
            resp.close()  # hang up: the rest of the answer is never read
            raise BodyTooLarge(f"REST answer over {MAX_REST_BODY >> 20} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


_INF: Final = math.inf
_LATENCY_BUCKET_OF_MS: Final = LATENCY_BUCKET_OF_MS
_LATENCY_OVER: Final = LATENCY_BOUNDS_MS[-1]
# Errors that mean "this connection or request failed", as opposed to a bug in our code.
_NET_ERRORS: Final = (aiohttp.ClientError, OSError, TimeoutError)
#: The most of a REST answer read (after decompression). The largest real answers (KuCoin's
#: allTickers, every symbol of the venue) are about 1 MB; an answer that runs past this is a
#: broken or hostile server, cut here rather than buffered until the request's timeout.
MAX_REST_BODY: Final = 16 * 1024 * 1024
#: The characters of a venue's own words (a refusal's or an error frame's message) that a source
#: keeps (`failed_instruments`, served by the API) and logs, as of a REST error's body: a
#: WebSocket frame may carry megabytes of them.
VENUE_TEXT_KEPT: Final = 200
# The venue's one-second message window, with a margin for jitter between our clock and theirs.
_WINDOW_S: Final = 1.1
# A venue's number as the one-pass stream decoders read it: a JSON number, bare or quoted
# (strict=False). `read_decimal` and `read_integer` hold text to the same rule.
_DECIMAL: Final = msgspec.json.Decoder(float, strict=False)
_INTEGER: Final = msgspec.json.Decoder(int, strict=False)
#: What msgspec raises on bytes it cannot read besides DecodeError: RecursionError for JSON
#: nested past its depth limit, and UnicodeDecodeError for bytes that are not UTF-8 inside a
#: string it builds (a binary frame or a REST body in Latin-1, say: the decoder checks a string's
#: text only when it makes one, so the same bytes in a skipped field are read without a word).
#: Caught wherever a venue's bytes meet a decoder outside `on_message` and `on_rest`, and around
#: those two by the read loops, which count the frame as `decode`.
UNDECODABLE: Final = (RecursionError, UnicodeDecodeError)
_AS_JSON: Final = msgspec.json.Encoder().encode
# REST answers that mean "too many requests" (418: Binance's ban for polling on through 429s),
# and the longest wait their Retry-After is obeyed for (Binance's longest ban, 3 days).
_RATE_LIMITED: Final = (429, 418)
_MAX_RETRY_AFTER_S: Final = 3 * 86_400.0
#: Frames of one symbol refused in a row by a venue counter while newer by venue time than the
#: frame that set the bar, after which the bar is judged bad (`Source._counter_refused`).
COUNTER_RESET_AFTER: Final = 5
#: An instrument's silence limit where `Source.silent_after_ms` gives none (a source run outside
#: the service): a market's default max_age_ms.
DEFAULT_SILENT_AFTER_MS: Final = 10_000
# Silent symbols named in one log line (the count is always given), and the bounds of the time
# between two scans for them (half the shortest limit in between).
_SILENT_NAMED: Final = 20
_SILENT_SCAN_S: Final = (0.1, 5.0)


def read_decimal(text: str | float) -> float:
    """A venue's decimal text as a float, by the rule the one-pass stream decoders apply to a
    quoted price, so that the text paths (REST answers, frames the one pass refused) read no more
    than they do: JSON's number grammar ("-0.35210000", "27450", "1.5e-8"; msgspec also reads
    "nan" and "inf", which the price check then drops as `not_finite`). Python's float() reads
    far more, none of which a venue sends: "1_000", " 12.5 ", "+5", ".5", "00012", non-ASCII
    digits ("١٢٣" is 123.0); each is refused here with ValueError, as float() refuses "abc".
    Cheaper than float() on the same text (docs/sources.md, "Bad input: venue numbers")."""
    try:
        return _DECIMAL.decode(_AS_JSON(text))
    except msgspec.DecodeError:
        raise ValueError("not a venue decimal") from None


def read_integer(text: str) -> int:
    """A venue's integer text (Pyth's price and confidence), by the same rule as `read_decimal`:
    int() would read "1_000", " 12 " and "+5" too."""
    try:
        return _INTEGER.decode(_AS_JSON(text))
    except msgspec.DecodeError:
        raise ValueError("not a venue integer") from None


def read_request_id(text: str | None) -> int | None:
    """One of our request ids as a venue echoes it (we send integers as text), or None: ASCII
    digits only. str.isdigit() takes Arabic-Indic digits ("\u0661" would answer request 1) and
    superscripts ("²", on which int() then raises in the read loop)."""
    if text is None or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def _readable(text: str | float) -> bool:
    """Whether `read_decimal` reads `text` (only to name the refused one of a pair)."""
    try:
        read_decimal(text)
    except ValueError:
        return False
    return True


#: A quote handed on, with the monotonic time of the frame or answer it came in (`Source._rx_at`).
Heard = tuple[Quote, float]


def _heard_at(heard: Heard) -> float:
    return heard[1]


def _newest(heard: Mapping[str, Heard], names: Sequence[str]) -> tuple[float, int] | None:
    """(monotonic, wall ms) receive times of the newest quote `heard` under any of `names` (one
    instrument's)."""
    return max(((h[1], h[0].recv_ts) for name in names if (h := heard.get(name))), default=None)


def _no_limits() -> Mapping[tuple[str, Kind], int]:
    return {}


class RestPacer:
    """A token bucket for REST calls: `burst` at once, then `rate` a second."""

    __slots__ = ("_at", "_burst", "_clock", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        self._rate, self._burst, self._tokens = rate, burst, burst
        self._clock = clock
        self._at = clock.monotonic()

    async def take(self) -> None:
        """Wait until one request fits under the venue's published rate."""
        while True:
            now = self._clock.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            await asyncio.sleep((1.0 - self._tokens) / self._rate)


def _halves(batch: list[str]) -> tuple[list[str], list[str]]:
    """A refused batch's two halves, each asked on its own: the one that answers is priced,
    the one still refused halved again, down to the bad symbols alone."""
    middle = (len(batch) + 1) // 2
    return batch[:middle], batch[middle:]


def _singles(batch: list[str]) -> list[list[str]]:
    """A refused batch asked symbol by symbol: where a request for several symbols names none
    (`Source.rest_batch_named`), its halves would be the same request again."""
    return [[symbol] for symbol in batch]


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait before reconnect number `attempt` (0-based): full jitter.

    Uniform in [0, min(cap, base * 2**attempt)], so that many clients dropped at once do not
    come back in lockstep (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
    """
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt, 62))
    return rng.uniform(0.0, ceiling)


class Source(abc.ABC):
    """One feed instance; `run()` streams quotes into `emit` until cancelled."""

    # The base's own attributes live in slots. Python 3.11 keeps an instance's attributes in a
    # shared-key table only up to 30 of them; past that (the base alone has over 50) the
    # instance gets a plain dict, whose reads the interpreter specialises less and whose
    # methods (`self._quote(...)`, once per frame) it does not specialise at all. A venue's
    # own few attributes stay in its instance dict.
    __slots__ = (
        "_answered_upto",
        "_by_symbol",
        "_clock",
        "_counter_refusals",
        "_cut",
        "_deadline",
        "_direct",
        "_down",
        "_emit",
        "_first_timer",
        "_heard",
        "_host_rests",
        "_http",
        "_ids",
        "_kept",
        "_kept_ms",
        "_last_rx",
        "_left_out",
        "_limit_ip_wide",
        "_log",
        "_opened_at",
        "_opened_ms",
        "_outage",
        "_outbox",
        "_pacer",
        "_pending",
        "_polled",
        "_repeats",
        "_requested_at",
        "_rest_headers",
        "_rest_host",
        "_rest_waited",
        "_retry_after_s",
        "_rng",
        "_rx_at",
        "_said_silent",
        "_sent",
        "_silent_log",
        "_sink",
        "_streaming",
        "_subscribed",
        "_symbols_of",
        "_unpriced",
        "_venue_errors",
        "_waiting",
        "_watch",
        "cfg",
        "max_clock_skew_ms",
        "rest_url",
        "silent_after_ms",
        "source_id",
        "stats",
        "symbols",
        "ws_url",
    )

    #: Venue defaults, used when the config leaves the URL out.
    default_ws_url: ClassVar[str]
    default_rest_url: ClassVar[str | None] = None
    #: Instrument kinds this venue serves; other requested pairs are marked failed.
    kinds: ClassVar[frozenset[Kind]] = frozenset({"spot"})
    #: Largest number of symbols put in one subscribe request.
    max_symbols_per_request: ClassVar[int] = 100
    #: Messages (requests, pings, pongs) the venue accepts from us per second; one slot in
    #: each second is kept free for a pong, which must never wait.
    max_messages_per_s: ClassVar[int] = 5
    #: Backoff grows from this; it is reset once a connection has streamed this long.
    backoff_base_s: ClassVar[float] = 0.5
    healthy_after_s: ClassVar[float] = 10.0
    #: Reasons a connection ends that are planned replacements: reconnect at once, never down,
    #: no backoff, no REST polling (the old connection was healthy up to the cut).
    planned_cuts: ClassVar[frozenset[str]] = frozenset({"max_age", "server_shutdown"})
    #: Seconds between the client's own application-level pings (`app_ping`), for venues that
    #: require them (OKX, Bybit, KuCoin); None for venues that ping us or send heartbeats.
    app_ping_interval_s: ClassVar[float | None] = None
    #: Most symbols in one REST request (venues without a multi-symbol endpoint: 1).
    rest_batch_size: ClassVar[int] = 1000
    #: A request for several symbols names them, so a 400 may be one bad symbol's and halving
    #: the batch finds it. False where such a request asks for every ticker of the venue and
    #: names none (OKX, Bybit, Binance USD-M, KuCoin): a half of it is the same request, so a
    #: refused batch is asked again symbol by symbol.
    rest_batch_named: ClassVar[bool] = True
    #: REST requests a second allowed by the venue's public limit (None: one poll per interval
    #: is already far inside it), and how many may go at once.
    rest_rate_per_s: ClassVar[float | None] = None
    rest_burst: ClassVar[float] = 1.0
    #: The venue documents that rate as one per IP, whatever the source: every source of this
    #: class polling one REST host takes its turns from one pacer (`HostRests.pacer`), the first
    #: source's, so that two sources each paced under the limit do not pass it together.
    rest_rate_per_ip: ClassVar[bool] = False
    #: The venue answers a subscription with each instrument's current state (a snapshot, stamped
    #: when sent or not at all), so a new connection's first quote of an instrument may only
    #: repeat a book we had: `_emit_first` drops such a repeat. False only where the venue's docs
    #: (or a recording) show that it pushes changes alone: there a first push is a new event (a
    #: size-only change, say) and dropping it would hold the instrument's freshness back. True by
    #: default, the safe side for a venue nobody checked (docs/sources.md, Adding a venue).
    snapshot_on_subscribe: ClassVar[bool] = True

    def __init__(
        self,
        source_id: str,
        cfg: SourceConfig,
        pairs: Sequence[tuple[str, Kind]],
        emit: Callable[[Quote], None],
        clock: Clock,
        session: aiohttp.ClientSession,
        stats: SourceStats,
    ) -> None:
        self.source_id = source_id
        self.cfg = cfg
        #: The core's `oracle.max_clock_skew_ms` (the service sets the configured one on each
        #: source it builds): a quote whose venue time is further ahead of its receive time is
        #: dropped here as `future`, before it can move a venue's ordering bar.
        self.max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS
        self.stats = stats
        self._emit = emit
        self._clock = clock
        self._http = session
        self._log = structlog.get_logger().bind(source=source_id)
        self.ws_url = (cfg.ws_url or self.default_ws_url).rstrip("/")
        rest = cfg.rest_url or self.default_rest_url
        self.rest_url = rest.rstrip("/") if rest else None
        # Symbol maps are built once; the hot path does one dict lookup per quote.
        self._by_symbol: dict[str, tuple[str, Kind]] = {}
        for pair, kind in pairs:
            if kind not in self.kinds:
                stats.failed_instruments[pair] = f"{cfg.type} does not serve {kind} instruments"
                continue
            self._by_symbol[self.instrument(pair, kind)] = (pair, kind)
        self.symbols: tuple[str, ...] = tuple(self._by_symbol)
        stats.symbol_of = {key: symbol for symbol, key in self._by_symbol.items()}
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, ...]] = {}
        # When each request of this connection was sent, and the send time of the newest one the
        # venue answered: a request older than an answered one, still unanswered a liveness
        # period later, was dropped by the venue (see `_lost_request`).
        self._requested_at: dict[int, float] = {}
        self._answered_upto = -_INF
        self._venue_errors = LogEveryMinute()  # venue errors naming none of our requests
        self._outbox: asyncio.Queue[tuple[int, tuple[str, ...]]] = asyncio.Queue()
        # When we sent each of our latest messages (rate limit): `_pace` needs no more than the
        # last `max_messages_per_s - 1`, and a pong is added without pacing, so a venue's ping
        # flood would grow an unbounded deque for the connection's life (a 4-byte ping each).
        self._sent: deque[float] = deque(maxlen=max(self.max_messages_per_s - 1, 1))
        self._down = asyncio.Event()  # set while the stream is down: the REST poller runs
        self._streaming = False
        # Streaming, and no connection filter on: `_read` hands frames straight to `on_message`.
        self._direct = False
        self._rng = random.Random()
        self._last_rx = 0.0
        self._opened_at = 0.0
        # The monotonic time the frame or REST answer being read came in: what a symbol's
        # silence is measured on (`_check_silent`), taken once per frame, never per quote.
        self._rx_at = 0.0
        self._cut: str | None = None
        self._deadline: asyncio.Timeout | None = None
        self._watch: asyncio.TimerHandle | None = None
        rate = self.rest_rate_per_s
        self._pacer = RestPacer(rate, self.rest_burst, clock) if rate else None
        self._retry_after_s = 0.0  # what the newest rate-limit answer asked us to wait
        # Whether that answer is a limit on our IP at the REST host, as the venue documents it
        # (set by a venue's `_fetch`): then every source polling the host rests with this one,
        # through `host_rests`, which the service sets to its one registry on each source.
        self._limit_ip_wide = False
        self._rest_host = rest_host(self.rest_url)
        self.host_rests = HostRests()
        self._rest_waited = -_INF  # the host's rest this source last said it waits for
        # The newest REST answer's headers: a venue that says a rate limit inside HTTP 200 (Bybit)
        # reads its wait from them in its `_fetch`.
        self._rest_headers: Mapping[str, str] = {}
        # Quotes go to `_sink`; while a REST answer is read, `_emit` is `_emit_polled`, which
        # drops a poll repeating the book of the instrument's last quote (`_read_rest`); on a
        # venue that answers subscriptions with a snapshot, from a connection's opening until
        # each instrument has had its first quote on it, `_emit` is `_emit_first`
        # (`_first_quotes`).
        self._sink = emit
        # The connection filter's state: instruments without a quote on this connection yet,
        # each instrument's last quote handed on before it (what a first quote is compared
        # with), its symbols, the quotes it dropped in the frame being read (`_read` takes them
        # off `stats.quotes` once the adapter is done with the frame), the source's newest quote
        # time before that frame, and the timer that ends the filter.
        self._waiting: set[tuple[str, Kind]] = set()
        self._kept: dict[tuple[str, Kind], Heard] = {}
        self._symbols_of: dict[tuple[str, Kind], tuple[str, ...]] = {}
        self._repeats = 0
        self._kept_ms: int | None = None
        self._first_timer: asyncio.TimerHandle | None = None
        # Since the stream went down: each instrument's last quote handed on, from the stream's
        # last before the outage, then from the polls (`_emit_polled`).
        self._polled: dict[tuple[str, Kind], Heard] = {}
        # Per symbol: the counter bar the current refusals were counted against, and how many.
        self._counter_refusals: dict[str, tuple[int, int]] = {}
        #: (pair, kind) -> ms a subscribed symbol may go without a quote on a streaming
        #: connection before it is listed silent; called at each scan, so that it can follow a
        #: reload (the service sets it; missing keys: DEFAULT_SILENT_AFTER_MS).
        self.silent_after_ms: Callable[[], Mapping[tuple[str, Kind], int]] = _no_limits
        # Symbol -> its newest quote handed on. Silence is measured on the monotonic clock: a
        # wall clock stepped forward would list every symbol silent until it quotes again, one
        # stepped back would hide a silence for the step. Wall times are only reported.
        self._heard: dict[str, Heard] = {}
        self._opened_ms = 0  # when the current connection opened (wall clock, ms)
        # Symbol -> when the first connection that subscribed it opened (monotonic s, wall ms):
        # where its silence counts from until it quotes. Kept over reconnects, so that a source
        # reconnecting more often than a limit still lists a symbol that never quotes; forgotten
        # while refused.
        self._subscribed: dict[str, tuple[float, int]] = {}
        # The latest outage (monotonic s): from the fall of a streaming connection to the first
        # quote of the next. Not counted as silence, so that a symbol has the time to quote on
        # the connection that follows an outage longer than its limit.
        self._outage = (0.0, 0.0)
        self._silent_log = LogEveryMinute()
        # Symbols said silent and not yet said quoting again -> the monotonic time their silence
        # counts from; kept over reconnects, so that each episode has its two lines.
        self._said_silent: dict[str, float] = {}
        # Since the stream went down: symbols the latest REST answer that asked for them left
        # out (no row of them with a usable price); the silent scan's candidates while polling.
        self._left_out: set[str] = set()
        # Symbols asked for by REST answers without a usable price since the last one with
        # one: all of them, and the source is down (`_poll_loop`).
        self._unpriced: set[str] = set()

    @property
    def host_rests(self) -> HostRests:
        """Until when each REST host rests for a limit on our IP, and each host's shared pacer
        (`rest_rate_per_ip`): the service sets its one registry on every source it builds."""
        return self._host_rests

    @host_rests.setter
    def host_rests(self, rests: HostRests) -> None:
        self._host_rests = rests
        if self.rest_rate_per_ip and self._pacer is not None and self._rest_host is not None:
            self._pacer = rests.pacer(self._rest_host, self._pacer)

    @property
    def instruments(self) -> Mapping[str, tuple[str, Kind]]:
        """Venue symbol -> (canonical pair, kind), as subscribed (for tools and simulators)."""
        return self._by_symbol

    # ----------------------------------------------------------------- venue hooks

    def venue_symbol(self, pair: str) -> str:
        """The venue's name for a pair the config does not override (BTC/USDT -> BTCUSDT)."""
        return pair.replace("/", "")

    def instrument(self, pair: str, kind: Kind) -> str:
        """The symbol subscribed for `pair` of `kind`: the config's `instruments` name, else
        `venue_symbol`'s, made that kind's by `kind_symbol`."""
        return self.kind_symbol(self.cfg.instruments.get(pair) or self.venue_symbol(pair), kind)

    @staticmethod
    def kind_symbol(symbol: str, kind: Kind) -> str:
        """The symbol of the instrument of `kind` whose pair the venue (or the config) names
        `symbol`: itself where each kind has names of its own. Static: the config's check of
        two pairs on one symbol applies it with no source made."""
        return symbol

    @abc.abstractmethod
    def stream_url(self) -> str:
        """Full WebSocket URL to connect to."""

    async def connect_url(self) -> str:
        """The URL of the next connection; venues that hand out a token first override this."""
        return self.stream_url()

    def app_ping(self) -> str:
        """The text of one application-level ping (only called if app_ping_interval_s is set)."""
        raise NotImplementedError

    @abc.abstractmethod
    def subscribe_message(self, request_id: int, symbols: Sequence[str]) -> str:
        """The text frame that subscribes `symbols` under `request_id`."""

    @abc.abstractmethod
    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        """Decode one frame, then call `_quote_text`, `_ack`, `_reject`, `_bad` or `_rotate`.

        Never raises on bad input: a frame that cannot be used is counted with `_bad`.
        """

    @abc.abstractmethod
    def rest_request(self, symbols: Sequence[str]) -> tuple[str, Mapping[str, str]] | None:
        """(url, query) of one REST request for the best prices of `symbols`, or None: no REST."""

    @abc.abstractmethod
    def on_rest(self, body: bytes, recv_ts: int) -> None:
        """Decode one successful REST response body, like `on_message`."""

    def rest_scope(self, symbols: Sequence[str], query: Mapping[str, str]) -> Sequence[str]:
        """The symbols that an answer to `rest_request(symbols)` (sent with `query`) should
        quote: all of them, unless the venue's request asks for a part (OKX polls one instrument
        type at a time). One it leaves out is silent once its limit has passed (`_check_silent`)."""
        return symbols

    def rate_limit_wait_s(self, headers: Mapping[str, str]) -> float:
        """Seconds a rate-limit answer (429, 418) asks the poller to send nothing more: its
        ``Retry-After`` in seconds, the HTTP rule, at most Binance's longest ban (3 days); 0
        without one (the next poll goes at its interval). A venue that names its wait another
        way overrides this."""
        seconds = self._header_count(headers, "Retry-After")
        return min(float(seconds), _MAX_RETRY_AFTER_S) if seconds else 0.0

    def _header_count(self, headers: Mapping[str, str], name: str) -> int | None:
        """The count a rate-limit header names (seconds, milliseconds, an epoch time), read by
        RFC 9110's delay-seconds rule, ASCII digits alone; None without the header. Any other
        text ("inf", "nan", "-5", "1e9", "1.5", "+5", "1_000", "١٢٣", an HTTP date) names no
        wait: the venue's default one applies, and the text is logged as `header refused`, the
        first at once, then at most a line a minute. float() read "inf" as a 3-day ban and
        "١٢٣" as 123 s."""
        text = headers.get(name)
        if text is None:
            return None
        count = delay_seconds(text)
        if count is None:
            held = self._venue_errors.due("header", self._clock.monotonic())
            if held is not None:
                self._log.warning(
                    "header refused", header=name, text=repr(text)[:40], suppressed=held - 1
                )
        return count

    # ----------------------------------------------------------------- helpers for venues

    def _quote_text(
        self, symbol: str, bid: str, ask: str, recv_ts: int, venue_ts: int | None = None
    ) -> None:
        """Emit one quote from decimal strings, or drop and count it."""
        try:
            bid_f = read_decimal(bid)
            ask_f = read_decimal(ask)
        except ValueError:
            self._bad_number(bid, ask)
            return
        self._quote(symbol, bid_f, ask_f, recv_ts, venue_ts)

    def _quote_texts(
        self,
        symbol: str,
        bid: str,
        ask: str,
        recv_ts: int,
        venue_ts: int | None,
        last: msgspec.Raw,
    ) -> None:
        """Emit from decimal strings with the raw last trade price beside them (the strict paths
        of Coinbase, KuCoin and OKX); an unreadable or absent last price is left out, not the
        quote, since the book is still good."""
        try:
            bid_f, ask_f = read_decimal(bid), read_decimal(ask)
        except ValueError:
            self._bad_number(bid, ask)
            return
        try:
            last_f = _DECIMAL.decode(last) if last else None
        except msgspec.DecodeError:
            last_f = None
        self._quote(symbol, bid_f, ask_f, recv_ts, venue_ts, last_f)

    def _quote(
        self,
        symbol: str,
        bid: float,
        ask: float,
        recv_ts: int,
        venue_ts: int | None = None,
        last: float | None = None,
        flag: str | None = None,
    ) -> None:
        target = self._by_symbol.get(symbol)
        if target is None:
            self.stats.dropped["unknown_symbol"] += 1
            return
        # One chained comparison per side rejects NaN, +-inf, zero and negatives together.
        if not (0.0 < bid <= ask < _INF):
            self._reject_prices(bid, ask)
            return
        stats = self.stats
        if venue_ts is not None:  # the latency histogram, inlined: this runs once per quote
            latency = recv_ts - venue_ts
            if 0 <= latency <= _LATENCY_OVER:
                stats.latency_buckets[_LATENCY_BUCKET_OF_MS[latency]] += 1
                stats.latency_sum_ms += latency
            elif latency < -self.max_clock_skew_ms:
                # Further ahead than the core accepts: refused here, so that a venue's ordering
                # bar (which moves with every quote emitted) is not set into the future by one
                # bad clock reading, after which every good frame would be "out of order".
                stats.dropped["future"] += 1
                return
            elif venue_ts < 0:
                # Before 1970: no venue's time, only a number printed wrong. Quoted, it would
                # go to the tape and the audit trail, and add its whole age (read from the JSON
                # integer at any size: 1e20 ms, say) to the latency histogram's sum for good.
                self._bad_number(venue_ts)
                return
            else:
                stats.observe_latency(latency)
        stats.quotes += 1
        stats.last_quote_ms = recv_ts
        if last is not None and not 0.0 < last < _INF:
            last = None  # a bad last price never spoils a good book; the core prices the mid
        # Positional arguments: this runs once per venue frame (source, pair, recv_ts, price,
        # bid, ask, kind, venue_ts, volume, flag).
        quote = Quote(self.source_id, target[0], recv_ts, last, bid, ask, target[1], venue_ts,
                      None, flag)  # fmt: skip
        self._heard[symbol] = (quote, self._rx_at)
        self._emit(quote)

    def _emit_polled(self, quote: Quote) -> None:
        """The emitter while a REST answer is read (`_read_rest`): a quote without a venue time
        whose bid and ask (and flag) are those of its instrument's last quote handed on since the
        stream went down, the stream's last one included, is dropped as `unchanged`, so that the
        book keeps the age of the quote that first showed it. Its receive time would make the
        book look fresh with every poll, whether the venue's book is quiet or frozen; a streamed
        book that stops changing sends nothing and ages the same way. Kept off the stream's path:
        only polls pay for the comparison."""
        key = (quote.pair, quote.kind)
        polled = self._polled
        if quote.venue_ts is None:
            held = polled.get(key)
            if (
                held is not None
                and held[0].bid == quote.bid
                and held[0].ask == quote.ask
                and held[0].flag == quote.flag
            ):
                stats = self.stats
                stats.quotes -= 1  # counted by `_quote`, but never handed to the core
                stats.dropped["unchanged"] += 1
                return
        polled[key] = (quote, self._rx_at)
        self._sink(quote)

    def _first_quotes(self) -> None:
        """Swap in `_emit_first` for a new connection: each instrument's first quote on it is
        compared with the instrument's last quote handed on (the stream's last before a planned
        rotation; after an outage, the memory the polls keep, which starts from the stream's)."""
        failed = self.stats.failed_instruments
        by_symbol = self._by_symbol
        self._waiting = {by_symbol[s] for s in self.symbols if s not in failed}
        if self._streaming:
            last = sorted(self._heard.values(), key=_heard_at)
            self._kept = {(h[0].pair, h[0].kind): h for h in last}
        else:
            self._kept = self._polled  # the same dict: a poll handed on meanwhile is in it
        self._symbols_of = self._names_of()
        self._emit, self._direct = self._emit_first, False
        self._first_timer = asyncio.get_running_loop().call_later(
            self.cfg.liveness_timeout_s, self._first_quotes_done
        )

    def _names_of(self) -> dict[tuple[str, Kind], tuple[str, ...]]:
        """Each instrument's venue symbols: one, or several where the venue quotes one instrument
        under more than one name (a Coinbase -USDC product and its -USD twin)."""
        names: dict[tuple[str, Kind], tuple[str, ...]] = {}
        for symbol, key in self._by_symbol.items():
            names[key] = (*names.get(key, ()), symbol)
        return names

    def _first_quotes_done(self) -> None:
        """Streamed quotes go straight to the emitter again: the steady stream pays nothing."""
        if self._first_timer is not None:
            self._first_timer.cancel()
            self._first_timer = None
        self._waiting, self._kept = set(), {}
        self._emit, self._direct = self._sink, self._streaming

    def _emit_first(self, quote: Quote) -> None:
        """The emitter from a connection's opening until each instrument has had its first quote
        on it, on a venue with `snapshot_on_subscribe`: a first quote whose bid and ask (and flag)
        are those of the instrument's last quote handed on is dropped as `unchanged`. Gemini,
        Bybit linear, Kraken and Coinbase answer a subscription with a snapshot stamped when it is
        sent (or with no time: quoted at its receipt), so every reconnect or planned rotation
        would make a book that stopped changing look fresh for one more age limit. The adapter
        has applied the frame to its own state (its book, its ordering bar) before the quote gets
        here; only the emission is decided. A dropped quote leaves no trace: its count is taken
        back by `_read` once the frame is done (an adapter compares the count around `_quote` to
        move its bar), and the symbol's newest quote, the source's newest quote time and the
        latency it was counted in are restored here."""
        key = (quote.pair, quote.kind)
        waiting = self._waiting
        if key in waiting:
            waiting.discard(key)
            held = self._kept.get(key)
            if (
                held is not None
                and held[0].bid == quote.bid
                and held[0].ask == quote.ask
                and held[0].flag == quote.flag
            ):
                self._drop_repeat(key, quote, held)
                if not waiting:
                    self._first_quotes_done()
                return
            if not waiting:
                self._first_quotes_done()
        self._kept_ms = quote.recv_ts
        self._sink(quote)

    def _drop_repeat(self, key: tuple[str, Kind], quote: Quote, held: Heard) -> None:
        """Undo what `_quote` did for a first quote `_emit_first` drops (but its count)."""
        stats, heard = self.stats, self._heard
        self._repeats += 1
        stats.dropped["unchanged"] += 1
        stats.last_quote_ms = self._kept_ms
        for symbol in self._symbols_of.get(key, ()):
            if (now := heard.get(symbol)) is not None and now[0] is quote:
                heard[symbol] = held  # its silence counts from the quote that showed the book
        if quote.venue_ts is not None:  # as `_quote` counted it (SourceStats.observe_latency)
            latency = quote.recv_ts - quote.venue_ts
            if latency < 0:
                stats.latency_ahead -= 1
                latency = 0
            # Past the top bound: the +Inf bucket (the table's last entry), as `_quote` counted.
            stats.latency_buckets[_LATENCY_BUCKET_OF_MS[min(latency, _LATENCY_OVER + 1)]] -= 1
            stats.latency_sum_ms -= latency

    def _counter_refused(
        self,
        symbol: str,
        bar: int,
        bar_ts: int | None,
        seq: int,
        venue_ts: int | None,
        reason: str,
    ) -> bool:
        """A frame whose venue counter `seq` is not above the symbol's `bar` (set by a frame of
        venue time `bar_ts`): True if it is dropped (counted as `reason`), False if the bar is
        judged bad instead, and the adapter forgets it and uses the frame.

        The bar is bad when a frame newer by venue time has a counter below half of it (the
        venue restarted its count, or the bar came from a garbage number), or when
        `COUNTER_RESET_AFTER` such newer frames in a row were refused by it. Replays and
        duplicates are never newer than the bar, so they are only dropped.
        """
        newer = venue_ts is not None and bar_ts is not None and venue_ts > bar_ts
        if newer:
            held = self._counter_refusals.get(symbol)
            count = held[1] + 1 if held is not None and held[0] == bar else 1
            if seq < bar // 2 or count >= COUNTER_RESET_AFTER:
                self._counter_refusals.pop(symbol, None)
                self.stats.sequence_resets += 1
                self._log.warning(
                    "sequence reset", symbol=symbol, bar=bar, seq=seq, refused_in_a_row=count - 1
                )
                return False
            self._counter_refusals[symbol] = (bar, count)
        self.stats.dropped[reason] += 1
        return True

    def _reject_prices(self, bid: float, ask: float) -> None:
        """Name what was wrong with a pair of prices that failed the one-line check."""
        if not (math.isfinite(bid) and math.isfinite(ask)):
            self._bad("not_finite")
        elif bid <= 0.0 or ask <= 0.0:
            self._bad("non_positive")
        else:
            self._bad("crossed")

    def _bad_number(self, *texts: str | float) -> None:
        """Count a frame whose price is no venue decimal (`read_decimal`) as `bad_number`, and
        log the refused text: the first time, then at most once a minute with the number held
        back, so that a venue printing its numbers wrongly is seen without flooding the log."""
        self._bad("bad_number")
        count = self._venue_errors.due("bad_number", self._clock.monotonic())
        if count is None:
            return
        refused = next((t for t in texts if not _readable(t)), texts[0] if texts else "")
        self._log.warning("number refused", text=repr(refused)[:40], suppressed=count - 1)

    def _decoded(self, decoder: msgspec.json.Decoder[_T], data: str | bytes) -> _T | None:
        """`data` decoded, or None with the frame counted as bad: `shape` for JSON of another
        shape, `decode` for no JSON at all. For the rare frames; hot paths catch their own."""
        try:
            return decoder.decode(data)
        except msgspec.ValidationError:
            self._bad("shape")
        except msgspec.DecodeError:
            self._bad("decode")
        return None

    def _bad(self, reason: str) -> None:
        """Count a frame that could not be used (decode error, wrong shape, bad price)."""
        self.stats.malformed += 1
        self.stats.dropped[reason] += 1

    def _ack(self, request_id: int | str | None) -> None:
        """The venue accepted a request: its symbols are live again."""
        symbols = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if symbols is None:
            self.stats.dropped["unsolicited"] += 1
            return
        self._note_answer(request_id)
        for symbol in symbols:
            if self.stats.failed_instruments.pop(symbol, None) is not None:
                self._log.info("instrument recovered", symbol=symbol)

    def _reject(self, request_id: int | str | None, message: str) -> None:
        """The venue refused a request: split a batch, or mark the one symbol failed."""
        message = message[:VENUE_TEXT_KEPT]
        symbols = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if symbols is None:
            self.stats.dropped["venue_error"] += 1
            self._venue_error(request_id, message)
            return
        self._note_answer(request_id)
        if len(symbols) > 1:
            for symbol in symbols:
                self._outbox.put_nowait((next(self._ids), (symbol,)))
            return
        symbol = symbols[0]
        if self.stats.failed_instruments.get(symbol) != message:
            self._log.warning("instrument failed", symbol=symbol, message=message)
        self.stats.failed_instruments[symbol] = message

    def _venue_error(
        self, request_id: int | str | None, message: str, event: str = "venue error"
    ) -> None:
        """Log an error that names none of our requests (or a venue's REST error): the first of
        each `event` at once, then at most one line a minute saying how many were held back, so
        that a venue repeating one with every frame or poll cannot flood the log (each is counted
        all the same, by the caller)."""
        count = self._venue_errors.due(event, self._clock.monotonic())
        if count is None:
            return
        suppressed = count - 1  # held back since the last line: this one is logged
        said = message[:VENUE_TEXT_KEPT]
        self._log.warning(event, request_id=request_id, message=said, suppressed=suppressed)

    def _note_answer(self, request_id: int | str | None) -> None:
        sent = self._requested_at.pop(request_id, None) if isinstance(request_id, int) else None
        if sent is not None and sent > self._answered_upto:
            self._answered_upto = sent

    def _lost_request(self, now: float) -> bool:
        """A subscribe request the venue never answered while it answered a later one, for a
        whole liveness period: it was dropped (a venue that stalls swallows what it is sent), and
        its symbols would stay silent on a connection that otherwise looks alive. Venues that
        never answer requests are not affected."""
        upto, limit, pending = self._answered_upto, now - self.cfg.liveness_timeout_s, self._pending
        return any(
            t < upto and t <= limit for rid, t in self._requested_at.items() if rid in pending
        )

    def _rotate(self, why: str) -> None:
        """Replace the connection now without declaring the stream down (e.g. shutdown notice)."""
        if self._deadline is not None and self._cut is None:
            self._cut = why
            self._deadline.reschedule(asyncio.get_running_loop().time())

    # ----------------------------------------------------------------- run loop

    async def run(self) -> None:
        """Stream until cancelled; the REST poller runs beside the stream in the same task group."""
        try:
            async with asyncio.TaskGroup() as tg:
                if self.rest_url is not None:
                    tg.create_task(self._poll_loop(), name=f"source:{self.source_id}:rest")
                tg.create_task(self._silent_loop(), name=f"source:{self.source_id}:silent")
                await self._stream_loop()
        finally:
            self.stats.silent_instruments = {}
            self._set_state(ConnState.STOPPED)

    async def _stream_loop(self) -> None:
        attempt = 0
        first = True
        while True:
            if not first:
                self.stats.reconnects += 1
            first = False
            opened = self._clock.monotonic()
            try:
                why = await self._session()
            except _NET_ERRORS as exc:
                why = f"{type(exc).__name__}: {exc}".rstrip(": ")
            lived = self._clock.monotonic() - opened >= self.healthy_after_s
            if self._streaming and lived:
                attempt = 0
            if why not in self.planned_cuts:
                self._stream_down(why)
            elif lived:
                continue  # planned rotation: straight back, the stream was never down
            # A planned cut of a connection younger than `healthy_after_s` (a venue announcing
            # its shutdown, or a sequence reset, on each new connection) waits its backoff like
            # a failure, without going down: straight back, it was a hot reconnect loop.
            delay = backoff_delay(attempt, self.backoff_base_s, self.cfg.reconnect_max_s, self._rng)
            # The cut's reason here too: `source state` says only the first while down.
            self._log.info("reconnect backoff", attempt=attempt, delay_s=delay, reason=why)
            await asyncio.sleep(delay)
            attempt += 1

    async def _session(self) -> str:
        """One connection from handshake to death; returns why it ended."""
        self._pending.clear()
        self._counter_refusals.clear()  # adapters compare counters within one connection
        self._requested_at.clear()
        self._answered_upto = -_INF
        self._outbox = asyncio.Queue()
        self._sent.clear()
        self._cut = None
        timeout = aiohttp.ClientWSTimeout(
            ws_receive=None, ws_close=min(1.0, self.cfg.liveness_timeout_s)
        )
        async with asyncio.timeout(self.cfg.liveness_timeout_s):
            url = await self.connect_url()
            ws = await self._http.ws_connect(url, autoping=False, heartbeat=None, timeout=timeout)
        async with ws:
            # A stream from wherever a venue (or a proxy in the way) points is refused, as a
            # REST answer is.
            if (moved := redirected_to(ws)) is not None:
                return f"redirected to {moved}"
            self._queue_subscriptions()
            writer = asyncio.create_task(self._write(ws), name=f"source:{self.source_id}:write")
            if self.snapshot_on_subscribe:
                self._first_quotes()
            try:
                return await self._watched(lambda: self._read(ws))
            finally:
                self._first_quotes_done()
                writer.cancel()
                await asyncio.wait((writer,))
                if not writer.cancelled() and (bug := writer.exception()) is not None:
                    raise bug

    def _queue_subscriptions(self) -> None:
        """Healthy symbols in batches; failed ones alone, so that they cannot spoil a batch."""
        failed = self.stats.failed_instruments
        good = [s for s in self.symbols if s not in failed]
        size = self.max_symbols_per_request
        for i in range(0, len(good), size):
            self._outbox.put_nowait((next(self._ids), tuple(good[i : i + size])))
        for symbol in self.symbols:
            if symbol in failed:
                self._outbox.put_nowait((next(self._ids), (symbol,)))

    async def _write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Send queued subscribe requests and app pings, paced under the venue's message limit."""
        interval = self.app_ping_interval_s
        next_ping = self._clock.monotonic() + interval if interval else _INF
        while True:
            wait = next_ping - self._clock.monotonic()
            try:
                async with asyncio.timeout(max(wait, 0.0) if wait < _INF else None):
                    request_id, symbols = await self._outbox.get()
            except TimeoutError:
                assert interval is not None
                next_ping = self._clock.monotonic() + interval
                if not await self._send(ws, self.app_ping()):
                    return
                continue
            self._pending[request_id] = symbols
            self._requested_at[request_id] = self._clock.monotonic()
            if not await self._send(ws, self.subscribe_message(request_id, symbols)):
                return

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, text: str) -> bool:
        """Send one paced text frame; False if the socket is gone (the reader reports why)."""
        await self._pace()
        try:
            await ws.send_str(text)
        except _NET_ERRORS:
            return False
        self._sent.append(self._clock.monotonic())
        return True

    async def _pace(self) -> None:
        """Wait until a request fits in the venue's window, leaving one slot for a pong."""
        sent, budget = self._sent, self.max_messages_per_s - 1
        while True:
            now = self._clock.monotonic()
            while sent and sent[0] <= now - _WINDOW_S:
                sent.popleft()
            if len(sent) < budget:
                return
            await asyncio.sleep(sent[0] + _WINDOW_S - now)

    async def _watched(self, read: Callable[[], Awaitable[str]]) -> str:
        """Run one connection's read loop under the liveness watchdog (`_check`): the loop's
        own reason for ending, or the one the watchdog cut it for ("silent" unless named)."""
        loop = asyncio.get_running_loop()
        self._opened_at = self._last_rx = opened_at = self._clock.monotonic()
        self._opened_ms = opened_ms = self._clock.now_ms()
        failed, subscribed = self.stats.failed_instruments, self._subscribed
        for symbol in self.symbols:
            if symbol not in failed:
                subscribed.setdefault(symbol, (opened_at, opened_ms))
        try:
            async with asyncio.timeout(None) as deadline:
                self._deadline = deadline
                first = min(self.cfg.liveness_timeout_s, self.cfg.max_connection_age_s)
                self._watch = loop.call_later(first, self._check)
                return await read()
        except TimeoutError:
            return self._cut or "silent"
        finally:
            self._deadline = None
            if self._watch is not None:
                self._watch.cancel()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        clock, stats = self._clock, self.stats
        text, binary = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY
        ping, pong = aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG
        while True:
            msg = await ws.receive()
            self._last_rx = self._rx_at = clock.monotonic()
            kind = msg.type
            if kind is text or kind is binary:
                stats.frames += 1
                if not stats.frames & 31:
                    # receive() returns at once while frames are buffered: without this, a burst
                    # is read to the end before a round or a subscriber write gets the loop.
                    # Before the receive time is taken, so quotes leave in receive-time order.
                    await asyncio.sleep(0)
                recv_ts = clock.now_ms()
                stats.last_frame_ms = recv_ts
                if self._direct:
                    try:
                        self.on_message(msg.data, recv_ts)
                    except UNDECODABLE:  # nested past the decoder's depth, or not UTF-8
                        self._bad("decode")
                    continue
                # Not streaming, or the connection's first quotes (`_emit_first`). A book the
                # venue resends unchanged (a snapshot after a reconnect) is dropped, not quoted,
                # but shows the stream streaming all the same.
                self._kept_ms = stats.last_quote_ms  # a poll may have moved it meanwhile
                before = stats.quotes + stats.dropped["unchanged"]
                try:
                    self.on_message(msg.data, recv_ts)
                except UNDECODABLE:
                    self._bad("decode")
                stats.quotes -= self._repeats  # counted by `_quote`, never handed on
                self._repeats = 0
                if not self._streaming and stats.quotes + stats.dropped["unchanged"] != before:
                    self._stream_up()
            elif kind is ping:
                await ws.pong(msg.data)  # the venue wants its own payload back
                self._sent.append(self._last_rx)
            elif kind is pong:
                continue
            else:
                code = ws.close_code
                if kind is aiohttp.WSMsgType.ERROR:
                    # aiohttp refused what the venue sent (1009 too big, 1002 or 1007 broken
                    # framing) and closed the connection itself: the venue did not close it.
                    return f"closed by oracled ({code})"
                return f"closed by venue ({code})" if code is not None else f"closed ({kind.name})"

    def _check(self) -> None:
        """Watchdog tick: cut a silent or too-old connection, else look again when it could be."""
        deadline = self._deadline
        if deadline is None:
            return
        now = self._clock.monotonic()
        idle = now - self._last_rx
        age = now - self._opened_at
        liveness, max_age = self.cfg.liveness_timeout_s, self.cfg.max_connection_age_s
        if idle >= liveness:
            self._cut = "silent"
        elif self._lost_request(now):
            self._cut = "unanswered"  # a fresh connection subscribes to everything again
        elif age >= max_age:
            self._cut = "max_age"
        else:
            delay = max(min(liveness - idle, max_age - age), 0.005)
            self._watch = asyncio.get_running_loop().call_later(delay, self._check)
            return
        deadline.reschedule(asyncio.get_running_loop().time())

    # ----------------------------------------------------------------- silent instruments

    async def _silent_loop(self) -> None:
        """Scan for silent symbols every half of the shortest limit (within `_SILENT_SCAN_S`)."""
        low, high = _SILENT_SCAN_S
        while True:
            shortest = min(self.silent_after_ms().values(), default=DEFAULT_SILENT_AFTER_MS)
            await asyncio.sleep(min(max(shortest / 2000.0, low), high))
            self._check_silent()

    def _check_silent(self) -> None:
        """List the subscribed symbols (refused ones aside) without a quote for longer than their
        limit, counted from their last quote, or from the opening of the first connection that
        subscribed them if none came since; only while streaming, but counted across reconnects (a
        source that reconnects more often than the limit must not hide a delisted symbol), the
        latest outage aside (after a long one, every symbol would be silent until its first quote
        on the new connection, which for many symbols subscribed in paced batches can take
        seconds). A symbol is said silent once, and said quoting again once a quote of it came, on
        this connection or a later one (a venue that lost its book may reconnect before it sends
        the symbol again). While the source polls instead, only the symbols that the latest
        answer asking for them left out are judged, by the same count (from their first poll if
        none quoted yet): an answer of every symbol just leaves out one the venue does not list,
        and a slow round of one-symbol polls is no silence. What is judged is each configured
        instrument, under the symbol it was configured with, by its newest quote under any of its
        names: a Coinbase -USDC pair quotes under its own name or its -USD twin's, and the name
        it does not quote under is no silent instrument."""
        left_out: set[str] | None = None  # streaming: every symbol is judged
        if not self._streaming:
            if self.stats.state is not ConnState.POLLING:
                return  # emptied when the source went down; `_said` waits for it
            left_out = self._left_out
        stats, heard, said = self.stats, self._heard, self._said_silent
        limits, failed = self.silent_after_ms(), stats.failed_instruments
        subscribed, opened = self._subscribed, (self._opened_at, self._opened_ms)
        (down, up), default = self._outage, DEFAULT_SILENT_AFTER_MS
        by_symbol, names, now = self._by_symbol, self._names_of(), self._clock.monotonic()
        found: dict[str, int] = {}  # symbol -> the wall time its silence counts from (reported)
        silent: dict[str, float] = {}  # and the monotonic one (judged)
        for symbol in self.symbols:
            if symbol in failed:
                said.pop(symbol, None)  # refused: "instrument failed" says the rest
                subscribed.pop(symbol, None)  # if taken again, it counts from then
                continue
            if left_out is not None and symbol not in left_out:
                continue
            # Absent: refused when this connection opened, taken since; it counts from then.
            start = subscribed.get(symbol, opened)
            key = by_symbol[symbol]
            last = _newest(heard, names[key])
            at, wall = start if last is None else max(last, start)
            if now - at - max(up - max(at, down), 0.0) > limits.get(key, default) / 1000.0:
                found[symbol], silent[symbol] = wall, at
        stats.silent_instruments = found  # one store: a scrape reads the old list or the new
        entered = [s for s in found if s not in said]
        back = sorted(
            s
            for s, since in said.items()
            if s not in found
            and (last := _newest(heard, names[by_symbol[s]])) is not None
            and last[0] > since
        )
        for symbol in back:
            del said[symbol]
        said.update(silent)
        if entered and (count := self._silent_log.due("silent", now)) is not None:
            self._log.warning(
                "instruments silent",
                symbols=sorted(found)[:_SILENT_NAMED],
                silent=len(found),
                new=len(entered),
                suppressed=count - 1,
            )
        if back and (count := self._silent_log.due("quoting", now)) is not None:
            self._log.info(
                "instruments quoting again",
                symbols=back[:_SILENT_NAMED],
                silent=len(found),
                suppressed=count - 1,
            )

    # ----------------------------------------------------------------- REST fallback

    async def _poll_loop(self) -> None:
        """While the stream is down, poll all symbols in one request.

        A batch refused with HTTP 400 (one bad symbol spoils the whole request on some venues) is
        asked again in halves, in the same round, and a refused half is halved again
        (`_halves`), each request through the venue's REST pacer (`_fetch`) as every poll's: a
        symbol refused alone is marked failed and left out of later rounds, and the halves that
        answer are priced as they come. One bad symbol among N costs about 2 log2(N) requests,
        not N: at Kraken's one request a second, a round of 100 pairs took 100 s one pair a
        request, the last pairs ageing past their markets' limits.
        Rate-limit answers (429, 418) are never split, so that they cannot multiply requests; they
        end the round, and the next waits as long as they ask (`rate_limit_wait_s`: the venues'
        rule). A limit on our IP that another source of the host learns during the round ends it
        too, before its next request (`_fetch`), as does the stream coming back.
        The source is polling only while answers bring prices (new ones, or ones we already
        had): a 200 without any (a proxy's page, an error body, no rows of ours) leaves it down,
        once such answers have asked for every symbol since the last one that priced (OKX polls
        one instrument type a round: a type the venue lists none of must not put the source
        down every other round). Each answer says which of the symbols it should quote it left
        out (`rest_scope`, `_note_left_out`).
        """
        interval = self.cfg.rest_poll_interval_s
        while True:
            await self._down.wait()
            if await self._host_resting(interval):
                continue
            symbols = [s for s in self.symbols if s not in self.stats.failed_instruments]
            size = self.rest_batch_size
            batches = deque(symbols[i : i + size] for i in range(0, len(symbols), size))
            stopped = False
            answered, priced, pause = False, False, interval
            while batches:
                batch = batches.popleft()
                request = self.rest_request(batch)
                if request is None:
                    break
                try:
                    status, body, error = await self._fetch(*request)
                except _NotSent:  # the next round waits for the outage, or out the rest
                    stopped = True
                    break
                if not self._down.is_set():  # the stream came back during the request
                    break
                if error is None:
                    recv_ts = self._clock.now_ms()
                    self._rx_at = self._clock.monotonic()
                    self.stats.frames += 1
                    self.stats.last_frame_ms = recv_ts
                    progress = self._rest_progress()
                    quoted = self._read_rest(body, recv_ts)
                    answered = True
                    scope = self.rest_scope(batch, request[1])
                    self._note_left_out(scope, quoted, recv_ts)
                    if self._rest_progress() != progress:  # a 200 alone could be a proxy's page
                        priced = True
                        self._unpriced.clear()
                        self._set_state(ConnState.POLLING)
                    else:
                        self._unpriced.update(scope)
                    continue
                self.stats.dropped["rest_error"] += 1
                if status == 400 and len(batch) > 1:
                    batches.extend(_halves(batch) if self.rest_batch_named else _singles(batch))
                elif status == 400:
                    self._log.warning("instrument failed", symbol=batch[0], message=error)
                    self.stats.failed_instruments[batch[0]] = error
                else:
                    # Said here, not only by the state change: a source whose stream is down
                    # already is down already, and its failing fallback would say nothing.
                    said = error if error.startswith("HTTP ") else f"HTTP {status}, {error}"
                    self._venue_error(None, said if status else error, "rest error")
                    self._set_state(ConnState.DOWN, error=error)
                    if status in _RATE_LIMITED:  # the rest of the round would only add to it
                        pause = max(interval, self._retry_after_s)
                        if self._limit_ip_wide and self._rest_host is not None:
                            until = self._clock.monotonic() + pause
                            self.host_rests.rest(self._rest_host, until, self.source_id, error)
                        break
            if stopped:
                continue
            if pause > interval:
                # The answer's own words too: a venue may say a limit under another status.
                self._log.warning("rest rate limited", status=status, delay_s=pause, error=error)
            unpriced = answered and not priced and self._unpriced.issuperset(symbols)
            if unpriced and self._down.is_set():
                self._set_state(ConnState.DOWN, error="REST answers without a usable price")
            await asyncio.sleep(pause)

    async def _host_resting(self, interval: float) -> bool:
        """Whether the REST host rests for a limit on our IP that a source learnt (this one or
        another polling the same host, `HostRests`): if so, no request is sent, and this sleeps
        towards the rest's end, at most a poll interval at a time, reading the clock again each
        time (the rest may be moved on meanwhile). A rest another source learnt sets this one
        down and is logged once, with who learnt it and from what answer."""
        until, by, why = self.host_rests.until(self._rest_host)
        left = until - self._clock.monotonic()
        if left <= 0.0:
            return False
        if until != self._rest_waited and by != self.source_id:
            self._set_state(ConnState.DOWN, error=f"REST host rested by {by}: {why}")
            self._log.warning("rest host rested", by=by, delay_s=round(left, 3), error=why)
        self._rest_waited = until
        await asyncio.sleep(min(left, interval))
        return True

    def _read_rest(self, body: bytes, recv_ts: int) -> Collection[str]:
        """Decode one REST answer with `_emit_polled` as the emitter; the symbols it had a usable
        price of (handed on or not). A poll it drops leaves no trace of a quote: `_quote` counts it
        and stores it as its symbol's newest before the emitter sees it, so the count is taken back
        there, and the symbols' newest quotes and the source's newest quote time are set here from
        what was handed on."""
        stats, heard = self.stats, self._heard
        quotes, newest = stats.quotes, stats.last_quote_ms
        answer: dict[str, Heard] = {}
        emit = self._emit  # `_emit_first` while a new connection has not quoted everything
        self._heard, self._emit = answer, self._emit_polled
        try:
            self.on_rest(body, recv_ts)
        except UNDECODABLE:  # nested past the decoder's depth, or not UTF-8
            self._bad("decode")
        finally:
            self._heard, self._emit = heard, emit
        polled = self._polled
        for symbol, (quote, _) in answer.items():
            # The instrument's quote handed on from this answer (a row may repeat an earlier one).
            handed = polled.get((quote.pair, quote.kind))
            if handed is not None and handed[0].recv_ts == recv_ts:
                heard[symbol] = handed
        if stats.quotes == quotes:
            stats.last_quote_ms = newest
        return answer.keys()

    def _note_left_out(self, scope: Sequence[str], quoted: Collection[str], recv_ts: int) -> None:
        """After an answer: which of the symbols it should have quoted it left out (the silent
        scan's candidates, judged only while other answers price: a source whose every answer
        is a proxy's page is down, not silent). A symbol never quoted counts its silence from the
        first answer that asked for it, as from the first connection that subscribed it."""
        left_out, subscribed, at = self._left_out, self._subscribed, self._rx_at
        for symbol in scope:
            subscribed.setdefault(symbol, (at, recv_ts))
            if symbol in quoted:
                left_out.discard(symbol)
            else:
                left_out.add(symbol)

    def _rest_progress(self) -> tuple[int, int]:
        """Quotes, and prices we already had (an unchanged quiet market): moved by a usable
        answer, never by an error page, an error body or an answer without our symbols."""
        dropped = self.stats.dropped
        known = dropped["stale"] + dropped["out_of_order"] + dropped["stale_sequence"]
        known += dropped["unchanged"] + dropped["duplicate"]
        return self.stats.quotes, known

    async def _fetch(
        self, url: str, query: Mapping[str, str]
    ) -> tuple[int | None, bytes, str | None]:
        """One GET, paced under the venue's REST limit: (status, body, error or None). A redirect
        is not followed (aiohttp's default is to): it is a failed request naming where it points,
        never prices from a host the config does not name."""
        self._limit_ip_wide = False  # a venue's `_fetch` says when an answer is one
        if self._pacer is not None:
            await self._pacer.take()
        # A round checks the outage and the host's rest when it starts; a stream back since, or
        # a rest learnt since (another source's 429 while this one waited for its turn), stops
        # the round's later requests here.
        if self._streaming or self.host_rests.until(self._rest_host)[0] > self._clock.monotonic():
            raise _NotSent
        try:
            async with asyncio.timeout(max(self.cfg.rest_poll_interval_s, 1.0)):
                async with self._http.get(url, params=query, allow_redirects=False) as resp:
                    body = await read_capped(resp)
        except _NET_ERRORS as exc:
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            if isinstance(exc, BodyTooLarge):
                self._log.warning("rest answer too large", url=url, error=error)
            return None, b"", error
        self._rest_headers = resp.headers
        if resp.status != 200:
            limited = resp.status in _RATE_LIMITED
            self._retry_after_s = self.rate_limit_wait_s(resp.headers) if limited else 0.0
            moved = resp.headers.get("Location") if 300 <= resp.status < 400 else None
            said = f"redirect to {moved[:200]}" if moved else body[:200].decode(errors="replace")
            return resp.status, body, f"HTTP {resp.status}: {said}"
        return resp.status, body, None

    # ----------------------------------------------------------------- state

    def _stream_up(self) -> None:
        self._streaming = True
        self._direct = self._emit is self._sink
        self._polled = {}  # the next outage starts from the stream's last quotes
        self._outage = (self._outage[0], self._clock.monotonic())
        self._left_out.clear()  # the polls' verdicts; the stream's scan judges every symbol
        self._unpriced.clear()
        self._down.clear()
        self._set_state(ConnState.STREAMING)

    def _stream_down(self, why: str) -> None:
        if self._streaming:  # the outage begins; a failed attempt after it does not move it
            self._outage = (self._clock.monotonic(), self._outage[1])
            # What the first polls compare with: each instrument's newest quote (the newest of
            # two symbols quoting one instrument, as a Coinbase -USDC product and its -USD twin).
            last = sorted(self._heard.values(), key=_heard_at)
            self._polled = {(h[0].pair, h[0].kind): h for h in last}
        self._streaming = self._direct = False
        if not self._down.is_set():
            self._down.set()
            self._set_state(ConnState.DOWN, reason=why)

    def _set_state(self, state: ConnState, **why: str) -> None:
        if self.stats.state is state:
            return
        self.stats.state = state
        if state is not ConnState.STREAMING and state is not ConnState.POLLING:
            # Only a streaming or polling source has silent symbols (a failed connection attempt
            # while polling keeps the polls' list).
            self.stats.silent_instruments = {}
        if state is ConnState.DOWN:
            self._log.warning("source state", state=state.value, **why)
        else:
            self._log.info("source state", state=state.value, **why)
