"""Fixtures for source tests: a running Binance simulator and sources wired to it.

Helpers are handed out as fixtures (`wait`, `config`, `start`) so that test modules import
nothing from this file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from oracled.clock import SystemClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sim import BinanceSim
from oracled.sources import Source, SourceStats, build_source

PRICES = {"BTCUSDT": 67_000.0, "ETHUSDT": 3_500.0}
PAIRS: list[tuple[str, Kind]] = [("BTC/USDT", "spot"), ("ETH/USDT", "spot")]


async def wait_for(check: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll `check` until true; fail the test with a clear message after `within_s` seconds.

    Polling (not an Event) because the conditions are counters owned by the code under test.
    """
    try:
        async with asyncio.timeout(within_s):
            while not check():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"condition not met within {within_s} s")


def fast_config(ws_url: str, rest_url: str, **overrides: Any) -> SourceConfig:
    """Timings short enough for a test to see reconnects and polling in well under a second."""
    values: dict[str, Any] = {
        "type": "binance",
        "ws_url": ws_url,
        "rest_url": rest_url,
        "liveness_timeout_s": 0.5,
        "rest_poll_interval_s": 0.1,
        "reconnect_max_s": 0.2,
    }
    values.update(overrides)
    return SourceConfig(**values)


@pytest.fixture
def wait() -> Callable[..., Any]:
    """`await wait(check, within_s=5.0)`: poll a condition, fail the test if it never holds."""
    return wait_for


@pytest.fixture
def config() -> Callable[..., SourceConfig]:
    """`config(ws_url, rest_url, **overrides)`: a SourceConfig with test-sized timings."""
    return fast_config


@dataclass
class Running:
    """A source running in a task, with what it emitted."""

    source: Source
    stats: SourceStats
    quotes: list[Quote] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def sim() -> AsyncIterator[BinanceSim]:
    # Bound before `async with`: VenueSim.__aenter__ is annotated to return the base class, so
    # `as venue` would type the fixture's value as VenueSim although it is this BinanceSim.
    venue = BinanceSim(PRICES, seed=7, rate_hz=40.0, ping_interval_s=1.0)
    async with venue:
        yield venue


@pytest.fixture
async def start(
    http: aiohttp.ClientSession,
) -> AsyncIterator[Callable[..., Running]]:
    """Factory: start a source for a config and pairs; every source is cancelled at teardown."""
    started: list[Running] = []

    def _start(cfg: SourceConfig, pairs: list[tuple[str, Kind]] = PAIRS) -> Running:
        stats = SourceStats("binance")
        quotes: list[Quote] = []
        source = build_source("binance", cfg, pairs, quotes.append, SystemClock(), http, stats)
        running = Running(source, stats, quotes)
        running.task = asyncio.create_task(source.run(), name="test:source")
        started.append(running)
        return running

    yield _start
    for running in started:
        assert running.task is not None
        running.task.cancel()
        await asyncio.gather(running.task, return_exceptions=True)
        if not running.task.cancelled():
            running.task.result()  # a source must only ever end by cancellation
