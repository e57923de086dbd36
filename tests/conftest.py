"""Fixtures every test folder may ask for by name."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator

import pytest
from venue_sims import BinanceVenues

from oracled.service import RECURSION_LIMIT


@pytest.fixture
def daemon_recursion_limit() -> Iterator[None]:
    """The running daemon's recursion limit, put back afterwards. oracled.service lowers the
    100,000 that py_ecc sets at import, under which an untyped JSON decode of a deeply nested
    answer overflows the C stack instead of raising RecursionError; a test sending such answers
    must run at the daemon's limit, not at the one its imports left behind."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(RECURSION_LIMIT)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


@pytest.fixture
async def binance_venues() -> AsyncIterator[BinanceVenues]:
    """Simulated Binance venues started on demand, every one stopped after the test."""
    venues = BinanceVenues()
    yield venues
    await venues.stop()
