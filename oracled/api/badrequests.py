"""Requests aiohttp cannot parse: counted by reason, logged at most once a minute, no traceback.

aiohttp answers each one 400 itself and closes its connection, before any handler or middleware
runs, and logged each as an error with a traceback (`Error handling request from ...`): any
client could fill the log at will with garbage bytes or a request line over 8 KiB, and each
traceback read as a bug of the daemon. Its server logger is replaced, per application, by
`ServerLog`: a client's unparseable bytes are counted in
`oracled_api_connections_closed_total{reason}` (`request_too_long`: a request line or header
over aiohttp's limit; `bad_request`: anything else it cannot parse) and logged as
`api_bad_request`, at most once a minute per reason with the number since the last line; every
other record (an exception that is our bug) goes to aiohttp's logger as before, traceback
included.

The line logs the parser's words only, never the bytes its message quotes: that is the line it
stopped at, and a header line with a stray byte (a token file's CR left in by a script, a space
before the colon) is the admin token's own `Authorization: Bearer ...`, which must reach no log.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.log import server_logger
from aiohttp.web_protocol import RequestPayloadError

from oracled.api.context import ApiContext
from oracled.lograte import LogEveryMinute

__all__ = ["BAD_REQUEST_REASONS", "CLOSED_BAD_REQUEST", "CLOSED_TOO_LONG", "ServerLog"]

CLOSED_BAD_REQUEST = "bad_request"
CLOSED_TOO_LONG = "request_too_long"
BAD_REQUEST_REASONS = (CLOSED_BAD_REQUEST, CLOSED_TOO_LONG)
_MAX_ERROR = 120  # characters of aiohttp's words kept
#: Where aiohttp's message starts quoting what the client sent (`b'...'`, or a str literal):
#: the words before it say what was wrong; the quote may hold a secret.
_QUOTED = re.compile(r"""[\s:]*(?:\bb)?['"]""")

_log = structlog.get_logger(component="api")


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger for one application (`Application(handler_args=...)`)."""

    def __init__(self, ctx: ApiContext) -> None:
        super().__init__(server_logger, {})
        self._ctx = ctx
        self._log_every_minute = LogEveryMinute()  # keyed by reason

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        # RequestPayloadError: a body that cannot be decoded (a bad Content-Encoding), met when
        # aiohttp drains what a handler did not read, after the answer.
        if isinstance(exc, HttpProcessingError | RequestPayloadError):
            self._bad_request(exc, args[0] if args else None)
        else:
            super().log(level, msg, *args, **kwargs)

    def _bad_request(self, exc: HttpProcessingError | RequestPayloadError, remote: object) -> None:
        reason = CLOSED_TOO_LONG if isinstance(exc, LineTooLong) else CLOSED_BAD_REQUEST
        self._ctx.hub.api_closed[reason] += 1
        closed = self._log_every_minute.due(reason, time.monotonic())
        if closed is None:
            return
        error = " ".join(_QUOTED.split(str(getattr(exc, "message", None) or exc), 1)[0].split())
        fields: Mapping[str, object] = {
            "reason": reason,
            "remote": None if remote is None else str(remote),
            "error": error[:_MAX_ERROR] or type(exc).__name__,
            "closed": closed,  # since the last such line, this one included
        }
        _log.warning("api_bad_request", **fields)
