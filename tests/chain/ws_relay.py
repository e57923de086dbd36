"""A loopback WebSocket relay in front of anvil's newHeads, breakable on purpose.

Modes: "relay" forwards the subscription to anvil and every notice back (and, after the
subscription's answer, one message that is not a notice, as nodes send); "refuse" answers the
subscription with a JSON-RPC error; "drop_after_ack" passes the subscription's answer and then
closes the socket; "silent" passes the subscription's answer and then forwards nothing (the
socket stays up and answers pings: a subscription that died on the node's side); "deep" passes
the subscription's answer and then sends one message nested past any JSON decoder's depth
limit (`_DEEP`, a broken or hostile node), then holds the socket; "redirect" answers the
handshake with a 307 to anvil's own WebSocket, spelled http:// as a client follows it (the
node's notices, from a host nobody gave); "negative" relays as "relay" does, but with every
notice's block number written negative ("0x1f" as "-0x1f", which `int(x, 16)` takes), each one
so sent counted in `garbled`; "future" passes the subscription's answer and then, every
`FUTURE_EVERY_S`, a notice of a new head (each a number higher, a hash of its own) stamped
`FUTURE_S` ahead of this machine's clock, and nothing of the node's (a node whose clock runs
ahead, sending heads faster than any silence is noticed), each one counted in `garbled`.
`connections` counts the sockets opened to it, `open` those not closed yet, `following` the
ones relayed past the subscription's answer in "relay" (or "negative") mode.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Final

import aiohttp
from aiohttp import web

_REFUSAL = '{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"method not found"}}'
_CHATTER = '{"jsonrpc":"2.0","id":77,"result":true}'
_DEEP = '{"jsonrpc":"2.0","x":' + "[" * 100_000 + "]" * 100_000 + "}"
#: How far ahead of the clock a "future" head is stamped, and how often one is sent.
FUTURE_S: Final = 3600
FUTURE_EVERY_S: Final = 0.02
#: The first "future" head's number: above any block a test's anvil makes.
_FUTURE_FROM: Final = 1 << 32


class WsRelay:
    def __init__(self, upstream: str, session: aiohttp.ClientSession) -> None:
        self.upstream = upstream
        self.session = session
        self.mode = "relay"
        self.connections = 0
        self.open = 0
        self.following = 0
        self.garbled = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> WsRelay:
        app = web.Application()
        app.router.add_get("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"ws://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.connections += 1
        self.open += 1
        try:
            return await self._serve(request)
        finally:
            self.open -= 1

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        mode = self.mode
        if mode == "redirect":
            # as http://: aiohttp refuses a redirect to a ws:// URL, and follows one to http://
            target = self.upstream.replace("ws://", "http://", 1)
            return web.Response(status=307, headers={"Location": target})
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        subscribe = await ws.receive_str()
        if mode == "refuse":
            await ws.send_str(_REFUSAL)
            await ws.receive()  # until the client goes away
            return ws
        async with self.session.ws_connect(self.upstream) as up:
            await up.send_str(subscribe)
            await ws.send_str(await up.receive_str())
            if mode == "drop_after_ack":
                await ws.close()
                return ws
            if mode == "deep":
                await ws.send_str(_DEEP)
            if mode == "future":
                await self._from_the_future(ws)
                return ws
            if mode in ("silent", "deep"):
                async for _ in ws:
                    pass
                return ws
            self.following += 1
            await ws.send_str(_CHATTER)

            async def pump() -> None:
                async for msg in up:
                    await ws.send_str(self._garble(msg.data) if mode == "negative" else msg.data)

            task = asyncio.create_task(pump())
            try:
                async for _ in ws:
                    pass
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return ws

    def _garble(self, data: str) -> str:
        notice = json.loads(data)
        header = notice.get("params", {}).get("result")
        if not isinstance(header, dict) or "number" not in header:
            return data
        header["number"] = "-" + header["number"]
        self.garbled += 1
        return json.dumps(notice)

    async def _from_the_future(self, ws: web.WebSocketResponse) -> None:
        """Send heads from the future until the client goes away."""

        async def send() -> None:
            number = _FUTURE_FROM
            while True:
                header = {
                    "number": hex(number), "hash": "0x" + f"{number:064x}",
                    "timestamp": hex(int(time.time()) + FUTURE_S),
                }  # fmt: skip
                notice = {"jsonrpc": "2.0", "method": "eth_subscription",
                          "params": {"subscription": "0x1", "result": header}}  # fmt: skip
                await ws.send_str(json.dumps(notice))
                self.garbled += 1
                number += 1
                await asyncio.sleep(FUTURE_EVERY_S)

        task = asyncio.create_task(send())
        try:
            async for _ in ws:
                pass
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
