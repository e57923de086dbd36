"""Python's cyclic garbage collector as the daemon runs it: start-up state frozen, pauses timed.

A collection stops the whole process, event loop included, for as long as it walks its
generation. The oldest generation holds nearly everything the daemon made at start-up (modules,
the config, the layout, web3's and aiohttp's tables), so at 1,000 markets a full collection took
54 to 69 ms: longer than a 50 ms round, and it comes back whenever enough new objects have
survived. `freeze` (called once the daemon is up) collects once and moves every object alive into
the permanent generation, which later collections skip; objects freed by their reference count
are freed as before, only cycles among the frozen ones would wait for the process's end.

`install` times every collection by generation from the collector's own callbacks, for
`oracled_gc_pause_seconds`; the numbers are process-wide, so every registry reads the same ones.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["BUCKETS", "GcCollector", "freeze", "install", "pauses"]

#: Upper bounds (seconds) of the pause histogram: young collections take tens of microseconds,
#: a full one over a large heap tens of milliseconds.
BUCKETS: tuple[float, ...] = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class _Pauses:
    """Per generation: counts per bucket (the last one unbounded) and the summed seconds."""

    def __init__(self) -> None:
        self.counts = [[0] * (len(BUCKETS) + 1) for _ in range(3)]
        self.sums = [0.0, 0.0, 0.0]
        self._started = 0.0

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Collections never overlap (the collecting thread holds the GIL throughout), so one
        # start time serves every thread.
        if phase == "start":
            self._started = time.perf_counter()
            return
        seconds = time.perf_counter() - self._started
        generation = min(int(info.get("generation", 2)), 2)
        bucket = next((k for k, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))
        self.counts[generation][bucket] += 1
        self.sums[generation] += seconds


_PAUSES = _Pauses()
_LOCK = threading.Lock()


def install() -> None:
    """Start timing collections (idempotent: one callback per process)."""
    with _LOCK:
        if _PAUSES.on_gc not in gc.callbacks:
            gc.callbacks.append(_PAUSES.on_gc)


def pauses() -> tuple[list[list[int]], list[float]]:
    """A copy of the bucket counts and sums per generation (0, 1, 2)."""
    return [list(c) for c in _PAUSES.counts], list(_PAUSES.sums)


def freeze() -> int:
    """Collect once, then move every object alive into the permanent generation; return how many
    objects are frozen now."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcCollector(Collector):
    """`oracled_gc_pause_seconds{generation}` and `oracled_gc_frozen_objects` for a registry."""

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        hist = HistogramMetricFamily(
            "oracled_gc_pause_seconds",
            "Pauses of Python's garbage collector, by generation (the event loop stops for each).",
            labels=["generation"],
        )
        counts, sums = pauses()
        for generation in range(3):
            cumulative, buckets = 0, []
            for bound, n in zip((*BUCKETS, float("inf")), counts[generation], strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            hist.add_metric([str(generation)], buckets, sums[generation])
        yield hist
        yield GaugeMetricFamily(
            "oracled_gc_frozen_objects",
            "Objects in the permanent generation (frozen once the daemon is up; 0 if not).",
            value=gc.get_freeze_count(),
        )
