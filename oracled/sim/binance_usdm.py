"""A loopback Binance USDⓈ-M futures venue: ``/public`` book tickers, ``/market`` mark prices, REST.

It speaks the real wire protocol (see oracled/sources/binance_usdm.py for the docs): combined
``<symbol>@bookTicker`` frames with ``e``/``u``/``E``/``T`` on ``/public/stream``,
``<symbol>@markPrice`` and ``<symbol>@markPrice@1s`` frames on ``/market/stream`` (each path
accepts only its own streams, as the venue's URL split asks), the spot-style ``SUBSCRIBE`` /
``UNSUBSCRIBE`` / ``LIST_SUBSCRIPTIONS`` control messages with their acks and errors, protocol
pings every 3 minutes with a 10 minute pong deadline, the 10 incoming messages a second limit,
and ``GET /fapi/v1/ticker/bookTicker`` (one symbol, or all of them).

As in `BinanceSim`, an unknown or misrouted stream gets an error frame and refuses the whole
request (the real venue accepts a well-formed unknown stream and stays silent), so that the
adapter's error path can be exercised. Every fault of `VenueSim` applies to both paths.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from aiohttp import web

from oracled.sim._base import Client, Out
from oracled.sim.binance import BinanceSim
from oracled.sim.paths import PricePath

__all__ = ["GARBAGE", "BinanceUsdmSim"]

_BOOK: Final = "@bookTicker"
_MARKS: Final = ("@markPrice@1s", "@markPrice")
_FUTURE: Final = 9_999_999_999_999  # update id and time far ahead: no garbage is dropped as stale


def _book(fields: str) -> str:
    return f'{{"stream":"btcusdt@bookTicker","data":{{"e":"bookTicker",{fields}}}}}'


def _ids(u: int) -> str:
    return f'"u":{_FUTURE - u},"E":{_FUTURE},"T":{_FUTURE},"s":"BTCUSDT"'


# One of each kind of bad frame the adapter must survive: broken JSON, wrong shapes (null prices; a
# bare JSON number would be a valid price), and well-formed book tickers whose prices are NaN,
# infinite, zero, negative, not numbers, crossed.
GARBAGE: Final[tuple[str, ...]] = (
    _book(f'{_ids(1)},"b":'),
    "not json at all",
    '{"stream":"btcusdt@bookTicker","data":[1,2,3]}',
    _book(f'{_ids(2)},"b":null,"B":"1","a":null,"A":"1"'),
    '{"hello":"world"}',
    "[]",
    _book(f'{_ids(3)},"b":"NaN","B":"1","a":"NaN","A":"1"'),
    _book(f'{_ids(4)},"b":"inf","B":"1","a":"inf","A":"1"'),
    _book(f'{_ids(5)},"b":"0.00","B":"1","a":"0.00","A":"1"'),
    _book(f'{_ids(6)},"b":"-5.00","B":"1","a":"-4.00","A":"1"'),
    _book(f'{_ids(7)},"b":"abc","B":"1","a":"1","A":"1"'),
    _book(f'{_ids(8)},"b":"70000.00","B":"1","a":"60000.00","A":"1"'),
)


class BinanceUsdmSim(BinanceSim):
    """A Binance USDⓈ-M venue on loopback; see the module docstring for protocol and faults."""

    name = "binance_usdm"
    GARBAGE: ClassVar[tuple[str, ...]] = GARBAGE

    def __init__(
        self,
        prices: Mapping[str, float],
        *,
        ping_interval_s: float = 180.0,
        pong_timeout_s: float = 600.0,
        message_limit: int = 10,
        mark_interval_s: float = 1.0,
        mark_premium_bps: float = 3.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            prices,
            ping_interval_s=ping_interval_s,
            pong_timeout_s=pong_timeout_s,
            message_limit=message_limit,
            **kwargs,
        )
        self.mark_interval_s = mark_interval_s
        self.mark_premium_bps = mark_premium_bps
        self.marks_sent = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/public/stream", self.ws_handler)
        app.router.add_get("/market/stream", self.ws_handler)
        app.router.add_get("/fapi/v1/ticker/bookTicker", self._futures_rest)

    def background(self) -> list[asyncio.Task[None]]:
        return [
            *super().background(),
            asyncio.create_task(self._publish_marks(), name="sim:binance_usdm:marks"),
        ]

    def on_connect(self, client: Client) -> None:
        client.state["marks"] = set()
        for name in filter(None, client.request.query.get("streams", "").split("/")):
            self._add(client, name)

    def on_text(self, client: Client, text: str) -> None:
        client.send(json.dumps(self._futures_control(client, text), separators=(",", ":")))

    def data_frame(self, symbol: str, path: PricePath, now: float) -> str:
        mid = path.published(now)
        half = mid * self.spread_bps / 20_000.0
        ms = int(time.time() * 1000)
        return (
            f'{{"stream":"{symbol.lower()}{_BOOK}","data":{{"e":"bookTicker",'
            f'"u":{next(self.sequence)},"E":{ms},"T":{ms - 1},"s":"{symbol}",'
            f'"b":"{mid - half:.8f}","B":"{path.size():.3f}",'
            f'"a":"{mid + half:.8f}","A":"{path.size():.3f}"}}}}'
        )

    def mark_frame(self, symbol: str, stream: str) -> str:
        """One ``markPriceUpdate`` as the venue sends it (mark = mid plus a small premium)."""
        index = self.paths[symbol].published(self.now())
        mark = index * (1 + self.mark_premium_bps / 10_000.0)
        ms = int(time.time() * 1000)
        return (
            f'{{"stream":"{stream}","data":{{"e":"markPriceUpdate","E":{ms},"s":"{symbol}",'
            f'"p":"{mark:.8f}","P":"{mark:.8f}","i":"{index:.8f}","r":"0.00010000",'
            f'"T":{ms - ms % 28_800_000 + 28_800_000}}}}}'
        )

    async def _publish_marks(self) -> None:
        while True:
            await asyncio.sleep(self.mark_interval_s)
            if self.silent:
                continue
            for client in self.clients:
                for stream in sorted(self._marks_of(client)):
                    symbol = stream.split("@", 1)[0].upper()
                    client.outbox.put_nowait((Out.DATA, self.mark_frame(symbol, stream)))
                    self.marks_sent += 1

    @staticmethod
    def _marks_of(client: Client) -> set[str]:
        marks = client.state["marks"]
        assert isinstance(marks, set)
        return marks

    def _stream_symbol(self, client: Client, stream: str) -> str | None:
        """The symbol of a stream this client's path serves, or None."""
        public = client.request.path.startswith("/public")
        suffixes = (_BOOK,) if public else _MARKS
        for suffix in suffixes:
            if stream.endswith(suffix):
                symbol = stream[: -len(suffix)]
                if symbol == symbol.lower() and symbol.upper() in self.paths:
                    return symbol.upper()
        return None

    def _add(self, client: Client, stream: str) -> bool:
        symbol = self._stream_symbol(client, stream)
        if symbol is None:
            return False
        if stream.endswith(_BOOK):
            client.streams.add(symbol)
        else:
            self._marks_of(client).add(stream)
        return True

    def _futures_control(self, client: Client, text: str) -> dict[str, Any]:
        try:
            req = json.loads(text)
        except ValueError:
            return self._error(3, "Invalid JSON: expected value at line 1 column 1", None)
        if not isinstance(req, dict) or "method" not in req:
            return self._error(2, "Invalid request: missing field `method`", None)
        request_id, method = req.get("id"), req["method"]
        params = req.get("params", [])
        if method == "LIST_SUBSCRIPTIONS":
            books = [f"{s.lower()}{_BOOK}" for s in client.streams]
            return {"result": sorted([*books, *self._marks_of(client)]), "id": request_id}
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            return self._error(2, f"Invalid request: unknown variant {method!s}", request_id)
        if not isinstance(params, list) or not all(
            isinstance(p, str) and self._stream_symbol(client, p) for p in params
        ):
            return self._error(2, "Invalid request: invalid stream", request_id)
        for stream in params:
            if method == "SUBSCRIBE":
                self._add(client, stream)
            elif stream.endswith(_BOOK):
                client.streams.discard(stream[: -len(_BOOK)].upper())
            else:
                self._marks_of(client).discard(stream)
        return {"result": None, "id": request_id}

    async def _futures_rest(self, request: web.Request) -> web.Response:
        refused = await self.rest_gate()
        if refused is not None:
            return refused
        single = request.query.get("symbol")
        if single is not None and single not in self.paths:
            return self._rest_error(-1121, "Invalid symbol.")
        rows = [self._futures_row(s) for s in ([single] if single else sorted(self.paths))]
        return web.json_response(rows[0] if single else rows)

    def _futures_row(self, symbol: str) -> dict[str, Any]:
        bid, ask = self.book(symbol)
        path = self.paths[symbol]
        ms = int(time.time() * 1000)
        return {
            "symbol": symbol,
            "bidPrice": f"{bid:.8f}",
            "bidQty": f"{path.size():.3f}",
            "askPrice": f"{ask:.8f}",
            "askQty": f"{path.size():.3f}",
            "time": ms,
            "lastUpdateId": next(self.sequence),
        }
