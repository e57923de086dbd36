"""End to end: `oracled run` reads Chainlink and Pyth from a local node, and two off-chain venues
from their simulators, and makes one ETH/USD price out of all four."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from chain_rig import (
    PYTH_ETH_ID,
    Chain,
    pyth_update,
    start_anvil,
)

from oracled.sim import BinanceSim

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from daemon import Daemon  # the shared subprocess helper of the integration tests

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]


@pytest_asyncio.fixture(loop_scope="session")
async def sims() -> AsyncIterator[list[BinanceSim]]:
    venues = [BinanceSim({"ETHUSD": 3000.0}, seed=i + 1, market_seed=7) for i in range(2)]
    for venue in venues:
        await venue.start()
    yield venues
    for venue in venues:
        await venue.stop()


def _config(rpc: str, proxy: str, pyth: str, sims: list[BinanceSim]) -> str:
    out = [
        "[oracle]\nround_interval_ms = 100\n",
        '[api]\nadmin_token_env = "ORACLED_TEST_ADMIN_TOKEN"\n',
        '[log]\nformat = "json"\n',
        f'[chains.local]\nchain_id = 31337\nrpc_urls = ["{rpc}"]\npoll_interval_s = 0.2\n',
        '[sources.cl]\ntype = "chainlink"\nchain = "local"\n'
        f'feeds."ETH/USD" = {{ address = "{proxy}", heartbeat_s = 3600 }}\n',
        f'[sources.py]\ntype = "pyth_evm"\nchain = "local"\naddress = "{pyth}"\n'
        f'feeds."ETH/USD" = {{ feed_id = "0x{PYTH_ETH_ID.hex()}", max_age_s = 3600 }}\n',
    ]
    for i, sim in enumerate(sims):
        out.append(
            f'[sources.v{i}]\ntype = "binance"\nws_url = "{sim.ws_url}"\n'
            f'rest_url = "{sim.rest_url}"\n'
        )
    entries = ", ".join(
        f'{{ source = "{s}", pair = "ETH/USD" }}'
        for s in ["cl", "py", *(f"v{i}" for i in range(2))]
    )
    out.append(
        '[[markets]]\nsymbol = "ETH/USD"\nmin_sources = 3\nmax_age_ms = 60000\n'
        f"max_deviation = 0.01\nsources = [{entries}]\n"
    )
    return "\n".join(out)


async def test_daemon_prices_from_chain_and_venues_together(
    tmp_path: Path, http: aiohttp.ClientSession, sims: list[BinanceSim]
) -> None:
    """With a node mining every second, the daemon's ETH/USD report is active and uses all four
    sources: Chainlink (3000.00) and Pyth (3000.12 +- 0.015) read on chain, two venues at 3000."""
    node = start_anvil(tmp_path / "anvil.log", "--block-time", "1")
    daemon: Daemon | None = None
    try:
        chain = Chain(node.url, http)
        await chain.start()
        await chain.install_multicall3()
        agg = await chain.deploy("MockV3Aggregator", ["uint8", "int256"], [8, 3000_00000000])
        proxy = await chain.deploy("TestAggregatorProxy", ["address"], [agg])
        pyth = await chain.deploy("MockPyth", ["uint256", "uint256"], [60, 1])
        now = await chain.timestamp()
        await pyth_update(chain, pyth, PYTH_ETH_ID, 300_012_000_000, 1_500_000, -8, now)
        daemon = Daemon(_config(node.url, proxy, pyth, sims), tmp_path)
        await daemon.start()
        report = await daemon.wait_status("ETH/USD", {"active"}, limit_s=20.0)
        used = {s["id"]: s for s in report["sources"]}
        assert set(used) == {"cl", "py", "v0", "v1"}
        assert all(s["used"] for s in used.values()), used
        assert float(used["cl"]["value"]) == pytest.approx(3000.0)
        assert float(used["py"]["value"]) == pytest.approx(3000.12)
        assert float(report["price"]) == pytest.approx(3000.0, rel=2e-3)
        assert "chain enabled" in daemon.logs()
    finally:
        if daemon is not None:
            await daemon.close()
        node.stop()
