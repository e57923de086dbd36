"""The audit trail's disk reserve: a file of a few MiB allocated beside the database.

A full disk cannot be cleared from inside an SQLite database in WAL mode: deleting rounds is itself
a write to the `-wal` file, which cannot grow either, and the frames already there cannot be
checkpointed into a database file that would have to grow. Giving this file back to the
filesystem makes the room those writes need (docs/publishing.md, *A full disk*).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Final

__all__ = ["DiskReserve", "no_space"]

#: The errors of a filesystem with no room left (a quota counts as one).
_NO_SPACE: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def no_space(exc: OSError) -> bool:
    """True for the OSError of a full filesystem (or quota)."""
    return exc.errno in _NO_SPACE


class DiskReserve:
    """`size` bytes of really allocated disk (not a sparse file) at `path`, held or released."""

    __slots__ = ("held", "path", "size")

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.held = False

    def hold(self) -> bool:
        """Allocate the file (an existing one is kept and its holes filled); False when the
        filesystem has no room for it, with nothing of it left behind. Other errors raise."""
        if self.size <= 0:
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                # allocates blocks, where writing zeros could leave them to a compressing
                # filesystem; glibc falls back to writing where the filesystem cannot
                os.posix_fallocate(fd, 0, self.size)
            finally:
                os.close(fd)
        except OSError as exc:
            if not no_space(exc):
                raise
            self.path.unlink(missing_ok=True)  # a part-allocated file would hold space for naught
            self.held = False
            return False
        self.held = True
        return True

    def release(self) -> bool:
        """Give the file back to the filesystem; True if there was one."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            was = False
        else:
            was = True
        self.held = False
        return was

    def room(self) -> int:
        """Bytes the filesystem still gives this process (statvfs of the directory)."""
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize
