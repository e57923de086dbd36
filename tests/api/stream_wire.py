"""Reading and asking on `WS /v1/stream`, and reading `GET /v1/events`, one JSON frame at a time."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import ClientResponse, WSMsgType
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


async def next_event(resp: ClientResponse) -> tuple[str, dict[str, Any]]:
    """Read one SSE event (skipping comments): (event name, decoded data). A stream that ends
    first, or sends nothing for SAFETY_S, fails the test instead of hanging it."""
    name, data = "message", ""
    async with asyncio.timeout(SAFETY_S):
        while True:
            line = (await resp.content.readline()).decode()
            if line in ("\n", "") and data:
                return name, json.loads(data)
            assert line, "the event stream ended before the next event"
            if line.startswith("event: "):
                name = line[7:].strip()
            elif line.startswith("data: "):
                data += line[6:].strip()
