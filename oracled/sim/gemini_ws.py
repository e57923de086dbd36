"""A loopback venue of Gemini's current WebSocket API: ``bookTicker`` streams, REST ``pubticker``.

It speaks the protocol described in oracled/sources/gemini_ws.py (see the docs links there): one
socket at the root path taking ``{"id":..,"method":..,"params":..}`` requests (``SUBSCRIBE`` and
``UNSUBSCRIBE`` of ``<symbol>@bookTicker`` streams, ``LIST_SUBSCRIPTIONS``, ``ping``, ``time``),
answered ``{"id":..,"status":200,"result":..}`` or ``{"id":..,"status":..,"error":{"code":..,
"msg":..}}``; bare ``bookTicker`` frames with an event time ``E`` in nanoseconds (strictly rising
across the venue, so that no two frames of a symbol share one); and ``GET /v1/pubticker/{symbol}``.
Symbols are lower case (``btcusd``).

Choices where the public docs are silent: a ``SUBSCRIBE`` answers ``"result":null``; one naming a
stream the venue does not list is refused whole (nothing in it subscribed) with status 400 and an
error whose code (-1100) and message are this simulator's own; a request that is no JSON object
with a method gets status 400, code -1000; ``ping`` answers ``"result":{}``; nothing is sent on
subscribing (the next change of the book is); no heartbeats and no server pings (none are
documented). An unknown symbol on REST answers 400 as `GeminiSim` does. Faults: all of `VenueSim`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from aiohttp import web

from oracled.sim._base import Client, VenueSim
from oracled.sim.paths import PricePath

__all__ = ["GARBAGE", "GeminiWsSim"]

_SUFFIX: Final = "@bookTicker"

# One of each kind of bad frame: broken JSON, wrong shapes, and well-formed frames whose prices are
# NaN, infinite, zero, negative, not numbers, or crossed. They carry no event time, so that each
# is judged by its prices alone.
GARBAGE: Final[tuple[str, ...]] = (
    '{"u":1,"s":"btcusd","b":',
    "not json at all",
    '{"s":"btcusd","b":[1,2,3]}',
    '{"u":2,"s":"btcusd","b":true,"a":[67000.2]}',
    '{"hello":"world"}',
    "[]",
    '{"u":3,"s":"btcusd","b":"NaN","B":"1","a":"NaN","A":"1"}',
    '{"u":4,"s":"btcusd","b":"inf","B":"1","a":"inf","A":"1"}',
    '{"u":5,"s":"btcusd","b":"0.00","B":"1","a":"0.00","A":"1"}',
    '{"u":6,"s":"btcusd","b":"-5.00","B":"1","a":"-4.00","A":"1"}',
    '{"u":7,"s":"btcusd","b":"abc","B":"1","a":"1","A":"1"}',
    '{"u":8,"s":"btcusd","b":"70000.00","B":"1","a":"60000.00","A":"1"}',
)


class GeminiWsSim(VenueSim):
    """A venue of Gemini's current WebSocket API on loopback; see the module docstring."""

    name = "gemini_ws"
    GARBAGE: ClassVar[tuple[str, ...]] = GARBAGE

    def __init__(
        self, prices: Mapping[str, float], *, message_limit: int = 5, **kwargs: Any
    ) -> None:
        super().__init__(
            {sym.lower(): p for sym, p in prices.items()}, message_limit=message_limit, **kwargs
        )
        self.pings_received = 0
        self._event_ns = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.ws_handler)
        app.router.add_get("/v1/pubticker/{symbol}", self._rest_handler)

    def on_text(self, client: Client, text: str) -> None:
        client.send(json.dumps(self._answer(client, text), separators=(",", ":")))

    def event_ns(self) -> int:
        """Now in Unix nanoseconds, strictly above every event time sent before."""
        self._event_ns = max(time.time_ns(), self._event_ns + 1)
        return self._event_ns

    def data_frame(self, symbol: str, path: PricePath, now: float) -> str:
        mid = path.published(now)
        half = mid * self.spread_bps / 20_000.0
        return (
            f'{{"u":{next(self.sequence)},"E":{self.event_ns()},"s":"{symbol}",'
            f'"b":"{mid - half:.8f}","B":"{path.size():.8f}",'
            f'"a":"{mid + half:.8f}","A":"{path.size():.8f}"}}'
        )

    def _symbol_of(self, stream: object) -> str | None:
        if not isinstance(stream, str) or not stream.endswith(_SUFFIX):
            return None
        symbol = stream[: -len(_SUFFIX)]
        return symbol if symbol in self.paths else None

    def _error(self, request_id: Any, status: int, code: int, msg: str) -> dict[str, Any]:
        self.stats.errors_sent += 1
        return {"id": request_id, "status": status, "error": {"code": code, "msg": msg}}

    def _answer(self, client: Client, text: str) -> dict[str, Any]:
        try:
            req = json.loads(text)
        except ValueError:
            return self._error(None, 400, -1000, "Invalid JSON")
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            return self._error(None, 400, -1000, "Invalid request: missing method")
        request_id, method, params = req.get("id"), req["method"], req.get("params", [])
        if method == "ping":
            self.pings_received += 1
            return {"id": request_id, "status": 200, "result": {}}
        if method == "time":
            return {"id": request_id, "status": 200, "result": time.time_ns() // 1_000_000}
        if method == "LIST_SUBSCRIPTIONS":
            streams = sorted(f"{s}{_SUFFIX}" for s in client.streams)
            return {"id": request_id, "status": 200, "result": streams}
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            return self._error(request_id, 400, -1000, f"Unknown method: {method}")
        if not isinstance(params, list) or not params:
            return self._error(request_id, 400, -1100, "Invalid params: a list of streams")
        wanted = [self._symbol_of(p) for p in params]
        bad = [p for p, s in zip(params, wanted, strict=True) if s is None]
        if bad:
            return self._error(
                request_id, 400, -1100, f"Invalid stream: {', '.join(map(str, bad))}"
            )
        chosen = {s for s in wanted if s is not None}
        if method == "SUBSCRIBE":
            client.streams |= chosen
        else:
            client.streams -= chosen
        return {"id": request_id, "status": 200, "result": None}

    async def _rest_handler(self, request: web.Request) -> web.Response:
        refused = await self.rest_gate()
        if refused is not None:
            return refused
        symbol = request.match_info["symbol"].lower()
        if symbol not in self.paths:
            body = {"result": "error", "reason": "InvalidSymbol", "message": "Unknown symbol"}
            return web.json_response(body, status=400)
        bid, ask = self.book(symbol)
        ticker = {
            "bid": f"{bid:.8f}",
            "ask": f"{ask:.8f}",
            "volume": {"timestamp": time.time_ns() // 1_000_000},
            "last": f"{ask:.8f}",
        }
        return web.json_response(ticker)
