"""LogEveryMinute: one line a minute per key, and the count of the events held back."""

from __future__ import annotations

from oracled.lograte import LOG_EVERY_S, LogEveryMinute


def test_a_line_a_minute_per_key_with_the_number_since_the_last() -> None:
    """The first event of a key is due at once (count 1); those within the next minute are held
    back and counted; the first one after it is due with that count, itself included. Keys do
    not share their minute."""
    limiter = LogEveryMinute()
    assert limiter.due("slow", 1_000.0) == 1
    assert [limiter.due("slow", 1_000.0 + t) for t in (1, 30, LOG_EVERY_S - 1)] == [None] * 3
    assert limiter.due(("bad_frame", 1002), 1_001.0) == 1  # another key: its own minute
    assert limiter.due("slow", 1_000.0 + LOG_EVERY_S) == 4
    assert limiter.due("slow", 1_000.0 + LOG_EVERY_S + 1) is None
    assert limiter.due("slow", 1_000.0 + 5 * LOG_EVERY_S) == 2
