"""The two behaviours of the source base that play out over time, observed without timing them:
the reconnect backoff growing and being reset by a healthy connection (read from the attempt each
reconnect logs, with the source on a clock the venue moves), and the watchdog cutting a silent
socket one liveness period after its last frame, not several (read from each look of the
watchdog: when the connection's last frame came, and when it set its next look)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from oracled.clock import Clock, ManualClock, SystemClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sources import ConnState, Source, SourceStats, backoff_delay

Wait = Callable[..., Awaitable[None]]
PAIRS: list[tuple[str, Kind]] = [("BTC/USDT", "spot")]
SEED = 1795
QUOTE = "BTCUSDT 100.0 100.1"


class LineSource(Source):
    """The smallest venue: text frames `SYMBOL BID ASK`, a request `sub ID SYMBOLS..` acked as
    `ack ID`, no REST fallback (so nothing but the stream talks to the test's server)."""

    default_ws_url: ClassVar[str] = "ws://127.0.0.1:9"  # always replaced by the config's
    default_rest_url: ClassVar[str | None] = None
    backoff_base_s: ClassVar[float] = 0.01  # attempt n waits at most 0.01 * 2**n s
    healthy_after_s: ClassVar[float] = 60.0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._rng = random.Random(SEED)  # the jitter, reproducible: each delay is known exactly

    def stream_url(self) -> str:
        return f"{self.ws_url}/stream"

    def subscribe_message(self, request_id: int, symbols: Sequence[str]) -> str:
        return f"sub {request_id} {' '.join(symbols)}"

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        words = (data if isinstance(data, str) else data.decode()).split()
        if words[:1] == ["ack"]:
            self._ack(int(words[1]))
        else:
            self._quote_text(words[0], words[1], words[2], recv_ts)

    def rest_request(self, symbols: Sequence[str]) -> tuple[str, dict[str, str]] | None:
        return None

    def on_rest(self, body: bytes, recv_ts: int) -> None:
        raise AssertionError("no REST in these tests")


Script = Callable[[web.WebSocketResponse, int], Awaitable[None]]


async def serve(aiohttp_server: Any, script: Script, refuse: Callable[[int], bool]) -> str:
    """A loopback venue: connection n is refused with a 503 if `refuse(n)`, else handed to
    `script(ws, n)` once the client's subscribe request is acknowledged; its ws:// base URL."""
    count = 0

    async def stream(request: web.Request) -> web.StreamResponse:
        nonlocal count
        n, count = count, count + 1
        if refuse(n):
            return web.Response(status=503)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        request_id = (await ws.receive_str()).split()[1]
        await ws.send_str(f"ack {request_id}")
        await script(ws, n)
        return ws

    app = web.Application()
    app.router.add_get("/stream", stream)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/").replace("http://", "ws://")


async def until_closed(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) whatever the client sends until it closes the connection."""
    async for _ in ws:
        pass


@asynccontextmanager
async def running(
    url: str,
    clock: Clock,
    http: aiohttp.ClientSession,
    before: Callable[[LineSource], None] | None = None,
    **config: Any,
) -> AsyncIterator[tuple[SourceStats, list[Quote]]]:
    """A `LineSource` streaming from `url` on `clock`, started once `before` (if given) was
    called with it; it must end by cancellation, not a crash."""
    cfg = SourceConfig(type="binance", ws_url=url, **config)
    stats, quotes = SourceStats("line"), list[Quote]()
    source = LineSource("line", cfg, PAIRS, quotes.append, clock, http, stats)
    if before is not None:
        before(source)
    task = asyncio.create_task(source.run(), name="test:line")
    try:
        yield stats, quotes
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not task.cancelled():
            task.result()


async def test_backoff_grows_per_failure_and_resets_only_after_a_healthy_connection(
    aiohttp_server: Any, http: aiohttp.ClientSession, wait: Wait
) -> None:
    """Each failed connection waits one attempt longer: refused handshakes grow the attempt, and
    so does a connection that streamed for just under `healthy_after_s`; one that streamed for
    `healthy_after_s` resets it, so the next failure starts again from attempt 0. Each delay
    slept is the one its attempt, the base and the cap give (the jitter is seeded). Time on the
    source's clock passes only when the venue, while streaming, moves it forward: the outcome
    does not depend on the machine's speed."""
    clock = ManualClock(1_000_000)
    healthy_ms = int(LineSource.healthy_after_s * 1000)
    # Per connection: refused (R), streams then closes just short of healthy (S), streams then
    # closes once healthy (H), streams and stays (the last).
    plan = "RRRSHRR"

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        # A new book each time: one repeating the last book would be dropped as `unchanged`.
        await ws.send_str(f"BTCUSDT {100 + n}.0 {100 + n}.1")
        if n >= len(plan):
            await until_closed(ws)
            return
        clock.advance(healthy_ms if plan[n] == "H" else healthy_ms - 1)
        await ws.close()

    url = await serve(aiohttp_server, script, lambda n: n < len(plan) and plan[n] == "R")
    with capture_logs() as logs:
        async with running(url, clock, http, liveness_timeout_s=3600, reconnect_max_s=60) as (
            stats,
            quotes,
        ):
            await wait(lambda: stats.reconnects == len(plan) and len(quotes) == 3)
            await wait(lambda: stats.state is ConnState.STREAMING)
    backoffs = [e for e in logs if e["event"] == "reconnect backoff"]
    attempts = [0, 1, 2, 3, 0, 1, 2]
    assert [e["attempt"] for e in backoffs] == attempts
    rng = random.Random(SEED)  # the source's jitter, drawn again: the delays it slept
    assert [e["delay_s"] for e in backoffs] == [
        backoff_delay(a, LineSource.backoff_base_s, 60.0, rng) for a in attempts
    ]


LIVENESS_S = 1.0  # small enough for a quick test


@dataclass
class Look:
    """One look of the watchdog: the connection's last frame then, and when the look it
    scheduled is due (None: this look cut the connection), on the source's clock."""

    last_rx: float
    at: float
    next_at: float | None


def watched(looks: list[Look]) -> Callable[[LineSource], None]:
    """Make a source record each look of its watchdog in `looks`: a spy on `Source._check`,
    which the watchdog schedules by attribute, so every look goes through it."""

    def install(source: LineSource) -> None:
        check = source._check

        def look() -> None:
            last_rx, at = source._last_rx, source._clock.monotonic()
            check()
            watch = source._watch
            cut = source._cut is not None or watch is None or watch.cancelled()
            looks.append(Look(last_rx, at, None if cut else watch.when()))

        source._check = look  # type: ignore[method-assign]

    return install


@pytest.mark.parametrize(
    "busy_s",
    [0.0, LIVENESS_S + 0.1],
    ids=["silent-from-the-start", "silent-after-streaming-past-the-first-look"],
)
async def test_silent_socket_is_cut_one_liveness_period_after_its_last_frame(
    busy_s: float, aiohttp_server: Any, http: aiohttp.ClientSession, wait: Wait
) -> None:
    """A socket left open but silent is cut by the watchdog (reason "silent") one liveness
    period after its last frame, whether the silence starts right after the subscription or
    after quotes every 50 ms outlasted the first look (the watchdog must look again on its own
    schedule). Every look that finds the connection not yet a period idle schedules the next for
    the moment it would be, from its last frame, or 5 ms on (a watchdog that waited a whole
    period from the look would cut up to a period late); the look that cuts finds it a period
    idle. Read from the looks themselves, on the source's clock (the event loop's): how late a
    loaded machine runs them does not matter. The venue sees the close a period or more after
    it sent its last frame."""
    last_sent: list[float] = []
    closed: list[float] = []
    looks: list[Look] = []

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        if n == 0:
            opened = time.monotonic()
            while time.monotonic() - opened < busy_s:
                await ws.send_str(QUOTE)
                await asyncio.sleep(0.05)
            last_sent.append(time.monotonic())
            await ws.send_str(QUOTE)
            await until_closed(ws)
            closed.append(time.monotonic())
        else:
            await until_closed(ws)

    url = await serve(aiohttp_server, script, lambda n: False)
    with capture_logs() as logs:
        async with running(
            url,
            SystemClock(),
            http,
            watched(looks),
            liveness_timeout_s=LIVENESS_S,
            reconnect_max_s=0.2,
        ):
            await wait(lambda: closed != [], within_s=6 * LIVENESS_S)
    *kept, cut = looks[: next(i for i, look in enumerate(looks) if look.next_at is None) + 1]
    assert len(kept) >= (busy_s > 0), looks  # quotes outlasted the first look: it cut nothing
    for look in kept:
        assert look.at - look.last_rx < LIVENESS_S, look
        due = max(look.last_rx + LIVENESS_S, look.at + 0.005)  # 5 ms at least: no busy loop
        # The look reads the clock, then the loop's time to schedule: a process preempted
        # between the two may lose a little; a watchdog off by a period is far outside.
        assert look.next_at == pytest.approx(due, abs=0.1 * LIVENESS_S), look
    assert cut.at - cut.last_rx >= LIVENESS_S, cut
    assert closed[0] - last_sent[0] >= LIVENESS_S, (closed, last_sent)
    downs = [e for e in logs if e["event"] == "source state" and e["state"] == "down"]
    assert downs[0]["reason"] == "silent"
