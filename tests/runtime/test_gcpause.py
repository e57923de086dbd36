"""oracled/gcpause.py: collector pauses timed per generation, start-up objects frozen."""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from oracled import gcpause


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    gcpause.install()
    reg = CollectorRegistry()
    reg.register(gcpause.GcCollector())
    yield reg


def _samples(reg: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(reg).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_install_is_idempotent() -> None:
    """Installing twice leaves one callback: each collection is timed once, not twice."""
    gcpause.install()
    gcpause.install()
    assert sum(1 for cb in gc.callbacks if cb == gcpause._PAUSES.on_gc) == 1


def test_each_collection_is_counted_in_its_generation(registry: CollectorRegistry) -> None:
    """Collections are counted under their generation, each in the bucket its time falls in
    (the summed seconds lie between the buckets' bounds), and exported as a cumulative
    histogram."""
    before_counts, before_sums = gcpause.pauses()
    gc.collect(0)
    gc.collect(2)
    gc.collect(2)
    counts, sums = gcpause.pauses()
    assert sum(counts[0]) - sum(before_counts[0]) >= 1
    assert sum(counts[2]) - sum(before_counts[2]) >= 2
    assert sums[2] > before_sums[2]
    lower, upper = (0.0, *gcpause.BUCKETS), (*gcpause.BUCKETS, math.inf)
    for gen in range(3):
        # Bucket k holds pauses in (lower[k], upper[k]]: their sum is bounded by the counts.
        least = sum(n * bound for n, bound in zip(counts[gen], lower, strict=True))
        most = sum(n * bound for n, bound in zip(counts[gen], upper, strict=True) if n)
        assert least * (1 - 1e-9) <= sums[gen] <= most * (1 + 1e-9), gen

    samples = _samples(registry)
    for generation in "012":
        count = samples[("oracled_gc_pause_seconds_count", (("generation", generation),))]
        inf = samples[
            ("oracled_gc_pause_seconds_bucket", (("generation", generation), ("le", "+Inf")))
        ]
        assert inf == count == sum(gcpause.pauses()[0][int(generation)])
        buckets = [
            samples[
                ("oracled_gc_pause_seconds_bucket", (("generation", generation), ("le", repr(b))))
            ]
            for b in gcpause.BUCKETS
        ]
        assert buckets == sorted(buckets)  # cumulative
        assert buckets[-1] <= inf
    assert samples[("oracled_gc_pause_seconds_count", (("generation", "2"),))] >= 2


def test_freeze_moves_live_objects_out_of_every_later_collection(
    registry: CollectorRegistry,
) -> None:
    """freeze() moves the live objects to the permanent generation and says how many; the
    gauge exports that count, and 0 once unfrozen."""
    assert gc.get_freeze_count() == 0
    try:
        frozen = gcpause.freeze()
        assert frozen > 1000  # this process's modules and test state, at least
        assert gc.get_freeze_count() == frozen
        assert _samples(registry)[("oracled_gc_frozen_objects", ())] == frozen
    finally:
        gc.unfreeze()
    assert _samples(registry)[("oracled_gc_frozen_objects", ())] == 0
