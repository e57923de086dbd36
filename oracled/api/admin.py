"""Operator endpoints: pause and resume a market, behind a bearer token.

Without a configured token the endpoints are disabled (403), so that a daemon started without one
is never open to anyone who can reach the port. The token is compared in constant time.

Every refused request is counted by why (`REFUSED_REASONS`, in the hub's `admin_refused`) and
logged as `api_admin_refused` at most once a minute per reason, with the route and the client's
address: someone trying tokens, or a deploy's automation with a stale one, is seen. Neither the
count nor the line holds anything of what the client sent in `Authorization` (a token sent
without its scheme is the header's whole value).

The token is checked before the body is read, and a client asking `Expect: 100-continue` is
refused before it is invited to send one: the body is the client's to send only once it may act.

An address whose token checks failed `api.admin_lockout_failures` times within
`api.admin_lockout_window_s` (a wrong token, or one not sent as `Bearer <token>`) is refused
for `api.admin_lockout_s`, the right token included: 429 `admin_locked_out` with `Retry-After`,
counted under `locked_out`; the lock-out itself is logged as `api_admin_locked_out` at most once
a minute (oracled/api/lockout.py). A check that passes forgives the address's failures.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import re

import msgspec
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from oracled.api.context import ApiContext
from oracled.api.errors import (
    NO_STORE,
    ApiError,
    error_response,
    expect_handler,
    json_response,
    refused_expectation,
)
from oracled.api.lockout import Lockout
from oracled.api.params import path_market
from oracled.errors import ConfigError, ServiceStopping
from oracled.lograte import LogEveryMinute

__all__ = ["REFUSED_REASONS", "AdminHandlers"]

#: Why an admin request was refused: no token is configured (403), no `Authorization` header,
#: one that is not `Bearer <token>`, a token that does not match (401), an address locked out
#: after too many of the last two (429).
REFUSED_DISABLED = "disabled"
REFUSED_MISSING = "missing"
REFUSED_MALFORMED = "malformed"
REFUSED_WRONG = "wrong"
REFUSED_LOCKED_OUT = "locked_out"
REFUSED_REASONS = (
    REFUSED_DISABLED,
    REFUSED_MISSING,
    REFUSED_MALFORMED,
    REFUSED_WRONG,
    REFUSED_LOCKED_OUT,
)
#: The refusals that count towards a lock-out: a token was sent, and it was not the one.
_FAILED = frozenset({REFUSED_MALFORMED, REFUSED_WRONG})

#: The OpenAPI document's pattern, matched whole (`fullmatch`: `$` alone would let a final
#: line break through into the log line and the audit trail).
_ACTOR = re.compile(r"^[A-Za-z0-9_.@:\-]{1,64}$")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="oracled-admin"'}


class _ManualBody(msgspec.Struct, forbid_unknown_fields=True):
    """Optional request body: who is acting, for the audit log."""

    actor: str = "api"


_DECODER = msgspec.json.Decoder(_ManualBody)
_log = structlog.get_logger(component="api")


class AdminHandlers:
    __slots__ = ("_ctx", "_lockout", "_refused_log", "_token")

    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx
        secret = ctx.config.admin_token
        self._token = None if secret is None else secret.get_secret_value().encode()
        self._refused_log = LogEveryMinute()  # keyed by reason: anyone can send these at will
        self._lockout = Lockout()

    def _authorize(self, request: web.Request) -> None:
        """Raise the 401, 403 or 429 of a request that may not act, counted and logged."""
        now = self._ctx.clock.monotonic()
        refused = self._refusal(request, now)
        address = request.remote
        if refused is None:
            if address is not None:
                self._lockout.succeeded(address)
            return
        reason, error = refused
        self._ctx.hub.admin_refused[reason] += 1
        if reason in _FAILED and address is not None:
            self._failed(address, now)
        count = self._refused_log.due(reason, now)
        if count is not None:
            resource = request.match_info.route.resource
            _log.warning(
                "api_admin_refused",
                reason=reason,
                route=request.path if resource is None else resource.canonical,
                remote=request.remote,
                refused=count,  # since the last such line, this one included
            )
        raise error

    def _failed(self, address: str, now: float) -> None:
        """Count a failed check of `address`; the one that locks it out is logged (at most
        once a minute: an attacker with many addresses must not flood the log)."""
        api = self._ctx.current_config.api
        if api.admin_lockout_failures == 0:
            return
        locked = self._lockout.failed(
            address,
            now,
            api.admin_lockout_failures,
            api.admin_lockout_window_s,
            api.admin_lockout_s,
        )
        if not locked:
            return
        count = self._refused_log.due("locked", now)
        if count is not None:
            _log.warning(
                "api_admin_locked_out",
                remote=address,
                failures=api.admin_lockout_failures,
                window_s=api.admin_lockout_window_s,
                lockout_s=api.admin_lockout_s,
                locked=count,  # addresses locked out since the last such line, this one included
            )

    def _refusal(self, request: web.Request, now: float) -> tuple[str, ApiError] | None:
        """Why `request` may not act and its answer, or None when its token is the one."""
        if self._token is None:
            env = self._ctx.config.api.admin_token_env
            where = f" (set ${env} to enable them)" if env else ""
            return REFUSED_DISABLED, ApiError(
                403,
                "admin_disabled",
                f"admin endpoints are disabled: no admin token is configured{where}",
            )
        address = request.remote
        api = self._ctx.current_config.api
        if api.admin_lockout_failures == 0:  # off in the config in force: none runs on
            self._lockout.clear()
        left = None if address is None else self._lockout.locked_for(address, now)
        if left is not None:
            return REFUSED_LOCKED_OUT, ApiError(
                429,
                "admin_locked_out",
                f"{api.admin_lockout_failures} failed token checks from this address within"
                f" {api.admin_lockout_window_s:g} s: its admin calls are refused for"
                f" {math.ceil(left)} s more",
                {"Retry-After": str(math.ceil(left))},
            )
        header = request.headers.get("Authorization")
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            reason = REFUSED_MISSING if header is None else REFUSED_MALFORMED
            error = ApiError(401, "unauthorized", "send Authorization: Bearer <token>", _CHALLENGE)
            return reason, error
        # aiohttp keeps header bytes that are not UTF-8 as surrogates: encode them back as they
        # came, so that such a token is wrong like any other (strict encoding raised: a 500).
        if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), self._token):
            error = ApiError(401, "unauthorized", "the bearer token is not valid", _CHALLENGE)
            return REFUSED_WRONG, error
        return None

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """The admin routes' `Expect` handler (run before the middlewares): a client that may not
        act is answered 401 or 403 instead of `100 Continue`, so that it never sends its body
        (the generic handler invited every client to), and its connection is closed after the
        answer, as for any refused expectation: a body sent anyway is no next request."""
        try:
            self._authorize(request)
        except ApiError as exc:
            response = error_response(
                exc.status, exc.code, exc.message, {**exc.headers, "Cache-Control": NO_STORE}
            )
            return refused_expectation(response)
        return await expect_handler(request)

    async def _actor(self, request: web.Request) -> str:
        try:
            raw = await request.read()
        except RequestPayloadError as exc:  # the client's body (its encoding), not our bug
            reason = " ".join(str(exc).split())[:120]
            raise ApiError(400, "bad_request", f"body: cannot be read ({reason})") from None
        except ConnectionError:  # the client went away mid-body: nobody reads the answer
            raise ApiError(
                400, "bad_request", "body: the connection closed before its end"
            ) from None
        if not raw.strip():
            return "api"
        try:
            body = _DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            raise ApiError(400, "bad_request", f"body: {exc}") from None
        if not _ACTOR.fullmatch(body.actor):
            raise ApiError(400, "bad_request", "actor: 1-64 characters of A-Z a-z 0-9 _ . @ : -")
        return body.actor

    async def _manual(self, request: web.Request, paused: bool) -> web.Response:
        self._authorize(request)
        market = path_market(request.match_info["market"], self._ctx.core.index)
        actor = await self._actor(request)
        saving = self._ctx.on_manual(market, paused, actor)
        # The answer waits for the pauses file (its thread writes and fsyncs): a 200 is a pause
        # a kill -9 right after it cannot lift.
        error = None if saving is None else await asyncio.wrap_future(saving)
        if error is not None:
            done = "paused" if paused else "resumed"
            after = "lift the pause" if paused else "pause it again"
            raise ApiError(
                500,
                "not_saved",
                f"{market} is {done} in this process, but the pauses file could not be written "
                f"({error}): a restart would {after}",
            )
        return json_response({"market": market, "paused": paused, "actor": actor})

    async def pause(self, request: web.Request) -> web.Response:
        """Pause a market at once: its price becomes null from the next round."""
        return await self._manual(request, True)

    async def resume(self, request: web.Request) -> web.Response:
        """Release an operator pause; the market goes live after the usual healthy streak."""
        return await self._manual(request, False)

    async def reload(self, request: web.Request) -> web.Response:
        """Re-read the config file and apply it without a restart; refused whole if invalid."""
        self._authorize(request)
        actor = await self._actor(request)
        if self._ctx.on_reload is None:
            raise ApiError(409, "reload_unavailable", self._ctx.reload_unavailable)
        try:
            changes = await self._ctx.on_reload(actor)
        except ConfigError as exc:
            raise ApiError(
                422, "invalid_config", "the new config was refused: " + "; ".join(exc.problems)
            ) from None
        except ServiceStopping as exc:  # the stop began first: nothing was applied
            raise ApiError(503, "stopping", str(exc)) from None
        return json_response({"reloaded": True, "actor": actor, **changes})
