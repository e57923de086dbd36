"""The local chain itself: anvil starts, the contract set deploys, snapshots isolate tests."""

from __future__ import annotations

import pytest
from chain_rig import MULTICALL3, PYTH_ETH_ID, Chain, Deployed, calldata

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_contracts_answer_on_the_local_node(chain: Chain, snapshot: Deployed) -> None:
    """The deployed mocks answer their real interfaces: Chainlink round, proxy bounds, Pyth."""
    round_data = await chain.call(
        snapshot.eth_proxy,
        "latestRoundData()",
        returns=["uint80", "int256", "uint256", "uint256", "uint80"],
    )
    assert round_data[1] == 3000_00000000
    (minimum,) = await chain.call(snapshot.btc_aggregator, "minAnswer()", returns=["int192"])
    assert minimum == 1000_00000000
    price = await chain.call(
        snapshot.pyth, "getPriceUnsafe(bytes32)", PYTH_ETH_ID,
        returns=["(int64,uint64,int32,uint256)"],
    )  # fmt: skip
    assert price[0][0] == 300_012_000_000
    code = await chain.rpc("eth_getCode", [MULTICALL3, "latest"])
    assert len(code) > 100


async def test_snapshot_reverts_a_tests_changes(chain: Chain, snapshot: Deployed) -> None:
    """A change made inside one snapshot is gone after the revert."""
    snap = await chain.snapshot()
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 1)
    (_, answer, *_rest) = await chain.call(
        snapshot.eth_proxy,
        "latestRoundData()",
        returns=["uint80", "int256", "uint256", "uint256", "uint80"],
    )
    assert answer == 1
    await chain.revert(snap)
    (_, answer, *_rest) = await chain.call(
        snapshot.eth_proxy,
        "latestRoundData()",
        returns=["uint80", "int256", "uint256", "uint256", "uint80"],
    )
    assert answer == 3000_00000000
    assert calldata("decimals()") == bytes.fromhex("313ce567")
