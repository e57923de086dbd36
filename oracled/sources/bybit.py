"""Bybit v5 public streams: spot bid/ask from ``orderbook.1``, linear perpetuals from ``tickers``.

Docs: https://bybit-exchange.github.io/docs/v5/ws/connect,
https://bybit-exchange.github.io/docs/v5/websocket/public/ticker,
https://bybit-exchange.github.io/docs/v5/websocket/public/orderbook and
https://bybit-exchange.github.io/docs/v5/market/tickers

Wire sample (the docs' linear ticker snapshot, shortened; deltas that follow carry only the
fields that changed, so the last full state per symbol is kept and deltas are merged into it)::

    {"topic":"tickers.BTCUSDT","type":"snapshot","data":{"symbol":"BTCUSDT","lastPrice":"17216.00",
     "markPrice":"17217.33","indexPrice":"17227.36","bid1Price":"17215.50","bid1Size":"84.489",
     "ask1Price":"17216.00","ask1Size":"83.020"},"cs":24987956059,"ts":1673272861686}

The current spot ``tickers`` payload has no best bid/ask (only last price and 24 h figures), so
spot reads level-1 order book ``orderbook.1.<SYMBOL>``, which the orderbook page says is pushed as
snapshots only: each frame the best level of both sides with a new ``u``, the per-symbol update id
(``u`` = 1 after a venue restart); that snapshot is the straight line of `on_message`. Deltas
(the page's general rule for deeper books, where size ``"0"`` removes a level; older docs sent
them on level 1 too) are still applied to the kept state.

``venue_ts`` is, on spot, the frame's ``cts`` ("the timestamp from the matching engine when this
orderbook data is produced"; ``ts`` where a frame has none) and, on linear, its ``ts`` (when the
system generated the data: a delta is pushed on a change of any of the ticker's fields, so it is the
change's time within milliseconds). A linear delta that changes neither a best price or size nor the
last price (mark, index, funding, open interest, which move on while the book may not) is dropped as
``unchanged``: its ``ts`` is no time of the book, and with it a book that stopped changing would
look fresh for ever. Spot does not use ``ts``: a level-1 book that has not changed for 3 s is pushed
again as a snapshot with the same ``u`` and a new ``ts``, and with that ``ts`` a book that stopped
changing would look fresh for ever; such a re-push is dropped as ``unchanged`` (the quote keeps the
age of the book's last change). Frames older than the last one applied for the symbol on this
connection (by ``u`` on spot, by ``ts`` on linear) are dropped as ``stale`` (on spot, unless the
base judges the kept ``u`` bad, `Source._counter_refused`: a ``u`` below half of it, or five frames
in a row refused while their ``ts`` is past its frame's; then the symbol's kept state is dropped and
the frame read as its first, so that one far-ahead ``u`` cannot freeze a symbol until the next
reconnect); a frame with a bad price is dropped whole and never merged into the kept state, and so
is a frame from further ahead than the clock-skew bound (``future``), whose time would otherwise
become the bar that every later frame is stale against (linear), or stand beside its ``u`` as the
time no later frame is past, so that a far-ahead ``u`` with it froze the symbol (spot).

Subscribe ``{"op":"subscribe","args":["tickers.BTCUSDT"],"req_id":"1"}``, ack
``{"success":true,"ret_msg":"","conn_id":"..","req_id":"1","op":"subscribe"}``; a refusal has
``success`` false and the reason in ``ret_msg`` (a recorded one had no ``req_id``: the refused
topic is then looked up in the message). ``already subscribed`` counts as an ack.

Rules from the docs: the client sends ``{"op":"ping"}`` every 20 s (answered with a JSON pong);
without ping-pong or data the server cuts a connection after 10 minutes; a spot subscribe request
takes at most 10 args, and one connection's args may not exceed 21,000 characters; no more than
500 connections per 5 minutes per IP. Public connections have no documented maximum life (the
config's default 23 h rotation is kept as hygiene). REST ``GET /v5/market/tickers?category=..``
answers every symbol of a category in one request (it does carry ``bid1Price``/``ask1Price`` for
spot), against an IP limit of 600 requests per 5 s: one request per poll. Its rows carry no time;
the answer's ``time`` is the server's clock when it answered, not a venue time of any book, so
REST quotes carry none and age from the quote that first showed their bid and ask, streamed or
polled (`Source._emit_polled`).

A REST rate limit is answered inside HTTP 200 (https://bybit-exchange.github.io/docs/v5/rate-limit):
``{"retCode":10006,"retMsg":"Too many visits!",..}`` for the API limit (a rolling one-second
window), with ``X-Bapi-Limit-Reset-Timestamp``, "the timestamp indicating when your request limit
resets if you have exceeded your rate_limit" (milliseconds; otherwise the current time); 10018
is the IP limit's code (600 requests per 5 s). `_fetch` hands either to the base as a 429, so the
round ends and polls rest: until the reset timestamp if it lies ahead (at most
`rest_limit_reset_cap_s` believed), else `rest_limit_window_s`; 10018 at least the IP window,
`rest_ip_window_s`. Any other code is read in `on_rest` as before.

Past the IP limit the same page has the REST gateway answer HTTP 403 ("access too frequent"): the
IP is banned, the client is to stop its HTTP requests for at least 10 minutes, and the ban lifts
by itself (older editions of the page said a 403 ban usually lasts 30 minutes, and that one still
in force after 30 minutes may be for good). `_fetch` hands a 403 to the base as a 429 too, so
polls rest `rest_ip_ban_s` (a longer ``Retry-After`` wins); the next poll after the rest is the
one request that learns whether the ban is over. The IP limit and its ban count all the traffic
of our IP to the host, "regardless of if it accesses Spot, Derivatives or Options" (older
editions of the page), so a 10018 and a 403 are limits on our IP (`_limit_ip_wide`): every source
polling the same REST host rests with the one that met it, until the same instant
(`oracled.sources.hostrests`), and pays no refused request of its own; 10006, per UID and
endpoint, stays with the source that met it.

The v5 error page (https://bybit-exchange.github.io/docs/v5/error) lists three causes under the
one HTTP 403: "IP rate limit breached", a GET sent with an empty JSON body, a U.S. IP. No body or
header that tells a region's refusal from the ban is documented, so a 403 is taken as the ban
whatever its body: a region the venue does not serve costs one request per rest, and its body
is in the ``rest rate limited`` line.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, ClassVar, Final

import aiohttp
import msgspec

from oracled.clock import Clock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sources._base import (
    UNDECODABLE,
    VENUE_TEXT_KEPT,
    Source,
    read_decimal,
    read_request_id,
)
from oracled.sources.stats import SourceStats

__all__ = ["BybitLinearSource", "BybitSpotSource"]

_INF: Final = math.inf
_TOPIC: Final = re.compile(r"[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)+")


# Fast path: prices parsed straight into floats by msgspec (strict=False), several times cheaper
# than float() on decoded text, with the range checked there too. A frame it refuses (a bad price,
# another shape) takes the slow path, which names the reason exactly. Bybit quotes every decimal,
# but a bare JSON number is a valid price too, on both paths (as on Binance spot).
_Price = Annotated[float, msgspec.Meta(gt=0.0, lt=sys.float_info.max)]


class _Ticker(msgspec.Struct):
    """A linear ticker, snapshot or delta: a missing field means "unchanged"."""

    symbol: str
    bid: str | float | None = msgspec.field(name="bid1Price", default=None)
    ask: str | float | None = msgspec.field(name="ask1Price", default=None)
    last: str | float | None = msgspec.field(name="lastPrice", default=None)
    # Read for their presence only: a delta that changes neither the best levels nor the last
    # price is no book event (module docstring).
    bid_size: str | float | None = msgspec.field(name="bid1Size", default=None)
    ask_size: str | float | None = msgspec.field(name="ask1Size", default=None)


class _TickerFrame(msgspec.Struct):
    type: str
    ts: int
    data: _Ticker


class _FastTicker(msgspec.Struct, gc=False):
    symbol: str
    bid: _Price | None = msgspec.field(name="bid1Price", default=None)
    ask: _Price | None = msgspec.field(name="ask1Price", default=None)
    last: _Price | None = msgspec.field(name="lastPrice", default=None)
    bid_size: str | float | None = msgspec.field(name="bid1Size", default=None)  # presence only
    ask_size: str | float | None = msgspec.field(name="ask1Size", default=None)


class _FastTickerFrame(msgspec.Struct, gc=False):
    type: str
    ts: int
    data: _FastTicker


class _Level1(msgspec.Struct):
    s: str
    b: list[tuple[str | float, str | float]]
    a: list[tuple[str | float, str | float]]
    u: int


class _BookFrame(msgspec.Struct):
    type: str
    ts: int
    data: _Level1
    cts: int | None = None


class _FastLevel1(msgspec.Struct, gc=False):
    s: str
    b: list[tuple[_Price, float]]
    a: list[tuple[_Price, float]]
    u: int


class _FastBookFrame(msgspec.Struct, gc=False):
    """Only the fields used; ``topic`` (it repeats ``data.s``) and ``seq`` are skipped."""

    type: str
    ts: int
    data: _FastLevel1
    cts: int | None = None  # the book's matching-engine time; see the module docstring


class _Control(msgspec.Struct):
    """Operation replies (subscribe acks and refusals, pongs); rare, so decoded second."""

    op: str = ""
    success: bool | None = None
    ret_msg: str = ""
    req_id: str | None = None


class _RestRow(msgspec.Struct):
    symbol: str
    bid: str = msgspec.field(name="bid1Price")
    ask: str = msgspec.field(name="ask1Price")


class _RestResult(msgspec.Struct):
    rows: list[_RestRow] = msgspec.field(name="list", default_factory=list)


class _Rest(msgspec.Struct):
    """``time`` (the answer's own server time) is left out: see the module docstring."""

    code: int = msgspec.field(name="retCode")
    msg: str = msgspec.field(name="retMsg")
    result: _RestResult | None = None


class _Envelope(msgspec.Struct):
    """What every REST answer carries, an error's too: ``retCode`` 0 is success."""

    code: int = msgspec.field(name="retCode")
    msg: str = msgspec.field(name="retMsg", default="")


class _Top:
    """The kept best bid, ask and last price of one symbol, and the order key and venue time of
    the frame they came from."""

    __slots__ = ("ask", "bid", "last", "seq", "ts")

    def __init__(
        self, bid: float | None, ask: float | None, last: float | None, seq: int, ts: int
    ) -> None:
        self.bid, self.ask, self.last, self.seq, self.ts = bid, ask, last, seq, ts


_DROPPED: Final = _Top(None, None, None, 0, 0)  # `_admit`: the frame was counted and dropped


_TICKERS = msgspec.json.Decoder(_TickerFrame)
_FAST_TICKERS = msgspec.json.Decoder(_FastTickerFrame, strict=False)
_BOOKS = msgspec.json.Decoder(_BookFrame)
_FAST_BOOKS = msgspec.json.Decoder(_FastBookFrame, strict=False)
_CONTROL = msgspec.json.Decoder(_Control)
_REST = msgspec.json.Decoder(_Rest)
_ENVELOPE = msgspec.json.Decoder(_Envelope)
#: REST codes that mean "too many requests" (module doc): the API limit's and the IP limit's.
_API_LIMIT: Final = 10006  # "Too many visits!"
_IP_LIMIT: Final = 10018
_IP_BANNED: Final = 403  # the HTTP status of an IP over the limit: "access too frequent"
_ENCODE = msgspec.json.Encoder()
_PING: Final = '{"op":"ping"}'


def _best(levels: Sequence[tuple[float, float]], kept: float | None, bids: bool) -> float | None:
    """Level 1 keeps one price per side: a listed level replaces it (the best one, should a frame
    list several, as the docs' example snapshot does); size 0 at the kept price empties the side;
    deletions of other prices change nothing."""
    best: float | None = None
    for price, size in levels:
        if size == 0.0:
            if kept == price:
                kept = None
        elif best is None or (price > best if bids else price < best):
            best = price
    return kept if best is None else best


class _BybitSource(Source):
    """What both Bybit categories share: subscribe protocol, pings, acks, REST, price hygiene."""

    category: ClassVar[str]
    default_rest_url: ClassVar[str | None] = "https://api.bybit.com"
    app_ping_interval_s: ClassVar[float | None] = 20.0
    max_messages_per_s: ClassVar[int] = 10  # not documented for public streams; kept modest
    rest_batch_named: ClassVar[bool] = False  # tickers?category= names no symbol
    #: Both topics answer a subscription with a ``snapshot`` of the symbol (docs); linear tickers
    #: then send deltas, spot level 1 only further snapshots.
    snapshot_on_subscribe: ClassVar[bool] = True
    #: Rest after a 10006 naming no reset ahead: the API limit's rolling window is one second.
    rest_limit_window_s: ClassVar[float] = 1.0
    #: Rest at least this long after a 10018: the IP limit's window (600 requests per 5 s).
    rest_ip_window_s: ClassVar[float] = 5.0
    #: The longest wait a reset timestamp is believed for (a skewed clock could name hours);
    #: the longest window the docs give an API limit is a minute.
    rest_limit_reset_cap_s: ClassVar[float] = 60.0
    #: Rest after an HTTP 403, the IP ban: "at least 10 minutes" (module doc).
    rest_ip_ban_s: ClassVar[float] = 600.0

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
        self._tops: dict[str, _Top] = {}  # per connection: cleared by `connect_url`
        self._rest_single: str | None = None  # the symbol of a one-symbol REST request

    def topic(self, symbol: str) -> str:
        """The subscription topic of one venue symbol."""
        raise NotImplementedError

    def _on_data(self, data: str | bytes, recv_ts: int) -> None:
        """Decode one data frame with text prices (the slow path); raises msgspec.DecodeError for
        anything that is not one."""
        raise NotImplementedError

    def stream_url(self) -> str:
        return f"{self.ws_url}/v5/public/{self.category}"

    async def connect_url(self) -> str:
        # A new connection starts with fresh snapshots: forget the old state and its order keys.
        self._tops = {}
        return self.stream_url()

    def app_ping(self) -> str:
        return _PING

    def subscribe_message(self, request_id: int, symbols: Sequence[str]) -> str:
        args = [self.topic(s) for s in symbols]
        return _ENCODE.encode({"op": "subscribe", "args": args, "req_id": str(request_id)}).decode()

    def _slow(self, data: str | bytes, recv_ts: int) -> None:
        """Every frame the fast path refused: control frames, bad prices, other shapes."""
        try:
            self._on_data(data, recv_ts)
        except msgspec.DecodeError:
            self._control(data)

    def _control(self, data: str | bytes) -> None:
        frame = self._decoded(_CONTROL, data)
        if frame is None:
            return
        if frame.op == "subscribe" and frame.success is not None:
            if frame.success or "already subscribed" in frame.ret_msg:
                self._ack(_request_id(frame.req_id))
            else:
                self._refused(frame.req_id, frame.ret_msg)
        elif frame.op in ("ping", "pong", "unsubscribe") and frame.success is not False:
            return  # heartbeat answers: the base already counted the frame as a sign of life
        else:
            self._bad("shape")

    def _refused(self, req_id: str | None, message: str) -> None:
        """A refusal without a usable id is matched to a pending request by the topic it names."""
        request_id = _request_id(req_id)
        if request_id not in self._pending:
            named = set(_TOPIC.findall(message))
            for pending_id, symbols in self._pending.items():
                if any(self.topic(s) in named for s in symbols):
                    request_id = pending_id
                    break
        self._reject(request_id, message)

    def _price(self, text: str | float) -> float | None:
        """A price from the wire (text or a bare number), or None after counting why it is
        unusable."""
        try:
            value = read_decimal(text)
        except ValueError:
            self._bad_number(text)
            return None
        if not 0.0 < value < _INF:
            self._bad("non_positive" if math.isfinite(value) else "not_finite")
            return None
        return value

    def _apply(
        self,
        symbol: str,
        previous: _Top | None,
        bid: float | None,
        ask: float | None,
        last: float | None,
        seq: int,
        recv_ts: int,
        venue_ts: int,
    ) -> None:
        """Keep the new state and emit it, unless it is crossed (dropped whole), from further
        ahead than the clock-skew bound (dropped whole, `future`: kept, its time would become the
        kept state's, on spot beside its update id, and the symbol's later frames would be stale
        until the next reconnect) or one-sided (kept, no quote)."""
        if bid is not None and ask is not None and bid > ask:
            self._bad("crossed")
            return
        if venue_ts - recv_ts > self.max_clock_skew_ms:
            self.stats.dropped["future"] += 1
            return
        if previous is None:
            self._tops[symbol] = _Top(bid, ask, last, seq, venue_ts)
        else:  # updated in place: one allocation less per frame
            previous.bid, previous.ask, previous.last, previous.seq = bid, ask, last, seq
            previous.ts = venue_ts
        if bid is None or ask is None:
            self.stats.dropped["one_sided"] += 1
            return
        self._quote(symbol, bid, ask, recv_ts, venue_ts, last)

    def rest_request(self, symbols: Sequence[str]) -> tuple[str, Mapping[str, str]] | None:
        query = {"category": self.category}
        self._rest_single = symbols[0] if len(symbols) == 1 else None
        if self._rest_single is not None:
            query["symbol"] = self._rest_single
        return f"{self.rest_url}/v5/market/tickers", query

    def rate_limit_wait_s(self, headers: Mapping[str, str]) -> float:
        """A ``Retry-After`` if sent; else until ``X-Bapi-Limit-Reset-Timestamp`` if it lies
        ahead (capped); else the API limit's one-second window."""
        wait = super().rate_limit_wait_s(headers)
        if wait > 0:
            return wait
        reset_ms = self._header_count(headers, "X-Bapi-Limit-Reset-Timestamp")
        if reset_ms is None:  # none, or text that is no time (logged by the base)
            return self.rest_limit_window_s
        ahead_s = (reset_ms - self._clock.now_ms()) / 1000
        if ahead_s <= 0:  # the current time: the docs' "not exceeded", or a clock behind
            return self.rest_limit_window_s
        return min(ahead_s, self.rest_limit_reset_cap_s)

    async def _fetch(
        self, url: str, query: Mapping[str, str]
    ) -> tuple[int | None, bytes, str | None]:
        """Bybit says a rate limit inside HTTP 200, and an IP ban as HTTP 403: hand either to
        the base as a 429, with its wait (module doc)."""
        status, body, error = await super()._fetch(url, query)
        if status == _IP_BANNED:
            ban = max(self.rate_limit_wait_s(self._rest_headers), self.rest_ip_ban_s)
            self._retry_after_s = ban  # the base reads no wait from a 403
            self._limit_ip_wide = True  # the IP's ban: spot and linear on the host rest with it
            return 429, body, error
        if status != 200:
            return status, body, error
        try:
            reply = _ENVELOPE.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, *UNDECODABLE):
            return status, body, error  # on_rest counts the bad body
        if reply.code not in (_API_LIMIT, _IP_LIMIT):
            return status, body, error
        wait = self.rate_limit_wait_s(self._rest_headers)
        if reply.code == _IP_LIMIT:
            wait = max(wait, self.rest_ip_window_s)
            self._limit_ip_wide = True
        self._retry_after_s = wait  # the base reads none from a 200
        return 429, body, f"{reply.code}: {reply.msg}"[:200]

    def on_rest(self, body: bytes, recv_ts: int) -> None:
        reply = self._decoded(_REST, body)
        if reply is None:
            return
        if reply.code != 0:  # Bybit answers HTTP 200 with an error code in the body
            self.stats.dropped["rest_error"] += 1
            if self._rest_single is not None:
                message = f"{reply.code}: {reply.msg}"[:VENUE_TEXT_KEPT]
                self._log.warning("instrument failed", symbol=self._rest_single, message=message)
                self.stats.failed_instruments[self._rest_single] = message
            return
        wanted = self._by_symbol
        for row in reply.result.rows if reply.result else ():
            if row.symbol in wanted:  # the category answer lists every symbol it has
                self._quote_text(row.symbol, row.bid, row.ask, recv_ts)


class BybitSpotSource(_BybitSource):
    """Bybit spot: level-1 order book per symbol (spot tickers carry no bid/ask)."""

    category: ClassVar[str] = "spot"
    default_ws_url: ClassVar[str] = "wss://stream.bybit.com"
    kinds: ClassVar[frozenset[Kind]] = frozenset({"spot"})
    max_symbols_per_request: ClassVar[int] = 10  # the documented spot args limit

    def topic(self, symbol: str) -> str:
        return f"orderbook.1.{symbol}"

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        try:
            frame = _FAST_BOOKS.decode(data)
        except msgspec.DecodeError:
            self._slow(data, recv_ts)
            return
        book = frame.data
        bids, asks = book.b, book.a
        symbol, u, ts = book.s, book.u, frame.cts
        if ts is None:
            ts = frame.ts
        previous = self._tops.get(symbol)
        if previous is None or u <= previous.seq:
            self._first(symbol, u, frame.type == "snapshot", bids, asks, recv_ts, ts)
            return
        if frame.type == "snapshot":
            # The venue's usual frame: level 1 is pushed as snapshots only, one level a side.
            # Anything else (an empty side, a size 0, several levels) takes `_first`.
            if len(bids) == 1 == len(asks):
                (best_bid, bid_size), (best_ask, ask_size) = bids[0], asks[0]
                if bid_size != 0.0 and ask_size != 0.0 and best_bid <= best_ask:
                    stats = self.stats
                    quotes = stats.quotes
                    self._quote(symbol, best_bid, best_ask, recv_ts, ts)
                    if stats.quotes != quotes:  # else `future`: the kept state stays as it was
                        previous.bid = best_bid
                        previous.ask = best_ask
                        previous.seq = u
                        previous.ts = ts
                    return
            self._first(symbol, u, True, bids, asks, recv_ts, ts)
            return
        # The common case, a delta applied to the kept state, inline (what `_best` and `_apply`
        # do): a listed level replaces the side, size 0 at the kept price empties it.
        bid, best = previous.bid, None
        for price, size in bids:
            if size == 0.0:
                if price == bid:
                    bid = None
            elif best is None or price > best:
                best = price
        if best is not None:
            bid = best
        ask, best = previous.ask, None
        for price, size in asks:
            if size == 0.0:
                if price == ask:
                    ask = None
            elif best is None or price < best:
                best = price
        if best is not None:
            ask = best
        if bid is None or ask is None or bid > ask:
            self._apply(symbol, previous, bid, ask, None, u, recv_ts, ts)  # one-sided...
            return
        stats = self.stats
        quotes = stats.quotes
        self._quote(symbol, bid, ask, recv_ts, ts)
        if stats.quotes != quotes:  # else `future`: the kept state stays as it was
            previous.bid = bid
            previous.ask = ask
            previous.seq = u
            previous.ts = ts

    def _first(
        self,
        symbol: str,
        u: int,
        snapshot: bool,
        bids: Sequence[tuple[float, float]],
        asks: Sequence[tuple[float, float]],
        recv_ts: int,
        ts: int,
    ) -> None:
        """A fast-path frame with no kept state to apply to, a snapshot, or a dropped one."""
        previous = self._admit(symbol, u, snapshot, ts)
        if previous is _DROPPED:
            return
        keep = previous is not None and not snapshot
        bid = _best(bids, previous.bid if keep else None, True)  # type: ignore[union-attr]
        ask = _best(asks, previous.ask if keep else None, False)  # type: ignore[union-attr]
        self._apply(symbol, previous, bid, ask, None, u, recv_ts, ts)

    def _admit(self, symbol: str, u: int, snapshot: bool, ts: int) -> _Top | None:
        """The kept state of a frame's symbol, or _DROPPED after counting why the frame is not
        used: a symbol we did not ask for, or an update id not newer than the kept one (a
        snapshot may restart at u = 1). A kept id the base judges bad is dropped with its
        state: the frame is then the symbol's first."""
        if symbol not in self._by_symbol:
            self.stats.dropped["unknown_symbol"] += 1
            return _DROPPED
        previous = self._tops.get(symbol)
        if previous is not None and snapshot and u == previous.seq and u != 1:
            # The venue's re-push of an unchanged level-1 book (every 3 s of no change): its
            # fresh `ts` would make a book that stopped changing look fresh for ever.
            self.stats.dropped["unchanged"] += 1
            return _DROPPED
        if previous is not None and (
            (u < previous.seq and u != 1) if snapshot else u <= previous.seq
        ):
            if self._counter_refused(symbol, previous.seq, previous.ts, u, ts, "stale"):
                return _DROPPED
            del self._tops[symbol]
            return None
        return previous

    def _on_data(self, data: str | bytes, recv_ts: int) -> None:
        frame = _BOOKS.decode(data)
        book = frame.data
        snapshot = frame.type == "snapshot"
        ts = frame.ts if frame.cts is None else frame.cts
        previous = self._admit(book.s, book.u, snapshot, ts)
        if previous is _DROPPED:
            return
        sides: list[list[tuple[float, float]]] = []
        for levels in (book.b, book.a):
            side: list[tuple[float, float]] = []
            for price_text, size_text in levels:
                price = self._price(price_text)
                if price is None:
                    return
                try:
                    side.append((price, read_decimal(size_text)))
                except ValueError:
                    self._bad_number(size_text)
                    return
            sides.append(side)
        keep = previous is not None and not snapshot
        bid = _best(sides[0], previous.bid if keep else None, True)  # type: ignore[union-attr]
        ask = _best(sides[1], previous.ask if keep else None, False)  # type: ignore[union-attr]
        self._apply(book.s, previous, bid, ask, None, book.u, recv_ts, ts)


class BybitLinearSource(_BybitSource):
    """Bybit USDT/USDC linear perpetuals: ``tickers`` snapshot, then deltas merged per symbol."""

    category: ClassVar[str] = "linear"
    default_ws_url: ClassVar[str] = "wss://stream.bybit.com"
    kinds: ClassVar[frozenset[Kind]] = frozenset({"perp"})
    max_symbols_per_request: ClassVar[int] = 200  # ~4,600 characters of args, under 21,000

    def venue_symbol(self, pair: str) -> str:
        """BTC/USDT -> BTCUSDT; USDC perpetuals carry the contract name: BTC/USDC -> BTCPERP."""
        base, _, quote = pair.partition("/")
        return f"{base}PERP" if quote == "USDC" else f"{base}{quote}"

    def topic(self, symbol: str) -> str:
        return f"tickers.{symbol}"

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        try:
            frame = _FAST_TICKERS.decode(data)
        except msgspec.DecodeError:
            self._slow(data, recv_ts)
            return
        ticker = frame.data
        symbol, ts = ticker.symbol, frame.ts
        previous = self._tops.get(symbol)
        if previous is None or ts < previous.seq or frame.type == "snapshot":
            self._first(ticker, ts, frame.type == "snapshot", recv_ts)  # or unknown, or stale
            return
        # The common case, a delta merged into the kept state, inline (what `_apply` does).
        bid, ask, last = ticker.bid, ticker.ask, ticker.last
        if bid is ask is last is ticker.bid_size is ticker.ask_size is None:
            self.stats.dropped["unchanged"] += 1  # mark, index, funding...: not the book's time
            return
        if bid is None:
            bid = previous.bid
        if ask is None:
            ask = previous.ask
        if last is None:
            last = previous.last
        if bid is None or ask is None or bid > ask:
            self._apply(symbol, previous, bid, ask, last, ts, recv_ts, ts)  # one-sided, crossed
            return
        if ts - recv_ts > self.max_clock_skew_ms:  # what `_apply` does for a frame from the future
            self.stats.dropped["future"] += 1
            return
        previous.bid = bid
        previous.ask = ask
        previous.last = last
        previous.seq = ts
        self._quote(symbol, bid, ask, recv_ts, ts, last)

    def _first(self, ticker: _FastTicker, ts: int, snapshot: bool, recv_ts: int) -> None:
        """A fast-path frame with no kept state to merge into, a snapshot, or a dropped one."""
        previous = self._admit(ticker.symbol, ts)
        if previous is _DROPPED:
            return
        bid, ask, last = ticker.bid, ticker.ask, ticker.last
        if previous is not None and not snapshot:
            bid = previous.bid if bid is None else bid
            ask = previous.ask if ask is None else ask
            last = previous.last if last is None else last
        self._apply(ticker.symbol, previous, bid, ask, last, ts, recv_ts, ts)

    def _admit(self, symbol: str, ts: int) -> _Top | None:
        """The kept state of a frame's symbol, or _DROPPED after counting why the frame is not
        used: a symbol we did not ask for, or a frame older than the kept state."""
        if symbol not in self._by_symbol:
            self.stats.dropped["unknown_symbol"] += 1
            return _DROPPED
        previous = self._tops.get(symbol)
        if previous is not None and ts < previous.seq:
            self.stats.dropped["stale"] += 1
            return _DROPPED
        return previous

    def _on_data(self, data: str | bytes, recv_ts: int) -> None:
        frame = _TICKERS.decode(data)
        ticker = frame.data
        previous = self._admit(ticker.symbol, frame.ts)
        if previous is _DROPPED:
            return
        keep = previous if previous is not None and frame.type != "snapshot" else None
        if keep is not None and _leaves_the_book(ticker):
            self.stats.dropped["unchanged"] += 1  # mark, index, funding...: not the book's time
            return
        bid = keep.bid if keep is not None else None
        ask = keep.ask if keep is not None else None
        last = keep.last if keep is not None else None
        if ticker.bid is not None:
            bid = self._price(ticker.bid)
            if bid is None:
                return
        if ticker.ask is not None:
            ask = self._price(ticker.ask)
            if ask is None:
                return
        if ticker.last is not None:
            try:
                value = read_decimal(ticker.last)
            except ValueError:
                value = _INF
            if 0.0 < value < _INF:  # a bad last price is left out; it never drops the book
                last = value
        self._apply(ticker.symbol, previous, bid, ask, last, frame.ts, recv_ts, frame.ts)


def _leaves_the_book(ticker: _Ticker) -> bool:
    """A linear delta that changes neither a best level nor the last price."""
    return ticker.bid is ticker.ask is ticker.last is ticker.bid_size is ticker.ask_size is None


def _request_id(req_id: str | None) -> int | str | None:
    """Our request ids are integers sent as strings (ASCII digits, `read_request_id`); anything
    else is someone else's."""
    request_id = read_request_id(req_id)
    return req_id if request_id is None else request_id
