"""The shared JSON-RPC client's failure handling, against anvil behind a breakable proxy: every
kind of bad answer is counted under its kind and the request goes to the next endpoint; a
request's own fault is raised at once, without asking another endpoint."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
from chain_rig import Anvil, Chain, Deployed
from eth_account import Account
from rpc_proxy import RpcProxy

from oracled.clock import SystemClock
from oracled.jsonrpc import RpcClient, RpcError, RpcUnavailable, UnknownBlock
from oracled.publish.signer import SigningKey

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.usefixtures("daemon_recursion_limit"),  # the "deep" answers
]

ANVIL_CHAIN_ID = "0x7a69"  # 31337
GWEI = 10**9
#: A -32000 that names no fault of the request: a node failing (fails over).
NODE_FAILURE = {"code": -32000, "message": "header not found"}


def client(urls: list[str], http: aiohttp.ClientSession, timeout_s: float = 2.0) -> RpcClient:
    return RpcClient(urls, http, timeout_s=timeout_s, clock=SystemClock())


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("hold", "timeout"),
        ("http500", "http"),
        ("redirect", "http"),
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
    """A node that hangs past the timeout, answers status 500, redirects (307, which keeps
    the POST: followed before, the call was answered by a host nobody configured), answers bytes
    that are not
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


def signed(key: SigningKey, nonce: int, base_fee: int, **fields: Any) -> str:
    """A transfer of nothing from `key`, EIP-1559, with `fields` over the defaults."""
    tx = {
        "type": 2, "chainId": 31337, "nonce": nonce, "to": "0x" + "11" * 20, "value": 0,
        "data": b"", "gas": 21_000, "maxFeePerGas": 2 * base_fee + GWEI,
        "maxPriorityFeePerGas": GWEI, **fields,
    }  # fmt: skip
    return "0x" + bytes(Account.sign_transaction(tx, key.hex()).raw_transaction).hex()


async def anvil_refusal(chain: Chain, deployed: Deployed, case: str) -> tuple[str, list[Any]]:
    """The request anvil refuses on its merits for `case`, after what makes it so (a funded
    key, a transaction sent before)."""
    key = SigningKey.generate()
    base = int((await chain.rpc("eth_getBlockByNumber", ["latest", False]))["baseFeePerGas"], 16)
    if case == "insufficient funds":  # the key is never funded
        return "eth_sendRawTransaction", [signed(key, 0, base)]
    await chain.rpc("anvil_setBalance", [key.address, hex(10**20)])
    if case == "gas required exceeds allowance":  # a write that needs more than 30,000 gas
        data = "0xa87a20ce" + "00" * 31 + "01"  # updateAnswer(int256) of Chainlink's mock
        call = {"from": key.address, "to": deployed.eth_aggregator, "data": data, "gas": "0x7530"}
        return "eth_estimateGas", [call, "latest"]
    if case == "nonce too low":
        # Automined, but after the hash is answered: until then a second nonce 0 is a
        # replacement (anvil: "replacement transaction underpriced"), not a nonce too low.
        first = await chain.rpc("eth_sendRawTransaction", [signed(key, 0, base)])
        assert await chain.mined(first) is not None
        return "eth_sendRawTransaction", [signed(key, 0, base, gas=21_001)]
    if case in ("transaction already imported", "replacement transaction underpriced"):
        await chain.rpc("evm_setAutomine", [False])  # the first stays in the pool
        await chain.rpc("eth_sendRawTransaction", [signed(key, 0, base)])
        again = signed(key, 0, base, gas=21_000 if case.startswith("transaction") else 21_001)
        return "eth_sendRawTransaction", [again]
    fields: dict[str, dict[str, int]] = {
        "intrinsic gas too low": {"gas": 20_000},
        "intrinsic gas too high": {"gas": 40_000_000},  # over the block's 30M
        "max fee per gas less than block base fee": {"maxFeePerGas": 1, "maxPriorityFeePerGas": 1},
    }
    return "eth_sendRawTransaction", [signed(key, 0, base, **fields[case])]


@pytest.mark.parametrize(
    "case",
    [
        "insufficient funds",
        "gas required exceeds allowance",
        "nonce too low",
        "transaction already imported",
        "replacement transaction underpriced",
        "intrinsic gas too low",
        "intrinsic gas too high",
        "max fee per gas less than block base fee",
    ],
)
async def test_a_request_anvil_refuses_on_its_merits_leaves_the_endpoint_healthy(
    anvil: Anvil,
    chain: Chain,
    snapshot: Deployed,
    http: aiohttp.ClientSession,
    proxy: RpcProxy,
    case: str,
) -> None:
    """A transaction or estimate the real node refuses under a server-side code (anvil: -32003
    "transaction rejected", or -32000) is the request's fault: RpcError with the node's words,
    the second endpoint is never asked (the proxy counts no request), nothing is counted
    against the first and the client stays on it. Before, each was a `node` failure: the
    endpoint was left, the same request sent to the next URL, and the caller told
    `every endpoint failed`."""
    try:
        method, params = await anvil_refusal(chain, snapshot, case)
        rpc = client([anvil.url, proxy.url], http)
        with pytest.raises(RpcError) as raised:
            await rpc.call(method, params)
    finally:
        await chain.rpc("evm_setAutomine", [True])
    assert case in raised.value.message.lower()
    assert -32099 <= raised.value.code <= -32000
    assert proxy.requests == 0
    assert rpc.stats[0].failures == rpc.stats[0].failovers == 0 and not rpc.stats[0].by_kind
    assert rpc.active == 0


#: geth's words (core/error.go, core/txpool/errors.go, its gas estimator) and Besu's, under
#: -32000, for the refusals anvil words otherwise or does not make.
GETH_REFUSALS = [
    "execution reverted",
    "insufficient funds for gas * price + value",
    "gas required exceeds allowance (30000000)",
    "intrinsic gas too low",
    "nonce too low",
    "nonce too high",
    "replacement transaction underpriced",
    "transaction underpriced",
    "already known",
    "max fee per gas less than block base fee",
    "exceeds block gas limit",
    "Upfront cost exceeds account balance",
    "Known transaction",
]


@pytest.mark.parametrize("message", GETH_REFUSALS)
async def test_a_refusal_in_geths_words_is_the_requests_fault_not_the_endpoints(
    http: aiohttp.ClientSession, proxy: RpcProxy, other_host: RpcProxy, message: str
) -> None:
    """The same refusals in the words of geth (and erigon, reth, most providers, which share
    them) and Besu, under -32000: RpcError, the second endpoint never asked, nothing counted.
    A -32000 in other words is still the node's failure and goes to the next endpoint."""
    proxy.refuse["eth_estimateGas"] = [{"code": -32000, "message": message}, NODE_FAILURE]
    rpc = client([proxy.url, other_host.url], http)
    call = {"to": "0x" + "22" * 20, "data": "0x"}  # no code there: a plain transfer's gas
    with pytest.raises(RpcError, match=re.escape(message)):
        await rpc.call("eth_estimateGas", [call, "latest"])
    assert other_host.requests == 0
    assert not rpc.stats[0].by_kind and rpc.active == 0
    assert await rpc.call("eth_estimateGas", [call, "latest"]) == "0x5208"  # 21,000
    assert rpc.stats[0].by_kind == {"node": 1} and other_host.requests == 1


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
