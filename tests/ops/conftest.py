"""The operations tests reuse the integration tests' daemon runner (tests/integration/daemon.py)
and the on-chain tests' local node (tests/chain/chain_rig.py); `venues` is the three loopback
Binance venues the daemon runs of test_checkout.py and test_unit_sandbox.py quote from."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from oracled.sim import BinanceSim

for _folder in ("integration", "chain"):
    _path = str(Path(__file__).resolve().parents[1] / _folder)
    if _path not in sys.path:
        sys.path.insert(0, _path)

PRICES = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "USDTUSD": 1.0}


@pytest.fixture
async def venues() -> AsyncIterator[list[BinanceSim]]:
    """Three simulated venues of one market (`market_seed`), each its own noise (`seed`)."""
    sims = [BinanceSim(PRICES, seed=i, rate_hz=20.0, market_seed=42) for i in range(3)]
    for sim in sims:
        await sim.start()
    yield sims
    for sim in sims:
        await sim.stop()
