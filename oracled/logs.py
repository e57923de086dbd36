"""structlog set-up: JSON lines in production, readable colours on a terminal.

Loggers are bound once per component (`get_logger(component=...)`); hot paths never log per
message, only state changes.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import orjson
import structlog

__all__ = ["setup_logging"]

_HANDLER = "oracled"  # the name of our handler on the root logger, replaced on each set-up

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _orjson_dumps(obj: object, default: object = None) -> str:
    return orjson.dumps(obj, default=str).decode()


def setup_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto", stream: object = None
) -> None:
    """Configure structlog for the whole process (idempotent)."""
    out = stream if stream is not None else sys.stderr
    console = fmt == "console" or (fmt == "auto" and getattr(out, "isatty", lambda: False)())
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
        logger_factory=structlog.PrintLoggerFactory(file=out),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    _route_stdlib(out, console, _LEVELS[level])


def _route_stdlib(out: object, console: bool, level: int) -> None:
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
    handler = logging.StreamHandler(out)  # type: ignore[call-overload]
    handler.set_name(_HANDLER)
    handler.setFormatter(formatter)
    handler.setLevel(max(level, logging.WARNING))  # libraries' info and debug lines are noise
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(old)
    root.addHandler(handler)
