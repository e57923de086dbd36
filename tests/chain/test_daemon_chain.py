"""End to end: `oracled run` reads Chainlink, a Uniswap v3 pool and Pyth from a local node, and
two off-chain venues from their simulators, and makes one ETH/USD price out of all five.

The node starts ten minutes in the past so that the pool has a TWAP window of history behind it
without any block from the future: set-up happens in the past, then the node's clock is set to
now and it mines a block every second, as a real chain does.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from chain_rig import (
    PYTH_ETH_ID,
    Anvil,
    Chain,
    Pool,
    deploy_tokens,
    make_pool,
    pyth_update,
    start_anvil,
)

from oracled.sim import BinanceSim

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from daemon import Daemon  # the shared subprocess helper of the integration tests

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]

TWAP_WINDOW_S = 300
ON_CHAIN = ("cl", "uni", "py")


@pytest_asyncio.fixture(loop_scope="session")
async def sims() -> AsyncIterator[list[BinanceSim]]:
    venues = [BinanceSim({"ETHUSD": 3000.0}, seed=i + 1, market_seed=7) for i in range(2)]
    for venue in venues:
        await venue.start()
    yield venues
    for venue in venues:
        await venue.stop()


def _config(
    node: Anvil, proxy: str, pool: Pool, weth: str, pyth: str, sims: list[BinanceSim]
) -> str:
    d0, d1 = pool.decimals0, pool.decimals1
    invert = "true" if pool.token1 == weth else "false"
    out = [
        "[oracle]\nround_interval_ms = 100\n",
        '[api]\nadmin_token_env = "ORACLED_TEST_ADMIN_TOKEN"\n',
        '[log]\nformat = "json"\n',
        f'[chains.local]\nchain_id = 31337\nrpc_urls = ["{node.url}"]\nws_url = "{node.ws_url}"\n'
        "max_block_age_s = 120\n",
        '[sources.cl]\ntype = "chainlink"\nchain = "local"\n'
        f'feeds."ETH/USD" = {{ address = "{proxy}", heartbeat_s = 3600 }}\n',
        '[sources.uni]\ntype = "uniswap_v3"\nchain = "local"\n'
        f'feeds."ETH/USD" = {{ address = "{pool.address}", twap_window_s = {TWAP_WINDOW_S}, '
        f"min_liquidity = 1e16, token0_decimals = {d0}, token1_decimals = {d1}, "
        f'invert = {invert}, base_token = "{weth}" }}\n',
        f'[sources.py]\ntype = "pyth_evm"\nchain = "local"\naddress = "{pyth}"\n'
        f'feeds."ETH/USD" = {{ feed_id = "0x{PYTH_ETH_ID.hex()}", max_age_s = 3600 }}\n',
    ]
    for i, sim in enumerate(sims):
        out.append(
            f'[sources.v{i}]\ntype = "binance"\nws_url = "{sim.ws_url}"\n'
            f'rest_url = "{sim.rest_url}"\n'
        )
    entries = ", ".join(
        f'{{ source = "{s}", pair = "ETH/USD" }}' for s in [*ON_CHAIN, *(f"v{i}" for i in range(2))]
    )
    out.append(
        '[[markets]]\nsymbol = "ETH/USD"\nmin_sources = 4\nmax_age_ms = 60000\n'
        f"max_deviation = 0.01\nsources = [{entries}]\n"
    )
    return "\n".join(out)


_CHAIN_SERIES = re.compile(
    r'^oracled_chain_(head_block|blocks_read_total|round_trips_total)\{chain="local"\} (\S+)$',
    re.M,
)


async def _chain_counters(
    daemon: Daemon, after: dict[str, float] | None = None
) -> dict[str, float] | None:
    """The local chain's head and read counters from /metrics; None until the head is at least
    three blocks past `after` (or has a first block)."""
    status, text = await daemon.get("/metrics")
    assert status == 200
    found = {k.removesuffix("_total"): float(v) for k, v in _CHAIN_SERIES.findall(text)}
    if len(found) != 3 or found["head_block"] != found["head_block"]:  # NaN: no block yet
        return None
    if after is not None and found["head_block"] < after["head_block"] + 3:
        return None
    return found


async def test_daemon_prices_from_chain_and_venues_together(
    tmp_path: Path, http: aiohttp.ClientSession, sims: list[BinanceSim]
) -> None:
    """With a node mining every second, the daemon's ETH/USD report is active and uses all five
    sources: Chainlink (3000.00), the Uniswap pool's TWAP (3000 to a tick) and Pyth
    (3000.12 +- 0.015) read on chain in one call per block, and two venues at 3000; its metrics
    show the chain reader following the node, the chain's own max_block_age_s (which its alert
    compares the head's age with), and the pool's spot-gap counter at 0."""
    started = int(time.time())
    node = start_anvil(tmp_path / "anvil.log", "--timestamp", str(started - 600))
    daemon: Daemon | None = None
    try:
        chain = Chain(node.url, http)
        await chain.start()
        await chain.install_multicall3()
        agg = await chain.deploy("MockV3Aggregator", ["uint8", "int256"], [8, 3000_00000000])
        proxy = await chain.deploy("TestAggregatorProxy", ["address"], [agg])
        pyth = await chain.deploy("MockPyth", ["uint256", "uint256"], [60, 1])
        tokens = await deploy_tokens(chain, both_sides=False)
        pool = await make_pool(
            chain, tokens, tokens.weth, tokens.usd_above, "3000", liquidity=10**17
        )
        # Back to the present: the pool now has more than a window of history behind it.
        await chain.rpc("anvil_setTime", [int(time.time())])
        await chain.transact(agg, "updateAnswer(int256)", 3000_00000000)
        now = await chain.timestamp()
        await pyth_update(chain, pyth, PYTH_ETH_ID, 300_012_000_000, 1_500_000, -8, now)
        await chain.rpc("evm_setIntervalMining", [1])

        config = _config(node, proxy, pool, tokens.weth, pyth, sims)
        daemon = Daemon(config, tmp_path)
        await daemon.start()
        report = await daemon.wait_status("ETH/USD", {"active"}, limit_s=20.0)
        used = {s["id"]: s for s in report["sources"]}
        assert set(used) == {*ON_CHAIN, "v0", "v1"}
        assert all(s["used"] for s in used.values()), used
        assert float(used["cl"]["value"]) == pytest.approx(3000.0)
        assert float(used["uni"]["value"]) == pytest.approx(3000.0, rel=1e-4)
        assert float(used["py"]["value"]) == pytest.approx(3000.12)
        assert float(report["price"]) == pytest.approx(3000.0, rel=2e-3)
        assert "chain enabled" in daemon.logs()
        assert "following newHeads" in daemon.logs()

        # newHeads: one eth_call per block once the feeds have learned their set-up reads.
        first = await daemon.wait_for(lambda: _chain_counters(daemon), 10.0, "chain metrics")
        later = await daemon.wait_for(
            lambda: _chain_counters(daemon, after=first), 10.0, "three more blocks"
        )
        blocks = later["blocks_read"] - first["blocks_read"]
        trips = later["round_trips"] - first["round_trips"]
        assert blocks >= 3
        assert abs(trips - blocks) <= 1  # a scrape may fall between a read's two counters
        assert later["head_block"] >= first["head_block"] + 3
        # The pool's TWAP/slot0 cross-check is exported from its start (resting pool: no gap).
        _, text = await daemon.get("/metrics")
        gaps = 'oracled_chain_spot_gaps_total{chain="local",pair="ETH/USD",source="uni"} 0.0'
        assert gaps in text.splitlines()
        assert 'oracled_chain_max_block_age_seconds{chain="local"} 120.0' in text.splitlines()
    finally:
        if daemon is not None:
            await daemon.close()
        node.stop()
