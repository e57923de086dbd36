"""Bitstamp spot: top of book from the ``order_book_<pair>`` channel, REST tickers as fallback.

Docs: https://www.bitstamp.net/websocket/v2/ and https://www.bitstamp.net/api/ (Tickers).

Wire sample (an order book event; its ``data`` object carries the top 100 levels a side as
decimal strings, best first, the same object the REST order book answers; this one was recorded
live on 2022-01-05, levels trimmed)::

    {"data":{"timestamp": "1641343696", "microtimestamp": "1641343696039184",
     "bids": [["0.99948", "3105.20768"], ...], "asks": [["0.99992", "5692.64822"], ...]},
     "channel":"order_book_usdtusd","event":"data"}

Subscribe one channel per message, ``{"event":"bts:subscribe","data":{"channel":
"order_book_btcusd"}}``, acked by ``{"event":"bts:subscription_succeeded","channel":
"order_book_btcusd","data":{}}``. The protocol has no request ids: an ack names its channel, and
a ``bts:error`` that names none is blamed on the oldest unanswered request (the venue answers in
order). Real Bitstamp acks even channels of markets it does not list and then sends nothing;
errors come for malformed requests. ``bts:request_reconnect`` asks the client to reconnect (the
venue is about to drop the connection): we rotate at once, without declaring the stream down.

Liveness: the venue sends no heartbeats of its own and a quiet book can stay silent for most of a
minute, so the client sends ``{"event":"bts:heartbeat"}`` every 10 s and the venue answers
``{"event":"bts:heartbeat","channel":"","data":{"status":"success"}}`` (keep
``liveness_timeout_s`` above that interval; the default 30 s is). The docs give a maximum
connection age of 90 days and a limit of 1000 channels a connection; the config's daily rotation
comes first. The docs publish no message rate for the socket; requests are paced at 10 a second.
Venue time is the book's ``microtimestamp``; a book older than the newest one of its pair is
dropped here and counted as ``out_of_order``.

Decoding: only the best level of each side is read, prices straight into floats (strict=False);
the other levels are skipped by the decoder without building a string or a list for them (on the
real venue a book carries 100 levels a side). A level must hold its amount as a decimal string,
the venue's way of printing numbers, though the amount itself is not used. A frame that does not
fit (an empty side, text that is not a number, a book printed with bare numbers, a control
message) is decoded again with text prices and judged by the strict rules, so that every bad
frame is named the same way. Numbers printed bare where the venue prints strings (a price beside
a string amount, the microtimestamp) are read as those numbers.

REST ``GET /api/v2/ticker/`` answers the ticker of every pair in one request (``pair`` is
``"BTC/USD"``), so a poll is one request whatever the number of symbols, far inside the
documented 10,000 requests per 10 minutes (the per-pair ``/api/v2/ticker/{pair}/`` would cost one
request per symbol). That request names no symbol, so an HTTP 400 cannot blame one (Bitstamp
answers rate limits that way): it is reported as 429 so that the base neither splits the poll nor
fails a symbol. Its ``timestamp`` is not used as a venue time: the docs say only "Unix timestamp
date and time" (whole seconds), not of what, and a ticker's bid and ask are not a book event with
a time of its own. A REST quote therefore ages from the quote that first showed its bid and ask,
streamed or polled (`Source._emit_polled`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Final, Literal

import aiohttp
import msgspec

from oracled.clock import Clock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sources._base import Source, read_integer
from oracled.sources.stats import SourceStats

__all__ = ["BitstampSource"]

_CHANNEL: Final = "order_book_"
_HEARTBEAT: Final = '{"event":"bts:heartbeat"}'


class _Level(msgspec.Struct, array_like=True, gc=False):
    """``["price", "amount"]``: the price straight into a float; see the module docstring."""

    price: float
    amount: str


class _Best(msgspec.Struct, array_like=True, gc=False):
    """A side of the book as an array whose first element is read; the rest are skipped
    (an array-like struct ignores trailing elements it has no field for)."""

    level: _Level


class _Book(msgspec.Struct, gc=False):
    microtimestamp: int
    bids: _Best
    asks: _Best


class _BookFrame(msgspec.Struct, gc=False):
    event: Literal["data"]
    channel: str
    data: _Book


class _TextBook(msgspec.Struct):
    microtimestamp: str
    bids: list[list[str]]
    asks: list[list[str]]


class _TextBookFrame(msgspec.Struct):
    """A book read with text prices: only for frames the one-pass decoder refused."""

    event: Literal["data"]
    channel: str
    data: _TextBook


class _Info(msgspec.Struct):
    message: str = ""


class _Control(msgspec.Struct):
    """Acks, errors, heartbeats, reconnect requests and other events: decoded second."""

    event: str
    channel: str = ""
    data: _Info | str | None = None


class _RestRow(msgspec.Struct):
    """``timestamp`` is left out: see the module docstring."""

    pair: str
    bid: str | None = None
    ask: str | None = None


_FRAME = msgspec.json.Decoder(_BookFrame, strict=False)
_TEXT_FRAME = msgspec.json.Decoder(_TextBookFrame)
_CONTROL = msgspec.json.Decoder(_Control)
_REST = msgspec.json.Decoder(list[_RestRow])
_ENCODE = msgspec.json.Encoder()


class BitstampSource(Source):
    default_ws_url: ClassVar[str] = "wss://ws.bitstamp.net"
    default_rest_url: ClassVar[str | None] = "https://www.bitstamp.net"
    max_symbols_per_request: ClassVar[int] = 1  # one channel per subscribe message
    max_messages_per_s: ClassVar[int] = 10
    app_ping_interval_s: ClassVar[float | None] = 10.0
    rest_batch_size: ClassVar[int] = 100_000  # one all-pairs request per poll
    #: No snapshot: once subscribed "you will start to receive a stream of live events" (docs);
    #: an ``order_book`` event is sent when the book changes, stamped with its own time.
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
        self._last_ts: dict[str, int] = {}
        self._channels = {_CHANNEL + symbol: symbol for symbol in self.symbols}

    def venue_symbol(self, pair: str) -> str:
        return pair.replace("/", "").lower()

    def stream_url(self) -> str:
        return f"{self.ws_url}/"

    def app_ping(self) -> str:
        return _HEARTBEAT

    def subscribe_message(self, request_id: int, symbols: Sequence[str]) -> str:
        (symbol,) = symbols
        request = {"event": "bts:subscribe", "data": {"channel": f"{_CHANNEL}{symbol}"}}
        return _ENCODE.encode(request).decode()

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        try:
            frame = _FRAME.decode(data)
        except msgspec.DecodeError:
            self._text_frame(data, recv_ts)
            return
        symbol = self._channels.get(frame.channel)
        if symbol is None:
            self._text_frame(data, recv_ts)  # rare: let the strict path name what it is
            return
        book = frame.data
        venue_ts = book.microtimestamp // 1000
        if venue_ts < self._last_ts.get(symbol, 0):
            self.stats.dropped["out_of_order"] += 1
            return
        stats = self.stats
        quotes = stats.quotes
        self._quote(symbol, book.bids.level.price, book.asks.level.price, recv_ts, venue_ts)
        if stats.quotes != quotes:  # only a good quote moves the bar
            self._last_ts[symbol] = venue_ts

    def _text_frame(self, data: str | bytes, recv_ts: int) -> None:
        """The strict path: whole books with text prices, then control messages."""
        try:
            frame = _TEXT_FRAME.decode(data)
        except msgspec.DecodeError:
            self._control(data)
            return
        if not frame.channel.startswith(_CHANNEL):
            self._bad("shape")  # a channel we never asked for
            return
        symbol, book = frame.channel[len(_CHANNEL) :], frame.data
        if not (book.bids and book.asks and book.bids[0] and book.asks[0]):
            self.stats.dropped["one_sided"] += 1  # a real state of a thin book, not malformed
            return
        try:
            venue_ts = read_integer(book.microtimestamp) // 1000
        except ValueError:
            self._bad_number(book.microtimestamp)
            return
        self._quote_in_order(symbol, book.bids[0][0], book.asks[0][0], recv_ts, venue_ts)

    def _quote_in_order(self, symbol: str, bid: str, ask: str, recv_ts: int, venue_ts: int) -> None:
        """Emit unless older than the newest quote already emitted for `symbol` (then count it)."""
        if venue_ts < self._last_ts.get(symbol, 0):
            self.stats.dropped["out_of_order"] += 1
            return
        before = self.stats.quotes
        self._quote_text(symbol, bid, ask, recv_ts, venue_ts)
        if self.stats.quotes != before:  # only a good quote moves the bar
            self._last_ts[symbol] = venue_ts

    def _control(self, data: str | bytes) -> None:
        frame = self._decoded(_CONTROL, data)
        if frame is None:
            return
        event = frame.event
        if event == "bts:heartbeat":
            return  # the answer to our ping: a sign of life, already noted by the base
        if event == "bts:subscription_succeeded":
            self._ack(self._request_of(frame.channel))
        elif event == "bts:error":
            message = frame.data.message if isinstance(frame.data, _Info) else ""
            request_id = self._request_of(frame.channel)
            if request_id is None and not frame.channel and self._pending:
                request_id = min(self._pending)  # answers come in order: the oldest is due
            self._reject(request_id, message or "bts:error")
        elif event == "bts:request_reconnect":
            self._rotate("server_shutdown")
        elif event != "bts:unsubscription_succeeded":
            self._bad("shape")

    def _request_of(self, channel: str) -> int | None:
        """The pending request that subscribed `channel`, if any."""
        if not channel.startswith(_CHANNEL):
            return None
        wanted = (channel[len(_CHANNEL) :],)
        return next((rid for rid, symbols in self._pending.items() if symbols == wanted), None)

    def rest_request(self, symbols: Sequence[str]) -> tuple[str, Mapping[str, str]] | None:
        return f"{self.rest_url}/api/v2/ticker/", {}

    async def _fetch(
        self, url: str, query: Mapping[str, str]
    ) -> tuple[int | None, bytes, str | None]:
        """A 400 for the all-pairs request refuses the poll as a whole: report it as 429."""
        status, body, error = await super()._fetch(url, query)
        return (429 if status == 400 else status), body, error

    def on_rest(self, body: bytes, recv_ts: int) -> None:
        rows = self._decoded(_REST, body)
        if rows is None:
            return
        wanted = self._by_symbol
        for row in rows:
            symbol = row.pair.replace("/", "").lower()
            if symbol not in wanted:
                continue  # the answer lists every pair of the venue
            if row.bid is None or row.ask is None:
                self.stats.dropped["one_sided"] += 1
                continue
            self._quote_text(symbol, row.bid, row.ask, recv_ts)
