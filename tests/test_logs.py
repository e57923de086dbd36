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
from children import stop

from oracled.logs import QUEUE_LINES, drain_logs, log_lines_dropped, setup_logging


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
    assert drain_logs(5)
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
    assert drain_logs(5)
    assert log_lines_dropped() == 3
    with pytest.raises(BrokenPipeError):  # what each of those calls raised before
        print("x", file=stream, flush=True)
    with pytest.raises(BrokenPipeError):  # closed all the same, its buffer unwritten
        stream.close()
    structlog.get_logger().info("after the stream was closed")  # ValueError: dropped too
    assert drain_logs(5)
    assert log_lines_dropped() == 4


class _WritesStream(io.StringIO):
    """A log stream that keeps each write it is given, as given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str, /) -> int:
        self.writes.append(text)
        return super().write(text)


def test_a_line_from_a_thread_and_a_librarys_line_at_once_stay_two_lines() -> None:
    """The signer's, the lease's and the pause file's threads log through structlog while the
    event loop's libraries (aiohttp, nats) log through the standard library's handler: two
    locks, one stream. structlog printed a line as two writes, the line and then its newline,
    and a library's line written between them glued two JSON objects on one line, then an empty
    line: both unreadable by jq (seen once or twice in five runs of 60,000 lines from two
    threads). Each line is now one write, and one writer thread writes them all: the stream
    gets every line whole, in one write, from both loggers."""
    out = _WritesStream()
    setup_logging("info", "json", stream=out)
    thread = threading.Thread(
        target=lambda: [structlog.get_logger().info("from a thread", n=i) for i in range(200)]
    )
    thread.start()
    for _ in range(200):
        logging.getLogger("aiohttp.server").warning("a library's line")
    thread.join(5)
    assert drain_logs(5)
    assert len(out.writes) == 400
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in out.writes)
    events = [json.loads(w)["event"] for w in out.writes]
    assert sorted(set(events)) == ["a library's line", "from a thread"]


class _BlockedStream(io.StringIO):
    """A log stream whose reader is not reading: each write waits until `reading` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = threading.Event()

    def write(self, text: str, /) -> int:
        self.reading.wait(10)
        return super().write(text)


def test_a_reader_that_does_not_read_blocks_no_logger_and_the_lines_keep_their_order() -> None:
    """A reader that stopped reading (a stuck log shipper, a full pipe) blocked each log call,
    the event loop's included: a slow sink stalled the core. Log calls now return at once, the
    lines beyond the queue's `QUEUE_LINES` are dropped and counted, and the lines kept are
    written in the order they were logged, from both loggers, once the reader reads again."""
    out = _BlockedStream()
    setup_logging("info", "json", stream=out)
    extra = 50
    for i in range(QUEUE_LINES + extra):  # each call returns: no write waits in this thread
        if i % 2:
            structlog.get_logger().info("line", n=i)
        else:
            logging.getLogger("lib").warning("line %d", i)
    assert not drain_logs(0.2)  # the writer is stuck in the first line's write
    out.reading.set()
    assert drain_logs(5)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    numbers = [e["n"] if "n" in e else int(e["event"].split()[1]) for e in events]
    # the one in the write, then the queue's worth, in order; the rest counted
    assert numbers == list(range(len(numbers)))
    assert QUEUE_LINES <= len(numbers) <= QUEUE_LINES + 1
    assert log_lines_dropped() == QUEUE_LINES + extra - len(numbers)


_EXIT_CHILD = """
import structlog
from oracled.logs import setup_logging

setup_logging("info", "json")
for i in range(500):  # fewer than the queue holds: none dropped
    structlog.get_logger().info("line", n=i)
"""


def test_every_line_logged_before_the_exit_is_written() -> None:
    """The lines still queued when the interpreter exits (a daemon's last lines after SIGTERM,
    a command's) are written before it is gone, in order: a child logs 500 lines and exits at
    once; its stderr has them all (before the queue, each was written as it was logged)."""
    done = subprocess.run(
        [sys.executable, "-c", _EXIT_CHILD], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr[-2000:]
    numbers = [json.loads(line)["n"] for line in done.stderr.splitlines()]
    assert numbers == list(range(500))


_STUCK_EXIT_CHILD = """
import os, sys, structlog
from oracled.logs import setup_logging

setup_logging("info", "json")
for i in range(100_000):  # far more than the pipe holds
    structlog.get_logger().info("line", n=i)
print("exiting", flush=True)
"""


def test_a_reader_that_does_not_read_cannot_hold_the_exit() -> None:
    """The exit waits for the queued lines a bounded time only (`DRAIN_AT_EXIT_S`): a child
    whose stderr is a pipe nobody reads logs far more than the pipe holds and still exits, with
    exit code 0 (with no bound on the wait, it would hang there for good)."""
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", _STUCK_EXIT_CHILD], stdout=subprocess.PIPE, stderr=write_end
        )
    finally:
        os.close(write_end)
    try:
        assert child.wait(30) == 0
        assert child.stdout is not None and child.stdout.read() == b"exiting\n"
    finally:
        stop(child)
        if child.stdout is not None:
            child.stdout.close()
        os.close(read_end)


_SIGNAL_CHILD = """
import io, logging, signal, sys
import structlog
from oracled.logs import drain_logs, setup_logging

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
for _ in range(50):  # the handler's line is queued when the handler has run, after this one
    drain_logs(5)
    if out.getvalue().count("\\n") == 2:
        break
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


def test_a_non_blocking_pipe_that_fills_loses_no_line_and_tears_none() -> None:
    """A parent may hand the daemon a stderr with O_NONBLOCK set (shared with a supervisor that
    set it on its end of the pipe). Found reviewing the writer thread: once the pipe was full,
    every line that found the pipe full was dropped (os.write raised BlockingIOError), and a
    line over PIPE_BUF (4 KiB: a traceback) was written in part, its rest dropped and the next
    line glued to its first half. The writer now waits for the pipe to take more: a reader
    that reads late gets every line, whole and in order, none counted as dropped."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    out = os.fdopen(write_end, "w")
    setup_logging("info", "json", stream=out)
    # 0.5 MB: far more than the pipe's 64 KiB, fewer lines than the queue holds; each line over
    # the 4 KiB a pipe takes whole (PIPE_BUF), so a full pipe takes part of one
    count = 100
    for i in range(count):
        structlog.get_logger().info("line", n=i, pad="x" * 5_000)
    chunks: list[bytes] = []
    assert not drain_logs(0.3)  # the writer waits on the full pipe; nobody has read yet

    def read() -> None:
        while chunk := os.read(read_end, 65_536):
            chunks.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert drain_logs(10)
    finally:
        out.close()
        reader.join(10)
        os.close(read_end)
    numbers = [json.loads(line)["n"] for line in b"".join(chunks).decode().splitlines()]
    assert numbers == list(range(count))
    assert log_lines_dropped() == 0


_FORK_CHILD = """
import os, sys, structlog
from oracled.logs import setup_logging

setup_logging("info", "json")
for i in range(200):
    structlog.get_logger().info("parent", n=i)
pid = os.fork()
if pid == 0:
    structlog.get_logger().info("child")
    sys.exit(0)  # the interpreter's exit, atexit and its drain included
os.waitpid(pid, 0)
structlog.get_logger().info("parent", n=200)
"""


def test_a_forked_child_writes_its_lines_and_not_the_parents_again() -> None:
    """The writer thread does not survive a fork. Found reviewing the writer thread: a child
    forked after the logging was set up (a multiprocessing worker, a test's fork) queued its
    lines for a thread it did not have, and none was ever written. The child now starts a writer
    of its own with an empty queue: its line is written once, and the lines the parent still had
    queued at the fork are written by the parent only, once each, in order."""
    done = subprocess.run(
        [sys.executable, "-c", _FORK_CHILD], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr[-2000:]
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert [e["event"] for e in events].count("child") == 1
    assert [e["n"] for e in events if e["event"] == "parent"] == list(range(201))


def _writer_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "log-writer")


def test_setting_the_logging_up_again_keeps_one_writer_and_sends_each_line_to_its_stream() -> None:
    """The CLI sets the logging up at each command, and its tests run many commands in one
    process. Found last session: each set-up started a writer thread of its own and left the one
    before idle and alive, one thread more per set-up; and a logger structlog had cached kept
    writing to the stream the next set-up replaced. Set up seven times, the process has one
    writer thread; the lines logged before a set-up are in their stream when it returns, and
    the lines after it, a cached logger's included, go to the new one."""
    first = io.StringIO()
    setup_logging("info", "json", stream=first)
    cached = structlog.get_logger()
    cached.info("before", n=0)  # cached on first use, with the first set-up's stream
    for _ in range(5):
        setup_logging("info", "json", stream=io.StringIO())
    last = io.StringIO()
    setup_logging("info", "json", stream=last)
    assert _writer_threads() == 1
    assert [json.loads(line)["event"] for line in first.getvalue().splitlines()] == ["before"]
    cached.info("after", n=1)
    structlog.get_logger().info("after", n=2)
    logging.getLogger("lib").warning("after")
    assert drain_logs(5)
    assert first.getvalue().count("\n") == 1
    events = [json.loads(line) for line in last.getvalue().splitlines()]
    assert [(e["event"], e.get("n")) for e in events] == [
        ("after", 1),
        ("after", 2),
        ("after", None),
    ]


def test_a_new_set_up_counts_only_its_own_lost_lines() -> None:
    """`oracled_log_lines_dropped_total` counts the lines lost since the logging was set up:
    one writer for every set-up does not carry a count of the stream that was replaced."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        setup_logging("info", "json", stream=os.fdopen(write_end, "w", closefd=False))
        structlog.get_logger().info("nobody reads this")
        assert drain_logs(5)
        assert log_lines_dropped() == 1
        out = io.StringIO()
        setup_logging("info", "json", stream=out)
        structlog.get_logger().info("read")
        assert drain_logs(5)
        assert log_lines_dropped() == 0
        assert json.loads(out.getvalue())["event"] == "read"
    finally:
        os.close(write_end)


_EXIT_NOW_CHILD = """
import os, structlog
from oracled.logs import exit_now, setup_logging

setup_logging("info", "json")
pid = os.fork()
if pid == 0:
    for i in range(300):
        structlog.get_logger().info("child", n=i)
    exit_now(3)  # os._exit: no atexit, no drain of its own
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


def test_a_child_that_leaves_with_exit_now_writes_every_line_first() -> None:
    """A forked child leaves with os._exit, not to run the parent's exit handlers nor flush
    the buffers it inherited: that skips the drain at exit, and the lines still queued went
    with its writer thread (0 and 218 of these 300 in two runs with a bare os._exit).
    `exit_now` writes them first (bounded as at exit) and leaves with the status given."""
    done = subprocess.run(
        [sys.executable, "-c", _EXIT_NOW_CHILD], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "3\n"
    numbers = [json.loads(line)["n"] for line in done.stderr.splitlines()]
    assert numbers == list(range(300))


_FORK_MID_SET_UP_CHILD = """
import io, os, sys, threading, structlog
from oracled.logs import drain_logs, setup_logging

class Stuck(io.StringIO):
    reading = threading.Event()

    def write(self, text, /):
        self.reading.wait(10)  # in the child, a copy nobody sets: the child's writer would wait
        return super().write(text)

stuck = Stuck()
setup_logging("info", "json", stream=stuck)
structlog.get_logger().info("stuck")  # the writer thread waits in this line's write
setup_logging("info", "json")  # stderr: the switch queued behind it, not yet reached
pid = os.fork()
if pid == 0:
    structlog.get_logger().info("child")
    drain_logs(5)
    print(sum(t.name == "log-writer" for t in threading.enumerate()), flush=True)
    sys.exit(0)
os.waitpid(pid, 0)
Stuck.reading.set()
structlog.get_logger().info("parent")
drain_logs(5)
print(stuck.getvalue().count("\\n"), flush=True)
"""


def test_a_child_forked_during_a_set_up_writes_to_the_new_stream_with_one_writer() -> None:
    """The writer thread switches streams in queue order, behind the lines already queued: a
    child forked before the writer reached the switch (its stream slow to read) would have
    written its lines to the stream the set-up replaced. The child's first line goes to the
    new stream, once; the child has one writer thread (its own, the parent's is not there to
    wait on); the replaced stream gets the parent's line logged before the set-up only."""
    done = subprocess.run(
        [sys.executable, "-c", _FORK_MID_SET_UP_CHILD], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["1", "1"]  # the child's writers, the stuck stream's lines
    events = [json.loads(line)["event"] for line in done.stderr.splitlines()]
    assert events == ["child", "parent"]


# pip vendors rich: with it importable as `rich`, structlog's default console traceback is
# rich's, which prints each frame's local variables.
_CONSOLE_TRACEBACK_WITH_RICH = """
import logging
import sys

import pip._vendor.rich.console
import pip._vendor.rich.traceback

for name, module in list(sys.modules.items()):
    if name.startswith("pip._vendor.rich"):
        sys.modules[name.removeprefix("pip._vendor.")] = module
import structlog

from oracled.logs import setup_logging

assert structlog.dev.default_exception_formatter is structlog.dev.rich_traceback
setup_logging(fmt="console")


def sign() -> None:
    key_bytes = "kb-" + "5ecre7"
    raise ValueError("signing failed " + str(len(key_bytes)))


for log in (structlog.get_logger().exception, logging.getLogger("web3").exception):
    try:
        sign()
    except ValueError:
        log("failed")
"""


def test_a_console_traceback_never_prints_a_frames_local_variables() -> None:
    """Found reviewing the console format: its renderer took structlog's default traceback
    formatter, which is rich's when rich is installed (a developer's tool, or a dependency's),
    and rich's prints the local variables of every frame, a signer's key bytes included. The
    console format now names the plain formatter, for structlog's lines and the libraries'."""
    pytest.importorskip("pip._vendor.rich.traceback")
    done = subprocess.run(
        [sys.executable, "-c", _CONSOLE_TRACEBACK_WITH_RICH],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("ValueError: signing failed 9") == 2, done.stderr[-2000:]
    assert "5ecre7" not in done.stderr
