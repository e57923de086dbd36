"""A loopback Binance spot venue: the ``/stream`` WebSocket and the REST book ticker, with faults.

It speaks the real wire protocol (see oracled/sources/binance.py for the docs): combined-stream
``<symbol>@bookTicker`` frames, ``SUBSCRIBE``/``UNSUBSCRIBE``/``LIST_SUBSCRIPTIONS`` with
``{"result":null,"id":N}`` acks, error frames ``{"error":{"code":2,"msg":...},"id":N}``, server
pings that expect a pong echoing their payload, the 5 incoming messages a second limit (a client
over it is closed with 1008), and ``GET /api/v3/ticker/bookTicker``.

Two deliberate differences from the real venue, both to exercise the adapter's error paths: an
unknown symbol in a SUBSCRIBE gets an error frame (the real venue stays silent), and the whole
request is refused (nothing in it is subscribed).

Faults: `spike` (this venue alone prints a wrong price), `silence` (socket open, nothing sent, not
even pings), `disconnect` (drop every client), `garbage` (malformed frames), `ws_enabled = False`
(handshakes refused with 503), `rest_enabled = False` (REST answers 503), `reset` (all cleared).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

import aiohttp
from aiohttp import web

from oracled.sim.paths import PricePath

__all__ = ["GARBAGE", "BinanceSim", "SimStats"]

_SUFFIX: Final = "@bookTicker"


class _Out(Enum):
    DATA = 1
    GARBAGE = 2
    CONTROL = 3
    PING = 4
    PONG = 5


# One of each kind of bad frame the adapter must survive: broken JSON, wrong shapes, and
# well-formed frames whose prices are NaN, infinite, zero, negative, not numbers, or crossed.
GARBAGE: Final[tuple[str, ...]] = (
    '{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":',
    "not json at all",
    '{"stream":"btcusdt@bookTicker","data":[1,2,3]}',
    '{"stream":"btcusdt@bookTicker","data":{"u":2,"s":"BTCUSDT","b":67000.1,"a":67000.2}}',
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


@dataclass(slots=True)
class SimStats:
    """What the venue saw and did; tests read these to prove the adapter's behaviour."""

    connections: int = 0  # WebSocket handshakes accepted, in total
    active: int = 0  # connections open now
    refused: int = 0  # handshakes refused while ws_enabled is False
    frames_sent: int = 0  # bookTicker frames
    garbage_sent: int = 0
    pings_sent: int = 0
    pongs_received: int = 0
    requests: int = 0  # control messages received (SUBSCRIBE and the like)
    errors_sent: int = 0
    rate_limited: int = 0  # connections closed for sending too many messages
    pong_timeouts: int = 0  # connections closed for not answering pings
    rest_requests: int = 0


class _Client:
    __slots__ = ("outbox", "ping_due", "recent", "request", "streams", "ws")

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request
        self.outbox: asyncio.Queue[tuple[_Out, str | bytes]] = asyncio.Queue()
        self.streams: set[str] = set()  # venue symbols, upper case
        self.recent: deque[float] = deque()  # arrival times of recent incoming messages
        self.ping_due: float | None = None  # when an unanswered ping times out


class BinanceSim:
    """A Binance spot venue on loopback; see the module docstring for the protocol and faults."""

    def __init__(
        self,
        prices: Mapping[str, float],
        *,
        seed: int = 0,
        rate_hz: float = 4.0,
        volatility: float = 0.0002,
        spread_bps: float = 1.0,
        host: str = "127.0.0.1",
        port: int = 0,
        ping_interval_s: float = 20.0,
        pong_timeout_s: float = 60.0,
        message_limit: int = 5,
        market_seed: int | None = None,
        basis_bps: float = 2.0,
    ) -> None:
        self.paths = {
            sym.upper(): PricePath(
                p,
                seed=f"{seed}:{sym.upper()}",
                volatility=volatility,
                market_seed=None if market_seed is None else f"{market_seed}:{sym.upper()}",
                basis_bps=basis_bps if market_seed is not None else 0.0,
            )
            for sym, p in prices.items()
        }
        self.rate_hz = rate_hz
        self.spread_bps = spread_bps
        self.host = host
        self.port = port
        self.ping_interval_s = ping_interval_s
        self.pong_timeout_s = pong_timeout_s
        self.message_limit = message_limit
        self.rest_enabled = True
        self.ws_enabled = True
        self.stats = SimStats()
        self._update_ids = itertools.count(1_000_000)
        self._silent_until = -math.inf
        self._clients: set[_Client] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/stream", self._ws_handler)
        app.router.add_get("/api/v3/ticker/bookTicker", self._rest_handler)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._tasks = [
            asyncio.create_task(self._publish(), name="sim:binance:publish"),
            asyncio.create_task(self._ping(), name="sim:binance:ping"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in list(self._clients):
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await client.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> BinanceSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------- script and faults

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def set_price(self, symbol: str, price: float) -> None:
        self.paths[symbol.upper()].set(price)

    def ramp(self, symbol: str, target: float, seconds: float) -> None:
        self.paths[symbol.upper()].ramp(target, seconds, self._now())

    def spike(self, symbol: str, factor: float, seconds: float | None) -> None:
        """This venue alone prints mid * `factor` for `seconds` (None: until `reset`)."""
        self.paths[symbol.upper()].spike(factor, seconds, self._now())

    def silence(self, seconds: float | None) -> None:
        """Keep sockets open but send nothing, not even pings, for `seconds` (None: until reset)."""
        self._silent_until = math.inf if seconds is None else self._now() + seconds

    @property
    def silent(self) -> bool:
        return self._now() < self._silent_until

    def disconnect(self) -> int:
        """Drop every client's TCP connection without a closing handshake; returns how many."""
        dropped = 0
        for client in list(self._clients):
            transport = client.request.transport
            if transport is not None:
                transport.abort()
                dropped += 1
        return dropped

    def garbage(self, n: int) -> int:
        """Send `n` malformed frames (cycling through `GARBAGE`) to each client; return the sum."""
        frames = list(itertools.islice(itertools.cycle(GARBAGE), n))
        for client in self._clients:
            for frame in frames:
                client.outbox.put_nowait((_Out.GARBAGE, frame))
        return n * len(self._clients)

    def reset(self) -> None:
        """Clear every fault: spikes, ramps, silence, disabled endpoints."""
        for path in self.paths.values():
            path.clear()
        self._silent_until = -math.inf
        self.rest_enabled = True
        self.ws_enabled = True

    def book(self, symbol: str) -> tuple[float, float]:
        """The (bid, ask) this venue would print now."""
        mid = self.paths[symbol].published(self._now())
        half = mid * self.spread_bps / 20_000.0
        return mid - half, mid + half

    # ----------------------------------------------------------------- WebSocket

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        if not self.ws_enabled:
            self.stats.refused += 1
            return web.Response(status=503, text="Service Unavailable")
        ws = web.WebSocketResponse(autoping=False, timeout=1.0)
        await ws.prepare(request)
        client = _Client(ws, request)
        for name in filter(None, request.query.get("streams", "").split("/")):
            if self._symbol_of(name) is not None:
                client.streams.add(name[: -len(_SUFFIX)].upper())
        self.stats.connections += 1
        self.stats.active += 1
        self._clients.add(client)
        writer = asyncio.create_task(self._write(client), name="sim:binance:write")
        try:
            await self._read(client)
        finally:
            self._clients.discard(client)
            self.stats.active -= 1
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        return ws

    async def _read(self, client: _Client) -> None:
        ws = client.ws
        async for msg in ws:
            if msg.type not in (
                aiohttp.WSMsgType.TEXT,
                aiohttp.WSMsgType.PING,
                aiohttp.WSMsgType.PONG,
            ):
                continue
            if self._over_limit(client):
                self.stats.rate_limited += 1
                await ws.close(
                    code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"Too many requests"
                )
                return
            if msg.type is aiohttp.WSMsgType.PONG:
                self.stats.pongs_received += 1
                client.ping_due = None
            elif msg.type is aiohttp.WSMsgType.PING:
                if not self.silent:
                    client.outbox.put_nowait((_Out.PONG, msg.data))
            else:
                self.stats.requests += 1
                reply = self._control(client, msg.data)
                client.outbox.put_nowait((_Out.CONTROL, json.dumps(reply, separators=(",", ":"))))

    def _over_limit(self, client: _Client) -> bool:
        now = self._now()
        recent = client.recent
        recent.append(now)
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        return len(recent) > self.message_limit

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

    def _control(self, client: _Client, text: str) -> dict[str, Any]:
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

    async def _write(self, client: _Client) -> None:
        ws, stats = client.ws, self.stats
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
            while True:
                kind, payload = await client.outbox.get()
                if kind is _Out.PING:
                    await ws.ping(payload if isinstance(payload, bytes) else payload.encode())
                    stats.pings_sent += 1
                elif kind is _Out.PONG:
                    await ws.pong(payload if isinstance(payload, bytes) else payload.encode())
                else:
                    await ws.send_str(payload if isinstance(payload, str) else payload.decode())
                    if kind is _Out.DATA:
                        stats.frames_sent += 1
                    elif kind is _Out.GARBAGE:
                        stats.garbage_sent += 1

    # ----------------------------------------------------------------- publishers

    async def _publish(self) -> None:
        interval = 1.0 / self.rate_hz
        while True:
            await asyncio.sleep(interval)
            now = self._now()
            silent = self.silent
            for symbol, path in self.paths.items():
                path.step(now)
                if silent:
                    continue
                frame = self._frame(symbol, path, now)
                for client in self._clients:
                    if symbol in client.streams:
                        client.outbox.put_nowait((_Out.DATA, frame))

    def _frame(self, symbol: str, path: PricePath, now: float) -> str:
        mid = path.published(now)
        half = mid * self.spread_bps / 20_000.0
        return (
            f'{{"stream":"{symbol.lower()}{_SUFFIX}","data":{{"u":{next(self._update_ids)},'
            f'"s":"{symbol}","b":"{mid - half:.8f}","B":"{path.size():.8f}",'
            f'"a":"{mid + half:.8f}","A":"{path.size():.8f}"}}}}'
        )

    async def _ping(self) -> None:
        payload = itertools.count(1)
        while True:
            await asyncio.sleep(self.ping_interval_s)
            if self.silent:
                continue
            now = self._now()
            for client in list(self._clients):
                if client.ping_due is not None and now >= client.ping_due:
                    self.stats.pong_timeouts += 1
                    await client.ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION)
                    continue
                if client.ping_due is None:
                    client.ping_due = now + self.pong_timeout_s
                client.outbox.put_nowait((_Out.PING, str(next(payload)).encode()))

    # ----------------------------------------------------------------- REST

    async def _rest_handler(self, request: web.Request) -> web.Response:
        self.stats.rest_requests += 1
        if not self.rest_enabled:
            return web.Response(status=503, text="Service Unavailable")
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
