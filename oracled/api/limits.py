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
- Of those, at most `api.max_connections_per_address` come from one client address, so that
  one client (a leak of connections, a flood) cannot take every place from the others: a request
  on one more is answered 429 `too_many_client_connections` and its connection closed (reason
  `client_connection_limit`, logged as `api_client_connection_limit`), with the same exceptions.

Both are read from the config in force on each request, so a reload changes them.

The cap is counted when a request arrives, and aiohttp sets no deadline on reading a request's
headers: a connection that sends them a line at a time (slowloris) was never counted and never
closed, and a few hundred of them used up the descriptors (every new client, probes included,
reset; nothing counted or logged). `GuardedSite` (the daemon's listening socket) wraps each
accepted connection so that:

- its first request must arrive within `FIRST_REQUEST_TIMEOUT_S`, else the connection is
  aborted, counted (reason `first_request_timeout`) and logged as `api_first_request_timeout`
  at most once a minute;
- at most `api.max_connections` + `ACCEPT_MARGIN` connections are open at once; one accepted
  beyond that closes the oldest connection still waiting for its first request (the likely
  slowloris), or, with none waiting, itself, counted (reason `accept_limit`) and logged as
  `api_accept_limit` at most once a minute. The margin leaves room for the probes answered
  beyond the cap, and stays under `FD_RESERVE`.

Nor does aiohttp set a deadline on a request's body: a handler reading one (the admin endpoints)
waited for as long as the client took, holding the connection and its place under the cap (a
`Content-Length: 1000000` body at a byte a second: 4.5 hours until the 16 KiB limit's 413; one
never sent: for good), and a body no handler read was drained for 10 s after the answer,
uncounted. So each request on a guarded connection, headers
and body, must be complete within `REQUEST_TIMEOUT_S` of its first byte (a request that waited
behind another on the connection: of its turn), else the connection is aborted, counted (reason
`request_timeout`) and logged as `api_request_timeout` at most once a minute. It is no read
timeout: a live client sending slowly in time is served. Bytes that arrive while a request is
being answered (a WebSocket's frames, an event stream's) start no deadline, nor do bytes that
are only line ends (an empty line before a request, which the parser skips: an idle keep-alive
connection is the keep-alive timer's to close). Nor could the first bytes of a request
pipelined behind another start its deadline: they come in the same segment as the request
before, or while it is answered. So when a request without a body is answered on a connection
that stays open and the bytes received so far do not end with an empty line (they end inside a
next request), that request's deadline runs from the answer, its turn (`_next_turn`); before,
its headers could stall until the keep-alive timer (`api.idle_timeout_s`) closed it,
uncounted. Behind a request with a body, whose end in the bytes only the parser knows, that
timer still bounds it (clients do not pipeline behind a POST, RFC 9112 9.3.2, and an idle
keep-alive connection holds its place as long). Any answer, also
one given before the middlewares (a refused `Expect`), meets the first-request deadline
(`on_prepare`).

A request whose expectation is refused (a 417, or the admin routes' 401 or 403 in place of
`100 Continue`) is answered before its body, which its client holds back as told, with
`Connection: close`. aiohttp then waited up to 10 s for that body before closing (its lingering
close), and the request deadline cut the connection first and counted it as `request_timeout`:
a refusal counted as a late client. Its deadline now ends with the answer, the connection is
counted as `expect_refused`, and it is closed `REFUSED_LINGER_S` after the answer if the client
has not closed it first (a body sent anyway meanwhile is read and dropped, so that the close
does not reset the connection before the client has read its answer).
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from oracled.api.context import ApiContext
from oracled.api.errors import NO_STORE, REFUSED_EXPECTATION, Handler, error_response
from oracled.lograte import LogEveryMinute

__all__ = [
    "ACCEPT_MARGIN",
    "CLOSED_ACCEPT_LIMIT",
    "CLOSED_CLIENT_LIMIT",
    "CLOSED_EXPECT_REFUSED",
    "CLOSED_FIRST_REQUEST_TIMEOUT",
    "CLOSED_HOST_REFUSED",
    "CLOSED_LIMIT",
    "CLOSED_REASONS",
    "CLOSED_REQUEST_TIMEOUT",
    "CLOSED_SEND_TIMEOUT",
    "FD_RESERVE",
    "FIRST_REQUEST_TIMEOUT_S",
    "LIMITS",
    "REFUSED_LINGER_S",
    "REQUEST_TIMEOUT_S",
    "GuardedSite",
    "Limits",
    "open_file_limit_short",
]

CLOSED_SEND_TIMEOUT = "send_timeout"
CLOSED_LIMIT = "connection_limit"
CLOSED_CLIENT_LIMIT = "client_connection_limit"
CLOSED_FIRST_REQUEST_TIMEOUT = "first_request_timeout"
CLOSED_ACCEPT_LIMIT = "accept_limit"
CLOSED_REQUEST_TIMEOUT = "request_timeout"
CLOSED_EXPECT_REFUSED = "expect_refused"
#: A request naming another host (oracled/api/hosts.py).
CLOSED_HOST_REFUSED = "host_refused"
#: The middlewares' reasons (oracled/api/badrequests.py has the parser's two).
CLOSED_REASONS = (
    CLOSED_SEND_TIMEOUT,
    CLOSED_LIMIT,
    CLOSED_FIRST_REQUEST_TIMEOUT,
    CLOSED_ACCEPT_LIMIT,
    CLOSED_REQUEST_TIMEOUT,
    CLOSED_EXPECT_REFUSED,
    CLOSED_HOST_REFUSED,
    CLOSED_CLIENT_LIMIT,
)
#: Seconds a new connection has to complete its first request's headers.
FIRST_REQUEST_TIMEOUT_S = 10.0
#: Seconds a request has, from its first byte, to complete its headers and its body (the API's
#: bodies are admin ones of a few bytes: a live link sends them in a fraction of this).
REQUEST_TIMEOUT_S = 10.0
#: Seconds a connection whose request's expectation was refused stays open after the answer
#: (unless its client closes it first): time for the answer to arrive, and for a body sent
#: anyway to be read and dropped, before a close that unread bytes would turn into a reset.
REFUSED_LINGER_S = 1.0
#: Connections accepted beyond `api.max_connections`: probes answered over the cap use them.
ACCEPT_MARGIN = 16
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
    """The send deadline, the connection cap and the request deadlines of one application."""

    __slots__ = (
        "_by_address",
        "_ctx",
        "_first_request_timeout",
        "_live",
        "_log_every_minute",
        "_open",
        "_request_timeout",
        "_waiting",
    )

    def __init__(
        self,
        ctx: ApiContext,
        first_request_timeout: float = FIRST_REQUEST_TIMEOUT_S,
        request_timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self._ctx = ctx
        self._first_request_timeout = first_request_timeout
        self._request_timeout = request_timeout
        # Connections accepted through a GuardedSite and still open, and those of them yet to
        # make a request with their deadline (insertion-ordered: the oldest goes first).
        self._live: dict[RequestHandler, _Guarded] = {}
        self._waiting: dict[RequestHandler, asyncio.TimerHandle] = {}
        # Connections that have made a request, by aiohttp's per-connection protocol object, to
        # their client's address; insertion-ordered. A guarded one leaves when it closes; any
        # other closed one has no transport and is pruned when a cap is near.
        self._open: dict[RequestHandler, str | None] = {}
        self._by_address: Counter[str] = Counter()  # of `_open`, by client address
        self._log_every_minute = LogEveryMinute()  # keyed by reason

    @property
    def connections(self) -> int:
        """Connections counted against the cap that are still open."""
        return sum(1 for p in self._open if p.transport is not None)

    @property
    def accepted(self) -> int:
        """Connections accepted through a `GuardedSite` that are still open."""
        return len(self._live)

    def _accept(self, guarded: _Guarded) -> bool:
        """Admit a new connection (False: it is closed at once), evicting the oldest one still
        waiting for its first request when the open ones reach the cap plus the margin."""
        if len(self._live) >= self._ctx.current_config.api.max_connections + ACCEPT_MARGIN:
            if self._waiting:
                oldest = next(iter(self._waiting))
                victim = self._live.get(oldest)
                self._forget(oldest)
                transport = None if victim is None else victim.transport
                if transport is not None:
                    transport.abort()
                self._closed_at(CLOSED_ACCEPT_LIMIT, "api_accept_limit", None, transport)
            else:
                self._closed_at(CLOSED_ACCEPT_LIMIT, "api_accept_limit", None, guarded.transport)
                return False
        protocol = guarded.inner
        self._live[protocol] = guarded
        loop = asyncio.get_running_loop()
        self._waiting[protocol] = loop.call_later(
            self._first_request_timeout, self._first_request_late, protocol
        )
        return True

    def _forget(self, protocol: RequestHandler) -> None:
        """A guarded connection is gone: no deadline, no place."""
        guarded = self._live.pop(protocol, None)
        if guarded is not None:
            guarded.end_request(guarded.deadline)
        self._stop_waiting(protocol)
        if protocol in self._open:
            self._leave(self._open.pop(protocol))

    def _leave(self, address: str | None) -> None:
        """A connection of `address` no longer holds a place."""
        if address is None:
            return
        left = self._by_address[address] - 1
        if left > 0:
            self._by_address[address] = left
        else:
            del self._by_address[address]

    def _first_request_late(self, protocol: RequestHandler) -> None:
        self._waiting.pop(protocol, None)
        guarded = self._live.get(protocol)
        if guarded is None or guarded.transport is None:
            return
        transport = guarded.transport
        self._forget(protocol)
        transport.abort()
        self._closed_at(
            CLOSED_FIRST_REQUEST_TIMEOUT,
            "api_first_request_timeout",
            None,
            transport,
            timeout_s=self._first_request_timeout,
        )

    def _start_request(self, guarded: _Guarded) -> None:
        """A request begins on the connection: it has `request_timeout` to be complete."""
        guarded.deadline = asyncio.get_running_loop().call_later(
            self._request_timeout, self._request_late, guarded
        )

    def _request_late(self, guarded: _Guarded) -> None:
        guarded.deadline = None
        transport = guarded.transport
        if transport is None or self._live.get(guarded.inner) is not guarded:
            return  # gone already
        path = guarded.path
        self._forget(guarded.inner)
        transport.abort()  # the handler reading the body gets a ConnectionResetError
        self._closed_at(
            CLOSED_REQUEST_TIMEOUT,
            "api_request_timeout",
            path,
            transport,
            timeout_s=self._request_timeout,
        )

    def _stop_waiting(self, protocol: RequestHandler) -> None:
        timer = self._waiting.pop(protocol, None)
        if timer is not None:
            timer.cancel()

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Any answer means a request came (the first-request deadline is met), also one given
        before the middlewares: a refused `Expect`, whose connection is counted as refused and
        closed soon after the answer (its unsent body is no late request)."""
        protocol = request.protocol
        self._stop_waiting(protocol)
        if not response.get(REFUSED_EXPECTATION, False):
            return
        self._ctx.hub.api_closed[CLOSED_EXPECT_REFUSED] += 1
        guarded = self._live.get(protocol)
        if guarded is None:
            return  # not accepted through a GuardedSite: aiohttp's lingering close bounds it
        guarded.closing = True
        guarded.end_request(guarded.deadline)
        asyncio.get_running_loop().call_later(REFUSED_LINGER_S, self._linger_over, guarded)

    def _linger_over(self, guarded: _Guarded) -> None:
        transport = guarded.transport
        if transport is None or self._live.get(guarded.inner) is not guarded:
            return  # the client closed it first
        self._forget(guarded.inner)
        transport.close()  # after the answer's bytes, if any are still buffered

    def _request_arrived(self, request: web.Request) -> _Guarded | None:
        """A request's headers are in: its connection is no longer waiting for a first request,
        and the request's deadline runs on until its body is in (at once without one)."""
        protocol = request.protocol
        self._stop_waiting(protocol)
        guarded = self._live.get(protocol)
        if guarded is None:
            return None  # not accepted through a GuardedSite (aiohttp's test server)
        guarded.busy = True
        body = request.content
        if body.is_eof():
            guarded.end_request(guarded.deadline)
            return guarded
        if guarded.deadline is None:  # it waited behind the previous request: its turn now
            self._start_request(guarded)
        guarded.path = request.path
        deadline = guarded.deadline
        body.on_eof(lambda: guarded.end_request(deadline))
        return guarded

    def _prune(self) -> None:
        self._open = {p: a for p, a in self._open.items() if p.transport is not None}
        self._by_address = Counter(a for a in self._open.values() if a is not None)

    def _admit(self, request: web.Request) -> str | None:
        """None when the request's connection holds a place (it takes one if free), else the
        reason it has none: the cap, or its address's share of it."""
        protocol = request.protocol
        if protocol in self._open:
            return None
        api = self._ctx.current_config.api
        address = request.remote
        per_address = api.max_connections_per_address
        held = 0 if address is None else self._by_address[address]
        if len(self._open) >= api.max_connections or held >= per_address:
            self._prune()
            held = 0 if address is None else self._by_address[address]
        if len(self._open) >= api.max_connections:
            return CLOSED_LIMIT
        if held >= per_address:
            return CLOSED_CLIENT_LIMIT
        self._open[protocol] = address
        if address is not None:
            self._by_address[address] = held + 1
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        guarded = self._request_arrived(request)
        response: web.StreamResponse | None = None
        try:
            response = await self._answer(request, handler)
            return response
        finally:
            if guarded is not None:
                guarded.busy = False  # bytes from now on begin the next request
                if response is not None and response.keep_alive and not request.body_exists:
                    self._next_turn(guarded)

    def _next_turn(self, guarded: _Guarded) -> None:
        """A request without a body is answered on a connection that stays open: when the
        bytes received so far do not end with an empty line, they end inside a next request
        (pipelined behind this one, or sent while it was answered), whose deadline runs from
        now, its turn (no byte of it may come again to start one)."""
        if guarded.deadline is None and not guarded.at_break and guarded.transport is not None:
            self._start_request(guarded)

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = self._admit(request)
        if refused is None:
            response = await handler(request)
        elif request.path.startswith(_EXEMPT_PREFIXES):
            response = await handler(request)
            response.force_close()
        else:
            response = self._refuse(refused, request)
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

    def _refuse(self, reason: str, request: web.Request) -> web.Response:
        """The answer to a request on a connection over the cap or its address's share of it:
        counted, logged at most once a minute, and its connection closed after it."""
        api = self._ctx.current_config.api
        if reason == CLOSED_LIMIT:
            self._closed(
                reason, "api_connection_limit", request, max_connections=api.max_connections
            )
            status, code = 503, "too_many_connections"
            message = "the API serves at most api.max_connections connections; retry shortly"
        else:
            self._closed(
                reason,
                "api_client_connection_limit",
                request,
                max_connections_per_address=api.max_connections_per_address,
            )
            status, code = 429, "too_many_client_connections"
            message = (
                f"this address holds {api.max_connections_per_address} connections already, the"
                " most api.max_connections_per_address lets one address hold; use one of them,"
                " or retry once one is closed"
            )
        response = error_response(
            status, code, message, {"Retry-After": "1", "Cache-Control": NO_STORE}
        )
        response.force_close()
        return response

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
        self._closed_at(reason, event, request.path, None, remote=request.remote, **fields)

    def _closed_at(
        self,
        reason: str,
        event: str,
        path: str | None,
        transport: asyncio.BaseTransport | None,
        **fields: Any,
    ) -> None:
        self._ctx.hub.api_closed[reason] += 1
        closed = self._log_every_minute.due(reason, time.monotonic())
        if closed is None:
            return
        if transport is not None:
            peer = transport.get_extra_info("peername")
            fields["remote"] = peer[0] if isinstance(peer, tuple) else None
        if path is not None:
            fields["path"] = path
        # closed: since the last such line, this one included
        _log.warning(event, closed=closed, **fields)


#: The application's `Limits` (its `connections` is the count held against the cap).
LIMITS = web.AppKey("oracled_api_limits", Limits)


_LINE_ENDS = b"\r\n"
_EMPTY_LINE = b"\r\n\r\n"


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, seen by `Limits` from accept to close."""

    __slots__ = (
        "_limits",
        "_run",
        "_served",
        "at_break",
        "busy",
        "closing",
        "deadline",
        "inner",
        "path",
        "transport",
    )

    def __init__(self, inner: RequestHandler, limits: Limits) -> None:
        self.inner = inner
        self._limits = limits
        self._served = False
        self.transport: asyncio.Transport | None = None
        #: A request is being answered (from its headers to its answer's end).
        self.busy = False
        #: The running request's deadline, until its body is in.
        self.deadline: asyncio.TimerHandle | None = None
        #: The running request's path, once its headers are in (for the log line).
        self.path: str | None = None
        #: Its request's expectation was refused: no request follows on the connection, and
        #: bytes that come (the body sent anyway) start no deadline.
        self.closing = False
        #: The bytes received so far end with an empty line (CRLF CRLF, then line ends only):
        #: after a request without a body, none of a next request is waiting in the parser.
        self.at_break = True
        self._run = b""  # the last (up to 3) bytes of the line ends that end the bytes so far

    def end_request(self, deadline: asyncio.TimerHandle | None) -> None:
        """The request that `deadline` bounds is in (or the connection gone): no deadline."""
        if deadline is not None and deadline is self.deadline:
            deadline.cancel()
            self.deadline = None
            self.path = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP server's: uvloop's has Transport's methods without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        if not self._limits._accept(self):
            self.transport.abort()  # aiohttp never sees it
            return
        self._served = True
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._limits._forget(self.inner)
        self.transport = None
        if self._served:
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and data[-1] not in _LINE_ENDS:  # the usual body or frame: ends inside a line
            self.at_break = False
            self._run = b""
            text = True
        else:  # ends with line ends: is an empty line among them (headers complete)?
            end = len(data.rstrip(_LINE_ENDS))
            run = data[end:] if end else self._run + data
            self.at_break = _EMPTY_LINE in run or (not end and self.at_break)
            self._run = run[-3:]
            text = end > 0
        # The first bytes of a request; line ends alone are none: the parser skips an empty line
        # before a request (RFC 9112 2.2), which clients have sent after a POST's body.
        if text and self.deadline is None and not (self.busy or self.closing):
            self._limits._start_request(self)
        self.inner.data_received(data)

    def eof_received(self) -> None:
        self.inner.eof_received()  # None: the transport closes

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class GuardedSite(web.BaseSite):
    """A TCP listening socket whose connections `Limits` sees from accept (aiohttp's TCPSite
    hands them to the application only once a request's headers are in)."""

    __slots__ = ("_host", "_port", "_reuse_address")

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, *, reuse_address: bool = True
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._reuse_address = reuse_address

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the kernel's pick for 0)."""
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        runner = self._runner
        assert isinstance(runner, web.AppRunner)
        server = runner.server
        assert server is not None
        limits: Limits = runner.app[LIMITS]

        def guarded() -> asyncio.Protocol:
            return _Guarded(server(), limits)

        self._server = await asyncio.get_running_loop().create_server(
            guarded, self._host, self._port, reuse_address=self._reuse_address
        )
