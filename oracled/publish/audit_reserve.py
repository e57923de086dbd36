"""The audit trail's disk reserve: a file of a few MiB allocated beside the database.

A full disk cannot be cleared from inside an SQLite database in WAL mode: deleting rounds is itself
a write to the `-wal` file, which cannot grow either, and the frames already there cannot be
checkpointed into a database file that would have to grow. Giving this file back to the
filesystem makes the room those writes need (docs/publishing.md, *A full disk*).

On a copy-on-write filesystem an allocated file guarantees nothing: a snapshot keeps its blocks
when it is deleted, btrfs frees them only at its next commit, and ZFS allocates nothing for
`fallocate` (docs/publishing.md, *Copy-on-write filesystems*).
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
    """`size` bytes of really allocated disk (not a sparse file) at `path`, held or released.

    The file may also hold less than `size` (`allocated`): the room a stopping trail kept while
    its disk was full (`grow`), given up at the next open like a whole reserve; `held` is True
    only for the whole `size`."""

    __slots__ = ("held", "path", "size")

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.held = False

    def hold(self) -> bool:
        """Allocate the whole file (an existing one is kept and its holes filled); False when
        the filesystem has no room for it, with the file as it was (none, or what it held).
        Other errors raise."""
        if self.size <= 0:
            return False
        self.held = self._allocate(self.size)
        return self.held

    def grow(self, extra: int) -> int:
        """Allocate up to `extra` more bytes of the file, never past `size`, all or none; the
        bytes it holds after (0: no file). Other errors than a full disk raise."""
        have = self.allocated()
        target = min(self.size, have + max(0, extra))
        if target > have:
            self.held = self._allocate(target) and target >= self.size
        return self.allocated()

    def _allocate(self, length: int) -> bool:
        """Make the file's first `length` bytes allocated; on a full disk leave it as it was."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            if not no_space(exc):
                raise
            return False
        try:
            before = os.fstat(fd).st_size
            try:
                # allocates blocks, where writing zeros could leave them to a compressing
                # filesystem; glibc falls back to writing where the filesystem cannot
                os.posix_fallocate(fd, 0, length)
            except OSError as exc:
                if not no_space(exc):
                    raise
                # a part-allocated file would hold space for naught: back to what it was
                os.ftruncate(fd, before)
                if before == 0:
                    self.path.unlink(missing_ok=True)
                return False
        finally:
            os.close(fd)
        return True

    def allocated(self) -> int:
        """The file's length (0: no file): the bytes it holds, as this class only ever makes
        it by allocating (`hold` fills the holes of a sparse one)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def release(self) -> int:
        """Give the file back to the filesystem; the bytes it held (0: there was none)."""
        was = self.allocated()
        try:
            self.path.unlink()
        except FileNotFoundError:
            was = 0
        self.held = False
        return was

    def room(self) -> int:
        """Bytes the filesystem still gives this process (statvfs of the directory)."""
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize
