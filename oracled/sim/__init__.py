"""Loopback venue simulators for tests, the demo and benchmarks: real servers on 127.0.0.1."""

from __future__ import annotations

from oracled.sim.binance import GARBAGE, BinanceSim, SimStats
from oracled.sim.paths import PricePath

__all__ = ["GARBAGE", "BinanceSim", "PricePath", "SimStats"]
