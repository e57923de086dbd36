"""The two shards of `make test` (scripts/pytest-shards.sh) together run every test file of the
suite exactly once: a file in neither would never run, a file in both would run twice."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def _shards() -> dict[str, list[Path]]:
    """Shard number -> the paths the script hands that shard's pytest."""
    listing = subprocess.run(
        ["bash", str(ROOT / "scripts" / "pytest-shards.sh"), "--list"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    shards: dict[str, list[Path]] = {}
    for line in listing.splitlines():
        shard, path = line.split(" ", 1)
        shards.setdefault(shard, []).append(ROOT / path)
    return shards


def _test_files() -> list[Path]:
    """Every file `pytest tests` collects: pytest's default file patterns, no hidden folders."""
    found = {*TESTS.rglob("test_*.py"), *TESTS.rglob("*_test.py")}
    return sorted(p for p in found if not any(part.startswith(".") for part in p.parts))


def test_the_script_lists_two_shards_of_existing_paths() -> None:
    """A path the script names that does not exist (a renamed folder) fails its shard."""
    shards = _shards()
    assert sorted(shards) == ["1", "2"]
    assert all(paths for paths in shards.values())
    assert [p for paths in shards.values() for p in paths if not p.exists()] == []


def test_every_test_file_runs_in_exactly_one_shard() -> None:
    """A new folder or top-level test file lands in shard 2 without an edit to the script, and
    no path is handed to both shards or twice to one."""
    listed = [p for paths in _shards().values() for p in paths]
    files = _test_files()
    assert len(files) > 100  # the suite was found
    runs = {
        f.relative_to(ROOT).as_posix(): sum(p == f or p in f.parents for p in listed) for f in files
    }
    assert {f: n for f, n in runs.items() if n != 1} == {}
