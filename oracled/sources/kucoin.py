"""KuCoin spot: best bid/ask from the ``/market/ticker`` topic, REST level-1 ticker as fallback.

Docs: https://www.kucoin.com/docs-new/websocket-api/base-info/introduction (token, welcome, ping),
https://www.kucoin.com/docs-new/3470063w0 (ticker topic) and
https://www.kucoin.com/docs-new/rate-limit

Wire sample (recorded live 2021-04-25)::

    {"data":{"sequence":"1613277183873","bestAsk":"242.951","size":"0.08000012",
     "bestBidSize":"0.68148185","price":"243.65","time":1619378326330,"bestAskSize":"4.51280965",
     "bestBid":"242.654"},"subject":"trade.ticker","topic":"/market/ticker:BCHSV-USDT",
     "type":"message"}

Every connection starts with ``POST /api/v1/bullet-public``, which hands out a token, the instance
server's endpoint and its ``pingInterval``/``pingTimeout`` (ms): that is the one start-up fetch the
venue requires, done in `connect_url` before each connection. The socket opens at
``{endpoint}?token=..&connectId=..`` (a configured ``ws_url`` replaces the endpoint's host; the
token still comes from the bullet call) and greets with ``{"id":..,"type":"welcome"}``;
subscriptions wait for it. Subscribe ``{"id":7,"type":"subscribe","topic":"/market/ticker:BTC-USDT,
ETH-USDT","privateChannel":false,"response":true}``, ack ``{"id":"7","type":"ack"}`` (the id comes
back as a string), refusal ``{"id":"7","type":"error","code":404,"data":"topic ... is not found"}``.
The client pings ``{"id":"..","type":"ping"}`` every ``pingInterval`` (answered by ``pong``); the
venue drops a client silent for longer than ``pingInterval + pingTimeout``.

Limits from the docs: 100 uplink messages per 10 s, 100 topics per subscribe, 400 topics per
connection, 30 connections a minute. The token is valid for 24 h and no longer connection life is
documented, so the config's default rotation (23 h) applies. ``time`` (ms) is carried as
``venue_ts``. The docs call it "the matching time of the latest transaction", which could be read
as the last trade's time; the venue's wire says otherwise: in a recorded session (2021-04-25, nine
symbols, 400 tickers) it moves on with every ticker whether or not anything traded (EQZ-BTC: 13
tickers over 9 s, one last price, no trade), stays on the ~100 ms push grid, and is 35 to 60 ms
before receipt whenever the connection was not bunching frames: the time of the latest
matching-engine event in the book, which is what staleness wants. The topic pushes only when the
book changed (every ticker has a new ``sequence``), so a book that stops changing sends nothing
and ages. ``sequence`` orders a symbol's tickers, and a ticker whose sequence is not newer than
the last one used on the connection is dropped (``dropped["out_of_order"]``), unless the base
judges that last sequence bad (`Source._counter_refused`: a sequence below half of it, or five
tickers in a row refused while their ``time`` is past its ticker's): then it is forgotten, so that
one far-ahead number cannot freeze a symbol until the next reconnect. ``price`` is the last trade
and travels as the quote's last price. REST level 1 answers the same ticker (its ``time`` and
``sequence`` are the book's); ``allTickers``' ``time`` is when that whole snapshot was made, not a
time of any book, so its rows carry no venue time and age from the quote that first showed their
bid and ask, streamed or polled (`Source._emit_polled`).

Decoding: a ticker in the documented shape is read in one pass with prices straight into floats
(several times cheaper than ``float()`` on decoded text). That pass also wants ``bestBidSize`` as a
decimal string, the venue's way of printing numbers; a frame without it (or with anything else out
of shape) is decoded again with text prices and judged by the strict rules, so that every bad frame
is named the same way. A frame whose sizes are strings but whose prices are bare JSON numbers is
read as those prices.

REST (Public pool, 2000 weight per 30 s per IP): ``GET /api/v1/market/orderbook/level1?symbol=``
costs 2 per symbol and ``GET /api/v1/market/allTickers`` 15 for all. Up to 7 symbols are polled one
by one (2 x 7 <= 15); more take one allTickers request a poll. At a 2 s poll both stay near 225
weight per 30 s, about a ninth of the pool. A spent pool (other clients on the same IP) answers
HTTP 429 with code 429000 and no ``Retry-After``: the wait until its quota resets is the header
``gw-ratelimit-reset``, in milliseconds, and the docs say to send nothing until then
(`rate_limit_wait_s`; at most the pool's 30 s window is believed).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Final, Literal

import aiohttp
import msgspec
from yarl import URL

from oracled.clock import Clock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sources._base import (
    UNDECODABLE,
    Source,
    read_capped,
    read_integer,
    read_request_id,
)
from oracled.sources.stats import SourceStats

__all__ = ["KucoinSource"]

#: A bullet's pingInterval outside these seconds is not believed; the documented one is 18.
_PING_BOUNDS_S: Final = (0.2, 120.0)
_TOPIC: Final = "/market/ticker:"
_LEVEL1_WEIGHT: Final = 2
_ALL_TICKERS_WEIGHT: Final = 15
#: The Public pool's window: its quota is reset within it, so a longer reset is not believed.
_POOL_WINDOW_S: Final = 30.0


class _Ticker(msgspec.Struct, gc=False):
    """A ticker read in one pass: prices and sequence straight into numbers (strict=False)."""

    sequence: int
    bestBid: float
    bestAsk: float
    bestBidSize: str  # the venue prints numbers as strings; see the module docstring
    time: int
    price: float | None = None


class _Message(msgspec.Struct, gc=False):
    type: Literal["message"]
    topic: str
    data: _Ticker


class _TextTicker(msgspec.Struct):
    """A ticker with text prices: REST answers and frames the one-pass decoder refused."""

    sequence: str
    bestBid: str
    bestAsk: str
    time: int
    price: msgspec.Raw = msgspec.Raw()


class _TextMessage(msgspec.Struct):
    type: str
    topic: str
    data: _TextTicker


class _Control(msgspec.Struct):
    """welcome, ack, pong, error and notices. Rare, so decoded second."""

    type: str
    id: str | int | None = None
    code: int | str | None = None
    data: msgspec.Raw = msgspec.Raw()  # an error's text; read only when it is one


class _Server(msgspec.Struct):
    endpoint: str
    pingInterval: int
    pingTimeout: int


class _BulletData(msgspec.Struct):
    token: str
    instanceServers: list[_Server]


class _Bullet(msgspec.Struct):
    code: str
    data: _BulletData | None = None


class _Level1(msgspec.Struct):
    code: str
    data: _TextTicker | None = None
    msg: str = ""


class _Row(msgspec.Struct):
    symbol: str
    buy: str | None = None
    sell: str | None = None
    last: msgspec.Raw = msgspec.Raw()


class _Snapshot(msgspec.Struct):
    time: int
    ticker: list[_Row]


class _AllTickers(msgspec.Struct):
    code: str
    data: _Snapshot | None = None
    msg: str = ""


_MESSAGE = msgspec.json.Decoder(_Message, strict=False)
_TEXT_MESSAGE = msgspec.json.Decoder(_TextMessage)
_CONTROL = msgspec.json.Decoder(_Control)
_BULLET = msgspec.json.Decoder(_Bullet)
_LEVEL1 = msgspec.json.Decoder(_Level1)
_ALL = msgspec.json.Decoder(_AllTickers)
_ENCODE = msgspec.json.Encoder()


class KucoinSource(Source):
    default_ws_url: ClassVar[str] = "wss://ws-api-spot.kucoin.com"
    default_rest_url: ClassVar[str | None] = "https://api.kucoin.com"
    max_symbols_per_request: ClassVar[int] = 100
    max_messages_per_s: ClassVar[int] = 10
    rest_batch_named: ClassVar[bool] = False  # allTickers names no symbol
    app_ping_interval_s: ClassVar[float | None] = 18.0  # replaced by the bullet's pingInterval
    #: No snapshot: the ticker topic pushes only when the book changed (each push has a new
    #: ``sequence``); in a recording, of ten symbols subscribed only those that moved sent one.
    snapshot_on_subscribe: ClassVar[bool] = False

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
        # The cheaper REST path by documented weight: one level-1 call per symbol, or allTickers.
        per_symbol = len(self.symbols) * _LEVEL1_WEIGHT <= _ALL_TICKERS_WEIGHT
        self.rest_batch_size = 1 if per_symbol else 1000  # type: ignore[misc]  # ClassVar in base
        self._last_seq: dict[str, int] = {}
        self._last_time: dict[str, int] = {}  # the venue time of the ticker that set each sequence
        self._topics = {_TOPIC + symbol: symbol for symbol in self.symbols}
        self._pings = itertools.count(1)
        self._url = self.ws_url
        self._welcomed = False
        self._asked: dict[int, float] = {}  # request id -> when it was sent
        self._rest_symbol = ""

    def venue_symbol(self, pair: str) -> str:
        return pair.replace("/", "-")

    def stream_url(self) -> str:
        """The URL of the current (or last) connection; without one, the configured host."""
        return self._url

    async def connect_url(self) -> str:
        """Ask ``bullet-public`` for a token and a server, then build that server's URL."""
        async with self._http.post(
            f"{self.rest_url}/api/v1/bullet-public", allow_redirects=False
        ) as resp:
            body = await read_capped(resp)
            if resp.status != 200:
                raise aiohttp.ClientError(f"bullet-public: HTTP {resp.status}: {body[:200]!r}")
        try:
            bullet = _BULLET.decode(body)
        except (msgspec.DecodeError, *UNDECODABLE) as exc:  # nested too deep, or not UTF-8
            raise aiohttp.ClientError(f"bullet-public: unreadable answer: {exc}") from exc
        if bullet.code != "200000" or bullet.data is None or not bullet.data.instanceServers:
            raise aiohttp.ClientError(f"bullet-public: refused: {body[:200]!r}")
        server = bullet.data.instanceServers[0]
        endpoint = URL(server.endpoint)
        if self.cfg.ws_url is not None:
            host = URL(self.cfg.ws_url)
            endpoint = endpoint.with_scheme(host.scheme).with_host(host.host or "")
            endpoint = endpoint.with_port(host.port)
        query = {"token": bullet.data.token, "connectId": uuid.uuid4().hex}
        self._url = str(endpoint.update_query(query))
        # The venue sets the ping cadence per connection; the base reads it when the socket opens.
        interval = server.pingInterval / 1000.0
        if not _PING_BOUNDS_S[0] <= interval <= _PING_BOUNDS_S[1]:
            # 0 would mean no pings (dropped by the venue), 1 ms a flood over its message limit.
            self._log.warning("bullet ping interval refused", ping_interval_ms=server.pingInterval)
            interval = type(self).app_ping_interval_s or 18.0
        self.app_ping_interval_s = interval  # type: ignore[misc]  # a ClassVar in the base
        self._welcomed = False
        # Sequences are compared within one connection only (as Binance USD-M's update ids): a
        # counter the venue restarted lower must not freeze a symbol until the daemon restarts.
        self._last_seq.clear()
        self._last_time.clear()
        return self._url

    def _queue_subscriptions(self) -> None:
        """Hold subscriptions until the welcome message: the venue ignores them before it."""

    def app_ping(self) -> str:
        return f'{{"id":"{next(self._pings)}","type":"ping"}}'

    def subscribe_message(self, request_id: int, symbols: Sequence[str]) -> str:
        self._asked[request_id] = self._clock.monotonic()
        topic = "/market/ticker:" + ",".join(symbols)
        return _ENCODE.encode(
            {
                "id": request_id,
                "type": "subscribe",
                "topic": topic,
                "privateChannel": False,
                "response": True,
            }
        ).decode()

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        try:
            msg = _MESSAGE.decode(data)
        except msgspec.DecodeError:
            self._text_message(data, recv_ts)
            return
        symbol = self._topics.get(msg.topic)
        if symbol is None:
            self._text_message(data, recv_ts)  # rare: let the strict path name what it is
            return
        tick, stats, last_seq = msg.data, self.stats, self._last_seq
        seq = tick.sequence
        bar = last_seq.get(symbol, 0)
        if seq <= bar and self._refused(symbol, bar, seq, tick.time):
            return
        quotes = stats.quotes
        self._quote(symbol, tick.bestBid, tick.bestAsk, recv_ts, tick.time, tick.price)
        if stats.quotes != quotes:  # only a price that was used moves the sequence on
            last_seq[symbol] = seq
            self._last_time[symbol] = tick.time

    def _refused(self, symbol: str, bar: int, seq: int, venue_ts: int) -> bool:
        """A ticker whose sequence is not above the symbol's: dropped as `out_of_order`, unless
        the base judges the kept one bad (then it is forgotten and the ticker used)."""
        bar_ts = self._last_time.get(symbol)
        return self._counter_refused(symbol, bar, bar_ts, seq, venue_ts, "out_of_order")

    def _text_message(self, data: str | bytes, recv_ts: int) -> None:
        """The strict path: text prices, then control messages."""
        try:
            msg = _TEXT_MESSAGE.decode(data)
        except msgspec.DecodeError:
            self._control(data)
            return
        if msg.type != "message" or not msg.topic.startswith(_TOPIC):
            self._bad("shape")
            return
        self._tick(msg.topic[len(_TOPIC) :], msg.data, recv_ts)

    def _tick(self, symbol: str, tick: _TextTicker, recv_ts: int) -> None:
        try:
            seq = read_integer(tick.sequence)
        except ValueError:
            self._bad_number(tick.sequence)
            return
        bar = self._last_seq.get(symbol, 0)
        if seq <= bar and self._refused(symbol, bar, seq, tick.time):
            return
        quotes = self.stats.quotes
        self._quote_texts(symbol, tick.bestBid, tick.bestAsk, recv_ts, tick.time, tick.price)
        if self.stats.quotes != quotes:  # only a price that was used moves the sequence on
            self._last_seq[symbol] = seq
            self._last_time[symbol] = tick.time

    def _control(self, data: str | bytes) -> None:
        frame = self._decoded(_CONTROL, data)
        if frame is None:
            return
        kind = frame.type
        request_id = frame.id
        if isinstance(request_id, str) and (ours := read_request_id(request_id)) is not None:
            request_id = ours  # ours are integers sent as text; others stay as they are
        if kind == "welcome":
            if not self._welcomed:
                self._welcomed = True
                super()._queue_subscriptions()
        elif kind == "ack":
            self._ack(request_id)
        elif kind == "error":
            try:
                text = msgspec.json.decode(frame.data) if frame.data else ""
            except msgspec.DecodeError:
                text = bytes(frame.data).decode(errors="replace")
            self._reject(request_id, f"{frame.code}: {text}")
        elif kind == "pong":
            self._on_pong()
        else:
            self._bad("shape")

    def _on_pong(self) -> None:
        """Pongs keep a socket alive, so check here that it is also a useful one.

        No welcome, or a subscription unanswered for a whole ping interval, means the venue lost
        our session state; waiting longer would hold a live but empty connection forever.
        """
        if not self._welcomed:
            self._rotate("no welcome before the first pong")
            return
        oldest = self._clock.monotonic() - (self.app_ping_interval_s or 0.0)
        for request_id, sent in list(self._asked.items()):
            if request_id not in self._pending:
                del self._asked[request_id]
            elif sent < oldest:
                self._rotate("subscription not acknowledged")
                return

    def rest_request(self, symbols: Sequence[str]) -> tuple[str, Mapping[str, str]] | None:
        if len(symbols) == 1:
            self._rest_symbol = symbols[0]
            return f"{self.rest_url}/api/v1/market/orderbook/level1", {"symbol": symbols[0]}
        self._rest_symbol = ""
        return f"{self.rest_url}/api/v1/market/allTickers", {}

    def rate_limit_wait_s(self, headers: Mapping[str, str]) -> float:
        """A 429 names the milliseconds until the pool's quota resets in ``gw-ratelimit-reset``
        (KuCoin sends no Retry-After); polls wait that long, at most the pool's window."""
        named = super().rate_limit_wait_s(headers)
        reset_ms = self._header_count(headers, "gw-ratelimit-reset")
        if not reset_ms:  # none, zero, or text that is no count (logged by the base)
            return named
        return max(named, min(reset_ms / 1000.0, _POOL_WINDOW_S))

    def on_rest(self, body: bytes, recv_ts: int) -> None:
        try:
            if self._rest_symbol:
                self._on_level1(_LEVEL1.decode(body), recv_ts)
            else:
                self._on_all(_ALL.decode(body), recv_ts)
        except msgspec.ValidationError:
            self._bad("shape")
        except msgspec.DecodeError:
            self._bad("decode")

    def _on_level1(self, reply: _Level1, recv_ts: int) -> None:
        if reply.code != "200000":
            self.stats.dropped["venue_error"] += 1
        elif reply.data is None:
            # An unlisted symbol's answer is undocumented: null reads as the symbol left out (the
            # silent scan lists it); a 400, which the base reads, as the symbol refused.
            self.stats.dropped["unknown_symbol"] += 1
        else:
            self._tick(self._rest_symbol, reply.data, recv_ts)

    def _on_all(self, reply: _AllTickers, recv_ts: int) -> None:
        if reply.code != "200000" or reply.data is None:
            self.stats.dropped["venue_error"] += 1
            return
        known = self._by_symbol  # data.time is the snapshot's, not a book's: not a venue time
        for row in reply.data.ticker:
            if row.symbol not in known:
                continue  # allTickers lists the whole venue
            if row.buy is None or row.sell is None:
                self._bad("no_book")
                continue
            self._quote_texts(row.symbol, row.buy, row.sell, recv_ts, None, row.last)
