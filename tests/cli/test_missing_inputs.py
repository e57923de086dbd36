"""Every command given an input file that is not there says so in one line naming the file and
exits 2, the code README gives a bad argument (a missing config already did; a missing tape made
`oracled replay` and `oracled stress` exit 1 with a bare errno message)."""

from __future__ import annotations

from pathlib import Path

import pytest
from oracled_cli import run_oracled

from oracled.cli import main
from oracled.stress.scenarios import build, scenario_accounts, scenario_config

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tapes"
CONFIG = FIXTURES / "config.toml"
TAPE = FIXTURES / "small.jsonl"


def _refused(argv: list[str], missing: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(missing) in err, err
    assert "Traceback" not in err and "[Errno" not in err, err
    return err


def test_replay_with_a_missing_tape_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`oracled replay` with no such tape: exit 2, one line naming it (was exit 1, raw errno)."""
    missing = tmp_path / "nope.jsonl"
    err = _refused(["replay", "--config", str(CONFIG), str(missing)], missing, capsys)
    assert err == f"oracled replay: {missing}: cannot read (No such file or directory)\n"


def test_replay_with_a_missing_tape_and_an_existing_out_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --out naming a file that exists, the check that it is not the tape used to fail first
    on the missing tape (exit 1); the missing tape is still the error, and --out is untouched."""
    missing, out = tmp_path / "nope.jsonl", tmp_path / "out.jsonl"
    out.write_text("kept\n")
    _refused(["replay", "--config", str(CONFIG), str(missing), "--out", str(out)], missing, capsys)
    assert out.read_text() == "kept\n"


def test_replay_with_a_missing_config_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing --config is refused like a missing tape."""
    missing = tmp_path / "nope.toml"
    _refused(["replay", "--config", str(missing), str(TAPE)], missing, capsys)


def test_audit_with_a_missing_database_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`oracled audit --db` of no such file: exit 2, one line, nothing created."""
    missing = tmp_path / "nope.sqlite3"
    err = _refused(["audit", "--db", str(missing)], missing, capsys)
    assert err.count("\n") == 1, err
    assert not missing.exists()


def test_stress_with_a_missing_tape_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`oracled stress --tape` of no such file: exit 2 and one line (was exit 1, raw errno)."""
    cfg, accounts = tmp_path / "c.toml", tmp_path / "a.json"
    cfg.write_text(scenario_config())
    accounts.write_text(str(scenario_accounts()).replace("'", '"'))
    missing = tmp_path / "nope.jsonl"
    argv = ["stress", "--config", str(cfg), "--tape", str(missing), "--accounts", str(accounts)]
    err = _refused(argv, missing, capsys)
    assert err == f"oracled stress: {missing}: cannot read (No such file or directory)\n"


def test_stress_with_missing_accounts_exits_2_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Missing --accounts are refused like a missing tape."""
    tape, cfg = tmp_path / "t.jsonl", tmp_path / "c.toml"
    tape.write_bytes(build("flash_crash").tape())
    cfg.write_text(scenario_config())
    missing = tmp_path / "nope.json"
    argv = ["stress", "--config", str(cfg), "--tape", str(tape), "--accounts", str(missing)]
    _refused(argv, missing, capsys)


@pytest.mark.parametrize("command", ["run", "record", "demo", "check-config"])
def test_daemon_commands_with_a_missing_config_exit_2_naming_it(
    command: str, tmp_path: Path
) -> None:
    """run, record, demo and check-config refuse a missing config before starting anything
    (in a process of their own: they take signals and SIGQUIT's stack dump)."""
    missing = tmp_path / "nope.toml"
    argv = {
        "check-config": ["check-config", str(missing)],
        "record": ["record", "--config", str(missing), "--out", str(tmp_path / "t.jsonl")],
    }.get(command, [command, "--config", str(missing)])
    proc = run_oracled(argv)
    assert proc.returncode == 2, proc.stderr
    assert f"{missing}: cannot read (No such file or directory)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_margin_with_missing_accounts_exits_2_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`oracled margin --accounts` of no such file: exit 2 before any connection is tried."""
    missing = tmp_path / "nope.json"
    argv = ["margin", "--accounts", str(missing), "--url", "ws://127.0.0.1:9/v1/stream"]
    _refused(argv, missing, capsys)
