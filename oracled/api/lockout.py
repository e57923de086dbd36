"""Failed admin token checks per client address, and the cool-down enough of them earn.

A token of 32 random bytes cannot be guessed, but the daemon accepts one of 16 characters, and
nothing bounded how fast a client could try: `api.admin_lockout_failures` failed checks from one
address within `api.admin_lockout_window_s` refuse that address's admin calls, the right token
included, for `api.admin_lockout_s` (oracled/api/admin.py answers them 429). Other addresses
are not concerned. Times are the API's injected clock's (`Clock.monotonic`).

The table is bounded (`MAX_ADDRESSES`): past it, entries whose window and cool-down are over go
first, then the oldest outside a cool-down, then the oldest, so that a client with many
addresses cannot grow it for good (only one with that many addresses in cool-downs at once
lifts the oldest one's early).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_ADDRESSES", "Lockout"]

#: Addresses the table remembers at most.
MAX_ADDRESSES = 4096


@dataclass(slots=True)
class _Entry:
    since: float  # when the window of the failures counted began
    failures: int
    until: float | None = None  # the end of the cool-down, while one runs


class Lockout:
    """The failures and cool-downs of each client address."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}  # insertion-ordered: the oldest goes first

    def __len__(self) -> int:
        return len(self._entries)

    def locked_for(self, address: str, now: float) -> float | None:
        """Seconds left of `address`'s cool-down at `now`, or None when it may try."""
        entry = self._entries.get(address)
        if entry is None or entry.until is None:
            return None
        if now < entry.until:
            return entry.until - now
        del self._entries[address]  # over: it starts again from no failure
        return None

    def failed(
        self, address: str, now: float, failures: int, window_s: float, lockout_s: float
    ) -> bool:
        """Count a failed check of `address`; True when it starts a cool-down (the
        `failures`-th within `window_s` of the first counted)."""
        entry = self._entries.get(address)
        if entry is None or now - entry.since > window_s:
            self._entries.pop(address, None)
            if len(self._entries) >= MAX_ADDRESSES:
                self._prune(now, window_s)
            entry = self._entries[address] = _Entry(now, 0)
        entry.failures += 1
        if entry.failures < failures:
            return False
        entry.until = now + lockout_s
        return True

    def clear(self) -> None:
        """Forget every address: the lock-out was turned off (a reload), and a cool-down that
        ran on would keep out the operators it was turned off for."""
        self._entries.clear()

    def succeeded(self, address: str) -> None:
        """A check of `address` passed: its failures so far are forgiven."""
        self._entries.pop(address, None)

    def _prune(self, now: float, window_s: float) -> None:
        self._entries = {
            address: entry
            for address, entry in self._entries.items()
            if (now < entry.until if entry.until is not None else now - entry.since <= window_s)
        }
        while len(self._entries) >= MAX_ADDRESSES:
            # The oldest not in a cool-down, else the oldest.
            free = (a for a, entry in self._entries.items() if entry.until is None)
            del self._entries[next(free, next(iter(self._entries)))]
