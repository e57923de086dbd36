"""`oracled scenario` and `oracled stress` end to end, and the replay hooks they rely on."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import threading
import tomllib
from pathlib import Path

import msgspec
import pytest
from children import run_shell
from oracled_cli import run_oracled

from oracled.cli import main
from oracled.config import parse_config
from oracled.core import PRICING_REVISION, RoundResult
from oracled.model import Quote
from oracled.replay import replay
from oracled.stress.scenarios import build, scenario_config


def test_scenario_then_stress_writes_table_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A written tape, config and accounts run through `oracled stress` like any user's files."""
    tape, cfg, accounts = tmp_path / "t.jsonl", tmp_path / "c.toml", tmp_path / "a.json"
    rc = main(
        [
            "scenario",
            "thin_manipulation",
            "--out",
            str(tape),
            "--config-out",
            str(cfg),
            "--accounts-out",
            str(accounts),
        ]
    )
    assert rc == 0 and tape.read_bytes() == build("thin_manipulation").tape()
    capsys.readouterr()
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["stress", "--config", str(cfg), "--tape", str(tape), "--accounts", str(accounts)]
    rc = main([*argv, "--json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "single_venue:thin" in table and "wrongful" in table
    summary = json.loads(out_json.read_text())
    assert summary["scenario"] == "thin_manipulation"
    assert set(summary["policies"]) == {
        "oracled",
        "single_venue:thin",
        "plain_median",
        "clean_reference",
    }
    assert summary["policies"]["oracled"]["liquidations"] == 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stress_needs_accounts_with_a_tape(tmp_path: Path) -> None:
    """A tape without accounts is a usage error (exit 2), not a crash."""
    tape, cfg = tmp_path / "t.jsonl", tmp_path / "c.toml"
    tape.write_bytes(build("flash_crash").tape())
    cfg.write_text(scenario_config())
    assert main(["stress", "--config", str(cfg), "--tape", str(tape)]) == 2


def test_stress_reports_bad_accounts_with_key_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An accounts file naming an unknown instrument is refused with the key path."""
    bad = tmp_path / "a.json"
    bad.write_text(
        json.dumps(
            {
                "assets": {"USD": {}},
                "instruments": {},
                "accounts": [
                    {"id": "x", "positions": [{"instrument": "NOPE", "qty": 1, "entry": 1}]}
                ],
            }
        )
    )
    assert main(["stress", "--scenario", "flash_crash", "--accounts", str(bad)]) == 2
    assert "accounts[0].positions[0].instrument" in capsys.readouterr().err


def test_a_single_venue_that_quotes_none_of_the_accounts_markets_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--venue` with a typo is a usage error naming the venues that can be used, not a
    single-venue row that silently is the plain median under another name."""
    assert main(["stress", "--scenario", "perp_wick", "--venue", "p9"]) == 2
    err = capsys.readouterr().err
    assert "'p9' quotes none of the accounts' markets" in err
    assert "chain, p1, p2, p3, thin, v1, v2, v3, v4" in err


def test_a_long_venue_is_quoted_cut_with_its_length(capsys: pytest.CaptureFixture[str]) -> None:
    """A `--venue` pasted long is refused naming the option and quoting its first 60
    characters with its length, as every command-line value is quoted (errors.shown). Before,
    its repr was printed whole."""
    assert main(["stress", "--scenario", "perp_wick", "--venue", "p" * 500]) == 2
    err = capsys.readouterr().err
    assert f"--venue {'p' * 60!r}... (500 characters) quotes none of the accounts' markets" in err
    assert "p" * 61 not in err


def test_a_header_single_venue_that_is_no_string_is_refused_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tape header whose `single_venue` is no string (a list) is refused as a venue that
    quotes none of the markets (exit 2), named as the tape's. Before, the check raised
    TypeError (unhashable list) out of `oracled stress`: a traceback."""
    tape, cfg, accounts = _scenario_files(tmp_path, "flash_crash")
    header, rest = tape.read_bytes().split(b"\n", 1)
    listed = json.loads(header) | {"single_venue": ["v1"]}
    tape.write_bytes(json.dumps(listed).encode() + b"\n" + rest)
    capsys.readouterr()
    argv = ["stress", "--config", str(cfg), "--tape", str(tape), "--accounts", str(accounts)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "oracled stress: the tape's single_venue ['v1'] quotes none of the accounts'" in err


def test_replay_hooks_see_every_quote_and_every_round_of_the_printed_output() -> None:
    """on_quote sees each tape quote before the core; on_round the rounds that were printed."""
    cfg = parse_config(tomllib.loads(scenario_config()))
    lines = build("flash_crash").lines
    quotes: list[Quote] = []
    rounds: list[RoundResult] = []
    out = io.BytesIO()
    stats = replay(cfg, lines, out, on_quote=quotes.append, on_round=rounds.append)
    assert len(quotes) == stats.quotes == len(lines) - 1
    printed = [msgspec.json.decode(line) for line in out.getvalue().splitlines()]
    from_hook = [msgspec.json.decode(msgspec.json.encode(r)) for rr in rounds for r in rr.reports()]
    assert printed == from_hook
    plain = io.BytesIO()
    replay(cfg, lines, plain)
    assert plain.getvalue() == out.getvalue()


def test_a_perp_scenario_runs_with_its_perps_from_files_and_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`oracled scenario perp_wick --config-out` writes the config with its perpetuals, and
    `oracled stress` on those files gives the same summary as `--scenario perp_wick`: a mark,
    the engine pricing at it, and the mark line in the table."""
    tape, cfg, accounts = tmp_path / "t.jsonl", tmp_path / "c.toml", tmp_path / "a.json"
    argv = ["scenario", "perp_wick", "--out", str(tape), "--config-out", str(cfg)]
    assert main([*argv, "--accounts-out", str(accounts)]) == 0
    assert "perp_sources" in cfg.read_text()
    capsys.readouterr()
    argv = ["stress", "--config", str(cfg), "--tape", str(tape), "--accounts", str(accounts)]
    assert main([*argv, "--json", "-"]) == 0
    captured = capsys.readouterr()
    from_files = json.loads(captured.out)
    assert "mark: live" in captured.err
    assert main(["stress", "--scenario", "perp_wick", "--json", "-"]) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert by_name == from_files
    assert by_name["mark"] is not None and by_name["mark"]["rounds"] > 0
    assert by_name["policies"]["oracled"]["price_used"]["mark"] > 0


def test_every_key_of_the_json_summary_is_described_in_the_docs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docs/stress.md's Results table has a row for each key of a policy's results, and no row
    for a key there is not; the keys around them (`scenario`, `move`, `mark`'s own, ...) are
    named in its prose. `insurance_fund` and `decisions` were in every summary and nowhere in
    the docs."""
    assert main(["stress", "--scenario", "perp_wick", "--json", "-"]) == 0
    summary = json.loads(capsys.readouterr().out)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "stress.md").read_text()
    section = doc.split("\n## Results (per policy)\n", 1)[1].split("\n## ", 1)[0]
    rows = {
        key
        for line in section.splitlines()
        if line.startswith("| `")
        for key in re.findall(r"`(\w+)`", line.split(" | ", 1)[0])
    }
    prose = set(re.findall(r"`(\w+)`", section))
    assert rows == set(summary["policies"]["oracled"])
    assert set(summary) | set(summary["mark"]) | set(summary["move"]) <= prose


@pytest.mark.parametrize(("option", "name"), [("--json", "out.json"), ("--plot", "out.png")])
def test_an_output_file_that_cannot_be_written_is_a_clear_error_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, name: str
) -> None:
    """`--json` or `--plot` into a directory that does not exist: exit 1 with `oracled stress:`
    and the path on stderr, after the table; stdout holds the table only, no log line (it had
    been a structured `fatal` log line on stdout, mixed into what a script reads). The line is
    the file and the system's reason in words, as `oracled replay --out` says it (it read
    `[Errno 2] No such file or directory: '...'`)."""
    target = tmp_path / "missing" / name
    rc = main(["stress", "--scenario", "flash_crash", option, str(target)])
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.err == f"oracled stress: {target}: No such file or directory\n"
    assert "fatal" not in captured.out
    assert captured.out.startswith("scenario: flash_crash")
    assert captured.out.rstrip().endswith("this policy never did")


def test_a_scenario_file_that_cannot_be_written_is_named_with_the_reason_in_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`oracled scenario` writing its tape, config or accounts where it cannot: exit 1, one
    line with the file and the system's reason (it printed `[Errno 21] Is a directory: ...`)."""
    tape, missing = tmp_path / "t.jsonl", tmp_path / "missing" / "c.toml"
    for argv, said in (
        (["--out", str(tmp_path)], f"{tmp_path}: Is a directory"),
        (
            ["--out", str(tape), "--config-out", str(missing)],
            f"{missing}: No such file or directory",
        ),
        (
            ["--out", str(tape), "--accounts-out", str(missing)],
            f"{missing}: No such file or directory",
        ),
    ):
        assert main(["scenario", "flash_crash", *argv]) == 1, argv
        assert capsys.readouterr().err == f"oracled scenario: {said}\n", argv


def test_a_scenario_file_that_cannot_be_written_leaves_the_others_as_they_were(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found reviewing `oracled scenario`: it wrote `--out` before `--config-out` and
    `--accounts-out`, so a config it could not write left a new tape behind, or an old tape
    overwritten by one whose config never came. Every file is now open for writing before any
    is written: a new tape is not made, an old one keeps its contents."""
    tape, accounts = tmp_path / "t.jsonl", tmp_path / "a.json"
    missing = tmp_path / "missing" / "c.toml"
    argv = ["scenario", "flash_crash", "--out", str(tape), "--accounts-out", str(accounts)]
    assert main([*argv, "--config-out", str(missing)]) == 1
    assert capsys.readouterr().err == f"oracled scenario: {missing}: No such file or directory\n"
    assert sorted(tmp_path.iterdir()) == []
    tape.write_text("an old tape\n")
    assert main([*argv, "--config-out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"oracled scenario: {tmp_path}: Is a directory\n"
    assert sorted(tmp_path.iterdir()) == [tape]
    assert tape.read_text() == "an old tape\n"
    assert main([*argv, "--config-out", "/dev/null"]) == 0
    assert tape.read_bytes() == build("flash_crash", 0).tape()
    assert json.loads(accounts.read_text())


def test_the_plot_is_a_png_whatever_the_file_is_called(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--plot` writes a PNG (the help says so) also to a name without `.png` or with another
    extension; matplotlib would pick the format from the extension and crash with a traceback
    on one it does not know (`.txt`)."""
    for name in ("plot.txt", "plot"):
        target = tmp_path / name
        assert main(["stress", "--scenario", "flash_crash", "--plot", str(target)]) == 0
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().err == ""


def _scenario_files(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    tape, cfg, accounts = tmp_path / "t.jsonl", tmp_path / "c.toml", tmp_path / "a.json"
    argv = ["scenario", name, "--out", str(tape), "--config-out", str(cfg)]
    assert main([*argv, "--accounts-out", str(accounts)]) == 0
    return tape, cfg, accounts


def test_a_tape_with_skipped_lines_is_exit_3_like_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`oracled stress` on a tape with a malformed line writes its results from the rest and
    exits 3, naming the line by the tape's path, as `oracled replay` does on the same tape.
    Before, it exited 0 and printed `tape:6: skipped`, while replay exited 3."""
    tape, cfg, accounts = _scenario_files(tmp_path, "flash_crash")
    lines = tape.read_bytes().splitlines(keepends=True)
    tape.write_bytes(b"".join([*lines[:5], b"not a quote\n", *lines[5:]]))
    capsys.readouterr()
    out_json = tmp_path / "r.json"
    argv = ["stress", "--config", str(cfg), "--tape", str(tape), "--accounts", str(accounts)]
    assert main([*argv, "--json", str(out_json)]) == 3
    out, err = capsys.readouterr()
    assert f"{tape}:6: skipped: " in err and "oracled" in out
    assert json.loads(out_json.read_text())["rounds"] > 0
    assert main(["replay", "--config", str(cfg), str(tape), "--out", str(tmp_path / "o")]) == 3
    assert f"{tape}:6: skipped: " in capsys.readouterr().err


def test_a_move_on_a_market_the_accounts_do_not_hold_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tape whose header declares its move on a market none of the accounts hold cannot give
    a follow time: stderr says so instead of `follow_s` being null without a word (the run
    itself is fine: exit 0). The scenario's own header gives follow times and no warning."""
    tape, cfg, accounts = _scenario_files(tmp_path, "market_crash")
    argv = ["stress", "--config", str(cfg), "--tape", str(tape), "--accounts", str(accounts)]
    capsys.readouterr()
    assert main([*argv, "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err
    assert json.loads(out)["policies"]["oracled"]["follow_s"] is not None
    header, rest = tape.read_bytes().split(b"\n", 1)
    moved = json.loads(header) | {"move_market": "ETH/USD"}
    tape.write_bytes(json.dumps(moved).encode() + b"\n" + rest)
    assert main([*argv, "--json", "-"]) == 0
    out, err = capsys.readouterr()
    said = "oracled stress: warning: the tape's move_market 'ETH/USD' is none of the accounts'"
    assert said in err
    assert json.loads(out)["policies"]["oracled"]["follow_s"] is None


@pytest.mark.parametrize(
    ("move", "said"),
    [
        (
            {"move_market": "X" * 300},
            f"the tape's move_market {'X' * 60!r}... (300 characters) is none of the accounts'",
        ),
        (
            {"move_end_ms": ["soon"] * 50},
            "the tape's move_end_ms is ['soon', 'soon', 'soon', 'soon', 'soon', 'soon', 'soon',"
            " 'so... (400 characters), not a time",
        ),
    ],
    ids=["move_market", "move_end_ms"],
)
def test_a_long_move_in_the_header_is_quoted_cut_with_its_length(
    move: dict[str, object], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A header's `move_market` or `move_end_ms` that cannot be used is warned about quoting
    its first 60 characters and its length (errors.shown), whatever JSON it is. Before, its
    repr was printed whole."""
    tape, cfg, accounts = _scenario_files(tmp_path, "market_crash")
    header, rest = tape.read_bytes().split(b"\n", 1)
    tape.write_bytes(json.dumps(json.loads(header) | move).encode() + b"\n" + rest)
    capsys.readouterr()
    argv = ["stress", "--config", str(cfg), "--tape", str(tape), "--accounts", str(accounts)]
    assert main([*argv, "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert f"oracled stress: warning: {said}" in err
    assert json.loads(out)["policies"]["oracled"]["follow_s"] is None


@pytest.mark.parametrize("end", [True, False])
def test_a_move_end_of_true_or_false_is_no_time(
    end: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`"move_end_ms": true` is warned about as no time, as any other non-integer is. Before,
    Python's bool passed the integer check and `true` was read as the time 1 ms (follow_s then
    measured from the epoch)."""
    tape, cfg, accounts = _scenario_files(tmp_path, "market_crash")
    header, rest = tape.read_bytes().split(b"\n", 1)
    moved = json.loads(header) | {"move_end_ms": end}
    tape.write_bytes(json.dumps(moved).encode() + b"\n" + rest)
    capsys.readouterr()
    argv = ["stress", "--config", str(cfg), "--tape", str(tape), "--accounts", str(accounts)]
    assert main([*argv, "--json", "-"]) == 0
    out, err = capsys.readouterr()
    said = f"the tape's move_end_ms is {str(end).lower()}, not a time in ms"
    assert f"oracled stress: warning: {said}" in err
    assert json.loads(out)["policies"]["oracled"]["follow_s"] is None


def test_an_empty_tape_is_said_to_be_empty_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty tape is exit 1 with the tape's path and 'empty tape', as `oracled replay` says
    it. Before, stress said 'line 1: not an oracled-tape header (Input data was truncated)',
    without naming the file."""
    _, cfg, accounts = _scenario_files(tmp_path, "flash_crash")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    capsys.readouterr()
    argv = ["stress", "--config", str(cfg), "--tape", str(empty), "--accounts", str(accounts)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"oracled stress: {empty}: empty tape: the first line must be the oracled-tape" in err


def test_a_gap_says_what_to_run_instead_and_each_way_it_gives_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tape stopped at a gap (exit 4) says that no results were written (not replay's 'the
    output ends with the round...', nor only '--max-gap 0 replays any gap', as before), and
    gives the least --max-gap that runs the gap's rounds and the shell lines that stress the
    part after it by itself. Both are run here as printed: each gives results (exit 0). A
    scenario stopped at a gap is named as the scenario (it was 'None')."""
    tape, cfg, accounts = _scenario_files(tmp_path, "flash_crash")
    lines = tape.read_bytes().splitlines(keepends=True)[:241]  # the header and 24 s of quotes
    late = [
        json.dumps(q | {"ts": q["ts"] + 120_000}, separators=(",", ":")).encode() + b"\n"
        for q in map(json.loads, lines[121:])
    ]
    tape.write_bytes(b"".join([*lines[:121], *late]))
    argv = ["stress", "--config", str(cfg), "--tape", str(tape), "--accounts", str(accounts)]
    capsys.readouterr()
    assert main([*argv, "--max-gap", "60", "--json", "-"]) == 4
    out, err = capsys.readouterr()
    assert out == ""
    first, through, part = err.splitlines()
    assert first.startswith(f"oracled stress: {tape}: line 122: no quote for 120.")
    assert first.endswith("stopped there; no results written")
    assert "--max-gap 121 runs the margin engines through it" in through
    assert main([*argv, "--max-gap", "121", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["rounds"] > 140
    shell = part.split("each from the accounts file: ", 1)[1].removesuffix(
        " (and before.jsonl alike)"
    )
    here = f"{sys.executable} -m oracled.cli stress"
    script = shell.replace("oracled stress", here) + " --max-gap 60 --json after.json"
    proc = run_shell(script, timeout_s=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "before.jsonl").read_bytes() == b"".join(lines[:121])
    assert json.loads((tmp_path / "after.json").read_text())["rounds"] == 12
    assert main(["stress", "--scenario", "flash_crash", "--max-gap", "0.5"]) == 4
    err = capsys.readouterr().err
    assert err.startswith("oracled stress: scenario flash_crash: line ")
    assert err.endswith("  --max-gap 1 (or 0: no limit) runs the scenario through it\n")


def test_a_tape_without_quotes_says_that_no_round_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tape of its header alone gave a table of zeros and exit 0 without a word: no
    liquidation, nothing missed, never paused, which reads as a clean run. It still exits 0
    (as `oracled replay`, which prints 'replayed 0 quotes'), with a warning that no round ran;
    a tape with quotes has none."""
    tape, cfg, accounts = _scenario_files(tmp_path, "flash_crash")
    header = tape.read_bytes().split(b"\n", 1)[0] + b"\n"
    tape.write_bytes(header)
    argv = ["stress", "--config", str(cfg), "--tape", str(tape), "--accounts", str(accounts)]
    capsys.readouterr()
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "rounds: 0 " in out
    assert err == (
        "oracled stress: warning: no round ran: the tape holds no quote (0 read, 0 malformed"
        " line(s)), so every figure is empty\n"
    )


def test_a_tape_that_cannot_be_opened_is_exit_2_and_one_that_is_no_tape_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As docs/stress.md says, and as `oracled replay` exits: a missing tape or a directory is a
    bad argument (2, 'cannot read'); a file that is no tape is a tape error (1). The docs said
    1 for a tape that cannot be read, while the command has always answered 2."""
    _, cfg, accounts = _scenario_files(tmp_path, "flash_crash")
    other = tmp_path / "other.jsonl"
    other.write_text('{"a": 1}\n')
    cases = ((tmp_path / "missing.jsonl", 2, "cannot read"), (tmp_path, 2, "cannot read"))
    for tape, code, said in (*cases, (other, 1, "not an oracled-tape header")):
        argv = ["stress", "--config", str(cfg), "--tape", str(tape), "--accounts", str(accounts)]
        capsys.readouterr()
        assert main(argv) == code
        err = capsys.readouterr().err
        assert err.startswith(f"oracled stress: {tape}: ") and said in err
        cfg_replay = ["replay", "--config", str(cfg), str(tape), "--out", str(tmp_path / "o")]
        assert main(cfg_replay) == code
        assert said in capsys.readouterr().err


def test_quotes_the_core_drops_are_counted_as_replay_counts_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tape run with a config that is not its own (its venues are none of the config's
    sources) had every quote dropped by the core, and stress printed a table of frozen prices
    and no liquidation without saying why. It now warns with the count by venue and reason, as
    `oracled replay` prints them, and asks whether the config is the tape's; a tape with one
    crossed quote names that one; the scenario with its own config warns of nothing."""
    tape, cfg, accounts = _scenario_files(tmp_path, "flash_crash")
    argv = ["stress", "--tape", str(tape), "--accounts", str(accounts)]
    capsys.readouterr()
    assert main([*argv, "--config", str(cfg)]) == 0
    assert capsys.readouterr().err == ""
    other = tmp_path / "other.toml"
    other.write_text(
        cfg.read_text().replace('"v1"', '"w1"').replace("[sources.v1]", "[sources.w1]")
    )
    assert main([*argv, "--config", str(other), "--venue", "v2"]) == 0
    err = capsys.readouterr().err
    assert (
        "oracled stress: warning: the core dropped 720 of 3600 quotes: v1 unknown_symbol 720" in err
    )
    lines = tape.read_bytes().splitlines(keepends=True)
    foreign = tmp_path / "foreign.jsonl"
    moved = [json.dumps(json.loads(x) | {"source": "zz"}).encode() + b"\n" for x in lines[1:]]
    foreign.write_bytes(b"".join([lines[0], *moved]))
    argv_foreign = ["stress", "--tape", str(foreign), "--accounts", str(accounts)]
    assert main([*argv_foreign, "--config", str(cfg)]) == 0
    assert capsys.readouterr().err == (
        "oracled stress: warning: the core dropped 3600 of 3600 quotes (every one: is the config"
        " the tape's?): zz unknown_symbol 3600\n"
    )
    quote = json.loads(lines[2]) | {"bid": "50000", "ask": "49990"}
    del quote["price"]
    tape.write_bytes(b"".join([*lines[:2], json.dumps(quote).encode() + b"\n", *lines[3:]]))
    assert main([*argv, "--config", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("oracled stress: warning: the core dropped 1 of 3600 quotes: v1 ")


def test_a_tape_is_read_as_the_run_goes_not_whole_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tape was read whole before the first round (`readlines`): a day's recording is
    gigabytes in memory, and a FIFO `oracled record` writes gave nothing until the recording
    ended. Here the tape is a FIFO whose writer sends the scenario's first minute, then a quote
    past a gap, and keeps it open: stress stops at the gap (exit 4) while the writer still holds
    it open. Read whole first, it would wait for the writer's end (the writer gives up after
    20 s, and the test fails)."""
    tape, cfg, accounts = _scenario_files(tmp_path, "flash_crash")
    lines = tape.read_bytes().splitlines(keepends=True)[:601]
    late = json.loads(lines[-1]) | {"ts": json.loads(lines[-1])["ts"] + 120_000}
    fifo = tmp_path / "live.jsonl"
    os.mkfifo(fifo)
    done, gave_up = threading.Event(), threading.Event()

    def write() -> None:
        with fifo.open("wb") as out:
            out.write(b"".join(lines) + json.dumps(late).encode() + b"\n")
            out.flush()
            if not done.wait(20):
                gave_up.set()

    writer = threading.Thread(target=write)
    writer.start()
    argv = ["stress", "--config", str(cfg), "--tape", str(fifo), "--accounts", str(accounts)]
    try:
        assert main([*argv, "--max-gap", "60"]) == 4
    finally:
        done.set()
        if writer.is_alive():  # still waiting for a reader (stress failed before opening it)
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join()
    assert not gave_up.is_set()
    assert "line 602: no quote for 120" in capsys.readouterr().err


def test_dev_zero_as_the_tape_is_refused_at_its_first_mib(tmp_path: Path) -> None:
    """`oracled stress --tape /dev/zero` read one endless line, its memory growing until the
    process was killed: line 1 is refused as too long to be a header after 1 MiB (exit 1, as
    for any tape that is none), in a process of its own under a timeout."""
    _, cfg, accounts = _scenario_files(tmp_path, "flash_crash")
    argv = ["stress", "--config", str(cfg), "--tape", "/dev/zero", "--accounts", str(accounts)]
    proc = run_oracled(argv)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (
        "oracled stress: /dev/zero: line 1: not an oracled-tape header (longer than 1 MiB: no"
        " tape line is this long)\n"
    )


def test_a_tape_of_another_pricing_revision_is_stressed_after_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tape whose header names another pricing revision (as `record` and `oracled audit
    --tape` write it) is stressed all the same, after one warning naming both revisions and
    the recording oracled, the words `oracled replay` uses; this build's own revision, or none,
    gives no such line. Before, `oracled stress` said nothing: its oracle row could differ from
    the recorded prices with no word of why."""
    tape, cfg, accounts = _scenario_files(tmp_path, "flash_crash")
    header, rest = tape.read_bytes().split(b"\n", 1)
    argv = ["stress", "--config", str(cfg), "--tape", str(tape), "--accounts", str(accounts)]
    said = []
    for revision in (PRICING_REVISION - 1, PRICING_REVISION, None):
        stamped = json.loads(header) | {"pricing_revision": revision, "software_version": "0.0.9"}
        tape.write_bytes(json.dumps(stamped).encode() + b"\n" + rest)
        capsys.readouterr()
        assert main(argv) == 0
        err = capsys.readouterr().err
        said.append([line for line in err.splitlines() if "pricing revision" in line])
    assert said == [
        [
            f"oracled stress: warning: recorded under pricing revision {PRICING_REVISION - 1}"
            f" (oracled 0.0.9), this oracled prices under revision {PRICING_REVISION}: the"
            " reports may differ from the recorded ones where the rules changed in between"
            " (CHANGELOG.md, Pricing revisions)"
        ],
        [],
        [],
    ]
