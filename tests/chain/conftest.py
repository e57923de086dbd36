"""Session fixtures of the on-chain tests: one anvil, one aiohttp session, one contract set.

Every test in this folder runs on the session's event loop (mark the module with
``pytest.mark.asyncio(loop_scope="session")``) so the node, the session and the deployed
contracts are shared; `snapshot` puts each test's chain changes back afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from chain_rig import Anvil, Chain, start_anvil

#: Pyth price ids used by the tests (any 32 bytes do for MockPyth).
PYTH_ETH_ID = bytes.fromhex("ff61491a931112ddf1bd8147cd1b641375f79f5825126d665480874634fd0ace")
PYTH_BTC_ID = bytes.fromhex("e62df6c8b4a85fe1a67db44dc12de5db330f7ac66b72dc658afedf0f4a415b43")


@dataclass(frozen=True)
class Deployed:
    """The contract set every test starts from (addresses are checksummed)."""

    multicall: str
    eth_aggregator: str  # Chainlink's MockV3Aggregator, 8 decimals, 3000.00
    eth_proxy: str  # TestAggregatorProxy over eth_aggregator
    btc_aggregator: str  # TestAggregator with minAnswer 1000.00 / maxAnswer 1,000,000.00
    btc_proxy: str
    sequencer: str  # MockV3Aggregator used as an L2 sequencer uptime feed (0 = up)
    pyth: str  # Pyth's MockPyth, valid time period 60 s, fee 1 wei


@pytest.fixture(scope="session")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    node = start_anvil(Path(tmp_path_factory.mktemp("anvil")) / "anvil.log")
    yield node
    node.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def chain(anvil: Anvil, http: aiohttp.ClientSession) -> Chain:
    rig = Chain(anvil.url, http)
    await rig.start()
    return rig


async def pyth_update(chain: Chain, pyth: str, feed_id: bytes, price: int, conf: int,
                      expo: int, publish_time: int) -> None:  # fmt: skip
    """Publish one Pyth price through MockPyth's own update-data builder."""
    (data,) = await chain.call(
        pyth,
        "createPriceFeedUpdateData(bytes32,int64,uint64,int32,int64,uint64,uint64,uint64)",
        feed_id, price, conf, expo, price, conf, publish_time, max(publish_time - 1, 0),
        returns=["bytes"],
    )  # fmt: skip
    await chain.transact(pyth, "updatePriceFeeds(bytes[])", [data], value=1)


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def deployed(chain: Chain) -> Deployed:
    multicall = await chain.install_multicall3()
    eth_agg = await chain.deploy("MockV3Aggregator", ["uint8", "int256"], [8, 3000_00000000])
    eth_proxy = await chain.deploy("TestAggregatorProxy", ["address"], [eth_agg])
    btc_agg = await chain.deploy(
        "TestAggregator",
        ["uint8", "string", "int192", "int192"],
        [8, "BTC / USD", 1000_00000000, 1_000_000_00000000],
    )
    await chain.transact(btc_agg, "updateAnswer(int256)", 60_000_00000000)
    btc_proxy = await chain.deploy("TestAggregatorProxy", ["address"], [btc_agg])
    sequencer = await chain.deploy("MockV3Aggregator", ["uint8", "int256"], [0, 0])
    pyth = await chain.deploy("MockPyth", ["uint256", "uint256"], [60, 1])
    now = await chain.timestamp()
    await pyth_update(chain, pyth, PYTH_ETH_ID, 300_012_000_000, 1_500_000, -8, now)
    await pyth_update(chain, pyth, PYTH_BTC_ID, 6_000_000_000_000, 3_000_000_000, -8, now)
    return Deployed(multicall, eth_agg, eth_proxy, btc_agg, btc_proxy, sequencer, pyth)


@pytest_asyncio.fixture(loop_scope="session")
async def snapshot(chain: Chain, deployed: Deployed) -> AsyncIterator[Deployed]:
    """The deployed contract set, with every chain change of the test reverted afterwards."""
    snap = await chain.snapshot()
    yield deployed
    await chain.revert(snap)


__all__ = ["PYTH_BTC_ID", "PYTH_ETH_ID", "Deployed", "pyth_update"]
