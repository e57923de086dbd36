"""A loopback JSON-RPC proxy in front of anvil that a test can break on purpose.

Modes: "pass" forwards every request; "garbage" answers 200 with bytes that are not JSON-RPC;
"wrong_id" answers valid JSON for another request id; "tamper" forwards but changes one byte of
every `eth_call` result (an endpoint that lies); "error" answers a server-side JSON-RPC error.
`stop()` closes the listening socket, so the endpoint dies mid-run.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web


class RpcProxy:
    def __init__(self, upstream: str, session: aiohttp.ClientSession) -> None:
        self.upstream = upstream
        self.session = session
        self.mode = "pass"
        self.requests = 0
        self.user_agents: list[str] = []  # of every request, to tell web3's from our client's
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> RpcProxy:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.user_agents.append(request.headers.get("User-Agent", ""))
        body = await request.read()
        if self.mode == "garbage":
            return web.Response(body=b"\x00<html>upstream hiccup</html>", content_type="text/html")
        if self.mode == "wrong_id":
            return web.json_response({"jsonrpc": "2.0", "id": 999_999, "result": "0x1"})
        if self.mode == "error":
            sent = json.loads(body)
            err = {"code": -32000, "message": "header not found"}
            if isinstance(sent, list):
                return web.json_response(
                    [{"jsonrpc": "2.0", "id": r["id"], "error": err} for r in sent]
                )
            return web.json_response({"jsonrpc": "2.0", "id": sent["id"], "error": err})
        async with self.session.post(
            self.upstream, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            answer: Any = await resp.json(content_type=None)
        if self.mode == "tamper":
            items = answer if isinstance(answer, list) else [answer]
            for item in items:
                result = item.get("result")
                if isinstance(result, str) and len(result) > 200:  # an aggregate3 answer
                    item["result"] = result[:-1] + ("0" if result[-1] != "0" else "1")
        return web.json_response(answer)
