"""Operator pauses that outlive the process: the manual gate's state in a small JSON file.

A market an operator paused (`POST /v1/admin/markets/{market}/pause`) must not go live again
because the daemon restarted: a deploy, a crash or the OOM killer during an incident would
otherwise lift the pause behind the operator's back. With `oracle.manual_pauses_file` set, every
pause and resume rewrites the file, and start-up reads it back before the first round.

The file is written whole and atomically (a temporary file beside it, fsync, rename), by one
worker thread, in the order of the actions, so that the event loop never waits on the disk and
a crash mid-write leaves the previous version. The admin API awaits the write before it answers:
a pause answered 200 is on disk, and one that could not be written is answered with an error
(it holds in memory, not across a restart), counted and shown in `stats`. A write that does not
finish within `SAVE_TIMEOUT_S` (a hung network mount) is such an error too: the answer cannot
wait for a disk that may never come back. The worker is a daemon thread, and the stop waits
for it a bounded time, so a stuck write never holds the process at its exit. A file that exists
but cannot be read stops the start with a config error: the daemon cannot know which markets
were meant to stay paused.

A writer killed between creating its temporary file and the rename leaves that file beside the
pauses file: the next writer removes it once it holds the lock (only names the rewrite makes for
this file), with a warning.

One process writes the file: the writer holds a lock file beside it (`<path>.lock`). Two daemons
on one file would each rewrite it with their own pauses only, and a restart would lift the
other's; the one without the lock writes nothing and logs each pause it could not keep, for as
long as it runs: once it has found the lock held by another process it does not take it when the
other lets it go either, since its own pauses are not the file's (the other's made since would be
lost from the file). A lock that could not be taken for another reason (the lock file could not
be opened) is tried again at the next save. The lock excludes only while its file is there: one
removed (or its directory made again) lets a second daemon lock a new one, so each rewrite first
asks `lockfile.lock_state` whether it is still the file locked. `HELD`: it writes. `MOVED` or
`LOST`: it locks the file now at the path and goes on only if nobody holds that one and the
pauses file is still as it last wrote or read it (or gone with its directory, a lost volume
mounted again); else nothing is written until a restart. While the path's directory is not
there at all (moved away), each save fails, the moved lock kept, and the saves go on once it
is back.

Why not the other writers' rule (`MOVED`: hold back until the very lock file is back; `LOST`:
no write until a restart): each save is the daemon's whole state, rewritten by path (a temporary
file renamed over it, no descriptor of the file kept open), so there is nothing to hold back and
no gap or interleaving a later write could make; and the admin call waits for the save's answer
(`SAVE_TIMEOUT_S`), so a save cannot wait for a directory to come back, it fails and is counted.
What must never happen is a rewrite over a second daemon's pauses: the lock at the path and the
file unchanged since this daemon's last read or write rule that out, so a clean-up of lock files
or a volume mounted again costs no pause, where the appending writers stop for good.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import msgspec
import structlog

from oracled.errors import ConfigError
from oracled.files import read_regular
from oracled.lockfile import (
    LockHeldError,
    LockState,
    LockWatch,
    lock_beside,
    lock_path,
    lock_state,
    remove_stale_temporaries,
    replace_durably,
)

__all__ = ["FORMAT", "SAVE_TIMEOUT_S", "ManualPauses", "Pause", "PauseStats"]

FORMAT = "oracled-manual-pauses"
_VERSION = 1
#: Seconds a save may take before it is answered as not saved (the write itself goes on).
SAVE_TIMEOUT_S = 5.0


class Pause(msgspec.Struct, frozen=True):
    """Who paused a market, and when (ms since the epoch, the daemon's clock)."""

    actor: str
    ts: int


@dataclass(slots=True)
class PauseStats:
    """What /metrics shows of the file: saves that failed, and whether the latest is on disk
    (plain values written by the worker thread, read at scrape time)."""

    failures: int = 0
    kept: bool = True


class _File(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    version: int
    paused: dict[str, Pause]


_decode = msgspec.json.Decoder(_File).decode
_encode = msgspec.json.Encoder().encode


class ManualPauses:
    """The file of one daemon's manual pauses: read at start-up, rewritten after each change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[tuple[bytes, Future[str | None]] | None] = (
            queue.SimpleQueue()
        )
        self._writer = threading.Thread(target=self._work, name="manual-pauses", daemon=True)
        self._writer.start()
        self._answer = threading.Lock()  # the writer and the timer settle a save's future
        self.save_timeout_s = SAVE_TIMEOUT_S
        self._log = structlog.get_logger("oracled").bind(component="manual", path=str(path))
        self._lock_fd: int | None = None  # held from `claim` (or the first save) to `close`
        self._held_elsewhere: str | None = None  # another process held the lock: never written
        #: What became of the lock file locked: not held (moved or lost), the next lock taken
        #: must find the file as this daemon left it (reset once one is)
        self._lock_watch = LockWatch()
        self._written: bytes | None = None  # the file as last read or written (None: none)
        self.stats = PauseStats()

    def load(self) -> dict[str, Pause]:
        """The pauses kept by the last run: none if the file does not exist yet (a first start);
        ConfigError if it exists and cannot be read as this format."""
        try:
            data = read_regular(self.path)[0]  # a FIFO is refused, not waited on
            self._written = data
        except FileNotFoundError:
            if not self.path.parent.is_dir():  # no pause could ever be saved: say so now
                raise ConfigError(
                    [
                        f"oracle.manual_pauses_file: {self.path}: directory "
                        f"{self.path.parent} does not exist"
                    ]
                ) from None
            return {}
        except OSError as exc:
            raise ConfigError(
                [f"oracle.manual_pauses_file: cannot read {self.path} ({exc.strerror or exc})"]
            ) from None
        try:
            state = _decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested deep
            raise ConfigError(
                [
                    f"oracle.manual_pauses_file: {self.path} is not a pause file ({exc}); "
                    "fix it, or move it aside to start with no market paused"
                ]
            ) from None
        if (state.format, state.version) != (FORMAT, _VERSION):
            raise ConfigError(
                [
                    f"oracle.manual_pauses_file: {self.path} is {state.format!r} version "
                    f"{state.version}, not {FORMAT!r} version {_VERSION}"
                ]
            )
        return state.paused

    def claim(self) -> bool:
        """Become the file's one writer (the daemon does at start-up); False, with a warning,
        if another process writes it: pauses made here are then not kept."""
        refused = self._take_lock()
        if refused is not None:
            self._log.warning("manual pauses will not be kept", error=refused)
        return refused is None

    def _take_lock(self) -> str | None:
        """Take the lock if not held; why not, if it cannot be (the kernel releases it with the
        process, so a killed daemon never leaves it stuck)."""
        if self._lock_fd is not None:
            state = lock_state(self.path, self._lock_fd)
            self._lock_watch.update(state)  # not held: the lock taken below is `_relocking`
            if state is LockState.HELD:
                return None
            if state is LockState.LOST:  # excludes nobody: the file at the path is locked below
                self._let_go()
            # MOVED: kept until a lock at the path is taken, and held again if it comes back
        if self._held_elsewhere is not None:
            return self._held_elsewhere
        try:
            fd = lock_beside(self.path)
        except LockHeldError as exc:
            if self._relocking:  # a second daemon let in by the new lock file
                return self._lose_lock()
            self._held_elsewhere = (
                f"{self.path} is written by another process (it holds {exc.lock}): a second "
                "daemon needs a manual_pauses_file of its own"
            )
            return self._held_elsewhere
        except OSError as exc:
            return f"cannot lock {self.path} ({exc.strerror or exc})"
        if self._relocking:
            self._lock_watch.reset()
            if not self._unchanged():  # another daemon wrote it, locked, and let go since
                os.close(fd)
                return self._lose_lock()
        self._let_go()  # a lock file moved away, replaced by the one at the path
        self._lock_fd = fd
        # Under the lock no rewrite of ours is half-way: a temporary file beside the file is one
        # a writer killed mid-rewrite left, and nothing else would ever remove it.
        removed = remove_stale_temporaries(self.path)
        if removed:
            self._log.warning(
                "manual pauses: removed temporary files a killed writer left", files=removed
            )
        return None

    @property
    def _relocking(self) -> bool:
        """The lock file locked was found moved or lost, and no lock has been taken since: the
        next one taken must find the file as this daemon left it."""
        return self._lock_watch.state is not LockState.HELD

    def _let_go(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _unchanged(self) -> bool:
        """True if the file is as this daemon last read or wrote it, or gone (its directory
        made again): no other daemon wrote it while its lock file was not this one's."""
        try:
            return read_regular(self.path)[0] == self._written
        except FileNotFoundError:
            return True
        except OSError:
            return False

    def _lose_lock(self) -> str:
        """The lock file was removed (a clean-up of lock files), or its directory made again,
        and a second daemon locked the new one or wrote the file: a rewrite with this daemon's
        pauses would lift its. So, as for a lock held elsewhere, nothing is written until a
        restart (each save refused and counted); said once as an error."""
        self._let_go()  # a lock file moved away is not taken back either
        lock = lock_path(self.path)
        self._held_elsewhere = (
            f"its lock file {lock} is gone (removed, or its directory made again): another "
            "daemon may write the file; restart this one"
        )
        self._log.error("manual pauses lock lost: no pause is kept until a restart", lock=str(lock))
        return self._held_elsewhere

    def save(self, paused: Mapping[str, Pause]) -> Future[str | None]:
        """Rewrite the file with `paused` in the worker thread; the future gives why it could
        not be written, or None once it is on disk, within `save_timeout_s` either way (a write
        still running then is answered as failed). A failure is also logged and counted there
        (the pause itself holds in the running process either way)."""
        body = _encode(_File(FORMAT, _VERSION, dict(sorted(paused.items()))))
        done: Future[str | None] = Future()
        done.set_running_or_notify_cancel()
        timer = threading.Timer(self.save_timeout_s, self._expire, (done,))
        timer.daemon = True
        timer.start()
        done.add_done_callback(lambda _: timer.cancel())
        self._queue.put((body, done))
        return done

    def close(self, timeout_s: float = 1.0) -> bool:
        """Wait `timeout_s` at most for the writes already asked for, then let the file go;
        no more after this. False if a write is still stuck (it is left behind, the lock with
        it: the kernel releases that with the process)."""
        self._queue.put(None)
        self._writer.join(timeout_s)
        if self._writer.is_alive():
            return False
        self._let_go()
        return True

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            body, done = job
            # Once found held by another process, never written, not even once the holder is
            # gone (it wrote pauses this one never saw; a rewrite with ours alone lifts them).
            error = self._take_lock() or replace_durably(self.path, body)
            if error is None:
                self._written = body + b"\n"  # as `replace_durably` writes it
            with self._answer:
                self.stats.kept = error is None
                late = done.done()  # answered, counted and logged as failed by `_expire`
                if error is not None and not late:
                    self.stats.failures += 1
                    self._log.error(
                        "manual pauses not saved: a restart would lift them", error=error
                    )
                elif late:
                    self._log.warning("manual pauses write ended late", error=error)
                if not late:
                    done.set_result(error)

    def _expire(self, done: Future[str | None]) -> None:
        """The save took longer than its bound: answer it as failed, counted and logged."""
        with self._answer:
            if done.done():
                return
            error = f"the write did not finish within {self.save_timeout_s:g} s (a hung disk?)"
            self.stats.failures += 1
            self.stats.kept = False
            self._log.error("manual pauses not saved: a restart would lift them", error=error)
            done.set_result(error)
