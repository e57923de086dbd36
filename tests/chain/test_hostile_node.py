"""The chain reader against a node that misbehaves on purpose (the loopback proxy in front of
anvil): a URL that starts serving another chain mid-run, HTTP and JSON-RPC rate limits (and a
429's Retry-After, the backoff of a limit that names no wait), an `eth_call` answer of the wrong
ABI length, a node that hangs while another chain is read, and a URL that lies consistently
(outvoted by a cross-check of three URLs)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from chain_rig import CHAIN_ID, Anvil, Chain, Deployed
from reading import make_reader, watch_eth
from rpc_proxy import RpcProxy
from structlog.testing import capture_logs

from oracled.clock import ManualClock
from oracled.jsonrpc import RpcClient, RpcUnavailable

pytestmark = pytest.mark.asyncio(loop_scope="session")

UPDATE = "updateAnswer(int256)"


async def test_a_url_that_starts_serving_another_chain_is_refused_at_its_next_read(
    chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """The chain id is checked at start, but the node behind a URL can change (a provider's
    fail-over to a node of another chain where the same addresses hold other values). The
    multicall's own `getChainId()` rides in every read: a read that ran on another chain is
    refused and logged as an error, counted on the endpoint as `wrong_chain`, and its new
    answer is never published; once the node serves the configured chain again, it is."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    await reader.check_chain_id()
    assert await reader.poll_once()
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
    await chain.rpc("anvil_setChainId", [CHAIN_ID + 1])
    try:
        with capture_logs() as logs:
            assert not await reader.poll_once()
    finally:
        await chain.rpc("anvil_setChainId", [CHAIN_ID])
    assert [q.price for q in got.quotes] == [3000.0]
    assert got.stats.state == "down"
    assert reader.stats.reads_failed == 1
    assert reader.rpc.stats[0].by_kind == {"wrong_chain": 1}
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [(e["event"], e["chain_id"], e["expected"]) for e in errors] == [
        ("endpoint serves another chain: read refused", CHAIN_ID + 1, CHAIN_ID)
    ]
    await chain.mine()
    assert await reader.poll_once()
    assert got.last.price == 3100.0


@pytest.mark.parametrize("mode", ["short_call", "null_call"])
async def test_an_endpoint_that_garbles_every_read_is_left_for_the_next_one(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy, mode: str
) -> None:
    """The first URL answers every head correctly but every read with garbage (an answer cut
    short of its ABI length, or null): the read is refused and counted as that endpoint's
    `garbage`, and the next poll goes to the second URL, which is published. Before, the client
    kept the endpoint that answered, so the healthy URL was never used and no block was read."""
    proxy.mode = mode
    reader = make_reader([proxy.url, anvil.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert not await reader.poll_once()
    assert got.quotes == []
    assert reader.rpc.stats[0].by_kind == {"garbage": 1}
    assert reader.rpc.active == 1
    assert await reader.poll_once()
    assert got.last.price == 3000.0
    assert reader.stats.reads_failed == 1


@pytest.mark.parametrize(
    "mode", ["http429", "http503", "http402", "limit_32005", "limit_32007", "limit_32012"]
)
async def test_a_rate_limited_endpoint_is_passed_over_and_alone_publishes_nothing(
    anvil: Anvil,
    http: aiohttp.ClientSession,
    snapshot: Deployed,
    proxy: RpcProxy,
    mode: str,
) -> None:
    """A rate or capacity limit, as HTTP 429 or 503 with a Retry-After, Infura's HTTP 402 (daily
    credits spent), JSON-RPC -32005, or QuickNode's -32007 and -32012: with a second URL the poll
    is answered there and published, the limit counted on the first as `rate_limited`; alone,
    nothing is published, the failure is counted and the feed says down."""
    proxy.mode = mode
    reader = make_reader([proxy.url, anvil.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    assert got.last.price == 3000.0
    assert reader.rpc.stats[0].by_kind == {"rate_limited": 1}
    alone = make_reader([proxy.url], http)
    lone = watch_eth(alone, snapshot.eth_proxy)
    assert not await alone.poll_once()
    assert lone.quotes == []
    assert alone.stats.reads_failed == 1
    assert lone.stats.state == "down"


async def test_a_hanging_node_stalls_neither_another_chain_nor_its_own_reader(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """One chain's only node hangs: another chain's reader, on the same shared session, reads
    and publishes meanwhile; the hanging poll ends at the chain's `timeout_s`, counted as a
    timeout, with nothing published."""
    proxy.mode = "hold"
    slow = make_reader([proxy.url], http, timeout_s=0.5)
    stuck = watch_eth(slow, snapshot.eth_proxy)
    fast = make_reader([anvil.url], http)
    other = watch_eth(fast, snapshot.eth_proxy)
    poll = asyncio.create_task(slow.poll_once())
    await proxy.arrived.wait()
    assert await fast.poll_once()
    assert other.last.price == 3000.0
    assert not poll.done()
    assert not await poll
    assert stuck.quotes == []
    assert slow.rpc.stats[0].by_kind == {"timeout": 1}


@pytest.mark.parametrize(
    ("mode", "retry_after", "rest_s", "kind"),
    [
        ("http429", "30", 30, "rate_limited"),
        ("http429", "86400", 60, "rate_limited"),
        ("http429", None, 1, "rate_limited"),
        ("http429", "Wed, 21 Oct 2026", 1, "rate_limited"),
        ("http503", "30", 30, "rate_limited"),
        ("http503", None, 0, "http"),
        ("http503", "Wed, 21 Oct 2026", 0, "http"),
        # No delay-seconds (RFC 9110: ASCII digits alone): no wait named, the backoff's 1 s
        # for a 429, a passing fault for a 503. float() read "inf" as the 60 s cap and
        # "١٢٣" (Arabic-Indic digits) as 123 s.
        ("http429", "inf", 1, "rate_limited"),
        ("http429", "\u0661\u0662\u0663", 1, "rate_limited"),
        ("http429", "1_000", 1, "rate_limited"),
        ("http429", "+30", 1, "rate_limited"),
        ("http503", "inf", 0, "http"),
        ("http503", "1e9", 0, "http"),
    ],
)
async def test_a_429_rests_its_endpoint_for_its_retry_after(
    http: aiohttp.ClientSession,
    proxy: RpcProxy,
    mode: str,
    retry_after: str | None,
    rest_s: int,
    kind: str,
) -> None:
    """An HTTP 429 or 503 whose Retry-After is in seconds rests that endpoint so long (at most
    60 s): calls meanwhile raise RpcUnavailable without a request reaching it, and the first
    call after the rest is answered. A 429 without a Retry-After in seconds rests the
    backoff's 1 s; a 503 without one is a passing fault, counted `http` and asked again at
    once."""
    clock = ManualClock(1_000_000)
    rpc = RpcClient([proxy.url], http, timeout_s=2.0, clock=clock)
    proxy.mode, proxy.retry_after = mode, retry_after
    with pytest.raises(RpcUnavailable, match="every endpoint failed"):
        await rpc.call("eth_chainId", [])
    proxy.mode = "pass"
    if rest_s:
        clock.advance(rest_s * 1000 - 1)
        with pytest.raises(RpcUnavailable, match="resting"):
            await rpc.call("eth_chainId", [])
        with pytest.raises(RpcUnavailable, match="resting"):
            await rpc.call_on(0, "eth_chainId", [])
        assert proxy.requests == 1
        clock.advance(1)
    assert await rpc.call("eth_chainId", []) == hex(CHAIN_ID)
    assert proxy.requests == 2
    assert rpc.stats[0].by_kind == {kind: 1}


@pytest.mark.parametrize(
    "mode", ["http429", "http402", "limit_32005", "rate_limited", "limit_32007", "limit_32012"]
)
async def test_a_rate_limited_only_url_is_not_asked_again_at_every_poll(
    http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy, mode: str
) -> None:
    """A chain whose only URL answers a rate limit (HTTP 429 with Retry-After: 30, or one that
    names no wait, a 1 s rest: Infura's HTTP 402, a JSON-RPC -32005 or 429 error, QuickNode's
    -32007 and -32012): the polls meanwhile fail (counted, nothing published) without sending a
    request; a second URL would be asked."""
    proxy.mode = mode
    reader = make_reader([proxy.url], http, rpc_clock=ManualClock(1_000_000))
    got = watch_eth(reader, snapshot.eth_proxy)
    for _ in range(3):
        assert not await reader.poll_once()
    assert proxy.requests == 1
    assert reader.stats.reads_failed == 3
    assert got.quotes == []


async def test_a_head_that_stopped_is_left_once_another_url_is_ahead(
    anvil: Anvil, chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """The first URL keeps answering the same head while the chain moves on (a new round on the
    second URL). Within three block times nothing is asked elsewhere; past them one request asks
    the second URL's head, which is ahead: the first is counted `behind` and the next poll reads
    the new round from the second, long before max_block_age_s (300 s) would have."""
    head = await chain.block()
    clock = ManualClock(int(head["timestamp"], 16) * 1000)
    reader = make_reader([proxy.url, anvil.url], http, clock=clock, block_time_s=12.0)
    got = watch_eth(reader, snapshot.eth_proxy)
    proxy.mode = "frozen"
    assert await reader.poll_once()
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
    trips = reader.stats.round_trips
    clock.advance(36_000)
    assert not await reader.poll_once()
    assert reader.stats.round_trips == trips + 1  # the frozen head alone
    clock.advance(1_000)
    assert not await reader.poll_once()
    assert reader.stats.round_trips == trips + 3  # the frozen head, then the second URL's
    assert reader.rpc.stats[0].by_kind == {"behind": 1}
    assert await reader.poll_once()
    assert [q.price for q in got.quotes] == [3000.0, 3100.0]


async def test_a_quiet_chain_keeps_its_url(
    anvil: Anvil, chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed
) -> None:
    """No new block anywhere for more than three block times: the second URL's head is asked,
    is the same, and the reader stays where it is, with no failure counted."""
    head = await chain.block()
    clock = ManualClock(int(head["timestamp"], 16) * 1000)
    reader = make_reader([anvil.url, anvil.url], http, clock=clock, block_time_s=12.0)
    watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    clock.advance(37_000)
    assert not await reader.poll_once()
    assert reader.rpc.active == 0
    assert [st.by_kind for st in reader.rpc.stats] == [{}, {}]


@pytest.mark.parametrize("mode", ["limit_32005", "rate_limited", "limit_32007", "limit_32012"])
async def test_a_json_rpc_rate_limit_rests_its_endpoint_1_s_doubling_until_an_answer(
    http: aiohttp.ClientSession, proxy: RpcProxy, mode: str
) -> None:
    """A JSON-RPC rate limit names no wait: its endpoint rests 1 s, then 2 s at the next limit
    in a row (no request reaches it meanwhile), and an answer starts the backoff again at 1 s."""
    clock = ManualClock(1_000_000)
    rpc = RpcClient([proxy.url], http, timeout_s=2.0, clock=clock)
    proxy.mode = mode
    sent = []
    for rest_ms in (1000, 2000):
        with pytest.raises(RpcUnavailable, match="every endpoint failed"):
            await rpc.call("eth_chainId", [])
        clock.advance(rest_ms - 1)
        with pytest.raises(RpcUnavailable, match="resting"):
            await rpc.call("eth_chainId", [])
        sent.append(proxy.requests)
        clock.advance(1)
    proxy.mode = "pass"
    assert await rpc.call("eth_chainId", []) == hex(CHAIN_ID)
    proxy.mode = mode
    with pytest.raises(RpcUnavailable, match="every endpoint failed"):
        await rpc.call("eth_chainId", [])
    clock.advance(1000)
    proxy.mode = "pass"
    assert await rpc.call("eth_chainId", []) == hex(CHAIN_ID)
    assert sent == [1, 2]
    assert proxy.requests == 5
    assert rpc.stats[0].by_kind == {"rate_limited": 3}


async def test_an_error_answer_between_rate_limits_starts_the_rest_again_at_1_s(
    http: aiohttp.ClientSession, proxy: RpcProxy
) -> None:
    """An endpoint that answers with any error other than a rate limit (here geth's "header not
    found") has answered: the limit is over, so the next limit rests it 1 s again, not twice
    as long as the one before (the documented "its next answer starts it again at 1 s")."""
    clock = ManualClock(1_000_000)
    rpc = RpcClient([proxy.url], http, timeout_s=2.0, clock=clock)
    proxy.mode = "limit_32005"
    with pytest.raises(RpcUnavailable, match="every endpoint failed"):
        await rpc.call("eth_chainId", [])
    clock.advance(1000)
    proxy.mode = "error"
    with pytest.raises(RpcUnavailable, match="every endpoint failed"):
        await rpc.call("eth_chainId", [])
    proxy.mode = "limit_32005"
    with pytest.raises(RpcUnavailable, match="every endpoint failed"):
        await rpc.call("eth_chainId", [])
    assert rpc.stats[0].last_error == "rate_limited: -32005 limit exceeded, resting 1 s"
    clock.advance(1000)
    proxy.mode = "pass"
    assert await rpc.call("eth_chainId", []) == hex(CHAIN_ID)  # rested 1 s, not 2
    assert proxy.requests == 4
    assert rpc.stats[0].by_kind == {"rate_limited": 2, "node": 1}


async def test_a_limit_code_without_its_providers_words_is_a_node_error_not_a_rest(
    http: aiohttp.ClientSession, proxy: RpcProxy
) -> None:
    """-32007 is QuickNode's rate limit only with its message ("request limit reached"); another
    server's -32007 (here an expired key) is a node-side error like any other: counted `node`,
    no rest, so the next call is sent at once, not a second later."""
    clock = ManualClock(1_000_000)
    rpc = RpcClient([proxy.url], http, timeout_s=2.0, clock=clock)
    proxy.mode = "expired_32007"
    with pytest.raises(RpcUnavailable, match="every endpoint failed"):
        await rpc.call("eth_chainId", [])
    proxy.mode = "pass"
    assert await rpc.call("eth_chainId", []) == hex(CHAIN_ID)
    assert proxy.requests == 2
    assert rpc.stats[0].by_kind == {"node": 1}
    assert rpc.stats[0].last_error == "node: -32007 API key expired"


def _calls(proxy: RpcProxy) -> int:
    return proxy.methods.count("eth_call")


async def test_three_urls_outvote_a_consistent_liar_and_leave_it(
    anvil: Anvil,
    chain: Chain,
    http: aiohttp.ClientSession,
    snapshot: Deployed,
    proxy: RpcProxy,
    other_host: RpcProxy,
) -> None:
    """cross_check with three URLs on three hosts, the second of which changes every read: the
    third URL's read agrees with the first, so the block is published, the liar counted
    `outvoted` and logged once, and the next block is checked on the third URL without asking
    the liar. Before, the liar withheld every block, neither URL was left. An agreeing block
    costs one extra read."""
    reader = make_reader([anvil.url, proxy.url, other_host.url], http, cross_check=True)
    got = watch_eth(reader, snapshot.eth_proxy)
    proxy.mode = "tamper"
    with capture_logs() as logs:
        assert await reader.poll_once()
    assert [q.price for q in got.quotes] == [3000.0]
    assert reader.stats.disagreements == 0  # settled: nothing withheld
    assert [st.by_kind for st in reader.rpc.stats] == [{}, {"outvoted": 1}, {}]
    assert [e["endpoint"] for e in logs if e["event"] == "endpoint outvoted: left"] == [
        reader.rpc.stats[1].name
    ]
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
    before = [st.requests for st in reader.rpc.stats]
    assert await reader.poll_once()
    assert got.last.price == 3100.0
    assert _calls(proxy) == 1
    spent = [st.requests - n for st, n in zip(reader.rpc.stats, before, strict=True)]
    assert spent == [2, 0, 1]  # the head and the read on the first, the check on the third


async def test_a_first_url_outvoted_is_left_and_the_majority_read_published(
    anvil: Anvil,
    http: aiohttp.ClientSession,
    snapshot: Deployed,
    proxy: RpcProxy,
    other_host: RpcProxy,
) -> None:
    """The URL read first is the liar: the other two (on two other hosts) agree with each
    other, so their read is published (the liar's, read alone, publishes no quote), the liar is
    counted `outvoted` and the next request goes elsewhere. With a third URL that cannot
    answer, one read against one withholds the block."""
    proxy.mode = "tamper"
    reader = make_reader([proxy.url, anvil.url, other_host.url], http, cross_check=True)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    assert [q.price for q in got.quotes] == [3000.0]
    assert reader.rpc.stats[0].by_kind == {"outvoted": 1}
    assert reader.rpc.active == 1
    down = await RpcProxy(anvil.url, http).start()
    down.mode = "http500"
    try:
        tie = make_reader([proxy.url, anvil.url, down.url], http, cross_check=True)
        lone = watch_eth(tie, snapshot.eth_proxy)
        assert not await tie.poll_once()
    finally:
        await down.stop()
    assert lone.quotes == []
    assert tie.stats.disagreements == 1
    assert [st.by_kind for st in tie.rpc.stats] == [{}, {}, {"http": 1}]
