"""A loopback JSON-RPC proxy in front of anvil that a test can break on purpose.

Modes (`mode`, or one per request from `script` while it lasts):
"pass" forwards every request; "garbage" answers 200 with bytes that are not JSON-RPC;
"wrong_id" answers valid JSON for another request id; "tamper" forwards but changes one byte of
every `eth_call` result (an endpoint that lies); "error" answers a server-side JSON-RPC error;
"rate_limited" answers a JSON-RPC error with code 429 (a rate limit coded outside the
server-side range, as some providers do; failed over like one); "http500" answers status 500;
"no_result" answers the right id with neither result nor error; "null_result" answers it with
a null result (a node that has no answer but says so wrongly); "call_refused" forwards but
answers an `eth_call` with a request-fault error (-32602); "null_call" answers every `eth_call`
with a null result; "hold" waits for `release` before forwarding (a node that hangs, or an
answer that arrives late); "unpin" forwards an `eth_call` pinned by block hash as a read at
"latest" (a node that ignores EIP-1898); "huge" answers the right id with a result of `HUGE`
bytes (an endpoint that sends far more than any read, broken or hostile); "endless" answers it
with a result that never ends: its headers, then digits in 64 KiB writes for as long as the
client reads (at most `ENDLESS` bytes, so that a client that reads it all still finishes),
counted in `streamed`; "deep" answers it with
a result nested `DEEP` arrays deep (200 KB, past any JSON decoder's depth limit);
"mangle" forwards but answers the pusher's numbers in forms no node should send (a block
without a hex base fee, a gas estimate and a nonce that are not hex quantities, a receipt with
no status; `MANGLED`); "no_batch" answers every batch (a JSON array) with one JSON-RPC error
object, id null, as providers that refuse batches do (JSON-RPC 2.0 section 6 lets a server
answer a batch it cannot take with a single response object), and "no_batch_http" refuses it
with status 400; both forward single requests. "http429" answers status 429 with the
Retry-After `retry_after` (a provider's HTTP rate limit; None sends none), "http503" status 503
with the same Retry-After (a service that says how long it will be unavailable), "http402"
status 402 (Infura's answer once a key's daily credits are spent), "redirect" answers 307 with
the upstream node as its `Location` (an endpoint, or a proxy in the way, pointing elsewhere: a
POST keeps its body through a 307, so a client that follows gets a real answer from a host it
was never given), "limit_32005" a JSON-RPC
-32005 "limit exceeded" (the rate limit of Infura and others), "limit_32007" and "limit_32012"
QuickNode's rate limits (requests, and API credits, per second), "expired_32007" a -32007 that
is no rate limit (another server's code for an expired key), and "short_call"
forwards but cuts the last word off every `eth_call` result (an answer of the wrong ABI length).
"frozen" answers every `eth_getBlockByNumber` with the block it answered first (a node whose head
stopped moving while the chain goes on), answers a read pinned to a later block's hash that it
has no such block (-32001, as anvil does for a hash it does not hold), and forwards the rest.
"drip" forwards, and sends the answer to every `eth_call` as a node behind a thin link would: its
headers at once, then its body in `DRIPS` pieces spread over `delay_s` (a node whose heads are
quick and whose reads are slow to arrive). "slow" forwards every request
`delay_s` seconds late (a node that answers, but always just under the client's timeout), and
an `eth_getBlockByNumber` `head_delay_s` late instead when that is set (a node whose heavy reads
take longer than its block headers, as a multicall read does on most).
`refuse` maps a method to the JSON-RPC error objects answered to its next requests, one each,
in any mode (a node refusing a request on its merits, in the words of a node the tests do not
run); the method's other requests are handled as the mode says.
`rewrite`, when set, is called in any mode that forwards with the request and the node's answer
to it, and returns the answer to send instead: JSON, or an aiohttp `Response` sent as it is (a
status, headers, bytes that are no JSON); a property-based test drives a hostile node with it.
`methods` lists the method of every request received, in order. `stop()` closes the listening
socket, so the endpoint dies mid-run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode

_REFUSED = {"code": -32602, "message": "invalid argument 0: hex string has odd length"}
_NO_BATCH = {"code": -32600, "message": "batch requests are not supported"}
#: Infura's answer (status 402) once a key's daily credits are spent.
_SPENT = {
    "jsonrpc": "2.0",
    "id": 1,
    "error": {"code": 402, "event": -33000, "message": "Payment Required"},
}
#: The JSON-RPC error answered to every request, by mode.
_ERRORS: dict[str, dict[str, Any]] = {
    "error": {"code": -32000, "message": "header not found"},
    "limit_32005": {"code": -32005, "message": "limit exceeded"},
    "rate_limited": {"code": 429, "message": "exceeded its compute units per second capacity"},
    # geth's answer to a read pinned with requireCanonical to an orphaned block
    "not_canonical": {
        "code": -32000,
        "message": "hash 0x" + "ab" * 32 + " is not currently canonical",
    },
    # QuickNode's rate limits (requests, and API credits, per second), and a -32007 of another
    # server that means an expired key, which no rest cures
    "limit_32007": {
        "code": -32007,
        "message": "25/second request limit reached - reduce calls per second or upgrade your "
        "account at quicknode.com",
    },
    "limit_32012": {"code": -32012, "message": "credits limited to 500/sec"},
    "expired_32007": {"code": -32007, "message": "API key expired"},
}
_HEAD = "eth_getBlockByNumber"
#: "frozen": its answer to a read pinned to a block after its head (anvil's for an unknown hash).
_NO_BLOCK = {"code": -32001, "message": "Resource not found"}
#: "drip": the pieces an `eth_call` answer's body is sent in, `delay_s` apart in all.
DRIPS = 8
HUGE = 20 * 1024 * 1024
#: "endless": the most it sends before it ends the body after all (unterminated JSON).
ENDLESS = 256 * 1024 * 1024
_PIECE = b"0" * 65536
DEEP = 100_000
#: "mangle": the answer given to each method instead of the node's (a receipt only if mined).
MANGLED: dict[str, Any] = {
    "eth_getBlockByNumber": {"number": "0x1", "baseFeePerGas": 7},
    "eth_estimateGas": "plenty",
    "eth_getTransactionCount": "0xnonce",
    "eth_getTransactionReceipt": {"blockNumber": "0x1"},
}


def call_selectors(request: Any) -> list[bytes]:
    """The selectors of the aggregate3 calls of an eth_call request, in order."""
    data = bytes.fromhex(request["params"][0]["data"][2:])
    (calls,) = abi_decode(["(address,bool,bytes)[]"], data[4:])
    return [bytes(c[2][:4]) for c in calls]


def call_results(result: str) -> list[tuple[bool, bytes]]:
    """The (success, return data) pairs of an aggregate3 answer."""
    (pairs,) = abi_decode(["(bool,bytes)[]"], bytes.fromhex(result[2:]))
    return [(bool(ok), bytes(data)) for ok, data in pairs]


def encode_results(pairs: list[tuple[bool, bytes]]) -> str:
    """An aggregate3 answer of these pairs, as an eth_call result."""
    return "0x" + abi_encode(["(bool,bytes)[]"], [pairs]).hex()


def with_result(request: Any, result: str, selector: bytes, ok: bool, data: bytes) -> str:
    """The eth_call answer with the result of the first call to `selector` replaced (unchanged
    when the request has no such call): a `rewrite` that lies about one value."""
    calls, pairs = call_selectors(request), call_results(result)
    if selector in calls:
        pairs[calls.index(selector)] = (ok, data)
    return encode_results(pairs)


class Lies:
    """A proxy `rewrite`: the next eth_call answers, one each, with the result of one call
    replaced (`(selector, success, data)`), then the node's own answers again."""

    def __init__(self, *lies: tuple[bytes, bool, bytes]) -> None:
        self.lies = list(lies)

    def __call__(self, request: Any, answer: Any) -> Any:
        if request.get("method") != "eth_call" or not self.lies:
            return answer
        target, ok, data = self.lies.pop(0)
        return {**answer, "result": with_result(request, answer["result"], target, ok, data)}


class RpcProxy:
    def __init__(self, upstream: str, session: aiohttp.ClientSession) -> None:
        self.upstream = upstream
        self.session = session
        self.mode = "pass"
        self.script: list[str] = []  # modes of the next requests, one each, then `mode` again
        self.requests = 0
        self.retry_after: str | None = "30"  # "http429": its Retry-After header
        self.frozen: Any = None  # "frozen": the block it keeps answering
        self.delay_s = 0.0  # "slow": how late every answer is
        self.head_delay_s: float | None = None  # "slow": how late a header, if not `delay_s`
        self.methods: list[str] = []
        self.refuse: dict[str, list[dict[str, Any]]] = {}  # method -> errors to answer, in order
        self.rewrite: Callable[[Any, Any], Any] | None = None  # (request, answer) -> what to send
        self.pins: list[Any] = []  # the block argument of every eth_call
        self.user_agents: list[str] = []  # of every request, to tell web3's from our client's
        self.streamed = 0  # "endless": bytes of its bodies written before the client hung up
        self.release = asyncio.Event()  # "hold": set it to let held requests through
        self.held = 0  # requests that reached "hold" so far
        self.arrived = asyncio.Event()  # set whenever a request reaches "hold"
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> RpcProxy:
        app = web.Application()
        app.router.add_post("/{key:.*}", self._handle)  # `url + "/k1"`: another key, one host
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        self.release.set()  # nothing stays held past the test
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _forward(self, body: Any) -> Any:
        async with self.session.post(self.upstream, json=body) as resp:
            return await resp.json(content_type=None)

    async def _after_frozen(self, item: Any) -> bool:
        """`item` is a read pinned by hash to a block later than the frozen head."""
        params = item.get("params")
        pin = params[1] if item.get("method") == "eth_call" and len(params) > 1 else None
        if self.frozen is None or not isinstance(pin, dict) or "blockHash" not in pin:
            return False
        ask = {"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByHash",
               "params": [pin["blockHash"], False]}  # fmt: skip
        block = (await self._forward(ask))["result"]
        return block is None or int(block["number"], 16) > int(self.frozen["number"], 16)

    async def _drip(self, request: web.Request, answer: Any) -> web.StreamResponse:
        """`answer` with its headers sent at once and its body in `DRIPS` pieces over
        `delay_s`."""
        body = json.dumps(answer).encode()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(body)
        await resp.prepare(request)
        step = -(-len(body) // DRIPS)
        for start in range(0, len(body), step):
            await asyncio.sleep(self.delay_s / DRIPS)
            await resp.write(body[start : start + step])
        await resp.write_eof()
        return resp

    async def _endless(self, request: web.Request, rid: Any) -> web.StreamResponse:
        """An answer to `rid` whose result never ends, written until the client hangs up."""
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)  # chunked: no length announced
        head = f'{{"jsonrpc":"2.0","id":{json.dumps(rid)},"result":"0x'.encode()
        try:
            await resp.write(head)
            self.streamed += len(head)
            while self.streamed < ENDLESS:
                await resp.write(_PIECE)
                self.streamed += len(_PIECE)
            await resp.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass  # the client hung up: what this mode is for
        return resp

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.user_agents.append(request.headers.get("User-Agent", ""))
        mode = self.script.pop(0) if self.script else self.mode
        body = await request.read()
        if mode == "garbage":
            return web.Response(body=b"\x00<html>upstream hiccup</html>", content_type="text/html")
        if mode == "wrong_id":
            return web.json_response({"jsonrpc": "2.0", "id": 999_999, "result": "0x1"})
        if mode == "http500":
            return web.Response(status=500, text="internal error")
        if mode in ("http429", "http503"):
            wait = {} if self.retry_after is None else {"Retry-After": self.retry_after}
            status = 429 if mode == "http429" else 503
            return web.Response(status=status, text="Too Many Requests", headers=wait)
        if mode == "http402":
            return web.json_response(_SPENT, status=402)
        if mode == "redirect":
            return web.Response(status=307, headers={"Location": self.upstream})
        sent: Any = json.loads(body)
        items: list[Any] = sent if isinstance(sent, list) else [sent]
        self.methods += [item.get("method", "") for item in items]
        self.pins += [
            params[1] if len(params) > 1 else None
            for item in items
            if item.get("method") == "eth_call" and isinstance(params := item.get("params"), list)
        ]
        refusals = self.refuse.get(items[0].get("method", ""))
        if refusals and not isinstance(sent, list):
            return web.json_response({"jsonrpc": "2.0", "id": sent["id"], "error": refusals.pop(0)})
        if mode == "no_batch_http" and isinstance(sent, list):
            return web.Response(status=400, text="batch requests are not supported")
        if mode == "no_batch" and isinstance(sent, list):
            return web.json_response({"jsonrpc": "2.0", "id": None, "error": _NO_BATCH})
        if mode == "huge":
            return web.json_response(
                {"jsonrpc": "2.0", "id": items[0]["id"], "result": "0x" + "0" * HUGE}
            )
        if mode == "endless":
            return await self._endless(request, items[0]["id"])
        if mode == "deep":
            head = f'{{"jsonrpc":"2.0","id":{json.dumps(items[0]["id"])},"result":'.encode()
            return web.Response(
                body=head + b"[" * DEEP + b"]" * DEEP + b"}", content_type="application/json"
            )
        if mode == "no_result":
            return web.json_response({"jsonrpc": "2.0", "id": items[0]["id"]})
        if mode == "null_result":
            return web.json_response({"jsonrpc": "2.0", "id": items[0]["id"], "result": None})
        if mode in _ERRORS:
            err = _ERRORS[mode]
            answers = [{"jsonrpc": "2.0", "id": r["id"], "error": err} for r in items]
            return web.json_response(answers if isinstance(sent, list) else answers[0])
        if mode == "frozen" and await self._after_frozen(items[0]):
            return web.json_response({"jsonrpc": "2.0", "id": items[0]["id"], "error": _NO_BLOCK})
        if mode == "frozen" and items[0].get("method") == "eth_getBlockByNumber":
            if self.frozen is None:
                self.frozen = (await self._forward(items[0]))["result"]
            frozen = {"jsonrpc": "2.0", "id": items[0]["id"], "result": self.frozen}
            return web.json_response(frozen)
        if mode == "slow":
            head = self.head_delay_s if items[0].get("method") == _HEAD else None
            await asyncio.sleep(self.delay_s if head is None else head)
        if mode == "hold":
            self.held += 1
            self.arrived.set()
            await self.release.wait()
        if mode == "unpin":
            for item in items:
                if item["method"] == "eth_call" and isinstance(item["params"][1], dict):
                    item["params"][1] = "latest"
        answer: Any = await self._forward(sent)
        answers: list[Any] = answer if isinstance(answer, list) else [answer]
        for item in answers:
            by_id = {r["id"]: r for r in items}
            method = by_id[item["id"]]["method"]
            result = item.get("result")
            if mode == "tamper" and isinstance(result, str) and len(result) > 200:
                item["result"] = result[:-1] + ("0" if result[-1] != "0" else "1")
            if mode == "call_refused" and method == "eth_call":
                item.pop("result", None)
                item["error"] = _REFUSED
            if mode == "short_call" and method == "eth_call" and isinstance(result, str):
                item["result"] = result[:-64]
            if mode == "null_call" and method == "eth_call":
                item["result"] = None
            if mode == "mangle" and method in MANGLED and result is not None:
                item["result"] = MANGLED[method]
        if self.rewrite is not None:
            answer = self.rewrite(sent, answer)
            if isinstance(answer, web.StreamResponse):
                return answer
        if mode == "drip" and items[0].get("method") == "eth_call":
            return await self._drip(request, answer)
        return web.json_response(answer)
