"""Loopback venue simulators for tests, the demo and benchmarks: real servers on 127.0.0.1.

`_base.VenueSim` holds what every venue shares (server, price paths, faults); each venue module
adds its wire protocol.
"""

from __future__ import annotations

from oracled.sim._base import Client, Out, SimStats, VenueSim
from oracled.sim.binance import GARBAGE, BinanceSim
from oracled.sim.paths import PricePath

__all__ = ["GARBAGE", "BinanceSim", "Client", "Out", "PricePath", "SimStats", "VenueSim"]
