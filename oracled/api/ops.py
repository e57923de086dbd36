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
    __slots__ = ("_ctx", "_openapi")

    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx
        self._openapi = Body(openapi_document())

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
        """Prometheus exposition; rendering walks every collector, so it runs off the loop."""
        loop = asyncio.get_running_loop()
        body, content_type = await loop.run_in_executor(None, self._ctx.render_metrics)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def openapi(self, request: web.Request) -> web.Response:
        return await body_response(request, self._openapi)
