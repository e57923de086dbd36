"""The shared JSON-RPC client's failure handling, against anvil behind a breakable proxy: every
kind of bad answer is counted under its kind and the request goes to the next endpoint; a
request's own fault is raised at once, without asking another endpoint."""

from __future__ import annotations

import aiohttp
import pytest
from chain_rig import Anvil
from rpc_proxy import RpcProxy

from oracled.clock import SystemClock
from oracled.jsonrpc import RpcClient, RpcError, RpcUnavailable, UnknownBlock

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.usefixtures("daemon_recursion_limit"),  # the "deep" answers
]

ANVIL_CHAIN_ID = "0x7a69"  # 31337


def client(urls: list[str], http: aiohttp.ClientSession, timeout_s: float = 2.0) -> RpcClient:
    return RpcClient(urls, http, timeout_s=timeout_s, clock=SystemClock())


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("hold", "timeout"),
        ("http500", "http"),
        ("garbage", "garbage"),
        ("wrong_id", "garbage"),
        ("no_result", "garbage"),
        ("error", "node"),
        ("huge", "garbage"),
        ("deep", "garbage"),
    ],
)
async def test_a_bad_answer_is_counted_by_kind_and_the_next_endpoint_answers(
    anvil: Anvil, http: aiohttp.ClientSession, proxy: RpcProxy, mode: str, kind: str
) -> None:
    """A node that hangs past the timeout, answers status 500, answers bytes that are not
    JSON-RPC, answers another request id, or answers neither result nor error, answers more
    than any read could (20 MiB: read no further than the 16 MiB cap), answers JSON nested
    past the decoder's depth limit (a RecursionError, which before left the client: no
    fail-over, and the chain reader crashed and was restarted), or a server-side error: the
    call still gets the second endpoint's answer, the first is counted once under the
    failure's kind, and the client stays on the second."""
    proxy.mode = mode
    # A short timeout for the node that hangs; the huge answer takes a while to send on a busy host.
    rpc = client([proxy.url, anvil.url], http, timeout_s=0.3 if mode == "hold" else 5.0)
    assert await rpc.call("eth_chainId", []) == ANVIL_CHAIN_ID
    first, second = rpc.stats
    assert first.by_kind == {kind: 1}
    assert (first.timeouts, first.garbage, first.failures) == (
        int(kind == "timeout"),
        int(kind == "garbage"),
        int(kind in ("http", "node")),
    )
    assert first.failovers == 1 and first.last_error is not None
    assert first.last_error.startswith(kind)
    assert second.requests == 1 and not second.by_kind
    assert rpc.active == 1


async def test_every_endpoint_failing_a_call_raises_unavailable(
    http: aiohttp.ClientSession, proxy: RpcProxy
) -> None:
    """With the only endpoint answering garbage, a call raises RpcUnavailable (never a made-up
    result), and the failure is counted; a single endpoint never counts a fail-over."""
    proxy.mode = "no_result"
    rpc = client([proxy.url], http)
    with pytest.raises(RpcUnavailable, match="eth_chainId: every endpoint failed"):
        await rpc.call("eth_chainId", [])
    assert rpc.stats[0].by_kind == {"garbage": 1}
    assert rpc.stats[0].failovers == 0


async def test_a_request_fault_is_raised_without_asking_another_endpoint(
    anvil: Anvil, http: aiohttp.ClientSession, proxy: RpcProxy
) -> None:
    """Bad params (-32602) are the request's own fault: RpcError with the node's code at once;
    the second endpoint is never asked, nothing is counted as a failure, the client stays."""
    rpc = client([anvil.url, proxy.url], http)
    with pytest.raises(RpcError) as raised:
        await rpc.call("eth_getBalance", ["0x1", "latest"])
    assert raised.value.code == -32602
    assert proxy.requests == 0
    assert rpc.stats[0].failures == rpc.stats[0].garbage == 0 and not rpc.stats[0].by_kind
    assert rpc.active == 0


async def test_a_read_pinned_to_a_block_the_node_does_not_hold_is_unknown_block(
    anvil: Anvil, http: aiohttp.ClientSession, proxy: RpcProxy
) -> None:
    """A read pinned to a block hash the node does not have (anvil's EIP-1898 answer: -32001
    "Resource not found") raises UnknownBlock at once: a block a reorg took away is no fault
    of the endpoint, so nothing is counted and no other endpoint is asked. The same error for a
    request not pinned by hash is still a node-side failure, failed over."""
    rpc = client([proxy.url, anvil.url], http)
    call = {"to": "0x0000000000000000000000000000000000000001", "data": "0x"}
    with pytest.raises(UnknownBlock) as raised:
        await rpc.call("eth_call", [call, {"blockHash": "0x" + "ab" * 32}])
    assert raised.value.code == -32001
    assert [st.requests for st in rpc.stats] == [1, 0]
    assert not rpc.stats[0].by_kind and rpc.active == 0
    proxy.mode = "error"  # -32000 "header not found" for a read at "latest": fails over
    assert await rpc.call("eth_call", [call, "latest"]) == "0x"
    assert rpc.stats[0].by_kind == {"node": 1} and rpc.active == 1


async def test_a_pinned_read_of_a_block_off_the_canonical_chain_is_unknown_block(
    http: aiohttp.ClientSession, proxy: RpcProxy
) -> None:
    """geth's answer to a read pinned with requireCanonical to a block a reorg orphaned (-32000
    "hash ... is not currently canonical") is the reorg's, not the endpoint's fault: it raises
    UnknownBlock, nothing counted, no other endpoint asked."""
    proxy.mode = "not_canonical"
    rpc = client([proxy.url, proxy.url], http)
    call = {"to": "0x0000000000000000000000000000000000000001", "data": "0x"}
    pin = {"blockHash": "0x" + "ab" * 32, "requireCanonical": True}
    with pytest.raises(UnknownBlock, match="not currently canonical"):
        await rpc.call("eth_call", [call, pin])
    assert [st.requests for st in rpc.stats] == [1, 0]
    assert not rpc.stats[0].by_kind and rpc.active == 0


@pytest.mark.parametrize(
    ("mode", "kind"), [("hold", "timeout"), ("http500", "http"), ("deep", "garbage")]
)
async def test_a_chain_id_that_cannot_be_read_is_counted_and_unavailable(
    http: aiohttp.ClientSession, proxy: RpcProxy, mode: str, kind: str
) -> None:
    """The chain id asked through web3 of a node that hangs, answers status 500 or answers JSON
    nested past the decoder's depth limit (a RecursionError, which web3 lets through, at the
    daemon's recursion limit): the client
    raises RpcUnavailable (the reader then trusts no answer of that endpoint) and counts the
    failure under its kind."""
    proxy.mode = mode
    rpc = client([proxy.url], http, timeout_s=0.3)
    with pytest.raises(RpcUnavailable, match=r"eth_chainId on http://127\.0\.0\.1"):
        await rpc.chain_id(0)
    assert rpc.stats[0].by_kind == {kind: 1}


async def test_endpoint_names_are_redacted_and_unique_per_chain(
    http: aiohttp.ClientSession,
) -> None:
    """Two keys on one provider's host are two endpoints with distinct names (they are metric
    labels), and neither name shows the path that holds the key."""
    rpc = client(
        ["https://rpc.example:8545/v2/KEY-ONE", "https://rpc.example:8545/v2/KEY-TWO"], http
    )
    assert [s.name for s in rpc.stats] == [
        "https://rpc.example:8545",
        "https://rpc.example:8545#2",
    ]


async def test_a_client_without_urls_is_refused(http: aiohttp.ClientSession) -> None:
    """A client with no endpoint is a configuration error at construction, not at first use."""
    with pytest.raises(ValueError, match="at least one URL"):
        client([], http)
