"""Operational endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from importlib import resources

from aiohttp import web

from oracled.api.context import ALIVE_ROUNDS, READY_ROUNDS, ApiContext
from oracled.api.encoding import MIN_GZIP, Body, accepts_gzip, counted_response, gzip_bytes
from oracled.api.errors import json_response
from oracled.model import Status

__all__ = ["ALIVE_ROUNDS", "READY_ROUNDS", "OpsHandlers", "openapi_document"]


def openapi_document() -> bytes:
    """The OpenAPI 3.1 document shipped with the package (served as it is)."""
    return resources.files("oracled.api").joinpath("openapi.json").read_bytes()


class _Scrape:
    """One render of the exposition and, when a scraper asked for it, its gzip form.

    Prometheus asks for gzip on every scrape; 1,000 markets x 10 sources are about 2 MB of
    text and about 10 times less gzipped. Both the render and the compression run in a worker
    thread, and every scrape that shares the render shares its compression.
    """

    __slots__ = ("_pack", "_packing", "content_type", "packed", "plain")

    def __init__(
        self, plain: bytes, content_type: str, pack: Callable[[bytes], bytes], compress: bool
    ) -> None:
        self.plain = plain
        self.content_type = content_type
        self._pack = pack
        self.packed = pack(plain) if compress and len(plain) >= MIN_GZIP else None
        self._packing: asyncio.Future[bytes] | None = None

    async def gzip(self) -> bytes | None:
        """The gzip form; made now, off the loop, if the render was started for a scraper that
        did not ask for it. None for a body too small to be worth it."""
        if len(self.plain) < MIN_GZIP:
            return None
        if self.packed is None:
            if self._packing is None:
                loop = asyncio.get_running_loop()
                self._packing = loop.run_in_executor(None, self._pack, self.plain)
            self.packed = await asyncio.shield(self._packing)
        return self.packed


class OpsHandlers:
    __slots__ = ("_ctx", "_openapi", "_render")

    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx
        self._openapi = Body(openapi_document())
        self._render: asyncio.Future[_Scrape] | None = None  # the render in flight

    @property
    def compressions(self) -> int:
        """/metrics bodies gzipped, at most once per render. The hub holds the count, where
        /metrics reads it (`oracled_api_metrics_gzipped_total`)."""
        return self._ctx.hub.metrics_gzipped

    async def healthz(self, request: web.Request) -> web.Response:
        """The event loop answers and the round loop publishes; says nothing about prices."""
        age = self._ctx.round_age_s()
        limit = self._ctx.round_limit_s(ALIVE_ROUNDS, self._ctx.alive_min_s)
        if age is None or age <= limit:
            return json_response({"status": "ok"})
        result = self._ctx.hub.latest_result
        body = {
            "status": "stalled",
            "reason": f"no round for {age:.1f} s (limit {limit:g} s): the round loop is stuck",
            "round": None if result is None else result.round,
            "round_age_s": round(age, 3),
        }
        return json_response(body, 503)

    async def readyz(self, request: web.Request) -> web.Response:
        """200 while enough markets are live in a recent round, else 503 with the reason."""
        ctx = self._ctx
        total = len(ctx.current_config.markets)
        # ceil with a little slack so that 0.5 of 4 markets needs 2, not 3 from rounding noise.
        required = math.ceil(ctx.current_config.api.ready_fraction * total - 1e-9)
        result = ctx.hub.latest_result
        live = 0 if result is None else int((result.status <= Status.DEGRADED).sum())
        age = None if result is None else ctx.round_age_s()
        stalled = None if result is None else ctx.stalled()  # the price endpoints' test and words
        if result is None:
            reason: str | None = "no round yet"
        elif stalled is not None:
            reason = stalled
        elif live < required:
            reason = f"{live} of {total} markets live, {required} required"
        else:
            reason = None
        body = {
            "ready": reason is None,
            "live": live,
            "markets": total,
            "required": required,
            "round": None if result is None else result.round,
            "round_age_s": None if age is None else round(age, 3),
            "reason": reason,
        }
        return json_response(body, 200 if reason is None else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus exposition; rendering walks every collector, so it runs off the loop.

        Scrapes that arrive while a render is running share it: a storm of scrapes costs one
        render at a time, where each used to start its own and their threads took the GIL from
        the round loop (50 clients scraping in a loop delayed rounds by up to 250 ms).
        Gzipped for a scraper that asks (Prometheus does), in the render's thread."""
        wants_gzip = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        pending = self._render
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = self._render = loop.run_in_executor(None, self._scrape, wants_gzip)
            pending.add_done_callback(self._rendered)
        # shield: a scraper that goes away must not cancel the render the others wait for.
        scrape = await asyncio.shield(pending)
        headers = {"Content-Type": scrape.content_type, "Vary": "Accept-Encoding"}
        body = scrape.plain
        if wants_gzip:
            packed = await scrape.gzip()
            if packed is not None:
                body = packed
                headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    def _scrape(self, compress: bool) -> _Scrape:
        """Render (and gzip, if the scraper that started the render asked): a worker thread."""
        plain, content_type = self._ctx.render_metrics()
        return _Scrape(plain, content_type, self._gzip, compress)

    def _gzip(self, plain: bytes) -> bytes:
        # The render's thread; one render runs at a time, so one thread counts at a time.
        self._ctx.hub.metrics_gzipped += 1
        return gzip_bytes(plain)

    def _rendered(self, done: asyncio.Future[_Scrape]) -> None:
        self._render = None
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone away before it failed

    async def openapi(self, request: web.Request) -> web.Response:
        """The document, gzipped once for every client that takes it, that compression counted
        as the read answers' are (`oracled_api_bodies_gzipped_total`)."""
        response, _ = await counted_response(request, self._openapi, self._ctx.hub)
        return response
