"""Gemini: top of book from the v2 market-data ``l2`` feed, REST ``pubticker`` as fallback.

Docs: https://docs.gemini.com/websocket/market-data/v2/about (now filed by Gemini under its
archived WebSocket APIs, still served), https://docs.gemini.com/rest/market-data and
https://developer.gemini.com/rate-limit

Wire sample (``wss://api.gemini.com/v2/marketdata``, recorded live; shortened)::

    {"type":"l2_updates","symbol":"FILUSD","changes":[["buy","58.3107","46.501"],
     ["buy","58.3447","0"],["sell","58.5212","0"],["sell","58.4872","48.617"]]}

Subscribe ``{"type":"subscribe","subscriptions":[{"name":"l2","symbols":["BTCUSD"]}]}``. The first
``l2_updates`` of a symbol (it also carries ``trades`` and ``auction_events``) is the whole book;
later ones change levels (``[side, price, quantity]``, quantity 0 removes the level). A small book
per symbol is kept and its best bid and ask are published after every update. The venue sends no
subscription ack: the snapshot of every symbol in a request acknowledges it. Errors are not
documented for v2; a frame ``{"type":"error",...}`` (or Gemini's ``"result":"error"``) refuses the
oldest open request, and a request still without its snapshots when a heartbeat shows the
connection alive past the liveness timeout is refused the same way. ``heartbeat`` frames (every
5 s) and ``trade`` frames show life; the book messages carry no time, so quotes have no
``venue_ts`` (trade times are not attached to book quotes: mixing venue and receive stamps in one
feed would make the core's ordering check compare two clocks). Book diffs have no sequence
numbers, so a replayed diff cannot be told apart; a book left crossed by one is rebuilt from a
fresh snapshot by reconnecting (``book_crossed``).
No maximum connection life is documented; the configured rotation applies. REST
``GET /v1/pubticker/{symbol}`` serves one symbol (``rest_batch_size = 1``); public endpoints allow
120 requests a minute and Gemini asks for at most one a second, so polls are paced at one a second
after a burst of five.
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
from oracled.sources._base import Source
from oracled.sources.stats import SourceStats

__all__ = ["GeminiSource"]

_INF: Final = math.inf


class _Message(msgspec.Struct):
    type: str = ""
    result: str = ""
    symbol: str = ""
    changes: list[tuple[str, str, str]] | None = None
    trades: list[msgspec.Raw] | None = None  # present on the initial snapshot only
    reason: str = ""
    message: str = ""


class _RestTicker(msgspec.Struct):
    bid: str
    ask: str


_DECODE = msgspec.json.Decoder(_Message)
_REST = msgspec.json.Decoder(_RestTicker)
_ENCODE = msgspec.json.Encoder()
_LIFE: Final = frozenset({"heartbeat", "trade"})


class _Side:
    """Price levels of one side, with the best price kept up to date."""

    __slots__ = ("best", "bids", "levels")

    def __init__(self, bids: bool) -> None:
        self.bids = bids
        self.levels: dict[float, float] = {}
        self.best: float | None = None

    def set(self, price: float, qty: float) -> None:
        if qty == 0.0:
            if self.levels.pop(price, None) is not None and price == self.best:
                self.best = (max if self.bids else min)(self.levels, default=None)
            return
        self.levels[price] = qty
        best = self.best
        if best is None or (price > best if self.bids else price < best):
            self.best = price


def _level(change: tuple[str, str, str]) -> tuple[bool, float, float] | str:
    """(is_bid, price, quantity) of one change, or the reason it is unusable."""
    side, price_s, qty_s = change
    if side not in ("buy", "sell"):
        return "shape"
    try:
        price, qty = float(price_s), float(qty_s)
    except ValueError:
        return "bad_number"
    if not 0.0 < price < _INF:
        return "non_positive" if math.isfinite(price) else "not_finite"
    if not 0.0 <= qty < _INF:
        return "bad_quantity"
    return side == "buy", price, qty


class GeminiSource(Source):
    default_ws_url: ClassVar[str] = "wss://api.gemini.com"
    default_rest_url: ClassVar[str | None] = "https://api.gemini.com"
    max_symbols_per_request: ClassVar[int] = 50
    max_messages_per_s: ClassVar[int] = 5
    rest_batch_size: ClassVar[int] = 1
    #: REST pacing: Gemini asks for at most one public request a second (limit 120 a minute).
    rest_rate_per_s: ClassVar[float] = 1.0
    rest_burst: ClassVar[float] = 5.0

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
        self._books: dict[str, tuple[_Side, _Side]] = {}
        self._asked: dict[int, float] = {}  # request id -> when it was sent
        self._resyncing = False
        self._rest_symbol = ""

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
            msg = _DECODE.decode(data)
        except msgspec.ValidationError:
            self._bad("shape")
            return
        except msgspec.DecodeError:
            self._bad("decode")
            return
        kind = msg.type
        if kind == "l2_updates" and msg.changes is not None:
            self._l2(msg, recv_ts)
        elif kind in _LIFE:
            self._overdue()
        elif kind == "error" or msg.result == "error":
            text = ": ".join(filter(None, (msg.reason, msg.message))) or "error"
            self._reject(next(iter(self._pending), None), text)
        elif kind and kind != "l2_updates":
            self.stats.dropped["other_channel"] += 1
        else:
            self._bad("shape")

    def _l2(self, msg: _Message, recv_ts: int) -> None:
        symbol = msg.symbol
        if symbol not in self._by_symbol:
            self.stats.dropped["unknown_symbol"] += 1
            return
        if self._resyncing:
            self.stats.dropped["resync"] += 1
            return
        levels: list[tuple[bool, float, float]] = []
        for change in msg.changes or ():
            level = _level(change)
            if isinstance(level, str):
                self._bad(level)  # the whole message is left out: a partial diff is worse
                return
            levels.append(level)
        book = self._books.get(symbol)
        if book is None or msg.trades is not None:
            book = self._books[symbol] = (_Side(bids=True), _Side(bids=False))
            self._snapshot(symbol)
        bids, asks = book
        for is_bid, price, qty in levels:
            (bids if is_bid else asks).set(price, qty)
        bid, ask = bids.best, asks.best
        if bid is None or ask is None:
            self.stats.dropped["one_sided"] += 1
            return
        if bid > ask:
            self._bad("crossed")
            self._resyncing = True
            self._rotate("book_crossed")
            return
        self._quote(symbol, bid, ask, recv_ts)

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

    def rest_request(self, symbols: Sequence[str]) -> tuple[str, Mapping[str, str]] | None:
        # Polls run one at a time in one task, so the answer to this request is the next body.
        self._rest_symbol = symbols[0]
        return f"{self.rest_url}/v1/pubticker/{symbols[0].lower()}", {}

    def on_rest(self, body: bytes, recv_ts: int) -> None:
        try:
            ticker = _REST.decode(body)
        except msgspec.ValidationError:
            self._bad("shape")
            return
        except msgspec.DecodeError:
            self._bad("decode")
            return
        self._quote_text(self._rest_symbol, ticker.bid, ticker.ask, recv_ts)
