"""structlog set-up: JSON lines in production, readable colours on a terminal.

Loggers are bound once per component (`get_logger(component=...)`); hot paths never log per
message, only state changes.

Log lines go out through `LogOutput`, which never raises: a line that cannot be written (the
reader of the pipe gone, a full disk, a closed terminal) is dropped and counted
(`oracled_log_lines_dropped_total`). Before, the `BrokenPipeError` of one log call went up through
whatever had logged it: `oracled run` whose stderr reader went away stopped within two seconds
with exit code 0, as if asked to, and one logging in a signal handler could miss its stop.

Nor does it block: lines are queued and one writer thread writes them. Before, each line was
written by the thread that logged it, the event loop included, and a reader that was alive but
not reading (a stuck log shipper, a paused terminal) filled the pipe and stopped the rounds.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import select
import sys
import threading
from typing import Literal, NoReturn, Protocol

import orjson
import structlog

__all__ = [
    "DRAIN_AT_EXIT_S",
    "QUEUE_LINES",
    "LogOutput",
    "drain_logs",
    "exit_now",
    "log_lines_dropped",
    "setup_logging",
]

_HANDLER = "oracled"  # the name of our handler on the root logger, replaced on each set-up

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _Stream(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


#: Lines that may wait for the writer thread: a reader slower than the logging for that long
#: (a stuck log shipper, a paused terminal, a full pipe) loses the lines after them, counted.
QUEUE_LINES = 1_000
#: The longest the interpreter's exit waits for the writer to write the lines still queued
#: (`drain_logs` at exit): a reader that reads gets every line logged before the exit; one that
#: does not cannot hold the stop longer than this (within the stop's margin for the
#: interpreter's own exit, docs/runbook.md, *Signals*).
DRAIN_AT_EXIT_S = 0.5


class LogOutput:
    """A text stream for log lines that never raises and never blocks the thread that logs: each
    line is queued (bounded, `QUEUE_LINES`) and one writer thread writes them, in order. A line
    that finds the queue full, or whose write fails, is gone, counted once in `dropped`. Nobody
    reading the logs must not stop a daemon that is pricing markets, and one that reads slowly or
    not at all (a full pipe blocks its writer) must not stall the event loop with it.

    Each line comes in one write (the line with its newline: structlog's logger writes each line
    whole, the standard library's handler too) and goes out as one. The queue is a SimpleQueue,
    whose put takes no lock a signal handler could find held by the thread it interrupts: such a
    handler may log in the middle of another line. A stream with a file descriptor is written
    with os.write, not through its buffer: a write blocked on a full pipe then holds no lock that
    another writer of the same stream (a traceback printed to stderr, the interpreter's last
    flush of it at exit) would wait on. On a descriptor a parent set non-blocking, the writer
    waits for room rather than give up part way through a line. A forked child gets a writer
    thread of its own (`after_fork`).

    One per process: a new set-up of the logging sends the lines to its stream through the same
    queue and writer (`retarget`), so the loggers structlog cached before it follow too."""

    # structlog keeps its lock per stream, weakly
    __slots__ = (
        "__weakref__",
        "_failed",
        "_full",
        "_out",
        "_queue",
        "_since",
        "_target",
        "_writer",
    )

    def __init__(self, out: _Stream) -> None:
        self._out = out  # the stream the writer thread writes to: its own to change
        self._target = out  # the latest set-up's stream: the lines queued from now on go there
        self._queue: queue.SimpleQueue[str | threading.Event | _Retarget] = queue.SimpleQueue()
        # one counter per kind of writer: the writer thread (`_failed`) and the threads that log
        # (`_full`, without a lock a signal handler could find held; two threads racing on it
        # could at worst lose a count, never hang)
        self._failed = 0
        self._full = 0
        self._since = 0  # the lines lost before the latest set-up: not this one's to count
        self._writer = self._start_writer()

    def _start_writer(self) -> threading.Thread:
        writer = threading.Thread(target=self._write_lines, name="log-writer", daemon=True)
        writer.start()
        return writer

    def after_fork(self) -> None:
        """In a forked child: the writer thread did not come along, so without a new one the
        child's lines would wait in the queue for good. The lines the parent had queued are the
        parent's to write: the child starts with an empty queue, or they would come out twice.
        A new stream the parent had queued but not yet reached is the child's all the same."""
        self._out = self._target
        self._queue = queue.SimpleQueue()
        self._writer = self._start_writer()

    def retarget(self, out: _Stream, timeout_s: float) -> bool:
        """Write the lines logged from now on to `out`, the ones queued before to the stream they
        were logged for, and wait at most `timeout_s` for those (False if the writer is still
        behind then). Each set-up used to make a LogOutput of its own and left the one before
        with its thread, idle and alive: one more thread for each command the CLI's tests ran,
        and the loggers cached before it kept writing to the stream it had replaced."""
        self._target = out
        self._queue.put(_Retarget(out))
        drained = self.drain(timeout_s)
        self._since = self._failed + self._full
        return drained

    @property
    def dropped(self) -> int:
        """Lines lost since the latest set-up: the queue full (the writer too far behind) or
        their write failed."""
        return self._failed + self._full - self._since

    def write(self, text: str) -> int:
        if self._queue.qsize() >= QUEUE_LINES:
            self._full += 1
        else:
            self._queue.put(text)
        return len(text)

    def flush(self) -> None:
        """Nothing to do here: the writer thread writes and flushes each line."""

    def drain(self, timeout_s: float) -> bool:
        """Wait until the lines queued before this call are written (or dropped), at most
        `timeout_s`; False if the writer is still behind then (a reader that does not read)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout_s)

    def isatty(self) -> bool:
        isatty = getattr(self._target, "isatty", None)
        return bool(isatty()) if isatty is not None else False

    def _write_lines(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            if isinstance(item, _Retarget):
                self._out = item.stream
                continue
            try:
                self._write_line(item)
            except Exception:  # OSError, ValueError (closed), any: the line is lost, not the writer
                self._failed += 1

    def _write_line(self, text: str) -> None:
        fileno = getattr(self._out, "fileno", None)
        try:
            fd: int | None = fileno() if fileno is not None else None
        except (OSError, ValueError):  # no descriptor (io.StringIO), or closed
            fd = None
        if fd is None:
            self._out.write(text)
            self._out.flush()
            return
        encoding = getattr(self._out, "encoding", None) or "utf-8"
        data = memoryview(text.encode(encoding, "backslashreplace"))
        while data:
            try:
                data = data[os.write(fd, data) :]
            except BlockingIOError:  # O_NONBLOCK set by whoever shares the pipe: wait, not drop
                _wait_writable(fd)


class _Retarget:
    """Queued by `LogOutput.retarget`: the lines after it go to `stream`."""

    __slots__ = ("stream",)

    def __init__(self, stream: _Stream) -> None:
        self.stream = stream


def _wait_writable(fd: int) -> None:
    """Block the writer thread until `fd` takes more bytes (or reports an error, which the next
    write raises). Giving up on a full non-blocking pipe would drop the rest of a line already
    half written and glue the next line onto it."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.poll()


_output: LogOutput | None = None


def log_lines_dropped() -> int:
    """Log lines that could not be written since the logging was last set up (0 before)."""
    return _output.dropped if _output is not None else 0


def drain_logs(timeout_s: float = DRAIN_AT_EXIT_S) -> bool:
    """Wait, at most `timeout_s`, until every line logged so far is written (True), or the
    writer is still behind (False: a reader that does not read). Runs at the interpreter's exit."""
    return _output.drain(timeout_s) if _output is not None else True


def exit_now(status: int, timeout_s: float = DRAIN_AT_EXIT_S) -> NoReturn:
    """`os._exit(status)` once the lines logged so far are written (`timeout_s` at most). A
    forked child leaves with os._exit so as not to run the parent's exit handlers or flush the
    buffers it inherited; that skips the drain at exit too, and its lines still queued were
    lost with the writer thread."""
    drain_logs(timeout_s)
    os._exit(status)


def _after_fork_in_child() -> None:
    if _output is not None:
        _output.after_fork()


atexit.register(drain_logs)
os.register_at_fork(after_in_child=_after_fork_in_child)


def _orjson_dumps(obj: object, default: object = None) -> str:
    return orjson.dumps(obj, default=str).decode()


def setup_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: _Stream | None = None,
) -> None:
    """Configure structlog for the whole process (idempotent). A set-up after the first sends
    the lines to its stream through the same writer thread, once the lines logged before it are
    written to theirs (`DRAIN_AT_EXIT_S` at most: a reader that does not read holds it no
    longer, and the lines for the new stream wait behind it as any line does)."""
    global _output
    target = stream if stream is not None else sys.stderr
    if _output is None:
        _output = LogOutput(target)
    else:
        _output.retarget(target, DRAIN_AT_EXIT_S)
    out = _output
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if console:
        processors.append(_console_renderer())
    else:
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # one write per line (a print is two: the line, then its newline)
        logger_factory=structlog.WriteLoggerFactory(file=out),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    _route_stdlib(out, console, _LEVELS[level])


def _console_renderer() -> structlog.dev.ConsoleRenderer:
    """The console renderer with a plain traceback, named, not left to structlog's default.

    The default formatter is rich's (or better-exceptions') whenever that package happens to be
    installed, and both print every frame's local variables: a signer's key bytes in
    eth-account's frames would be written to the log.
    """
    return structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)


def _route_stdlib(out: LogOutput, console: bool, level: int) -> None:
    """Give the standard library's loggers (aiohttp, asyncio, web3, nats) the same lines.

    Without a handler, Python's last-resort one wrote their warnings as plain text, tracebacks
    over several lines, among the JSON lines: aiohttp's server logs so every request it cannot
    parse, which any client can send, and each one broke the log's readers (`jq`).
    """
    renderer: structlog.typing.Processor = (
        _console_renderer()
        if console
        else structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *(() if console else (structlog.processors.format_exc_info,)),
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER)
    handler.setFormatter(formatter)
    handler.setLevel(max(level, logging.WARNING))  # libraries' info and debug lines are noise
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(old)
    root.addHandler(handler)
