"""oracled.logs: every line the process logs is one JSON object, libraries' lines included."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import structlog
from aiohttp import web

from oracled.logs import log_lines_dropped, setup_logging


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


def test_a_log_line_nobody_can_read_is_dropped_and_counted_not_raised() -> None:
    """The reader of the log's pipe gone: each log call, structlog's and the standard library's,
    returns as before (no BrokenPipeError up through the code that logged) and each lost line
    is counted once, for `oracled_log_lines_dropped_total`."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = os.fdopen(write_end, "w")
    setup_logging("info", "json", stream=stream)
    assert log_lines_dropped() == 0
    structlog.get_logger().info("nobody reads this")
    structlog.get_logger().warning("nor this", n=2)
    logging.getLogger("aiohttp.server").error("a library's line")
    assert log_lines_dropped() == 3
    with pytest.raises(BrokenPipeError):  # what each of those calls raised before
        print("x", file=stream, flush=True)
    with pytest.raises(BrokenPipeError):  # closed all the same, its buffer unwritten
        stream.close()
    structlog.get_logger().info("after the stream was closed")  # ValueError: dropped too
    assert log_lines_dropped() == 4


class _HoldingStream(io.StringIO):
    """A log stream that holds the thread named `writer` once, right after its first write,
    until another thread has written a whole line (0.5 s at most): a thread switch, which may
    fall between any two writes, made certain."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()
        self.other_line = threading.Event()

    def write(self, text: str, /) -> int:
        written = super().write(text)
        if threading.current_thread().name != "writer":
            if text.endswith("\n"):
                self.other_line.set()
        elif not self.holding.is_set():
            self.holding.set()
            self.other_line.wait(0.5)
        return written


def test_a_line_from_a_thread_and_a_librarys_line_at_once_stay_two_lines() -> None:
    """The signer's, the lease's and the pause file's threads log through structlog while the
    event loop's libraries (aiohttp, nats) log through the standard library's handler: two
    locks, one stream. structlog printed a line as two writes, the line and then its newline,
    and since LogOutput (whose write is Python code, where a thread switch may fall) a library's
    line written between them glued two JSON objects on one line, then an empty line: both
    unreadable by jq (seen once or twice in five runs of 60,000 lines from two threads). Each
    line is now one write, under LogOutput's own lock."""
    out = _HoldingStream()
    setup_logging("info", "json", stream=out)
    thread = threading.Thread(
        target=lambda: structlog.get_logger().info("from a thread", n=1), name="writer"
    )
    thread.start()
    assert out.holding.wait(5)  # the thread is in its first write
    logging.getLogger("aiohttp.server").warning("a library's line")
    thread.join(5)
    lines = out.getvalue().split("\n")
    assert lines[-1] == ""  # the last line ends with its newline
    events = [json.loads(line)["event"] for line in lines[:-1]]
    assert sorted(events) == ["a library's line", "from a thread"]


_SIGNAL_CHILD = """
import io, logging, signal, sys
import structlog
from oracled.logs import setup_logging

class Stream(io.StringIO):
    def write(self, text, /):
        if not signal_sent:
            signal_sent.append(1)
            signal.raise_signal(signal.SIGUSR1)  # its handler runs here, inside this write
        return super().write(text)

signal_sent = []
signal.signal(signal.SIGUSR1, lambda *_: logging.getLogger("lib").warning("from a handler"))
out = Stream()
setup_logging("info", "json", stream=out)
structlog.get_logger().info("interrupted")
sys.stdout.write(out.getvalue())
"""


def test_a_signal_handler_that_logs_during_a_line_does_not_hang_the_process() -> None:
    """A Python signal handler runs in the main thread between two bytecodes, also in the
    middle of a log line's write: one that logs then writes again through the same stream.
    The standard library's handler lock is reentrant for that reason; LogOutput's lock must be
    too, or the process hangs for good on its own lock. A child process logs a line whose write
    raises a signal whose handler logs: it ends at once with both lines (with a plain lock it
    hung until this test's timeout)."""
    done = subprocess.run(
        [sys.executable, "-c", _SIGNAL_CHILD], capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0, done.stderr[-2000:]
    events = sorted(json.loads(line)["event"] for line in done.stdout.splitlines())
    assert events == ["from a handler", "interrupted"]
