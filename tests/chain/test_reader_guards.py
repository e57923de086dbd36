"""The chain reader's guards against reads that must not be published: a block that lands
between a poll's head and its read, a node that ignores the block pin, a late answer for an older
block, a failed or refused read, a feed whose decode breaks, a sequencer feed that cannot say."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest
from chain_rig import CHAIN_ID, Anvil, Chain, Deployed
from reading import make_reader, watch, watch_eth
from rpc_proxy import RpcProxy
from structlog.testing import capture_logs

from oracled.config import SequencerConfig
from oracled.sources.evm.chain import decode_round
from oracled.sources.evm.feed import Block, Call, Feed, FeedResult
from oracled.sources.evm.multicall import GET_BLOCK_NUMBER

pytestmark = pytest.mark.asyncio(loop_scope="session")

UPDATE = "updateAnswer(int256)"


async def head(chain: Chain) -> Block:
    h = await chain.block()
    return Block(int(h["number"], 16), h["hash"], int(h["timestamp"], 16))


async def test_a_block_landing_between_the_polled_head_and_its_read_is_read_pinned(
    chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """The poll's head is block N, and a block N+1 (with a new answer) lands while N's read is
    on its way: the read is pinned to N's hash, so block N is published with N's data and N+1's
    answer comes with N+1, never stamped as N."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()  # learns the feed: 3000 at the current block
    await chain.mine()
    n = await head(chain)
    proxy.script = ["pass", "hold"]  # the head passes; its read waits for the next block
    trips = reader.stats.round_trips
    poll = asyncio.create_task(reader.poll_once())
    await proxy.arrived.wait()
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
    proxy.release.set()
    assert await poll
    assert reader.stats.reads_failed == 0
    assert reader.stats.last_block == n.number
    assert reader.stats.round_trips == trips + 2  # the head, then the read pinned to N
    assert [q.price for q in got.quotes] == [3000.0]
    assert await reader.poll_once()
    assert (got.last.price, got.last.block) == (3100.0, n.number + 1)


async def test_a_node_that_ignores_the_block_pin_is_never_published(
    chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A read pinned to block N that the node executes at a later head (the multicall's own
    block number says so) is a failed read: nothing of the later block is published as N."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    await chain.mine()
    n = await head(chain)
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
    proxy.mode = "unpin"
    assert not await reader.read_block(n)
    assert reader.stats.reads_failed == 1
    assert reader.stats.last_block == n.number - 1
    assert [q.price for q in got.quotes] == [3000.0]
    assert got.stats.state == "down"


@pytest.mark.parametrize("shift_s", [365 * 86_400, 1, -1])
async def test_a_head_whose_time_is_not_its_blocks_is_never_published(
    anvil: Anvil,
    chain: Chain,
    http: aiohttp.ClientSession,
    snapshot: Deployed,
    proxy: RpcProxy,
    shift_s: int,
) -> None:
    """A head whose timestamp is not its block's (a year ahead, or a second off either way) is
    refused: the multicall's own `getCurrentBlockTimestamp()`, read with the feeds, says when
    the read ran. The endpoint that sent it is counted `garbage` and left, and the block is
    published from the next URL with its real time. Found by fuzzing the reader with a hostile
    node (tests/chain/test_chain_fuzz.py): before, the block was published with the header's
    time, so a round an hour old by it was flagged `stale`, and a Uniswap pool, which prices
    a block by its time, refused every later block as `older_block` until the chain reached
    the false one."""

    def shifted(request: Any, answer: Any) -> Any:
        if request.get("method") != "eth_getBlockByNumber":
            return answer
        head = answer["result"]
        return {
            **answer,
            "result": {**head, "timestamp": hex(int(head["timestamp"], 16) + shift_s)},
        }

    proxy.rewrite = shifted
    reader = make_reader([proxy.url, anvil.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert not await reader.poll_once()
    assert got.quotes == []
    assert reader.rpc.stats[0].by_kind == {"garbage": 1} and reader.rpc.active == 1
    assert await reader.poll_once()
    real = await head(chain)
    assert [(q.price, q.flag, q.block_ts) for q in got.quotes] == [
        (3000.0, None, real.timestamp * 1000)
    ]


@pytest.mark.parametrize("mode", ["error", "null_call"])
async def test_a_failed_pinned_read_publishes_nothing(
    chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy, mode: str
) -> None:
    """A newHeads block whose read fails (no endpoint answers, or the answer is not hex) is
    counted, the feeds say down, and nothing is published; the next block reads normally."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
    proxy.mode = mode
    assert not await reader.read_block(await head(chain))
    assert reader.stats.reads_failed == 1
    assert [q.price for q in got.quotes] == [3000.0]
    assert got.stats.state == "down"
    proxy.mode = "pass"
    assert await reader.read_block(await head(chain))
    assert got.last.price == 3100.0


async def test_reads_failing_between_good_blocks_are_logged_once_a_minute_and_all_counted(
    chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """An endpoint that fails every other block's read: each failure is counted, and logged at
    most once a minute with the failures since. Before, a good block between two failures made
    each one a new kind of rejection, and every failed block wrote its `read failed` line."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    with capture_logs() as logs:
        for price in (3100, 3200, 3300):
            await chain.transact(snapshot.eth_aggregator, UPDATE, price * 10**8)
            proxy.mode = "error"
            assert not await reader.read_block(await head(chain))
            proxy.mode = "pass"
            assert await reader.read_block(await head(chain))
            assert got.last.price == price
    assert reader.stats.reads_failed == 3
    lines = [e for e in logs if e["event"] == "read failed"]
    assert len(lines) == 1, lines  # before: one per failure
    assert lines[0]["failures"] == 1


async def test_a_late_answer_for_an_older_block_is_not_published(
    chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """The read of block N hangs at the node while block N+1 is read and published: when N's
    answer finally arrives it is dropped, so the reader never steps back to N."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    await chain.mine()
    n = await head(chain)
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
    newer = await head(chain)
    proxy.mode = "hold"
    late = asyncio.create_task(reader.read_block(n))
    await proxy.arrived.wait()
    proxy.mode = "pass"
    assert await reader.read_block(newer)
    proxy.release.set()
    assert not await late
    assert reader.stats.last_block == newer.number
    assert [(q.price, q.block) for q in got.quotes][-1] == (3100.0, newer.number)
    assert all(q.block != n.number for q in got.quotes)


async def test_the_same_block_polled_twice_is_handed_to_the_feeds_once(
    http: aiohttp.ClientSession, anvil: Anvil, snapshot: Deployed
) -> None:
    """A poll that finds the head unchanged (same number, same hash) reads nothing new: no
    block is counted or handed to the feeds again."""
    reader = make_reader([anvil.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    assert not await reader.poll_once()
    assert reader.stats.blocks == 1
    assert got.stats.frames == 1
    assert len(got.quotes) == 1


async def test_a_failed_reread_after_learning_publishes_nothing_until_the_next_block(
    chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A new Chainlink feed learns its aggregator from the poll, and the same block is read
    again with the learned calls; when that read fails it is counted and nothing is published,
    and the next block is priced with the learned calls."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    # the head, the read, then the re-read fails (a node error; a node that no longer holds the
    # block is not a failed read: test_read_accounting.py)
    proxy.script = ["pass", "pass", "http500"]
    assert await reader.poll_once()  # the block itself was good; only its re-read failed
    assert reader.stats.reads_failed == 1
    assert got.quotes == []
    assert got.stats.state == "down"
    await chain.mine()
    assert await reader.poll_once()
    assert [q.price for q in got.quotes] == [3000.0]


async def test_a_read_again_that_ran_on_another_block_is_never_published(
    chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A new Chainlink feed learns its aggregator from block N's read, and the node executes the
    read again, pinned to N, at its later head (it ignores the pin): the multicall's own block
    number rides in the read again too, so the later block's round is not published as N's;
    counted on the endpoint (`garbage`) and as the feed's `reread_failed`, and the next block
    is priced. Before, the read again carried no proof of its block, and N was priced with
    N + 1's round."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    await chain.mine()
    n = await head(chain)
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
    proxy.script = ["pass", "unpin"]  # the read of N, then its read again at the head
    assert await reader.read_block(n)  # the block itself was good; only its read again failed
    assert got.quotes == []
    assert got.stats.dropped == {"reread_failed": 1}
    assert reader.rpc.stats[0].garbage == 1
    assert await reader.poll_once()
    assert [(q.price, q.block) for q in got.quotes] == [(3100.0, n.number + 1)]


async def test_a_read_again_that_ran_on_another_chain_is_never_published(
    chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """The node behind the URL serves another chain by the time a new feed's read again
    arrives: the multicall's own chain id rides in the read again too, so it is refused as a
    read is (`wrong_chain`, an error logged) and nothing of it is published; once the node
    serves the configured chain again, the feed is priced. Before, the read again was
    published whatever chain it ran on."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    proxy.script = ["pass", "pass", "hold"]  # the head, its read, then the read again waits
    poll = asyncio.create_task(reader.poll_once())
    await proxy.arrived.wait()
    await chain.rpc("anvil_setChainId", [CHAIN_ID + 1])
    try:
        proxy.release.set()
        with capture_logs() as logs:
            assert await poll
    finally:
        await chain.rpc("anvil_setChainId", [CHAIN_ID])
    assert got.quotes == []
    assert got.stats.dropped == {"reread_failed": 1}
    assert reader.rpc.stats[0].by_kind == {"wrong_chain": 1}
    errors = [e["event"] for e in logs if e["log_level"] == "error"]
    assert errors == ["endpoint serves another chain: read refused"]
    await chain.mine()
    assert await reader.poll_once()
    assert [q.price for q in got.quotes] == [3000.0]


async def test_a_refused_read_of_a_polled_block_is_counted_with_the_nodes_reason(
    http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A poll's head answers but the block's read is refused for its own fault: the
    read fails, nothing is published, and the warning carries the node's JSON-RPC error."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    proxy.mode = "call_refused"
    with capture_logs() as logs:
        assert not await reader.poll_once()
    assert reader.stats.reads_failed == 1
    assert got.quotes == []
    (warning,) = [e for e in logs if e["event"] == "read failed"]
    assert "JSON-RPC error -32602" in warning["error"]


async def test_a_multicall_address_without_a_contract_is_named_in_the_warning(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed
) -> None:
    """A chain whose `multicall` address holds no contract (a chain without Multicall3 at its
    usual address, or a mistyped one) answers every read with empty data: the read fails, and
    the warning says what is missing and where, not only that an answer was short."""
    missing = "0x" + "12" * 20
    reader = make_reader([anvil.url], http, multicall=missing)
    got = watch_eth(reader, snapshot.eth_proxy)
    with capture_logs() as logs:
        assert not await reader.poll_once()
    assert reader.stats.reads_failed == 1
    assert got.quotes == []
    (warning,) = [e for e in logs if e["event"] == "read failed"]
    assert f"no contract at the multicall address {missing}" in warning["error"]


class WrongShapeFeed(Feed):
    """A feed configured against the wrong contract: it reads the multicall's block number
    (one word) and decodes it as `latestRoundData()` (five words), which raises."""

    __slots__ = ("_calls",)

    def __init__(self, multicall: str) -> None:
        super().__init__("bad", "BAD/USD")
        self._calls = (Call(multicall, GET_BLOCK_NUMBER),)

    def calls(self) -> Sequence[Call]:
        return self._calls

    def decode(
        self, results: Sequence[tuple[bool, bytes]], block: Block, recv_ts: int
    ) -> FeedResult:
        decode_round(results[0][1])
        return None


async def test_a_feed_whose_decode_raises_is_counted_and_the_others_still_publish(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed
) -> None:
    """One feed's decode raising is that feed's malformed read (counted as decode_error and
    logged); the other feeds of the same block are published as usual."""
    reader = make_reader([anvil.url], http)
    bad = watch(reader, WrongShapeFeed(snapshot.multicall))
    good = watch_eth(reader, snapshot.eth_proxy)
    with capture_logs() as logs:
        assert await reader.poll_once()
    assert bad.stats.malformed == 1 and bad.stats.dropped["decode_error"] == 1
    assert bad.quotes == []
    assert [q.price for q in good.quotes] == [3000.0]
    assert [e["feed"] for e in logs if e["event"] == "feed decode failed"] == ["BAD/USD"]


async def test_a_feed_whose_decode_fails_every_block_is_logged_once_a_minute(
    chain: Chain, http: aiohttp.ClientSession, anvil: Anvil, snapshot: Deployed
) -> None:
    """A feed whose decode fails on every block while the others publish: each block is its
    drop, and its line is written once a minute with the failures since. Before, every
    published block made its failure a new kind of rejection, and it wrote a line a block."""
    reader = make_reader([anvil.url], http)
    bad = watch(reader, WrongShapeFeed(snapshot.multicall))
    good = watch_eth(reader, snapshot.eth_proxy)
    with capture_logs() as logs:
        assert await reader.poll_once()
        for price in (3100, 3200):
            await chain.transact(snapshot.eth_aggregator, UPDATE, price * 10**8)
            assert await reader.poll_once()
    assert bad.stats.dropped["decode_error"] == 3
    assert [q.price for q in good.quotes] == [3000.0, 3100.0, 3200.0]
    lines = [e for e in logs if e["event"] == "feed decode failed"]
    assert len(lines) == 1, lines  # before: one a block
    assert (lines[0]["feed"], lines[0]["failures"]) == ("BAD/USD", 1)


@pytest.mark.parametrize("where", ["no_contract", "no_latest_round"])
async def test_a_sequencer_feed_that_cannot_answer_keeps_the_gate_shut(
    chain: Chain, http: aiohttp.ClientSession, anvil: Anvil, snapshot: Deployed, where: str
) -> None:
    """An L2 sequencer feed address that answers nothing usable (an account without code, or a
    contract without `latestRoundData()`) never counts as 'up': every feed is flagged."""
    address = chain.account if where == "no_contract" else snapshot.pyth
    reader = make_reader(
        [anvil.url], http, sequencer=SequencerConfig(address=address, grace_period_s=0)
    )
    eth = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    assert reader.stats.sequencer_up is False
    assert (eth.last.flag, eth.last.price) == ("sequencer", 3000.0)


async def test_a_notice_for_a_block_below_the_last_one_is_not_read(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A newHeads notice for a block below the last one published (a lagging node behind a
    load balancer) is counted as backwards and costs no read at all."""
    reader = make_reader([anvil.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    older = await head(chain)
    await chain.mine()
    assert await reader.poll_once()
    trips = reader.stats.round_trips
    assert not await reader.read_block(older)
    assert reader.stats.backwards == 1
    assert reader.stats.round_trips == trips
    assert len(got.quotes) == 1
