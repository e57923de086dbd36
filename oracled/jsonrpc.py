"""Plain JSON-RPC over HTTP with fail-over between a chain's endpoints.

Shared transport: the chain readers (`oracled/sources/evm/`) read feeds with it and the on-chain
pusher (`oracled/publish/chain_push.py`) sends transactions with it, so neither layer imports the
other.

Why not web3's provider for the hot path: measured on loopback, a web3 contract call costs 2-5 ms
of Python CPU (formatters, middleware, an `eth_chainId` per call unless cached) where a POST of
pre-encoded calldata costs about 0.5 ms. The reader sends one `eth_call` per block, so this
client is deliberately thin: one shared keep-alive aiohttp session, typed msgspec decoding of
the envelope, and every failure counted per endpoint. It sends no JSON-RPC batches: some
providers refuse them (an error object instead of the array, or an HTTP 4xx, as JSON-RPC 2.0
section 6 allows a server that cannot take a batch), and the reader needs none.

Where web3 does run: `chain_id()` asks each endpoint its chain id through `AsyncWeb3` over a
`CappedHTTPProvider` (`oracled/jsonrpc_web3.py`: web3's `AsyncHTTPProvider` with
`cache_allowed_requests=True`, so web3 caches `eth_chainId` for the life of the provider, whose
POST goes through this client's shared session, so web3 opens no session or connection pool of
its own, and whose answer is read under the same 16 MiB cap as every other, where web3's own
provider reads a body of any length). That is a one-off per endpoint, where web3's cost does
not matter; the per-block read stays on the thin path. A rate limit found through web3's
exceptions is counted and rests the endpoint as on every other request, and an answer over
the cap is `garbage`, as on every other request.

Failure handling: a transport error, a timeout, a non-200 answer, a body that is not a JSON-RPC
answer to our request id (garbage), or a server-side JSON-RPC error (-32000..-32099, -32603:
"header not found", rate limits, internal errors) marks the endpoint failed and the same request
goes to the next URL. Errors that are the request's own fault (bad params, method not found,
execution reverted) are raised as `RpcError` without fail-over: another endpoint would say the
same. That includes a server-side code whose message names a fault of the request
(`_REQUEST_FAULTS`: a nonce, a fee, a gas limit, funds, a revert): geth and the nodes that
follow it answer those as -32000, anvil and reth as -32003, with no code of their own, so the
message is all there is to tell them from a failing node. So is `UnknownBlock`, a read pinned
to a block hash the node does not hold (EIP-1898's -32001 "Resource not found", or a node-side
error saying "not found"): a reorg took the block away, which is the chain's doing, not the
endpoint's. When every endpoint failed, `RpcUnavailable` is raised.

A provider's rate or capacity limit is counted as `rate_limited` and also rests its endpoint:
an HTTP 429 or 503 with a `Retry-After` in seconds that long (at most `_MAX_REST_S`): no request
goes to it meanwhile, the others are asked instead, and with none left the call raises
`RpcUnavailable` at once. A rate-limited provider asked again at every poll and every block
only extends its limit. A limit that names no wait (the JSON-RPC errors of `_rate_limit`, an
HTTP 429 or 402 without a `Retry-After` in seconds) rests its endpoint 1 s, then 2, 4... up to
`_MAX_REST_S` while it lasts; the endpoint's next other answer (an error too) starts it again
at 1 s. A caller can rest an endpoint too (`rest`: a cross-check that outvoted it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import aiohttp
import msgspec

from oracled.clock import Clock
from oracled.errors import SourceError
from oracled.eth import recursion_limit_kept
from oracled.headers import delay_seconds

if TYPE_CHECKING:
    from web3 import AsyncWeb3

__all__ = [
    "AnswerTooLarge",
    "EndpointStats",
    "RpcClient",
    "RpcError",
    "RpcUnavailable",
    "UnknownBlock",
    "read_answer",
    "redact",
]


#: An answer larger than this is garbage (a read of a hundred feeds is about 100 kB): a broken
#: or hostile endpoint, or a compressed bomb, must not grow the process's memory without bound.
_MAX_ANSWER_BYTES: Final = 16 * 1024 * 1024
#: The longest `Retry-After` obeyed: after it, one request finds out whether the limit is over.
_MAX_REST_S: Final = 60.0
#: The first rest after a rate limit that names no wait; it doubles while the limit lasts.
_FIRST_REST_S: Final = 1.0
#: Weight of an endpoint's newest answer time in its moving average (`EndpointStats.latency_s`).
_LATENCY_WEIGHT: Final = 0.3
#: JSON-RPC error codes of a rate limit, whatever the message: EIP-1474's -32005 "limit
#: exceeded" (Infura's answer to its requests-per-second and daily limits), and 429, which
#: Alchemy, QuickNode and Infura (a key's own throughput limit) put in the error object.
_RATE_LIMITS: Final = frozenset({-32005, 429})
#: Codes that are a rate limit only with their provider's message: other servers use the same
#: numbers for other faults (an expired key, a block range too wide), which no rest cures.
_RATE_LIMIT_MESSAGES: Final = {
    -32007: "request limit reached",  # QuickNode: "N/second request limit reached - reduce ..."
    -32012: "credits limited",  # QuickNode: "credits limited to N/sec" (API credits per second)
}
#: HTTP statuses of a limit that names no wait: 429, and 402, Infura's answer once a key's
#: daily credits are spent. A 503 is one only with a `Retry-After` in seconds (RFC 9110
#: section 10.2.3: how long the service expects to be unavailable); without, a passing fault.
_HTTP_LIMITS: Final = frozenset({402, 429})
#: Words of a server-side error (-32099..-32000) that is the request's own fault, lowercased:
#: the transaction or call was read and refused on its merits, and every endpoint would refuse
#: it alike (docs/onchain.md *A request's own fault*). geth's wording (core/error.go,
#: core/txpool/errors.go, its gas estimator), which erigon, reth and most providers share;
#: anvil's, Besu's and Nethermind's where theirs differ.
_REQUEST_FAULTS: Final = (
    "execution reverted",  # a revert without data (with data geth answers code 3)
    "insufficient funds",  # "... for gas * price + value", "... for transfer"
    "upfront cost exceeds account balance",  # Besu's insufficient funds
    "gas required exceeds allowance",  # the estimate needs more than the block or RPC cap
    "intrinsic gas",  # "too low", "too high" (anvil: over the block), Besu "exceeds gas limit"
    "nonce too low",
    "nonce too high",
    "underpriced",  # "replacement transaction underpriced", "transaction underpriced"
    "already known",  # geth, erigon: this very transaction is in the pool
    "transaction already imported",  # anvil's "already known"
    "known transaction",  # Besu's
    "max fee per gas less than block base fee",
    "max priority fee per gas higher than max fee per gas",
    "exceeds block gas limit",  # geth's pool; Besu "transaction gas limit exceeds ..."
    # Infura's caps on one `eth_getLogs` (10,000 results, 10 s), under -32005, the code of its
    # rate limits too: a narrower range cures them, a rest does not
    "query returned more than",
    "query timeout exceeded",
)


class RpcError(SourceError):
    """The node answered with a JSON-RPC error that is the request's own fault."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        self.code, self.message, self.data = code, message, data
        super().__init__(f"JSON-RPC error {code}: {message}")


class UnknownBlock(RpcError):
    """A request pinned to a block hash that the node does not hold: a reorg orphaned the block
    (or the node has not seen it yet). Neither counted against the endpoint nor failed over."""


class RpcUnavailable(SourceError):
    """No endpoint of the chain gave a usable answer."""


class _Error(msgspec.Struct):
    code: int
    message: str = ""
    data: Any = None


class _Answer(msgspec.Struct):
    id: int | str | None = None
    result: Any = msgspec.UNSET
    error: _Error | None = None


_decode_one: Final = msgspec.json.Decoder(_Answer)
_encode: Final = msgspec.json.Encoder()
_NET_ERRORS: Final = (aiohttp.ClientError, OSError)


def _server_side(code: int) -> bool:
    """Errors another endpoint may not have: node-side failures and limits (some providers
    answer a rate limit as JSON-RPC code 429, outside the reserved range)."""
    return -32099 <= code <= -32000 or code in (-32603, 429)


def _rate_limit(err: _Error) -> bool:
    """The error is the provider's rate or capacity limit (`_RATE_LIMITS`,
    `_RATE_LIMIT_MESSAGES`), not a fault of the request or the node (a -32005 worded as a cap
    on the query itself is the request's, `_REQUEST_FAULTS`)."""
    words = _RATE_LIMIT_MESSAGES.get(err.code)
    if err.code in _RATE_LIMITS:
        return not _request_fault(err)
    return words is not None and words in err.message.lower()


def _block_unknown(err: _Error) -> bool:
    """The node's way of saying it has no block of that hash, or none on its canonical chain:
    EIP-1898 recommends -32001 "Resource not found" (anvil's answer); geth says "header for hash
    not found", or "hash ... is not currently canonical" for `requireCanonical`, under -32000."""
    message = err.message.lower()
    return err.code == -32001 or (
        _server_side(err.code) and ("not found" in message or "not currently canonical" in message)
    )


def _request_fault(err: _Error) -> bool:
    """A server-side error that is the request's own fault (`_REQUEST_FAULTS`), by its words:
    these nodes give such refusals no code of their own, so only the message tells them from
    a failing node's."""
    if not -32099 <= err.code <= -32000:
        return False
    message = err.message.lower()
    return any(words in message for words in _REQUEST_FAULTS)


def _web3_error(response: object) -> _Error | None:
    """The error object of the answer web3 raised `Web3RPCError` for, when it has a code."""
    error = response.get("error") if isinstance(response, dict) else None
    if not isinstance(error, dict) or not isinstance(code := error.get("code"), int):
        return None
    message = error.get("message")
    return _Error(code, message if isinstance(message, str) else "")


def _pinned(params: Sequence[Any]) -> bool:
    """The request is pinned to a block by hash (EIP-1898)."""
    return any(isinstance(p, dict) and "blockHash" in p for p in params)


def _retry_after_s(value: str | None) -> float | None:
    """Seconds a 429's `Retry-After` asks for, at most `_MAX_REST_S`; None without one in
    RFC 9110's delay-seconds form (`oracled.headers.delay_seconds`: "inf", "1.5", "+5", "١٢٣"
    and an HTTP date name no wait, and the endpoint's own backoff applies)."""
    seconds = delay_seconds(value) if value is not None else None
    return float(min(seconds, _MAX_REST_S)) if seconds else None


def redact(url: str) -> str:
    """An endpoint as it may appear in logs and metrics: scheme and host, never path or key."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


def _names(urls: Sequence[str]) -> list[str]:
    """Redacted endpoint names, unique within a chain: two keys on one provider's host become
    ``host`` and ``host#2`` (they are metric labels and must not collide)."""
    names: list[str] = []
    for url in urls:
        name = redact(url)
        n = 1
        while (candidate := name if n == 1 else f"{name}#{n}") in names:
            n += 1
        names.append(candidate)
    return names


@dataclass(slots=True)
class EndpointStats:
    """Counters of one RPC endpoint, exported at scrape time."""

    name: str  # redacted URL
    requests: int = 0
    failures: int = 0  # transport errors and server-side JSON-RPC errors
    timeouts: int = 0
    garbage: int = 0  # answers that are not JSON-RPC answers to our request
    failovers: int = 0  # times the client left this endpoint for the next one after a failure
    #: Seconds its answers took, a moving average of the answered requests (None before one),
    #: and the last one's alone: a reader compares endpoints by them (a URL much slower than
    #: another is left, docs/onchain.md *Endpoints*).
    latency_s: float | None = None
    last_latency_s: float | None = None
    last_error: str | None = None
    by_kind: dict[str, int] = field(default_factory=dict)


class _Failed(Exception):
    """One endpoint failed one request (internal: triggers fail-over)."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind, self.detail = kind, detail
        super().__init__(f"{kind}: {detail}")


class AnswerTooLarge(ValueError):
    """An answer over `_MAX_ANSWER_BYTES`: garbage, whoever reads it."""


async def read_answer(resp: aiohttp.ClientResponse) -> bytes:
    """The (decompressed) body, read no further than `_MAX_ANSWER_BYTES` (AnswerTooLarge).
    For the requests `RpcClient` does not post itself (web3's, in `oracled.jsonrpc_web3`)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > _MAX_ANSWER_BYTES:
            raise AnswerTooLarge(f"answer over {_MAX_ANSWER_BYTES >> 20} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await read_answer(resp)
    except AnswerTooLarge as exc:
        raise _Failed("garbage", str(exc)) from None


class RpcClient:
    """JSON-RPC to one chain through an ordered list of endpoints, failing over in order.

    The endpoint that answered last is kept for the next request (sticky), so a dead primary
    costs one failed attempt, not one per request.
    """

    __slots__ = (
        "_active", "_clock", "_http", "_limits", "_next_id", "_resting", "_timeout_s", "_web3",
        "hosts", "stats", "urls",
    )  # fmt: skip

    def __init__(
        self,
        urls: Sequence[str],
        session: aiohttp.ClientSession,
        *,
        timeout_s: float = 2.0,
        clock: Clock,
    ) -> None:
        if not urls:
            raise ValueError("RpcClient needs at least one URL")
        self.urls = tuple(urls)
        #: Each endpoint's scheme, host and port (`redact`): URLs that share one (two keys of a
        #: provider) are one voice in a cross-check, however many keys.
        self.hosts = tuple(redact(url) for url in self.urls)
        self.stats = [EndpointStats(name) for name in _names(self.urls)]
        self._http = session
        self._timeout_s = timeout_s
        self._clock = clock
        self._active = 0
        self._next_id = 0
        self._web3: list[AsyncWeb3[Any] | None] = [None] * len(self.urls)
        self._resting = [0.0] * len(self.urls)  # monotonic time an endpoint's rest ends
        self._limits = [0] * len(self.urls)  # rate limits without a wait since the last answer

    @property
    def active(self) -> int:
        """Index of the endpoint the next request goes to first."""
        return self._active

    def standby(self) -> int | None:
        """The endpoint a request would go to if the active one failed (the next one not
        resting), or None when there is none."""
        order = self._order()
        return next((i for i in order if i != self._active), None)

    def prefer(self, index: int) -> None:
        """Send the next requests to endpoint `index` first (a reader that found it much faster
        than the active one); not a failure of the one left."""
        self._active = index

    async def call(
        self, method: str, params: Sequence[Any], *, required: bool = False, verdict: bool = False
    ) -> Any:
        """One request; the result, or RpcError / RpcUnavailable. `required`: a null result is
        garbage from that endpoint (the latest block, which every node has), counted and failed
        over, not an answer. `verdict`: every JSON-RPC error but a rate limit is the request's
        own (a raw transaction: whatever the node's words, another endpoint would see it
        again), raised as RpcError, not failed over."""
        body, rid = self._body(method, params)
        pinned = _pinned(params)
        order = self._order()
        if not order:
            raise RpcUnavailable(f"{method}: every endpoint resting (rate-limited or outvoted)")
        for index in order:
            try:
                result = await self._one(index, body, rid, pinned=pinned, verdict=verdict)
                if required and result is None:
                    raise _Failed("garbage", f"{method}: null result")
                return result
            except _Failed as failed:
                self._count(index, failed)
        raise RpcUnavailable(f"{method}: every endpoint failed")

    async def call_on(self, index: int, method: str, params: Sequence[Any]) -> Any:
        """One request to one given endpoint, no fail-over (cross-checks)."""
        body, rid = self._body(method, params)
        if self._rests(index):
            name = self.stats[index].name
            raise RpcUnavailable(f"{method} on {name}: resting (rate-limited or outvoted)")
        try:
            return await self._one(index, body, rid, sticky=False, pinned=_pinned(params))
        except _Failed as failed:
            self._count(index, failed)
            raise RpcUnavailable(f"{method} on {self.stats[index].name}: {failed}") from None

    async def chain_id(self, index: int) -> int:
        """The chain id endpoint `index` serves, through web3 (no fail-over: each endpoint
        answers for itself); RpcUnavailable when it cannot say, or rests (nothing is sent).

        A provider's rate limit is taken as on every other request (`rate_limited`, the
        endpoint rested by its `Retry-After` or the backoff): before, web3's exceptions were
        counted as `http` or `node`, nothing rested, and a limited start was retried as if the
        node were down, sooner than the provider asked. An answer over `_MAX_ANSWER_BYTES` is
        read no further and counted `garbage`: before, web3 read a body of any length."""
        name = self.stats[index].name
        if self._rests(index):
            raise RpcUnavailable(f"eth_chainId on {name}: resting (rate-limited or outvoted)")
        w3 = await self._web3_for(index)
        from web3.exceptions import Web3Exception, Web3RPCError  # imported by `_web3_for`

        self.stats[index].requests += 1
        try:
            async with asyncio.timeout(self._timeout_s):
                answer = await w3.eth.chain_id
            chain = int(answer)
            self._limits[index] = 0
            return chain
        except TimeoutError:
            failed = _Failed("timeout", f"no answer in {self._timeout_s:g} s")
        except aiohttp.ClientResponseError as exc:
            failed = self._http_limit(index, exc.status, exc.headers) or _Failed(
                "http", f"status {exc.status}"
            )
        except _NET_ERRORS as exc:
            failed = _Failed("transport", type(exc).__name__)
        except AnswerTooLarge as exc:  # cut by the provider's read, before web3 decodes it
            failed = _Failed("garbage", str(exc))
        except Web3RPCError as exc:
            err = _web3_error(exc.rpc_response)
            if err is not None and _rate_limit(err):
                failed = self._limit_failure(index, err)
            else:
                self._limits[index] = 0  # another answer, an error too: the limit is over
                failed = _Failed("node", str(exc)[:120])
        except (Web3Exception, ValueError, TypeError, AttributeError, RecursionError) as exc:
            # AttributeError: web3 takes every answer for a JSON object (`response.get`); a
            # JSON array, null, a string or a number as the answer raised out of the check,
            # and one such endpoint stopped the reader's start whatever the others answered.
            failed = _Failed("garbage", f"eth_chainId: {type(exc).__name__}")
        self._count(index, failed)
        raise RpcUnavailable(f"eth_chainId on {name}: {failed}")

    def rest_left_s(self, index: int) -> float:
        """Seconds endpoint `index` still rests (0 once it takes requests again)."""
        return max(0.0, self._resting[index] - self._clock.monotonic())

    async def _web3_for(self, index: int) -> AsyncWeb3[Any]:
        """One AsyncWeb3 per endpoint, made on first use over the shared session.

        Configured for one-off reads: request caching on (the chain id is sent once), no
        middleware (nothing to format or validate), no retries of its own (fail-over and its
        counting are this client's), the answer read under `_MAX_ANSWER_BYTES`
        (`CappedHTTPProvider`). web3 is imported here, not at module load: importing it
        takes seconds, and a daemon without chains never needs it.
        """
        w3 = self._web3[index]
        if w3 is None:
            with recursion_limit_kept():  # py_ecc, imported through web3, raises it
                from web3 import AsyncWeb3

                from oracled.jsonrpc_web3 import CappedHTTPProvider

            provider = CappedHTTPProvider(self.urls[index], self._http, timeout_s=self._timeout_s)
            w3 = self._web3[index] = AsyncWeb3(provider, middleware=[])
        return w3

    def fail_active(self, kind: str, detail: str) -> None:
        """Count a fault the caller found in the active endpoint's answer (a head behind the
        chain's) and move on to the next endpoint, as after a failed request."""
        self.fail(self._active, kind, detail)

    def fail(self, index: int, kind: str, detail: str) -> None:
        """Count a fault the caller found in endpoint `index`'s answer (a read outvoted by the
        others); the active endpoint is left for the next, as after a failed request."""
        self._count(index, _Failed(kind, detail))

    def rest(self, index: int, seconds: float) -> None:
        """Send endpoint `index` nothing for `seconds` (at most `_MAX_REST_S`): calls pass it
        over and `call_on` refuses it without a request."""
        until = self._clock.monotonic() + min(seconds, _MAX_REST_S)
        self._resting[index] = max(self._resting[index], until)

    # -- internals --------------------------------------------------------------------------
    def _body(self, method: str, params: Sequence[Any]) -> tuple[bytes, int]:
        self._next_id += 1
        rid = self._next_id
        msg = {"jsonrpc": "2.0", "id": rid, "method": method, "params": list(params)}
        return _encode.encode(msg), rid

    def _order(self) -> list[int]:
        """The endpoints to ask, the active one first; those resting left out."""
        n = len(self.urls)
        return [i for i in ((self._active + k) % n for k in range(n)) if not self._rests(i)]

    def _rests(self, index: int) -> bool:
        return self._clock.monotonic() < self._resting[index]

    def _count(self, index: int, failed: _Failed) -> None:
        st = self.stats[index]
        if failed.kind == "timeout":
            st.timeouts += 1
        elif failed.kind == "garbage":
            st.garbage += 1
        else:
            st.failures += 1
        st.by_kind[failed.kind] = st.by_kind.get(failed.kind, 0) + 1
        st.last_error = f"{failed.kind}: {failed.detail}"[:200]
        if index == self._active:
            self._active = (index + 1) % len(self.urls)
            if len(self.urls) > 1:
                st.failovers += 1

    async def _post(self, index: int, body: bytes) -> bytes:
        self.stats[index].requests += 1
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._http.post(
                    self.urls[index],
                    data=body,
                    headers={"Content-Type": "application/json"},
                    allow_redirects=False,  # only the configured host answers (its status fails)
                ) as resp:
                    if resp.status in _HTTP_LIMITS or resp.status == 503:
                        limited = self._http_limit(index, resp.status, resp.headers)
                        if limited is not None:
                            raise limited
                    if 300 <= resp.status < 400:
                        raise _Failed("http", f"status {resp.status}: a redirect, not followed")
                    if resp.status != 200:
                        raise _Failed("http", f"status {resp.status}")
                    return await _read_capped(resp)
        except TimeoutError:
            raise _Failed("timeout", f"no answer in {self._timeout_s:g} s") from None
        except _NET_ERRORS as exc:
            raise _Failed("transport", type(exc).__name__) from None

    async def _one(
        self,
        index: int,
        body: bytes,
        rid: int,
        *,
        sticky: bool = True,
        pinned: bool = False,
        verdict: bool = False,
    ) -> Any:
        sent = self._clock.monotonic()
        raw = await self._post(index, body)
        try:
            answer = _decode_one.decode(raw)
        except (msgspec.DecodeError, RecursionError):  # RecursionError: nested past msgspec's limit
            raise _Failed("garbage", "not a JSON-RPC answer") from None
        if answer.id != rid:
            raise _Failed("garbage", "answer to another request id")
        err = answer.error
        if err is not None and _rate_limit(err) and not (pinned and _block_unknown(err)):
            raise self._limit_failure(index, err)
        self._limits[index] = 0  # any other answer, an error too: the limit is over
        if pinned and err is not None and _block_unknown(err):
            raise UnknownBlock(err.code, err.message, err.data)
        if verdict and err is not None:
            raise RpcError(err.code, err.message, err.data)
        result = self._result(answer)
        self._timed(index, self._clock.monotonic() - sent)
        if sticky:
            self._active = index
        return result

    def _timed(self, index: int, seconds: float) -> None:
        """An answered request's time, into the endpoint's moving average."""
        st = self.stats[index]
        st.last_latency_s = seconds
        average = st.latency_s
        st.latency_s = (
            seconds if average is None else average + _LATENCY_WEIGHT * (seconds - average)
        )

    def _http_limit(
        self, index: int, status: int, headers: Mapping[str, str] | None
    ) -> _Failed | None:
        """A limit answered by HTTP status: rest the endpoint for its `Retry-After` in seconds,
        else by the backoff (`_limited`), and the failure to count; None for a status that is
        no limit (a 503 without a `Retry-After` is a plain failure, no rest)."""
        rest = _retry_after_s(headers.get("Retry-After") if headers is not None else None)
        if status not in _HTTP_LIMITS and status != 503:
            return None
        if rest is not None:
            self.rest(index, rest)
        elif status in _HTTP_LIMITS:
            rest = self._limited(index)
        else:
            return None
        return _Failed("rate_limited", f"status {status}, resting {rest:g} s")

    def _limit_failure(self, index: int, err: _Error) -> _Failed:
        """A JSON-RPC rate limit (`_rate_limit`): the endpoint rested by the backoff."""
        rest = self._limited(index)
        return _Failed("rate_limited", f"{err.code} {err.message}"[:100] + f", resting {rest:g} s")

    def _limited(self, index: int) -> float:
        """A rate limit that names no wait: rest the endpoint 1 s, doubling at each limit in a
        row up to `_MAX_REST_S`; asked again at every poll, it would only extend its limit."""
        rest = min(_FIRST_REST_S * 2.0 ** min(self._limits[index], 16), _MAX_REST_S)
        self._limits[index] += 1
        self.rest(index, rest)
        return rest

    @staticmethod
    def _result(answer: _Answer) -> Any:
        if answer.error is not None:
            err = answer.error
            if _server_side(err.code) and not _request_fault(err):
                raise _Failed("node", f"{err.code} {err.message}"[:120])
            raise RpcError(err.code, err.message, err.data)
        if answer.result is msgspec.UNSET:
            raise _Failed("garbage", "answer with neither result nor error")
        return answer.result
