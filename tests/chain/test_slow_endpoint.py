"""A URL that answers, but much slower than another, is not the one every read waits on: the
reader asks the active and the next URL the block's read (pinned to its hash) while the active
endpoint is slow (a quarter of `timeout_s` on average), and takes the next when it gave the same
answer, whole, at least twice as fast: the same request on both, so two equal URLs never swap,
and the request a block really costs, so a URL whose heads are quick and reads slow is left too.
The slow node is the loopback proxy in front of anvil, delaying every answer or dripping the
body of every read; the tests assert which URL served the reads, never how fast they were."""

from __future__ import annotations

import aiohttp
import pytest
from chain_rig import Anvil, Chain, Deployed
from reading import WARPED, make_reader, watch_eth
from rpc_proxy import RpcProxy
from structlog.testing import capture_logs

from oracled.clock import ManualClock

pytestmark = pytest.mark.asyncio(loop_scope="session")

UPDATE = "updateAnswer(int256)"
SWITCHED = "endpoint slower than another: switched"


async def _clock(chain: Chain) -> ManualClock:
    """The reader's clock at the chain's head (blocks are young by it)."""
    return ManualClock(int((await chain.block())["timestamp"], 16) * 1000)


async def test_a_url_much_slower_than_the_next_is_left_for_it(
    anvil: Anvil, chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """The first URL answers every request 0.8 s late (timeout 2 s): it answers, so before it
    stayed the active endpoint for good. After the block it served is published, the second
    URL is asked its head once, is as far and much faster, and becomes the active one: logged,
    counted as a slow switch and not as a failure. The next block's head and read go to the
    second URL; the slow one gets no request."""
    proxy.mode, proxy.delay_s = "slow", 0.8
    reader = make_reader(
        [proxy.url, anvil.url], http, clock=await _clock(chain), max_clock_skew_ms=WARPED
    )
    got = watch_eth(reader, snapshot.eth_proxy)
    with capture_logs() as logs:
        assert await reader.poll_once()
    assert got.last.price == 3000.0
    assert reader.rpc.active == 1
    assert reader.stats.slow_switches == 1
    assert [(e["endpoint"], e["to"]) for e in logs if e["event"] == SWITCHED] == [
        (reader.rpc.stats[0].name, reader.rpc.stats[1].name)
    ]
    assert [st.by_kind for st in reader.rpc.stats] == [{}, {}]
    assert reader.rpc.stats[0].failovers == 0
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
    sent = proxy.requests
    assert await reader.poll_once()
    assert got.last.price == 3100.0
    assert proxy.requests == sent


async def test_a_faster_url_behind_the_chain_is_not_taken_and_asked_once_a_minute(
    anvil: Anvil, chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """The second URL is fast but its head stopped a block back: asked the read of the slow
    URL's block, it has no such block, so the reader stays (and counts no failure: a node a
    block behind is not failing). It is not asked again within the minute (a second published
    block costs it nothing); a minute later it is asked again, and once its head has caught up
    it is taken."""
    behind = await RpcProxy(anvil.url, http).start()
    try:
        behind.mode = "frozen"
        async with http.post(
            behind.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber",
                              "params": ["latest", False]},
        ) as resp:  # fmt: skip
            assert (await resp.json())["result"] is not None  # its head stops here
        await chain.mine()
        proxy.mode, proxy.delay_s = "slow", 0.8
        clock = await _clock(chain)
        reader = make_reader([proxy.url, behind.url], http, clock=clock, max_clock_skew_ms=WARPED)
        watch_eth(reader, snapshot.eth_proxy)
        assert await reader.poll_once()
        assert behind.requests == 2  # its frozen head, then the reader's question
        assert reader.rpc.active == 0 and reader.stats.slow_switches == 0
        await chain.mine()
        assert await reader.poll_once()
        assert behind.requests == 2  # within the minute: not asked
        clock.advance(60_000)
        await chain.mine()
        assert await reader.poll_once()
        assert behind.requests == 3
        assert reader.rpc.active == 0
        behind.mode = "pass"  # caught up
        clock.advance(60_000)
        await chain.mine()
        assert await reader.poll_once()
        assert reader.rpc.active == 1 and reader.stats.slow_switches == 1
        assert [st.by_kind for st in reader.rpc.stats] == [{}, {}]
    finally:
        await behind.stop()


async def test_a_url_not_twice_as_fast_is_not_taken(
    anvil: Anvil, chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """Both URLs are slow, the second a little less (0.6 s against 0.8 s): it is asked, but a
    switch needs answers at least twice as fast, so the reader stays on the first."""
    other = await RpcProxy(anvil.url, http).start()
    try:
        proxy.mode, proxy.delay_s = "slow", 0.8
        other.mode, other.delay_s = "slow", 0.6
        reader = make_reader([proxy.url, other.url], http, clock=await _clock(chain))
        watch_eth(reader, snapshot.eth_proxy)
        assert await reader.poll_once()
        assert other.requests == 1
        assert reader.rpc.active == 0 and reader.stats.slow_switches == 0
    finally:
        await other.stop()


async def test_a_fast_active_url_costs_no_question_to_the_others(
    anvil: Anvil, chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """While the active endpoint answers fast (anvil on loopback), published blocks ask the
    other URL nothing: the rule spends a request only when a read waits long."""
    reader = make_reader([anvil.url, proxy.url], http, clock=await _clock(chain))
    got = watch_eth(reader, snapshot.eth_proxy)
    for price in (3000_00000000, 3100_00000000, 3200_00000000):
        await chain.transact(snapshot.eth_aggregator, UPDATE, price)
        assert await reader.poll_once()
    assert [q.price for q in got.quotes] == [3000.0, 3100.0, 3200.0]
    assert proxy.requests == 0
    assert reader.stats.slow_switches == 0


async def test_two_equally_fast_urls_never_swap_over_many_probe_periods(
    anvil: Anvil, chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """Both URLs answer a header 0.3 s late and a read 1.2 s late (a multicall weighs more
    than a header on any node). The active one's answers, reads among them, average past the
    threshold, so both are asked the block's read a minute apart; the answers compared are the
    same read on both, equal, so the reader never leaves the first. Before, the active one's
    average of all its answers was set against the other's one header: the second URL looked
    more than twice as fast and was taken, and a few blocks later the first looked faster from
    there."""
    other = await RpcProxy(anvil.url, http).start()
    try:
        for p in (proxy, other):
            p.mode, p.delay_s, p.head_delay_s = "slow", 1.2, 0.3
        clock = await _clock(chain)
        reader = make_reader([proxy.url, other.url], http, clock=clock)
        got = watch_eth(reader, snapshot.eth_proxy)
        for price in range(3001, 3007):
            await chain.warp(60)  # a probe period later, by the chain and the reader's clock
            await chain.transact(snapshot.eth_aggregator, UPDATE, price * 10**8)
            clock.advance(await chain.timestamp() * 1000 - clock.now_ms())
            assert await reader.poll_once()
            assert reader.rpc.active == 0
        assert [q.price for q in got.quotes] == [float(p) for p in range(3001, 3007)]
        assert reader.stats.slow_switches == 0
        assert set(other.methods) == {"eth_call"}  # the questions: the block's read, pinned
        assert all(isinstance(pin, dict) and "blockHash" in pin for pin in other.pins)
        assert len(other.methods) >= 4  # asked in several probe periods
    finally:
        await other.stop()


async def test_a_url_whose_reads_drip_in_is_left_though_its_heads_are_quick(
    anvil: Anvil, chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """The first URL sends every answer's headers at once and the body of every read in eight
    pieces over 1.2 s (timeout 2 s), its heads whole: a node behind a thin link, quick with a
    small answer and slow with the multicall's. What a block costs there is the read's whole
    answer. Before, the rule timed the two URLs' heads, equally quick, and the first URL stayed
    the one every read waited on. Now both are asked the block's read, side by side: the
    second's whole answer, the same bytes, is back far sooner, so it is taken (no failure
    counted), and the next block costs the first URL nothing."""
    proxy.mode, proxy.delay_s = "drip", 1.2
    reader = make_reader(
        [proxy.url, anvil.url], http, clock=await _clock(chain), max_clock_skew_ms=WARPED
    )
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()  # the head, the feed's set-up read, its read, the probe
    assert got.last.price == 3000.0
    assert proxy.methods == ["eth_getBlockByNumber"] + ["eth_call"] * 3
    assert reader.rpc.active == 1 and reader.stats.slow_switches == 1
    assert [st.by_kind for st in reader.rpc.stats] == [{}, {}]
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
    sent = proxy.requests
    assert await reader.poll_once()
    assert got.last.price == 3100.0
    assert proxy.requests == sent
