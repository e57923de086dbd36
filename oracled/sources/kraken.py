"""Kraken spot: best bid/ask from the WebSocket v2 ``ticker`` channel, REST ``Ticker`` as fallback.

Docs: https://docs.kraken.com/api/docs/websocket-v2/ticker (also ``heartbeat``, ``status`` and
``ping`` on the same site) and https://docs.kraken.com/api/docs/rest-api/get-ticker-information

Wire sample (v2 ticker snapshot; numbers are JSON numbers, ``timestamp`` is RFC 3339)::

    {"channel": "ticker", "type": "snapshot", "data": [{"symbol": "BTC/USD", "bid": 105944.20,
     "bid_qty": 2.5, "ask": 105944.30, "ask_qty": 3.2, "last": 105899.40, ...,
     "timestamp": "2022-12-25T09:30:59.123456Z"}]}

Subscribe ``{"method":"subscribe","params":{"channel":"ticker","symbol":["BTC/USD"],
"event_trigger":"bbo"},"req_id":1}`` (``bbo``: an update on every change of the best bid/offer,
not only on trades). The venue acks each symbol of a request on its own, all under the same
``req_id``: ``{"method":"subscribe","result":{"channel":"ticker","symbol":"BTC/USD",...},
"success":true,"req_id":1}``, or ``{"error":"Currency pair not supported XBT/EUR",
"method":"subscribe","success":false,"symbol":"XBT/EUR","req_id":1}`` for a bad symbol, which then
fails that symbol alone.

v2 names assets the common way (``BTC/USD``, ``DOGE/USD``); v1's ``XBT``/``XDG`` are refused, so
`venue_symbol` translates them. Once subscribed the venue sends ``{"channel":"heartbeat"}`` about
once a second whenever nothing else flows, so a quiet market stays alive for the watchdog without
client pings (the optional ``{"method":"ping"}`` is not needed). A ``status`` message arrives on
connect and whenever the engine state changes (``online``, ``maintenance``, ...); changes are
logged. The docs give no maximum connection life; the config's daily rotation applies. Message
rates are limited per connection by a dynamic counter (no fixed number published): this adapter
sends one subscribe request per 50 symbols.

REST ``GET /0/public/Ticker?pair=XBTUSD,ETHUSD`` answers all pairs in one request. The API docs'
rate-limit guide (https://docs.kraken.com/api/docs/guides/spot-rest-ratelimits) counts private
calls per API key and gives no figure for public ones; it points to the support centre's "What are
the API rate limits?" (https://support.kraken.com/articles/206548367-what-are-the-api-rate-limits-),
whose guidance for public endpoints is that calling them once a second or less stays within the
limits (as client libraries quote it, ccxt's among them, which sets 1 s between public calls; the
article's own text was not at hand here). No key is sent, so the count can only be our IP's.
Every request is paced at that rate
(`rest_rate_per_s`, one at once), the sources polling one host taking their turns from one
pacer (`rest_rate_per_ip`): the default poll (every 2 s, one request for every symbol)
never waits. Errors come back as HTTP 200 with an ``error`` list; an unknown pair spoils the
whole request, which is reported to the base as HTTP 400 so that it asks the batch again in
halves, halving a refused half again, and fails only the pair refused alone (one bad pair among
100 costs about 15 requests, not 101); those requests go through the same pacer, one a second,
and the failed pair is left out of later rounds, whose batch is one request again. A rate limit
comes back the same
way, under HTTP 200: ``{"error":["EAPI:Rate limit exceeded"],"result":{}}``
(``EGeneral:Too many requests`` and ``EService:Throttled: <time>`` are read the same). The docs
name no wait for the public endpoints (their "restricted for a few seconds" is said of the
private per-key counter), so it is reported to the base as HTTP 429 and polls rest for
`rest_limit_window_s` (or a ``Retry-After``, if one is ever sent): those of every source polling
the host, the limit, with no key sent, being our IP's (`HostRests`). The response keys are
Kraken's legacy pair names (``XXBTZUSD`` for ``XBTUSD``, ``XBTUSDT`` for ``XBTUSDT``, ``SOLUSD``,
``USDTZUSD`` for ``USDTUSD``, ``ZEURZUSD`` for ``EURUSD``); every form a symbol can come back
under is mapped at construction, so nothing is fetched at start-up. REST carries no event time.

The ticker's ``timestamp`` is its venue time. It is a recent addition to the v2 ticker (the
channel had no time before; the docs list it as RFC 3339 without a sentence on what it is the time
of, and nautechsystems/nautilus_trader issue 3926 reads it as the ticker's event time); with
``event_trigger: bbo`` a ticker is sent on each change of the best bid or offer, so it is the time
of that change. A frame without it is quoted at its receive time. Out-of-order frames (older
``timestamp`` than the last one of the symbol) are dropped here and counted as ``out_of_order``;
the core checks again. The ticker's ``last`` (and REST's ``c``, the
last trade closed) travels as the quote's last price; a ``last`` that is not a number is left out
without spoiling the book.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Final, Literal

import aiohttp
import msgspec

from oracled.clock import Clock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sources._base import UNDECODABLE, Source, read_decimal
from oracled.sources.stats import SourceStats

__all__ = ["KrakenSource"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
# v1 and REST asset codes that v2 spells differently.
_V2_NAMES: Final = {"XBT": "BTC", "XDG": "DOGE"}
_LEGACY_NAMES: Final = {"BTC": "XBT", "DOGE": "XDG"}
# A key settled alone by `_settle`; negative so that it never meets a real request id.
_ONE: Final = -1
# REST errors that mean "too many requests": the polls rest (module doc).
_RATE_LIMITS: Final = (
    "EAPI:Rate limit exceeded",
    "EGeneral:Too many requests",
    "EService:Throttled",
)


class _Ticker(msgspec.Struct, gc=False):
    symbol: str
    bid: float
    ask: float
    last: float | str | None = None  # text here is not a price: left out, the book still counts
    timestamp: datetime | None = None


class _TickerFrame(msgspec.Struct, gc=False):
    channel: Literal["ticker"]
    data: list[_Ticker]


class _Result(msgspec.Struct):
    symbol: str | None = None


class _Status(msgspec.Struct):
    system: str = ""


class _Control(msgspec.Struct):
    """Acks, errors, pongs, heartbeats and status: rare, so decoded second."""

    channel: str = ""
    method: str = ""
    success: bool | None = None
    error: str | None = None
    symbol: str | None = None
    result: _Result | None = None
    req_id: int | None = None
    data: list[_Status] | None = None


class _RestRow(msgspec.Struct):
    a: list[str]
    b: list[str]
    c: list[str] = []


class _RestBody(msgspec.Struct):
    error: list[str]
    result: dict[str, _RestRow] = msgspec.field(default_factory=dict)


class _RestErrors(msgspec.Struct):
    error: list[str] = msgspec.field(default_factory=list)


_FRAME = msgspec.json.Decoder(_TickerFrame)
_CONTROL = msgspec.json.Decoder(_Control)
_REST = msgspec.json.Decoder(_RestBody)
_REST_ERRORS = msgspec.json.Decoder(_RestErrors)
_ENCODE = msgspec.json.Encoder()


def _ms(ts: datetime) -> int:
    """Exact integer milliseconds of an RFC 3339 time (a time without zone is UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - _EPOCH) // _MS


def _rest_names(symbol: str) -> tuple[str, set[str]]:
    """The REST name to ask for `symbol` and every key the answer may file it under."""
    base, _, quote = symbol.partition("/")
    old_base, old_quote = _LEGACY_NAMES.get(base, base), _LEGACY_NAMES.get(quote, quote)
    asked = f"{old_base}{old_quote}"
    # Legacy keys prefix classic crypto with X and fiat with Z, on either side or on one only:
    # XXBTZUSD, XETHXXBT, ZEURZUSD, and USDTZUSD for USDT/USD. Every combination is accepted.
    keys = {
        f"{left}{old_base}{right}{old_quote}" for left in ("", "X", "Z") for right in ("", "X", "Z")
    }
    keys.update((f"{base}{quote}", symbol))
    return asked, keys


class KrakenSource(Source):
    default_ws_url: ClassVar[str] = "wss://ws.kraken.com"
    default_rest_url: ClassVar[str | None] = "https://api.kraken.com"
    max_symbols_per_request: ClassVar[int] = 50
    max_messages_per_s: ClassVar[int] = 5
    rest_batch_size: ClassVar[int] = 100  # one Ticker request per poll; keeps the URL short
    #: The support centre's guidance for public endpoints, once a second or less (module doc):
    #: one request at once, so that the halves asked after a batch refused for an unknown pair
    #: do not go out as a burst.
    rest_rate_per_s: ClassVar[float | None] = 1.0
    rest_burst: ClassVar[float] = 1.0
    #: That guidance can only count our IP (no key is sent): the sources polling one host
    #: share one pacer.
    rest_rate_per_ip: ClassVar[bool] = True
    #: The v2 ticker answers a subscription with a ``snapshot`` (its ``snapshot`` flag, true by
    #: default and not set here), then updates.
    snapshot_on_subscribe: ClassVar[bool] = True
    #: How long polls rest after a rate-limit error, which names no wait: a figure of ours.
    #: The docs give none for the public endpoints (the per-key counter, its decay and its "a
    #: few seconds" are the private calls'; no key is sent); against the public guidance of
    #: about one call a second, 5 s is five calls' worth of quiet before polls go on, paced.
    rest_limit_window_s: ClassVar[float] = 5.0

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
        super().__init__(source_id, cfg, pairs, emit, clock, session, stats)
        self._rest_name: dict[str, str] = {}
        self._rest_key: dict[str, str] = {}
        for symbol in self.symbols:
            asked, keys = _rest_names(symbol)
            self._rest_name[symbol] = asked
            self._rest_key.update(dict.fromkeys(keys, symbol))
        self._last_ts: dict[str, int] = {}
        self._system = "online"

    def venue_symbol(self, pair: str) -> str:
        base, _, quote = pair.partition("/")
        return f"{_V2_NAMES.get(base, base)}/{_V2_NAMES.get(quote, quote)}"

    def stream_url(self) -> str:
        return f"{self.ws_url}/v2"

    def subscribe_message(self, request_id: int, symbols: Sequence[str]) -> str:
        params = {"channel": "ticker", "symbol": list(symbols), "event_trigger": "bbo"}
        request = {"method": "subscribe", "params": params, "req_id": request_id}
        return _ENCODE.encode(request).decode()

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        try:
            tickers = _FRAME.decode(data).data
        except msgspec.DecodeError:
            self._control(data)
            return
        if not tickers:
            self._bad("shape")
        stats, last_ts = self.stats, self._last_ts
        for t in tickers:
            symbol, stamp, last = t.symbol, t.timestamp, t.last
            if last.__class__ is not float:
                last = None
            if stamp is None:
                self._quote(symbol, t.bid, t.ask, recv_ts, None, last)
                continue
            try:
                d = stamp - _EPOCH
            except TypeError:  # a time without zone: UTC
                venue_ts = _ms(stamp)
            else:  # = d // _MS (floor), from the three fields: a third of the cost
                venue_ts = (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000
            if venue_ts < last_ts.get(symbol, 0):
                stats.dropped["out_of_order"] += 1  # older than a quote already emitted
                continue
            before = stats.quotes
            self._quote(symbol, t.bid, t.ask, recv_ts, venue_ts, last)
            if stats.quotes != before:  # only a good quote moves the bar
                last_ts[symbol] = venue_ts

    def _control(self, data: str | bytes) -> None:
        frame = self._decoded(_CONTROL, data)
        if frame is None:
            return
        if frame.method == "subscribe" and frame.success is not None:
            symbol = frame.result.symbol if frame.result is not None else frame.symbol
            self._settle(frame.req_id, symbol, None if frame.success else frame.error or "refused")
        elif frame.success is False:  # refused request of another kind, or a malformed one
            self._reject(frame.req_id, frame.error or "refused")
        elif frame.channel == "heartbeat" or frame.method == "pong":
            return  # a sign of life; the base has already noted it
        elif frame.channel == "status" and frame.data:
            system = frame.data[0].system
            if system != self._system:
                self._log.info("venue status", system=system, previous=self._system)
                self._system = system
        else:
            self._bad("shape")

    def _settle(self, request_id: int | None, symbol: str | None, error: str | None) -> None:
        """Settle one symbol of a request: Kraken acks or refuses each symbol on its own."""
        if request_id is not None and symbol is not None:
            batch = self._pending.get(request_id, ())
            if symbol in batch:
                rest = tuple(s for s in batch if s != symbol)
                if rest:
                    self._pending[request_id] = rest
                else:
                    del self._pending[request_id]
                self._pending[_ONE] = (symbol,)
                request_id = _ONE
        if error is None:
            self._ack(request_id)
        else:
            self._reject(request_id, error)

    def rest_request(self, symbols: Sequence[str]) -> tuple[str, Mapping[str, str]] | None:
        names = ",".join(self._rest_name[s] for s in symbols)
        return f"{self.rest_url}/0/public/Ticker", {"pair": names}

    async def _fetch(
        self, url: str, query: Mapping[str, str]
    ) -> tuple[int | None, bytes, str | None]:
        """Kraken reports errors inside HTTP 200; turn them into failures the base understands.
        A rate limit is our IP's: every source polling the host rests with this one."""
        status, body, error = await super()._fetch(url, query)
        if error is not None:
            return status, body, error
        try:
            errors = _REST_ERRORS.decode(body).error
        except (msgspec.DecodeError, msgspec.ValidationError, *UNDECODABLE):
            return status, body, None  # on_rest counts the bad body (the base, if it raises)
        if not errors:
            return status, body, None
        message = "; ".join(errors)[:200]
        if any(e.startswith(_RATE_LIMITS) for e in errors):
            self._retry_after_s = self.rate_limit_wait_s({})  # the base reads none from a 200
            self._limit_ip_wide = True  # the public limit can only count our IP (module doc)
            return 429, body, message
        unknown = any(e.startswith("EQuery:Unknown asset pair") for e in errors)
        return (400 if unknown else status), body, message

    def rate_limit_wait_s(self, headers: Mapping[str, str]) -> float:
        """Kraken names no wait for a rate limit: a ``Retry-After`` if sent, else the window."""
        return super().rate_limit_wait_s(headers) or self.rest_limit_window_s

    def on_rest(self, body: bytes, recv_ts: int) -> None:
        reply = self._decoded(_REST, body)
        if reply is None:
            return
        for key, row in reply.result.items():
            symbol = self._rest_key.get(key)
            if symbol is None:
                self.stats.dropped["unknown_symbol"] += 1
            elif not row.a or not row.b:
                self._bad("shape")
            else:
                self._rest_quote(symbol, row, recv_ts)

    def _rest_quote(self, symbol: str, row: _RestRow, recv_ts: int) -> None:
        """Emit from a REST row's decimal strings; an unreadable last trade is left out."""
        try:
            bid, ask = read_decimal(row.b[0]), read_decimal(row.a[0])
        except ValueError:
            self._bad_number(row.b[0], row.a[0])
            return
        try:
            last = read_decimal(row.c[0]) if row.c else None
        except ValueError:
            last = None
        self._quote(symbol, bid, ask, recv_ts, None, last)
