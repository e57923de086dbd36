"""A loopback KuCoin spot venue: bullet token, the ``/market/ticker`` topic and REST tickers.

It speaks the protocol described in oracled/sources/kucoin.py: ``POST /api/v1/bullet-public``
hands out a token and an instance server whose endpoint points back at this simulator
(``{ws_url}/endpoint``) with its ``pingInterval``/``pingTimeout``; a handshake without a token it
issued is refused with 401; each connection is greeted with ``{"id":<connectId>,"type":"welcome"}``;
``subscribe``/``unsubscribe`` to ``/market/ticker:A,B`` (at most 100 symbols) are acked with
``{"id":"<id>","type":"ack"}`` when ``response`` is true; a topic naming a symbol the venue does
not list is refused whole with ``{"id":..,"type":"error","code":404,"data":"topic ... is not
found"}``; ``{"type":"ping"}`` is answered with ``pong``; a client that has not pinged for
``ping_interval_s + ping_timeout_s`` is closed (counted as ``stats.pong_timeouts``). Ticker frames
have the recorded shape and a strictly increasing ``sequence``; while the books are frozen, level 1
answers each symbol's last ticker again, sequence and time included. REST serves
``GET /api/v1/market/orderbook/level1?symbol=`` (400 with code 900001 for an unknown symbol: the
docs show no answer for one, so status, code and words are the simulator's) and
``GET /api/v1/market/allTickers``. A 429 (``rest_status``) is worded as KuCoin's spent pool:
``{"code":"429000",..}`` with ``gw-ratelimit-limit``, ``gw-ratelimit-remaining`` and
``gw-ratelimit-reset`` (`rate_limit_reset_ms`, the milliseconds until the quota resets).

The bullet endpoint honours the REST faults (`rest_enabled`, `rest_status`) but is counted apart,
in `bullets`, so that `stats.rest_requests` counts fallback polls only. A client over
``message_limit`` messages a second (100 per 10 s on the venue) is closed with 1008.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import aiohttp
from aiohttp import web

from oracled.sim._base import Client, SimStats, VenueSim
from oracled.sim.paths import PricePath

__all__ = ["GARBAGE", "KucoinSim", "SimStats"]

_TOPIC: Final = "/market/ticker:"
_MAX_TOPICS: Final = 100

# One of each kind of bad frame: broken JSON, truncated, wrong shapes, and well-formed tickers whose
# prices are NaN, infinite, zero, negative, missing, not numbers, or crossed. Their sequence is far
# ahead so that the adapter's ordering check cannot hide them behind an older-frame drop.
_T: Final = '{"type":"message","topic":"/market/ticker:BTC-USDT","subject":"trade.ticker","data":'
GARBAGE: Final[tuple[str, ...]] = (
    '{"data":{"sequence":"99999999999999","bestAsk":"67000.2","size":"0.1","bestBidSi',
    "not json at all",
    _T + '["67000.1","67000.2"]}',
    '{"type":"message","topic":"/market/level2:BTC-USDT","data":{"changes":{"asks":[]}}}',
    '{"id":"1","type":"mystery"}',
    "[]",
    _T + '{"sequence":"99999999999991","bestBid":"NaN","bestAsk":"NaN","time":1}}',
    _T + '{"sequence":"99999999999992","bestBid":"inf","bestAsk":"inf","time":1}}',
    _T + '{"sequence":"99999999999993","bestBid":"0","bestAsk":"0","time":1}}',
    _T + '{"sequence":"99999999999994","bestBid":"-5","bestAsk":"-4","time":1}}',
    _T + '{"sequence":"99999999999995","bestBid":null,"bestAsk":"1","time":1}}',
    _T + '{"sequence":"99999999999996","bestBid":"abc","bestAsk":"1","time":1}}',
    _T + '{"sequence":"99999999999997","bestBid":"70000","bestAsk":"60000","time":1}}',
    _T + '{"sequence":"99999999999998","bestBid":67000.1,"bestAsk":67000.2,"time":1}}',
)


def _num(value: float) -> str:
    text = f"{value:.8f}".rstrip("0")
    return text.rstrip(".") if text.endswith(".") else text


class KucoinSim(VenueSim):
    """A KuCoin spot venue on loopback; see the module docstring for the protocol and faults."""

    name = "kucoin"
    GARBAGE: ClassVar[tuple[str, ...]] = GARBAGE

    def __init__(
        self,
        prices: Mapping[str, float],
        *,
        ping_interval_s: float = 18.0,
        ping_timeout_s: float = 10.0,
        message_limit: int = 10,
        rate_limit_reset_ms: int = 30_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(prices, message_limit=message_limit, **kwargs)
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.bullets = 0  # bullet-public calls
        #: What a 429 (`rest_status`) names as the time until the pool's quota resets, in ms.
        self.rate_limit_reset_ms = rate_limit_reset_ms
        #: Set: sent as the header's text instead (a garbled header, such as "inf" or "1e9").
        self.rate_limit_reset_text: str | None = None
        self.pings_received = 0
        self.tokens: set[str] = set()
        self._seq = itertools.count(1_613_277_183_873)
        self._last: dict[str, dict[str, Any]] = {}  # each symbol's last ticker
        self._epoch_ms = 0.0
        self._epoch_loop = 0.0

    def restart_sequence(self, start: int = 1) -> None:
        """Number the next tickers from `start` again, as after a restart of the venue's engine."""
        self._seq = itertools.count(start)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/bullet-public", self._bullet)
        app.router.add_get("/endpoint", self._endpoint)
        app.router.add_get("/api/v1/market/orderbook/level1", self._level1)
        app.router.add_get("/api/v1/market/allTickers", self._all_tickers)

    def background(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._reap(), name="sim:kucoin:ping-timeout")]

    # ----------------------------------------------------------------- token and handshake

    async def _bullet(self, request: web.Request) -> web.Response:
        self.bullets += 1
        if not self.rest_enabled:
            return web.Response(status=503, text="Service Unavailable")
        if self.rest_status is not None:
            return self.rest_refusal(self.rest_status)
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        server = {
            "endpoint": f"{self.ws_url}/endpoint",
            "encrypt": False,
            "protocol": "websocket",
            "pingInterval": round(self.ping_interval_s * 1000),
            "pingTimeout": round(self.ping_timeout_s * 1000),
        }
        return web.json_response(
            {"code": "200000", "data": {"token": token, "instanceServers": [server]}}
        )

    async def _endpoint(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("token") not in self.tokens:
            return web.json_response({"code": "401", "msg": "token is invalid"}, status=401)
        return await self.ws_handler(request)

    def on_connect(self, client: Client) -> None:
        connect_id = client.request.query.get("connectId") or secrets.token_hex(5)
        client.state["last_ping"] = self.now()
        if not self.silent:  # a silent venue sends nothing at all, not even its greeting
            client.send(json.dumps({"id": connect_id, "type": "welcome"}, separators=(",", ":")))

    async def _reap(self) -> None:
        """Close clients that stopped pinging, as the venue does after pingInterval+pingTimeout."""
        limit = self.ping_interval_s + self.ping_timeout_s
        while True:
            await asyncio.sleep(min(self.ping_interval_s, self.ping_timeout_s) / 4)
            now = self.now()
            for client in list(self.clients):
                last = client.state.get("last_ping")
                if isinstance(last, float) and now - last > limit:
                    self.stats.pong_timeouts += 1
                    client.state["last_ping"] = float("inf")
                    await client.ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION)

    # ----------------------------------------------------------------- WebSocket protocol

    def on_text(self, client: Client, text: str) -> None:
        try:
            req = json.loads(text)
        except ValueError:
            req = None
        if not isinstance(req, dict):
            self._error(client, None, 400, "request is not valid json")
            return
        request_id, kind = req.get("id"), req.get("type")
        if kind == "ping":
            self.pings_received += 1
            client.state["last_ping"] = self.now()
            client.send(json.dumps({"id": str(request_id), "type": "pong"}))
            return
        if kind not in ("subscribe", "unsubscribe"):
            self._error(client, request_id, 400, f"type {kind} is not supported")
            return
        topic = req.get("topic")
        if not isinstance(topic, str) or not topic.startswith(_TOPIC):
            self._error(client, request_id, 404, f"topic {topic} is not found")
            return
        symbols = topic[len(_TOPIC) :].split(",")
        if len(symbols) > _MAX_TOPICS:
            self._error(client, request_id, 509, "exceed max subscription count limitation")
            return
        if any(s not in self.paths for s in symbols):
            self._error(client, request_id, 404, f"topic {topic} is not found")
            return
        if kind == "subscribe":
            client.streams.update(symbols)
        else:
            client.streams.difference_update(symbols)
        if req.get("response") is True:
            client.send(json.dumps({"id": str(request_id), "type": "ack"}))

    def _error(self, client: Client, request_id: Any, code: int, data: str) -> None:
        self.stats.errors_sent += 1
        body = {"id": None if request_id is None else str(request_id), "type": "error"}
        client.send(json.dumps({**body, "code": code, "data": data}, separators=(",", ":")))

    def data_frame(self, symbol: str, path: PricePath, now: float) -> str:
        data = json.dumps(self._ticker(symbol, path, now), separators=(",", ":"))
        return (
            f'{{"data":{data},"subject":"trade.ticker","topic":"{_TOPIC}{symbol}",'
            '"type":"message"}'
        )

    def _ticker(self, symbol: str, path: PricePath, now: float) -> dict[str, Any]:
        if self.frozen and symbol in self._last:
            return self._last[symbol]  # the book has not changed: nor has its ticker
        bid, ask = self.book(symbol)
        size = _num(path.size())
        ticker = self._last[symbol] = {
            "sequence": str(next(self._seq)),
            "bestAsk": _num(ask),
            "size": size,
            "bestBidSize": size,
            "price": _num((bid + ask) / 2.0),
            "time": self._wall_ms(now),
            "bestAskSize": size,
            "bestBid": _num(bid),
        }
        return ticker

    def _wall_ms(self, now: float) -> int:
        return int(self._epoch_ms + (now - self._epoch_loop) * 1000.0)

    async def start(self) -> None:
        self._epoch_ms = time.time() * 1000.0
        self._epoch_loop = self.now()
        await super().start()

    # ----------------------------------------------------------------- REST

    def rest_refusal(self, status: int) -> web.Response:
        """KuCoin's words for a failed call: a 429 is the spent pool (code 429000) with the
        milliseconds until its quota resets in ``gw-ratelimit-reset`` (`rate_limit_reset_ms`)."""
        if status != 429:
            return web.json_response({"code": "500000", "msg": "fault"}, status=status)
        text = self.rate_limit_reset_text
        headers = {
            "gw-ratelimit-limit": "2000",
            "gw-ratelimit-remaining": "0",
            "gw-ratelimit-reset": str(self.rate_limit_reset_ms) if text is None else text,
        }
        body = {"code": "429000", "msg": "Too Many Requests"}
        return web.json_response(body, status=429, headers=headers)

    async def _level1(self, request: web.Request) -> web.Response:
        refused = await self.rest_gate()
        if refused is not None:
            return refused
        symbol = request.query.get("symbol", "")
        if symbol not in self.paths:
            return web.json_response({"code": "900001", "msg": "symbol not exists"}, status=400)
        data = self._ticker(symbol, self.paths[symbol], self.now())
        return web.json_response({"code": "200000", "data": data})

    async def _all_tickers(self, request: web.Request) -> web.Response:
        refused = await self.rest_gate()
        if refused is not None:
            return refused
        now = self.now()
        rows = []
        for symbol in self.paths:
            bid, ask = self.book(symbol)
            rows.append(
                {
                    "symbol": symbol,
                    "symbolName": symbol,
                    "buy": _num(bid),
                    "sell": _num(ask),
                    "last": _num((bid + ask) / 2.0),
                    "changeRate": "0",
                    "vol": "10",
                }
            )
        return web.json_response(
            {"code": "200000", "data": {"time": self._wall_ms(now), "ticker": rows}}
        )
