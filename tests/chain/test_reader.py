"""The chain reader against a real node and a breakable loopback proxy: fail-over, garbage,
blocks going backwards, reorgs, the sequencer gate, newHeads, cross-checks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from chain_rig import (
    Anvil,
    Chain,
    Deployed,
    start_anvil,
)
from reading import WARPED, chainlink_spec, make_reader, watch, watch_eth
from rpc_proxy import RpcProxy
from structlog.testing import capture_logs

from oracled.clock import ManualClock
from oracled.config import SequencerConfig
from oracled.errors import SourceError
from oracled.sources.evm.chainlink import ChainlinkFeed

pytestmark = pytest.mark.asyncio(loop_scope="session")

SET_ROUND = "setRound(uint80,int256,uint256,uint256,uint80)"
UPDATE_SEQ = "updateRoundData(uint80,int256,uint256,uint256)"


async def test_endpoint_dying_mid_run_fails_over(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """With the first endpoint killed between two blocks, the next block is read through the
    second one, the failure is counted on the first, and the reader stays on the second."""
    reader = make_reader([proxy.url, anvil.url], http, timeout_s=1.0)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    assert proxy.requests == 3  # the head, the read, the feed's set-up re-read
    await proxy.stop()
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 3100_00000000)
    assert await reader.poll_once()
    assert got.last.price == 3100.0
    first, second = reader.rpc.stats
    assert first.failures == 1 and first.by_kind == {"transport": 1}
    assert second.requests >= 1
    assert reader.rpc.active == 1
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 3200_00000000)
    assert await reader.poll_once()
    assert first.failures == 1  # sticky: the dead endpoint is not retried on every block


async def test_an_endpoint_behind_the_chain_is_left_for_the_next_one(
    anvil: Anvil,
    http: aiohttp.ClientSession,
    chain: Chain,
    snapshot: Deployed,
    proxy: RpcProxy,
    tmp_path: Path,
) -> None:
    """One failed request moves the reader to a second endpoint whose head is far behind (a node
    still syncing, or stuck). Its refused head counts as that endpoint's failure (`behind`), so
    the next poll goes back to the first endpoint and the chain is read again, instead of staying
    dark until the lagging node catches up."""
    behind = start_anvil(tmp_path / "behind.log")  # a node of the same chain id at block 0
    try:
        reader = make_reader([proxy.url, behind.url], http, timeout_s=1.0)
        got = watch_eth(reader, snapshot.eth_proxy)
        assert await reader.poll_once()
        proxy.script = ["error"]
        assert not await reader.poll_once()  # answered by the lagging node: refused
        assert reader.stats.backwards == 1
        assert reader.rpc.stats[1].by_kind == {"behind": 1}
        await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 3100_00000000)
        assert await reader.poll_once()
        assert [q.price for q in got.quotes] == [3000.0, 3100.0]
        assert reader.rpc.active == 0
    finally:
        behind.stop()


async def test_an_endpoint_whose_head_stopped_moving_is_left_for_the_next_one(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """An endpoint that keeps answering the head already read while that head grows older than
    max_block_age_s (a stalled node) is counted `behind` and left: the next poll asks the next
    endpoint. A head that is merely unchanged within max_block_age_s is nothing new, not a
    failure."""
    head = await chain.block()
    clock = ManualClock(int(head["timestamp"], 16) * 1000)
    reader = make_reader([anvil.url, proxy.url], http, clock=clock, max_block_age_s=60.0)
    watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    assert not await reader.poll_once()  # the same head, still young: nothing new
    assert reader.rpc.stats[0].by_kind == {} and reader.rpc.active == 0
    clock.advance(60_001)
    assert not await reader.poll_once()
    assert reader.rpc.stats[0].by_kind == {"behind": 1}
    assert reader.rpc.active == 1


@pytest.mark.parametrize("mode", ["garbage", "wrong_id", "error", "rate_limited"])
async def test_endpoint_answering_garbage_fails_over(
    anvil: Anvil,
    http: aiohttp.ClientSession,
    chain: Chain,
    snapshot: Deployed,
    proxy: RpcProxy,
    mode: str,
) -> None:
    """An endpoint that answers bytes that are not JSON-RPC, an answer to another request, a
    server-side error or a rate limit (JSON-RPC code 429) is passed over for the next one; the
    price still comes through."""
    proxy.mode = mode
    reader = make_reader([proxy.url, anvil.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    assert got.last.price == 3000.0
    first = reader.rpc.stats[0]
    assert first.garbage + first.failures >= 1
    kind = {"error": "node", "rate_limited": "rate_limited"}.get(mode, "garbage")
    assert first.by_kind == {kind: first.requests}


async def test_every_endpoint_failing_publishes_nothing(
    http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """With the only endpoint answering garbage, the read fails, is counted, and no quote or
    stale re-emission leaves the reader; the feed's state says down."""
    proxy.mode = "garbage"
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert not await reader.poll_once()
    assert reader.stats.reads_failed == 1
    assert got.quotes == []
    assert got.stats.state == "down"


async def test_block_going_backwards_is_never_published(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """The node falls back to an older block (a revert of its state) holding a different answer:
    nothing from the lower block is published; once the chain grows past the last block read,
    reading resumes."""
    reader = make_reader([anvil.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    before = await chain.snapshot()
    await chain.mine(3)
    assert await reader.poll_once()
    high = reader.stats.last_block
    await chain.revert(before)
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 1_00000000)
    assert not await reader.poll_once()
    assert reader.stats.backwards == 1
    assert [q.price for q in got.quotes] == [3000.0]
    assert high is not None
    await chain.mine(high - await chain.block_number() + 1)
    assert await reader.poll_once()
    assert got.last.price == 1.0
    assert got.last.block == high + 1


async def test_reorg_at_the_same_height_never_publishes_an_older_round(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A block replaced at the same height is read again (counted as a reorg), but a round
    older than the one already published is refused, not published over it: the core orders a
    slot by venue time and would refuse it too."""
    reader = make_reader([anvil.url], http)
    got = watch(reader, ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy)))
    now = await chain.timestamp()
    before = await chain.snapshot()
    await chain.transact(snapshot.btc_aggregator, SET_ROUND, 20, 61_000_00000000, now, now, 20)
    assert await reader.poll_once()
    assert got.last.price == 61000.0
    await chain.revert(before)
    await chain.transact(
        snapshot.btc_aggregator, SET_ROUND, 19, 50_000_00000000, now - 600, now - 600, 19
    )
    assert await reader.poll_once()  # same height, new hash: read
    assert reader.stats.reorgs == 1
    assert got.stats.dropped["older_round"] == 1
    assert [q.price for q in got.quotes if q.flag is None] == [61000.0]


async def test_a_round_reorged_out_is_published_again_flagged_until_a_newer_one(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A round published from a block that a reorg then replaces (anvil_reorg: same height, the
    round's transaction gone) is no longer on the chain: its quote is published again, once,
    flagged `reorged` (excluded, never voting), logged with the block, and the drop counted
    (`older_round`); the earlier round that the chain holds again cannot replace it, since the
    core orders a slot by venue time. The next round newer than the withdrawn one clears it."""
    reader = make_reader([anvil.url], http, max_clock_skew_ms=WARPED)
    got = watch(reader, ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy)))
    assert await reader.poll_once()
    await chain.warp(10)  # the round below is younger than the one set at deployment
    now = await chain.timestamp()
    await chain.transact(snapshot.btc_aggregator, SET_ROUND, 20, 61_000_00000000, now, now, 20)
    assert await reader.poll_once()
    await chain.reorg(1)
    with capture_logs() as logs:
        assert await reader.poll_once()  # same height, new hash: read
        await chain.mine()
        assert await reader.poll_once()
    assert reader.stats.reorgs == 1
    assert got.stats.dropped["older_round"] == 1
    assert [(q.price, q.flag) for q in got.quotes] == [
        (60000.0, None), (61000.0, None), (61000.0, "reorged"),
    ]  # fmt: skip
    assert got.quotes[2].venue_ts == got.quotes[1].venue_ts  # the same value, withdrawn
    withdrawn = [e for e in logs if e["event"] == "published value reorged out: flagged"]
    assert [(e["pair"], e["block"]) for e in withdrawn] == [("BTC/USD", got.quotes[1].block)]
    await chain.transact(
        snapshot.btc_aggregator, SET_ROUND, 21, 62_000_00000000, now + 1, now + 1, 21
    )
    assert await reader.poll_once()
    assert (got.last.price, got.last.flag) == (62000.0, None)


async def test_a_round_taken_away_by_a_rollback_is_flagged_once_the_chain_grows_back(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """The head goes back below the block a round was published from (anvil_rollback): the
    lower heads are refused (`backwards`, as from a lagging endpoint), and the first block read
    past the old height, which no longer holds the round, publishes the round again flagged
    `reorged`. If the same round comes back (mined again), it is published unflagged."""
    reader = make_reader([anvil.url], http, max_clock_skew_ms=WARPED)
    got = watch(reader, ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy)))
    await chain.warp(10)  # the round below is younger than the one set at deployment
    now = await chain.timestamp()
    await chain.transact(snapshot.btc_aggregator, SET_ROUND, 20, 61_000_00000000, now, now, 20)
    assert await reader.poll_once()
    await chain.rollback(1)
    assert not await reader.poll_once()
    assert reader.stats.backwards == 1
    await chain.mine(2)
    assert await reader.poll_once()
    assert [(q.price, q.flag) for q in got.quotes] == [(61000.0, None), (61000.0, "reorged")]
    await chain.transact(snapshot.btc_aggregator, SET_ROUND, 20, 61_000_00000000, now, now, 20)
    assert await reader.poll_once()
    assert [(q.price, q.flag) for q in got.quotes[2:]] == [(61000.0, None)]


async def test_sequencer_down_or_in_grace_flags_every_feed(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """L2 gate: sequencer down flags the chain's feeds `sequencer` at once (the last quote is
    re-emitted flagged); back up, the flag stays through the grace period and then lifts."""
    seq = SequencerConfig(address=snapshot.sequencer, grace_period_s=600)
    now = await chain.timestamp()
    await chain.transact(snapshot.sequencer, UPDATE_SEQ, 1, 0, now - 3600, now - 3600)
    reader = make_reader([anvil.url], http, sequencer=seq, max_clock_skew_ms=WARPED)
    eth = watch_eth(reader, snapshot.eth_proxy)
    btc = watch(reader, ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy)))
    assert await reader.poll_once()
    assert (eth.last.flag, btc.last.flag) == (None, None)
    assert reader.stats.sequencer_up is True
    now = await chain.timestamp()
    await chain.transact(snapshot.sequencer, UPDATE_SEQ, 2, 1, now, now)  # down
    assert await reader.poll_once()
    assert (eth.last.flag, btc.last.flag) == ("sequencer", "sequencer")
    assert eth.last.price == 3000.0
    now = await chain.timestamp()
    await chain.transact(snapshot.sequencer, UPDATE_SEQ, 3, 0, now, now)  # up again
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 3050_00000000)
    assert await reader.poll_once()
    assert (eth.last.flag, eth.last.price) == ("sequencer", 3050.0)  # inside the grace period
    await chain.warp(601)
    assert await reader.poll_once()
    assert (eth.last.flag, btc.last.flag) == (None, None)
    assert reader.stats.sequencer_up is True


async def test_a_chain_not_read_for_max_block_age_s_flags_its_feeds_until_read_again(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """The only endpoint fails: the feeds' last values keep counting while the last block read
    is younger than max_block_age_s (a failed request is no outage), then are re-emitted flagged
    `chain_stale` at once, not when each feed's heartbeat (an hour here) runs out: the chain may
    have moved on unseen. Read again, they are re-emitted unflagged without waiting for a new
    round of the feed."""
    clock = ManualClock(await chain.timestamp() * 1000)
    reader = make_reader(
        [proxy.url], http, clock=clock, max_block_age_s=5.0, max_clock_skew_ms=WARPED
    )
    eth = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    assert (eth.last.flag, eth.last.price) == (None, 3000.0)
    proxy.mode = "error"
    assert not await reader.poll_once()
    assert len(eth.quotes) == 1  # one failed read: nothing said yet
    clock.advance(6_000)
    with capture_logs() as logs:
        assert not await reader.poll_once()
        assert not await reader.poll_once()
    assert [(q.flag, q.price) for q in eth.quotes[1:]] == [("chain_stale", 3000.0)]
    assert [e["event"] for e in logs if e["log_level"] == "warning"].count(
        "chain not read: feeds flagged"
    ) == 1
    proxy.mode = "pass"
    await chain.warp(10)
    assert await reader.poll_once()
    assert [(q.flag, q.price) for q in eth.quotes[2:]] == [(None, 3000.0)]


async def test_the_grace_period_ends_only_after_grace_period_s_has_passed(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A block exactly grace_period_s after the sequencer came back is still inside the grace
    period (Chainlink's reference check and Aave's sentinel both require more time than the
    grace period); the block a second later opens the gate."""
    seq = SequencerConfig(address=snapshot.sequencer, grace_period_s=600)
    now = await chain.timestamp()
    await chain.transact(snapshot.sequencer, UPDATE_SEQ, 1, 0, now, now)
    reader = make_reader([anvil.url], http, sequencer=seq, max_clock_skew_ms=WARPED)
    eth = watch(reader, ChainlinkFeed("cl", "ETH/USD", chainlink_spec(snapshot.eth_proxy, 7200)))
    await chain.rpc("evm_setNextBlockTimestamp", [now + 600])
    await chain.mine()
    assert await reader.poll_once()
    assert (reader.stats.sequencer_up, eth.last.flag) == (False, "sequencer")
    await chain.rpc("evm_setNextBlockTimestamp", [now + 601])
    await chain.mine()
    assert await reader.poll_once()
    assert (reader.stats.sequencer_up, eth.last.flag) == (True, None)


async def test_new_heads_read_each_block_in_one_round_trip(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """With a ws_url the reader follows newHeads; every new block is one pinned eth_call."""
    reader = make_reader([anvil.url], http, ws_url=anvil.ws_url)
    got = watch_eth(reader, snapshot.eth_proxy)
    task = asyncio.create_task(reader.run())
    try:
        await got.until(lambda: bool(got.quotes))  # polled while the socket opens, or after
        async with asyncio.timeout(5):
            while reader.stats.mode != "newHeads":  # noqa: ASYNC110 - a counter, no event
                await asyncio.sleep(0.01)
        trips = reader.stats.round_trips
        await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 3333_00000000)
        await got.until(lambda: got.last.price == 3333.0)
        assert reader.stats.round_trips == trips + 1
        assert got.stats.state == "streaming"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_cross_check_withholds_a_block_the_endpoints_disagree_on(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """With cross_check, a second endpoint that answers a different read for the same block
    hash is reported and the block is not published; agreeing endpoints publish, and so does
    the first endpoint when the second cannot answer at all."""
    reader = make_reader([anvil.url, proxy.url], http, cross_check=True)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    assert len(got.quotes) == 1
    proxy.mode = "tamper"
    reader2 = make_reader([anvil.url, proxy.url], http, cross_check=True)
    got2 = watch_eth(reader2, snapshot.eth_proxy)
    assert not await reader2.poll_once()
    assert reader2.stats.disagreements == 1
    assert got2.quotes == []
    proxy.mode = "error"  # a second endpoint that cannot answer says nothing against the first
    reader3 = make_reader([anvil.url, proxy.url], http, cross_check=True)
    got3 = watch_eth(reader3, snapshot.eth_proxy)
    assert await reader3.poll_once()
    assert reader3.stats.disagreements == 0
    assert [q.price for q in got3.quotes] == [3000.0]


async def test_wrong_chain_id_is_refused(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed
) -> None:
    """A node of another chain than the configured one is never read."""
    reader = make_reader([anvil.url], http)
    reader.cfg = reader.cfg.model_copy(update={"chain_id": 1})
    with pytest.raises(SourceError, match="not 1"):
        await reader.check_chain_id()


async def test_a_block_older_than_max_block_age_is_never_published(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A node stuck on an old head: by the reader's clock, a block exactly max_block_age_s old
    is read, one a millisecond older is counted as old and nothing from it is published."""
    head = await chain.block()
    block_ms = int(head["timestamp"], 16) * 1000
    clock = ManualClock(block_ms + 60_000 + 1)
    reader = make_reader([anvil.url], http, clock=clock, max_block_age_s=60.0)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert not await reader.poll_once()
    assert reader.stats.old_blocks == 1
    assert got.quotes == []
    clock.advance(-1)
    assert await reader.poll_once()
    assert reader.stats.old_blocks == 1
    assert [q.price for q in got.quotes] == [3000.0]


async def test_a_block_from_further_ahead_than_the_clock_skew_is_never_published(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A block stamped ahead of the reader's clock by exactly `max_clock_skew_ms` is read; one
    a millisecond further ahead is counted (`future_blocks`) and nothing from it is published,
    as a venue's quote from the future is dropped."""
    block_ms = await chain.timestamp() * 1000
    clock = ManualClock(block_ms - 2_001)
    reader = make_reader([anvil.url], http, clock=clock, max_clock_skew_ms=2_000)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert not await reader.poll_once()
    assert reader.stats.future_blocks == 1
    assert got.quotes == [] and reader.stats.last_block is None
    clock.advance(1)
    assert await reader.poll_once()
    assert reader.stats.future_blocks == 1
    assert [q.price for q in got.quotes] == [3000.0]


async def test_a_chain_a_year_ahead_is_refused_and_never_freezes_the_reader(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A node whose head and multicall time both say a year from now (its chain's clock, not a
    garbled header) is refused block after block: counted, logged once while it lasts, counted
    on the endpoint (`garbage`, the next poll goes to the next URL), never published and never
    taken for the newest block. Before, it was published, and every later block of the honest
    chain was refused as below it until the chain reached that time."""
    clock = ManualClock(await chain.timestamp() * 1000)
    reader = make_reader([proxy.url, anvil.url], http, clock=clock)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    published = reader.stats.last_block
    before = await chain.snapshot()
    year_ahead = await chain.timestamp() + 365 * 86_400
    await chain.rpc("evm_setNextBlockTimestamp", [year_ahead])
    await chain.mine(2)
    with capture_logs() as logs:
        assert not await reader.poll_once()
        assert reader.rpc.active == 1  # the first URL's head was refused: the next one is asked
        assert not await reader.poll_once()
    assert reader.stats.future_blocks == 2
    assert reader.stats.last_block == published
    assert [e["event"] for e in logs].count("block from the future") == 1
    assert [q.price for q in got.quotes] == [3000.0]
    assert reader.rpc.stats[0].by_kind == {"garbage": 1}
    assert reader.rpc.stats[1].by_kind == {"garbage": 1}
    await chain.revert(before)  # the chain's own time again, and past the refused heights
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 3100_00000000)
    await chain.mine(2)
    clock.advance(await chain.timestamp() * 1000 - clock.now_ms())
    assert await reader.poll_once()
    assert (got.last.price, got.last.flag) == (3100.0, None)
    assert reader.stats.backwards == 0


async def test_a_sequencer_feed_that_never_started_is_not_up(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A sequencer feed answering 'up' with a startedAt of 0 (not initialised yet) does not open
    the gate: the chain's feeds are flagged `sequencer` from their first quote."""
    seq = SequencerConfig(address=snapshot.sequencer, grace_period_s=600)
    now = await chain.timestamp()
    await chain.transact(snapshot.sequencer, UPDATE_SEQ, 1, 0, now, 0)
    reader = make_reader([anvil.url], http, sequencer=seq)
    eth = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    assert reader.stats.sequencer_up is False
    assert (eth.last.flag, eth.last.price) == ("sequencer", 3000.0)
