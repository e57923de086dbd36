"""The OKX adapter against the loopback OKX simulator: streaming, faults, recovery, fallback.

The faults every venue shares (disconnect, silence, garbage, burst, replay, absurd prices, REST
fallback, rotation) run for this venue too, from test_stream_faults.py; this file holds the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import aiohttp
import pytest

from oracled.clock import SystemClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sim._base import Client
from oracled.sim.okx import OkxSim
from oracled.sources import ConnState, SourceStats
from oracled.sources.okx import OkxSource

PRICES = {"BTC-USDT": 67_000.0, "ETH-USDT": 3_500.0, "BTC-USDT-SWAP": 67_020.0}
PAIRS: list[tuple[str, Kind]] = [("BTC/USDT", "spot"), ("ETH/USDT", "spot"), ("BTC/USDT", "perp")]
ALL = {("BTC/USDT", "spot"), ("ETH/USDT", "spot"), ("BTC/USDT", "perp")}
Wait = Callable[..., Any]


class FastPingOkx(OkxSource):
    """The adapter with a test-sized ping interval (the venue's rule is: under 30 s)."""

    app_ping_interval_s: ClassVar[float | None] = 0.3


class RapidPingOkx(OkxSource):
    """Pings ten times a second, for a quiet-market test that must not take long."""

    app_ping_interval_s: ClassVar[float | None] = 0.1
    max_messages_per_s: ClassVar[int] = 30


class Run:
    def __init__(self, source: OkxSource, stats: SourceStats, quotes: list[Quote]) -> None:
        self.source, self.stats, self.quotes = source, stats, quotes

    def seen(self, since: int = 0) -> set[tuple[str, str]]:
        return {(q.pair, q.kind) for q in self.quotes[since:]}


def state(run: Run) -> ConnState:
    """The source's state, read through a call so that type narrowing does not freeze it."""
    return run.stats.state


@pytest.fixture
async def venue() -> AsyncIterator[OkxSim]:
    sim = OkxSim(PRICES, seed=5, rate_hz=40.0)
    async with sim:
        yield sim


@pytest.fixture
async def start(http: aiohttp.ClientSession, venue: OkxSim) -> AsyncIterator[Callable[..., Run]]:
    """Factory: start an OKX source on the simulator; every task is cancelled at teardown."""
    tasks: list[asyncio.Task[None]] = []

    def _start(
        pairs: list[tuple[str, Kind]] = PAIRS, cls: type[OkxSource] = OkxSource, **over: Any
    ) -> Run:
        values: dict[str, Any] = {
            "type": "okx",
            "ws_url": venue.ws_url,
            "rest_url": venue.rest_url,
            "liveness_timeout_s": 0.5,
            "rest_poll_interval_s": 0.1,
            "reconnect_max_s": 0.2,
            **over,
        }
        stats, quotes = SourceStats("okx"), []  # type: ignore[var-annotated]
        source = cls(
            "okx", SourceConfig(**values), pairs, quotes.append, SystemClock(), http, stats
        )
        tasks.append(asyncio.create_task(source.run(), name="test:okx"))
        return Run(source, stats, quotes)

    yield _start
    for task in tasks:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not task.cancelled():
            task.result()  # a source must only ever end by cancellation


async def test_streams_spot_and_swap_after_acked_subscribe(
    venue: OkxSim, start: Callable[..., Run], wait: Wait
) -> None:
    """One subscribe is acked arg by arg; spot and swap quotes flow with the venue's event time."""
    run = start()
    await wait(lambda: run.seen() == ALL)
    assert state(run) is ConnState.STREAMING
    assert venue.stats.requests == 1
    assert run.source._pending == {}
    assert run.stats.failed_instruments == {}
    for q in run.quotes:
        assert q.source == "okx" and q.venue_ts is not None and q.venue_ts <= q.recv_ts + 5_000
        assert q.bid is not None and q.ask is not None and 0 < q.bid <= q.ask
    perp = [q for q in run.quotes if q.kind == "perp"]
    assert perp and all(abs((q.bid or 0) / 67_020.0 - 1) < 0.01 for q in perp)


async def test_sends_text_pings_and_reads_pongs(
    venue: OkxSim, start: Callable[..., Run], wait: Wait
) -> None:
    """The client pings with the text ``ping``, paced under the venue's limit; pongs are life."""
    run = start(cls=FastPingOkx, liveness_timeout_s=2.0)
    await wait(lambda: venue.pings_received >= 3)
    assert run.stats.malformed == 0
    assert venue.stats.rate_limited == 0
    assert venue.stats.connections == 1 and run.stats.reconnects == 0


async def test_quiet_market_stays_connected_on_pongs_alone(
    start: Callable[..., Run], wait: Wait
) -> None:
    """With no price updates at all, pong replies keep the connection alive past the watchdog."""
    quiet = OkxSim(PRICES, rate_hz=0.01, message_limit=30)
    async with quiet:
        run_cfg = {"ws_url": quiet.ws_url, "rest_url": quiet.rest_url}
        run = start(cls=RapidPingOkx, liveness_timeout_s=0.4, **run_cfg)
        await wait(lambda: quiet.pings_received >= 10)  # about 1 s: 2.5 liveness periods
        assert quiet.stats.connections == 1
        assert run.stats.reconnects == 0


async def test_unknown_instrument_fails_alone_without_reconnecting(
    venue: OkxSim, start: Callable[..., Run], wait: Wait
) -> None:
    """A 60018 error fails FOO-USDT only; the rest stream on one connection, nothing retried."""
    run = start([*PAIRS, ("FOO/USDT", "spot")])
    await wait(lambda: "FOO-USDT" in run.stats.failed_instruments)
    assert "60018" in run.stats.failed_instruments["FOO-USDT"]
    seen = len(run.quotes)
    await wait(lambda: run.seen(seen) == ALL)
    await asyncio.sleep(0.3)
    assert venue.stats.connections == 1 and run.stats.reconnects == 0
    assert venue.stats.requests == 1  # the venue settled each arg; no split, no retry
    assert run.source._pending == {}


async def test_upgrade_notice_rotates_without_going_down(
    venue: OkxSim, start: Callable[..., Run], wait: Wait
) -> None:
    """Notice 64008 makes the client reconnect at once; the stream never counts as down."""
    run = start()
    await wait(lambda: state(run) is ConnState.STREAMING)
    venue.notice()
    await wait(lambda: venue.stats.connections >= 2 and run.stats.reconnects == 1)
    seen = len(run.quotes)
    await wait(lambda: run.seen(seen) == ALL)
    assert venue.stats.rest_requests == 0
    assert state(run) is ConnState.STREAMING


async def test_rest_failures_are_counted_and_polling_recovers(
    venue: OkxSim, start: Callable[..., Run], wait: Wait
) -> None:
    """With the stream refused, 429, 503 and slow REST answers are counted, state stays down,
    polling goes on at its interval, and quotes resume as soon as REST answers again."""
    venue.ws_enabled = False
    venue.rest_status = 429
    run = start()
    await wait(lambda: run.stats.dropped["rest_error"] >= 3)
    assert state(run) is ConnState.DOWN and run.quotes == []
    venue.rest_status = 503
    errors = run.stats.dropped["rest_error"]
    await wait(lambda: run.stats.dropped["rest_error"] >= errors + 3)
    calls = venue.stats.rest_requests
    await asyncio.sleep(0.55)
    assert 2 <= venue.stats.rest_requests - calls <= 7  # one request per 0.1 s interval
    venue.rest_status = None
    venue.rest_delay_s = 0.3
    await wait(lambda: state(run) is ConnState.POLLING)
    await wait(lambda: run.seen() == ALL)
    venue.rest_delay_s = 0.0
    venue.ws_enabled = True
    await wait(lambda: state(run) is ConnState.STREAMING)


class DeafOkxSim(OkxSim):
    """A venue that loses the first subscribe request it receives (no ack, no error)."""

    lost = 0

    def on_text(self, client: Client, text: str) -> None:
        if text != "ping" and not self.lost:
            self.lost += 1
            return
        super().on_text(client, text)


async def test_unacknowledged_subscription_is_not_kept_alive_by_pongs(
    start: Callable[..., Run], wait: Wait
) -> None:
    """A subscribe the venue never answers is noticed at a pong; the connection is replaced."""
    deaf = DeafOkxSim(PRICES, rate_hz=40.0, message_limit=30)
    async with deaf:
        run = start(cls=RapidPingOkx, liveness_timeout_s=5.0, ws_url=deaf.ws_url)
        await wait(lambda: state(run) is ConnState.STREAMING)  # on a second connection
        seen = len(run.quotes)
        await wait(lambda: run.seen(seen) == ALL)
        assert deaf.lost == 1
        assert deaf.stats.connections == 2 and run.stats.reconnects == 1
