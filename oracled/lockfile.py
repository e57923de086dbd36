"""The one-writer lock beside a file (`<path>.lock`, beside the file a symbolic link leads to),
shared by every file oracled appends to or rewrites: the audit trail, the manual pauses file, the
signing lease and `oracled record`'s tape; and the atomic, durable rewrite of a small file
(`replace_durably`) that the pauses file and the signing lease use, with the clean-up of the
temporary files a writer killed mid-rewrite leaves (`remove_stale_temporaries`).

An advisory `flock` on a file of its own, never on the data file: the kernel releases it with
the process, so a killed writer never leaves it stuck, and a second writer is told at once
instead of interleaving its lines with the first one's.

The lock excludes only while its file is there, so each writer asks `lock_state` before a write
and all follow one rule on its answer. `HELD`: write. `MOVED` (the file locked is elsewhere for
a while, still locked by us): hold the writes back, the signer its rounds, the audit trail and
the tape their records in their bounded queues (counting what must then be dropped), and go on
once the very file is back; meanwhile nothing goes through an open descriptor into the moved
file either (each writer's docstring says why). `LOST`: write nothing more until a restart, said
once as an error. The pauses file alone differs: it is rewritten whole from the daemon's state,
so on `MOVED` or `LOST` it may lock the file now at the path and go on, if nobody holds that
one and nobody wrote the file since (`oracled/manual.py`). Each writer keeps the answers it got
in a `LockWatch`, which tells it the changes (away, back, lost) once each.
"""

from __future__ import annotations

import enum
import fcntl
import os
import re
import tempfile
from pathlib import Path

__all__ = [
    "LockChange",
    "LockHeldError",
    "LockState",
    "LockWatch",
    "beside_target",
    "lock_beside",
    "lock_path",
    "lock_state",
    "remove_stale_temporaries",
    "replace_durably",
]

#: The random part of a `tempfile.mkstemp` name: eight of these characters (CPython's
#: `tempfile._RandomNameSequence`), so that nothing but `replace_durably`'s own names matches.
_RANDOM = "[a-z0-9_]{8}"


class LockHeldError(Exception):
    """Another process holds the lock; `lock` is the lock file's path."""

    def __init__(self, lock: Path) -> None:
        self.lock = lock
        super().__init__(f"{lock} is held by another process")


def lock_path(path: Path) -> Path:
    """The lock file of `path`: `<file>.lock` beside the file `path` leads to, symbolic links
    followed (the file's own, relative to its directory, and its directories'), as each write of
    it follows them: two daemons naming one file by a link and by its real path took two locks
    and both wrote it. A link that points at no file yet (a dangling one) leads to where the
    first write makes it. With no link on the way, `<path>.lock` as `path` is spelt (relative
    stays relative); the writers' messages give this name. Asked again at each `lock_state`, so
    a link pointed elsewhere meanwhile leads to the lock of the file now written."""
    return beside_target(path, ".lock")


def beside_target(path: Path, ending: str) -> Path:
    """`<file><ending>` beside the file `path` leads to, links followed as `lock_path` says:
    a file kept for `path`'s sake (its lock, the audit trail's disk reserve) on the directory,
    and so the filesystem, of the file itself. Spelt as `path` is when no link is on the way."""
    real = os.path.realpath(path)
    if real != os.path.abspath(path):
        path = Path(real)
    return path.with_name(path.name + ending)


def lock_beside(path: Path) -> int:
    """Take the lock of `path` and return its descriptor, to keep open while writing (closing it
    lets the lock go). LockHeldError if another process holds it; OSError if the lock file
    cannot be opened or locked for another reason."""
    lock = lock_path(path)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockHeldError(lock) from None
    except OSError:
        os.close(fd)
        raise
    return fd


class LockState(enum.Enum):
    """What became of the lock file a writer locked (`lock_state`): the one three-way rule
    every single-writer file of oracled follows (docs/ARCHITECTURE.md, `lockfile.py`)."""

    #: The file at `<path>.lock` is the one locked: it excludes every other writer.
    HELD = "held"
    #: The file locked still has a name, only not at `<path>.lock` (its directory moved away
    #: for a while, a volume gone), or it cannot be looked at: no second writer can lock it
    #: meanwhile, so the holder holds its writes back and goes on once it is back.
    MOVED = "moved"
    #: The file locked has no name left (removed), or another file is at `<path>.lock` (the
    #: directory made again): a second writer can lock that one, or has, so the holder excludes
    #: nobody and writes no more until a restart.
    LOST = "lost"


def lock_state(path: Path, fd: int) -> LockState:
    """Whether the lock `fd` (from `lock_beside`) holds still excludes a second writer of
    `path`. A few system calls (an lstat per component of the path, for its links, then two;
    tens of microseconds), no lock taken, nothing written; a holder that must stay the only
    writer asks before each write it could not take back."""
    try:
        held = os.fstat(fd)
    except OSError:
        return LockState.MOVED
    # Removed is removed, whatever is at the path now: a removed file's inode number can be
    # given to the next file made (a new lock file in the directory made again), so the one
    # locked must still have a name to be the one at the path.
    if held.st_nlink == 0:
        return LockState.LOST
    try:
        beside = os.stat(lock_path(path))
    except OSError:
        return LockState.MOVED
    if (beside.st_dev, beside.st_ino) == (held.st_dev, held.st_ino):
        return LockState.HELD
    return LockState.LOST


class LockChange(enum.Enum):
    """A change of a writer's `lock_state` answers that it says, once (`LockWatch.update`)."""

    #: MOVED after HELD: the writes are held back from here.
    AWAY = "away"
    #: HELD after MOVED: the very file is back, the writes go on.
    BACK = "back"
    #: LOST, the first time: nothing more is written until a restart (or a new lock).
    LOST = "lost"


class LockWatch:
    """The `lock_state` a writer last acted on, so that it says each change once and not at each
    write: a lock file away for an hour is one error line and one line when it is back, not one
    a batch. `LOST` stays: a later answer (another file at the path moved away in turn, say)
    cannot make the lock exclude a second writer again, so it changes nothing until `reset`,
    which a writer that takes a new lock calls (the pauses file). Not thread-safe: a writer that
    asks from two threads holds its own lock around `update`."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = LockState.HELD

    @property
    def away(self) -> bool:
        """The lock file is not at its path (MOVED), as last seen: writes wait for it."""
        return self.state is LockState.MOVED

    @property
    def lost(self) -> bool:
        """The lock was found LOST: it excludes nobody, for good."""
        return self.state is LockState.LOST

    def update(self, state: LockState) -> LockChange | None:
        """Take `state`, the newest `lock_state` answer; the change it makes, if any, else None
        (the same answer again, or any answer once lost)."""
        if self.state is LockState.LOST or state is self.state:
            return None
        self.state = state
        if state is LockState.LOST:
            return LockChange.LOST
        return LockChange.AWAY if state is LockState.MOVED else LockChange.BACK

    def reset(self) -> None:
        """A new lock is taken: held, with nothing seen of it yet."""
        self.state = LockState.HELD


def _target(path: Path) -> Path:
    """The file `path` leads to: a symbolic link is followed, as a read of it follows it. The
    rename of a rewrite replaced the link itself with a file of its own, and the file it pointed
    at (on a volume that outlives the process, say) kept its old contents for the next start."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def replace_durably(path: Path, body: bytes) -> str | None:
    """Rewrite `path` whole with `body` and a newline, atomically and durably: a temporary file
    beside it, fsync, rename over it, fsync of the directory (so that the rename survives a power
    cut too); a reader sees the old file or the new one, never a torn one. A symbolic link is
    written through: the file it points at is rewritten, beside which the temporary file is
    made. Why not, if it could not be written (the old file is then left as it was)."""
    path = _target(path)
    directory = path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body + b"\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temporaries(path: Path) -> list[str]:
    """Remove the temporary files `replace_durably` left beside `path` when its writer died
    between creating one and renaming it (`kill -9`, a power cut): nothing else removes them,
    and each start after such a death would leave one more. Only names `replace_durably` makes
    for this very file match (`.<name>.` and eight random characters); call it holding the
    file's lock (`lock_beside`), when no writer of ours can be half-way through a rewrite.
    Returns the names removed; one that cannot be removed is left, unreported (the next start
    tries again). Beside the file a symbolic link `path` points at, where the rewrite makes them."""
    path = _target(path)
    pattern = re.compile(re.escape(_temporary_prefix(path)) + _RANDOM)
    removed: list[str] = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in sorted(names):
        if pattern.fullmatch(name) is None:
            continue
        try:
            (path.parent / name).unlink()
        except OSError:
            continue
        removed.append(name)
    return removed
