"""Binance USDⓈ-M perpetuals: best bid/ask from ``@bookTicker``, on one connection.

Docs: https://developers.binance.com/docs/derivatives/usds-margined-futures/websocket-market-streams,
its "Important WebSocket Change Notice" (base URL split) and
https://developers.binance.com/docs/derivatives/usds-margined-futures/market-data/rest-api

Wire sample (the docs' bookTicker example; unlike spot it carries an event time ``E``, a
transaction time ``T`` and an update id ``u``)::

    {"e":"bookTicker","u":400900217,"E":1568014460893,"T":1568014460891,"s":"BNBUSDT",
     "b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}

The subscribe protocol is spot's (`BinanceSource`, reused here): ``SUBSCRIBE`` with
``{"result":null,"id":N}`` acks and ``{"error":{..},"id":N}`` or flat ``{"code":..,"msg":..}``
errors. What differs, from the docs:

- Binance split the futures WebSocket by traffic class (the legacy root URLs are retired on
  2026-04-23): book tickers live on ``/public``, so quotes stream from ``<ws_url>/public/stream``.
  The venue's own mark prices (``<sym>@markPrice@1s`` on ``/market``) are not read: the mark
  engine computes its mark from the perpetual books (docs/mark.md), and a second connection would
  cost one to the venue and a failure mode for nothing. Using venue marks would be a change of
  the documented mark formula.
- ``venue_ts`` is ``E`` (event time); frames whose update id ``u`` is not newer than the last one
  seen for the symbol on this connection are dropped as ``stale`` (replays, duplicates), unless
  the base judges that last id bad (`Source._counter_refused`: an id below half of it, or five
  frames in a row refused while their ``E`` is past its frame's): then it is forgotten, so that
  one far-ahead id cannot freeze a symbol until the next reconnect.
- The server pings every 3 minutes and drops a client without a pong for 10 minutes (the base
  answers pings); a client may send 10 messages a second; a connection lives at most 24 h (the
  config rotates at 23 h by default); 1024 streams per connection.
- Three minutes between pings is far past the liveness timeout (30 s by default), and a quiet
  book (or a venue whose engine pauses with its sockets open) sends nothing else, so the client
  asks the documented ``{"method":"GET_PROPERTY","params":["combined"],"id":0}`` every 10 s
  (``app_ping_interval_s``; keep ``liveness_timeout_s`` above it) and the answer,
  ``{"result":true,"id":0}``, is the sign of life. Subscribe ids count from 1, so id 0 is the
  keep-alive's alone. Before, such a connection was cut as silent every liveness timeout. An
  error answer to it is life too, but worth a look: counted ``venue_error`` and logged
  (``keep-alive refused``) once a connection, not at every keep-alive.
- REST ``GET /fapi/v1/ticker/bookTicker`` has no multi-symbol parameter: one symbol costs weight 2,
  all symbols weight 5. One symbol asks for it alone; more ask for all in one request and keep
  the configured rows (5 weight per poll, far under the 2400 a minute an IP may spend).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Final

import aiohttp
import msgspec

from oracled.clock import Clock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sources._base import VENUE_TEXT_KEPT, read_decimal
from oracled.sources.binance import BinanceSource
from oracled.sources.stats import SourceStats

__all__ = ["BinanceUsdmSource"]


class _Book(msgspec.Struct, gc=False):
    """A futures bookTicker. Prices are read straight into floats (strict=False), several times
    cheaper than float() on decoded text; as on spot (`BinanceSource`), a bare JSON number is a
    price too. ``u`` and ``E`` are optional so that every book-shaped frame is judged here, never
    by the spot control path; the fields we do not use (``e``, ``T``, sizes) are skipped."""

    s: str
    b: float
    a: float
    u: int | None = None
    E: int | None = None


class _Combined(msgspec.Struct, gc=False):
    """The combined-stream envelope; ``stream`` repeats ``data.s`` and is skipped."""

    data: _Book


class _TextBook(msgspec.Struct):
    """A book the float decoder refused, read as text or numbers: only to name what was wrong."""

    s: str
    b: str | float
    a: str | float
    u: int | None = None
    E: int | None = None


class _TextCombined(msgspec.Struct):
    data: _TextBook


class _RestBook(msgspec.Struct):
    symbol: str
    bid: str = msgspec.field(name="bidPrice")
    ask: str = msgspec.field(name="askPrice")
    time: int | None = None
    update_id: int = msgspec.field(name="lastUpdateId", default=0)


_FRAME = msgspec.json.Decoder(_Combined, strict=False)
_TEXT_FRAME = msgspec.json.Decoder(_TextCombined)
_REST = msgspec.json.Decoder(list[_RestBook] | _RestBook)
_NEVER: Final = -math.inf  # the update id "seen" for a symbol with none yet: every id is newer
#: The keep-alive request's id: subscribe ids count from 1, so an answer with it is ours alone.
_PING_ID: Final = 0
_PING: Final = msgspec.json.encode(
    {"method": "GET_PROPERTY", "params": ["combined"], "id": _PING_ID}
).decode()


class BinanceUsdmSource(BinanceSource):
    default_ws_url: ClassVar[str] = "wss://fstream.binance.com"
    default_rest_url: ClassVar[str | None] = "https://fapi.binance.com"
    kinds: ClassVar[frozenset[Kind]] = frozenset({"perp"})
    max_messages_per_s: ClassVar[int] = 10
    rest_batch_named: ClassVar[bool] = False  # bookTicker without symbol: every contract
    #: No snapshot: the futures bookTicker, like spot's, pushes each update of the best bid or
    #: ask's price or quantity, and nothing on subscribing.
    snapshot_on_subscribe: ClassVar[bool] = False
    #: The venue's pings come every 3 minutes: a request answered at once keeps a quiet
    #: connection alive for the watchdog (module docstring).
    app_ping_interval_s: ClassVar[float | None] = 10.0

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
        self._last_u: dict[str, int] = {}
        self._last_e: dict[str, int | None] = {}  # the event time of the frame that set each id
        self._ping_refused = False  # this connection has had its keep-alive refused (said once)

    def stream_url(self) -> str:
        return f"{self.ws_url}/public/stream"

    async def connect_url(self) -> str:
        # Update ids are compared within one connection only, so that a venue-side reset of the
        # sequence can never freeze a symbol.
        self._last_u.clear()
        self._last_e.clear()
        self._ping_refused = False
        return self.stream_url()

    def app_ping(self) -> str:
        return _PING

    def _ack(self, request_id: int | str | None) -> None:
        """The keep-alive's answer is life, nothing more: no request of ours to settle."""
        if request_id == _PING_ID:
            return
        super()._ack(request_id)

    def _reject(self, request_id: int | str | None, message: str) -> None:
        """An error answer to the keep-alive is still life, and the venue would repeat it every
        10 s: counted `venue_error` and logged once a connection, not at each keep-alive."""
        if request_id != _PING_ID:
            super()._reject(request_id, message)
            return
        if self._ping_refused:
            return
        self._ping_refused = True
        self.stats.dropped["venue_error"] += 1
        self._log.warning("keep-alive refused", message=message[:VENUE_TEXT_KEPT])

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        try:
            book = _FRAME.decode(data).data
        except msgspec.DecodeError:
            self._slow(data, recv_ts)
            return
        u = book.u
        if u is None:
            self._quote(book.s, book.b, book.a, recv_ts, book.E)
            return
        symbol, last_u, stats = book.s, self._last_u, self.stats
        bar = last_u.get(symbol, _NEVER)
        if u <= bar and self._refused(symbol, bar, u, book.E):
            return
        quotes = stats.quotes
        self._quote(symbol, book.b, book.a, recv_ts, book.E)
        if stats.quotes != quotes:  # only an emitted frame advances the sequence
            last_u[symbol] = u
            self._last_e[symbol] = book.E

    def _refused(self, symbol: str, bar: float, u: int, event_ts: int | None) -> bool:
        """A frame whose update id is not above the symbol's: dropped as `stale`, unless the base
        judges the kept id bad (then it is forgotten and the frame used)."""
        return self._counter_refused(
            symbol, int(bar), self._last_e.get(symbol), u, event_ts, "stale"
        )

    def _slow(self, data: str | bytes, recv_ts: int) -> None:
        """Frames the float decoder refused: a price that is not a number, other shapes."""
        try:
            book = _TEXT_FRAME.decode(data).data
        except msgspec.DecodeError:
            self._control(data)
            return
        u = book.u
        bar = self._last_u.get(book.s, _NEVER)
        if u is not None and u <= bar and self._refused(book.s, bar, u, book.E):
            return
        try:
            bid, ask = read_decimal(book.b), read_decimal(book.a)
        except ValueError:
            self._bad_number(book.b, book.a)
            return
        before = self.stats.quotes
        self._quote(book.s, bid, ask, recv_ts, book.E)
        if u is not None and self.stats.quotes != before:  # only good frames advance it
            self._last_u[book.s] = u
            self._last_e[book.s] = book.E

    def rest_request(self, symbols: Sequence[str]) -> tuple[str, Mapping[str, str]] | None:
        query = {"symbol": symbols[0]} if len(symbols) == 1 else {}
        return f"{self.rest_url}/fapi/v1/ticker/bookTicker", query

    def on_rest(self, body: bytes, recv_ts: int) -> None:
        decoded = self._decoded(_REST, body)
        if decoded is None:
            return
        books = decoded if isinstance(decoded, list) else [decoded]
        wanted = self._by_symbol
        for book in books:
            if book.symbol in wanted:  # an all-symbols answer lists hundreds we did not ask for
                self._quote_text(book.symbol, book.bid, book.ask, recv_ts, book.time)
