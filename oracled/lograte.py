"""At most one log line a minute per key, with the number held back: for events a peer can cause
again and again (an API client's broken frames or stalled streams, a venue's error with every
frame), which must be heard of without letting that peer flood the log.

It sits at the package's top so that every layer (the API, the sources) can use it."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final

__all__ = ["LOG_EVERY_S", "LogEveryMinute"]

LOG_EVERY_S: Final = 60.0


class LogEveryMinute:
    """Says when an event's line is due: the first of each key, then once LOG_EVERY_S later."""

    __slots__ = ("_held", "_logged")

    def __init__(self) -> None:
        self._logged: dict[Hashable, float] = {}  # when each key's last line was written
        self._held: dict[Hashable, int] = {}  # events of each key since that line

    def due(self, key: Hashable, now: float) -> int | None:
        """The number of `key` events since its last line, this one included, when a line is due
        at `now` (a monotonic time, in seconds); else None, and this one is counted. Keys must be
        a bounded set: each keeps its entry."""
        count = self._held.get(key, 0) + 1
        if now - self._logged.get(key, now - LOG_EVERY_S) < LOG_EVERY_S:
            self._held[key] = count
            return None
        self._logged[key], self._held[key] = now, 0
        return count
