"""`oracled replay` (and `oracled stress`) against tapes an operator gets wrong: a gap of days
stops the replay instead of running every round in it, a tape recorded with another pricing
config is said once, and `-` reads the tape from stdin."""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from oracled.cli import main
from oracled.config import load_config
from oracled.core import PRICING_REVISION
from oracled.replay import replay
from oracled.stress.scenarios import build
from oracled.tape import TapeGapError, header_line, pricing_digest, read_header

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tapes"
CONFIG = FIXTURES / "config.toml"
TAPE = FIXTURES / "small.jsonl"
LINE = '{"ts": %d, "source": "a", "pair": "USDT/USD", "price": "1.0001"}\n'
T0 = 1_700_000_000_500
YEAR = 365 * 86_400_000


def _replay(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "oracled.cli", "replay", "--config", str(CONFIG), *args],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=60,
    )


def test_a_gap_of_a_year_stops_the_replay_at_its_line_with_exit_4(tmp_path: Path) -> None:
    """One `ts` with the year mistyped made replay run every round up to it: at this tape's
    1 s rounds, 31 million rounds of reports. It now stops at that line (named on stderr) with
    exit 4, and prints exactly what the tape without the gap and after it prints."""
    head = '{"format": "oracled-tape", "version": 1}\n' + LINE % T0 + LINE % (T0 + 3_000)
    tape, before = tmp_path / "gap.jsonl", tmp_path / "before.jsonl"
    tape.write_text(head + LINE % (T0 + 3_000 + YEAR) + LINE % (T0 + 3_000 + YEAR + 1))
    before.write_text(head)
    proc = _replay(str(tape))
    assert proc.returncode == 4, proc.stderr
    assert f"{tape}: line 4: " in proc.stderr.decode()
    assert "--max-gap" in proc.stderr.decode()
    expected = _replay(str(before))
    assert expected.returncode == 0 and expected.stdout.count(b"\n") == 8  # 4 rounds, 2 markets
    assert proc.stdout == expected.stdout


def test_max_gap_is_the_operators_to_lift_or_tighten() -> None:
    """`max_gap_ms` None (`--max-gap 0`) replays any gap, round by round; a tighter one stops at
    the first gap past it, with the line and the gap in the error."""
    tape = '{"format": "oracled-tape", "version": 1}\n' + LINE % T0 + LINE % (T0 + 600_000)
    cfg = load_config(CONFIG)
    stats = replay(cfg, io.StringIO(tape), io.BytesIO(), max_gap_ms=None)
    assert stats.rounds == 601
    with pytest.raises(TapeGapError) as caught:
        replay(cfg, io.StringIO(tape), io.BytesIO(), max_gap_ms=599_999)
    assert (caught.value.line, caught.value.gap_ms) == (3, 600_000)


def test_stress_stops_at_a_gap_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`oracled stress` replays through the same machinery: a scenario tape with a quote a year
    late stops with exit 4 and the line, instead of running a year of rounds into the margin
    engines; `--max-gap` is taken as by `replay`."""
    lines = build("thin_manipulation").lines
    tape = tmp_path / "t.jsonl"
    tape.write_bytes(b"".join(lines) + LINE.encode() % (T0 + 10 * YEAR))
    cfg, accounts = tmp_path / "c.toml", tmp_path / "a.json"
    assert (
        main(
            [
                "scenario",
                "thin_manipulation",
                "--out",
                str(tmp_path / "s.jsonl"),
                "--config-out",
                str(cfg),
                "--accounts-out",
                str(accounts),
            ]
        )
        == 0
    )
    argv = ["stress", "--config", str(cfg), "--tape", str(tape), "--accounts", str(accounts)]
    capsys.readouterr()
    assert main([*argv, "--max-gap", "86400"]) == 4
    err = capsys.readouterr().err
    assert f"line {len(lines) + 1}: " in err


def test_a_tape_recorded_with_another_config_is_replayed_after_one_warning(
    tmp_path: Path,
) -> None:
    """The header's `config_sha256` (written by `record`) against the replay's config: another
    digest gives one warning line on stderr and the same reports; the same digest, or a tape
    without the key, gives none."""
    body = TAPE.read_bytes().split(b"\n", 1)[1]
    digest = pricing_digest(load_config(CONFIG))
    same, other = tmp_path / "same.jsonl", tmp_path / "other.jsonl"
    same.write_bytes(header_line(digest) + body)
    other.write_bytes(header_line("ab" * 32) + body)
    plain = _replay(str(TAPE))
    for tape, warnings in ((same, 0), (other, 1)):
        proc = _replay(str(tape))
        assert proc.returncode == plain.returncode, proc.stderr
        assert proc.stdout == plain.stdout
        assert proc.stderr.count(b"warning: recorded with another pricing config") == warnings
    assert b"warning" not in plain.stderr


def test_a_tape_recorded_with_a_chains_rpc_urls_env_set_names_the_variable_where_unset(
    tmp_path: Path,
) -> None:
    """A chain whose `rpc_urls_env` is unset has its on-chain sources taken out of the markets
    at load, so a tape the shipped config recorded with $ORACLED_ETH_RPC_URLS set was said to
    be "recorded with another pricing config" where it is unset, without a word of the
    environment. The warning names the variable now, and is gone with it set; a digest that
    setting it does not explain says the environment may be the cause."""
    shipped = Path(__file__).parents[2] / "config" / "default.toml"
    lit = {"ORACLED_ETH_RPC_URLS": "http://127.0.0.1:8545"}
    tape, other = tmp_path / "t.jsonl", tmp_path / "other.jsonl"
    tape.write_bytes(header_line(pricing_digest(load_config(shipped, env=lit))))
    other.write_bytes(header_line("ab" * 32))
    env = {k: v for k, v in os.environ.items() if k != "ORACLED_ETH_RPC_URLS"}

    def replayed(path: Path, extra: dict[str, str]) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "oracled.cli", "replay", "--config", str(shipped), str(path)],
            capture_output=True,
            check=False,
            timeout=60,
            env={**env, **extra},
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stderr.decode()

    err = replayed(tape, {})
    assert err.count("warning: recorded with another pricing config") == 1, err
    assert (
        "it was recorded with $ORACLED_ETH_RPC_URLS (chains.ethereum.rpc_urls_env) set, unset"
        " here, so the markets here lack the on-chain sources of that chain: set it to replay"
        " them (any URL: a replay makes no call)"
    ) in err
    assert "warning" not in replayed(tape, lit)
    err = replayed(other, {})
    assert err.count("warning: recorded with another pricing config") == 1, err
    assert "ORACLED_ETH_RPC_URLS" not in err
    assert "or an environment variable it names (a chain's rpc_urls_env)" in err


def test_a_tape_of_another_pricing_revision_is_replayed_after_one_warning(
    tmp_path: Path,
) -> None:
    """The header's `pricing_revision` (written by `record` and `audit --tape`) against this
    oracled's: another revision gives one warning line naming both, the recording oracled and
    CHANGELOG.md, and the same reports and exit; the same revision, or a tape without the key
    (every tape before it), gives none."""
    body = TAPE.read_bytes().split(b"\n", 1)[1]
    same, other = tmp_path / "same.jsonl", tmp_path / "other.jsonl"
    same.write_bytes(
        header_line(pricing_revision=PRICING_REVISION, software_version="0.1.0") + body
    )
    older = PRICING_REVISION - 1
    other.write_bytes(header_line(pricing_revision=older, software_version="0.0.9") + body)
    plain = _replay(str(TAPE))
    for tape, warnings in ((same, []), (other, [older])):
        proc = _replay(str(tape))
        assert (proc.returncode, proc.stdout) == (plain.returncode, plain.stdout), proc.stderr
        said = [line for line in proc.stderr.decode().splitlines() if "warning" in line]
        assert len(said) == len(warnings), said
        for line, revision in zip(said, warnings, strict=True):
            assert line == (
                f"{tape}: warning: recorded under pricing revision {revision} (oracled 0.0.9),"
                f" this oracled prices under revision {PRICING_REVISION}: the reports may differ"
                " from the recorded ones where the rules changed in between (CHANGELOG.md,"
                " Pricing revisions)"
            )
    assert b"warning" not in plain.stderr


@pytest.mark.parametrize("value", ["0", "-3", "9007199254740992", '"16"', "16.0", "true"])
def test_a_pricing_revision_that_is_none_is_a_header_that_cannot_be_read(
    tmp_path: Path, value: str
) -> None:
    """A `pricing_revision` that is no integer from 1 to 2**53 - 1 is a header that cannot be
    read (exit 1, nothing replayed), as a bad `first_round` is: a typed key of the contract."""
    tape = tmp_path / "t.jsonl"
    header = '{"format": "oracled-tape", "version": 2, "pricing_revision": ' + value + "}\n"
    tape.write_text(header + LINE % T0)
    proc = _replay(str(tape))
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == b""
    assert f"{tape}: line 1: ".encode() in proc.stderr


def test_a_dash_reads_the_tape_from_stdin() -> None:
    """`oracled replay -` said `No such file or directory: '-'`; it reads the tape from stdin
    (`zcat t.jsonl.gz | oracled replay -`), with the same output as from the file."""
    from_file = _replay(str(TAPE))
    from_stdin = _replay("-", stdin=TAPE.read_bytes())
    assert from_stdin.returncode == from_file.returncode == 3, from_stdin.stderr
    assert from_stdin.stdout == from_file.stdout and from_file.stdout
    assert b"<stdin>:5: skipped" in from_stdin.stderr  # the bad lines, named as from a file


def test_the_gaps_split_keeps_the_pricing_revision_in_its_header() -> None:
    """The split a gap's advice names for a recorded tape starts with the header without its
    round numbering: its pricing revision and writer stay, so that the part's replay still
    says when it is replayed under another revision."""
    header = read_header(
        header_line("ab" * 32, 3, T0, pricing_revision=PRICING_REVISION - 1, software_version="x")
    )
    gap = TapeGapError(9, 2 * 86_400_000, 86_400_000, T0 + 2 * 86_400_000)
    advice = gap.advice(1_000, 2, "t.jsonl", "c.toml", audit=False, header=header)
    echoed = advice[1].split("(echo ", 1)[1].split("; tail", 1)[0]
    (text,) = shlex.split(echoed)
    assert read_header(text) == read_header(
        header_line("ab" * 32, pricing_revision=PRICING_REVISION - 1, software_version="x")
    )
