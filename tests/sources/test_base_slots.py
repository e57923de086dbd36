"""The source base keeps its own attributes in `__slots__` (a speed, not a behaviour: this test
keeps it from being lost without anyone noticing)."""

from __future__ import annotations

import aiohttp
from runtime.inert_source import InertSource

from oracled.clock import ManualClock
from oracled.config import SourceConfig
from oracled.sources import SourceStats


async def test_the_base_sets_no_attribute_outside_its_slots() -> None:
    """Python 3.11 gives an instance of more than 30 attributes a plain dict, whose reads (and
    the `self._quote` call of every frame) it specialises less: the base's attributes are
    slots, so a venue's instance dict holds only the venue's own few (benchmarks/README.md,
    about 2 to 4 % of a frame's instructions). An attribute the base sets and does not list in
    `Source.__slots__` shows up in the dict of a source that adds none of its own."""
    async with aiohttp.ClientSession() as http:
        source = InertSource(
            "inert",
            SourceConfig(type="binance"),
            [("BTC/USDT", "spot")],
            lambda quote: None,
            ManualClock(),
            http,
            SourceStats("inert"),
        )
    assert vars(source) == {}
