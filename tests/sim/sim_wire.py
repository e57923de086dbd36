"""Reading a simulator's WebSocket as its clients do: the next JSON frame, Binance's subscribe
(spot and USD-M share it), and a quiet socket.

Shared by the simulator tests; a venue's own framing (Gemini's typed frames, Pyth's SSE blocks)
stays in its file.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

WS = aiohttp.ClientWebSocketResponse
_CONTROL = (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG)


async def next_json(ws: WS, within_s: float = 2.0, *, pings: bool = False) -> Any:
    """The next frame, which must be text, as JSON. With `pings`, WebSocket pings and pongs
    before it are passed over (venues that ping at the protocol level); any other kind fails."""
    async with asyncio.timeout(within_s):
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                return json.loads(msg.data)
            assert pings and msg.type in _CONTROL, msg


async def binance_subscribe(ws: WS, *streams: str, rid: int = 1) -> Any:
    """Send Binance's SUBSCRIBE for `streams` as request `rid` (spot and USD-M alike) and return
    the answer, WebSocket pings passed over."""
    await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": list(streams), "id": rid}))
    return await next_json(ws, pings=True)


async def drain(ws: WS, quiet_s: float = 0.1, within_s: float = 2.0) -> None:
    """Read until nothing arrives for `quiet_s` (what was sent before a fault began)."""
    async with asyncio.timeout(within_s):
        while True:
            try:
                await ws.receive(timeout=quiet_s)
            except TimeoutError:
                return
