"""Gemini's current WebSocket API: best bid/ask from ``{symbol}@bookTicker``, REST as fallback.

Gemini files its v2 market-data feed (`GeminiSource`, type ``gemini``) under archived APIs,
"replaced by the new WebSocket API"; this adapter (type ``gemini_ws``) reads that new API, so that
a deployment can move before v2 is turned off (docs/sources.md says how, and what is known).

Docs, as read for this adapter (no live recording exists yet; the wire sample is the docs' own):

- https://docs.gemini.com/websocket/introduction (also developer.gemini.com/websocket/introduction):
  one public URL, ``wss://ws.gemini.com``; query parameters only for depth snapshots and
  cancel-on-disconnect, neither used here.
- https://developer.gemini.com/websocket/message-format (and
  https://docs.gemini.com/websocket/fast-api/message-format): a request is
  ``{"id":..,"method":..,"params":..}`` (the id a string or a number), a success answer
  ``{"id":..,"status":200,"result":..}``, a refusal ``{"id":..,"status":<HTTP code>,
  "error":{"code":..,"msg":..}}``. The ``result`` of a ``SUBSCRIBE`` is not shown, so an answer
  with status 200 and our id acknowledges the request whatever its result; a refusal's ``code``
  is a number on one page and a string on the other: both are read.
- https://developer.gemini.com/websocket/streams (and docs.gemini.com/websocket/fast-api/streams):
  ``{symbol}@bookTicker``, "real time updates to the best bid/ask price", lower-case symbols::

      {"u":1751505576085,"E":1751508438600117161,"s":"btcusd","b":"45000.50","B":"1.25000000",
       "a":"45001.00","A":"0.75000000"}

  ``u`` update id, ``E`` event time in nanoseconds, ``s`` symbol, ``b``/``a`` best bid/ask price,
  ``B``/``A`` their quantities. The frame is shown bare, with no stream envelope.
- The playground (https://developer.gemini.com/trading/websocket/playground) lists the methods:
  ``SUBSCRIBE`` and ``UNSUBSCRIBE`` (``params``: stream names), ``LIST_SUBSCRIPTIONS``, ``ping``
  ("ping the server to check connectivity"), ``time`` and ``conninfo`` (the connection's limits).

Choices where the docs are silent (docs/sources.md, "What the venues' documentation leaves open"):
no keep-alive rule, heartbeat, message limit, stream cap or connection lifetime is documented. The
adapter sends the documented ``ping`` method every 10 s (id ``"ping"``; any answer to it is life),
so that a quiet book does not look like a dead socket, paces its requests at 5 a second, puts at
most 50 streams in a request and rotates at the configured age. Whether a subscription is answered
with the book's current state is not said: ``snapshot_on_subscribe`` keeps the safe default.
``venue_ts`` is ``E`` in milliseconds; the order of ``u`` is not documented, so frames are ordered
by ``E``: per symbol on a connection, an older one is dropped as ``out_of_order`` and the same one
again as ``duplicate`` (a frame the base refuses does not move the bar). REST is the public
``GET /v1/pubticker/{symbol}`` that `GeminiSource` polls too, one symbol a request, from their
shared base (`PubtickerPolls`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, Final

import aiohttp
import msgspec

from oracled.clock import Clock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sources.gemini import PubtickerPolls
from oracled.sources.stats import SourceStats

__all__ = ["GeminiWsSource"]

_SUFFIX: Final = "@bookTicker"
_PING_ID: Final = "ping"
_NS_PER_MS: Final = 1_000_000


class _Book(msgspec.Struct, gc=False):
    """A bookTicker frame. Prices are read straight into floats (strict=False), as on Binance;
    ``E`` is optional so that every book-shaped frame is judged here, never as a control frame;
    ``u`` and the quantities are skipped."""

    s: str
    b: float
    a: float
    E: int | None = None


class _TextBook(msgspec.Struct):
    """A book the float decoder refused, its prices read as text: only to name what was wrong."""

    s: str
    b: str | float
    a: str | float
    E: int | None = None


class _Error(msgspec.Struct):
    code: int | str
    msg: str


class _Control(msgspec.Struct):
    """Answers to our requests; rare, so decoded second."""

    id: int | str | None = None
    status: int | None = None
    error: _Error | None = None


_FRAME = msgspec.json.Decoder(_Book, strict=False)
_TEXT_FRAME = msgspec.json.Decoder(_TextBook)
_CONTROL = msgspec.json.Decoder(_Control)
_ENCODE = msgspec.json.Encoder()
_PING: Final = _ENCODE.encode({"id": _PING_ID, "method": "ping"}).decode()


class GeminiWsSource(PubtickerPolls):
    default_ws_url: ClassVar[str] = "wss://ws.gemini.com"
    max_symbols_per_request: ClassVar[int] = 50
    max_messages_per_s: ClassVar[int] = 5
    app_ping_interval_s: ClassVar[float | None] = 10.0
    #: Not documented whether a subscription is answered with the current book: the safe default.
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
        super().__init__(source_id, cfg, pairs, emit, clock, session, stats)
        self._newest: dict[str, int] = {}  # symbol -> E of its last quote on this connection

    def venue_symbol(self, pair: str) -> str:
        """BTC/USD -> btcusd (stream names and the frames' ``s`` are lower case)."""
        return pair.replace("/", "").lower()

    def stream_url(self) -> str:
        return self.ws_url

    async def connect_url(self) -> str:
        # Event times are compared within one connection only (as update ids are on Binance
        # USD-M), so that no reading of another connection can hold a symbol back.
        self._newest.clear()
        return self.stream_url()

    def app_ping(self) -> str:
        return _PING

    def subscribe_message(self, request_id: int, symbols: Sequence[str]) -> str:
        params = [f"{s}{_SUFFIX}" for s in symbols]
        return _ENCODE.encode({"id": request_id, "method": "SUBSCRIBE", "params": params}).decode()

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        try:
            book = _FRAME.decode(data)
        except msgspec.DecodeError:
            self._slow(data)
            return
        symbol, event_ns = book.s, book.E
        if event_ns is None:
            self._quote(symbol, book.b, book.a, recv_ts)
            return
        newest = self._newest.get(symbol)
        if newest is not None and event_ns <= newest:  # an equal or later event was quoted
            self.stats.dropped["out_of_order" if event_ns < newest else "duplicate"] += 1
            return
        stats = self.stats
        quotes = stats.quotes
        self._quote(symbol, book.b, book.a, recv_ts, event_ns // _NS_PER_MS)
        if stats.quotes != quotes:  # only an emitted frame moves the bar
            self._newest[symbol] = event_ns

    def _slow(self, data: str | bytes) -> None:
        """Frames the float decoder refused: answers, other shapes, and books whose price is no
        decimal msgspec reads (``"abc"``, ``"1_000"``, blanks), never quoted even where Python's
        float() would read them (as on Binance)."""
        try:
            book = _TEXT_FRAME.decode(data)
        except msgspec.DecodeError:
            self._control(data)
            return
        self._bad_number(book.b, book.a)

    def _control(self, data: str | bytes) -> None:
        frame = self._decoded(_CONTROL, data)
        if frame is None:
            return
        request_id = frame.id
        if request_id == _PING_ID:
            return  # the answer to our ping: life, nothing more
        if frame.error is not None:
            self._reject(request_id, f"{frame.error.code}: {frame.error.msg}")
        elif frame.status == 200 and request_id is not None:
            self._ack(request_id)
        elif frame.status is not None and request_id is not None:
            self._reject(request_id, f"status {frame.status}")
        else:
            self._bad("shape")
