"""Cross-origin reads for browser dashboards (CORS), off unless `api.cors_origins` lists some.

A listed origin (or any, with `"*"`) may read every GET endpoint, errors and the event stream
included: the answer carries `Access-Control-Allow-Origin` (the origin itself, with `Vary:
Origin`, or `*`). A preflight OPTIONS for GET or HEAD from such an origin is answered 204. The
admin endpoints never carry these headers and never answer a preflight: a page on another
origin must not be able to pause a market with a token it got hold of. No credentials are
allowed: the read endpoints take none. The list is read from the config in force per request.

A browser opens a WebSocket to any origin without asking (no preflight, and the page reads
what the server sends whatever its headers), so the stream checks the `Origin` a browser sends
itself (`refused_origin`): a page of its own origin or a listed one may open it, any other is
refused. A client that sends no `Origin` is no browser page, and goes on as before.
"""

from __future__ import annotations

from collections.abc import Collection

from aiohttp import web

from oracled.api.context import ApiContext
from oracled.api.errors import Handler

__all__ = ["Cors", "refused_origin"]

_ADMIN = "/v1/admin/"
_METHODS = "GET, HEAD"
# Request headers a dashboard may set on a GET (EventSource resends Last-Event-ID).
_HEADERS = "Accept, Cache-Control, Last-Event-ID"
_MAX_AGE = "600"


def refused_origin(request: web.Request, origins: Collection[str]) -> str | None:
    """The `Origin` of a WebSocket handshake that a page of another, unlisted origin sent, or
    None when it may go on: no `Origin` (not a browser page), one listed in `origins` (any with
    `*`), or the API's own (its scheme's host and port are the `Host` asked for, as a browser
    page served through the same host name sends it)."""
    origin = request.headers.get("Origin")
    if origin is None or "*" in origins or origin in origins:
        return None
    scheme, sep, authority = origin.partition("://")
    host = request.headers.get("Host")
    if host is None or not sep or scheme.lower() not in ("http", "https"):
        return origin
    return None if authority.lower() == host.strip().lower() else origin


class Cors:
    """The preflight middleware and the response-prepare hook that adds the headers."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx

    def _allowed(self, request: web.Request) -> str | None:
        """The Access-Control-Allow-Origin value for this request, or None for none."""
        origins = self._ctx.current_config.api.cors_origins
        if not origins or request.path.startswith(_ADMIN):
            return None
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        if "*" in origins:
            return "*"
        return origin if origin in origins else None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer a CORS preflight for an existing GET path; anything else goes on as before."""
        if (
            request.method == "OPTIONS"
            and request.headers.get("Access-Control-Request-Method") in ("GET", "HEAD")
            and self._allowed(request) is not None
        ):
            error = request.match_info.http_exception
            # A path that exists answers OPTIONS with 405 (no such route): only then is a
            # preflight answered; an unknown path stays a 404.
            if isinstance(error, web.HTTPMethodNotAllowed) and "GET" in error.allowed_methods:
                response = web.Response(status=204, body=b"")
                response.headers["Access-Control-Allow-Methods"] = _METHODS
                response.headers["Access-Control-Allow-Headers"] = _HEADERS
                response.headers["Access-Control-Max-Age"] = _MAX_AGE
                return response
        return await handler(request)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Add the CORS headers just before any answer's headers are sent (streams too)."""
        origins = self._ctx.current_config.api.cors_origins
        if not origins or request.path.startswith(_ADMIN):
            return
        allow = self._allowed(request)
        if allow is not None:
            response.headers["Access-Control-Allow-Origin"] = allow
        if "*" not in origins:  # the answer depends on Origin
            vary = response.headers.get("Vary")
            response.headers["Vary"] = "Origin" if not vary else f"{vary}, Origin"
