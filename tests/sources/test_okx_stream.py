"""The OKX adapter against the loopback OKX simulator: streaming, faults, recovery, fallback."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import aiohttp
import pytest

from oracled.clock import SystemClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sim._base import Client
from oracled.sim.okx import GARBAGE, OkxSim
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


async def test_reconnects_and_resubscribes_after_disconnect(
    venue: OkxSim, start: Callable[..., Run], wait: Wait
) -> None:
    """A dropped TCP connection is replaced, every instrument resubscribed, quotes resume."""
    run = start()
    await wait(lambda: state(run) is ConnState.STREAMING)
    assert venue.disconnect() == 1
    await wait(lambda: run.stats.reconnects >= 1 and venue.stats.connections >= 2)
    seen = len(run.quotes)
    await wait(lambda: run.seen(seen) == ALL)
    assert venue.stats.requests >= 2
    assert venue.stats.active == 1


async def test_silent_open_socket_is_replaced(
    venue: OkxSim, start: Callable[..., Run], wait: Wait
) -> None:
    """A half-open socket (nothing sent, pings unanswered) is cut by the watchdog and replaced."""
    run = start(cls=FastPingOkx)
    await wait(lambda: state(run) is ConnState.STREAMING)
    venue.silence(None)
    await wait(lambda: run.stats.reconnects >= 1 and venue.stats.connections >= 2)
    assert state(run) in (ConnState.DOWN, ConnState.POLLING)
    venue.reset()
    await wait(lambda: state(run) is ConnState.STREAMING)
    assert venue.stats.active == 1


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


async def test_garbage_is_counted_and_no_bad_price_escapes(
    venue: OkxSim, start: Callable[..., Run], wait: Wait
) -> None:
    """Every malformed frame is counted once; no NaN, zero, negative or crossed price is emitted."""
    run = start()
    await wait(lambda: state(run) is ConnState.STREAMING)
    sent = venue.garbage(2 * len(GARBAGE))
    await wait(lambda: venue.stats.garbage_sent == sent)
    await wait(lambda: run.stats.malformed == sent)
    for q in run.quotes:
        assert q.bid is not None and q.ask is not None
        assert math.isfinite(q.bid) and math.isfinite(q.ask) and 0 < q.bid <= q.ask
        assert abs(q.bid / 67_000 - 1) < 0.05 or abs(q.bid / 3_500 - 1) < 0.05
    assert venue.stats.connections == 1


async def test_burst_is_processed_in_full(
    venue: OkxSim, start: Callable[..., Run], wait: Wait
) -> None:
    """A burst of 200 updates per instrument reaches the core: every frame becomes a quote."""
    run = start()
    await wait(lambda: run.seen() == ALL)
    frames, quotes = run.stats.frames, run.stats.quotes
    queued = venue.burst(200)
    assert queued == 600
    await wait(lambda: run.stats.quotes - quotes >= 600)
    assert run.stats.frames - frames >= 600
    assert run.stats.malformed == 0 and run.stats.dropped == {}


async def test_replayed_older_frames_never_override_newer_prices(
    venue: OkxSim, start: Callable[..., Run], wait: Wait
) -> None:
    """Duplicates and late frames are dropped by event time; emitted venue times never go back."""
    run = start()
    await wait(lambda: len(run.quotes) >= 30)
    queued = venue.replay_stale(20)
    assert queued == 20
    await wait(lambda: run.stats.dropped["out_of_order"] >= 17)
    await asyncio.sleep(0.1)
    last: dict[tuple[str, str], int] = {}
    for q in run.quotes:
        key = (q.pair, q.kind)
        assert q.venue_ts is not None and q.venue_ts >= last.get(key, 0)
        last[key] = q.venue_ts


async def test_absurd_values_dropped_but_a_1000x_jump_passes(
    venue: OkxSim, start: Callable[..., Run], wait: Wait
) -> None:
    """Zero, negative and NaN are dropped with their reasons; a 1000x price is the core's call."""
    run = start()
    await wait(lambda: state(run) is ConnState.STREAMING)
    venue.garbage(10)  # the first ten of the catalogue: NaN, inf, zero, negative among them
    await wait(lambda: run.stats.malformed == 10)
    assert run.stats.dropped["not_finite"] == 2
    assert run.stats.dropped["non_positive"] == 2
    venue.spike("ETH-USDT", 1000.0, None)
    await wait(lambda: any(q.pair == "ETH/USDT" and (q.bid or 0) > 3_000_000 for q in run.quotes))
    assert run.stats.malformed == 10


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


async def test_rest_polling_covers_a_refused_stream_and_stops_after(
    venue: OkxSim, start: Callable[..., Run], wait: Wait
) -> None:
    """While handshakes are refused, REST polls alternate SPOT/SWAP; streaming ends polling."""
    venue.ws_enabled = False
    run = start()
    await wait(lambda: state(run) is ConnState.POLLING)
    await wait(lambda: run.seen() == ALL)
    assert venue.stats.connections == 0 and venue.stats.refused >= 1
    venue.ws_enabled = True
    await wait(lambda: state(run) is ConnState.STREAMING)
    await asyncio.sleep(0.2)  # a poll already in flight may still land
    polls = venue.stats.rest_requests
    await asyncio.sleep(0.5)
    assert venue.stats.rest_requests == polls


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
