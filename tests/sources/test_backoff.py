"""The reconnect delay: exponential growth, full jitter, a cap, and determinism under a seed."""

from __future__ import annotations

import itertools
import random

from oracled.sources import backoff_delay


def test_delays_stay_within_the_doubling_ceiling() -> None:
    """Every delay for attempt n lies in [0, base * 2**n] while that is below the cap."""
    rng = random.Random(1)
    for attempt in range(6):
        ceiling = 0.5 * 2**attempt
        delays = [backoff_delay(attempt, 0.5, 100.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.9  # the whole range is used: it is full jitter


def test_delays_grow_with_attempts() -> None:
    """The average delay roughly doubles from one attempt to the next until the cap."""
    rng = random.Random(2)
    means = [sum(backoff_delay(a, 0.5, 100.0, rng) for _ in range(400)) / 400 for a in range(5)]
    assert all(later > earlier * 1.6 for earlier, later in itertools.pairwise(means))


def test_delays_are_jittered() -> None:
    """Two clients failing at the same attempt do not wait the same time."""
    rng = random.Random(3)
    delays = {backoff_delay(4, 0.5, 30.0, rng) for _ in range(50)}
    assert len(delays) == 50


def test_cap_bounds_every_delay_even_for_huge_attempts() -> None:
    """The cap holds and a very large attempt count does not overflow."""
    rng = random.Random(4)
    delays = [backoff_delay(a, 0.5, 3.0, rng) for a in (10, 100, 10_000)]
    assert all(0.0 <= d <= 3.0 for d in delays)


def test_same_seed_gives_same_delays() -> None:
    """The function is pure given its generator: a seed reproduces the sequence."""
    first = [backoff_delay(a, 0.5, 30.0, random.Random(9)) for a in range(8)]
    second = [backoff_delay(a, 0.5, 30.0, random.Random(9)) for a in range(8)]
    assert first == second
