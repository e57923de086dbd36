"""OKX v5: best bid/ask from the public ``tickers`` channel, REST tickers as fallback.

Docs: https://www.okx.com/docs-v5/en/#overview-websocket and
https://www.okx.com/docs-v5/en/#order-book-trading-market-data-ws-tickers-channel and
https://www.okx.com/docs-v5/en/#order-book-trading-market-data-get-tickers

Wire sample (``wss://ws.okx.com:8443/ws/v5/public``, recorded live 2022-05-13)::

    {"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instType":"SPOT",
     "instId":"BTC-USDT","last":"30236","lastSz":"0.0002","askPx":"30228.7","askSz":"1.55896972",
     "bidPx":"30228.6","bidSz":"0.23393",...,"ts":"1652459224956"}]}

Subscribe ``{"id":"7","op":"subscribe","args":[{"channel":"tickers","instId":"BTC-USDT"}]}``. The
current docs accept an optional client ``id`` (up to 32 alphanumerics) and echo it; older servers
(the 2022 recording) answer without it, so acks are matched by instrument, with the id as a hint.
The venue acks each arg on its own, ``{"id":"7","event":"subscribe","arg":{...},"connId":".."}``,
and refuses an unknown instrument with ``{"event":"error","code":"60018","msg":"Wrong URL or
channel:tickers,instId:FOO-USDT doesn't exist..."}``: only that instrument is marked failed.
``{"event":"notice","code":"64008"}`` announces a close for a service upgrade: we rotate at once.

Rules from the docs that shape this file: the venue sends no pings; a connection with no data for
30 s is closed, so the client sends the text ``ping`` (answered by ``pong``) at an interval under
30 s; 3 connection requests a second per IP and 480 subscribe requests an hour per connection
(requests are batched, 50 args each); no maximum connection life is documented, so the config's
default rotation applies. A pair of kind ``perp`` maps to the USDT-margined swap ``BTC-USDT-SWAP``.
``ts`` is the venue's event time (ms) and is carried as ``venue_ts``; a ticker older than the last
one seen for its instrument is dropped (``dropped["out_of_order"]``). During the pre-open period
the docs allow a crossed book, which the base drops as ``crossed``. ``last`` (the last trade)
travels as the quote's last price, from the stream and from REST.

Decoding: a tickers push in the documented shape is read in one pass with prices and ``ts``
straight into numbers (strict=False), several times cheaper than ``float()`` on decoded text. That
pass also wants ``bidSz`` as a decimal string, the venue's way of printing numbers; anything else
(events, pongs, an empty side printed as ``""``, a push out of shape) is decoded again with text
prices and judged by the strict rules, so that every bad frame is named the same way. A ticker
whose sizes are strings but whose prices are bare JSON numbers is read as those prices.

REST ``GET /api/v5/market/tickers?instType=SPOT|SWAP`` returns every instrument of a type in one
request (limit: 20 requests per 2 s per IP). One poll makes one request: with both kinds
configured, polls alternate between SPOT and SWAP. A poll for a single instrument (one configured,
or after a refused batch) uses ``GET /api/v5/market/ticker?instId=..`` (same limit). A tickers
answer lists what the venue lists and says nothing of an instrument it does not: one it leaves
out is judged by that type's answers alone (`rest_scope`), and listed silent once its limit has
passed (docs/sources.md).

REST errors (https://www.okx.com/docs-v5/en/#error-code-rest-api) come as a non-zero ``code``
with its ``msg`` in the body, ``{"code":"51001","msg":"Instrument ID does not exist","data":[]}``,
under HTTP 200 or an error status (50011 "Rate limit reached" with 429, 50001 "Service
temporarily unavailable" with 503, 51001 with 200); `_fetch` reads the code, whatever the status,
by what it means, as the stream path reads its errors: 51001 on a one-instrument poll marks that
instrument failed (``failed_instruments``, logged once, left out of later polls, as a refused
subscription is); 50011 is a rate limit: the round ends and polls rest for the limit's 2 s window
(`rate_limit_wait_s`, or a ``Retry-After`` if one is sent); any other code is a failed request
(``rest_error``, the source down) logged with its code and message at most once a minute.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Final, Literal

import aiohttp
import msgspec

from oracled.clock import Clock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sources._base import UNDECODABLE, Source, read_integer, read_request_id
from oracled.sources.stats import SourceStats

__all__ = ["OkxSource"]

_SWAP: Final = "-SWAP"
_INST_IN_MSG: Final = re.compile(r"instId:([A-Za-z0-9_-]+)")


class _Arg(msgspec.Struct):
    channel: str
    instId: str = ""


class _FastTick(msgspec.Struct, gc=False):
    """A ticker read in one pass: numbers straight into floats and ints; see the docstring."""

    instId: str
    bidPx: float
    askPx: float
    bidSz: str
    ts: int
    last: float | None = None


class _FastArg(msgspec.Struct, gc=False):
    channel: Literal["tickers"]


class _FastPush(msgspec.Struct, gc=False):
    arg: _FastArg
    data: list[_FastTick]


class _Tick(msgspec.Struct):
    instId: str
    bidPx: str
    askPx: str
    ts: str
    last: msgspec.Raw = msgspec.Raw()


class _Push(msgspec.Struct):
    arg: _Arg
    data: list[_Tick]


class _Control(msgspec.Struct):
    """Event frames: acks, errors, notices, connection counts. Rare, so decoded second."""

    event: str = ""
    id: str | None = None
    code: str = ""
    msg: str = ""
    arg: _Arg | None = None


class _Envelope(msgspec.Struct):
    """What every REST answer carries, an error's too: ``code`` "0" is success."""

    code: str
    msg: str = ""


class _Rest(msgspec.Struct):
    code: str
    msg: str = ""
    data: list[_Tick] = msgspec.field(default_factory=list)


_FAST = msgspec.json.Decoder(_FastPush, strict=False)
_PUSH = msgspec.json.Decoder(_Push)
_CONTROL = msgspec.json.Decoder(_Control)
_REST = msgspec.json.Decoder(_Rest)
_ENVELOPE = msgspec.json.Decoder(_Envelope)
#: REST error codes read by their meaning (the docs' table; any other is a failed request).
_NO_INSTRUMENT: Final = "51001"  # "Instrument ID does not exist", HTTP 200
_RATE_LIMIT: Final = "50011"  # "Rate limit reached", HTTP 429
_ENCODE = msgspec.json.Encoder()


class OkxSource(Source):
    default_ws_url: ClassVar[str] = "wss://ws.okx.com:8443"
    default_rest_url: ClassVar[str | None] = "https://www.okx.com"
    kinds: ClassVar[frozenset[Kind]] = frozenset({"spot", "perp"})
    max_symbols_per_request: ClassVar[int] = 50
    max_messages_per_s: ClassVar[int] = 3
    app_ping_interval_s: ClassVar[float | None] = 20.0
    rest_batch_size: ClassVar[int] = 1000
    rest_batch_named: ClassVar[bool] = False  # tickers?instType= names no instrument
    #: The docs say only that a ticker is pushed on a trade or a best bid/ask change, but in the
    #: 2022 recording each ``tickers`` arg was answered 3 ms after the acks with the instrument's
    #: current ticker (``ts`` 2.4 to 2.5 s old, before the subscribe): a snapshot, so the filter
    #: stays on.
    snapshot_on_subscribe: ClassVar[bool] = True
    #: The window of the market data endpoints' limit (20 requests per 2 s per IP): a 50011
    #: names no wait, and the limit is spent for at most this long.
    rest_limit_window_s: ClassVar[float] = 2.0

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
        self._last_ts: dict[str, int] = {}
        self._rest_turn = 0
        self._asked: dict[int, float] = {}  # request id -> when it was sent

    def venue_symbol(self, pair: str) -> str:
        return pair.replace("/", "-")

    @staticmethod
    def kind_symbol(symbol: str, kind: Kind) -> str:
        """The instId: spot and swap of one pair differ, a perp's is the name (the config's or
        BASE-QUOTE) with ``-SWAP``, which a name ending in it already has."""
        if kind == "perp" and not symbol.endswith(_SWAP):
            return symbol + _SWAP
        return symbol

    def stream_url(self) -> str:
        return f"{self.ws_url}/ws/v5/public"

    def app_ping(self) -> str:
        return "ping"

    def subscribe_message(self, request_id: int, symbols: Sequence[str]) -> str:
        self._asked[request_id] = self._clock.monotonic()
        args = [{"channel": "tickers", "instId": s} for s in symbols]
        return _ENCODE.encode({"id": str(request_id), "op": "subscribe", "args": args}).decode()

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        try:
            ticks = _FAST.decode(data).data
        except msgspec.DecodeError:
            self._push(data, recv_ts)
            return
        if not ticks:
            self._bad("shape")
            return
        stats, last_ts = self.stats, self._last_ts
        for tick in ticks:
            symbol, ts = tick.instId, tick.ts
            if ts < last_ts.get(symbol, 0):
                stats.dropped["out_of_order"] += 1
                continue
            quotes = stats.quotes
            self._quote(symbol, tick.bidPx, tick.askPx, recv_ts, ts, tick.last)
            if stats.quotes != quotes:  # only a price that was used moves the clock on
                last_ts[symbol] = ts

    def _push(self, data: str | bytes, recv_ts: int) -> None:
        """The strict path: pushes with text prices, then pongs and events."""
        try:
            push = _PUSH.decode(data)
        except msgspec.DecodeError:
            if data in ("pong", b"pong"):
                self._on_pong()
            else:
                self._control(data)
            return
        if push.arg.channel != "tickers" or not push.data:
            self._bad("shape")
            return
        for tick in push.data:
            self._tick(tick, recv_ts)

    def _tick(self, tick: _Tick, recv_ts: int) -> None:
        try:
            ts = read_integer(tick.ts)
        except ValueError:
            self._bad_number(tick.ts)
            return
        symbol = tick.instId
        if ts < self._last_ts.get(symbol, 0):
            self.stats.dropped["out_of_order"] += 1
            return
        quotes = self.stats.quotes
        # No trade yet ("") or an unreadable last price: the book is still good.
        self._quote_texts(symbol, tick.bidPx, tick.askPx, recv_ts, ts, tick.last)
        if self.stats.quotes != quotes:  # only a price that was used moves the clock on
            self._last_ts[symbol] = ts

    def _on_pong(self) -> None:
        """Pongs keep a socket alive; a subscription unanswered for a whole ping interval means
        the venue lost it, and a live but empty connection must not be kept forever."""
        oldest = self._clock.monotonic() - (self.app_ping_interval_s or 0.0)
        for request_id, sent in list(self._asked.items()):
            if request_id not in self._pending:
                del self._asked[request_id]
            elif sent < oldest:
                self._rotate("subscription not acknowledged")
                return

    def _control(self, data: str | bytes) -> None:
        frame = self._decoded(_CONTROL, data)
        if frame is None:
            return
        event = frame.event
        request_id = read_request_id(frame.id)
        if event == "subscribe" and frame.arg is not None:
            self._settle(request_id, frame.arg.instId, None)
        elif event == "error":
            message = f"{frame.code}: {frame.msg}"
            named = frame.arg.instId if frame.arg else ""
            if not named and (found := _INST_IN_MSG.search(frame.msg)):
                named = found.group(1)
            if named in self._by_symbol:
                self._settle(request_id, named, message)
            else:
                self._reject(request_id, message)
        elif event == "notice":
            self._rotate("server_shutdown")  # 64008: closing soon for a service upgrade
        elif event == "channel-conn-count-error":
            self.stats.dropped["venue_error"] += 1
            self._venue_error(None, frame.msg or frame.code, "venue connection limit")
        elif event not in ("channel-conn-count", "unsubscribe"):
            self._bad("shape")

    def _settle(self, request_id: int | None, symbol: str, error: str | None) -> None:
        """One instrument was acked or refused: OKX answers per arg, not per request."""
        pending = self._pending
        if request_id is None or symbol not in pending.get(request_id, ()):
            request_id = next((r for r, syms in pending.items() if symbol in syms), None)
        if request_id is None and error is None:
            self.stats.dropped["unsolicited"] += 1
            return
        if request_id is not None:
            rest = tuple(s for s in pending.pop(request_id) if s != symbol)
            if rest:
                pending[request_id] = rest
        # Settle the one instrument through the base, which keeps the failed list and logs.
        single = next(self._ids)
        pending[single] = (symbol,)
        if error is None:
            self._ack(single)
        else:
            self._reject(single, error)

    def rest_request(self, symbols: Sequence[str]) -> tuple[str, Mapping[str, str]] | None:
        if len(symbols) == 1:
            return f"{self.rest_url}/api/v5/market/ticker", {"instId": symbols[0]}
        types = sorted({"SWAP" if s.endswith(_SWAP) else "SPOT" for s in symbols})
        self._rest_turn += 1
        inst_type = types[self._rest_turn % len(types)]
        return f"{self.rest_url}/api/v5/market/tickers", {"instType": inst_type}

    def rest_scope(self, symbols: Sequence[str], query: Mapping[str, str]) -> Sequence[str]:
        """A tickers answer speaks for the instruments of its type alone."""
        inst_type = query.get("instType")
        if inst_type is None:
            return symbols
        return [s for s in symbols if s.endswith(_SWAP) == (inst_type == "SWAP")]

    def rate_limit_wait_s(self, headers: Mapping[str, str]) -> float:
        """A 50011 (HTTP 429) sends no Retry-After: polls rest for the limit's window."""
        return super().rate_limit_wait_s(headers) or self.rest_limit_window_s

    async def _fetch(
        self, url: str, query: Mapping[str, str]
    ) -> tuple[int | None, bytes, str | None]:
        """OKX says a REST error with a code in the body, under HTTP 200 or an error status;
        turn it into the failure the base understands by what the code means (module doc)."""
        status, body, error = await super()._fetch(url, query)
        if status is None:  # no answer: a transport error, a timeout, a body past the cap
            return status, body, error
        try:
            reply = _ENVELOPE.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, *UNDECODABLE):
            # No OKX body (or one nested past the decoder's depth, or not UTF-8): the status,
            # or on_rest through the base, judges it.
            return status, body, error
        if reply.code == "0":
            return status, body, error
        message = f"{reply.code}: {reply.msg}"[:200]
        if reply.code == _NO_INSTRUMENT and "instId" in query:
            return 400, body, message  # the base marks the one instrument failed
        if reply.code == _RATE_LIMIT:
            if status not in (429, 418):  # the base read no wait for it
                self._retry_after_s = self.rate_limit_wait_s({})
            return 429, body, message
        return status, body, message  # a failed request: the poller logs it (`rest error`)

    def on_rest(self, body: bytes, recv_ts: int) -> None:
        reply = self._decoded(_REST, body)
        if reply is None:
            return
        if reply.code != "0":
            self.stats.dropped["venue_error"] += 1
            return
        known = self._by_symbol
        for tick in reply.data:
            if tick.instId in known:  # a tickers reply lists every instrument of the type
                self._tick(tick, recv_ts)
