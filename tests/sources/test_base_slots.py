"""The source base keeps its own attributes in `__slots__` (a speed, not a behaviour: this test
keeps it from being lost without anyone noticing)."""

from __future__ import annotations

import aiohttp

from oracled.clock import ManualClock
from oracled.config import SourceConfig
from oracled.sources import Source, SourceStats


class _NoVenue(Source):
    """The hooks a Source must have, inert: whatever its instance dict holds is the base's."""

    default_ws_url = "ws://127.0.0.1:9"

    def stream_url(self) -> str:
        return self.default_ws_url

    def subscribe_message(self, request_id: int, symbols: object) -> str:
        return ""

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        return None

    def rest_request(self, symbols: object) -> None:
        return None

    def on_rest(self, body: bytes, recv_ts: int) -> None:
        return None


async def test_the_base_sets_no_attribute_outside_its_slots() -> None:
    """Python 3.11 gives an instance of more than 30 attributes a plain dict, whose reads (and
    the `self._quote` call of every frame) it specialises less: the base's attributes are
    slots, so a venue's instance dict holds only the venue's own few (benchmarks/README.md,
    about 2 to 4 % of a frame's instructions). An attribute the base sets and does not list in
    `Source.__slots__` shows up here."""
    async with aiohttp.ClientSession() as http:
        source = _NoVenue(
            "nv",
            SourceConfig(type="binance"),
            [("BTC/USDT", "spot")],
            lambda quote: None,
            ManualClock(),
            http,
            SourceStats("nv"),
        )
    assert vars(source) == {}
