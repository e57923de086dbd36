"""OracleClient.watch_ws against a real aiohttp server on loopback that misbehaves on purpose."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from publish_rig import Rounds, make_config

from oracled.client import OracleClient
from oracled.publish.signer import RoundSigner, SigningKey

KEY = SigningKey.from_hex("0x" + "44" * 32)
SAFETY_S = 15.0  # guards against hangs only


async def test_a_binary_frame_makes_the_client_reconnect_and_ask_again() -> None:
    """A frame that is not JSON text ends that connection: the client reconnects, sends its
    subscription (every market, signed) again, and what follows the bad frame on the old
    connection is never read."""
    signed = RoundSigner(KEY).sign(Rounds(make_config()).step())
    requests: list[dict[str, Any]] = []

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        requests.append(await ws.receive_json())
        index = min(len(requests) - 1, 1)  # BTC/USD on the first connection, then ETH/USD
        await ws.send_str('{"type":"signed","data":' + signed.envelope(index).decode() + "}")
        await ws.send_bytes(b"\x00binary")
        await ws.send_str('{"type":"signed","data":' + signed.envelope(2).decode() + "}")
        await ws.receive()  # until the client goes
        return ws

    app = web.Application()
    app.router.add_get("/v1/stream", stream)
    client = OracleClient({KEY.address}, now_ms=lambda: signed.ts)
    async with TestServer(app, host="127.0.0.1") as server:
        watcher = asyncio.create_task(client.watch_ws(str(server.make_url("/")), reconnect_s=0))
        try:
            async with asyncio.timeout(SAFETY_S):
                while len(requests) < 3:  # noqa: ASYNC110 - the server records each connection
                    await asyncio.sleep(0.01)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    assert requests[:3] == [{"op": "subscribe", "signed": True}] * 3
    assert client.markets == ["BTC/USD", "ETH/USD"]  # SOL/USD came after a binary frame only
    assert client.accepted == 2 and client.rejected["replayed"] >= 1  # ETH/USD again
