"""Manual commands on a tape (version 2, docs/contracts.md): a pause or resume is applied before
the round it names and no other; a bad one is reported with its line number and never applied;
a version 1 tape replays exactly as before."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import msgspec
import pytest

from oracled.cli import main
from oracled.config import load_config
from oracled.errors import TapeError
from oracled.model import Quote
from oracled.replay import ReplayStats, replay
from oracled.tape import ManualCommand, TapeLineError, command_to_line, read_header, read_tape

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tapes"
V1 = (FIXTURES / "small.jsonl").read_bytes()
#: The replay of small.jsonl (a version 1 tape) by the build before version 2: its sha256 and
#: the lines it skipped, as that build reported them.
V1_OUTPUT_SHA256 = "b615e9bec4ce3866b698004e739b7de672e541833ce535fa1fc5294e8a1f8d1f"
V1_SKIPPED = [5, 8, 10, 13, 15]
T = 1_700_000_000_000  # the rounds run at T + 1000 * k, numbered k from the first at T + 1000


def _v2(lines: dict[int, bytes] | None = None) -> bytes:
    """small.jsonl as a version 2 tape with `lines` in it, each at the line number it is
    given (the lines after it move down)."""
    header, *rest = V1.splitlines(keepends=True)
    out = [header.replace(b'"version": 1', b'"version": 2'), *rest]
    for number, line in sorted((lines or {}).items()):
        out.insert(number - 1, line)
    return b"".join(out)


def _replay(tape: bytes) -> tuple[list[dict[str, Any]], ReplayStats]:
    out = io.BytesIO()
    stats = replay(load_config(FIXTURES / "config.toml"), io.BytesIO(tape), out)
    return [msgspec.json.decode(line) for line in out.getvalue().splitlines()], stats


def _btc(reports: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {r["ts"]: r for r in reports if r["market"] == "BTC/USD"}


def _pause(ts: int, market: str = "BTC/USD", *, paused: bool = True) -> bytes:
    return command_to_line(ts, (ts - T) // 1000, market, paused, "alice")  # T+1000: round 1


def test_a_version_1_tape_replays_byte_for_byte_as_before() -> None:
    """small.jsonl, a version 1 tape, gives the bytes the build before version 2 gave, and
    the same skipped lines; a line shaped as a command in it is a malformed line as it was."""
    out = io.BytesIO()
    stats = replay(load_config(FIXTURES / "config.toml"), io.BytesIO(V1), out)
    assert hashlib.sha256(out.getvalue()).hexdigest() == V1_OUTPUT_SHA256
    assert [e.line for e in stats.errors] == V1_SKIPPED and stats.commands == 0
    header, rest = V1.split(b"\n", 1)
    with_command = header + b"\n" + _pause(T + 3000) + rest
    out = io.BytesIO()
    stats = replay(load_config(FIXTURES / "config.toml"), io.BytesIO(with_command), out)
    assert hashlib.sha256(out.getvalue()).hexdigest() == V1_OUTPUT_SHA256
    assert stats.errors[0] == TapeLineError(2, "Object missing required field `source`")
    assert stats.commands == 0


def test_a_pause_and_a_resume_apply_before_the_rounds_they_name_and_no_earlier() -> None:
    """A pause for the round at T+3000, written after the quotes of the round before it, and
    a resume for the round at T+5000: every report before T+3000 is the plain replay's, BTC/USD
    has no price, `manual` its reason, from that round, is released at T+5000 with the usual
    hold (resume_rounds 2: live again at T+6000), and USDT/USD never moves."""
    plain, _ = _replay(_v2())
    # after the quotes of the rounds before, before those of T+2500 and of T+5500
    tape = _v2({17: _pause(T + 3000), 33: _pause(T + 5000, paused=False)})
    reports, stats = _replay(tape)
    assert stats.commands == 2 and [e.line for e in stats.errors] == [5, 8, 10, 13, 15]
    assert [r for r in reports if r["ts"] < T + 3000] == [r for r in plain if r["ts"] < T + 3000]
    assert [r for r in reports if r["market"] == "USDT/USD"] == [
        r for r in plain if r["market"] == "USDT/USD"
    ]
    btc, live = _btc(reports), _btc(plain)
    assert [live[T + k * 1000]["status"] for k in (3, 4)] == ["active", "active"]
    assert [btc[T + k * 1000]["reasons"] for k in (3, 4)] == [["manual"], ["manual"]]
    assert btc[T + 5000]["reasons"] == ["resuming"] and btc[T + 5000]["price"] is None
    assert btc[T + 6000]["status"] == "active" and btc[T + 6000]["price"] is not None


def test_a_command_read_before_the_first_quote_applies_to_the_first_round() -> None:
    """A pause kept across a restart is applied before the daemon's first round, which may come
    before any quote: on the tape it precedes the first quote and holds from the first round."""
    reports, stats = _replay(_v2({2: _pause(T + 1000)}))
    assert stats.commands == 1
    assert all("manual" in r["reasons"] for r in _btc(reports).values())


def test_a_command_whose_round_the_replay_never_runs_changes_nothing() -> None:
    """The replay ends with the round after the last quote; a pause for a round after that
    moved nothing it outputs, and adds no round."""
    plain, _ = _replay(_v2())
    reports, stats = _replay(_v2() + _pause(T + 60_000))
    assert reports == plain and stats.commands == 0 and stats.malformed == len(V1_SKIPPED)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            b'{"ts":1700000003000,"manual":"halt","market":"BTC/USD","actor":"a","round":3}',
            "manual command: manual: must be pause or resume, got 'halt'",
        ),
        (
            b'{"ts":1700000003000,"manual":"pause","market":"btc/usd","actor":"a","round":3}',
            "manual command: market: must be BASE/QUOTE in upper case, got 'btc/usd'",
        ),
        (
            b'{"ts":1700000003000,"manual":"pause","market":"ETH/USD","actor":"a","round":3}',
            "manual command: ETH/USD is no market of this config",
        ),
        (
            b'{"ts":1700000003500,"manual":"pause","market":"BTC/USD","actor":"a","round":3}',
            "manual command: ts 1700000003500 is no round time (a multiple of"
            " round_interval_ms 1000)",
        ),
        (
            b'{"ts":1700000002000,"manual":"pause","market":"BTC/USD","actor":"a","round":2}',
            "manual command: ts 1700000002000 is before the previous line",
        ),
        (
            b'{"ts":1700000003000,"manual":"pause","market":"BTC/USD","round":3}',
            "manual command: Object missing required field `actor`",
        ),
        (
            b'{"ts":1700000003000,"manual":"pause","market":"BTC/USD","actor":"a","round":0}',
            "manual command: round 0 is not a round number (1 to 2**53 - 1)",
        ),
        (
            b'{"ts":1700003000,"manual":"pause","market":"BTC/USD","actor":"a","round":3}',
            "manual command: ts 1700003000 is not milliseconds since the epoch (13 digits,"
            " 2001 to 2286)",
        ),
        (
            b'{"ts":1700000003000,"manual":true,"market":"BTC/USD","actor":"a","round":3}',
            "manual command: Expected `str`, got `bool` - at `$.manual`",
        ),
    ],
)
def test_a_bad_command_is_reported_with_its_line_number_and_never_applied(
    line: bytes, message: str
) -> None:
    """Each bad command (a kind, market, round time or number that cannot be, a market the
    config lacks, a round that ran before the quote above it, a missing key) is reported by its
    line number and skipped: the output is the tape's without it."""
    plain, _ = _replay(_v2())
    reports, stats = _replay(_v2({22: line + b"\n"}))  # after the quotes of T+2500
    assert reports == plain and stats.commands == 0
    assert TapeLineError(22, message) in stats.errors


def test_a_reader_that_applies_no_command_reports_each_one() -> None:
    """`read_tape` without `on_command` (a caller that wants the quotes alone) names each
    command line as one it did not apply, and yields the quotes around it; with it, the command
    comes in its place among the quotes."""
    tape = _v2({17: _pause(T + 3000)})
    errors: list[TapeLineError] = []
    quotes = list(read_tape(io.BytesIO(tape), errors))
    assert TapeLineError(17, "manual command: this reader applies none") in errors
    seen: list[Quote | ManualCommand] = []
    for quote in read_tape(io.BytesIO(tape), [], on_command=seen.append):
        seen.append(quote)  # noqa: PERF402 - the hook appends to the same list, in between
    command = ManualCommand(17, T + 3000, 3, "BTC/USD", True, "alice")
    at = seen.index(command)
    before, after = seen[at - 1], seen[at + 1]
    assert isinstance(before, Quote) and before.recv_ts == T + 1504
    assert isinstance(after, Quote) and after.recv_ts == T + 2500
    assert [q.recv_ts for q in seen if isinstance(q, Quote)] == [q.recv_ts for q in quotes]


def test_a_header_of_a_version_this_build_does_not_read_is_refused() -> None:
    """Versions 1 and 2 are read; a later one is refused at line 1, never read as if it were
    one of them (as a build that reads version 1 only refuses a version 2 tape)."""
    assert read_header(b'{"format": "oracled-tape", "version": 2}').version == 2
    with pytest.raises(TapeError, match="version 3 \\(this build reads 'oracled-tape' versions"):
        read_header(b'{"format": "oracled-tape", "version": 3}')


def test_oracled_replay_sums_up_the_commands_it_applied_and_a_version_1_tape_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`oracled replay` names how many manual commands it applied in its summary, and names
    a bad one by its line number on stderr (exit 3, as for any skipped line); a version 1
    tape's summary says nothing of commands, as before them."""
    tape, out = tmp_path / "tape.jsonl", tmp_path / "out.jsonl"
    config = str(FIXTURES / "config.toml")
    bad = b'{"ts":1700000003000,"manual":"pause","market":"ETH/USD","actor":"a","round":3}\n'
    tape.write_bytes(_v2({17: _pause(T + 3000), 22: bad, 33: _pause(T + 5000, paused=False)}))
    assert main(["replay", "--config", config, str(tape), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "16 reports; 2 manual command(s) applied; 6 malformed line(s) skipped" in err, err
    assert f"{tape}:22: skipped: manual command: ETH/USD is no market of this config" in err
    tape.write_bytes(V1)
    assert main(["replay", "--config", config, str(tape), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "16 reports; 5 malformed line(s) skipped" in err and "command" not in err, err
