"""`stagger=True`: a venue's symbols go out spread over each tick, each frame stamped when built."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import aiohttp

from oracled.config import parse_config
from oracled.sim._base import VenueSim
from oracled.sim.okx import OkxSim
from oracled.sim.venues import simulate

SYMBOLS = [f"C{i}-USDT" for i in range(8)]
PRICES = dict.fromkeys(SYMBOLS, 10.0)
RATE_HZ = 2.5  # a 400 ms tick: 8 slices of one symbol, 50 ms apart


async def tick_frames(sim: VenueSim, ticks: int) -> list[dict[str, Any]]:
    """The ticker rows of `ticks` whole ticks, from the first frame of the tick's first symbol.
    The subscription's answer is passed over: its acks, then each symbol's current ticker."""
    rows: list[dict[str, Any]] = []
    answered: list[str] = []  # the first data frames, one a symbol, queued before any tick
    args = [{"channel": "tickers", "instId": s} for s in SYMBOLS]
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{sim.ws_url}/ws/v5/public") as ws,
    ):
        await ws.send_str(json.dumps({"op": "subscribe", "args": args}))
        async with asyncio.timeout(10):
            while len(rows) < ticks * len(SYMBOLS):
                msg = await ws.receive()
                assert msg.type is aiohttp.WSMsgType.TEXT, msg
                frame = json.loads(msg.data)
                if "data" not in frame:
                    continue  # a subscription ack
                row = frame["data"][0]
                if len(answered) < len(SYMBOLS):
                    answered.append(row["instId"])
                    continue
                if rows or row["instId"] == sim.order[0]:
                    rows.append(row)
    assert sorted(answered) == SYMBOLS
    return rows


async def test_staggered_ticks_send_every_symbol_once_spread_over_the_tick() -> None:
    """Each tick sends every symbol once, in the venue's seeded order, with venue times spread
    over the tick (eight slices 50 ms apart: at least 200 ms from the first to the last even on
    a loaded machine)."""
    async with OkxSim(PRICES, seed=1, rate_hz=RATE_HZ, stagger=True) as sim:
        rows = await tick_frames(sim, 3)
    assert sorted(sim.order) == SYMBOLS
    assert Counter(r["instId"] for r in rows) == dict.fromkeys(SYMBOLS, 3)
    for t in range(3):
        tick = rows[t * 8 : (t + 1) * 8]
        assert [r["instId"] for r in tick] == list(sim.order)
        stamps = [int(r["ts"]) for r in tick]
        assert stamps == sorted(stamps) and len(set(stamps)) == 8
        assert stamps[-1] - stamps[0] >= 200


def test_the_staggered_order_is_seeded_and_differs_between_venues() -> None:
    """The order is a permutation fixed by the venue's seed: the same seed gives the same order,
    other seeds others (so one symbol is not at the same point of every venue's tick)."""
    orders = [OkxSim(PRICES, seed=seed, stagger=True).order for seed in (1, 1, 2, 3)]
    assert orders[0] == orders[1]
    assert len({orders[0], orders[2], orders[3]}) == 3
    assert tuple(SYMBOLS) not in orders


async def test_by_default_a_tick_sends_every_symbol_at_once() -> None:
    """Without `stagger` a tick's frames are all built at one instant: their venue times lie
    within a few ms of each other (well under the 400 ms tick)."""
    async with OkxSim(PRICES, seed=1, rate_hz=RATE_HZ) as sim:
        rows = await tick_frames(sim, 2)
    for t in range(2):
        stamps = [int(r["ts"]) for r in rows[t * 8 : (t + 1) * 8]]
        assert stamps[-1] - stamps[0] < 100


async def test_simulate_passes_stagger_to_every_venue() -> None:
    """`simulate(cfg, stagger=True)` starts every source's simulator staggered (default: not)."""
    cfg = parse_config(
        {
            "sources": {"x": {"type": "okx"}, "y": {"type": "binance"}},
            "markets": [
                {
                    "symbol": "BTC/USDT",
                    "min_sources": 1,
                    "sources": [
                        {"source": "x", "pair": "BTC/USDT"},
                        {"source": "y", "pair": "BTC/USDT"},
                    ],
                }
            ],
        },
        env={},
    )
    for stagger in (True, False):
        _, venues = await simulate(cfg, stagger=stagger)
        try:
            assert [v.sim.stagger for v in venues] == [stagger, stagger]
        finally:
            for v in venues:
                await v.sim.stop()
