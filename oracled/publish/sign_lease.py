"""The signing lease: the round times a key may sign, reserved on disk before it signs them.

A key signs one round per round time (docs/publishing.md, *Equivocation*). The audit trail's
newest signed round gives a floor at start-up, but only where the trail is on, and a `kill -9`
loses the signatures its writer had not stored yet. The lease closes both: before the signer signs
round time `t` it must hold `lease >= t` in a small file (`signing.lease_file`), and a start reads
the lease back as the floor, so a restart whose clock is behind signs no time the last run may
have signed, however it ended.

The lease runs `signing.lease_window_ms` ahead of the rounds, so one write (temporary file, fsync,
rename, fsync of the directory) covers many rounds. The writes happen in a thread of their own,
never on the round loop: a round whose time the lease does not cover yet goes out unsigned and is
counted (`lease`), like one skipped as `busy`. A stop writes the lease back down to the newest
round time handed to the signer (or, when none was, back to what the start found), so a clean
restart signs from its first round; after a crash the restart waits at most a window for the
clock to pass the lease. The daemon takes the lease at the end of its start, once nothing else
can refuse it (`Service`): a start refused earlier (its port in use, a sink that cannot start)
never moved it, nor held its lock.

The file holds one lease per signer address, so a key rotation starts its own lease and a key
rotated back finds its old one. One daemon writes it: it holds `<path>.lock` (released by the
kernel with the process, even on `kill -9`), and looks before each signature that it is still
there (`held`): one removed lets another daemon in, so the lease is then lost until a restart;
one only moved away (its directory renamed) holds the rounds back until it is back. A
writer killed mid-write leaves its temporary file beside the lease; the next start removes it,
holding the lock.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import msgspec
import structlog

from oracled.clock import FIRST_MS, LAST_MS
from oracled.config import LEASE_FILE_REQUIRED
from oracled.errors import ConfigError
from oracled.files import read_regular
from oracled.lockfile import (
    LockChange,
    LockHeldError,
    LockState,
    LockWatch,
    lock_beside,
    lock_path,
    lock_state,
    remove_stale_temporaries,
    replace_durably,
)

__all__ = [
    "FORMAT",
    "LeaseStats",
    "SignLease",
    "check_sign_lease",
    "open_sign_lease",
    "require_sign_lease",
]

FORMAT = "oracled-signing-lease"
_VERSION = 1
_ADDRESS_CHARS = frozenset("0123456789abcdefABCDEF")
#: A lease is a round time in milliseconds since the epoch: FIRST_MS to LAST_MS (the tape's
#: rule for `ts`). One below was written in seconds (or is a placeholder such as 0 or 1,
#: or a clock never set): as the floor it is below every round time, so it protects nothing. One
#: above, in microseconds, would leave the key unable to sign for tens of thousands of years.
#: Neither is read as another unit: only a daemon with its clock unset writes one, so what its
#: writer meant is a guess, and a wrong guess signs round times again or never signs at all.


def _spelling(address: str) -> str:
    """An address as compared: lower case, without 0x (the audit trail compares it so too)."""
    return address.removeprefix("0x").lower()


class _File(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    version: int
    #: signer address (EIP-55) -> the newest round time (ms) it may have signed
    leases: dict[str, int]


_decode = msgspec.json.Decoder(_File).decode
_encode = msgspec.json.Encoder().encode


def _repeated_key(data: bytes) -> str | None:
    """A key written twice in one object of the file (an entry of `leases`, or `leases`
    itself), else None. Only a hand or a merge writes one; of two leases of one key the
    decoder keeps the last, which may be the lower, and a floor under a round time signed
    before lets a restart sign it again."""
    repeated: list[str] = []

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        found = dict(items)
        if len(found) < len(items):
            seen: set[str] = set()
            for key, _ in items:
                if key in seen:
                    repeated.append(key)
                seen.add(key)
        return found

    json.loads(data, object_pairs_hook=pairs)  # read by msgspec already: it is JSON
    return repeated[0] if repeated else None


class _Stop:
    """The lease thread's last job: let the file go."""


_STOP = _Stop()


@dataclass(slots=True)
class LeaseStats:
    """Plain counters written by the lease thread, read at scrape time and by tests."""

    writes: int = 0  # leases written to disk
    failures: int = 0  # writes that failed (the error is logged)


class SignLease:
    """One key's lease in the file: `floor` is the lease found at start (round times up to it may
    have been signed by an earlier run), `granted` the lease now on disk (times up to it may be
    signed). Construct with `open`; `due`/`extend` from the event loop, the writes in a thread."""

    def __init__(self, path: Path, address: str, window_ms: int) -> None:
        self.path = path
        self.address = address
        self.window_ms = window_ms
        self.floor: int | None = None
        self.granted: int | None = None
        self.stats = LeaseStats()
        self._others: dict[str, int] = {}  # other keys' leases: rewritten as found
        self._lock_fd: int | None = None
        self._writing = False  # an extension is queued or being written
        self._failing = False  # the last write failed (logged once each way)
        self._lock_watch = LockWatch()  # what became of the lock file, as `held` last saw
        self._losing = threading.Lock()  # `held` is asked by the signer and the lease thread
        # leases to write (None: this key's entry taken out), then _STOP
        self._jobs: queue.SimpleQueue[int | _Stop | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="oracled-sign-lease", daemon=True)
        self._log = structlog.get_logger("oracled").bind(
            component="signer", path=str(path), signer=address
        )

    @classmethod
    def open(cls, path: Path, address: str, window_ms: int, now_ms: int) -> SignLease:
        """Take the file's lock, read it and write a first lease from `now_ms` (at start-up,
        before any round). ConfigError, naming the file and the key, if its directory does not
        exist, another process holds it, or it cannot be read as a lease (the lock let go); a
        first write that fails is logged, and the rounds stay unsigned (counted) until one
        succeeds."""
        lease = cls(path, address, window_ms)
        lease._lock()  # before the read: a file read unlocked may still be extended by its holder
        lease._remove_stale_temporaries()
        try:
            lease._load()
        except ConfigError:
            lease._unlock()
            raise
        lease._write(lease._target(now_ms))
        lease._thread.start()
        return lease

    def _remove_stale_temporaries(self) -> None:
        """A writer killed between creating its temporary file and renaming it over the lease
        leaves the temporary beside it: removed here, under the lock (no writer of the file can
        be half-way through a rewrite now), and only ours by name."""
        removed = remove_stale_temporaries(self.path)
        if removed:
            self._log.warning(
                "signing lease: removed temporary files a killed writer left", files=removed
            )

    def _problem(self, text: str) -> ConfigError:
        return ConfigError([f"signing.lease_file: {self.path} (signer {self.address}): {text}"])

    def _load(self) -> None:
        state = self.read()
        if state is None:
            self._log.info("no signing lease file yet: a first start")
            return
        # Any spelling of this key's address is its lease (an entry written by hand, in lower
        # case or without 0x): the highest one is the floor, and the next write keeps only the
        # EIP-55 one. Matched exactly, such an entry was no floor at all.
        mine = _spelling(self.address)
        leases = state.leases.items()
        self.floor = max((ts for a, ts in leases if _spelling(a) == mine), default=None)
        self._others = {a: ts for a, ts in leases if _spelling(a) != mine}
        if self.floor is None:
            self._log.info("no signing lease for this key yet: its first start with this file")
        else:
            self._log.info("signing lease", floor=self.floor)

    def read(self) -> _File | None:
        """The file's leases, None if there is none yet; ConfigError if it cannot be read as a
        lease or its directory does not exist. Reads only: no lock, no write, no log line."""
        try:
            data = read_regular(self.path)[0]  # a FIFO is refused, not waited on
        except FileNotFoundError:
            if not self.path.parent.is_dir():
                raise self._problem(f"directory {self.path.parent} does not exist") from None
            return None
        except OSError as exc:
            raise self._problem(f"cannot read it ({exc.strerror or exc})") from None
        try:
            state = _decode(data)
        except msgspec.DecodeError as exc:
            raise self._problem(
                f"not a signing lease ({exc}); restore it, or move it aside only with the clock "
                "known to be past every round time this key signed (docs/publishing.md)"
            ) from None
        if (state.format, state.version) != (FORMAT, _VERSION):
            raise self._problem(
                f"{state.format!r} version {state.version}, not {FORMAT!r} version {_VERSION}"
            )
        twice = _repeated_key(data)
        if twice is not None:  # the decoder keeps the last: the floor could be the lower one
            raise self._problem(f"not a signing lease (key {twice!r} appears twice)")
        for address, ts in state.leases.items():
            body = address.removeprefix("0x")
            if len(body) != 40 or not set(body) <= _ADDRESS_CHARS:
                raise self._problem(f"not a signing lease (entry {address!r}: {ts})")
            if not FIRST_MS <= ts <= LAST_MS:
                raise self._problem(
                    f"lease {ts} of {address!r} is no round time in milliseconds since the epoch "
                    "(13 digits, 2001 to 2286; written in seconds or microseconds, or by a clock "
                    "never set), so no floor: write the newest round time this key signed plus "
                    "lease_window_ms, in milliseconds, or move the file aside only with the clock "
                    "known to be past every round time this key signed (docs/publishing.md)"
                )
        return state

    def _lock(self) -> None:
        if not self.path.parent.is_dir():
            raise self._problem(f"directory {self.path.parent} does not exist")
        try:
            self._lock_fd = lock_beside(self.path)
        except LockHeldError as exc:
            raise self._problem(
                f"held by another process ({exc.lock}): each daemon needs a lease_file of its own"
            ) from None
        except OSError as exc:
            raise self._problem(f"cannot lock it ({exc.strerror or exc})") from None

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def held(self) -> bool:
        """True while `<path>.lock` is still the file this process locked (`lock_state`). One
        removed (a clean-up of lock files), or its directory removed and made again, excludes
        nobody: a second daemon locks a new one and signs from its own start. So the first time
        it is found `LOST` this lease is lost for good (logged once): it covers no round and
        writes nothing, not even down at the stop (it would overwrite the second daemon's
        lease); a restart takes the lock again, or is refused while the other daemon holds it.
        Found `MOVED` (its directory moved away with it, a volume gone), it still excludes
        everyone: no round is signed, and no lease written, until the very file is back (the
        lease is rewritten by name, with no descriptor of it kept open: a write meanwhile would
        go to whatever is at the path, not to the lease moved away). A few system calls, asked
        by the signer thread before each signature, never on the loop."""
        with self._losing:
            if self.lost or self._lock_fd is None:  # lost, or let go at the stop
                return False
            state = lock_state(self.path, self._lock_fd)
            change = self._lock_watch.update(state)
            if change is LockChange.BACK:
                self._log.info("signing lease lock file back: rounds are signed again")
            elif change is LockChange.AWAY:
                self._log.error(
                    "signing lease lock file missing: no round is signed until it is back",
                    lock=str(lock_path(self.path)),
                )
        if change is LockChange.LOST:
            self._log.error(
                "signing lease lock lost: no round is signed until a restart",
                lock=str(lock_path(self.path)),
            )
        return state is LockState.HELD

    @property
    def lost(self) -> bool:
        """The lock file is no longer the one locked: no grant, no write, until a restart."""
        return self._lock_watch.lost

    def _target(self, ts: int) -> int:
        """The lease to write for round time `ts`: a window ahead, never under the floor."""
        return max(ts + self.window_ms, self.floor or 0)

    def covers(self, ts: int) -> bool:
        """True if round time `ts` may be signed: the lease on disk reaches it."""
        granted = self.granted
        return granted is not None and ts <= granted and not self.lost

    def due(self, ts: int) -> bool:
        """True if the lease should be extended at round time `ts`: less than half a window is
        left, and no write is under way."""
        granted = self.granted
        return not self._writing and (granted is None or ts + self.window_ms // 2 > granted)

    def extend(self, ts: int) -> None:
        """Ask the lease thread to reserve a window from round time `ts` (it never blocks)."""
        self._writing = True
        self._jobs.put(self._target(ts))

    def close(self, down_to: int | None, timeout_s: float = 1.0) -> bool:
        """Write the lease down to `down_to` (the newest round time handed to the signer: nothing
        after it was signed; None: none was, so the lease goes back to what `open` found, the
        floor, or no entry for this key), wait `timeout_s` at most, let the file go. False if a
        write is still stuck (left to the thread; the kernel frees the lock with the process).

        Put back on None, not left a window ahead: a start refused after `open`, or stopped
        before its first round, signed nothing, and the next start (the peer that really holds
        the key, maybe) would otherwise wait that window out before signing."""
        if self._thread.is_alive():
            self._jobs.put(down_to if down_to is not None else self.floor)
        self._jobs.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                return False
        self._unlock()
        return True

    def _work(self) -> None:
        while not isinstance(target := self._jobs.get(), _Stop):
            self._write(target)
            self._writing = False

    def _write(self, target: int | None) -> None:
        """Write `target` as this key's lease (None: no entry for it); `granted` follows once it
        is on disk. Nothing once the lock is lost (`held`)."""
        if not self.held():
            return
        mine = {} if target is None else {self.address: target}
        body = _encode(_File(FORMAT, _VERSION, {**self._others, **mine}))
        error = replace_durably(self.path, body)
        if error is None:
            self.stats.writes += 1
            self.granted = target
            if self._failing:
                self._failing = False
                self._log.info("signing lease written again", lease=target)
            return
        self.stats.failures += 1
        if not self._failing:
            self._failing = True
            self._log.error(
                "signing lease not written: rounds past it go unsigned", error=error, lease=target
            )


def require_sign_lease(path: str | None, address: str) -> None:
    """What `open_sign_lease` would refuse that shows without taking the file (no file named,
    one that is not a lease, its directory missing), for the daemon's construction: the lease
    itself is taken at the end of the start, so that a start refused before that moves nothing,
    but a bad file is still refused before anything starts (ConfigError, exit code 2)."""
    if path is None:
        raise ConfigError([LEASE_FILE_REQUIRED])
    check_sign_lease(path, address)


def check_sign_lease(path: str | None, address: str) -> None:
    """What `open_sign_lease` refuses at start-up (ConfigError: the file unreadable as a lease,
    its directory missing), read only, for `oracled check-config --as-daemon`: it runs before the
    daemon on the same files, on a read-only mount, maybe while the daemon it replaces still
    runs, so it takes no lock (one held by another daemon is the start's to refuse) and writes
    nothing."""
    if path is not None:
        SignLease(Path(path), address, 0).read()


def open_sign_lease(
    path: str | None, address: str, window_ms: int, now_ms: int, interval_ms: int
) -> SignLease:
    """The lease of `address` in the file `path` (`signing.lease_file`), taken at start-up. A
    signer never runs without one: a config loaded with signing on names it, and one built
    without validation (no file named) is refused here, as at load.

    The window is at least two round intervals (`interval_ms`), raised with a warning: a lease
    extended at one round must already reach the next one, or no round is ever signed (a window
    shorter than the interval left every round of a 15 s interval unsigned, counted `lease`)."""
    if path is None:
        raise ConfigError([LEASE_FILE_REQUIRED])
    if window_ms < 2 * interval_ms:
        structlog.get_logger("oracled").bind(component="signer").warning(
            "signing lease window raised to two round intervals",
            lease_window_ms=window_ms,
            used_ms=2 * interval_ms,
        )
        window_ms = 2 * interval_ms
    return SignLease.open(Path(path), address, window_ms, now_ms)
