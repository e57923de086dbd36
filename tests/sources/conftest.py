"""Fixtures for source tests: a venue's simulator and adapters wired to it.

A test module names its venue in `VENUE` (a `venue_cases.Case`), or overrides the `case` fixture
to run several; `sim` and `start` then build that venue's simulator and adapter. Helpers are
handed out as fixtures (`wait`, `start`, `start_config`): test modules import nothing from here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
from venue_cases import Case, Running, running, running_source

from oracled.config import SourceConfig
from oracled.model import Kind
from oracled.sim._base import VenueSim
from oracled.sources import Source


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


@pytest.fixture
def wait() -> Callable[..., Any]:
    """`await wait(check, within_s=5.0)`: poll a condition, fail the test if it never holds."""
    return wait_for


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def case(request: pytest.FixtureRequest) -> Case:
    """The venue of the test's module: its `VENUE` (a module may override this fixture, as the
    shared suite does to run every case)."""
    venue: Case = request.module.VENUE
    return venue


@pytest.fixture
async def sim(case: Case) -> AsyncIterator[VenueSim]:
    """The case's simulator at test-sized rates, on loopback."""
    async with case.sim() as venue:
        yield venue


@pytest.fixture
async def start(
    case: Case, sim: VenueSim, http: aiohttp.ClientSession
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Factory: `await start(venue=None, pairs=None, cls=None, **config_overrides)` runs the
    case's adapter on `sim` (or on `venue`); every one is stopped at teardown and must not have
    crashed."""
    async with AsyncExitStack() as stack:

        async def _start(venue: VenueSim | None = None, **kw: Any) -> Running:
            return await stack.enter_async_context(running_source(case, venue or sim, http, **kw))

        yield _start


@pytest.fixture
async def start_config(
    http: aiohttp.ClientSession,
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Factory: `await start_config(cfg, pairs, cls=None, clock=None, host_rests=None)` runs the
    adapter of `cfg.type` on any server (a scripted one, say), on `clock` and sharing
    `host_rests` if given (`venue_cases.running`); stopped at teardown like `start`'s."""
    async with AsyncExitStack() as stack:

        async def _start(
            cfg: SourceConfig,
            pairs: Sequence[tuple[str, Kind]],
            cls: type[Source] | None = None,
            **kw: Any,
        ) -> Running:
            return await stack.enter_async_context(running(cfg.type, cfg, pairs, http, cls, **kw))

        yield _start
