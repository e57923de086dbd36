"""Every block a feed is handed ends in a quote, a counted and logged drop, or a documented
no-op (nothing new): here against real anvil, behind the loopback proxy where a node must lie.
A feed's block read that ends otherwise (nothing published, nothing counted) is the defect
these tests catch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp
import pytest
from chain_rig import PYTH_ETH_ID, Anvil, Chain, Deployed, Tokens, make_pool
from reading import WARPED, make_reader, pyth_spec, watch, watch_eth
from rpc_proxy import RpcProxy
from structlog.testing import capture_logs

from oracled.sources.evm.feed import Block, Call, Feed, FeedResult
from oracled.sources.evm.multicall import selector
from oracled.sources.evm.pyth_evm import PythEvmFeed
from oracled.sources.evm.uniswap_v3 import UniswapV3Feed

pytestmark = pytest.mark.asyncio(loop_scope="session")

UPDATE = "updateAnswer(int256)"


async def test_a_tampered_read_alone_counts_the_feeds_block_as_dropped(
    http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """The proxy's `tamper` mode changes the last hex digit of every `eth_call` answer. The
    Chainlink feed's first read (learning its aggregator) still decodes, but the same block read
    again with its steady calls ends in a word that no longer fits the ABI (the length of the
    last, reverted call's return data). Before, that block was counted as the feed's frame and
    then nothing: no quote, no drop (`read failed` on the chain only). Now it is the feed's
    `reread_failed` drop, logged with the feed's name; the learning read's tampered word (the
    padding of `description()`) is logged too, where it was silently read as no description.
    Polling again finds the same block: nothing new to read, and nothing more counted."""
    proxy.mode = "tamper"
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    with capture_logs() as logs:
        assert await reader.poll_once()
    assert got.quotes == []
    assert got.stats.frames == 1
    assert dict(got.stats.dropped) == {"reread_failed": 1}
    assert reader.stats.reads_failed == 1
    assert reader.rpc.stats[0].by_kind == {"garbage": 1}
    unfinished = [
        e for e in logs if e["event"] == "feed read again failed: block not priced for it"
    ]
    assert [(e["feeds"], e["dropped"]) for e in unfinished] == [(["cl:ETH/USD"], 1)]
    # the learning read's last word, description()'s padding, was the one changed: said so
    assert [e["proxy"] for e in logs if e["event"] == "chainlink description unreadable"] == [
        snapshot.eth_proxy
    ]
    assert not await reader.poll_once()  # the same block: nothing new to read, nothing counted
    assert dict(got.stats.dropped) == {"reread_failed": 1}


class _Restless(Feed):
    """A feed that changes its calls at every decode: it never settles on the block (what a node
    answering the same block differently would make a real feed do)."""

    def __init__(self, target: str) -> None:
        super().__init__("rs", "ETH/USD")
        self._target = target
        self._calls: tuple[Call, ...] = (Call(target, selector("decimals()")),)
        self.decoded = 0

    def calls(self) -> Sequence[Call]:
        return self._calls

    def decode(
        self, results: Sequence[tuple[bool, bytes]], block: Block, recv_ts: int
    ) -> FeedResult:
        self.decoded += 1
        self._calls = (Call(self._target, selector("decimals()")),)
        return None


async def test_a_feed_still_learning_after_two_reads_again_is_counted(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed
) -> None:
    """A feed that still wants the block read again after the reader's two reads again is left
    for the next block: counted `reread_failed` once per block and logged, not forgotten."""
    reader = make_reader([anvil.url], http)
    feed = _Restless(snapshot.eth_proxy)
    got = watch(reader, feed)
    with capture_logs() as logs:
        assert await reader.poll_once()
    assert feed.decoded == 3  # the read, then two reads again
    assert dict(got.stats.dropped) == {"reread_failed": 1}
    assert [e["why"] for e in logs if e["event"].startswith("feed read again failed")] == [
        "still learning after two reads of the block"
    ]


async def test_a_pyth_answer_too_short_distrusts_and_the_same_price_returns_unflagged(
    anvil: Anvil, chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed
) -> None:
    """The Pyth contract's code gone (an empty answer: too short for a price) is counted
    `malformed`, logged once, and the last quote re-emitted flagged `bad_answer`. With the code
    back, the same stored price is valid again and published unflagged. Before, the short answer
    was counted but not distrusted by the feed: the reader flagged the slot, and the feed, seeing
    its last price unchanged, published nothing, so the slot stayed excluded until Pyth's next
    update."""
    code = await chain.rpc("eth_getCode", [snapshot.pyth, "latest"])
    reader = make_reader([anvil.url], http)
    got = watch(reader, PythEvmFeed("py", "ETH/USD", snapshot.pyth, pyth_spec(PYTH_ETH_ID)))
    assert await reader.poll_once()
    assert got.last.flag is None
    await chain.rpc("anvil_setCode", [snapshot.pyth, "0x"])
    with capture_logs() as logs:
        for _ in range(2):
            await chain.mine()
            assert await reader.poll_once()
    assert [q.flag for q in got.quotes] == [None, "bad_answer"]
    assert dict(got.stats.dropped) == {"malformed": 2}
    await chain.rpc("anvil_setCode", [snapshot.pyth, code])
    await chain.mine()
    assert await reader.poll_once()
    assert [q.flag for q in got.quotes] == [None, "bad_answer", None]
    assert got.last.bid == got.quotes[0].bid
    assert [e["answer"] for e in logs if e["event"] == "pyth price malformed"] == [
        "0 bytes, not four words"
    ]


async def test_a_pool_answering_garbage_is_counted_and_logged_once_while_it_lasts(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, tokens: Tokens, snapshot: Deployed
) -> None:
    """A pool whose code is gone answers every call with nothing: each block is dropped
    `malformed` and one warning says why (before, the drop was counted and never logged, so
    nothing told an operator which pool or what it answered); once it prices again, the next
    such episode is logged again."""
    pool = await make_pool(chain, tokens, tokens.weth, tokens.usd_above, "3000", liquidity=10**17)
    await chain.warp(600)
    code = await chain.rpc("eth_getCode", [pool.address, "latest"])
    feed = UniswapV3Feed(
        "uniswap", "ETH/USD", pool.address, invert=tokens.weth == pool.token1,
        token0_decimals=pool.decimals0, token1_decimals=pool.decimals1, min_liquidity=10**16,
    )  # fmt: skip
    reader = make_reader([anvil.url], http, max_clock_skew_ms=WARPED)
    got = watch(reader, feed)
    assert await reader.poll_once()
    assert len(got.quotes) == 1
    with capture_logs() as logs:
        for restored in (False, False, True, False):
            await chain.rpc("anvil_setCode", [pool.address, code if restored else "0x"])
            await chain.mine()
            assert await reader.poll_once()
    assert len(got.quotes) == 2
    assert dict(got.stats.dropped) == {"malformed": 3}
    dropped = [e for e in logs if e["event"] == "uniswap_read_dropped"]
    assert [(e["reason"], e["pool"]) for e in dropped] == [("malformed", pool.address)] * 2
    assert all("not an observe() answer" in e["error"] for e in dropped)


async def test_a_read_overtaken_by_a_newer_published_block_is_counted_superseded(
    chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """Two reads in flight at once (a poll whose read hangs at the node while another poll reads
    a newer block): the older read, once it arrives, is not published, since its values are older
    than the ones out, and is counted `superseded` (before: dropped without a count)."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()  # the feed has learned: one eth_call a block from here
    await chain.mine()
    proxy.script = ["pass", "hold"]  # the head, then its read held
    slow = asyncio.create_task(reader.poll_once())
    await proxy.arrived.wait()
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
    assert await reader.poll_once()
    assert got.last.price == 3100.0
    proxy.release.set()
    assert not await slow
    assert reader.stats.superseded == 1
    assert [q.price for q in got.quotes] == [3000.0, 3100.0]
    assert dict(got.stats.dropped) == {}


async def test_a_read_again_the_node_no_longer_holds_is_unknown_not_a_failed_read(
    chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """The Chainlink feed's first block is read twice: once learning its aggregator, then again
    with its steady calls. A node behind a load balancer (or a reorg) may not hold the block by
    the read again: geth's `header not found`, which `_read` treats as no failure (`unknown`).
    Found reviewing `reread_failed`: the read again counted it as a failed chain read
    (`read failed` logged) and marked every feed of the chain down, the ones that had just
    published from that block too, until the next block. Now it is the chain's `unknown` and the
    feed's `reread_failed`, and the feeds stay up; the next block prices the feed."""
    proxy.script = ["pass", "pass", "error"]  # the head, the read, then the read again
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    with capture_logs() as logs:
        assert await reader.poll_once()
    assert proxy.methods == ["eth_getBlockByNumber", "eth_call", "eth_call"]
    assert got.quotes == []
    assert dict(got.stats.dropped) == {"reread_failed": 1}
    assert reader.stats.unknown == 1
    assert reader.stats.reads_failed == 0
    assert got.stats.state.name == "POLLING"
    assert reader.rpc.stats[0].by_kind == {}
    assert "read failed" not in [e["event"] for e in logs]
    await chain.mine()
    assert await reader.poll_once()
    assert len(got.quotes) == 1 and got.quotes[0].flag is None
