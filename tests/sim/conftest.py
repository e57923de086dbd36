"""Fixtures shared by the simulator tests: one HTTP client session a test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for the test's WebSocket and REST calls to a loopback simulator."""
    async with aiohttp.ClientSession() as session:
        yield session
