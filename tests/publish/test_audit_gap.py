"""A tape with a gap longer than `oracled replay --max-gap`: the error tells the operator how to
get the daemon's reports back, and following it does, byte for byte, whether the daemon ran
through the gap or was stopped in it (an audit trail written by a real writer thread)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import msgspec
import pytest
from audit_rig import Feed, recorded, trail
from publish_rig import BASE_PRICES, INTERVAL, SOURCES, T0, make_config

from oracled.cli import main
from oracled.config import load_config
from oracled.publish.audit import AuditReader
from oracled.tape import header_line, pricing_digest

HOUR_MS = 3_600_000


def _config_file(path: Path) -> Path:
    """`make_config()` as a TOML file, for the command line."""
    cfg = make_config()
    lines = [
        f"[oracle]\nround_interval_ms = {cfg.oracle.round_interval_ms}\nresume_rounds = 1\n",
        *(f'[sources.{name}]\ntype = "binance"\n' for name in SOURCES),
    ]
    for m in cfg.markets:
        entries = ", ".join(f'{{ source = "{s}", pair = "{m.symbol}" }}' for s in SOURCES)
        lines.append(
            f'[[markets]]\nsymbol = "{m.symbol}"\nmin_sources = 2\nmax_age_ms = 5000\n'
            f"price_exponent = {m.price_exponent}\nsources = [{entries}]\n"
        )
    path.write_text("\n".join(lines))
    return path


def _replay(
    config: Path, tape: Path, out: Path, capsys: pytest.CaptureFixture[str], *gap: str
) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["replay", "--config", str(config), str(tape), "--out", str(out), *gap])
    return code, capsys.readouterr().err


def _stored(db: Path, start: int = 0, end: int = T0 * 2) -> bytes:
    reader = AuditReader(db)
    try:
        return b"".join(reader.report_lines(start, end))
    finally:
        reader.close()


def test_a_gap_the_daemon_ran_through_replays_with_the_max_gap_the_error_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every venue silent for 12 s while the daemon ran on: a replay with a smaller `--max-gap`
    stops (exit 4) and names the least `--max-gap` that passes the gap and the rounds in it;
    with that value the replay equals every stored report byte for byte, the gap's rounds
    included. One second less still stops."""
    db = tmp_path / "audit.sqlite3"
    feed = Feed(make_config(), trail(db, queue=1000))  # every round kept, however busy
    for n in range(68):
        feed.silent = set(SOURCES) if 10 <= n < 58 else set()
        feed.round()
    feed.audit.close()
    assert feed.audit.stats.rounds == 68
    tape, out, config = tmp_path / "tape.jsonl", tmp_path / "out.jsonl", tmp_path / "c.toml"
    assert main(["audit", "--db", str(db), "--tape", str(tape)]) == 0
    _config_file(config)

    code, err = _replay(config, tape, out, capsys, "--max-gap", "5")
    assert code == 4, err
    advice = re.search(r"--max-gap (\d+) replays it as the daemon published it, (\d+) rounds", err)
    assert advice is not None, err
    lift, rounds = int(advice[1]), int(advice[2])
    assert (lift, rounds) == (13, 48)  # the last quote before at +50 ms, the next at +10 ms
    assert f"({rounds * len(BASE_PRICES)} reports)" in err
    stored = _stored(db)
    assert _replay(config, tape, out, capsys, "--max-gap", str(lift - 1))[0] == 4
    code, err = _replay(config, tape, out, capsys, "--max-gap", str(lift))
    assert code == 0, err
    assert out.read_bytes() == stored and stored.count(b"\n") == 68 * len(BASE_PRICES)


def test_a_restart_in_the_gap_replays_in_two_parts_as_the_error_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon stopped for 30 hours and started again on the same trail: its rounds after the
    restart are numbered from 1 and its gates start afresh, which no replay of the whole tape
    gives. The replay of the audit tape stops at the gap with everything before it equal to the
    stored reports, and names the `oracled audit --tape --from` export of the part after it,
    whose replay equals the stored reports of the second run byte for byte. The same tape
    without the audit header (as `record --append` writes one) names its split by line
    numbers, and that part replays to the same reports."""
    db = tmp_path / "audit.sqlite3"
    first = recorded(db, 12)
    recorded(db, 12, after=first, gap_ms=30 * HOUR_MS)  # within the 2 days kept
    tape, out, config = tmp_path / "tape.jsonl", tmp_path / "out.jsonl", tmp_path / "c.toml"
    assert main(["audit", "--db", str(db), "--tape", str(tape)]) == 0
    _config_file(config)
    first_run, second_run = _stored(db, 0, first.now), _stored(db, first.now + 1)
    assert b'"round":12,' in first_run and b'"round":1,' in second_run

    code, err = _replay(config, tape, out, capsys)
    assert code == 4, err
    assert out.read_bytes() == first_run
    export = re.search(r"oracled audit --db DB --tape OUT --from (\S+), then replay OUT", err)
    assert export is not None, err
    part = tmp_path / "part.jsonl"
    assert main(["audit", "--db", str(db), "--tape", str(part), "--from", export[1]]) == 0
    code, err = _replay(config, part, out, capsys)
    assert code == 0, err
    assert out.read_bytes() == second_run

    body = tape.read_bytes().split(b"\n", 1)[1]
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(b'{"format": "oracled-tape", "version": 1}\n' + body)
    code, err = _replay(config, plain, out, capsys)
    assert code == 4 and out.read_bytes() == first_run, err
    split = re.search(rf"\(head -n 1 {plain}; tail -n \+(\d+) {plain}\) \| oracled replay", err)
    assert split is not None, err
    lines = plain.read_bytes().splitlines(keepends=True)
    after = tmp_path / "after.jsonl"
    after.write_bytes(lines[0] + b"".join(lines[int(split[1]) - 1 :]))
    code, err = _replay(config, after, out, capsys)
    assert code == 0, err
    assert out.read_bytes() == second_run
    assert msgspec.json.decode(lines[int(split[1]) - 1])["ts"] > first.now + 24 * HOUR_MS


def test_a_record_append_tape_restarted_in_the_gap_is_split_without_its_first_runs_numbering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tape `record --append` continued after a 30 hour stop keeps the header of the run
    that began it, which names its config and numbers that run's rounds (`first_round`,
    `first_round_ts`). The gap's advice is the split by line numbers, not the audit trail's
    export (the bug: a header with `first_round` was taken for an audit tape, so the advice
    named `oracled audit --db DB`, a database a recording may not have), and the split starts
    with that header without the numbering, so the part replays to the restarted run's
    reports byte for byte, numbered from 1 as that run numbered them (with `head -n 1`, from
    the first run's round 1 on: round 432,013 and up)."""
    db = tmp_path / "audit.sqlite3"
    first = recorded(db, 12)
    recorded(db, 12, after=first, gap_ms=30 * HOUR_MS)
    audit_tape, out, config = tmp_path / "a.jsonl", tmp_path / "out.jsonl", tmp_path / "c.toml"
    assert main(["audit", "--db", str(db), "--tape", str(audit_tape)]) == 0
    _config_file(config)
    first_run, second_run = _stored(db, 0, first.now), _stored(db, first.now + 1)
    digest = pricing_digest(load_config(config))
    header = header_line(config_sha256=digest, first_round=1, first_round_ts=T0 + INTERVAL)
    tape = tmp_path / "recorded.jsonl"
    tape.write_bytes(header + audit_tape.read_bytes().split(b"\n", 1)[1])

    code, err = _replay(config, tape, out, capsys)
    assert code == 4, err
    assert out.read_bytes() == first_run
    assert "oracled audit" not in err
    split = re.search(rf"\(echo (.+); tail -n \+(\d+) {tape}\) \| oracled replay", err)
    assert split is not None, err
    (echoed,) = shlex.split(split[1])
    assert msgspec.json.decode(echoed) == {
        "format": "oracled-tape",
        "version": 2,
        "config_sha256": digest,
    }
    lines = tape.read_bytes().splitlines(keepends=True)
    after = tmp_path / "after.jsonl"
    after.write_bytes(echoed.encode() + b"\n" + b"".join(lines[int(split[2]) - 1 :]))
    code, err = _replay(config, after, out, capsys)
    assert (code, err.count("warning")) == (0, 0), err
    assert out.read_bytes() == second_run
