"""A loopback Binance spot venue: the ``/stream`` WebSocket and the REST book ticker, with faults.

It speaks the real wire protocol (see oracled/sources/binance.py for the docs): combined-stream
``<symbol>@bookTicker`` frames, ``SUBSCRIBE``/``UNSUBSCRIBE``/``LIST_SUBSCRIPTIONS`` with
``{"result":null,"id":N}`` acks, ``GET_PROPERTY`` of ``combined`` (answered ``{"result":true,
"id":N}``), error frames ``{"error":{"code":2,"msg":...},"id":N}``, server pings that expect a
pong echoing their payload, the 5 incoming messages a second limit (a client over it is closed
with 1008), and ``GET /api/v3/ticker/bookTicker``.

Two deliberate differences from the real venue, both to exercise the adapter's error paths: an
unknown symbol in a SUBSCRIBE gets an error frame (the real venue stays silent), and the whole
request is refused (nothing in it is subscribed).

`server_shutdown()` sends the venue's ``serverShutdown`` notice. Faults: `property_error` (a
message: every ``GET_PROPERTY`` is answered with an error frame carrying it, as an unknown
property is), `spike` (this venue alone
prints a wrong price), `silence` (socket open, nothing sent, not
even pings), `disconnect` (drop every client), `garbage` (malformed frames), `ws_enabled = False`
(handshakes refused with 503), `rest_enabled = False` (REST answers 503), `reset` (all cleared).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import aiohttp
from aiohttp import web

from oracled.sim._base import Client, Out, SimStats, VenueSim
from oracled.sim.paths import PricePath

__all__ = ["GARBAGE", "BinanceSim", "SimStats"]

_SUFFIX: Final = "@bookTicker"

# One of each kind of bad frame the adapter must survive: broken JSON, wrong shapes, and
# well-formed frames whose prices are NaN, infinite, zero, negative, not numbers, or crossed.
GARBAGE: Final[tuple[str, ...]] = (
    '{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":',
    "not json at all",
    '{"stream":"btcusdt@bookTicker","data":[1,2,3]}',
    '{"stream":"btcusdt@bookTicker","data":{"u":2,"s":"BTCUSDT","b":true,"a":[67000.2]}}',
    '{"hello":"world"}',
    "[]",
    '{"stream":"btcusdt@bookTicker","data":{"u":3,"s":"BTCUSDT","b":"NaN","B":"1","a":"NaN","A":"1"}}',
    '{"stream":"btcusdt@bookTicker","data":{"u":4,"s":"BTCUSDT","b":"inf","B":"1","a":"inf","A":"1"}}',
    '{"stream":"btcusdt@bookTicker","data":{"u":5,"s":"BTCUSDT","b":"0.00000000","B":"1",'
    '"a":"0.00000000","A":"1"}}',
    '{"stream":"btcusdt@bookTicker","data":{"u":6,"s":"BTCUSDT","b":"-5.00000000","B":"1",'
    '"a":"-4.00000000","A":"1"}}',
    '{"stream":"btcusdt@bookTicker","data":{"u":7,"s":"BTCUSDT","b":"abc","B":"1","a":"1","A":"1"}}',
    '{"stream":"btcusdt@bookTicker","data":{"u":8,"s":"BTCUSDT","b":"70000.0","B":"1",'
    '"a":"60000.0","A":"1"}}',
)


class BinanceSim(VenueSim):
    """A Binance spot venue on loopback; see the module docstring for the protocol and faults."""

    name = "binance"
    GARBAGE: ClassVar[tuple[str, ...]] = GARBAGE

    def __init__(
        self,
        prices: Mapping[str, float],
        *,
        ping_interval_s: float = 20.0,
        pong_timeout_s: float = 60.0,
        message_limit: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            {sym.upper(): p for sym, p in prices.items()}, message_limit=message_limit, **kwargs
        )
        self.ping_interval_s = ping_interval_s
        self.pong_timeout_s = pong_timeout_s
        self.pings_received = 0  # GET_PROPERTY requests: the USD-M adapter's keep-alive
        self.property_error: str | None = None  # set: every GET_PROPERTY is refused with it

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/stream", self.ws_handler)
        app.router.add_get("/api/v3/ticker/bookTicker", self._rest_handler)

    def background(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._ping(), name="sim:binance:ping")]

    def on_connect(self, client: Client) -> None:
        for name in filter(None, client.request.query.get("streams", "").split("/")):
            symbol = self._symbol_of(name)
            if symbol is not None:
                client.streams.add(symbol)

    def on_text(self, client: Client, text: str) -> None:
        client.send(json.dumps(self._control(client, text), separators=(",", ":")))

    def reset(self) -> None:
        super().reset()
        self.property_error = None

    def server_shutdown(self) -> None:
        """Announce a server shutdown to every client (the venue closes the connections later).
        The streams page names the event without showing a frame of it: it is sent bare, with its
        event time, as clients of the venue read it."""
        frame = json.dumps({"e": "serverShutdown", "E": int(time.time() * 1000)})
        for client in self.clients:
            client.send(frame)

    def data_frame(self, symbol: str, path: PricePath, now: float) -> str:
        mid = path.published(now)
        half = mid * self.spread_bps / 20_000.0
        return (
            f'{{"stream":"{symbol.lower()}{_SUFFIX}","data":{{"u":{next(self.sequence)},'
            f'"s":"{symbol}","b":"{mid - half:.8f}","B":"{path.size():.8f}",'
            f'"a":"{mid + half:.8f}","A":"{path.size():.8f}"}}}}'
        )

    async def _ping(self) -> None:
        """Protocol pings every `ping_interval_s`; a client that does not pong is cut."""
        payload = itertools.count(1)
        while True:
            await asyncio.sleep(self.ping_interval_s)
            if self.silent:
                continue
            now = self.now()
            for client in list(self.clients):
                if client.ping_due is not None and now >= client.ping_due:
                    self.stats.pong_timeouts += 1
                    await client.ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION)
                    continue
                if client.ping_due is None:
                    client.ping_due = now + self.pong_timeout_s
                client.outbox.put_nowait((Out.PING, str(next(payload)).encode()))

    def _symbol_of(self, stream: str) -> str | None:
        if not stream.endswith(_SUFFIX):
            return None
        symbol = stream[: -len(_SUFFIX)]
        if symbol != symbol.lower() or symbol.upper() not in self.paths:
            return None
        return symbol.upper()

    def _error(self, code: int, msg: str, request_id: Any) -> dict[str, Any]:
        self.stats.errors_sent += 1
        return {"error": {"code": code, "msg": msg}, "id": request_id}

    def _control(self, client: Client, text: str) -> dict[str, Any]:
        try:
            req = json.loads(text)
        except ValueError:
            return self._error(3, "Invalid JSON: expected value at line 1 column 1", None)
        if not isinstance(req, dict) or "method" not in req:
            return self._error(2, "Invalid request: missing field `method`", None)
        request_id = req.get("id")
        if request_id is not None and (
            isinstance(request_id, bool) or not isinstance(request_id, (int, str))
        ):
            return self._error(2, "Invalid request: request ID must be an unsigned integer", None)
        method, params = req["method"], req.get("params", [])
        if method == "GET_PROPERTY":
            # The one property is `combined`, true on `/stream` (all this venue serves): the
            # USD-M adapter's keep-alive asks it.
            self.pings_received += 1
            if params != ["combined"]:
                return self._error(0, "Unknown property", request_id)
            if self.property_error is not None:
                return self._error(0, self.property_error, request_id)
            return {"result": True, "id": request_id}
        if method == "LIST_SUBSCRIPTIONS":
            return {
                "result": sorted(f"{s.lower()}{_SUFFIX}" for s in client.streams),
                "id": request_id,
            }
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            return self._error(
                2,
                f"Invalid request: unknown variant {method!s}, expected one of `SUBSCRIBE`, "
                "`UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`",
                request_id,
            )
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            return self._error(2, "Invalid request: invalid stream", request_id)
        symbols = [self._symbol_of(p) for p in params]
        if any(s is None for s in symbols):
            return self._error(2, "Invalid request: invalid stream", request_id)
        chosen = {s for s in symbols if s is not None}
        if method == "SUBSCRIBE":
            client.streams |= chosen
        else:
            client.streams -= chosen
        return {"result": None, "id": request_id}

    async def _rest_handler(self, request: web.Request) -> web.Response:
        refused = await self.rest_gate()
        if refused is not None:
            return refused
        single = request.query.get("symbol")
        many = request.query.get("symbols")
        if single is not None and many is not None:
            return self._rest_error(-1128, "Combination of optional parameters invalid.")
        wanted: list[str]
        if single is not None:
            wanted = [single]
        elif many is not None:
            try:
                parsed = json.loads(many)
            except ValueError:
                parsed = None
            if not isinstance(parsed, list) or not all(isinstance(s, str) for s in parsed):
                return self._rest_error(-1100, "Illegal characters found in parameter 'symbols'.")
            wanted = parsed
        else:
            wanted = sorted(self.paths)
        if any(s not in self.paths for s in wanted):
            return self._rest_error(-1121, "Invalid symbol.")
        rows = [self._rest_row(s) for s in wanted]
        body = rows[0] if single is not None else rows
        return web.json_response(body)

    def _rest_row(self, symbol: str) -> dict[str, str]:
        bid, ask = self.book(symbol)
        path = self.paths[symbol]
        return {
            "symbol": symbol,
            "bidPrice": f"{bid:.8f}",
            "bidQty": f"{path.size():.8f}",
            "askPrice": f"{ask:.8f}",
            "askQty": f"{path.size():.8f}",
        }

    @staticmethod
    def _rest_error(code: int, msg: str) -> web.Response:
        return web.json_response({"code": code, "msg": msg}, status=400)
