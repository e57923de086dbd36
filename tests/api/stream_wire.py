"""Reading and asking on `WS /v1/stream` from the tests, one JSON frame at a time."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import WSMsgType
from aiohttp.client_ws import ClientWebSocketResponse

SAFETY_S = 10.0  # only guards against a hang; no test depends on timing


async def recv(ws: ClientWebSocketResponse) -> dict[str, Any]:
    """The next frame, which must be JSON text."""
    async with asyncio.timeout(SAFETY_S):
        msg = await ws.receive()
    assert msg.type is WSMsgType.TEXT, msg
    data: dict[str, Any] = msg.json()
    return data


async def ask(ws: ClientWebSocketResponse, request: dict[str, Any] | str) -> dict[str, Any]:
    """Send a request (JSON, or raw text) and return the next frame."""
    if isinstance(request, str):
        await ws.send_str(request)
    else:
        await ws.send_json(request)
    return await recv(ws)
