"""Per-source counters: plain integers bumped on the hot path, exported at scrape time."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["ConnState", "SourceStats"]


class ConnState(StrEnum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    POLLING = "polling"  # stream down, REST fallback active
    DOWN = "down"
    STOPPED = "stopped"


@dataclass(slots=True)
class SourceStats:
    """Counters of one source instance; read by the metrics collector and /v1/markets/../sources."""

    source: str
    state: ConnState = ConnState.CONNECTING
    frames: int = 0  # every frame or REST response body received
    malformed: int = 0  # frames that could not be decoded or had an unexpected shape
    quotes: int = 0  # normalized quotes handed to the core
    reconnects: int = 0
    restarts: int = 0  # the supervisor restarted the task after a crash
    last_quote_ms: int | None = None  # receive time of the newest quote
    last_frame_ms: int | None = None
    failed_instruments: dict[str, str] = field(default_factory=dict)  # symbol -> venue message
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> count (source-side drops)
