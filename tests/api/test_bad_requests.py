"""Requests the HTTP parser rejects: answered 400 and closed as before, but counted by reason and
logged at most once a minute without a traceback (each used to write an error line with a
traceback, so any client could flood the log; found sending garbage to a running demo)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from api_rig import ClientFactory, Rig, make_config
from structlog.testing import capture_logs

LONG_LINE = b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
GARBAGE = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"
BAD_HEADER = b"GET /healthz HTTP/1.1\r\nHost: t\r\nBad Header\x00: x\r\n\r\n"
GOOD_THEN_BAD = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nNOT HTTP AT ALL\x00\r\n\r\n"


class _Records(logging.Handler):
    """Every record of aiohttp's loggers, as the daemon's own handler would receive them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def aiohttp_records() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("aiohttp")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def _send(host: str, port: int, data: bytes) -> bytes:
    """Send raw bytes on a new connection; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def test_unparseable_requests_are_counted_by_reason_and_logged_once_without_traceback(
    make_client: ClientFactory, aiohttp_records: _Records
) -> None:
    """Twelve unparseable requests of four kinds (an over-long request line, TLS-like garbage,
    a header with a NUL, garbage after a good request on a kept-alive connection) are each
    answered 400 and closed; they are counted as `request_too_long` (3) and `bad_request` (9),
    logged as one `api_bad_request` line per reason, and aiohttp logs nothing with a traceback."""
    rig = Rig(make_config())
    client = await make_client(rig)
    host, port = str(client.host), int(client.port)  # type: ignore[arg-type]
    with capture_logs() as logs:
        for data in [LONG_LINE, GARBAGE, BAD_HEADER, GOOD_THEN_BAD] * 3:
            answer = await _send(host, port, data)
            assert b"HTTP/1.1 400 " in answer or b"HTTP/1.0 400 " in answer, answer[:200]
    assert rig.hub.api_closed["request_too_long"] == 3
    assert rig.hub.api_closed["bad_request"] == 9
    lines = [e for e in logs if e["event"] == "api_bad_request"]
    assert [(e["reason"], e["closed"], e["log_level"]) for e in lines] == [
        ("request_too_long", 1, "warning"),
        ("bad_request", 1, "warning"),
    ]
    assert all(e["remote"] == "127.0.0.1" and len(e["error"]) <= 120 for e in lines), lines
    noisy = [r for r in aiohttp_records.records if r.exc_info or r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]
    assert (await client.get("/healthz")).status == 200  # the server answers on
