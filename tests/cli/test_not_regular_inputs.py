"""Every command given a config, an accounts file or an audit database that is no regular file
(a FIFO that nobody writes, /dev/zero, a directory) says so in one line naming the path and what
it is, and exits 2 as for any other bad input. A FIFO blocked the command for ever (its open,
then its read) and /dev/zero was read up to the 16 MiB cap: each command runs in a process of
its own under a timeout, so that a regression fails the test instead of hanging it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from oracled_cli import run_oracled

from oracled.stress.scenarios import build, scenario_config

KINDS = {"fifo": "a FIFO", "dev-zero": "a character device", "directory": "a directory"}


def _input(tmp_path: Path, kind: str) -> Path:
    if kind == "dev-zero":
        return Path("/dev/zero")
    path = tmp_path / "input.toml"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    return path


def _refused(argv: list[str], path: Path, kind: str) -> None:
    proc = run_oracled(argv)
    assert proc.returncode == 2, proc.stderr
    assert f"{path}: cannot read ({KINDS[kind]}, not a regular file)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("command", ["run", "check-config"])
def test_a_config_that_is_no_regular_file_exits_2_naming_what_it_is(
    command: str, kind: str, tmp_path: Path
) -> None:
    """`run --config` and `check-config` of a FIFO, /dev/zero or a directory: exit 2 at once."""
    path = _input(tmp_path, kind)
    argv = ["check-config", str(path)] if command == "check-config" else [command, "--config"]
    _refused(argv if command == "check-config" else [*argv, str(path)], path, kind)


def test_stress_accounts_that_are_a_fifo_exit_2(tmp_path: Path) -> None:
    """`stress --accounts` of a FIFO nobody writes: exit 2, named (it waited for ever)."""
    tape, cfg = tmp_path / "t.jsonl", tmp_path / "c.toml"
    tape.write_bytes(build("flash_crash").tape())
    cfg.write_text(scenario_config())
    fifo = _input(tmp_path, "fifo")
    argv = ["stress", "--config", str(cfg), "--tape", str(tape), "--accounts", str(fifo)]
    _refused(argv, fifo, "fifo")


def test_margin_accounts_that_are_a_fifo_exit_2(tmp_path: Path) -> None:
    """`margin --accounts` of a FIFO nobody writes: exit 2 before any connection is tried."""
    fifo = _input(tmp_path, "fifo")
    argv = ["margin", "--accounts", str(fifo), "--url", "ws://127.0.0.1:9/v1/stream"]
    _refused(argv, fifo, "fifo")


@pytest.mark.parametrize("kind", list(KINDS))
def test_audit_of_a_database_that_is_no_regular_file_exits_2(kind: str, tmp_path: Path) -> None:
    """`oracled audit --db` of a FIFO nobody writes waited for ever in SQLite's open; a directory
    was "disk I/O error" and /dev/zero "schema version unknown". Each is exit 2, named."""
    path = _input(tmp_path, kind)
    _refused(["audit", "--db", str(path)], path, kind)
