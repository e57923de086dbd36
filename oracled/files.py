"""Reading whole a file the operator named (a config, an accounts file, a key, the pauses
file, the signing lease): a regular file only, refused without blocking when it is not.

A FIFO that nobody writes blocks an open for reading, and then its read, for ever; /dev/zero
never ends; a directory or a socket reads as an errno the reader did not expect. The path is
looked at (`stat`) before it is opened, opened without blocking (so that a FIFO put in its place
in between is not waited on) and looked at again once open (`fstat`: the file read is the one
checked).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["NotRegularFileError", "read_regular", "require_regular"]

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFileError(OSError):
    """The path names something other than a regular file; `kind` says what ("a FIFO")."""

    def __init__(self, path: Path, kind: str) -> None:
        code = errno.EISDIR if kind == "a directory" else errno.EINVAL
        super().__init__(code, f"{kind}, not a regular file", str(path))
        self.kind = kind


def _check(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a file")
        raise NotRegularFileError(path, kind)


def require_regular(path: str | Path) -> os.stat_result:
    """The path's `stat`, or NotRegularFileError: for a file another library opens itself
    (OpenSSL's certificates), where only this look before its open can be had."""
    path = Path(path)
    found = path.stat()
    _check(path, found.st_mode)
    return found


def read_regular(path: str | Path, limit: int = -1) -> tuple[bytes, os.stat_result]:
    """The first `limit` bytes (all if negative) of a regular file and its `fstat` (its mode, of
    the file read); NotRegularFileError (an OSError) for anything else, other OSErrors as the
    system raised them."""
    path = Path(path)
    require_regular(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except BlockingIOError:
        # A lease on the file is being broken (a file server's delegation; a FIFO never answers
        # this): a regular file that a blocking open waits for, as every reader of it would.
        fd = os.open(path, flags & ~os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        found = os.fstat(fd)
        _check(path, found.st_mode)
        os.set_blocking(fd, True)
        return file.read(limit), found
