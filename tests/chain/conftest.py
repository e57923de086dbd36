"""Session fixtures of the on-chain tests: one anvil, one aiohttp session, one contract set.

Shared names (the `Deployed` set, Pyth ids, `pyth_update`, the Uniswap pool helpers) live in
`chain_rig`: import them from there, never from `conftest` (another folder's conftest may own
that module name in a full run).
Every test in this folder runs on the session's event loop (mark the module with
``pytest.mark.asyncio(loop_scope="session")``) so the node, the session and the deployed
contracts are shared; `snapshot` puts each test's chain changes back afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from chain_rig import (
    PYTH_BTC_ID,
    PYTH_ETH_ID,
    Anvil,
    Chain,
    Deployed,
    Tokens,
    deploy_tokens,
    pyth_update,
    start_anvil,
)
from rpc_proxy import RpcProxy


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


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def tokens(chain: Chain, deployed: Deployed) -> Tokens:
    """Uniswap's factory and the test tokens, deployed once per session after `deployed` and
    before any test's snapshot, so every test starts from them."""
    return await deploy_tokens(chain)


@pytest_asyncio.fixture(loop_scope="session")
async def proxy(anvil: Anvil, http: aiohttp.ClientSession) -> AsyncIterator[RpcProxy]:
    """A JSON-RPC proxy in front of the session's anvil that a test can break on purpose."""
    p = await RpcProxy(anvil.url, http).start()
    yield p
    await p.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def other_host(anvil: Anvil, http: aiohttp.ClientSession) -> AsyncIterator[RpcProxy]:
    """A second proxy in front of the same anvil, on its own port: to a cross-check, which
    counts one vote per host (scheme, host and port), an endpoint of another provider."""
    p = await RpcProxy(anvil.url, http).start()
    yield p
    await p.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def snapshot(chain: Chain, deployed: Deployed) -> AsyncIterator[Deployed]:
    """The deployed contract set, with every chain change of the test reverted afterwards."""
    snap = await chain.snapshot()
    yield deployed
    await chain.revert(snap)
