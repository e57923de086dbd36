"""The one-writer lock beside a file (`<path>.lock`), shared by every file oracled appends to or
rewrites: the audit trail, the manual pauses file, the signing lease and `oracled record`'s tape;
and the atomic, durable rewrite of a small file (`replace_durably`) that the pauses file and the
signing lease use.

An advisory `flock` on a file of its own, never on the data file: the kernel releases it with
the process, so a killed writer never leaves it stuck, and a second writer is told at once
instead of interleaving its lines with the first one's.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

__all__ = ["LockHeldError", "lock_beside", "replace_durably"]


class LockHeldError(Exception):
    """Another process holds the lock; `lock` is the lock file's path."""

    def __init__(self, lock: Path) -> None:
        self.lock = lock
        super().__init__(f"{lock} is held by another process")


def lock_beside(path: Path) -> int:
    """Take the lock of `path` and return its descriptor, to keep open while writing (closing it
    lets the lock go). LockHeldError if another process holds it; OSError if the lock file
    cannot be opened or locked for another reason."""
    lock = path.with_name(path.name + ".lock")
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


def replace_durably(path: Path, body: bytes) -> str | None:
    """Rewrite `path` whole with `body` and a newline, atomically and durably: a temporary file
    beside it, fsync, rename over it, fsync of the directory (so that the rename survives a power
    cut too); a reader sees the old file or the new one, never a torn one. Why not, if it could
    not be written (the old file is then left as it was)."""
    directory = path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
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
