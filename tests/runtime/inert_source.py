"""A source that speaks to nothing: the hooks a Source must implement, all inert.

Runtime tests subclass it to give a source task one behaviour under test (it crashes, it ignores
its cancellation) without a venue behind it.
"""

from __future__ import annotations

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
