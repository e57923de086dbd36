"""Binance spot: best bid/ask from the ``<symbol>@bookTicker`` stream, REST ticker as fallback.

Docs: https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams and
https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints

Wire sample (combined stream ``/stream``, recorded live; spot bookTicker has no event time, so
``venue_ts`` is None)::

    {"stream":"nknusdt@bookTicker","data":{"u":499869768,"s":"NKNUSDT","b":"0.35210000",
     "B":"672.00000000","a":"0.35260000","A":"3199.00000000"}}

Subscribe ``{"method":"SUBSCRIBE","params":["btcusdt@bookTicker"],"id":1}``, ack
``{"result":null,"id":1}``; a refused request answers ``{"error":{"code":2,"msg":"Invalid request:
invalid stream"},"id":1}`` (the docs table also shows the flat ``{"code":..,"msg":..,"id":..}``;
both are read).

Rules from the docs that shape this file and the base: the server pings every 20 s and drops a
client that has not ponged within a minute (pongs echo the ping payload; we never send unsolicited
pings or pongs); a client may send at most 5 messages a second, pings and pongs included (the base
paces its requests to leave room for pongs); 1024 streams per connection; a connection lives 24 h
(the config rotates at 23 h by default) and a ``serverShutdown`` event announces an early close, on
which we rotate at once. The streams page names the event but shows no frame of it; the WebSocket
API's connection-events page shows ``{"event":{"e":"serverShutdown","E":..}}``
(https://developers.binance.com/docs/binance-spot-api-docs/websocket-api/connection-events), so the
event is read bare (``{"e":"serverShutdown",..}``), in a combined stream's ``data``, or in that
``event`` envelope. REST ``GET /api/v3/ticker/bookTicker?symbols=[...]`` costs 4 weight for
any number of symbols: one request per poll for all of them. Real Binance accepts a well-formed
stream name for a symbol it does not list and then sends nothing; only malformed names get an
error frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import msgspec

from oracled.sources._base import Source, read_decimal

__all__ = ["BinanceSource"]


class _Book(msgspec.Struct, gc=False):
    """bookTicker payload. Prices are quoted decimals on the wire; msgspec reads them straight into
    floats (strict=False), several times cheaper than float() on the decoded text. A bare JSON
    number is therefore accepted as a price too; anything else is a bad frame."""

    s: str
    b: float
    a: float


class _Combined(msgspec.Struct, gc=False):
    """A combined-stream frame; ``stream`` is not decoded (the payload names the symbol)."""

    data: _Book


class _TextBook(msgspec.Struct):
    s: str
    b: str
    a: str


class _TextCombined(msgspec.Struct):
    """A book frame read with text prices: only to name what was wrong with a refused one."""

    stream: str
    data: _TextBook


class _Error(msgspec.Struct):
    code: int
    msg: str


class _Event(msgspec.Struct):
    e: str = ""


class _Control(msgspec.Struct):
    """Everything that is not a book frame: acks, errors, events. Rare, so decoded second."""

    id: int | str | None = None
    error: _Error | None = None
    code: int | None = None
    msg: str | None = None
    e: str = ""
    data: _Event | None = None
    event: _Event | None = None  # the WebSocket API's envelope of a serverShutdown (docstring)


class _RestBook(msgspec.Struct):
    symbol: str
    bid: str = msgspec.field(name="bidPrice")
    ask: str = msgspec.field(name="askPrice")


_FRAME = msgspec.json.Decoder(_Combined, strict=False)
_CONTROL = msgspec.json.Decoder(_Control)
_TEXT_FRAME = msgspec.json.Decoder(_TextCombined)
_REST = msgspec.json.Decoder(list[_RestBook])
_ENCODE = msgspec.json.Encoder()


class BinanceSource(Source):
    default_ws_url: ClassVar[str] = "wss://stream.binance.com:9443"
    default_rest_url: ClassVar[str | None] = "https://api.binance.com"
    max_symbols_per_request: ClassVar[int] = 200
    max_messages_per_s: ClassVar[int] = 5
    #: No snapshot: bookTicker "pushes any update to the best bid or ask's price or quantity"
    #: (docs); in a recording a quiet symbol sent nothing on subscribing, then its next change.
    snapshot_on_subscribe: ClassVar[bool] = False

    def stream_url(self) -> str:
        return f"{self.ws_url}/stream"

    def subscribe_message(self, request_id: int, symbols: Sequence[str]) -> str:
        params = [f"{s.lower()}@bookTicker" for s in symbols]
        return _ENCODE.encode({"method": "SUBSCRIBE", "params": params, "id": request_id}).decode()

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        try:
            book = _FRAME.decode(data).data
        except msgspec.DecodeError:
            self._control(data)
            return
        self._quote(book.s, book.b, book.a, recv_ts)

    def _control(self, data: str | bytes) -> None:
        try:
            book = _TEXT_FRAME.decode(data).data
        except msgspec.DecodeError:
            pass
        else:  # a book the float decoder refused: only name why, never quote it
            self._refused_book(book.b, book.a)
            return
        frame = self._decoded(_CONTROL, data)
        if frame is None:
            return
        if frame.error is not None:
            self._reject(frame.id, f"{frame.error.code}: {frame.error.msg}")
        elif frame.code is not None and frame.msg is not None:
            self._reject(frame.id, f"{frame.code}: {frame.msg}")
        elif "serverShutdown" in (
            frame.e,
            frame.data.e if frame.data else "",
            frame.event.e if frame.event else "",
        ):
            self._rotate("server_shutdown")
        elif frame.id is not None and frame.data is None:
            self._ack(frame.id)
        else:
            self._bad("shape")

    def _refused_book(self, bid: str, ask: str) -> None:
        """A price that is no venue decimal ("abc", "1_000") is `bad_number`; readable prices
        mean another field was of the wrong type (a futures event time that is no integer)."""
        try:
            read_decimal(bid)
            read_decimal(ask)
        except ValueError:
            self._bad_number(bid, ask)
        else:
            self._bad("shape")

    def rest_request(self, symbols: Sequence[str]) -> tuple[str, Mapping[str, str]] | None:
        query = {"symbols": _ENCODE.encode(list(symbols)).decode()}
        return f"{self.rest_url}/api/v3/ticker/bookTicker", query

    def on_rest(self, body: bytes, recv_ts: int) -> None:
        books = self._decoded(_REST, body)
        if books is None:
            return
        for book in books:
            self._quote_text(book.symbol, book.bid, book.ask, recv_ts)
