"""`oracled.files.read_regular`: a file the operator named is read whole only if it is a regular
file; anything else is refused at once, named, and never waited on."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from file_lease import leased

from oracled.files import NotRegularFileError, read_regular


def _read_in_a_thread(path: Path) -> tuple[bytes, os.stat_result] | BaseException:
    """read_regular(path) in a thread: a regression that blocks fails the test, not hangs it."""
    answer: list[tuple[bytes, os.stat_result] | BaseException] = []

    def read() -> None:
        try:
            answer.append(read_regular(path))
        except BaseException as exc:  # handed to the test
            answer.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(30)
    assert answer, f"read_regular({path}) still blocks"
    return answer[0]


def test_a_fifo_nobody_writes_is_refused_without_waiting(tmp_path: Path) -> None:
    """A FIFO with no writer blocked the open for ever (then the read): refused, named."""
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    found = _read_in_a_thread(fifo)
    assert isinstance(found, NotRegularFileError)
    assert (found.kind, found.strerror, found.filename) == (
        "a FIFO",
        "a FIFO, not a regular file",
        str(fifo),
    )


def test_dev_zero_is_refused_as_a_character_device() -> None:
    """/dev/zero never ends: it was read up to the config's 16 MiB cap, now refused first."""
    found = _read_in_a_thread(Path("/dev/zero"))
    assert isinstance(found, NotRegularFileError)
    assert found.kind == "a character device"


def test_a_link_to_a_fifo_is_refused(tmp_path: Path) -> None:
    """A symbolic link is followed: a link to a FIFO is a FIFO."""
    fifo, link = tmp_path / "pipe", tmp_path / "config.toml"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    found = _read_in_a_thread(link)
    assert isinstance(found, NotRegularFileError)
    assert (found.kind, found.filename) == ("a FIFO", str(link))


def test_a_directory_is_refused_as_is_a_directory(tmp_path: Path) -> None:
    """A directory keeps its errno (EISDIR), so `except IsADirectoryError` still sees it."""
    with pytest.raises(NotRegularFileError) as caught:
        read_regular(tmp_path)
    assert (caught.value.kind, caught.value.errno) == ("a directory", errno.EISDIR)
    assert isinstance(caught.value, OSError)


def test_a_socket_is_refused(tmp_path: Path) -> None:
    """A Unix socket (an open of it fails with ENXIO, an errno nobody expects) is named."""
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(NotRegularFileError) as caught:
            read_regular(path)
    assert caught.value.kind == "a socket"


def test_a_missing_file_is_the_system_s_error(tmp_path: Path) -> None:
    """No file: FileNotFoundError as before (callers treat it apart: a first start)."""
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "nope")


def test_a_regular_file_is_read_to_its_limit_with_its_mode(tmp_path: Path) -> None:
    """A regular file: its first `limit` bytes (all by default) and the mode of the file read."""
    path = tmp_path / "key"
    path.write_bytes(b"0123456789")
    path.chmod(0o600)
    whole, found = read_regular(path)
    assert (whole, found.st_mode & 0o777) == (b"0123456789", 0o600)
    assert read_regular(path, 4)[0] == b"0123"


def test_a_regular_file_under_a_lease_being_broken_is_waited_for(tmp_path: Path) -> None:
    """The non-blocking open of a file whose lease is being broken fails (EAGAIN): that is a
    regular file a blocking open waits for (a file server recalling its delegation), not a
    reason to refuse it. Read once the lease is let go."""
    path = tmp_path / "config.toml"
    path.write_bytes(b"[oracle]\n")
    answer: list[bytes] = []
    with leased(path) as lease:
        thread = threading.Thread(target=lambda: answer.append(read_regular(path)[0]))
        thread.start()
        while not lease.waited_on():
            assert thread.is_alive(), "the read did not wait for the lease"
            time.sleep(0.005)
        assert answer == []
    thread.join(30)
    assert answer == [b"[oracle]\n"]
