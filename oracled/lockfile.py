"""The one-writer lock beside a file (`<path>.lock`), shared by every file oracled appends to or
rewrites: the audit trail, the manual pauses file and `oracled record`'s tape.

An advisory `flock` on a file of its own, never on the data file: the kernel releases it with
the process, so a killed writer never leaves it stuck, and a second writer is told at once
instead of interleaving its lines with the first one's.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["LockHeldError", "lock_beside"]


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
