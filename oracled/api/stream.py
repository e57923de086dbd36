"""`WS /v1/stream`: live reports of the markets a client subscribed to.

Client -> server, JSON text frames:
    {"op": "subscribe", "markets": ["BTC/USD"]}     (none: every market, even after reloads)
    {"op": "unsubscribe", "markets": ["BTC/USD"]}   (no or empty "markets": all of them)
    optional in either, for the whole connection from then on:
    "signed": true (signed frames instead of reports), "deviation": 0.001 (a market only when it
    moved by this fraction or changed status), "heartbeat_ms": 5000 (and at least this often),
    "batch": true (one frame per round holding all its reports; not with "signed")
Server -> client:
    {"type": "subscribed" | "unsubscribed", "markets": [...the whole current set...]}
        (plus "signed", "deviation", "heartbeat_ms", "batch" when the request set them)
    {"type": "report", "data": {...Report...}}      (first the latest of each added market)
    {"type": "reports", "round": 7, "round_ts": 1700000000250, "data": [{...Report...}, ...]}
        (with "batch": a round's reports, in market order; the snapshot of added markets too)
    {"type": "signed", "data": {...SignedPrice...}} (instead of reports, when signed)
    {"type": "error", "code": "...", "message": "..."}  (the connection stays open)
        (code `stalled`, answering no request: the round loop is stalled and its latest
        round is no current price, as the price endpoints' 503 `stalled` says; in place of a
        snapshot, and once per stalled round to every subscriber: oracled/api/stallwatch.py;
        to `signed` subscribers signed, plus "ts", "round", "signer", "deployment" and
        "signature": the StallNotice NATS gets, oracled/publish/signstall.py;
        with signing on, also to `signed` subscribers once no round has been signed for longer
        than the limit, signed and naming the last signed round, and in place of a signed
        snapshot until the next one: Hub.signed_stalled)

A handshake a browser page of another origin sent (its `Origin` neither the API's own nor listed
in `api.cors_origins`) is refused 403 `origin_refused`: browsers let any page open a WebSocket
and read it, so the CORS list is held here (oracled/api/cors.py).

A stream the server ends is closed with a reason that starts with the code the event stream's
final error event carries (`slow_consumer: ...`, `shutdown: ...`); docs/contracts.md has the
table of every code.

Report frames are the hub's pre-encoded bytes, the same object for every client; compression is
off because it would cost one deflate per client per frame. A client of many markets should ask
for batches: one WebSocket frame a round instead of one per market is what keeps a round of
1,000 reports within a few milliseconds for the daemon and the client alike. A client that falls
behind by more than its queue (counted in reports) is disconnected with close code 1008 and the
reason; its memory is freed at once. A client frame the server cannot read (too big, not UTF-8,
broken framing) closes the connection with the RFC 6455 code aiohttp chose for it (1009, 1007,
1002), counted as a `bad_frame` drop and logged as `stream_bad_frame`, at most once a minute per
close code with `closed`, the number since the last line (any client can send such frames).
A client that stops answering the server's pings (one every 20 s, a pong due within 10 s) is
closed by aiohttp with 1006 and counted as a `ping_timeout` drop, logged as `stream_ping_timeout`
at most once a minute with `closed`: a vanished peer or a stuck client, not a refused frame.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import structlog
from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from oracled.api.context import ApiContext
from oracled.api.cors import refused_origin
from oracled.api.errors import ApiError, encode_json
from oracled.api.params import market_list
from oracled.api.stallwatch import StallWatch
from oracled.lograte import LogEveryMinute
from oracled.publish.hub import (
    DROP_BAD_FRAME,
    DROP_PING_TIMEOUT,
    DROP_SHUTDOWN,
    DROP_SLOW,
    Subscription,
    SubscriptionClosed,
)

__all__ = ["StreamHandler"]

_log = structlog.get_logger(component="api.stream")
#: The close codes aiohttp gives a frame it cannot read: protocol error, not UTF-8, too big.
_BAD_FRAME_CODES = frozenset({1002, 1007, 1009})

MAX_CLIENT_MESSAGE = 16 * 1024  # a subscribe request naming every market fits easily
HEARTBEAT_S = 20.0  # ping interval; a client that stops answering is closed by aiohttp
WRITE_SLICE = 200  # frames written to one connection between two turns of the event loop


class _ClientOp(msgspec.Struct, forbid_unknown_fields=True):
    op: str
    markets: list[str] | None = None
    signed: bool | None = None
    deviation: float | None = None
    heartbeat_ms: int | None = None
    batch: bool | None = None


_DECODER = msgspec.json.Decoder(_ClientOp)


def _error(code: str, message: str) -> bytes:
    return encode_json({"type": "error", "code": code, "message": message})


_UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade"}


def _refusal(request: web.Request) -> ApiError:
    """Why a request aiohttp will not upgrade is refused, in RFC 6455's terms (4.2.1, 4.4)."""
    headers = request.headers
    connection = {token.strip().lower() for token in headers.get("Connection", "").split(",")}
    if headers.get("Upgrade", "").strip().lower() != "websocket" or "upgrade" not in connection:
        message = "this is a WebSocket endpoint; connect with a WebSocket client"
        return ApiError(426, "upgrade_required", message, _UPGRADE)
    version = headers.get("Sec-WebSocket-Version", "")
    if version not in ("13", "8", "7"):  # the versions aiohttp speaks; 13 is the standard's
        message = f"WebSocket version {version[:16]!r} is not spoken here; use 13"
        return ApiError(
            426, "upgrade_required", message, _UPGRADE | {"Sec-WebSocket-Version": "13"}
        )
    return ApiError(
        400,
        "bad_request",
        "malformed WebSocket handshake: Sec-WebSocket-Key must be 16 bytes in base64",
    )


class StreamHandler:
    """One reader, one writer and one drop watcher per connection; the first to end closes it."""

    __slots__ = (
        "_active",
        "_close_timeout",
        "_ctx",
        "_heartbeat",
        "_log_every_minute",
        "_order",
        "_shutting_down",
        "_stall",
    )

    def __init__(
        self,
        ctx: ApiContext,
        stall: StallWatch,
        close_timeout: float = 5.0,
        heartbeat: float = HEARTBEAT_S,
    ) -> None:
        self._ctx = ctx
        self._heartbeat = heartbeat
        self._stall = stall
        self._close_timeout = close_timeout
        self._order = ctx.core.index  # market -> layout position, for stable listings
        self._active: set[Subscription] = set()
        self._shutting_down = False
        # Lines any client can cause: bad frames (per close code, a few RFC 6455 codes) and
        # slow-consumer drops, each at most once a minute with the number since.
        self._log_every_minute = LogEveryMinute()

    async def stream(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            heartbeat=self._heartbeat, compress=False, max_msg_size=MAX_CLIENT_MESSAGE
        )
        if not ws.can_prepare(request).ok:
            raise _refusal(request)
        self._check_origin(request)
        await ws.prepare(request)
        hub = self._ctx.hub
        sub = hub.subscribe(frozenset())
        self._active.add(sub)
        reader = asyncio.create_task(self._read(request, ws, sub), name="api-stream-read")
        writer = asyncio.create_task(self._write(ws, sub), name="api-stream-write")
        dropped = asyncio.create_task(sub.wait_closed(), name="api-stream-dropped")
        try:
            await asyncio.wait((reader, writer, dropped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._active.discard(sub)
            writer.cancel()
            hub.unsubscribe(sub)  # no-op when the hub dropped it
            if not ws.closed:
                await self._close(request, ws, sub)
            if not reader.done():
                reader.cancel()
            await asyncio.gather(reader, writer, dropped, return_exceptions=True)
        return ws

    def _check_origin(self, request: web.Request) -> None:
        """Refuse (403 `origin_refused`, logged at most once a minute) a handshake a browser page
        of another origin sent, unless `api.cors_origins` lists it: a browser lets any page
        open a WebSocket and read it, with no preflight and whatever the answer's headers, so
        this is where the CORS list holds for the stream (oracled/api/cors.py)."""
        origin = refused_origin(request, self._ctx.current_config.api.cors_origins)
        if origin is None:
            return
        shown = repr(origin[:64])
        refused = self._log_every_minute.due("origin_refused", time.monotonic())
        if refused is not None:  # any page can be made to try, again and again: no flood
            _log.warning(
                "stream_origin_refused", origin=shown, remote=request.remote, refused=refused
            )
        raise ApiError(
            403,
            "origin_refused",
            f"a browser page of origin {shown} may not open the stream: "
            "list the origin in api.cors_origins",
        )

    async def shutdown(self, app: web.Application) -> None:
        """Close every stream with 1001 so that a graceful shutdown does not wait on them."""
        self._shutting_down = True
        for sub in list(self._active):
            self._ctx.hub.unsubscribe(sub)

    async def _close(
        self, request: web.Request, ws: web.WebSocketResponse, sub: Subscription
    ) -> None:
        if sub.closed_reason == DROP_SLOW:
            code = WSCloseCode.POLICY_VIOLATION
            message = f"{DROP_SLOW}: fell more than {sub.queue_size} reports behind"
            dropped = self._log_every_minute.due(DROP_SLOW, time.monotonic())
            if dropped is not None:  # a client that stalls on purpose again and again: no flood
                _log.info(
                    "stream_dropped", reason=DROP_SLOW, remote=request.remote, dropped=dropped
                )
        elif self._shutting_down or sub.closed_reason == DROP_SHUTDOWN:
            code, message = WSCloseCode.GOING_AWAY, f"{DROP_SHUTDOWN}: server shutting down"
        else:
            code, message = WSCloseCode.OK, ""
        try:
            async with asyncio.timeout(self._close_timeout):
                await ws.close(code=code, message=message.encode())
        except TimeoutError:
            # The client reads nothing, not even the close frame: cut it off.
            if request.transport is not None:
                request.transport.abort()

    async def _write(self, ws: web.WebSocketResponse, sub: Subscription) -> None:
        # `get` returns at once while frames are buffered, so a round of 1,000 single frames
        # would be written in one go; a turn of the loop every WRITE_SLICE frames lets the
        # sources (and the next round) in.
        sent = 0
        try:
            while True:
                frame = await sub.get()
                await ws.send_frame(frame, WSMsgType.TEXT)
                sent += 1
                if sent % WRITE_SLICE == 0 and sub.pending:
                    await asyncio.sleep(0)
        except SubscriptionClosed:
            return

    def _bad_frame(self, code: int | None, error: str, remote: str | None) -> None:
        """Log a bad frame at most once a minute per close code, with the count since."""
        key = code if code in _BAD_FRAME_CODES else None  # bounded, whatever a client sends
        closed = self._log_every_minute.due(("bad_frame", key), time.monotonic())
        if closed is not None:
            _log.warning("stream_bad_frame", code=code, error=error, remote=remote, closed=closed)

    def _ping_timeout(self, remote: str | None) -> None:
        """Log clients that stopped answering pings at most once a minute, with the count since."""
        closed = self._log_every_minute.due(DROP_PING_TIMEOUT, time.monotonic())
        if closed is not None:
            _log.warning("stream_ping_timeout", remote=remote, closed=closed)

    async def _read(
        self, request: web.Request, ws: web.WebSocketResponse, sub: Subscription
    ) -> None:
        async for msg in ws:
            if msg.type is WSMsgType.ERROR:
                # aiohttp could not read the client's frame and has already closed the
                # connection with the fitting code (1002 protocol error, 1007 invalid UTF-8,
                # 1009 too big): say so and count it, the close itself is done.
                exc = msg.data
                if isinstance(exc, TimeoutError):  # no pong in time: aiohttp closed with 1006
                    self._ctx.hub.drop(sub, DROP_PING_TIMEOUT)
                    self._ping_timeout(request.remote)
                    return
                # The code sent, which ws.close_code no longer holds once the client hung up.
                code = int(exc.code) if isinstance(exc, WebSocketError) else ws.close_code
                self._ctx.hub.drop(sub, DROP_BAD_FRAME)
                self._bad_frame(code, str(exc)[:200], request.remote)
                return
            # Answers go through the subscription's buffer, behind the frames already in it:
            # written straight to the socket, an ack overtook them (a snapshot of a market
            # came after the 'unsubscribed' that removed it).
            hub = self._ctx.hub
            if msg.type is not WSMsgType.TEXT:
                await hub.reply(sub, _error("bad_request", "send JSON text frames"))
                continue
            try:
                reply, markets, options = self._apply(sub, msg.data)
            except ApiError as exc:
                await hub.reply(sub, _error(exc.code, exc.message))
                continue
            # Acknowledge first, then change: the snapshot of added markets follows the ack.
            await hub.reply(sub, reply)
            # While the round loop is stalled its latest round is no current price: what would
            # have been its snapshot is the `stalled` frame instead (as the price endpoints
            # answer 503 `stalled`); the markets are subscribed and the next round flows.
            stalled = self._meets_stall(sub, markets, options)
            snapshot = not stalled
            # A switch of frame kind sends a snapshot of the set it finds: an unsubscribe
            # leaves the set first, so that no frame of a market it removed follows its ack.
            removes = markets is not None and (sub.markets is None or markets <= sub.markets)
            if removes:
                hub.change(sub, markets, snapshot=snapshot)
            if options:
                hub.configure(sub, **options, snapshot=snapshot)
            if not removes:
                hub.change(sub, markets, snapshot=snapshot)
            if stalled:
                told = self._stall.tell(sub)  # None: told with every subscriber
                if told is not None:
                    await hub.reply(sub, told)

    def _meets_stall(
        self, sub: Subscription, markets: frozenset[str] | None, options: dict[str, Any]
    ) -> bool:
        """Whether a request that would have a snapshot (markets it adds, a switch of frame
        kind) meets a stalled round loop: then it gets the `stalled` frame instead."""
        before = sub.markets
        adds = before is not None and (
            bool(frozenset(self._order) - before) if markets is None else bool(markets - before)
        )
        after = frozenset(self._order) if markets is None else markets
        switches = bool(after) and options.get("signed", sub.signed) != sub.signed
        return (adds or switches) and self._stall.frame() is not None

    def _apply(
        self, sub: Subscription, text: str
    ) -> tuple[bytes, frozenset[str] | None, dict[str, Any]]:
        """Validate one client request; return the ack, the new market set (None: every
        market, also those a reload adds later, as the event stream's default) and the
        options."""
        try:
            op = _DECODER.decode(text)
        except msgspec.DecodeError as exc:
            raise ApiError(400, "bad_request", f"not a valid request: {exc}") from None
        options = self._options(op, sub)
        every = frozenset(self._order)  # the markets of the config in force
        # A market a reload removed stays in the set until the hub tells the connection so with
        # the next round (`market_removed`), which it tells only the connections that have it;
        # the ack lists only the markets the config has (a removed one has no place to list).
        # Every market is also the ones the hub still publishes, until that round.
        current = every.union(self._ctx.hub.markets) if sub.markets is None else sub.markets
        named = frozenset(market_list(op.markets, self._order)) if op.markets else None
        markets: frozenset[str] | None
        if op.op == "subscribe":
            markets = None if named is None or sub.markets is None else current | named
            kind = "subscribed"
        elif op.op == "unsubscribe":
            markets = frozenset() if named is None else current - named
            kind = "unsubscribed"
        else:
            raise ApiError(
                400, "bad_request", f"op: {op.op[:32]!r} is not subscribe or unsubscribe"
            )
        listed = every if markets is None else markets & every
        listing = sorted(listed, key=self._order.__getitem__)
        return encode_json({"type": kind, "markets": listing, **options}), markets, options

    def _options(self, op: _ClientOp, sub: Subscription) -> dict[str, Any]:
        """The per-connection options a request sets (frame kind, filters), validated."""
        options: dict[str, Any] = {}
        if op.signed is not None:
            if op.signed and self._ctx.hub.signer is None:
                raise ApiError(400, "signing_disabled", "this daemon does not sign its rounds")
            options["signed"] = op.signed
        if op.batch is not None:
            options["batch"] = op.batch
        signed = sub.signed if op.signed is None else op.signed
        if signed and (sub.batch if op.batch is None else op.batch):
            raise ApiError(400, "bad_request", "batch: report frames only; not with signed frames")
        if op.deviation is not None:
            if not 0 < op.deviation < 1:
                raise ApiError(400, "bad_request", "deviation: must be > 0 and < 1")
            options["deviation"] = op.deviation
        if op.heartbeat_ms is not None:
            if not 1 <= op.heartbeat_ms <= 86_400_000:
                raise ApiError(400, "bad_request", "heartbeat_ms: must be 1 to 86400000")
            options["heartbeat_ms"] = op.heartbeat_ms
        return options
