"""A loopback Pyth Hermes: the SSE price stream and the latest-price REST endpoint, with faults.

It speaks Hermes v2 as the server source and docs describe it (see
oracled/sources/pyth_hermes.py): ``GET /v2/updates/price/stream?ids[]=..`` answers
``text/event-stream`` with one ``data:<PriceUpdate JSON>`` event per update, the empty comment
``:`` after `keepalive_s` without an event (axum's default keep-alive, 15 s on Hermes), and, once
`max_stream_s` has passed (24 h on Hermes), ``event:error`` / ``data:Connection timeout reached
(24h)`` before closing. ``GET /v2/updates/price/latest?ids[]=..`` answers the latest update of
each feed. Ids are 64 hex digits, ``0x`` optional; malformed ones get 400, unknown ones
``404 Price ids not found: 0x<id>, ..`` (unless ``ignore_invalid_price_ids=true``).

Feeds are keyed by feed id; prices are ``round(mid * 10**-expo)`` with Pyth's confidence set to the
book's half spread, so `book(id)` gives exactly the (price - conf, price + conf) an adapter should
derive. ``publish_time`` is wall-clock seconds and ``metadata.slot`` a counter that grows with
every update, as on Pythnet. The ``binary`` field is a fixed placeholder, not a signed update.

The public limit, 30 requests per 10 s per IP and then 429 for the next 60 s, is held when
`rest_limit` is set (`VenueSim`'s, here with `rest_ban_s` 60 s by default): on REST requests
and stream opens alike, as the venue counts every endpoint (a stream open refused so is
answered 429 and counted in `stream_limited`, not in `rest_limited`). Off by default, so that
fault tests may poll at test speed.

Deliberate simplifications: each event carries one feed (Hermes sends one event per Pythnet slot
with every requested feed in it), and stream events always carry base64 ``binary`` whatever the
requested encoding.

VenueSim's sockets are WebSockets, so this module adds the SSE client (`_SseClient`, no ``ws``)
and its writer, and overrides `stop`; every fault of the base still applies: `silence` (stream
open, no events and no keep-alives), `disconnect`, `garbage` (each catalogue entry sent as one
``data:`` event), `burst`, `replay_stale`, `spike`, ``ws_enabled = False`` (the stream answers
503), and the REST faults through `rest_gate`. `error_event(text)` sends a Hermes error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from aiohttp import web

from oracled.sim._base import Client, Out, SimStats, VenueSim
from oracled.sim.paths import PricePath

__all__ = ["GARBAGE", "PythHermesSim", "SimStats"]

#: The BTC/USD feed id; the value-garbage below names it so that an adapter maps it.
BTC_USD: Final = "e62df6c8b4a85fe1a67db44dc12de5db330f7ac66b72dc658afedf0f4a415b43"
_HEX_ID: Final = re.compile(r"[0-9a-f]{64}")
_BINARY: Final = "UE5BVQEAAAADuAEAAAADDQ=="  # the accumulator magic and header; not a valid update
_TIMEOUT_NOTICE: Final = "event:error\ndata:Connection timeout reached (24h)\n\n"
_CLOSE: Final = "\x00close"  # a writer sentinel, never sent


def _feed(price: str, conf: str, expo: str = "-8", pid: str = BTC_USD) -> str:
    return (
        f'{{"binary":{{"encoding":"base64","data":["{_BINARY}"]}},"parsed":[{{"id":"{pid}",'
        f'"price":{{"price":{price},"conf":{conf},"expo":{expo},"publish_time":1708363256}},'
        f'"ema_price":{{"price":"5209141800000","conf":"3290086600","expo":-8,'
        f'"publish_time":1708363256}},"metadata":{{"slot":125976528,'
        f'"proof_available_time":1708363257,"prev_publish_time":1708363255}}}}]}}'
    )


# The data of one bad event each: broken and truncated JSON, wrong shapes, then well-formed
# updates whose values are NaN text, zero, negative, not a number, crossed (negative conf), a
# band reaching zero, or an impossible exponent.
GARBAGE: Final[tuple[str, ...]] = (
    _feed('"5190075917635"', '"2661582364"')[:150],
    "not json at all",
    '{"binary":{"encoding":"base64","data":[]},"parsed":{"id":"' + BTC_USD + '"}}',
    '{"binary":{"encoding":"base64","data":[]}}',
    "[]",
    _feed("5190075917635", '"2661582364"'),
    _feed('"NaN"', '"2661582364"'),
    _feed('"0"', '"0"'),
    _feed('"-5190075917635"', '"2661582364"'),
    _feed('"51900.75917635"', '"2661582364"'),
    _feed('"5190075917635"', '"-2661582364"'),
    _feed('"5190075917635"', '"5190075917635"'),
    _feed('"5190075917635"', '"2661582364"', expo="400"),
)


def _normal_id(raw: str) -> str | None:
    text = raw.lower().removeprefix("0x")
    return text if _HEX_ID.fullmatch(text) else None


class _SseClient(Client):
    """A client of the event stream: no WebSocket (``ws`` stays unset), one HTTP response."""

    __slots__ = ("response",)

    def __init__(self, response: web.StreamResponse, request: web.Request) -> None:
        self.response = response
        self.request = request
        self.outbox = asyncio.Queue()
        self.streams = set()
        self.recent = deque()
        self.ping_due = None
        self.state = {}


class PythHermesSim(VenueSim):
    """Pyth Hermes on loopback; see the module docstring for the protocol and faults."""

    name = "pyth_hermes"
    GARBAGE: ClassVar[tuple[str, ...]] = GARBAGE

    def __init__(
        self,
        prices: Mapping[str, float],
        *,
        expo: int = -8,
        keepalive_s: float = 15.0,
        max_stream_s: float | None = 24 * 3600.0,
        rest_ban_s: float = 60.0,
        **kwargs: Any,
    ) -> None:
        ids = {_normal_id(k): p for k, p in prices.items()}
        if None in ids:
            raise ValueError("feed ids must be 32 bytes in hex")
        known = {k: p for k, p in ids.items() if k is not None}
        super().__init__(known, rest_ban_s=rest_ban_s, **kwargs)
        self.expo = expo
        self.keepalive_s = keepalive_s
        self.max_stream_s = max_stream_s
        self._latest: dict[str, dict[str, Any]] = {}
        self.stream_limited = 0  # stream opens refused by `rest_limit`
        self._ema: dict[str, float] = {}

    @property
    def ws_url(self) -> str:
        """The stream is plain HTTP: the stream base URL is the REST one."""
        return self.rest_url

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/updates/price/stream", self._stream_handler)
        app.router.add_get("/v2/updates/price/latest", self._latest_handler)

    def on_text(self, client: Client, text: str) -> None:
        """SSE is one-way: clients never send messages."""

    def data_frame(self, symbol: str, path: PricePath, now: float) -> str:
        return self._encode({"binary": self._binary("base64"), "parsed": [self._update(symbol)]})

    def error_event(self, text: str) -> int:
        """Send Hermes's ``event:error`` (e.g. a lagging broadcast) to every client; count them."""
        for client in self.clients:
            client.send(f"event:error\ndata:Error receiving update: {text}\n\n")
        self.stats.errors_sent += len(self.clients)
        return len(self.clients)

    async def __aenter__(self) -> PythHermesSim:
        await self.start()
        return self

    async def stop(self) -> None:
        for client in list(self.clients):
            if isinstance(client, _SseClient):  # the base would close a WebSocket
                client.send(_CLOSE)
                self.clients.discard(client)
        await super().stop()

    # ----------------------------------------------------------------- prices

    def _update(self, symbol: str) -> dict[str, Any]:
        """The next parsed update of one feed (also kept as its latest, for REST)."""
        now, path = self.now(), self.paths[symbol]
        mid = path.published(now)
        ema = self._ema[symbol] = 0.9 * self._ema.get(symbol, mid) + 0.1 * mid
        scale = 10.0**-self.expo
        conf = str(max(1, round(mid * self.spread_bps / 20_000.0 * scale)))
        publish = int(time.time())
        prev = self._latest.get(symbol)
        update = {
            "id": symbol,
            "price": {
                "price": str(round(mid * scale)),
                "conf": conf,
                "expo": self.expo,
                "publish_time": publish,
            },
            "ema_price": {
                "price": str(round(ema * scale)),
                "conf": conf,
                "expo": self.expo,
                "publish_time": publish,
            },
            "metadata": {
                "slot": next(self.sequence),
                "proof_available_time": publish,
                "prev_publish_time": prev["price"]["publish_time"] if prev else publish,
            },
        }
        self._latest[symbol] = update
        return update

    @staticmethod
    def _binary(encoding: str) -> dict[str, Any]:
        data = _BINARY if encoding == "base64" else "504e41550100000003b8010000000300"
        return {"encoding": encoding, "data": [data]}

    @staticmethod
    def _encode(body: Mapping[str, Any]) -> str:
        return json.dumps(body, separators=(",", ":"))

    # ----------------------------------------------------------------- HTTP

    def _ids(self, request: web.Request) -> tuple[list[str], str] | web.Response:
        """The requested ids and encoding, or the error Hermes would answer."""
        query = request.query
        raw = query.getall("ids[]", [])
        encoding = query.get("encoding", "hex")
        if not raw or encoding not in ("hex", "base64"):
            self.stats.errors_sent += 1
            why = "missing field `ids`" if not raw else f"unknown variant `{encoding}`"
            return web.Response(status=400, text=f"Failed to deserialize query string: {why}")
        ids = [_normal_id(r) for r in raw]
        if any(i is None for i in ids):
            self.stats.errors_sent += 1
            return web.Response(
                status=400, text="Failed to deserialize query string: Invalid string length"
            )
        known = [i for i in ids if i in self.paths]
        missing = [i for i in ids if i is not None and i not in self.paths]
        if missing and query.get("ignore_invalid_price_ids") != "true":
            self.stats.errors_sent += 1
            listed = ", ".join(f"0x{i}" for i in missing)
            return web.Response(status=404, text=f"Price ids not found: {listed}")
        return known, encoding

    async def _latest_handler(self, request: web.Request) -> web.Response:
        refused = await self.rest_gate()
        if refused is not None:
            return refused
        wanted = self._ids(request)
        if isinstance(wanted, web.Response):
            return wanted
        ids, encoding = wanted
        body: dict[str, Any] = {"binary": self._binary(encoding)}
        if request.query.get("parsed", "true") == "true":
            body["parsed"] = [self._latest.get(i) or self._update(i) for i in ids]
        return web.Response(text=self._encode(body), content_type="application/json")

    async def _stream_handler(self, request: web.Request) -> web.StreamResponse:
        if not self.ws_enabled:
            self.stats.refused += 1
            return web.Response(status=503, text="Service Unavailable")
        if self._over_rest_limit():
            self.stream_limited += 1
            return self.rest_refusal(429)
        wanted = self._ids(request)
        if isinstance(wanted, web.Response):
            return wanted
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        client = _SseClient(response, request)
        client.streams = set(wanted[0])
        self.stats.connections += 1
        self.stats.active += 1
        self.clients.add(client)
        try:
            await self._pump(client)
        finally:
            self.clients.discard(client)
            self.stats.active -= 1
        return response

    async def _pump(self, client: _SseClient) -> None:
        """Write the client's queue as SSE; keep-alive after `keepalive_s` without an event."""
        response, stats = client.response, self.stats
        limit = None if self.max_stream_s is None else self.now() + self.max_stream_s
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client is gone
            try:
                async with asyncio.timeout_at(limit):
                    while True:
                        try:
                            async with asyncio.timeout(self.keepalive_s):
                                kind, payload = await client.outbox.get()
                        except TimeoutError:
                            if not self.silent:
                                await response.write(b":\n\n")
                                stats.heartbeats_sent += 1
                            continue
                        text = payload if isinstance(payload, str) else payload.decode()
                        if text == _CLOSE:
                            return
                        if kind in (Out.DATA, Out.GARBAGE):
                            text = f"data:{text}\n\n"
                        await response.write(text.encode())
                        if kind is Out.DATA:
                            stats.frames_sent += 1
                        elif kind is Out.GARBAGE:
                            stats.garbage_sent += 1
            except TimeoutError:  # Hermes's 24 h limit: say so, then end the stream
                await response.write(_TIMEOUT_NOTICE.encode())
