"""Bounds on what one HTTP client can hold: a send deadline and a cap on open connections.

aiohttp has neither (its server takes every connection, and a response's write waits as long as
the client does not read), so both are a middleware, the outermost one:

- An HTTP answer (not a stream: those bound their buffers themselves) must be written within
  `api.send_timeout_s`. A client that does not read keeps its handler and a copy of the body
  alive; past the deadline its connection is aborted (the buffered bytes freed at once),
  counted (`oracled_api_connections_closed_total{reason="send_timeout"}`) and logged, at most
  once a minute with the number since the last line.
- At most `api.max_connections` client connections are served at once (keep-alive, streams and
  all). A request on a connection beyond it is answered 503 `too_many_connections` and its
  connection closed (counted, reason `connection_limit`, and logged like a send timeout: consumers
  refused are an incident the operator must hear of). `/healthz`, `/metrics` and the admin
  endpoints are answered even then, on a connection closed after the answer, so that a probe,
  Prometheus or an operator gets through a flood (a failed scrape reads as a dead daemon).

Both are read from the config in force on each request, so a reload changes them.
"""

from __future__ import annotations

import asyncio
import resource
import time

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from oracled.api.context import ApiContext
from oracled.api.errors import NO_STORE, Handler, error_response
from oracled.lograte import LogEveryMinute

__all__ = [
    "CLOSED_LIMIT",
    "CLOSED_SEND_TIMEOUT",
    "FD_RESERVE",
    "Limits",
    "open_file_limit_short",
]

CLOSED_SEND_TIMEOUT = "send_timeout"
CLOSED_LIMIT = "connection_limit"
_EXEMPT_PREFIXES = ("/healthz", "/metrics", "/v1/admin/")

_log = structlog.get_logger(component="api")

#: Descriptors kept for all but API clients: venue and RPC sockets, the audit database, logs.
FD_RESERVE = 64


def open_file_limit_short(max_connections: int) -> int | None:
    """The process's soft open-file limit when it cannot hold `max_connections` clients and
    `FD_RESERVE` more, else None. Past the limit the event loop accepts a connection and closes
    it unanswered: no 503, no count, no log line, so the cap must fit under the limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= max_connections + FD_RESERVE:
        return None
    return soft


class Limits:
    """The send deadline and the connection cap of one application."""

    __slots__ = ("_ctx", "_log_every_minute", "_open")

    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx
        # Connections that have made a request, by aiohttp's per-connection protocol object;
        # insertion-ordered. A closed one has no transport and is pruned when the cap is near.
        self._open: dict[RequestHandler, None] = {}
        self._log_every_minute = LogEveryMinute()  # keyed by reason

    @property
    def connections(self) -> int:
        """Connections counted against the cap that are still open."""
        return sum(1 for p in self._open if p.transport is not None)

    def _prune(self) -> None:
        self._open = {p: None for p in self._open if p.transport is not None}

    def _admit(self, request: web.Request) -> bool:
        protocol = request.protocol
        if protocol in self._open:
            return True
        cap = self._ctx.current_config.api.max_connections
        if len(self._open) >= cap:
            self._prune()
        if len(self._open) >= cap:
            return False
        self._open[protocol] = None
        return True

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._admit(request):
            response = await handler(request)
        elif request.path.startswith(_EXEMPT_PREFIXES):
            response = await handler(request)
            response.force_close()
        else:
            self._closed(
                CLOSED_LIMIT,
                "api_connection_limit",
                request,
                max_connections=self._ctx.current_config.api.max_connections,
            )
            response = error_response(
                503,
                "too_many_connections",
                "the API serves at most api.max_connections connections; retry shortly",
                {"Retry-After": "1", "Cache-Control": NO_STORE},
            )
            response.force_close()
        if response.prepared or not isinstance(response, web.Response):
            return response  # a stream: it was written as it went
        try:
            async with asyncio.timeout(self._ctx.current_config.api.send_timeout_s):
                await response.prepare(request)
                await response.write_eof()
        except TimeoutError:
            self._send_timed_out(request)
        except ConnectionError:  # the client went away first: its choice, as aiohttp takes it
            pass  # not a 500 with a traceback per request, which any client could cause
        return response  # aiohttp finishes it: a no-op, or a write to an aborted transport

    def _send_timed_out(self, request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.abort()  # close() would keep the unsent bytes until they drain
        self._closed(
            CLOSED_SEND_TIMEOUT,
            "api_send_timeout",
            request,
            timeout_s=self._ctx.current_config.api.send_timeout_s,
        )

    def _closed(self, reason: str, event: str, request: web.Request, **fields: float) -> None:
        """Count a connection the API closed; log it at most once a minute per reason."""
        self._ctx.hub.api_closed[reason] += 1
        closed = self._log_every_minute.due(reason, time.monotonic())
        if closed is not None:
            _log.warning(
                event,
                path=request.path,
                remote=request.remote,
                closed=closed,  # since the last such line, this one included
                **fields,
            )
