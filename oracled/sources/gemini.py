"""Gemini: top of book from the v2 market-data ``l2`` feed, REST ``pubticker`` as fallback.

Docs: https://docs.gemini.com/websocket/market-data/v2/about (now filed by Gemini under its
archived WebSocket APIs, still served), https://docs.gemini.com/rest/market-data and
https://developer.gemini.com/rate-limit

Wire sample (``wss://api.gemini.com/v2/marketdata``, recorded live; shortened)::

    {"type":"l2_updates","symbol":"FILUSD","changes":[["buy","58.3107","46.501"],
     ["buy","58.3447","0"],["sell","58.5212","0"],["sell","58.4872","48.617"]]}

Subscribe ``{"type":"subscribe","subscriptions":[{"name":"l2","symbols":["BTCUSD"]}]}``. The first
``l2_updates`` of a symbol (it also carries ``trades`` and ``auction_events``) is the whole book;
later ones change levels (``[side, price, quantity]``, quantity 0 removes the level). A book per
symbol is kept (hundreds of levels a side on a real snapshot; the next best price is found in a
heap when the best level leaves) and its best bid and ask are published after every update. The
venue sends no subscription ack: the snapshot of every symbol in a request acknowledges it. Errors
are not documented for v2; a frame ``{"type":"error",...}`` (or Gemini's ``"result":"error"``)
refuses the oldest open request, and a request still without its snapshots when a heartbeat shows
the connection alive past the liveness timeout is refused the same way. ``heartbeat`` frames (every
5 s) and ``trade`` frames show life; the book messages carry no time, so quotes have no
``venue_ts`` (trade times are not attached to book quotes: mixing venue and receive stamps in one
feed would make the core's ordering check compare two clocks). The price of the newest trade (from
a ``trade`` frame, or the snapshot's ``trades``) rides along as the quotes' last price. Book diffs
have no sequence numbers, so a replayed diff cannot be told apart; a book left crossed by one is
rebuilt from a fresh snapshot by reconnecting (``book_crossed``).
No maximum connection life is documented; the configured rotation applies. The REST fallback,
``GET /v1/pubticker/{symbol}``, is `PubtickerPolls`, which `GeminiWsSource` polls through too. Its
public limit counts our IP (no key is sent) and answers 429 until the rate drops: a 429 rests every
source polling the same REST host (`oracled.sources.hostrests`), for one poll interval (no
``Retry-After`` is documented).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from heapq import heapify, heappop, heappush
from operator import neg
from typing import Annotated, ClassVar, Final, Literal

import aiohttp
import msgspec

from oracled.clock import Clock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sources._base import Source, read_decimal
from oracled.sources.stats import SourceStats

__all__ = ["GeminiSource", "PubtickerPolls"]

_INF: Final = math.inf
# Levels a side may hold and still be scanned for its next best price (see `_Book`).
_SCAN: Final = 32

# The fast path reads an ``l2_updates`` message, diff or snapshot, in one pass: prices and
# quantities parsed straight into floats by msgspec (strict=False), the ranges checked there too (a
# positive finite price, a quantity >= 0), a snapshot's trades read as (event id, price) and every
# other field skipped unread. A snapshot of hundreds of levels then costs about its bare decode
# plus one pass over its levels. Gemini quotes its decimals, but a bare JSON number is a valid
# price or quantity too, on both paths (as on Binance spot). Whatever the fast path refuses
# (trades, heartbeats, errors, any bad level or trade) takes the slow path below, which names the
# reason exactly.
_Price = Annotated[float, msgspec.Meta(gt=0.0, lt=sys.float_info.max)]
_Qty = Annotated[float, msgspec.Meta(ge=0.0, lt=sys.float_info.max)]


class _L2(msgspec.Struct, gc=False):
    type: Literal["l2_updates"]
    symbol: str
    changes: list[tuple[Literal["buy", "sell"], _Price, _Qty]]
    # Present on the initial snapshot only; read by a strict decoder of its own (`_last_trade`).
    trades: msgspec.Raw = msgspec.Raw()


class _Message(msgspec.Struct):
    type: str = ""
    result: str = ""
    symbol: str = ""
    changes: list[tuple[str, str | float, str | float]] | None = None
    trades: list[msgspec.Raw] | None = None  # present on the initial snapshot only
    reason: str = ""
    message: str = ""
    price: str | float = ""  # of a trade frame


class _Trade(msgspec.Struct):
    event_id: int
    price: str | float


_FAST = msgspec.json.Decoder(_L2, strict=False)
_DECODE = msgspec.json.Decoder(_Message)
_TRADE = msgspec.json.Decoder(_Trade)
_TRADES = msgspec.json.Decoder(list[_Trade])
_RAWS = msgspec.json.Decoder(list[msgspec.Raw])
_ENCODE = msgspec.json.Encoder()
_LIFE: Final = frozenset({"heartbeat", "trade"})


class _Book:
    """One symbol's price levels, its best bid and ask (-inf/inf when a side is empty) and the
    last traded price seen on this connection.

    When the best level of a side leaves, the next best is found by a scan of a small side, or
    from a heap of the side's prices (bids negated), built at the first such loss and kept up by
    pushing every new price: a real book holds hundreds of levels, and its best one leaves with
    every trade through it. Prices removed from the side stay in the heap until they reach its
    top; the heap is dropped (and rebuilt when next needed) once they outnumber the levels.
    """

    __slots__ = ("ask", "ask_heap", "asks", "bid", "bid_heap", "bids", "last")

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.bid = -_INF
        self.ask = _INF
        self.last: float | None = None
        self.bid_heap: list[float] | None = None
        self.ask_heap: list[float] | None = None

    def next_bid(self) -> float:
        """The best bid after the best one left (see the class docstring)."""
        bids = self.bids
        if len(bids) <= _SCAN:
            self.bid_heap = None
            return max(bids) if bids else -_INF
        heap = self.bid_heap
        if heap is None:
            heap = self.bid_heap = list(map(neg, bids))
            heapify(heap)
        while -heap[0] not in bids:  # every price in the book is in the heap: it stops there
            heappop(heap)
        return -heap[0]

    def next_ask(self) -> float:
        """The best ask after the best one left (see the class docstring)."""
        asks = self.asks
        if len(asks) <= _SCAN:
            self.ask_heap = None
            return min(asks) if asks else _INF
        heap = self.ask_heap
        if heap is None:
            heap = self.ask_heap = list(asks)
            heapify(heap)
        while heap[0] not in asks:
            heappop(heap)
        return heap[0]

    def trim(self) -> None:
        """Drop a heap whose removed prices outnumber the side's levels (see the docstring)."""
        heap = self.bid_heap
        if heap is not None and len(heap) > 2 * len(self.bids) + _SCAN:
            self.bid_heap = None
        heap = self.ask_heap
        if heap is not None and len(heap) > 2 * len(self.asks) + _SCAN:
            self.ask_heap = None

    def apply(self, changes: Iterable[tuple[str, float, float]]) -> None:
        """Apply checked levels; the best price is kept as levels come and go, and the next best
        is looked for only when the best level was removed (once per message, not per level)."""
        bids, asks, bid, ask = self.bids, self.asks, self.bid, self.ask
        bid_heap, ask_heap = self.bid_heap, self.ask_heap
        lost_bid = lost_ask = False
        for side, price, qty in changes:
            if side == "buy":
                if qty:
                    if bid_heap is not None and price not in bids:
                        heappush(bid_heap, -price)
                    bids[price] = qty
                    if price > bid:
                        bid = price
                elif price <= bid:  # a level above the best bid is not in the book
                    try:
                        del bids[price]
                    except KeyError:  # not in the book either: nothing to remove
                        continue
                    if price == bid:
                        lost_bid = True
            elif qty:
                if ask_heap is not None and price not in asks:
                    heappush(ask_heap, price)
                asks[price] = qty
                if price < ask:
                    ask = price
            elif price >= ask:
                try:
                    del asks[price]
                except KeyError:
                    continue
                if price == ask:
                    lost_ask = True
        self.bid = self.next_bid() if lost_bid else bid
        self.ask = self.next_ask() if lost_ask else ask
        if bid_heap is not None or ask_heap is not None:
            self.trim()


def _level(change: tuple[str, str | float, str | float]) -> tuple[str, float, float] | str:
    """(side, price, quantity) of one change, or the reason it is unusable."""
    side, price_s, qty_s = change
    if side not in ("buy", "sell"):
        return "shape"
    try:
        price, qty = read_decimal(price_s), read_decimal(qty_s)
    except ValueError:
        return "bad_number"
    if not 0.0 < price < _INF:
        return "non_positive" if math.isfinite(price) else "not_finite"
    if not 0.0 <= qty < _INF:
        return "bad_quantity"
    return side, price, qty


def _newest(trades: Iterable[tuple[int, float]]) -> float | None:
    """The price of the newest of a snapshot's (event id, price) trades (none: None)."""
    newest, price = -1, None
    for event_id, value in trades:
        if event_id > newest:
            newest, price = event_id, value
    return price


def _last_trade(trades: msgspec.Raw) -> float | None:
    """The newest trade price of a snapshot's ``trades``: one decode of the whole list, or trade
    by trade (skipping the unreadable ones) if the list cannot be read in one piece. Raises
    `msgspec.DecodeError` if ``trades`` is not a list at all."""
    try:
        return _newest([(t.event_id, read_decimal(t.price)) for t in _TRADES.decode(trades)])
    except (msgspec.DecodeError, ValueError):
        return _newest(_readable(_RAWS.decode(trades)))


def _readable(trades: Iterable[msgspec.Raw]) -> Iterator[tuple[int, float]]:
    """(event id, price) of every trade of a snapshot that can be read; the rest are skipped."""
    for raw in trades:
        try:
            trade = _TRADE.decode(raw)
            yield trade.event_id, read_decimal(trade.price)
        except (msgspec.DecodeError, ValueError):
            continue


class _RestTicker(msgspec.Struct):
    bid: str
    ask: str


_REST = msgspec.json.Decoder(_RestTicker)


class PubtickerPolls(Source):
    """Gemini's REST fallback, shared by both Gemini adapters (their streams differ, their REST
    does not): ``GET /v1/pubticker/{symbol}`` serves one symbol (``rest_batch_size = 1``), and its
    body does not name it. Public endpoints allow 120 requests a minute and Gemini asks for at
    most one a second, so polls are paced at one a second after a burst of five. No key is sent,
    so the limit can only count our IP: the sources polling one host, `gemini` and `gemini_ws`
    alike, take their turns from one pacer (`rest_rate_per_ip`), and a 429 met by one rests them
    all (`_fetch`)."""

    default_rest_url: ClassVar[str | None] = "https://api.gemini.com"
    rest_batch_size: ClassVar[int] = 1
    #: REST pacing: Gemini asks for at most one public request a second (limit 120 a minute).
    rest_rate_per_s: ClassVar[float] = 1.0
    rest_burst: ClassVar[float] = 5.0
    #: That limit is the IP's: two sources each paced at one a second would send two together.
    rest_rate_per_ip: ClassVar[bool] = True
    #: The symbol of the poll in flight (set per instance by `rest_request`).
    _rest_symbol: str = ""

    def rest_request(self, symbols: Sequence[str]) -> tuple[str, Mapping[str, str]] | None:
        # Polls run one at a time in one task, so the answer to this request is the next body.
        # The path takes the symbol in lower case, whichever case the stream names it in.
        self._rest_symbol = symbols[0]
        return f"{self.rest_url}/v1/pubticker/{symbols[0].lower()}", {}

    async def _fetch(
        self, url: str, query: Mapping[str, str]
    ) -> tuple[int | None, bytes, str | None]:
        """The base's GET; a 429 is the IP's limit, answered to every request until our rate
        drops (rate-limit page): every source polling the host rests with this one."""
        status, body, error = await super()._fetch(url, query)
        if status == 429:
            self._limit_ip_wide = True
        return status, body, error

    def on_rest(self, body: bytes, recv_ts: int) -> None:
        ticker = self._decoded(_REST, body)
        if ticker is None:
            return
        self._quote_text(self._rest_symbol, ticker.bid, ticker.ask, recv_ts)


class GeminiSource(PubtickerPolls):
    default_ws_url: ClassVar[str] = "wss://api.gemini.com"
    max_symbols_per_request: ClassVar[int] = 50
    max_messages_per_s: ClassVar[int] = 5
    #: A symbol's first ``l2_updates`` after subscribing is its whole book (docs).
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
        self._books: dict[str, _Book] = {}
        self._asked: dict[int, float] = {}  # request id -> when it was sent
        self._resyncing = False

    def venue_symbol(self, pair: str) -> str:
        """BTC/USD -> BTCUSD."""
        return pair.replace("/", "").upper()

    def stream_url(self) -> str:
        return f"{self.ws_url}/v2/marketdata"

    def _queue_subscriptions(self) -> None:
        """Per connection: books start empty and are rebuilt from the snapshots."""
        self._books.clear()
        self._asked.clear()
        self._resyncing = False
        super()._queue_subscriptions()

    def subscribe_message(self, request_id: int, symbols: Sequence[str]) -> str:
        self._asked[request_id] = self._clock.monotonic()
        body = {"type": "subscribe", "subscriptions": [{"name": "l2", "symbols": list(symbols)}]}
        return _ENCODE.encode(body).decode()

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        try:
            diff = _FAST.decode(data)
        except msgspec.DecodeError:
            self._slow(data, recv_ts)
            return
        symbol = diff.symbol
        book = self._books.get(symbol)
        trades = diff.trades
        if trades:  # a snapshot
            try:
                last = _last_trade(trades)
            except msgspec.DecodeError:  # trades that are not a list (or null): the slow path
                self._slow(data, recv_ts)
                return
            self._l2(symbol, diff.changes, True, last, recv_ts)
            return
        if book is None or self._resyncing:
            self._l2(symbol, diff.changes, False, None, recv_ts)  # unknown, resync or first diff
            return
        # The common case, a diff applied to a live book, inline (what `_Book.apply` does).
        bids, asks, bid, ask = book.bids, book.asks, book.bid, book.ask
        bid_heap, ask_heap = book.bid_heap, book.ask_heap
        lost_bid = lost_ask = False
        for side, price, qty in diff.changes:
            if side == "buy":
                if qty:
                    if bid_heap is not None and price not in bids:
                        heappush(bid_heap, -price)
                    bids[price] = qty
                    if price > bid:
                        bid = price
                elif price <= bid:  # a level above the best bid is not in the book
                    try:
                        del bids[price]
                    except KeyError:  # not in the book either: nothing to remove
                        continue
                    if price == bid:
                        lost_bid = True
            elif qty:
                if ask_heap is not None and price not in asks:
                    heappush(ask_heap, price)
                asks[price] = qty
                if price < ask:
                    ask = price
            elif price >= ask:
                try:
                    del asks[price]
                except KeyError:
                    continue
                if price == ask:
                    lost_ask = True
        if lost_bid:  # a small side without a heap is scanned here, as `next_bid` would
            if bid_heap is None and len(bids) <= _SCAN:
                bid = max(bids) if bids else -_INF
            else:
                bid = book.next_bid()
        if lost_ask:
            if ask_heap is None and len(asks) <= _SCAN:
                ask = min(asks) if asks else _INF
            else:
                ask = book.next_ask()
        book.bid = bid
        book.ask = ask
        if bid_heap is not None or ask_heap is not None:
            book.trim()
        if -_INF < bid <= ask < _INF:
            self._quote(symbol, bid, ask, recv_ts, None, book.last)
        else:
            self._top(symbol, book, recv_ts)

    def _slow(self, data: str | bytes, recv_ts: int) -> None:
        """Every frame the fast path refused: snapshots, trades, heartbeats, errors, bad frames."""
        msg = self._decoded(_DECODE, data)
        if msg is None:
            return
        kind = msg.type
        if kind == "l2_updates" and msg.changes is not None:
            self._l2_text(msg.symbol, msg.changes, msg.trades, recv_ts)
        elif kind in _LIFE:
            if kind == "trade":
                self._trade(msg)
            self._overdue()
        elif kind == "error" or msg.result == "error":
            text = ": ".join(filter(None, (msg.reason, msg.message))) or "error"
            self._reject(next(iter(self._pending), None), text)
        elif kind and kind != "l2_updates":
            self.stats.dropped["other_channel"] += 1
        else:
            self._bad("shape")

    def _l2_text(
        self,
        symbol: str,
        changes: list[tuple[str, str | float, str | float]],
        trades: list[msgspec.Raw] | None,
        recv_ts: int,
    ) -> None:
        """A snapshot or a diff the fast path refused: levels checked one by one."""
        levels: list[tuple[str, float, float]] = []
        if symbol in self._by_symbol and not self._resyncing:  # else `_l2` counts why not
            for change in changes:
                level = _level(change)
                if level == "bad_number":
                    self._bad_number(change[1], change[2])
                    return
                if isinstance(level, str):
                    self._bad(level)  # the whole message is left out: a partial diff is worse
                    return
                levels.append(level)
        last = None if trades is None else _newest(_readable(trades))
        self._l2(symbol, levels, trades is not None, last, recv_ts)

    def _l2(
        self,
        symbol: str,
        levels: Sequence[tuple[str, float, float]],
        snapshot: bool,
        last: float | None,
        recv_ts: int,
    ) -> None:
        """Apply checked levels; a snapshot starts a new book, its newest trade as `last`."""
        if symbol not in self._by_symbol:
            self.stats.dropped["unknown_symbol"] += 1
            return
        if self._resyncing:
            self.stats.dropped["resync"] += 1
            return
        book = self._books.get(symbol)
        if book is None or snapshot:
            book = self._new_book(symbol)
            book.last = last
        book.apply(levels)
        self._top(symbol, book, recv_ts)

    def _new_book(self, symbol: str) -> _Book:
        """A snapshot starts the symbol's book afresh and may settle the request that asked."""
        book = self._books[symbol] = _Book()
        self._snapshot(symbol)
        return book

    def _top(self, symbol: str, book: _Book, recv_ts: int) -> None:
        """Quote the book's best bid and ask; a crossed book is rebuilt from new snapshots."""
        bid, ask = book.bid, book.ask
        if bid == -_INF or ask == _INF:
            self.stats.dropped["one_sided"] += 1
        elif bid > ask:
            self._bad("crossed")
            self._resyncing = True
            self._rotate("book_crossed")
        else:
            self._quote(symbol, bid, ask, recv_ts, None, book.last)

    def _trade(self, msg: _Message) -> None:
        """Keep a trade's price as the symbol's last price; quotes carry it from then on."""
        book = self._books.get(msg.symbol)
        if book is not None:
            # An unreadable trade is only a sign of life; `_quote` leaves out a bad last price.
            with contextlib.suppress(ValueError):
                book.last = read_decimal(msg.price)

    def _overdue(self) -> None:
        """A request still without snapshots after the liveness timeout counts as refused.

        The venue may ignore a request (or a silent spell may have swallowed it) while its
        heartbeats keep the socket alive; refusing splits the batch and retries, and a symbol
        refused alone is marked failed instead of reconnecting again and again.
        """
        limit = self._clock.monotonic() - self.cfg.liveness_timeout_s
        asked = self._asked
        for request_id in [r for r in self._pending if asked.get(r, limit) < limit]:
            self._reject(request_id, "no snapshot within the liveness timeout")

    def _snapshot(self, symbol: str) -> None:
        """A symbol's snapshot arrived: acknowledge every request whose symbols all have one."""
        done = self._books
        for request_id, symbols in list(self._pending.items()):
            if symbol in symbols and all(s in done for s in symbols):
                self._ack(request_id)
