"""`build_app`: the aiohttp application and its routing table (the OpenAPI document mirrors it)."""

from __future__ import annotations

from aiohttp import web

from oracled.api.admin import AdminHandlers
from oracled.api.badrequests import ServerLog
from oracled.api.context import ApiContext
from oracled.api.cors import Cors
from oracled.api.errors import Handler, error_middleware, expect_handler, no_store_middleware
from oracled.api.hosts import HostCheck
from oracled.api.limits import FIRST_REQUEST_TIMEOUT_S, LIMITS, REQUEST_TIMEOUT_S, Limits
from oracled.api.ops import OpsHandlers
from oracled.api.read import ReadHandlers
from oracled.api.sse import SseHandler
from oracled.api.stallwatch import StallWatch
from oracled.api.stream import HEARTBEAT_S, StreamHandler

__all__ = ["CONTEXT", "LIMITS", "OPS", "READ", "build_app"]

CONTEXT = web.AppKey("oracled_api_context", ApiContext)
#: The read handlers (their `compressions` count shows that a body is gzipped once).
READ = web.AppKey("oracled_api_read", ReadHandlers)
#: The ops handlers (their `compressions` count shows that a `/metrics` render is gzipped once).
OPS = web.AppKey("oracled_api_ops", OpsHandlers)
MAX_BODY = 16 * 1024  # admin bodies are a few bytes; nothing else takes one
#: What every answer names as its server: the product, no versions (aiohttp would name itself
#: and the Python and aiohttp versions, which tells a scanner which advisories to try).
SERVER = "oracled"


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    """Set before aiohttp writes the headers, whose own `Server` is only a default."""
    response.headers["Server"] = SERVER


def build_app(
    ctx: ApiContext,
    *,
    stream_close_timeout: float = 5.0,
    stream_heartbeat: float = HEARTBEAT_S,
    first_request_timeout: float = FIRST_REQUEST_TIMEOUT_S,
    request_timeout: float = REQUEST_TIMEOUT_S,
) -> web.Application:
    """The API application. The caller runs it (AppRunner + `GuardedSite`, whose connections
    the first-request and request deadlines and the accept limit apply to) and owns the hub."""
    # Outermost: it writes the finished answer under its deadline.
    limits = Limits(ctx, first_request_timeout, request_timeout)
    cors = Cors(ctx)
    # Next: a request naming another host (DNS rebinding) is refused before anything reads it.
    hosts = HostCheck(ctx)
    app = web.Application(
        middlewares=[
            limits.middleware,
            hosts.middleware,
            no_store_middleware,
            cors.middleware,
            error_middleware,
        ],
        client_max_size=MAX_BODY,
        # A client's unparseable bytes: counted, logged once a minute, no traceback.
        handler_args={"logger": ServerLog(ctx)},
    )
    app.on_response_prepare.append(cors.on_prepare)
    app.on_response_prepare.append(limits.on_prepare)
    app.on_response_prepare.append(_server_header)
    app[CONTEXT] = ctx
    app[LIMITS] = limits
    read, ops, admin = ReadHandlers(ctx), OpsHandlers(ctx), AdminHandlers(ctx)
    app[READ] = read
    app[OPS] = ops
    # Tells the streams' subscribers when the round loop stalls; the streams ask it too.
    stall = StallWatch(ctx)
    app.on_startup.append(stall.start)
    app.on_cleanup.append(stall.stop)
    stream = StreamHandler(
        ctx, stall, close_timeout=stream_close_timeout, heartbeat=stream_heartbeat
    )
    app.on_shutdown.append(stream.shutdown)
    sse = SseHandler(ctx, stall)
    app.on_shutdown.append(sse.shutdown)
    router = app.router

    def add_get(path: str, handler: Handler, *, allow_head: bool = True) -> None:
        router.add_get(path, handler, allow_head=allow_head, expect_handler=expect_handler)

    def add_admin(path: str, handler: Handler) -> None:
        # Its Expect handler checks the token before a 100 Continue invites the body.
        router.add_post(path, handler, expect_handler=admin.expect)

    # GET routes answer HEAD too (RFC 9110 9.1; probes use it), except the two streams.
    add_get("/healthz", ops.healthz)
    add_get("/readyz", ops.readyz)
    add_get("/metrics", ops.metrics)
    add_get("/openapi.json", ops.openapi)
    add_get("/v1/info", read.info)
    add_get("/v1/prices", read.prices)
    add_get("/v1/prices/{market}", read.price)
    add_get("/v1/markets", read.markets)
    add_get("/v1/markets/{market}/sources", read.sources)
    add_get("/v1/stream", stream.stream, allow_head=False)
    add_get("/v1/events", sse.events, allow_head=False)
    add_admin("/v1/admin/markets/{market}/pause", admin.pause)
    add_admin("/v1/admin/markets/{market}/resume", admin.resume)
    add_admin("/v1/admin/reload", admin.reload)
    return app
