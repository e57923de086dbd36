"""Every API error leaves as `{"error": {"code": ..., "message": ...}}`, whatever raised it.

Handlers raise `ApiError`; the middleware also translates aiohttp's own HTTP exceptions (no such
route, wrong method) and anything unexpected (500, logged), so no HTML error page ever leaks out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import msgspec
import structlog
from aiohttp import HttpVersion11, web

from oracled.errors import OracledError

__all__ = [
    "ApiError",
    "encode_json",
    "error_middleware",
    "error_response",
    "expect_handler",
    "json_response",
    "no_store_middleware",
    "refused_expectation",
]

_log = structlog.get_logger(component="api")
_ENCODER = msgspec.json.Encoder()
encode_json = _ENCODER.encode

# Codes for aiohttp's own exceptions, by status.
_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}

#: Every answer: a price a cache keeps is a frozen price served as the latest, and an error (a
#: 503 not_ready, a 404) kept by a cache would outlive its cause. no-cache is not enough: it lets
#: a cache store the answer and decide when to revalidate.
NO_STORE = "no-store"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Marks an answer that refuses a request's expectation before its body (`refused_expectation`).
REFUSED_EXPECTATION = web.ResponseKey("oracled_refused_expectation", bool)


class ApiError(OracledError):
    """An error answer: HTTP status, machine-readable code, human message."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        super().__init__(f"{status} {code}: {message}")


def json_response(body: object, status: int = 200) -> web.Response:
    """A JSON response; `bytes` are sent as they are (already encoded)."""
    data = body if isinstance(body, bytes) else encode_json(body)
    return web.Response(body=data, status=status, content_type="application/json")


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    response = json_response({"error": {"code": code, "message": message}}, status)
    if headers:
        response.headers.update(headers)
    return response


def _not_found(request: web.Request) -> str:
    """The 404's words. A request target that is no path (CONNECT's `host:port`, `OPTIONS *`)
    has an empty or meaningless `path`: name the method and target as sent instead, and say
    what the API serves (it is no proxy)."""
    if request.path.startswith("/"):
        return f"no endpoint at {request.path[:100]}; see /openapi.json"
    return (
        f"{request.method} {request.raw_path[:100]} names no path; this API serves paths"
        " such as /v1/prices and is no proxy; see /openapi.json"
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _CODES.get(exc.status, "http_error")
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
        message = exc.reason
        if exc.status == 404:
            message = _not_found(request)
        elif exc.status == 405:
            message = f"{request.method} is not allowed here; use {keep.get('Allow', '?')}"
        return error_response(exc.status, code, message, keep)
    except Exception:
        # The one catch-all of the API: log with the traceback, answer a bare 500.
        _log.exception("api_handler_failed", path=request.path, method=request.method)
        return error_response(500, "internal", "internal error; see the daemon's log")


@web.middleware
async def no_store_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Mark every answer not to be stored by any cache (outside the error middleware: errors are
    answers too; the connection cap's own 503 sets it itself).

    Streams set the header themselves: their headers are sent before the handler returns.
    """
    response = await handler(request)
    if not response.prepared:
        response.headers.setdefault("Cache-Control", NO_STORE)
    return response


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def refused_expectation(response: web.Response) -> web.Response:
    """An `Expect` handler's refusal (a 417, or the admin routes' 401 or 403 in place of the
    100): its connection closes after it, so that a body the client sends anyway is no next
    request, and the connection limits count it as refused, not its unsent body as late."""
    response[REFUSED_EXPECTATION] = True
    response.force_close()
    return response


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """Every route's `Expect` handler (aiohttp's `expect_handler`, run before the middlewares).

    `100-continue` is answered with the interim 100 as aiohttp's own handler does; any other
    expectation is a 417 in the API's error shape, where aiohttp's answer is plain text. HTTP/1.0
    has no expectations (RFC 9110 10.1.1): ignored, as aiohttp does.
    """
    if request.version < HttpVersion11:
        return None
    expect = request.headers.get("Expect", "")
    if expect.strip().lower() == "100-continue":
        await request.writer.write(_CONTINUE)
        request.writer.output_size = 0  # the answer proper has not started (aiohttp does so)
        return None
    response = error_response(
        417,
        "expectation_failed",
        f"Expect: {expect[:64]!r} cannot be met; only 100-continue is",
        {"Cache-Control": NO_STORE},  # the middlewares that set it do not run for this answer
    )
    return refused_expectation(response)
