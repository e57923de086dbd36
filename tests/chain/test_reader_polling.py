"""What a poll asks of the endpoint: the head alone while there is nothing new, single requests
(never a batch, which some providers refuse), and the feeds read only for a block not read yet;
and a block that a reorg takes away before its read, which is not the endpoint's failure."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from chain_rig import Anvil, Chain, Deployed
from reading import make_reader, watch_eth
from rpc_proxy import RpcProxy

from oracled.sources.evm.feed import Block

pytestmark = pytest.mark.asyncio(loop_scope="session")

UPDATE = "updateAnswer(int256)"


async def test_an_idle_poll_asks_for_the_head_alone(
    chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A poll that finds the block already read sends one eth_getBlockByNumber and no eth_call
    (providers bill per call, and most polls find nothing new); a poll that finds a new block
    reads it with one eth_call pinned to its hash with requireCanonical, and its new answer is
    published."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
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
    # Every read is pinned to its block by hash, and only while it is canonical (EIP-1898).
    assert proxy.pins and all(
        set(pin) == {"blockHash", "requireCanonical"} and pin["requireCanonical"] is True
        for pin in proxy.pins
    )


@pytest.mark.parametrize("mode", ["no_batch", "no_batch_http"])
async def test_an_endpoint_that_refuses_batches_is_read(
    chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy, mode: str
) -> None:
    """An endpoint that refuses JSON-RPC batches (one error object in answer, or status 400)
    but serves single requests is read normally and counted healthy: a poll sends no batch."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    proxy.mode = mode
    assert await reader.poll_once()
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
    assert await reader.poll_once()
    assert [q.price for q in got.quotes] == [3000.0, 3100.0]
    assert reader.stats.reads_failed == 0
    assert reader.rpc.stats[0].by_kind == {}


async def test_a_block_reorged_out_before_its_read_is_read_at_the_new_head(
    anvil: Anvil, chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A head whose block a reorg replaces before its read (the node answers the pinned read
    "Resource not found") is no endpoint failure: nothing is counted against the endpoints, the
    reader does not fail over or mark its feeds down, and it reads the chain's new head instead."""
    reader = make_reader([proxy.url, anvil.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
    gone = await head(chain)
    await chain.reorg(1)  # the same height under a new hash, without the update
    now = await head(chain)
    assert (now.number, now.hash != gone.hash) == (gone.number, True)
    blocks = reader.stats.blocks
    assert await reader.read_block(gone)
    assert (reader.stats.blocks, reader.stats.last_block) == (blocks + 1, now.number)
    assert reader.stats.unknown == 1
    assert reader.stats.reads_failed == 0
    assert [st.by_kind for st in reader.rpc.stats] == [{}, {}]
    assert reader.rpc.active == 0
    assert got.stats.state == "polling"
    assert [q.price for q in got.quotes] == [3000.0]  # the update went with its block


async def head(chain: Chain) -> Block:
    h = await chain.block()
    return Block(int(h["number"], 16), h["hash"], int(h["timestamp"], 16))


async def test_a_null_head_is_garbage_from_its_endpoint_and_the_next_one_is_asked(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """An endpoint that answers the latest block with null (every node has a latest block) is
    counted as garbage and left for the next endpoint, whose head is read in the same poll;
    before, the poll failed as a read failure and the next poll asked the same endpoint."""
    reader = make_reader([proxy.url, anvil.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    proxy.mode = "null_result"
    assert await reader.poll_once()
    assert [q.price for q in got.quotes] == [3000.0]
    assert reader.stats.reads_failed == 0
    assert reader.rpc.stats[0].by_kind == {"garbage": 1} and reader.rpc.active == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (None, "0x1"),
        (None, 5),
        ("number", "-0x5"),
        ("timestamp", "1_0"),
        ("hash", "0x" + "f" * 70),
        ("hash", None),
    ],
    ids=["string", "number", "negative", "underscore", "long_hash", "no_hash"],
)
async def test_a_head_that_is_no_header_is_garbage_from_its_endpoint(
    anvil: Anvil,
    http: aiohttp.ClientSession,
    snapshot: Deployed,
    proxy: RpcProxy,
    field: str | None,
    value: object,
) -> None:
    """An answer to the latest block that is not a block header (a string or a number instead,
    a number or time that is no hex quantity, a hash that is not 32 bytes) is the endpoint's
    garbage, as a null one is: counted on it, and the next poll goes to the next URL, which is
    published. Found by fuzzing the reader with a hostile node (tests/chain/test_chain_fuzz.py):
    before, only a read failure was counted, and the client kept the endpoint that answered, so
    every poll asked it again and the healthy URL was never used."""

    def garble(request: Any, answer: Any) -> Any:
        if request.get("method") != "eth_getBlockByNumber":
            return answer
        if field is None:
            return {**answer, "result": value}
        return {**answer, "result": {**answer["result"], field: value}}

    proxy.rewrite = garble
    reader = make_reader([proxy.url, anvil.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert not await reader.poll_once()
    assert reader.rpc.stats[0].by_kind == {"garbage": 1} and reader.rpc.active == 1
    assert await reader.poll_once()
    assert [q.price for q in got.quotes] == [3000.0]
