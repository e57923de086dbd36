"""Operational endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import asyncio
import math
from importlib import resources

from aiohttp import web

from oracled.api.context import ApiContext
from oracled.api.encoding import Body, body_response
from oracled.api.errors import json_response
from oracled.model import Status

__all__ = ["OpsHandlers", "openapi_document"]


def openapi_document() -> bytes:
    """The OpenAPI 3.1 document shipped with the package (served as it is)."""
    return resources.files("oracled.api").joinpath("openapi.json").read_bytes()


class OpsHandlers:
    __slots__ = ("_ctx", "_openapi", "_render")

    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx
        self._openapi = Body(openapi_document())
        self._render: asyncio.Future[tuple[bytes, str]] | None = None  # the render in flight

    async def healthz(self, request: web.Request) -> web.Response:
        """The process and its event loop answer; says nothing about prices (see /readyz)."""
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """200 once enough markets are live in the latest round, else 503; both with counts."""
        ctx = self._ctx
        total = len(ctx.current_config.markets)
        # ceil with a little slack so that 0.5 of 4 markets needs 2, not 3 from rounding noise.
        required = math.ceil(ctx.current_config.api.ready_fraction * total - 1e-9)
        result = ctx.hub.latest_result
        live = 0 if result is None else int((result.status <= Status.DEGRADED).sum())
        ready = result is not None and live >= required
        body = {
            "ready": ready,
            "live": live,
            "markets": total,
            "required": required,
            "round": None if result is None else result.round,
        }
        return json_response(body, 200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus exposition; rendering walks every collector, so it runs off the loop.

        Scrapes that arrive while a render is running share it: a storm of scrapes costs one
        render at a time, where each used to start its own and their threads took the GIL from
        the round loop (50 clients scraping in a loop delayed rounds by up to 250 ms)."""
        pending = self._render
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = self._render = loop.run_in_executor(None, self._ctx.render_metrics)
            pending.add_done_callback(self._rendered)
        # shield: a scraper that goes away must not cancel the render the others wait for.
        body, content_type = await asyncio.shield(pending)
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _rendered(self, done: asyncio.Future[tuple[bytes, str]]) -> None:
        self._render = None
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone away before it failed

    async def openapi(self, request: web.Request) -> web.Response:
        return await body_response(request, self._openapi)
