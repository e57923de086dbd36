"""gzip for the JSON read answers: a body is compressed at most once, then shared.

`/v1/prices` at a thousand markets is about 0.7-1.3 MB of JSON; gzip level 1 makes it about 7
times smaller (2.5 ms for 0.7 MB here, so a body that large is compressed in a worker thread;
benchmarks/bench_gzip.py). The bodies that depend only on the round (prices) or on
the config (markets, the OpenAPI document) are kept as `Body` objects by their handler, so every
client of a round gets the very same compressed bytes. The streams are never compressed: a
compressor holds data back until its buffer fills, which is the opposite of a price stream.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from oracled.publish.hub import Hub

__all__ = [
    "MIN_GZIP",
    "OFF_LOOP",
    "Body",
    "accepts_gzip",
    "body_response",
    "counted_response",
    "gzip_bytes",
]

GZIP_LEVEL = 1  # level 6: a third fewer bytes for 4-6 times the CPU (benchmarks/bench_gzip.py)
#: Below this, headers and the gzip frame take most of what compression would save.
MIN_GZIP = 256
#: From this size on a body is compressed off the event loop (64 KiB: about 0.2 ms at level
#: 1; 1,000 markets are about 0.7 MB and 2.5 ms, which the loop should not spend).
OFF_LOOP = 64 * 1024
_VARY = "Accept-Encoding"


def gzip_bytes(plain: bytes) -> bytes:
    """`plain` as one gzip member at the API's level."""
    # wbits 31: a gzip member (header, deflate, CRC) with mtime 0, so the same bytes come out
    # for the same body.
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return packer.compress(plain) + packer.flush()


class Body:
    """An encoded JSON answer and, made on first demand, its gzip form."""

    __slots__ = ("_gzip", "_pending", "off_loop", "plain", "runs")

    def __init__(self, plain: bytes) -> None:
        self.plain = plain
        self._gzip: bytes | None = None
        self._pending: asyncio.Future[bytes] | None = None
        self.off_loop = False  # compressed in a worker thread
        self.runs = 0  # compressions started: at most one per `Body`

    @property
    def packed(self) -> bytes | None:
        """The gzip form once made (None before, and for a body too small for it)."""
        return self._gzip

    async def gzip(self) -> bytes | None:
        """The gzip form, or None for a body too small to be worth it.

        A body of `OFF_LOOP` bytes or more is compressed in the default executor (zlib lets
        go of the GIL), and every request that asks meanwhile awaits that one compression.
        """
        if len(self.plain) < MIN_GZIP:
            return None
        if self._gzip is None:
            if len(self.plain) < OFF_LOOP:
                self.runs += 1
                self._gzip = gzip_bytes(self.plain)
            else:
                if self._pending is None:
                    loop = asyncio.get_running_loop()
                    self.runs += 1
                    self._pending = loop.run_in_executor(None, gzip_bytes, self.plain)
                    self.off_loop = True
                # shield: a client that goes away must not cancel the others' compression.
                self._gzip = await asyncio.shield(self._pending)
        return self._gzip


def accepts_gzip(header: str) -> bool:
    """Whether an `Accept-Encoding` value takes gzip (RFC 9110 12.5.3: `gzip`, `x-gzip` or `*`
    with a weight above 0; an explicit gzip entry wins over `*`)."""
    named: float | None = None
    star: float | None = None
    for item in header.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        weight = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 0.0  # a weight we cannot read: do not assume a yes
        if coding == "*":
            star = weight if star is None else max(star, weight)
        else:
            named = weight if named is None else max(named, weight)
    chosen = named if named is not None else star
    return chosen is not None and chosen > 0.0


async def body_response(request: web.Request, body: Body, status: int = 200) -> web.Response:
    """`body` as a JSON answer, gzipped when the client takes it and it is worth it."""
    headers = {"Vary": _VARY}
    data = body.plain
    if accepts_gzip(request.headers.get("Accept-Encoding", "")):
        packed = await body.gzip()
        if packed is not None:
            data = packed
            headers["Content-Encoding"] = "gzip"
    return web.Response(body=data, status=status, content_type="application/json", headers=headers)


async def counted_response(request: web.Request, body: Body, hub: Hub) -> tuple[web.Response, bool]:
    """`body_response`, a compression it made counted in the hub, where /metrics reads it
    (`oracled_api_bodies_gzipped_total`, `..._off_loop_total`): the one count of every kept
    JSON body's gzip, so that none is made unseen. Whether this request made it."""
    runs = body.runs
    response = await body_response(request, body)
    made = body.runs - runs  # compressions this request started (0 or 1)
    hub.bodies_gzipped += made
    hub.bodies_gzipped_off_loop += made if body.off_loop else 0
    return response, made > 0
