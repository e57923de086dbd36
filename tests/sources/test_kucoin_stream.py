"""The KuCoin adapter against the loopback KuCoin simulator: token, streaming, faults, fallback.

The faults every venue shares (disconnect, silence, garbage, burst, replay, absurd prices, REST
fallback, rotation) run for this venue too, from test_stream_faults.py; this file holds the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from oracled.clock import SystemClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sim.kucoin import KucoinSim
from oracled.sources import ConnState, SourceStats
from oracled.sources.kucoin import KucoinSource

PRICES = {"BTC-USDT": 67_000.0, "ETH-USDT": 3_500.0}
PAIRS: list[tuple[str, Kind]] = [("BTC/USDT", "spot"), ("ETH/USDT", "spot")]
BOTH = {"BTC/USDT", "ETH/USDT"}
Wait = Callable[..., Any]


class Run:
    def __init__(self, source: KucoinSource, stats: SourceStats, quotes: list[Quote]) -> None:
        self.source, self.stats, self.quotes = source, stats, quotes

    def seen(self, since: int = 0) -> set[str]:
        return {q.pair for q in self.quotes[since:]}


def state(run: Run) -> ConnState:
    """The source's state, read through a call so that type narrowing does not freeze it."""
    return run.stats.state


@pytest.fixture
async def venue() -> AsyncIterator[KucoinSim]:
    sim = KucoinSim(PRICES, seed=9, rate_hz=40.0, ping_interval_s=0.2, ping_timeout_s=0.2)
    async with sim:
        yield sim


@pytest.fixture
async def start(http: aiohttp.ClientSession, venue: KucoinSim) -> AsyncIterator[Callable[..., Run]]:
    """Factory: start a KuCoin source whose REST (and so bullet) URL is the simulator."""
    tasks: list[asyncio.Task[None]] = []

    def _start(pairs: list[tuple[str, Kind]] = PAIRS, **over: Any) -> Run:
        values: dict[str, Any] = {
            "type": "kucoin",
            "rest_url": venue.rest_url,
            "liveness_timeout_s": 0.5,
            "rest_poll_interval_s": 0.1,
            "reconnect_max_s": 0.2,
            **over,
        }
        stats, quotes = SourceStats("kucoin"), []  # type: ignore[var-annotated]
        cfg = SourceConfig(**values)
        source = KucoinSource("kucoin", cfg, pairs, quotes.append, SystemClock(), http, stats)
        tasks.append(asyncio.create_task(source.run(), name="test:kucoin"))
        return Run(source, stats, quotes)

    yield _start
    for task in tasks:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not task.cancelled():
            task.result()  # a source must only ever end by cancellation


async def test_token_welcome_subscribe_then_quotes(
    venue: KucoinSim, start: Callable[..., Run], wait: Wait
) -> None:
    """Bullet token, welcome, one acked subscribe; quotes flow with the venue's event time."""
    run = start()
    await wait(lambda: run.seen() == BOTH)
    assert state(run) is ConnState.STREAMING
    assert venue.bullets == 1 and venue.stats.connections == 1
    assert run.source._pending == {}
    assert run.stats.failed_instruments == {}
    assert run.source.stream_url().startswith(f"{venue.ws_url}/endpoint?token=")
    for q in run.quotes:
        assert q.source == "kucoin" and q.venue_ts is not None
        assert q.bid is not None and q.ask is not None and 0 < q.bid <= q.ask


async def test_pings_at_the_interval_the_bullet_gave(
    venue: KucoinSim, start: Callable[..., Run], wait: Wait
) -> None:
    """The client pings every pingInterval from the bullet (0.2 s), so the venue never drops it."""
    run = start(liveness_timeout_s=2.0)
    await wait(lambda: venue.pings_received >= 5)
    assert run.source.app_ping_interval_s == pytest.approx(0.2)
    assert venue.stats.pong_timeouts == 0 and venue.stats.rate_limited == 0
    assert venue.stats.connections == 1 and run.stats.reconnects == 0
    assert run.stats.malformed == 0


async def test_configured_ws_url_replaces_the_endpoint_host(
    venue: KucoinSim, start: Callable[..., Run], wait: Wait
) -> None:
    """With ws_url set, the socket goes to that host (a second simulator sharing the first one's
    tokens) while the token still comes from the configured REST host's bullet call."""
    other = KucoinSim(PRICES, rate_hz=40.0, ping_interval_s=0.2, ping_timeout_s=0.2)
    other.tokens = venue.tokens
    async with other:
        run = start(ws_url=other.ws_url)
        await wait(lambda: run.seen() == BOTH)
        assert run.source.stream_url().startswith(f"{other.ws_url}/endpoint?token=")
        assert venue.bullets >= 1 and other.bullets == 0
        assert venue.stats.connections == 0 and other.stats.connections == 1


async def test_unknown_symbol_fails_alone_without_reconnecting(
    venue: KucoinSim, start: Callable[..., Run], wait: Wait
) -> None:
    """The refused batch is split; only FOO-USDT fails, on the one connection, within limits."""
    run = start([*PAIRS, ("FOO/USDT", "spot")])
    await wait(lambda: "FOO-USDT" in run.stats.failed_instruments)
    assert "404" in run.stats.failed_instruments["FOO-USDT"]
    seen = len(run.quotes)
    await wait(lambda: run.seen(seen) == BOTH)
    await asyncio.sleep(0.3)
    assert venue.stats.connections == 1 and run.stats.reconnects == 0
    assert venue.stats.rate_limited == 0


async def test_rest_failures_are_counted_and_polling_recovers(
    venue: KucoinSim, start: Callable[..., Run], wait: Wait
) -> None:
    """With the stream refused, 429, 500 and slow REST answers are counted, state stays down,
    polling keeps its interval, and quotes resume when REST answers again."""
    venue.ws_enabled = False
    venue.rest_status = 429
    run = start()
    await wait(lambda: run.stats.dropped["rest_error"] >= 3)
    assert state(run) is ConnState.DOWN and run.quotes == []
    venue.rest_status = 500
    calls = venue.stats.rest_requests
    await asyncio.sleep(0.55)
    assert 4 <= venue.stats.rest_requests - calls <= 14  # two symbols per 0.1 s poll
    venue.rest_status = None
    venue.rest_delay_s = 0.3
    await wait(lambda: state(run) is ConnState.POLLING)
    await wait(lambda: run.seen() == BOTH)
    venue.rest_delay_s = 0.0
    venue.ws_enabled = True
    await wait(lambda: state(run) is ConnState.STREAMING)
