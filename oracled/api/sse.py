"""`GET /v1/events`: the report stream as Server-Sent Events, for consumers without WebSockets.

One-way, so the subscription is the query: `?markets=BTC/USD,ETH/USD` (default: every market),
optional `signed=true`, `deviation=0.001` and `heartbeat_ms=5000` with the same meaning as on the
WebSocket stream. Each event is `data: <frame>` where the frame is exactly the WebSocket stream's
JSON (`{"type": "report", ...}` or `{"type": "signed", ...}`), the hub's shared bytes; opened
while the round loop is stalled, it starts with the `stalled` error frame instead of the latest
round's snapshot, as a plain event (the stream goes on with the next round; signed, the
StallNotice, on a `signed=true` stream, as on the WebSocket); a `signed=true`
stream opened while no round is signed past the limit starts with the signed `stalled` frame
(`Hub.signed_stalled`). A comment
line every 15 s keeps proxies from timing the connection out; a client that leaves frees its
subscription within a second, written to or not. A client that falls behind by more
than its queue gets a final `event: error` naming the reason and the stream ends; its memory is
freed at once, as on the WebSocket stream, and a client that reads nothing for
`api.send_timeout_s` after that (its handler waiting on a write) has its connection aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Mapping

import structlog
from aiohttp import web

from oracled.api.context import ApiContext
from oracled.api.errors import NO_STORE, ApiError, encode_json
from oracled.api.params import market_list, query_once
from oracled.api.stallwatch import StallWatch
from oracled.lograte import LogEveryMinute
from oracled.publish.hub import DROP_SHUTDOWN, DROP_SLOW, Subscription, SubscriptionClosed

__all__ = ["SseHandler"]

_log = structlog.get_logger(component="api.sse")

KEEPALIVE_S = 15.0
#: How often a quiet stream looks whether its client is still there. The daemon's handlers are
#: not cancelled when their client leaves (aiohttp's default), and a stream learns it only when
#: a write fails: without a look, a client that left held its subscription, which fans rounds
#: out and no longer counts against `api.max_connections`, until the next keep-alive.
GONE_CHECK_S = 1.0
_PARAMETERS = frozenset({"markets", "signed", "deviation", "heartbeat_ms"})
_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": NO_STORE,
    "X-Accel-Buffering": "no",  # tell reverse proxies not to buffer the stream
}


# float() and int() also read `1_000`, spaces, a sign and any script's digits: a number in a
# query is plain ASCII, as the document's integer and number types say.
_DIGITS = re.compile(r"[0-9]{1,9}")
_DECIMAL = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")


def _bad_option(query: Mapping[str, str], name: str, want: str) -> ApiError:
    """The 400 for one option, naming it and what it was given: a client that sent both
    `deviation` and `heartbeat_ms` is told which one to fix."""
    return ApiError(400, "bad_query", f"{name}: {want}, not {query[name][:64]!r}")


def _number(query: Mapping[str, str], name: str, pattern: re.Pattern[str], want: str) -> float:
    """A plain ASCII number (`1_000`, a sign, spaces or other scripts' digits are refused)."""
    text = query[name]
    if pattern.fullmatch(text) is None:
        raise _bad_option(query, name, want)
    return float(text)


class SseHandler:
    __slots__ = ("_active", "_ctx", "_dropped_log", "_shutting_down", "_stall")

    def __init__(self, ctx: ApiContext, stall: StallWatch) -> None:
        self._ctx = ctx
        self._stall = stall
        self._active: set[Subscription] = set()
        self._shutting_down = False
        self._dropped_log = LogEveryMinute()  # a client can stall on purpose, again and again

    def _options(self, request: web.Request) -> tuple[frozenset[str] | None, dict[str, object]]:
        query = query_once(request.query, _PARAMETERS)
        markets: frozenset[str] | None = None
        if "markets" in query:
            items = [m for m in query["markets"].split(",") if m.strip()]
            markets = frozenset(market_list(items, self._ctx.core.index))
        options: dict[str, object] = {}
        signed = query.get("signed")
        if signed is not None:
            if signed not in ("true", "false"):
                raise ApiError(400, "bad_query", "signed: true or false")
            if signed == "true" and self._ctx.hub.signer is None:
                raise ApiError(400, "signing_disabled", "this daemon does not sign its rounds")
            options["signed"] = signed == "true"
        if "deviation" in query:
            deviation = _number(query, "deviation", _DECIMAL, "a fraction in (0, 1)")
            if not 0.0 < deviation < 1.0:
                raise _bad_option(query, "deviation", "a fraction in (0, 1)")
            options["deviation"] = deviation
        if "heartbeat_ms" in query:
            heartbeat = int(_number(query, "heartbeat_ms", _DIGITS, "an integer 1 to 86400000"))
            if not 1 <= heartbeat <= 86_400_000:
                raise _bad_option(query, "heartbeat_ms", "an integer 1 to 86400000")
            options["heartbeat_ms"] = heartbeat
        return markets, options

    async def events(self, request: web.Request) -> web.StreamResponse:
        markets, options = self._options(request)
        response = web.StreamResponse(headers=_HEADERS)
        await response.prepare(request)
        hub = self._ctx.hub
        # Options first, markets second: the snapshot of the latest reports is then sent as the
        # frames asked for (a signed stream never starts with an unsigned report).
        sub = hub.subscribe(frozenset())
        if options:
            hub.configure(sub, **options)  # type: ignore[arg-type]
        # While the round loop is stalled, the `stalled` frame instead of the latest round's
        # snapshot (not `event: error`: the stream goes on, with the next round); told with
        # every subscriber, it comes through the subscription like any frame.
        stalled = self._stall.frame() is not None
        hub.change(sub, markets, snapshot=not stalled)
        told = self._stall.tell(sub) if stalled else None
        self._active.add(sub)
        cut = asyncio.create_task(self._cut_when_dropped(request, sub), name="api-sse-dropped")
        try:
            await response.write(b": oracled report stream\n\n")
            if told is not None:
                await response.write(b"data: " + told + b"\n\n")
            quiet = 0.0  # seconds since the last write
            while True:
                try:
                    async with asyncio.timeout(GONE_CHECK_S):
                        frame = await sub.get()
                except TimeoutError:
                    if request.transport is None:  # the client left: no write will say so
                        break
                    quiet += GONE_CHECK_S
                    if quiet >= KEEPALIVE_S:
                        await response.write(b": keep-alive\n\n")
                        quiet = 0.0
                    continue
                await response.write(b"data: " + frame + b"\n\n")
                quiet = 0.0
        except SubscriptionClosed as closed:
            # The server's own shutdown unsubscribes (not a drop, as on the WebSocket stream);
            # the client is told `shutdown` either way, never the hub's internal word.
            if closed.reason == DROP_SLOW and not self._shutting_down:
                reason = DROP_SLOW
                message = f"slow consumer: fell more than {sub.queue_size} frames behind"
            else:
                reason, message = DROP_SHUTDOWN, "server shutting down"
            error = encode_json({"type": "error", "code": reason, "message": message})
            # The consumer may be leaving as well: then there is no one to tell.
            with contextlib.suppress(ConnectionError):
                await response.write(b"event: error\ndata: " + error + b"\n\n")
        except (ConnectionError, asyncio.CancelledError):
            # ConnectionError, not only ConnectionResetError: a write pending when the client
            # resets raises aiohttp's bare ConnectionError("Connection lost").
            pass
        finally:
            cut.cancel()
            if sub.closed_reason == DROP_SLOW and not self._shutting_down:
                # Logged as on the WebSocket stream: the count alone names no consumer.
                dropped = self._dropped_log.due(DROP_SLOW, time.monotonic())
                if dropped is not None:
                    _log.info(
                        "stream_dropped", reason=DROP_SLOW, remote=request.remote, dropped=dropped
                    )
            self._active.discard(sub)
            hub.unsubscribe(sub)
        return response

    async def _cut_when_dropped(self, request: web.Request, sub: Subscription) -> None:
        """A slow consumer dropped while the handler waits on a write the client does not read:
        abort the connection send_timeout_s later, as the WebSocket stream closes such a
        consumer; otherwise it and its buffers are held for as long as the client keeps the
        socket open. A client that reads on in time gets the final error event instead, and
        this task is cancelled."""
        if await sub.wait_closed() != DROP_SLOW or self._shutting_down:
            return
        await asyncio.sleep(self._ctx.current_config.api.send_timeout_s)
        if request.transport is not None:
            request.transport.abort()  # close() would keep the unsent bytes until they drain

    async def shutdown(self, app: web.Application) -> None:
        """End every event stream with a final `shutdown` error event."""
        self._shutting_down = True
        for sub in list(self._active):
            self._ctx.hub.unsubscribe(sub)
