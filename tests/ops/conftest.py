"""The operations tests reuse the integration tests' daemon runner (tests/integration/daemon.py)
and the on-chain tests' local node (tests/chain/chain_rig.py); `venues` is the three loopback
Binance venues the daemon runs of test_checkout.py and test_unit_sandbox.py quote from, and
`module_venues` the same venues for a module whose tests share a daemon that they only read."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from venue_sims import BinanceVenues

from oracled.sim import BinanceSim

for _folder in ("integration", "chain"):
    _path = str(Path(__file__).resolve().parents[1] / _folder)
    if _path not in sys.path:
        sys.path.insert(0, _path)

PRICES = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "USDTUSD": 1.0}


@pytest.fixture
async def venues(binance_venues: BinanceVenues) -> list[BinanceSim]:
    """Three simulated venues of one market (`market_seed`), each its own noise (`seed`)."""
    return await binance_venues(PRICES, 3, market_seed=42)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_venues() -> AsyncIterator[list[BinanceSim]]:
    """The venues of `venues`, started once for a module (its tests on the module's loop)."""
    started = BinanceVenues()
    try:
        yield await started(PRICES, 3, market_seed=42)
    finally:
        await started.stop()
