"""A write lease on a file (`fcntl` F_SETLEASE), the real way to hold another reader's open of a
regular file until the test lets go, as a file server recalling its delegation (or a hung
mount) would. A FIFO did this before: a config that is one is now refused, not waited on."""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Lease:
    """A write lease held on one file, until `release` (or the end of `leased`)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        try:
            # The break is announced by a signal to this process: SIGIO's default ends it,
            # SIGURG's is to ignore it (the test asks F_GETLEASE instead).
            fcntl.fcntl(self._fd, fcntl.F_SETSIG, signal.SIGURG)
            fcntl.fcntl(self._fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except BaseException:
            os.close(self._fd)
            raise

    def waited_on(self) -> bool:
        """True once an open of the file waits for this lease (the kernel is breaking it)."""
        return fcntl.fcntl(self._fd, fcntl.F_GETLEASE) != fcntl.F_WRLCK

    def release(self) -> None:
        """Let go: the waiting open goes on and reads the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@contextmanager
def leased(path: Path) -> Iterator[Lease]:
    """Hold a write lease on `path`, a file nobody has open, for the block."""
    lease = Lease(path)
    try:
        yield lease
    finally:
        lease.release()
