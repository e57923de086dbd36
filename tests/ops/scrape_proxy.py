"""A loopback HTTP hop between Prometheus and the daemon that records how each scrape was encoded.

It forwards `GET /metrics` with the scraper's own `Accept-Encoding` and hands back the daemon's
body exactly as sent (never decompressed or compressed again), noting both headers, so a test
can see what a real Prometheus asked for and what the daemon answered.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web
from daemon import free_port


@dataclass(frozen=True)
class Scrape:
    accept_encoding: str  # what the scraper sent ("" for none)
    content_encoding: str  # what the daemon answered with ("" for none)
    status: int
    size: int  # bytes on the wire


class ScrapeProxy:
    """Serves `/metrics` on its own loopback port by fetching the daemon's."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.scrapes: list[Scrape] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # No Accept-Encoding of aiohttp's own: only the scraper's header is forwarded.
        self._session = aiohttp.ClientSession(skip_auto_headers=["Accept-Encoding"])
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _metrics(self, request: web.Request) -> web.Response:
        assert self._session is not None
        accept = request.headers.get("Accept-Encoding", "")
        headers = {"Accept-Encoding": accept} if accept else {}
        async with self._session.get(
            self.upstream + "/metrics", headers=headers, auto_decompress=False
        ) as resp:
            body = await resp.read()
            encoding = resp.headers.get("Content-Encoding", "")
            self.scrapes.append(Scrape(accept, encoding, resp.status, len(body)))
            out = {"Content-Type": resp.headers.get("Content-Type", "text/plain")}
            if encoding:
                out["Content-Encoding"] = encoding
            return web.Response(body=body, status=resp.status, headers=out)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
