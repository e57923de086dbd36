"""The HTTP and WebSocket API (aiohttp), described by the OpenAPI document it serves."""

from oracled.api.app import CONTEXT, LIMITS, OPS, READ, build_app
from oracled.api.context import ApiContext
from oracled.api.errors import ApiError

__all__ = ["CONTEXT", "LIMITS", "OPS", "READ", "ApiContext", "ApiError", "build_app"]
