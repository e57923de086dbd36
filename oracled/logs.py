"""structlog set-up: JSON lines in production, readable colours on a terminal.

Loggers are bound once per component (`get_logger(component=...)`); hot paths never log per
message, only state changes.

Log lines go out through `LogOutput`, which never raises: a line that cannot be written (the
reader of the pipe gone, a full disk, a closed terminal) is dropped and counted
(`oracled_log_lines_dropped_total`). Before, the `BrokenPipeError` of one log call went up through
whatever had logged it: `oracled run` whose stderr reader went away stopped within two seconds
with exit code 0, as if asked to, and one logging in a signal handler could miss its stop.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Literal, Protocol

import orjson
import structlog

__all__ = ["LogOutput", "log_lines_dropped", "setup_logging"]

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


class LogOutput:
    """A text stream for log lines that never raises: a line whose write or flush fails is gone,
    counted once in `dropped` (every line ends with a flush: structlog's logger writes and
    flushes each, the standard library's handler flushes each record). Nobody reading the logs
    must not stop a daemon that is pricing markets.

    Each line comes in one write (the line with its newline), and the writes hold a lock of
    their own: structlog's lock and the standard library handler's are two, and a thread's line
    written between another's text and its newline glued them into one unreadable line."""

    # structlog keeps its lock per stream, weakly
    __slots__ = ("__weakref__", "_lock", "_lost", "_out", "dropped")

    def __init__(self, out: _Stream) -> None:
        self._out = out
        # reentrant, as the standard library handler's: a signal handler that logs runs in the
        # thread it interrupts, maybe inside a write
        self._lock = threading.RLock()
        self._lost = False  # a write of the line being written failed
        self.dropped = 0

    def write(self, text: str) -> int:
        with self._lock:
            try:
                return self._out.write(text)
            except (OSError, ValueError):  # ValueError: the stream was closed
                self._lost = True
                return 0

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        try:
            self._out.flush()
        except (OSError, ValueError):
            self._lost = True
        if self._lost:
            self._lost = False
            self.dropped += 1

    def isatty(self) -> bool:
        isatty = getattr(self._out, "isatty", None)
        return bool(isatty()) if isatty is not None else False


_output: LogOutput | None = None


def log_lines_dropped() -> int:
    """Log lines that could not be written since the logging was set up (0 before)."""
    return _output.dropped if _output is not None else 0


def _orjson_dumps(obj: object, default: object = None) -> str:
    return orjson.dumps(obj, default=str).decode()


def setup_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: _Stream | None = None,
) -> None:
    """Configure structlog for the whole process (idempotent)."""
    global _output
    out = _output = LogOutput(stream if stream is not None else sys.stderr)
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if console:
        processors.append(structlog.dev.ConsoleRenderer())
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


def _route_stdlib(out: LogOutput, console: bool, level: int) -> None:
    """Give the standard library's loggers (aiohttp, asyncio, web3, nats) the same lines.

    Without a handler, Python's last-resort one wrote their warnings as plain text, tracebacks
    over several lines, among the JSON lines: aiohttp's server logs so every request it cannot
    parse, which any client can send, and each one broke the log's readers (`jq`).
    """
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer()
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
