"""Per-source counters: plain integers bumped on the hot path, exported at scrape time."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

__all__ = ["LATENCY_BOUNDS_MS", "LATENCY_BUCKET_OF_MS", "ConnState", "SourceStats"]

#: Upper bounds (ms, inclusive) of the venue-to-receive latency histogram buckets.
LATENCY_BOUNDS_MS: Final[tuple[int, ...]] = (
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000,
)  # fmt: skip
#: Bucket index of every latency from 0 to the last bound + 1 ms (which stands for +Inf): one
#: list lookup on the hot path instead of a bisect.
LATENCY_BUCKET_OF_MS: Final[tuple[int, ...]] = tuple(
    bisect_left(LATENCY_BOUNDS_MS, ms) for ms in range(LATENCY_BOUNDS_MS[-1] + 2)
)


class ConnState(StrEnum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    POLLING = "polling"  # stream down, REST fallback active
    DOWN = "down"
    STOPPED = "stopped"


_OVER: Final = LATENCY_BOUNDS_MS[-1] + 1


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
    sequence_resets: int = 0  # venue counter bars judged bad (Source._counter_refused)
    last_quote_ms: int | None = None  # receive time of the newest quote
    last_frame_ms: int | None = None
    failed_instruments: dict[str, str] = field(default_factory=dict)  # symbol -> venue message
    # (pair, kind) -> the venue symbol the source subscribes for it, set by the source when it is
    # built: what the two instrument maps are keyed by (one refused before it had a symbol is
    # keyed by its pair), so that the API can show a market's instrument its own entries.
    symbol_of: dict[tuple[str, str], str] = field(default_factory=dict)
    # Subscribed symbols without a quote for longer than their limit, listed while the
    # connection streams (while polling: those the latest REST answer asking for them left out):
    # symbol -> receive time (ms) of its last quote, or when the first connection that subscribed
    # it opened (or the first answer that asked for it) if none came (`Source._check_silent`:
    # counted over reconnects, the latest outage aside). Empty while down.
    silent_instruments: dict[str, int] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> count (source-side drops)
    # Venue-to-receive latency of quotes that carry a venue time: cumulative-free bucket counts
    # (the last bucket is +Inf), their sum in ms, and quotes whose venue time was ahead of ours.
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))
    latency_sum_ms: int = 0
    latency_ahead: int = 0

    def observe_latency(self, latency_ms: int) -> None:
        """Count one quote's receive time minus its venue time (Source._quote inlines this)."""
        if latency_ms < 0:
            self.latency_ahead += 1
            latency_ms = 0
        self.latency_buckets[LATENCY_BUCKET_OF_MS[min(latency_ms, _OVER)]] += 1
        self.latency_sum_ms += latency_ms
