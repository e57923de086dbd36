"""Property-based fuzzing of the chain reader against a hostile JSON-RPC node: two loopback
relays (`rpc_proxy.RpcProxy`) in front of the real anvil rewrite the node's answers as a broken
or hostile node (or a relay in front of one) could: HTTP statuses with and without a
`Retry-After`, bodies that are no JSON-RPC (not UTF-8, nested deep, cut, `null`, a batch),
envelopes with another id, no result, both result and error, errors of odd shapes, heads whose
fields are not a header's or that go backwards, and `eth_call` answers whose hex is odd,
uppercase or cut, or whose Chainlink, Pyth and Uniswap words are out of every range (answers
huge, negative or zero, times in the future or the far past, decimals 0 or 255, sqrtPriceX96 0
or 2**160-1, ticks past the pool's, observe() arrays of another length, another chain's id).

Whatever the node answers: `poll_once` never raises; every quote is finite, positive and has a
sane time; a poll that publishes nothing counted something; and once the node answers honestly
again, the reader publishes the chain's current values, unflagged.

What it found, each fixed with a plain regression test: a head that is no header kept its
endpoint (test_reader_polling.py); a Chainlink round stamped far past its block
(`future_round`, test_chainlink.py) and a Pyth price stamped far past it (test_feed_decoding.py)
held off every real value after them; a head lying about its time was published with it
(test_reader_guards.py); a publishTime past uint64 made a venue time of 10**80 ms
(test_feed_decoding.py); an eth_chainId answer that was no JSON object stopped the start
(test_chain_id.py); one lying `decimals()` answer (after a garbled `aggregator()` made the feed
learn again) scaled the feed by a power of ten until the aggregator changed, and one longer
than a word was read by its first word (test_chainlink.py).

The start's chain id check (through web3) is fuzzed apart, with the same envelope rewrites.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from chain_rig import (
    PYTH_ETH_ID,
    Anvil,
    Chain,
    Deployed,
    Pool,
    Tokens,
    make_pool,
    pyth_update,
)
from eth_abi.abi import encode as abi_encode
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from reading import WARPED, Collected, make_reader, pyth_spec, watch, watch_eth
from rpc_proxy import RpcProxy, call_results, call_selectors, encode_results, with_result

from oracled.clock import ManualClock
from oracled.errors import SourceError
from oracled.eth import selector
from oracled.model import Quote
from oracled.sources.evm.chain import ChainReader
from oracled.sources.evm.pyth_evm import PythEvmFeed
from oracled.sources.evm.uniswap_v3 import UniswapV3Feed

pytestmark = pytest.mark.asyncio(loop_scope="session")

HEAD = "eth_getBlockByNumber"
CALL = "eth_call"
CHAIN_ID = "eth_chainId"
WINDOW = 2  # the pool's TWAP window (s): history enough after a few blocks
SELECTORS = {
    name: selector(signature)
    for name, signature in {
        "latestRoundData": "latestRoundData()",
        "aggregator": "aggregator()",
        "minAnswer": "minAnswer()",
        "maxAnswer": "maxAnswer()",
        "decimals": "decimals()",
        "getPriceUnsafe": "getPriceUnsafe(bytes32)",
        "observe": "observe(uint32[])",
        "slot0": "slot0()",
        "liquidity": "liquidity()",
        "getBlockNumber": "getBlockNumber()",
        "getChainId": "getChainId()",
    }.items()
}
U256 = 1 << 256
#: Words a node should never answer for these fields, and a few it could: signed values are
#: taken modulo 2**256 (two's complement), as the ABI has them.
WORDS = st.sampled_from(
    [0, 1, -1, 255, 2**63 - 1, -(2**63), 2**64, 2**160 - 1, 2**255 - 1, -(2**255), U256 - 1,
     887_273 * WINDOW, -887_273 * WINDOW, 31_338, 10**12, 10**18, 4_000_000_000, 2**40]
) | st.integers(min_value=-(2**255), max_value=U256 - 1)  # fmt: skip
#: The words of the answers the feeds read: (call, word index). latestRoundData: roundId,
#: answer, startedAt, updatedAt, answeredInRound; getPriceUnsafe: price, conf, expo,
#: publishTime; observe (canonical layout): the two offsets, the first length, the tick
#: accumulators, the second length, the seconds-per-liquidity accumulators; slot0: sqrtPriceX96,
#: tick.
FIELDS = [
    *(("latestRoundData", i) for i in range(5)),
    *(("getPriceUnsafe", i) for i in range(4)),
    *(("observe", i) for i in range(8)),
    ("slot0", 0), ("slot0", 1), ("liquidity", 0), ("decimals", 0), ("aggregator", 0),
    ("minAnswer", 0), ("maxAnswer", 0), ("getChainId", 0), ("getBlockNumber", 0),
]  # fmt: skip
ERRORS = st.one_of(
    st.fixed_dictionaries(
        {
            "code": st.sampled_from(
                [
                    -32000,
                    -32001,
                    -32005,
                    -32007,
                    -32012,
                    -32603,
                    -32602,
                    -32601,
                    -32700,
                    3,
                    429,
                    0,
                    2**70,
                ]
            ),
            "message": st.sampled_from(
                [
                    "header not found",
                    "execution reverted",
                    "nonce too low",
                    "not found",
                    "25/second request limit reached",
                    "credits limited",
                    "",
                    "\u0000\uffff",
                ]
            ),
        }
    ),
    st.sampled_from(
        [
            {"code": "-32000"},
            {"message": "no code"},
            {"code": 1.5},
            {"code": -32000, "message": 5},
            [],
            "error",
            0,
            {"code": None},
        ]
    ),
)
BODIES = st.sampled_from(
    [b"", b"null", b"[]", b"{}", b'"0x"', b"\xff\xfe\xfd", b"[" * 5000 + b"]" * 5000,
     b'{"a":' * 3000 + b"1" + b"}" * 3000, b'{"jsonrpc":"2.0","id":', b" " * 1_000_000 + b"{}"]
) | st.binary(max_size=64)  # fmt: skip


@dataclass(frozen=True)
class Mutation:
    """One rewrite of the next answer to `method`: `kind` says what, `arg` with what."""

    method: str
    kind: str
    arg: Any = None

    @property
    def node_fault(self) -> bool:
        """A refusal of this answer is to be counted on the endpoint that gave it, or as a
        block refused: only an error naming the request's own fault is not the node's."""
        return self.kind not in ("error", "both")

    def apply(self, request: Any, answer: Any, node: Hostile) -> Any:
        kind, arg = self.kind, self.arg
        if kind == "status":
            status, retry_after = arg
            headers = {} if retry_after is None else {"Retry-After": retry_after}
            return web.Response(status=status, text="no", headers=headers)
        if kind == "body":
            return web.Response(body=arg, content_type="application/json")
        if kind == "batch":
            other = {**answer, "id": answer["id"] + 1}
            return [[answer], [answer, answer], [], [other, answer], [answer, other]][arg]
        answer = dict(answer)
        if kind == "id":
            answer["id"] = arg(answer["id"])
        elif kind == "no_result":
            answer.pop("result", None)
        elif kind == "both":
            answer["error"] = arg
        elif kind == "error":
            answer.pop("result", None)
            answer["error"] = arg
        elif kind == "result":
            answer["result"] = arg
        elif kind == "hex":
            answer["result"] = _hex_form(answer["result"], *arg)
        elif kind == "word":
            answer["result"] = _set_word(request, answer["result"], *arg)
        elif kind == "fail":
            answer["result"] = _set_data(request, answer["result"], arg, b"\x08\xc3\x79\xa0", False)
        elif kind == "data":
            answer["result"] = _set_data(request, answer["result"], arg[0], arg[1], True)
        elif kind == "field":
            head = dict(answer["result"])
            name, value = arg
            if value is _GONE:
                head.pop(name, None)
            else:
                head[name] = value(head[name]) if callable(value) else value
            answer["result"] = head
        elif kind == "old_head":  # a block below the last one read
            answer["result"] = node.heads[0]
        return answer


_GONE = object()


def _hex_form(result: str, how: str, n: int) -> str:
    body = result[2:]
    at = (2 * n) % max(len(body), 1)
    forms = {
        "odd": result + "0",
        "no0x": body,
        "upper": "0X" + body.upper(),
        "upper_digits": "0x" + body.upper(),
        "cut": result[: max(2, len(result) - 2 * n)],
        "longer": result + "00" * n,
        "flip": result[: 2 + at] + "zz" + result[4 + at :],
    }
    return forms[how]


def _set_data(request: Any, result: str, name: str, data: bytes, ok: bool) -> str:
    """The answer with the return data of the first call to `name` replaced."""
    return with_result(request, result, SELECTORS[name], ok, data)


def _set_word(request: Any, result: str, name: str, at: int, value: int) -> str:
    """The answer with word `at` of the first call to `name` set to `value` (mod 2**256)."""
    calls, pairs = call_selectors(request), call_results(result)
    if SELECTORS[name] in calls:
        i = calls.index(SELECTORS[name])
        ok, data = pairs[i]
        words = bytearray(data.ljust(32 * (at + 1), b"\0"))
        words[32 * at : 32 * at + 32] = (value % U256).to_bytes(32, "big")
        pairs[i] = (ok, bytes(words))
    return encode_results(pairs)


class Hostile:
    """The relays' rewrite: each pending mutation changes the next answer to its method."""

    def __init__(self) -> None:
        self.pending: list[Mutation] = []
        self.applied = 0
        self.heads: list[Any] = []  # honest heads, the first below every one read

    def __call__(self, request: Any, answer: Any) -> Any:
        method = request.get("method") if isinstance(request, dict) else None
        if method == HEAD and isinstance(answer.get("result"), dict):
            self.heads.append(answer["result"])
        for i, mutation in enumerate(self.pending):
            if mutation.method == method:
                del self.pending[i]
                self.applied += 1
                return mutation.apply(request, answer, self)
        return answer


def _envelope(method: str) -> st.SearchStrategy[Mutation]:
    ids = st.sampled_from(
        [lambda i: i + 1, str, float, lambda i: None, lambda i: [i], lambda i: -i, lambda i: True]
    )
    retry = st.sampled_from([None, "0", "1", "30", "99999", "1.5", "-1", "soon",
                             "Wed, 21 Oct 2015 07:28:00 GMT"])  # fmt: skip
    status = st.sampled_from([200, 204, 301, 400, 401, 402, 403, 404, 413, 429, 500, 502, 503, 504])
    results = st.sampled_from(
        [None, True, 0, -1, "", "0x", "0xzz", [], {}, 2**80, [[[[]]]], "0X7A69", "7a69", 31337.0]
    )
    return st.one_of(
        st.builds(Mutation, st.just(method), st.just("status"), st.tuples(status, retry)),
        st.builds(Mutation, st.just(method), st.just("body"), BODIES),
        st.builds(Mutation, st.just(method), st.just("batch"), st.integers(0, 4)),
        st.builds(Mutation, st.just(method), st.just("id"), ids),
        st.builds(Mutation, st.just(method), st.just("no_result")),
        st.builds(Mutation, st.just(method), st.just("both"), ERRORS),
        st.builds(Mutation, st.just(method), st.just("error"), ERRORS),
        st.builds(Mutation, st.just(method), st.just("result"), results),
    )


_HEAD_VALUES = st.sampled_from(
    [lambda v: hex(int(v, 16) - 1), lambda v: hex(int(v, 16) + 1), lambda v: v[2:],
     lambda v: v.upper(), lambda v: v + "zz", lambda v: int(v, 16), lambda v: "-" + v,
     lambda v: "0x" + "f" * 70, lambda v: hex(int(v, 16) - 86_400 * 365), None, "", _GONE]
)  # fmt: skip
_CALL_DATA = st.tuples(
    st.sampled_from(sorted(SELECTORS)),
    st.sampled_from(
        [
            b"",
            b"\0" * 31,
            b"\0" * 33,
            b"\xff" * 64,
            abi_encode(["int56[]", "uint160[]"], [[], []]),
            abi_encode(["int56[]", "uint160[]"], [[1], [1]]),
            abi_encode(["int56[]", "uint160[]"], [[1, 2, 3], [1, 2, 3]]),
        ]
    ),
)
MUTATIONS = st.one_of(
    _envelope(HEAD),
    _envelope(CALL),
    st.builds(
        Mutation,
        st.just(HEAD),
        st.just("field"),
        st.tuples(st.sampled_from(["number", "hash", "timestamp"]), _HEAD_VALUES),
    ),
    st.builds(Mutation, st.just(HEAD), st.just("old_head")),
    st.builds(
        Mutation,
        st.just(CALL),
        st.just("hex"),
        st.tuples(
            st.sampled_from(["odd", "no0x", "upper", "upper_digits", "cut", "longer", "flip"]),
            st.integers(1, 40),
        ),
    ),
    st.builds(
        Mutation,
        st.just(CALL),
        st.just("word"),
        st.tuples(st.sampled_from(FIELDS), WORDS).map(lambda t: (*t[0], t[1])),
    ),
    st.builds(Mutation, st.just(CALL), st.just("fail"), st.sampled_from(sorted(SELECTORS))),
    st.builds(Mutation, st.just(CALL), st.just("data"), _CALL_DATA),
)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def pool(chain: Chain, tokens: Tokens, deployed: Deployed) -> AsyncIterator[Pool]:
    """A WETH/USD pool at 3000 with a few seconds of history, made for this module and taken
    away after it."""
    snap = await chain.snapshot()
    made = await make_pool(chain, tokens, tokens.weth, tokens.usd_above, "3000", liquidity=10**17)
    await chain.warp(2 * WINDOW)
    yield made
    await chain.revert(snap)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def relays(
    anvil: Anvil, http: aiohttp.ClientSession
) -> AsyncIterator[tuple[RpcProxy, RpcProxy]]:
    """Two relays in front of the node, on two ports: the reader fails over between them, and
    both answer as the hostile node says."""
    first = await RpcProxy(anvil.url, http).start()
    second = await RpcProxy(anvil.url, http).start()
    yield first, second
    await first.stop()
    await second.stop()


class Fuzzed:
    """The reader of one example and what its three feeds emitted and counted."""

    def __init__(self, reader: ChainReader, feeds: list[Collected]) -> None:
        self.reader, self.feeds = reader, feeds

    def ended(self) -> list[int]:
        """Per feed, the quotes it emitted and the drops it counted."""
        return [len(f.quotes) + sum(f.stats.dropped.values()) for f in self.feeds]

    def blamed(self) -> int:
        """The counters of a node's fault: its endpoint's errors, and the chain's blocks
        refused (a head that went back, too old, from the future, or unknown at its read)."""
        s = self.reader.stats
        endpoints = sum(sum(e.by_kind.values()) for e in self.reader.rpc.stats)
        return endpoints + s.backwards + s.old_blocks + s.future_blocks + s.unknown + s.superseded

    def counted(self) -> int:
        """Every counter a refused answer can land in: the endpoints' errors, the chain's
        refusals and failed reads, the feeds' drops."""
        s = self.reader.stats
        endpoints = sum(sum(e.by_kind.values()) for e in self.reader.rpc.stats)
        chain = s.reads_failed + s.backwards + s.old_blocks + s.future_blocks + s.unknown
        chain += s.superseded
        return endpoints + chain + sum(sum(f.stats.dropped.values()) for f in self.feeds)


def _sane(quote: Quote, head_ms: int) -> None:
    """Finite, positive, a time that is a time: the block's no later than the chain's head."""
    for value in (quote.price, quote.bid, quote.ask):
        assert value is None or (math.isfinite(value) and value > 0), quote
    assert quote.venue_ts is not None and 0 < quote.venue_ts < 2**64 * 1000, quote
    assert quote.block_ts is not None and 0 < quote.block_ts <= head_ms, quote
    if quote.flag is None:  # a value that votes is no newer than the block it was read at
        assert quote.venue_ts <= quote.block_ts + 60_000, quote


async def _honest_step(chain: Chain, snapshot: Deployed, n: int, start: int) -> tuple[int, int]:
    """New values on the chain: a Chainlink round and a Pyth price published at `start` + `n`
    (each newer than the last, as MockPyth keeps only a newer one), each mined in its block."""
    answer = (3000 + n) * 10**8
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", answer)
    price = 300_000_000_000 + n * 10**8
    await pyth_update(chain, snapshot.pyth, PYTH_ETH_ID, price, 10**6, -8, start + n)
    return answer, price


@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(steps=[[Mutation(CALL, "word", ("latestRoundData", 3, 4_000_000_000))]])
@example(steps=[[Mutation(CALL, "word", ("aggregator", 0, 0xDEAD)),
                 Mutation(CALL, "word", ("decimals", 0, 6))]])  # fmt: skip
@example(steps=[[Mutation(CALL, "data", ("decimals", b"\0" * 33))]])
@example(steps=[[Mutation(CALL, "word", ("getPriceUnsafe", 3, 4_000_000_000))]])
@example(steps=[[Mutation(HEAD, "field", ("timestamp", lambda v: hex(int(v, 16) + 10**6)))]])
@example(steps=[[Mutation(HEAD, "field", ("hash", "zz"))]])
@example(steps=[[Mutation(HEAD, "result", "0x1")]])
@given(steps=st.lists(st.lists(MUTATIONS, min_size=1, max_size=2), min_size=1, max_size=4))
async def test_a_hostile_node_never_crashes_the_reader_nor_gets_a_bad_value_published(
    chain: Chain,
    http: aiohttp.ClientSession,
    deployed: Deployed,
    tokens: Tokens,
    pool: Pool,
    relays: tuple[RpcProxy, RpcProxy],
    steps: list[list[Mutation]],
) -> None:
    """A reader of a Chainlink feed, a Pyth price and a Uniswap pool over two relays that
    rewrite the node's answers (one or two mutations a block, for a few blocks): no poll
    raises; every quote emitted is finite, positive and of a sane time; every poll that
    publishes nothing counted why (an endpoint's error or a refused block, when the node is at
    fault; else a failed read or a feed's drop), and in every block published each feed, whose
    values all changed, emitted a quote or counted a drop; and once the node is honest again
    (its rests over), the next block is published with the chain's current values, unflagged
    (a Chainlink price too after a lying `decimals()`: before, one such answer scaled it for
    good)."""
    snap = await chain.snapshot()
    hostile = Hostile()
    for relay in relays:
        relay.rewrite = hostile
    try:
        rpc_clock = ManualClock(0)
        reader = make_reader(
            [r.url for r in relays], http, rpc_clock=rpc_clock, timeout_s=5.0,
            max_clock_skew_ms=WARPED,
        )  # fmt: skip
        cl = watch_eth(reader, deployed.eth_proxy)
        pyth = watch(reader, PythEvmFeed("pyth", "ETH/USD", deployed.pyth, pyth_spec(PYTH_ETH_ID)))
        uni = UniswapV3Feed(
            "uni", "ETH/USD", pool.address, invert=False, token0_decimals=pool.decimals0,
            token1_decimals=pool.decimals1, min_liquidity=10**16, twap_window_s=WINDOW,
            base_token=tokens.weth,
        )  # fmt: skip
        fuzzed = Fuzzed(reader, [cl, pyth, watch(reader, uni)])
        hostile.heads.append(await chain.block())
        start = await chain.timestamp() + 1
        await _honest_step(chain, deployed, 0, start)
        assert await reader.poll_once()
        seen: list[Mutation] = []
        for n, mutations in enumerate(steps, start=1):
            await _honest_step(chain, deployed, n, start)
            hostile.pending = list(mutations)
            before, blamed, ended = fuzzed.counted(), fuzzed.blamed(), fuzzed.ended()
            published = await reader.poll_once()
            applied = [m for m in mutations if m not in hostile.pending]
            for m in applied:  # shown by --hypothesis-show-statistics
                event(f"{m.method} {m.kind}: {'published' if published else 'refused'}")
            repeated = any(m in seen for m in applied)  # a refusal counts at its first block
            seen += applied
            if published:  # every feed has new values: a quote or a drop each
                ends = zip(fuzzed.ended(), ended, strict=True)
                assert repeated or all(a > b for a, b in ends), applied
            elif applied:
                assert fuzzed.counted() > before, (applied, reader.stats)
                if all(m.node_fault for m in applied):  # no error the node put on the request
                    assert fuzzed.blamed() > blamed, (applied, reader.stats)
            hostile.pending = []
            rpc_clock.advance(61_000)  # every rest over: the next step reaches a relay
        answer, price = await _honest_step(chain, deployed, len(steps) + 1, start)
        assert await reader.poll_once()
        head_ms = await chain.timestamp() * 1000
        for feed in fuzzed.feeds:
            for quote in feed.quotes:
                _sane(quote, head_ms)
        assert reader.stats.last_block == await chain.block_number()
        assert cl.last.flag is None, cl.quotes[-3:]
        assert cl.last.price == answer / 1e8, cl.quotes[-3:]
        mid = (pyth.last.bid + pyth.last.ask) / 2  # type: ignore[operator]
        assert (mid, pyth.last.flag) == (pytest.approx(price / 1e8), None), pyth.quotes[-3:]
        uni_last = fuzzed.feeds[2].last
        assert uni_last.flag is None, fuzzed.feeds[2].quotes[-3:]
        assert uni_last.price == pytest.approx(3000, rel=1e-3)
        assert uni_last.block == reader.stats.last_block
    finally:
        for relay in relays:
            relay.rewrite = None
        await chain.revert(snap)


@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutation=_envelope(CHAIN_ID))
async def test_a_hostile_chain_id_answer_is_counted_and_never_stops_the_start_otherwise(
    anvil: Anvil,
    http: aiohttp.ClientSession,
    relays: tuple[RpcProxy, RpcProxy],
    mutation: Mutation,
) -> None:
    """The start's chain id check (through web3) of a first URL behind a relay that rewrites
    its eth_chainId answer, and an honest second URL: the check either takes the first URL's
    answer as the chain id (the configured one, or another, which refuses the chain as
    `SourceError`, naming the URL), or counts it on that URL, and the start goes on with the
    second URL's.
    Nothing else escapes it: before, an answer that was no JSON object raised web3's
    AttributeError out of the check, and the start failed whatever the second URL said."""
    hostile = Hostile()
    hostile.pending = [mutation]
    relay = relays[0]
    relay.rewrite = hostile
    try:
        reader = make_reader([relay.url, anvil.url], http, timeout_s=5.0)
        first, second = reader.rpc.stats
        try:
            await reader.check_chain_id()
        except SourceError as exc:  # an answer taken for another chain id: the chain refused
            assert str(exc).startswith(f"chain local: {first.name} is chain "), exc
            return
        # asked once (web3 retries nothing), refused and counted or taken as the chain's id;
        # and the second URL, asked as every URL is, answered
        assert first.requests == 1 and sum(first.by_kind.values()) <= 1, (mutation, first)
        assert (second.requests, second.by_kind) == (1, {}), (mutation, second)
    finally:
        relay.rewrite = None
