"""A source that speaks to nothing: the hooks a Source must implement, all inert.

Runtime tests subclass it to give a source task one behaviour under test (it crashes, it ignores
its cancellation) without a venue behind it. `idle_source` is the factory of a source that never
quotes, for tests that hand the service its quotes themselves (`Service.on_quote`), and
`published_round` waits for the service's rounds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from oracled.service import Service
from oracled.sources import Source


class InertSource(Source):
    """Every venue hook does nothing; subclasses override `run`."""

    default_ws_url = "ws://127.0.0.1:9"

    def stream_url(self) -> str:
        return self.default_ws_url

    def subscribe_message(self, request_id: int, symbols: object) -> str:
        return ""

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        return None

    def rest_request(self, symbols: object) -> None:
        return None

    def on_rest(self, body: bytes, recv_ts: int) -> None:
        return None


class IdleSource(InertSource):
    """A source that quotes nothing: the test hands the service its quotes itself."""

    async def run(self) -> None:
        await asyncio.Event().wait()


def idle_source(sid: str, *args: Any) -> Source:
    """A `source_factory` of idle sources."""
    return IdleSource(sid, *args)


async def published_round(service: Service, number: int, timeout_s: float = 10.0) -> None:
    """Until the service has published round `number`."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = service.hub.latest_result
            if result is not None and result.round >= number:
                return
            await asyncio.sleep(0.005)
