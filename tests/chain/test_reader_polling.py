"""What a poll asks of the endpoint: the head alone while there is nothing new, single requests
(never a batch, which some providers refuse), and the feeds read only for a block not read yet."""

from __future__ import annotations

import aiohttp
import pytest
from chain_rig import Chain, Deployed
from reading import chainlink_spec, make_reader, watch
from rpc_proxy import RpcProxy

from oracled.sources.evm.chainlink import ChainlinkFeed

pytestmark = pytest.mark.asyncio(loop_scope="session")

UPDATE = "updateAnswer(int256)"


async def test_an_idle_poll_asks_for_the_head_alone(
    chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A poll that finds the block already read sends one eth_getBlockByNumber and no eth_call
    (providers bill per call, and most polls find nothing new); a poll that finds a new block
    reads it with one eth_call, and its new answer is published."""
    reader = make_reader([proxy.url], http)
    got = watch(reader, ChainlinkFeed("cl", "ETH/USD", chainlink_spec(snapshot.eth_proxy)))
    assert await reader.poll_once()
    del proxy.methods[:]
    assert not await reader.poll_once()
    assert not await reader.poll_once()
    assert proxy.methods == ["eth_getBlockByNumber", "eth_getBlockByNumber"]
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
    del proxy.methods[:]
    assert await reader.poll_once()
    assert proxy.methods == ["eth_getBlockByNumber", "eth_call"]
    assert [q.price for q in got.quotes] == [3000.0, 3100.0]
    assert reader.stats.reads_failed == 0


@pytest.mark.parametrize("mode", ["no_batch", "no_batch_http"])
async def test_an_endpoint_that_refuses_batches_is_read(
    chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy, mode: str
) -> None:
    """An endpoint that refuses JSON-RPC batches (one error object in answer, or status 400)
    but serves single requests is read normally and counted healthy: a poll sends no batch."""
    reader = make_reader([proxy.url], http)
    got = watch(reader, ChainlinkFeed("cl", "ETH/USD", chainlink_spec(snapshot.eth_proxy)))
    proxy.mode = mode
    assert await reader.poll_once()
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
    assert await reader.poll_once()
    assert [q.price for q in got.quotes] == [3000.0, 3100.0]
    assert reader.stats.reads_failed == 0
    assert reader.rpc.stats[0].by_kind == {}
