"""What every loopback venue simulator shares; a venue module adds only its wire protocol.

`VenueSim` runs an aiohttp server on 127.0.0.1 with one seeded `PricePath` per venue symbol, a
publish loop, a writer task per WebSocket client (so a slow client never blocks the others), and
every fault the adapters must survive:

- `spike(symbol, factor, seconds)`: this venue alone prints a wrong price;
- `silence(seconds | None)`: sockets stay open, nothing is sent, not even pings or heartbeats;
- `mute(symbol)`: the venue takes subscriptions to the symbol, then sends no update of it (as
  Binance does for a symbol it does not list, or a delisted one); everything else flows on.
  A snapshot some venues send on subscribe still goes out; `unmute(symbol)` ends it;
- `delist(symbol)`: the venue no longer lists the symbol: REST answers of every symbol leave it
  out, one-symbol requests and new subscriptions are refused as for a symbol never listed, and
  nothing of it is sent; `relist(symbol)` lists it again, its price path as it was;
- `freeze(seconds | None)`: every book holds its prices, as on a venue whose matching engine
  stopped while its servers still answer: no data frames (a venue may send `held_frame`s, Bybit's
  level-1 re-push), heartbeats and pongs go on, REST answers the held prices, and times that are
  the book's own stay at the moment of the freeze (`book_ms`);
- `disconnect()`: drop every client's TCP connection without a closing handshake;
- `garbage(n)`: send malformed frames from the venue's `GARBAGE` catalogue;
- `burst(n)`: send `n` data frames at once to every client;
- `replay_stale(n)`: send the last `n` data frames again (duplicates, out of order);
- `ws_enabled = False`: handshakes refused with 503; `rest_enabled = False`: REST answers 503;
- `rest_status = 429 | 5xx`: REST answers that status; `rest_delay_s`: REST answers slowly;
- `rest_limit = (requests, window_s)` (a constructor argument, off by default so that fault
  tests poll at test speed): a venue's per-IP REST limit; a request past it, and every one for
  `rest_ban_s` after (0: none), is refused as the venue words a rate limit
  (`rest_refusal(429)`) and counted in `rest_limited`;
- `reset()`: clears every fault.

A subclass implements `routes()` (its HTTP and WebSocket paths), `on_text(client, text)` (its
control protocol: subscribe, ping, ...) and `data_frame(symbol, path, now)` (one price update),
and may send periodic venue heartbeats with `heartbeat_frame()`.

By default every symbol is stepped at the same instant each tick and its frames queued at once
(simple and predictable for tests). `stagger=True` spreads a tick's symbols over the tick in
slices of `STAGGER_SLICE_S`, in a seeded order (`order`), each frame built when its slice is due:
a benchmark then sees frames stamped when they leave, not a burst whose last frames are late
before anyone reads them.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import math
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Self

import aiohttp
from aiohttp import web

from oracled.sim.paths import PricePath

__all__ = ["STAGGER_SLICE_S", "Client", "Out", "SimStats", "VenueSim"]

#: With `stagger=True`, a tick's symbols go out in slices about this many seconds apart.
STAGGER_SLICE_S = 0.005


class Out(Enum):
    """Kinds of outgoing messages, counted separately in `SimStats`."""

    DATA = 1
    GARBAGE = 2
    CONTROL = 3
    PING = 4
    PONG = 5
    HEARTBEAT = 6


@dataclass(slots=True)
class SimStats:
    """What the venue saw and did; tests read these to prove the adapter's behaviour."""

    connections: int = 0  # WebSocket handshakes accepted, in total
    active: int = 0  # connections open now
    refused: int = 0  # handshakes refused while ws_enabled is False
    frames_sent: int = 0  # price data frames
    garbage_sent: int = 0
    heartbeats_sent: int = 0
    pings_sent: int = 0  # protocol-level or venue-level pings sent by the venue
    pongs_received: int = 0
    requests: int = 0  # control messages received (subscribe and the like)
    errors_sent: int = 0
    rate_limited: int = 0  # connections closed for sending too many messages
    pong_timeouts: int = 0  # connections closed for not answering pings
    rest_requests: int = 0


class Client:
    """One WebSocket client of a simulated venue."""

    __slots__ = ("outbox", "ping_due", "recent", "request", "state", "streams", "ws")

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request
        self.outbox: asyncio.Queue[tuple[Out, str | bytes]] = asyncio.Queue()
        self.streams: set[str] = set()  # venue symbols this client subscribed to
        self.recent: deque[float] = deque()  # arrival times of recent incoming messages
        self.ping_due: float | None = None  # when an unanswered venue ping times out
        self.state: dict[str, object] = {}  # per-venue protocol state (tokens, channel ids)

    def send(self, text: str, kind: Out = Out.CONTROL) -> None:
        self.outbox.put_nowait((kind, text))


class VenueSim(abc.ABC):
    """A venue on loopback; see the module docstring for the faults every venue supports."""

    #: Name used in task names and logs.
    name: ClassVar[str] = "venue"
    #: Malformed frames this venue's adapter must survive, sent by `garbage(n)`.
    GARBAGE: ClassVar[tuple[str, ...]] = ("{", "not json", "[]", '{"unexpected":"shape"}')
    #: Seconds between venue heartbeat frames, or None if the venue sends none.
    heartbeat_interval_s: ClassVar[float | None] = None

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
        message_limit: int = 10,
        market_seed: int | Mapping[str, str] | None = None,
        basis_bps: float = 2.0,
        stagger: bool = False,
        rest_limit: tuple[int, float] | None = None,
        rest_ban_s: float = 0.0,
    ) -> None:
        # market_seed: one seed for all symbols (venues of one market share it), or a seed per
        # symbol key so that venues naming an asset differently still walk it together.
        def common(sym: str) -> str | None:
            if market_seed is None:
                return None
            if isinstance(market_seed, Mapping):
                return market_seed.get(sym)
            return f"{market_seed}:{sym}"

        self.paths = {
            sym: PricePath(
                p,
                seed=f"{seed}:{sym}",
                volatility=volatility,
                market_seed=common(sym),
                basis_bps=basis_bps if common(sym) is not None else 0.0,
            )
            for sym, p in prices.items()
        }
        self.rate_hz = rate_hz
        # stagger: each tick's symbols go out in slices spread over the tick, as a real venue's
        # updates arrive, not all at once (the default, which the tests' timing relies on).
        self.stagger = stagger
        # A tick's order. Staggered: a seeded permutation, so that any few symbols (and the same
        # symbol on several venues) sit at unrelated points of the tick, not all at its start.
        order = list(prices)
        if stagger:
            random.Random(f"{seed}:stagger").shuffle(order)
        self.order: tuple[str, ...] = tuple(order)
        self.spread_bps = spread_bps
        self.host = host
        self.port = port
        self.message_limit = message_limit
        self.rest_enabled = True
        self.ws_enabled = True
        self.rest_status: int | None = None  # e.g. 429 or 503: every REST call answers it
        self.rest_delay_s = 0.0
        self.rest_limit = rest_limit
        self.rest_ban_s = rest_ban_s
        self.rest_limited = 0  # REST requests refused by `rest_limit`
        self._rest_times: deque[float] = deque()  # when the requests in its window came
        self._banned_until = -math.inf
        self.stats = SimStats()
        self.clients: set[Client] = set()
        self._silent_until = -math.inf
        self.muted: set[str] = set()  # symbols whose updates are never sent (`mute`)
        self._delisted: dict[str, PricePath] = {}  # symbols taken out of `paths` (`delist`)
        self._frozen_until = -math.inf
        self._frozen_ms = 0  # Unix ms of the current freeze
        self._held: dict[str, tuple[float, float]] = {}
        self._recent_frames: deque[tuple[str, str]] = deque(maxlen=256)
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.sequence = itertools.count(1_000_000)

    # ----------------------------------------------------------------- venue hooks

    @abc.abstractmethod
    def routes(self, app: web.Application) -> None:
        """Add the venue's WebSocket and REST routes (use `ws_handler` for the socket)."""

    @abc.abstractmethod
    def on_text(self, client: Client, text: str) -> None:
        """Handle one text message from a client (reply with `client.send`)."""

    @abc.abstractmethod
    def data_frame(self, symbol: str, path: PricePath, now: float) -> str:
        """One price update for `symbol` as the venue would send it."""

    def held_frame(self, symbol: str, now: float) -> str | None:
        """A frame the venue sends for `symbol` while its book is frozen (None: nothing; a
        change-driven stream has nothing to say about a book that does not change)."""
        return None

    def heartbeat_frame(self) -> str | None:
        """A venue heartbeat frame for every client, or None."""
        return None

    def on_connect(self, client: Client) -> None:  # noqa: B027 - optional hook, empty by default
        """A client connected (send a welcome message, read query parameters...)."""

    # ----------------------------------------------------------------- lifecycle

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._tasks = [asyncio.create_task(self._publish(), name=f"sim:{self.name}:publish")]
        if self.heartbeat_interval_s is not None:
            self._tasks.append(
                asyncio.create_task(self._heartbeats(), name=f"sim:{self.name}:heartbeat")
            )
        self._tasks.extend(self.background())

    def background(self) -> list[asyncio.Task[None]]:
        """Extra venue tasks started with the server (e.g. protocol pings)."""
        return []

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in list(self.clients):
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await client.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------- script and faults

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def set_price(self, symbol: str, price: float) -> None:
        self.paths[symbol].set(price)

    def ramp(self, symbol: str, target: float, seconds: float) -> None:
        self.paths[symbol].ramp(target, seconds, self.now())

    def spike(self, symbol: str, factor: float, seconds: float | None) -> None:
        """This venue alone prints mid * `factor` for `seconds` (None: until `reset`)."""
        self.paths[symbol].spike(factor, seconds, self.now())

    def silence(self, seconds: float | None) -> None:
        """Keep sockets open but send nothing at all for `seconds` (None: until reset)."""
        self._silent_until = math.inf if seconds is None else self.now() + seconds

    def mute(self, symbol: str) -> None:
        """Send no more updates of `symbol` (one of `paths`), on a connection that stays healthy."""
        if symbol not in self.paths:
            raise KeyError(f"{self.name} simulates no {symbol!r}")
        self.muted.add(symbol)

    def unmute(self, symbol: str) -> None:
        """Send `symbol`'s updates again."""
        self.muted.discard(symbol)

    def delist(self, symbol: str) -> None:
        """Stop listing `symbol` (one of `paths`): out of `paths`, so every answer built from
        them leaves it out and every check of a symbol against them refuses it."""
        self._delisted[symbol] = self.paths.pop(symbol)

    def relist(self, symbol: str) -> None:
        """List a delisted `symbol` again."""
        self.paths[symbol] = self._delisted.pop(symbol)

    @property
    def silent(self) -> bool:
        return self.now() < self._silent_until

    def freeze(self, seconds: float | None) -> None:
        """Hold every book at its current prices for `seconds` (None: until reset); see the
        module docstring."""
        if not self.frozen:
            self._held = {symbol: self.book(symbol) for symbol in self.paths}
            self._frozen_ms = int(time.time() * 1000)
        self._frozen_until = math.inf if seconds is None else self.now() + seconds

    @property
    def frozen(self) -> bool:
        return self.now() < self._frozen_until

    def book_ms(self) -> int:
        """Unix ms of the books' last change as the venue would print it: the moment of a
        freeze while frozen, else now (an unfrozen book moves with every tick)."""
        return self._frozen_ms if self.frozen else int(time.time() * 1000)

    def disconnect(self) -> int:
        """Drop every client's TCP connection without a closing handshake; returns how many."""
        dropped = 0
        for client in list(self.clients):
            transport = client.request.transport
            if transport is not None:
                transport.abort()
                dropped += 1
        return dropped

    def garbage(self, n: int) -> int:
        """Send `n` malformed frames (cycling through `GARBAGE`) to each client; return the sum."""
        frames = list(itertools.islice(itertools.cycle(self.GARBAGE), n))
        for client in self.clients:
            for frame in frames:
                client.outbox.put_nowait((Out.GARBAGE, frame))
        return n * len(self.clients)

    def burst(self, n: int) -> int:
        """Send `n` fresh data frames per subscribed symbol at once; return frames queued."""
        now, queued = self.now(), 0
        for _ in range(n):
            for symbol, path in self.paths.items():
                queued += self._fan_out(symbol, self.data_frame(symbol, path, now))
        return queued

    def replay_stale(self, n: int) -> int:
        """Send the last `n` data frames again, oldest first: duplicates, out of order."""
        frames = list(self._recent_frames)[-n:]
        queued = 0
        for symbol, frame in frames:
            queued += self._fan_out(symbol, frame, remember=False)
        return queued

    def reset(self) -> None:
        """Clear every fault: spikes, ramps, silence, muted symbols, a freeze, disabled or failing
        endpoints, delisted symbols."""
        self.muted.clear()
        self.paths.update(self._delisted)
        self._delisted.clear()
        for path in self.paths.values():
            path.clear()
        self._silent_until = -math.inf
        self._frozen_until = -math.inf
        self.rest_enabled = True
        self.ws_enabled = True
        self.rest_status = None
        self.rest_delay_s = 0.0

    def book(self, symbol: str) -> tuple[float, float]:
        """The (bid, ask) this venue would print now."""
        if self.frozen:
            return self._held[symbol]
        mid = self.paths[symbol].published(self.now())
        half = mid * self.spread_bps / 20_000.0
        return mid - half, mid + half

    # ----------------------------------------------------------------- WebSocket plumbing

    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
        """The venue's WebSocket endpoint: refuse while disabled, else serve one client."""
        if not self.ws_enabled:
            self.stats.refused += 1
            return web.Response(status=503, text="Service Unavailable")
        ws = web.WebSocketResponse(autoping=False, timeout=1.0)
        await ws.prepare(request)
        client = Client(ws, request)
        self.stats.connections += 1
        self.stats.active += 1
        self.clients.add(client)
        self.on_connect(client)
        writer = asyncio.create_task(self._write(client), name=f"sim:{self.name}:write")
        try:
            await self._read(client)
        finally:
            self.clients.discard(client)
            self.stats.active -= 1
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        return ws

    async def _read(self, client: Client) -> None:
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
                    client.outbox.put_nowait((Out.PONG, msg.data))
            else:
                self.stats.requests += 1
                if not self.silent:
                    self.on_text(client, msg.data)

    def _over_limit(self, client: Client) -> bool:
        now = self.now()
        recent = client.recent
        recent.append(now)
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        return len(recent) > self.message_limit

    async def _write(self, client: Client) -> None:
        ws, stats = client.ws, self.stats
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
            while True:
                kind, payload = await client.outbox.get()
                if kind is Out.PING:
                    await ws.ping(payload if isinstance(payload, bytes) else payload.encode())
                    stats.pings_sent += 1
                elif kind is Out.PONG:
                    await ws.pong(payload if isinstance(payload, bytes) else payload.encode())
                else:
                    await ws.send_str(payload if isinstance(payload, str) else payload.decode())
                    if kind is Out.DATA:
                        stats.frames_sent += 1
                    elif kind is Out.GARBAGE:
                        stats.garbage_sent += 1
                    elif kind is Out.HEARTBEAT:
                        stats.heartbeats_sent += 1

    def _fan_out(self, symbol: str, frame: str, *, remember: bool = True) -> int:
        if symbol in self.muted:
            return 0
        if remember:
            self._recent_frames.append((symbol, frame))
        sent = 0
        for client in self.clients:
            if symbol in client.streams:
                client.outbox.put_nowait((Out.DATA, frame))
                sent += 1
        return sent

    async def _publish(self) -> None:
        if self.stagger:
            await self._publish_staggered()
            return
        interval = 1.0 / self.rate_hz
        while True:
            await asyncio.sleep(interval)
            now = self.now()
            silent, frozen = self.silent, self.frozen
            for symbol, path in self.paths.items():
                path.step(now)
                if not silent:
                    self._send_data(symbol, path, now, frozen)

    async def _publish_staggered(self) -> None:
        """Each tick's symbols in slices at even offsets within the tick, each frame built (and
        so stamped) when its slice is due. Deadlines are absolute, so a late slice does not
        delay the ones after it; one that falls behind is sent at once, never skipped."""
        interval = 1.0 / self.rate_hz
        items = [(symbol, self.paths[symbol]) for symbol in self.order]
        n = max(1, min(len(items), round(interval / STAGGER_SLICE_S)))
        bounds = [len(items) * k // n for k in range(n + 1)]
        due = self.now()
        while True:
            for k in range(n):
                due += interval / n
                await asyncio.sleep(max(0.0, due - self.now()))
                now = self.now()
                silent, frozen = self.silent, self.frozen
                for symbol, path in items[bounds[k] : bounds[k + 1]]:
                    path.step(now)
                    if not silent and symbol in self.paths:  # not delisted
                        self._send_data(symbol, path, now, frozen)

    def _send_data(self, symbol: str, path: PricePath, now: float, frozen: bool) -> None:
        """One tick's frame for `symbol`: a price update, or while frozen the venue's held
        frame if it sends one."""
        if not frozen:
            self._fan_out(symbol, self.data_frame(symbol, path, now))
        elif (held := self.held_frame(symbol, now)) is not None:
            self._fan_out(symbol, held, remember=False)

    async def _heartbeats(self) -> None:
        assert self.heartbeat_interval_s is not None
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            frame = self.heartbeat_frame()
            if frame is None or self.silent:
                continue
            for client in self.clients:
                client.outbox.put_nowait((Out.HEARTBEAT, frame))

    # ----------------------------------------------------------------- REST plumbing

    async def rest_gate(self) -> web.Response | None:
        """Apply REST faults: count the call, delay, refuse; None means answer normally."""
        self.stats.rest_requests += 1
        if self.rest_delay_s > 0:
            await asyncio.sleep(self.rest_delay_s)
        if not self.rest_enabled:
            return web.Response(status=503, text="Service Unavailable")
        if self.rest_status is not None:
            return self.rest_refusal(self.rest_status)
        if self._over_rest_limit():
            self.rest_limited += 1
            return self.rest_refusal(429)
        return None

    def _over_rest_limit(self) -> bool:
        """Whether this REST request is past `rest_limit`, or inside the ban one earlier began."""
        if self.rest_limit is None:
            return False
        now = self.now()
        if now < self._banned_until:
            return True
        most, window_s = self.rest_limit
        times = self._rest_times
        times.append(now)
        while times[0] <= now - window_s:
            times.popleft()
        if len(times) > most:
            self._banned_until = now + self.rest_ban_s
            return True
        return False

    def rest_refusal(self, status: int) -> web.Response:
        """The answer of a REST call failed by `rest_status`: a generic JSON error, unless the
        venue's module words it as the venue does (KuCoin's rate limit)."""
        return web.json_response({"error": "simulated failure"}, status=status)
