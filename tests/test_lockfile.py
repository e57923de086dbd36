"""`oracled.lockfile.lock_state`: the one answer every single-writer file acts on, whether the
lock file its writer locked still excludes a second writer (held), is only elsewhere for a while
(moved), or never will again (lost)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from oracled.lockfile import LockState, lock_beside, lock_state


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A data file's path in `tmp_path/state` and the descriptor of the lock taken beside it."""
    state = tmp_path / "state"
    state.mkdir()
    path = state / "data"
    fd = lock_beside(path)
    yield path, fd
    os.close(fd)


def test_the_lock_file_at_its_path_is_held(locked: tuple[Path, int]) -> None:
    """Just taken, and still there: held."""
    path, fd = locked
    assert lock_state(path, fd) is LockState.HELD


def test_a_directory_moved_away_is_moved_and_held_again_once_it_is_back(
    locked: tuple[Path, int], tmp_path: Path
) -> None:
    """The directory renamed takes the very lock file with it (still locked, still named):
    moved while away, held again once it is back."""
    path, fd = locked
    away = tmp_path / "away"
    path.parent.rename(away)
    assert lock_state(path, fd) is LockState.MOVED
    away.rename(path.parent)
    assert lock_state(path, fd) is LockState.HELD


def test_a_lock_file_renamed_beside_with_nothing_at_its_path_is_moved(
    locked: tuple[Path, int],
) -> None:
    """Renamed within its directory, nothing at its path yet: it still has a name, and comes
    back with a rename; moved, not lost."""
    path, fd = locked
    lock = path.with_name("data.lock")
    lock.rename(path.with_name("elsewhere"))
    assert lock_state(path, fd) is LockState.MOVED
    path.with_name("elsewhere").rename(lock)
    assert lock_state(path, fd) is LockState.HELD


def test_a_lock_file_removed_is_lost_at_once_and_after_a_new_one_is_made(
    locked: tuple[Path, int],
) -> None:
    """Removed, it has no name left: lost with nothing at its path yet, and still lost once a
    new file is made there, even one given the removed file's inode number (the file system
    may hand it out again at once)."""
    path, fd = locked
    lock = path.with_name("data.lock")
    lock.unlink()
    assert lock_state(path, fd) is LockState.LOST
    lock.touch()
    assert lock_state(path, fd) is LockState.LOST


def test_another_file_at_the_lock_files_path_is_lost(
    locked: tuple[Path, int], tmp_path: Path
) -> None:
    """The directory moved away and another made at its path with a lock file of its own (a
    second writer's, or a restore): the one locked still has a name, but a second writer can
    lock the file at the path, so lost."""
    path, fd = locked
    path.parent.rename(tmp_path / "away")
    path.parent.mkdir()
    path.with_name("data.lock").touch()
    assert lock_state(path, fd) is LockState.LOST


def test_a_lock_that_cannot_be_looked_at_is_moved_not_lost(locked: tuple[Path, int]) -> None:
    """A descriptor that cannot be looked at (EBADF) says nothing of the lock file: moved (held
    back, looked at again), never lost for good on an error of its own. Not a closed one: its
    number could be reused by then."""
    path, _ = locked
    assert lock_state(path, -1) is LockState.MOVED
