"""`oracled.lockfile.lock_state`: the one answer every single-writer file acts on, whether the
lock file its writer locked still excludes a second writer (held), is only elsewhere for a while
(moved), or never will again (lost); and `LockWatch`, which turns those answers into the changes
a writer says once each."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from children import stop

from oracled.lockfile import LockChange, LockState, LockWatch, lock_beside, lock_path, lock_state

#: A lock holder of its own: takes the lock of argv[1], says so, and holds it until its stdin
#: closes; exit 3 naming the lock file if another process holds it.
_HOLDER = """
import sys
from pathlib import Path
from oracled.lockfile import LockHeldError, lock_beside
try:
    lock_beside(Path(sys.argv[1]))
except LockHeldError as exc:
    print(f"held {exc.lock}", flush=True)
    sys.exit(3)
print("locked", flush=True)
sys.stdin.read()
"""


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


def test_the_lock_path_is_the_data_file_s_name_and_lock_beside_it(tmp_path: Path) -> None:
    """The name every writer's messages give is the file `lock_beside` locks."""
    path = tmp_path / "audit.db"
    fd = lock_beside(path)
    try:
        assert lock_path(path) == tmp_path / "audit.db.lock"
        assert lock_path(path).is_file()
    finally:
        os.close(fd)


def _linked_file(tmp_path: Path) -> Path:
    """A link to a file, by an absolute target; the file made too."""
    real = tmp_path / "volume" / "state.json"
    real.touch()
    link = tmp_path / "state.json"
    link.symlink_to(real)
    return link


def _dangling(tmp_path: Path) -> Path:
    """A link to a file not made yet (the first write makes it where the link points)."""
    link = tmp_path / "state.json"
    link.symlink_to(tmp_path / "volume" / "state.json")
    return link


def _relative(tmp_path: Path) -> Path:
    """A link whose target is relative to its own directory, not to the working directory."""
    (tmp_path / "run").mkdir()
    (tmp_path / "volume" / "state.json").touch()
    link = tmp_path / "run" / "state.json"
    link.symlink_to(Path("..") / "volume" / "state.json")
    return link


def _through_a_directory_link(tmp_path: Path) -> Path:
    """A name through a link to the file's directory (the file itself no link)."""
    (tmp_path / "mounted").symlink_to(tmp_path / "volume")
    return tmp_path / "mounted" / "state.json"


@pytest.mark.parametrize(
    "named",
    [_linked_file, _dangling, _relative, _through_a_directory_link],
    ids=["link", "dangling link", "relative link", "directory link"],
)
@pytest.mark.parametrize("first", ["by the link", "by the real path"])
def test_two_processes_naming_one_file_by_a_link_and_its_real_path_take_one_lock(
    tmp_path: Path, named: Callable[[Path], Path], first: str
) -> None:
    """A process holding the lock of a state file by one name, a second one taking it by the
    other name is refused as held (whichever comes first), the lock file beside the real file.
    Before, the lock of a link was `<link>.lock` beside the link: both processes took a lock and
    both would have written the one file the link leads to. Run from another working directory,
    so that a relative link read from it would lead elsewhere."""
    (tmp_path / "volume").mkdir()
    (tmp_path / "elsewhere").mkdir()
    link, real = named(tmp_path), tmp_path / "volume" / "state.json"
    names = (link, real) if first == "by the link" else (real, link)
    argv = [sys.executable, "-c", _HOLDER]
    cwd = tmp_path / "elsewhere"
    with subprocess.Popen(
        [*argv, str(names[0])], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            second = subprocess.run(
                [*argv, str(names[1])],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                cwd=cwd,
            )
        finally:
            stop(holder)
    assert (second.returncode, second.stdout) == (3, f"held {real}.lock\n"), second.stderr
    assert sorted(p.name for p in real.parent.iterdir() if p.name.endswith(".lock")) == [
        "state.json.lock"
    ]
    assert not list(tmp_path.glob("*.lock"))  # none beside the link


def test_a_link_pointed_elsewhere_under_its_holder_is_moved_then_lost(tmp_path: Path) -> None:
    """The lock is beside the file the link leads to now: pointed at another file with no lock
    file beside it, the one locked still has a name but is not what the link leads to (moved:
    writes wait); pointed back, held; pointed at a file another writer could lock (a lock file
    beside it), lost. Before, the lock was beside the link, held whatever it pointed at, while
    the writes followed the link to a file no lock covered."""
    (tmp_path / "volume").mkdir()
    (tmp_path / "other").mkdir()
    link = _linked_file(tmp_path)
    fd = lock_beside(link)
    try:
        assert lock_state(link, fd) is LockState.HELD
        link.unlink()
        link.symlink_to(tmp_path / "other" / "state.json")
        assert lock_state(link, fd) is LockState.MOVED
        link.unlink()
        link.symlink_to(tmp_path / "volume" / "state.json")
        assert lock_state(link, fd) is LockState.HELD
        (tmp_path / "other" / "state.json.lock").touch()
        link.unlink()
        link.symlink_to(tmp_path / "other" / "state.json")
        assert lock_state(link, fd) is LockState.LOST
    finally:
        os.close(fd)


def test_the_lock_path_of_a_link_is_beside_the_file_it_leads_to(tmp_path: Path) -> None:
    """What the writers' messages name: the real file's lock, for a link and for its target
    alike; a path with no link on the way keeps its spelling, a relative one too."""
    (tmp_path / "volume").mkdir()
    link = _linked_file(tmp_path)
    real = tmp_path / "volume" / "state.json.lock"
    assert lock_path(link) == lock_path(link.resolve()) == real
    assert lock_path(Path("no-such-dir/state.json")) == Path("no-such-dir/state.json.lock")


def test_a_watch_starts_held_and_a_held_answer_changes_nothing() -> None:
    """A lock just taken is held: asking again and again while it stays so says nothing."""
    watch = LockWatch()
    assert watch.state is LockState.HELD and not watch.away and not watch.lost
    assert [watch.update(LockState.HELD) for _ in range(3)] == [None, None, None]
    assert watch.state is LockState.HELD


def test_a_watch_says_away_and_back_once_each_way() -> None:
    """Moved: away once however often it is asked; held again: back once; and so again on the
    next move (a directory moved away twice is said twice)."""
    watch = LockWatch()
    answers = [LockState.MOVED] * 3 + [LockState.HELD] * 3 + [LockState.MOVED, LockState.HELD]
    changes = [watch.update(state) for state in answers]
    away, back = LockChange.AWAY, LockChange.BACK
    assert changes == [away, None, None, back, None, None, away, back]
    assert watch.state is LockState.HELD and not watch.away


def test_a_watch_is_away_while_moved() -> None:
    """`away` is what the writers hold their writes back on: true from the move to the return."""
    watch = LockWatch()
    watch.update(LockState.MOVED)
    assert watch.away and not watch.lost
    watch.update(LockState.HELD)
    assert not watch.away


@pytest.mark.parametrize("before", [LockState.HELD, LockState.MOVED])
def test_a_watch_says_lost_once_and_stays_lost(before: LockState) -> None:
    """Lost, from held or from away: said once, no longer away, and no later answer (held,
    moved, lost) changes it or is said: the lock let a second writer in for good."""
    watch = LockWatch()
    watch.update(before)
    assert watch.update(LockState.LOST) is LockChange.LOST
    assert watch.lost and not watch.away
    later = [LockState.LOST, LockState.MOVED, LockState.HELD, LockState.LOST]
    assert [watch.update(state) for state in later] == [None, None, None, None]
    assert watch.state is LockState.LOST


def test_a_reset_watch_is_held_and_says_the_next_changes_again() -> None:
    """A new lock taken (the pauses file's) starts over: held, and its own losses said again."""
    watch = LockWatch()
    watch.update(LockState.LOST)
    watch.reset()
    assert watch.state is LockState.HELD and not watch.lost
    assert watch.update(LockState.MOVED) is LockChange.AWAY
    assert watch.update(LockState.LOST) is LockChange.LOST


def test_a_watch_follows_a_real_lock_moved_and_brought_back(
    locked: tuple[Path, int], tmp_path: Path
) -> None:
    """Fed `lock_state`'s answers on a real lock: the directory moved away is one change, its
    return another, and the lock file removed is lost."""
    path, fd = locked
    watch = LockWatch()
    away = tmp_path / "away"
    path.parent.rename(away)
    assert watch.update(lock_state(path, fd)) is LockChange.AWAY
    assert watch.update(lock_state(path, fd)) is None
    away.rename(path.parent)
    assert watch.update(lock_state(path, fd)) is LockChange.BACK
    lock_path(path).unlink()
    assert watch.update(lock_state(path, fd)) is LockChange.LOST
