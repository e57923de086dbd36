"""Coinbase Advanced Trade: best bid/ask from the public ``ticker`` channel, REST as fallback.

Docs: https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-overview,
https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels and
https://docs.cdp.coinbase.com/api-reference/advanced-trade-api/rest-api/public/get-public-market-trades

Wire sample (``ticker`` channel, as published in the venue's documentation)::

    {"channel":"ticker","client_id":"","timestamp":"2026-04-07T14:30:03.000000Z","sequence_num":12,
     "events":[{"type":"snapshot","tickers":[{"type":"ticker","product_id":"BTC-USD",
     "price":"68900.50","best_bid":"68900.00","best_bid_quantity":"1.50000000",
     "best_ask":"68901.00","best_ask_quantity":"0.50000000", ...}]}]}

Subscribe ``{"type":"subscribe","product_ids":["BTC-USD"],"channel":"ticker"}`` and, in a second
message (one channel per message), ``{"type":"subscribe","channel":"heartbeats"}``: public channels
need no JWT. Each subscribe is answered, in order, by a ``subscriptions`` message listing everything
the connection is subscribed to; the venue's error frame ``{"type":"error","message":...}`` names no
request, so both are matched to the oldest unanswered request (first in, first out). A symbol
missing from the acknowledged list counts as refused.

Rules from the docs that shape this file: most channels close after 60-90 s without updates, so
the ``heartbeats`` channel (one message a second) is always subscribed and keeps quiet products
alive for the watchdog. The docs do not say what ``sequence_num`` counts (one counter per
connection, per channel or per product), so it is read in the one way that holds for all three:
each product's ticker messages must come with rising numbers on a connection. A ticker message
whose number is not above that product's last one is a replay and is dropped
(``stale_sequence``), and one more than a thousand below it means the count restarted (or the last
number was garbage), so the connection is replaced at once, as planned (never down, no backoff, no
REST), rather than every later message of the product refused (counted in ``sequence_resets``).
Other channels' numbers are not checked: they carry no price;
the envelope ``timestamp`` (RFC 3339, nanoseconds in the docs' samples) is the venue time of the
quote, taken to the exact millisecond. Each subscription is answered with a ``snapshot`` event
(then ``update`` events): its time is when it was sent, and the ticker has none of its own; a
snapshot repeating the book of the product's last quote is dropped as ``unchanged`` by the
connection's first-quote filter (`Source._emit_first`, docs/sources.md, Venue time and
staleness). Unauthenticated messages are limited to 8 a second per IP. No maximum connection
life is documented; the configured rotation applies.
``-USDC`` products are served on market-data channels with the data of the ``-USD`` book, so a
``-USDC`` symbol also accepts frames for its ``-USD`` twin when that twin is not configured itself
(and is silent only when neither name quotes it: the twin is no instrument of its own).
REST: the public ``GET /api/v3/brokerage/market/products/{product_id}/ticker`` serves one product
(``rest_batch_size = 1``); public endpoints allow 10 requests a second per IP, and polls are paced
at 8 a second with a burst of 8. Its ``best_bid``/``best_ask`` carry no book time, so REST quotes
have no ``venue_ts``; its latest trade (``limit=1``) gives the last price. The docs do not say how
an unknown product is answered; a 400, or a 404 whose error envelope
(``{"error":"NOT_FOUND","error_details":...,"message":...}``) says ``NOT_FOUND``, refuses that one
product (marked failed, left out of later polls); any other 404 (a wrong path, a proxy's page)
fails the request, and the source is down.

The ticker's ``price`` (last trade) travels as the quote's last price. Decoding: a ticker message in
the documented shape is read in one pass with prices straight into floats (strict=False), several
times cheaper than ``float()`` on decoded text. That pass also wants ``best_bid_quantity`` as a
decimal string, the venue's way of printing numbers; anything else (heartbeats, acks, errors, a
ticker out of shape) is decoded again with text prices and judged by the strict rules, so that
every bad frame is named the same way. A ticker whose quantities are strings but whose prices are
bare JSON numbers is read as those prices. The time is read as text: the first one of each second
is parsed in full (digits past the microsecond cut, since a datetime would round nanoseconds up
into the next millisecond), later UTC times of that second are its millisecond digits added on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Final, Literal

import aiohttp
import msgspec

from oracled.clock import Clock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sources._base import UNDECODABLE, Source
from oracled.sources.stats import SourceStats

__all__ = ["CoinbaseSource"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_KNOWN: Final = frozenset({"ticker", "heartbeats", "subscriptions"})


# An RFC 3339 time with its offset: a local time could not be placed on the epoch.
_Stamp = Annotated[datetime, msgspec.Meta(tz=True)]
_STAMP = msgspec.json.Decoder(_Stamp)


def _exact_ms(text: str) -> int | None:
    """Whole milliseconds (floor) of an RFC 3339 time with offset; None if it is not one.

    Digits past the microsecond are cut first: msgspec rounds them to the nearest microsecond,
    which carries ``.122999572`` into millisecond 123 (a datetime cannot hold nanoseconds).
    """
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        if digits > 6:
            text = f"{head}.{rest[:6]}{rest[digits:]}"
    try:
        stamp = _STAMP.decode(_ENCODE.encode(text))
    except msgspec.DecodeError:
        return None
    d = stamp - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000


# Epoch ms of the seconds seen lately, by their text up to the seconds' end with the dot
# ("2023-06-23T20:31:26."): a UTC time in one of them is read as its millisecond digits added on.
_SECONDS: dict[str, int] = {}
_SECONDS_KEPT: Final = 64
#: A sequence number this far below the last one is no replay: the venue restarted its count on
#: this connection (or the last number was garbage). Every later message would be refused.
_SEQUENCE_RESET: Final = 1_000


def _venue_ms(stamp: str) -> int | None:
    """`_exact_ms`, and the second of a UTC time with a fraction remembered in `_SECONDS`."""
    ms = _exact_ms(stamp)
    if ms is not None and stamp[19:20] == "." and stamp[-1] == "Z":
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()
        _SECONDS[stamp[:20]] = ms - ms % 1000
    return ms


class _FastTicker(msgspec.Struct, gc=False):
    """A ticker read in one pass: prices straight into floats; see the module docstring."""

    product_id: str
    best_bid: float
    best_ask: float
    best_bid_quantity: str
    price: float | None = None


class _FastEvent(msgspec.Struct, gc=False):
    tickers: list[_FastTicker]


class _FastMessage(msgspec.Struct, gc=False):
    channel: Literal["ticker"]
    timestamp: str  # read exactly by `_venue_ms`, or in the `_SECONDS` it remembers
    sequence_num: int
    events: list[_FastEvent]


class _Ticker(msgspec.Struct):
    product_id: str
    best_bid: str
    best_ask: str
    price: msgspec.Raw = msgspec.Raw()


class _Event(msgspec.Struct):
    tickers: list[_Ticker] | None = None
    subscriptions: dict[str, list[str]] | None = None


class _Message(msgspec.Struct):
    """Every frame of the feed: channel messages and the channel-less error frame."""

    channel: str = ""
    type: str = ""
    message: str = ""
    reason: str = ""
    timestamp: str | None = None  # RFC 3339 with offset, or the frame is out of shape
    sequence_num: int = -1
    events: list[_Event] = []


class _RestTrade(msgspec.Struct):
    price: msgspec.Raw = msgspec.Raw()


class _RestTicker(msgspec.Struct):
    best_bid: str
    best_ask: str
    trades: list[_RestTrade] = []


class _RestError(msgspec.Struct):
    """The venue's REST error envelope (``error`` is a code such as ``NOT_FOUND``)."""

    error: str = ""


def _usd_twin(symbol: str) -> str | None:
    """BTC-USDC -> BTC-USD: the book whose data the venue serves for a -USDC product."""
    return symbol[:-1] if symbol.endswith("-USDC") else None


_FAST = msgspec.json.Decoder(_FastMessage, strict=False)
_DECODE = msgspec.json.Decoder(_Message)
_REST = msgspec.json.Decoder(_RestTicker)
_REST_ERROR = msgspec.json.Decoder(_RestError)
_ENCODE = msgspec.json.Encoder()


class CoinbaseSource(Source):
    default_ws_url: ClassVar[str] = "wss://advanced-trade-ws.coinbase.com"
    default_rest_url: ClassVar[str | None] = "https://api.coinbase.com"
    max_symbols_per_request: ClassVar[int] = 100
    max_messages_per_s: ClassVar[int] = 8
    rest_batch_size: ClassVar[int] = 1
    #: REST pacing inside the public limit of 10 requests a second per IP.
    rest_rate_per_s: ClassVar[float] = 8.0
    rest_burst: ClassVar[float] = 8.0
    #: A restarted sequence_num is the venue's count, not our link, failing: replace as planned.
    planned_cuts: ClassVar[frozenset[str]] = Source.planned_cuts | {"sequence_reset"}
    #: The ``ticker`` channel answers each subscription with a ``snapshot`` event (docs).
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
        for symbol in self.symbols:
            twin = _usd_twin(symbol)
            if twin is not None and twin not in self._by_symbol:
                self._by_symbol[twin] = self._by_symbol[symbol]
        self._seq_of = dict.fromkeys(self._by_symbol, -1)  # per product, per connection
        self._rest_symbol = ""

    def _stale_sequence(self, product: str, bar: int, seq: int) -> None:
        """Drop a ticker message not above its product's last sequence number; a number far
        below it means the count restarted, so the connection is replaced (its successor starts
        a count afresh)."""
        self.stats.dropped["stale_sequence"] += 1
        if bar - seq > _SEQUENCE_RESET and self._cut is None:
            # Counted and logged once a connection, like the other venues' counter resets.
            self.stats.sequence_resets += 1
            self._log.warning("sequence reset", product=product, bar=bar, seq=seq)
            self._rotate("sequence_reset")

    def _in_sequence(self, product: str, seq: int) -> bool:
        """Whether a ticker of `product` numbered `seq` is newer than the product's last on this
        connection (and, if so, keep its number). Unknown products are kept out of the table, so
        that frames naming made-up products cannot grow it; `_quote` counts them."""
        seqs = self._seq_of
        bar = seqs.get(product)
        if bar is None or seq < 0:
            return True
        if seq <= bar:
            self._stale_sequence(product, bar, seq)
            return False
        seqs[product] = seq
        return True

    def venue_symbol(self, pair: str) -> str:
        """BTC/USD -> BTC-USD."""
        return pair.replace("/", "-")

    def stream_url(self) -> str:
        return self.ws_url

    def _queue_subscriptions(self) -> None:
        """Per connection: sequence numbers restart, heartbeats go first, then the tickers."""
        self._seq_of = dict.fromkeys(self._by_symbol, -1)
        self._outbox.put_nowait((next(self._ids), ()))
        super()._queue_subscriptions()

    def subscribe_message(self, request_id: int, symbols: Sequence[str]) -> str:
        if not symbols:
            return '{"type":"subscribe","channel":"heartbeats"}'
        body = {"type": "subscribe", "product_ids": list(symbols), "channel": "ticker"}
        return _ENCODE.encode(body).decode()

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        try:
            msg = _FAST.decode(data)
        except msgspec.DecodeError:
            self._message(data, recv_ts)
            return
        stamp = msg.timestamp
        second = _SECONDS.get(stamp[:20])
        frac = stamp[20:-1]
        if (
            second is not None
            and stamp[-1] == "Z"
            and len(frac) >= 3
            and frac.isdigit()
            and frac.isascii()
        ):
            venue_ts = second + int(frac[:3])
        else:
            venue = _venue_ms(stamp)
            if venue is None:
                self._message(data, recv_ts)  # not an RFC 3339 time: the strict path names it
                return
            venue_ts = venue
        seq = msg.sequence_num
        events = msg.events
        if len(events) == 1 and len(tickers := events[0].tickers) == 1:
            t = tickers[0]  # the usual message: one event, one ticker
            product = t.product_id
            # `_in_sequence` inlined for this message: one dictionary read and write a frame.
            seqs = self._seq_of
            bar = seqs.get(product)
            if bar is not None and seq >= 0:
                if seq <= bar:
                    self._stale_sequence(product, bar, seq)
                    return
                seqs[product] = seq
            self._quote(product, t.best_bid, t.best_ask, recv_ts, venue_ts, t.price)
            return
        fast = [t for event in events for t in event.tickers]
        if not fast:
            self._bad("shape")
        for t in fast:
            if self._in_sequence(t.product_id, seq):
                self._quote(t.product_id, t.best_bid, t.best_ask, recv_ts, venue_ts, t.price)

    def _message(self, data: str | bytes, recv_ts: int) -> None:
        """The strict path: every frame that is not a ticker message in the documented shape."""
        msg = self._decoded(_DECODE, data)
        if msg is None:
            return
        stamp = msg.timestamp
        venue_ts = None if stamp is None else _exact_ms(stamp)
        if stamp is not None and venue_ts is None:
            self._bad("shape")
            return
        channel = msg.channel
        if channel not in _KNOWN:
            if msg.type == "error":
                self._error(": ".join(filter(None, (msg.message, msg.reason))) or "error")
            elif channel:
                self.stats.dropped["other_channel"] += 1
            else:
                self._bad("shape")
            return
        if channel == "ticker":
            tickers = [t for event in msg.events for t in event.tickers or ()]
            if not tickers:
                self._bad("shape")
            for t in tickers:
                if self._in_sequence(t.product_id, msg.sequence_num):
                    self._quote_texts(
                        t.product_id, t.best_bid, t.best_ask, recv_ts, venue_ts, t.price
                    )
        elif channel == "subscriptions":
            listed: dict[str, list[str]] = {}
            for event in msg.events:
                listed.update(event.subscriptions or {})
            self._answered(listed)

    def _answered(self, listed: Mapping[str, list[str]]) -> None:
        """A `subscriptions` message answers the oldest open request."""
        if not self._pending:
            self._ack(None)  # counted as unsolicited
            return
        request_id, symbols = next(iter(self._pending.items()))
        if not symbols:
            if "heartbeats" in listed:
                self._ack(request_id)
            else:
                self._reject(request_id, "heartbeats missing from the subscriptions ack")
            return
        have = set(listed.get("ticker", ()))
        missing = [s for s in symbols if s not in have and _usd_twin(s) not in have]
        if missing:
            self._reject(request_id, "not in the venue's subscriptions")
        else:
            self._ack(request_id)

    def _error(self, text: str) -> None:
        """An error frame names no request: it refuses the oldest open one."""
        self._reject(next(iter(self._pending), None), text)

    def _reject(self, request_id: int | str | None, message: str) -> None:
        """A refused heartbeats request has no symbol to fail: count and log it only."""
        if isinstance(request_id, int) and self._pending.get(request_id) == ():
            del self._pending[request_id]
            request_id = None
        super()._reject(request_id, message)

    def rest_request(self, symbols: Sequence[str]) -> tuple[str, Mapping[str, str]] | None:
        # Polls run one at a time in one task, so the answer to this request is the next body.
        self._rest_symbol = symbols[0]
        url = f"{self.rest_url}/api/v3/brokerage/market/products/{symbols[0]}/ticker"
        return url, {"limit": "1"}

    async def _fetch(
        self, url: str, query: Mapping[str, str]
    ) -> tuple[int | None, bytes, str | None]:
        """A 404 whose error envelope says ``NOT_FOUND`` refuses the one product polled, as a 400
        does (the base marks it failed): the docs name neither answer for an unknown product, and
        a polled product the venue does not list must not put the source down at every poll."""
        status, body, error = await super()._fetch(url, query)
        if status != 404:
            return status, body, error
        try:
            code = _REST_ERROR.decode(body).error
        except (msgspec.DecodeError, *UNDECODABLE):  # no envelope: a wrong path, a proxy's page
            return status, body, error
        return (400 if code == "NOT_FOUND" else status), body, error

    def on_rest(self, body: bytes, recv_ts: int) -> None:
        book = self._decoded(_REST, body)
        if book is None:
            return
        last = book.trades[0].price if book.trades else msgspec.Raw()
        self._quote_texts(self._rest_symbol, book.best_bid, book.best_ask, recv_ts, None, last)
