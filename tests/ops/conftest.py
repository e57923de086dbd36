"""The operations tests reuse the integration tests' daemon runner (tests/integration/daemon.py)
and the on-chain tests' local node (tests/chain/chain_rig.py); `venues` is the three loopback
Binance venues the daemon runs of test_checkout.py and test_unit_sandbox.py quote from."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
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
