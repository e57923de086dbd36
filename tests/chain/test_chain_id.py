"""The chain id check: through web3 (AsyncWeb3 over the reader's own session, request caching
on), once per endpoint, and never trusting an endpoint that cannot say or says another chain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from chain_rig import Anvil, Chain, Deployed
from reading import make_reader, watch_eth
from rpc_proxy import RpcProxy
from structlog.testing import capture_logs

from oracled.errors import SourceError
from oracled.jsonrpc import RpcUnavailable

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def traced() -> AsyncIterator[tuple[aiohttp.ClientSession, list[str]]]:
    """A session that records the URL of every request sent through it."""
    sent: list[str] = []

    async def on_start(
        _: aiohttp.ClientSession, __: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        sent.append(str(params.url))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        yield session, sent


async def test_chain_id_goes_through_web3_on_the_shared_session_once(
    proxy: RpcProxy,
    traced: tuple[aiohttp.ClientSession, list[str]],
    chain: Chain,
    snapshot: Deployed,
) -> None:
    """The check is made by web3 (its User-Agent), through the reader's session (no session of
    web3's own), and asked of the endpoint once however often it is checked; the block reads
    that follow are the reader's own requests, two per polled block after the first (the head,
    then the read)."""
    session, sent = traced
    reader = make_reader([proxy.url], session)
    await reader.check_chain_id()
    await reader.check_chain_id()
    assert await reader.rpc.chain_id(0) == 31337  # web3's request cache answers this one
    assert proxy.requests == 1 and "web3.py" in proxy.user_agents[0]
    assert sent == [proxy.url]  # web3 used the session it was given
    assert reader.rpc.stats[0].requests == 2  # asked twice of the client, sent once
    watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()  # the first block: the feed's set-up read, then its read
    trips = reader.stats.round_trips
    await chain.mine()
    assert await reader.poll_once()
    assert reader.stats.round_trips == trips + 2
    assert proxy.requests == 1 + reader.stats.round_trips
    assert not any("web3.py" in agent for agent in proxy.user_agents[1:])


async def test_an_endpoint_down_at_start_is_passed_over_and_asked_again_later(
    anvil: Anvil, http: aiohttp.ClientSession, proxy: RpcProxy
) -> None:
    """A dead first endpoint does not stop the check (the second answers); its failure is
    counted and logged, and the next check asks only that endpoint again."""
    reader = make_reader([proxy.url, anvil.url], http, timeout_s=1.0)
    proxy.mode = "garbage"
    with capture_logs() as logs:
        await reader.check_chain_id()
    first, second = reader.rpc.stats
    assert first.by_kind == {"garbage": 1}
    assert second.requests == 1 and not second.by_kind
    assert [e["event"] for e in logs] == ["chain id unknown"]
    proxy.mode = "pass"
    await reader.check_chain_id()
    assert first.requests == 2 and second.requests == 1
    await reader.check_chain_id()
    assert first.requests == 2 and second.requests == 1


@pytest.mark.parametrize("body", [b"[]", b"null", b'"0x7a69"', b"31337", b'[{"id": 1}]'])
async def test_a_chain_id_answer_that_is_no_json_object_is_garbage_and_the_next_one_answers(
    anvil: Anvil, http: aiohttp.ClientSession, proxy: RpcProxy, body: bytes
) -> None:
    """The first endpoint answers the start's eth_chainId with JSON that is no JSON-RPC answer
    object (an array, as a batch's answer, null, a bare string or number): it is counted
    `garbage` and logged as any endpoint that cannot say, and the second answers, so the start
    goes on. Found by fuzzing the chain id check with a hostile node: web3 takes every answer
    for an object, its AttributeError escaped the check, and one such endpoint stopped the
    reader's start (a crash its supervisor restarted, endlessly) whatever the others said."""
    proxy.rewrite = lambda request, answer: web.Response(body=body, content_type="application/json")
    reader = make_reader([proxy.url, anvil.url], http, timeout_s=1.0)
    with capture_logs() as logs:
        await reader.check_chain_id()
    first, second = reader.rpc.stats
    assert first.by_kind == {"garbage": 1}
    assert second.requests == 1 and not second.by_kind
    assert [e["event"] for e in logs] == ["chain id unknown"]
    assert logs[0]["error"].endswith("garbage: eth_chainId: AttributeError")


async def test_a_chain_id_redirected_elsewhere_is_a_failure_and_the_next_endpoint_answers(
    anvil: Anvil, http: aiohttp.ClientSession, proxy: RpcProxy
) -> None:
    """The first endpoint answers the start's eth_chainId with a 307 to another host (a POST
    keeps its body through it): counted `http` and logged as any endpoint that cannot say, and
    the second answers. Before, web3's request followed it and the host nobody configured
    answered for the first endpoint, uncounted."""
    proxy.mode = "redirect"
    reader = make_reader([proxy.url, anvil.url], http, timeout_s=1.0)
    with capture_logs() as logs:
        await reader.check_chain_id()
    first, second = reader.rpc.stats
    assert first.by_kind == {"http": 1}
    assert first.last_error == "http: status 307"
    assert second.requests == 1 and not second.by_kind
    assert [e["event"] for e in logs] == ["chain id unknown"]


@pytest.mark.parametrize("mode", ["huge", "endless"])
async def test_a_chain_id_answer_past_the_cap_is_cut_there_and_the_next_endpoint_answers(
    anvil: Anvil, http: aiohttp.ClientSession, proxy: RpcProxy, mode: str
) -> None:
    """The first endpoint answers the start's eth_chainId with more than the 16 MiB every other
    RPC answer is cut at (a 20 MiB result, or one that never ends): the read stops at the cap,
    the endpoint is counted `garbage` and logged as any endpoint that cannot say, and the second
    answers, so the start goes on. Before, web3's provider read a body of any length: the
    20 MiB result was taken for chain 0 and refused the chain, and the endless one was read
    into memory until the timeout. The timeout here is far past any run of this test, so only
    the cap can end the read; the proxy counts what it could write before the client hung up."""
    reader = make_reader([proxy.url, anvil.url], http, timeout_s=60.0)  # the most allowed
    proxy.mode = mode
    with capture_logs() as logs:
        await reader.check_chain_id()
    first, second = reader.rpc.stats
    assert first.by_kind == {"garbage": 1}
    assert first.last_error == "garbage: answer over 16 MiB"
    assert second.requests == 1 and not second.by_kind
    assert [e["event"] for e in logs] == ["chain id unknown"]
    assert logs[0]["error"].endswith("garbage: answer over 16 MiB")
    if mode == "endless":  # the cap and the sockets' buffers, not the proxy's 256 MiB
        assert 16 * 1024 * 1024 < proxy.streamed < 64 * 1024 * 1024


@pytest.mark.parametrize("mode", ["error", "stopped", "expired_32007"])
async def test_no_endpoint_answering_the_chain_id_stops_the_reader(
    http: aiohttp.ClientSession, proxy: RpcProxy, mode: str
) -> None:
    """With no endpoint able to say which chain it serves (a server-side error, a dead port,
    a -32007 that is no rate limit), the reader refuses to start; the failure is counted by
    kind and nothing rests."""
    reader = make_reader([proxy.url], http, timeout_s=1.0)
    if mode == "stopped":
        await proxy.stop()
    else:
        proxy.mode = mode
    with pytest.raises(RpcUnavailable, match="no endpoint answered"):
        await reader.check_chain_id()
    kind = "transport" if mode == "stopped" else "node"
    assert reader.rpc.stats[0].by_kind == {kind: 1}
    assert reader.rpc.rest_left_s(0) == 0


@pytest.mark.parametrize(
    "mode", ["limit_32007", "limit_32012", "limit_32005", "rate_limited", "http402", "http429",
             "http503"],
)  # fmt: skip
async def test_a_rate_limited_chain_id_rests_and_is_asked_again_without_failing_the_start(
    http: aiohttp.ClientSession, proxy: RpcProxy, mode: str
) -> None:
    """The only endpoint answers the start's eth_chainId with a provider's rate limit (JSON-RPC
    or HTTP, with a Retry-After of 1 s where the status carries one). It is counted
    `rate_limited` and logged as on a read, and rests: the check waits the rest out and asks
    once more, and the start goes on. Before, web3's exception was counted as `http` or
    `node`, nothing rested, and the start failed (`chain unreachable`), retried by the
    supervisor as if the node were down. Two requests in all: no spin meanwhile."""
    proxy.script, proxy.retry_after = [mode], "1"
    reader = make_reader([proxy.url], http)
    with capture_logs() as logs:
        await reader.check_chain_id()
    assert proxy.requests == 2
    assert reader.rpc.stats[0].by_kind == {"rate_limited": 1}
    assert [e["event"] for e in logs] == ["chain id unknown"]
    assert "rate_limited" in logs[0]["error"] and "resting 1 s" in logs[0]["error"]


async def test_a_rate_limited_endpoint_at_start_rests_while_the_other_is_read(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """The first URL is rate-limited for 30 s (HTTP 429, Retry-After: 30) at the start's
    check, the second answers: the start goes on at once, and the first URL rests as after a
    read: the first block is read from the second URL without a request to the first."""
    proxy.mode = "http429"
    reader = make_reader([proxy.url, anvil.url], http)
    await reader.check_chain_id()
    assert reader.rpc.stats[0].by_kind == {"rate_limited": 1}
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    assert got.last.price == 3000.0
    assert proxy.requests == 1


async def test_one_endpoint_of_another_chain_refuses_the_chain(
    anvil: Anvil, http: aiohttp.ClientSession, proxy: RpcProxy
) -> None:
    """An endpoint that answers another chain id (here: the config says mainnet) is a
    misconfiguration: the reader refuses to start and names the endpoint."""
    reader = make_reader([anvil.url, proxy.url], http)
    reader.cfg = reader.cfg.model_copy(update={"chain_id": 1})
    with pytest.raises(SourceError, match=r"127\.0\.0\.1:\d+ is chain 31337, not 1"):
        await reader.check_chain_id()
