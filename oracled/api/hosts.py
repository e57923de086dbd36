"""The `Host` check: a request names this API, or a name the operator listed, or it is refused.

A browser page whose host name an attacker's DNS points at the daemon's address (DNS rebinding)
is, to the browser, of the same origin as the API: it reads every answer and may send any
request, from a victim's machine that reaches a daemon bound to loopback or a private network.
What gives it away is the `Host` it names, the attacker's. So a request is answered only when its
`Host` is the API's own: an IP address (a page can name one only by being served from it: no DNS
is asked), `localhost` (resolved on the machine, RFC 6761), the listen host, or a name in
`api.allowed_hosts` (`.example.com`: the names under it; `*`: any, for a proxy that checks the
names itself). Any port. A request without `Host` (HTTP/1.0) comes from no browser, and goes on.

Any other is answered 403 `host_refused` and its connection closed, counted as
`oracled_api_connections_closed_total{reason="host_refused"}` and logged as `api_host_refused`
at most once a minute (any page can make a browser send such requests again and again). The list
is read from the config in force on each request, so a reload changes it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

import structlog
from aiohttp import web

from oracled.api.context import ApiContext
from oracled.api.errors import NO_STORE, Handler, error_response
from oracled.api.limits import CLOSED_HOST_REFUSED
from oracled.lograte import LogEveryMinute

__all__ = ["HostCheck", "host_allowed", "host_name"]

_OWN = "localhost"

_log = structlog.get_logger(component="api")


def host_name(host: str) -> str:
    """The name of a `Host` value without its port, lower case, without a final dot (an IPv6
    address without its brackets)."""
    host = host.strip()
    if host.startswith("["):
        name, _, _ = host[1:].partition("]")
        return name.lower()
    name, sep, port = host.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit():
        name = host
    return name.rstrip(".").lower()


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(host: str, allowed: Collection[str], listen_host: str | None) -> bool:
    """Whether a request whose `Host` is `host` names the API (module docstring)."""
    if "*" in allowed:
        return True
    name = host_name(host)
    if not name:
        return False
    if name == _OWN or _is_address(name):
        return True
    if listen_host is not None and name == listen_host.rstrip(".").lower():
        return True
    for entry in allowed:
        entry = entry.rstrip(".").lower()
        if name == entry or (entry.startswith(".") and name.endswith(entry)):
            return True
    return False


class HostCheck:
    """The middleware that refuses a request naming another host."""

    __slots__ = ("_ctx", "_log_every_minute")

    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx
        self._log_every_minute = LogEveryMinute()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        allowed = self._ctx.current_config.api.allowed_hosts
        if host is None or host_allowed(host, allowed, self._ctx.listen_host):
            return await handler(request)
        shown = repr(host[:64])
        self._ctx.hub.api_closed[CLOSED_HOST_REFUSED] += 1
        refused = self._log_every_minute.due(CLOSED_HOST_REFUSED, self._ctx.clock.monotonic())
        if refused is not None:
            _log.warning(
                "api_host_refused",
                host=shown,
                path=request.path[:100],
                remote=request.remote,
                closed=refused,  # since the last such line, this one included
            )
        response = error_response(
            403,
            CLOSED_HOST_REFUSED,
            f"Host {shown} is not a name of this API: list it in api.allowed_hosts",
            {"Cache-Control": NO_STORE},
        )
        response.force_close()  # a page that rebinds its name sends nothing else worth answering
        return response
