"""oracled.logs: every line the process logs is one JSON object, libraries' lines included."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
from collections.abc import Iterator

import pytest
import structlog
from aiohttp import web

from oracled.logs import setup_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """setup_logging configures the process: give the next tests what they had."""
    handlers = list(logging.getLogger().handlers)
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = handlers


async def test_a_request_aiohttp_cannot_parse_is_logged_as_one_json_line() -> None:
    """aiohttp's server logs a request line over 8,190 bytes through the standard library, with
    a traceback. Found running the demo as docs/contracts.md describes that refusal: with no
    handler, Python's last-resort one wrote it as nine lines of plain text among the JSON lines
    (the runbook's jq commands stopped at it with a parse error, and any client could write
    them). It is now one JSON line with the level, the logger and the exception."""
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        loop = asyncio.get_running_loop()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setblocking(False)
            await loop.sock_sendall(sock, b"GET /" + b"A" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.wait_for(loop.sock_recv(sock, 200), 10)
        assert answer.startswith(b"HTTP/1.0 400")
    finally:
        await runner.cleanup()
    lines = out.getvalue().splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON
    (refused,) = [e for e in events if e.get("logger") == "aiohttp.server"]
    assert refused["event"].startswith("Error handling request")
    assert refused["level"] == "error" and "LineTooLong" in refused["exception"]
    setup_logging("info", "json", stream=io.StringIO())  # once more: still one handler
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "oracled"]
    assert len(ours) == 1
