"""The `oracled` command line: exit codes and messages a person or a script relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from children import stop
from cli_configs import warned_config
from pipe_lines import PipeLines

ROOT = Path(__file__).resolve().parents[2]
BAD = """
[sources.binance]
type = "binance"

[[markets]]
symbol = "BTC/USD"
min_sources = 5
sources = [
  { source = "binance", pair = "BTC/USD" },
  { source = "binance", pair = "BTC/USDT", weight = 0 },
]
"""


WARNED = warned_config()
NATS_WARNING = (
    "nats.enabled: false, yet servers set: [nats] stays off "
    "(set enabled = true to use it, or remove its settings)"
)


TAPE = (
    '{"format": "oracled-tape", "version": 1}\n'
    '{"ts": 1700000000500, "source": "%s", "pair": "%s", "bid": "60000.5", "ask": "60001.5"}\n'
)


def _oracled(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oracled.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def _oracled_to_a_full_disk(*args: str) -> subprocess.CompletedProcess[str]:
    """`oracled ARGS > /dev/full`: stdout a file every write to which fails (ENOSPC)."""
    with open("/dev/full", "w") as full:
        return subprocess.run(
            [sys.executable, "-m", "oracled.cli", *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
            cwd=ROOT,
        )


def _markets(replayed: str) -> set[str]:
    return {json.loads(line)["market"] for line in replayed.splitlines()}


def test_the_shipped_default_config_is_valid_and_has_twenty_markets() -> None:
    """check-config accepts config/default.toml, which covers at least 20 USD markets."""
    proc = _oracled("check-config", "config/default.toml")
    assert proc.returncode == 0, proc.stderr
    count = int(proc.stdout.split("(")[1].split()[0])
    assert count >= 20


def test_check_config_reports_every_problem_with_its_key_path(tmp_path: Path) -> None:
    """All problems at once, each with its path, and a non-zero exit."""
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD.replace("min_sources = 5", "min_sources = 0"))
    proc = _oracled("check-config", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"{bad}: 2 problem(s)",
        "  markets[0].min_sources: must be >= 1",
        "  markets[0].sources[1].weight: must be > 0",
    ]


def test_check_config_refuses_two_pairs_on_one_okx_swap() -> None:
    """An OKX `instruments` entry naming a perpetual with or without -SWAP is the one swap the
    adapter subscribes: two pairs on it are refused by check-config, as by the loader."""
    bad = ROOT / "tests" / "config" / "bad" / "okx_perpetual_one_instrument_for_two_pairs.toml"
    proc = _oracled("check-config", str(bad))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == f"{bad}: 3 problem(s)"
    assert [line.split(":")[0] for line in lines[1:]] == [
        f"  sources.{sid}.instruments.XBT/USDT" for sid in ("okx", "okx_named", "okx_spot")
    ]
    good = ROOT / "tests" / "config" / "good" / "perp_instruments.toml"
    assert _oracled("check-config", str(good)).returncode == 0


def test_run_refuses_an_invalid_config_with_the_same_messages(tmp_path: Path) -> None:
    """`oracled run` does not start on a config that check-config rejects."""
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD.replace("weight = 0", "weight = 1"))
    proc = _oracled("run", "--config", str(bad), "--listen", "127.0.0.1:0")
    assert proc.returncode == 2
    assert "refusing to start" in proc.stderr
    assert "markets[0].min_sources: 5 exceeds the 2 source(s) listed" in proc.stderr
    assert "markets[0].sources[1].pair: no route converts USDT to USD" in proc.stderr


def test_check_config_prints_warnings_on_stderr_and_still_exits_0(tmp_path: Path) -> None:
    """A valid file with a doubtful setting: the ok line on stdout, then one
    `warning: <key>: <text>` line per warning on stderr, and exit 0 (it is no problem)."""
    warned = tmp_path / "warned.toml"
    warned.write_text(WARNED)
    proc = _oracled("check-config", str(warned))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{warned}: ok (1 markets, 1 enabled sources)\n"
    assert proc.stderr.splitlines() == [f"warning: {NATS_WARNING}"]
    clean = tmp_path / "clean.toml"
    clean.write_text(WARNED.replace('servers = ["nats://127.0.0.1:4333"]', ""))
    proc = _oracled("check-config", str(clean))
    assert (proc.returncode, proc.stderr) == (0, "")


def test_run_logs_the_config_warnings_at_start_up(tmp_path: Path) -> None:
    """`oracled run` logs each warning check-config prints, as a `config warning` line with
    the key and the text, and starts anyway."""
    warned = tmp_path / "warned.toml"
    warned.write_text(WARNED)
    argv = [sys.executable, "-m", "oracled.cli", "run", "--config", str(warned)]
    proc = subprocess.Popen(
        [*argv, "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, cwd=tmp_path, text=True
    )
    assert proc.stderr is not None
    stderr = PipeLines(proc.stderr)
    seen: list[dict[str, object]] = []
    deadline = time.monotonic() + 30
    try:
        while not any(e.get("event") == "config warning" for e in seen):
            line = stderr.next_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                break
            seen.append(json.loads(line))
        assert proc.poll() is None, "the daemon stopped"
        proc.terminate()
        proc.wait(timeout=30)
    finally:
        stop(proc)
        proc.stderr.close()
    warnings = [e for e in seen if e.get("event") == "config warning"]
    assert [(e["key"], e["warning"], e["level"]) for e in warnings] == [
        ("nats.enabled", NATS_WARNING.removeprefix("nats.enabled: "), "warning")
    ]


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    """A path that does not exist is named in the message."""
    proc = _oracled("check-config", str(tmp_path / "nope.toml"))
    assert proc.returncode == 2
    assert "nope.toml: cannot read" in proc.stderr


def test_a_file_nested_too_deeply_is_a_config_problem_not_a_traceback(tmp_path: Path) -> None:
    """TOML (the config, an accounts file) or JSON (an accounts file) nested thousands deep is
    refused with exit 2 naming the file; the parsers' RecursionError once escaped as a traceback
    with exit 1. Run in a fresh process: the daemon's own imports (py_ecc) raise Python's
    recursion limit a hundredfold, so the depth that fails depends on what was imported."""
    arrays = "[" * 5000 + "]" * 5000
    toml = tmp_path / "deep.toml"
    toml.write_text(f"x = {arrays}\n")
    tables = tmp_path / "tables.toml"
    tables.write_text("x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n")
    for path in (toml, tables):
        for args in (("check-config", str(path)), ("run", "--config", str(path))):
            proc = _oracled(*args)
            assert proc.returncode == 2, proc.stderr
            assert f"{path}: not valid TOML (nested too deeply)" in proc.stderr
            assert "Traceback" not in proc.stderr
    json_file = tmp_path / "deep.json"
    json_file.write_text(arrays)
    for path in (toml, json_file):
        proc = _oracled("stress", "--scenario", "flash_crash", "--accounts", str(path))
        assert proc.returncode == 2, proc.stderr
        assert f"{path}: nested too deeply" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_bad_listen_address_is_a_usage_error() -> None:
    """--listen must be HOST:PORT; the usage line names the option once (argparse already
    does), the value quoted (it read `argument --listen: --listen 'localhost': ...`)."""
    proc = _oracled("run", "--listen", "localhost")
    assert proc.returncode == 2
    assert "argument --listen: 'localhost': must be HOST:PORT" in proc.stderr
    assert proc.stderr.splitlines()[-1].count("--listen") == 1  # the line after the usage


def test_bad_command_line_values_are_quoted_once_and_cut_when_long(tmp_path: Path) -> None:
    """A value refused on the command line is named by its option once and quoted, at most
    60 characters of it: `--max-gap` (which named itself twice) and `audit --market` (cut after
    64 characters with no sign that it was)."""
    proc = _oracled("replay", "--max-gap", "soon", str(tmp_path / "t.jsonl"))
    assert proc.returncode == 2
    assert "argument --max-gap: 'soon': not a number of seconds >= 0" in proc.stderr
    assert proc.stderr.splitlines()[-1].count("--max-gap") == 1, proc.stderr
    long = "BTC USD" * 20
    proc = _oracled("audit", "--db", str(tmp_path / "a.sqlite3"), "--market", long)
    assert proc.returncode == 2
    quoted = f"{long[:60]!r}... (140 characters)"
    assert f"argument --market: {quoted} is not a market name like BTC/USD" in proc.stderr


def test_a_demo_duration_that_is_no_positive_number_is_a_usage_error() -> None:
    """`demo --duration nan` ended in a traceback from the event loop's timer, and `-5` (or 0)
    ran a demo that stopped as soon as it started, exit 0: each is refused before the start,
    exit 2, the value quoted as the other options' are."""
    for value in ("nan", "-5", "0", "inf", "soon"):
        proc = _oracled("demo", "--duration", value)
        assert proc.returncode == 2, (value, proc.stderr)
        said = f"argument --duration: {value!r}: not a number of seconds > 0"
        assert proc.stderr.splitlines()[-1].endswith(said), proc.stderr
        assert "Traceback" not in proc.stderr


def test_replay_to_an_out_it_cannot_write_says_so_in_words(tmp_path: Path) -> None:
    """`--out` in a directory that does not exist: the file and the system's reason, as every
    other file error of the command line reads (it printed `[Errno 2] No such file or
    directory: '...'`)."""
    tape = tmp_path / "t.jsonl"
    tape.write_text(TAPE % ("binance", "BTC/USDT"))
    out = tmp_path / "no" / "out.jsonl"
    config = ROOT / "tests" / "fixtures" / "tapes" / "config.toml"
    proc = _oracled("replay", "--config", str(config), "--out", str(out), str(tape))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f"oracled replay: {out}: No such file or directory\n"


def test_a_stdout_that_cannot_be_written_is_one_line_on_stderr_and_exit_1(tmp_path: Path) -> None:
    """`check-config` or `audit` printing to a full disk (here /dev/full): the failure went to
    the daemon's `fatal` log line, which, logging not being set up for these commands, is
    written to stdout, the file that had just failed, so the process ended in two tracebacks.
    It is one line on stderr naming the command and the reason, exit 1, nothing more."""
    db = ROOT / "tests" / "fixtures" / "audit" / "trail_format1.sqlite3"
    trail = tmp_path / "audit.sqlite3"
    trail.write_bytes(db.read_bytes())
    for command, args in (
        ("check-config", [str(ROOT / "config" / "default.toml")]),
        ("audit", ["--db", str(trail), "--market", "BTC/USD"]),
    ):
        proc = _oracled_to_a_full_disk(command, *args)
        assert proc.returncode == 1, (command, proc.stderr)
        assert proc.stderr == f"oracled {command}: No space left on device\n", proc.stderr


def test_a_help_that_cannot_be_written_is_one_line_on_stderr_and_exit_1() -> None:
    """Found reviewing the CLI's output errors: argparse drops a write error of what it prints,
    so `oracled --help > /dev/full` (and each command's --help, and --version) lost the text and
    exited 0, before main's handling of a stdout that fails. Each is now one line on stderr
    naming the command and the reason, exit 1; to a reader gone away (a closed pipe), exit 0."""
    commands = ["run", "check-config", "replay", "record", "demo", "margin", "stress", "scenario"]
    for argv in (["--help"], ["--version"], *([c, "--help"] for c in [*commands, "audit"])):
        prog = " ".join(["oracled", *argv[:-1]])
        proc = _oracled_to_a_full_disk(*argv)
        assert proc.returncode == 1, (argv, proc.stderr)
        assert proc.stderr == f"{prog}: No space left on device\n", argv
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "w") as closed:
        proc = subprocess.run(
            [sys.executable, "-m", "oracled.cli", "--help"],
            stdout=closed,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert (proc.returncode, proc.stderr) == (0, "")


def test_margin_refuses_a_url_given_twice_naming_it(tmp_path: Path) -> None:
    """`oracled margin` given the same --url twice (or more) refuses it, exit 2 before
    connecting, naming the URL and how often it was given. It used to merge the repeat
    silently, so that signed mode with quorum 2 said "1 given" to a user who typed two, and
    unsigned mode ran on one daemon without a word."""
    url = "ws://127.0.0.1:9/v1/stream"
    signers = {"a": "0x" + "11" * 20, "b": "0x" + "22" * 20}
    signed = {"deployment": "test", "signers": signers, "quorum": 2}
    for section, times, said in ((signed, 2, "twice"), (None, 3, "3 times")):
        data: dict[str, object] = {"assets": {"USD": {}}, "instruments": {}}
        if section is not None:
            data["signed"] = section
        accounts = tmp_path / "accounts.json"
        accounts.write_text(json.dumps(data))
        proc = _oracled("margin", "--accounts", str(accounts), *["--url", url] * times)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == f"oracled margin: --url {url} given {said}: give each daemon once\n"
    # A proxy's user and password in the URL are not printed with it.
    secret = "ws://reader:proxy-pass-77@127.0.0.1:9/v1/stream"
    proc = _oracled("margin", "--accounts", str(accounts), "--url", secret, "--url", secret)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        "oracled margin: --url ws://***@127.0.0.1:9/v1/stream given twice: give each daemon once\n"
    )


def test_margin_refuses_a_url_without_a_host_or_port_it_can_connect_to(tmp_path: Path) -> None:
    """A --url that names no host, a port out of range or a bracket left open was connected to
    again and again for ever, each failure logged with the URL alone as its `error`: exit 2
    before connecting, naming the URL and what is wrong with it."""
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps({"assets": {"USD": {}}, "instruments": {}}))
    for url, said in (
        ("ws://127.0.0.1:99999/v1/stream", "not a URL (Port out of range 0-65535)"),
        ("ws://[::1/v1/stream", "not a URL (Invalid IPv6 URL)"),
        ("ws:///v1/stream", "no host"),
    ):
        proc = _oracled("margin", "--accounts", str(accounts), "--url", url)
        assert proc.returncode == 2, (url, proc.stderr)
        assert proc.stderr == f"oracled margin: --url {url!r}: {said}\n"
    # A control character in the host: the host the client reads cannot be resolved, and the
    # URL was retried for ever (the config refuses it in any URL it dials).
    url = "ws://127.0.0.1\x01:9/v1/stream"
    proc = _oracled("margin", "--accounts", str(accounts), "--url", url)
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr == f"oracled margin: --url {url!r}: a control character or line break in it\n"
    )
    # A proxy's user and password in such a URL are not printed with it, as for a repeat.
    for url, said in (
        ("ws://reader:proxy-pass-77@127.0.0.1:99999/v1/stream", "not a URL (Port out of range"),
        ("ws://reader:proxy-pass-77@/v1/stream", "no host"),
    ):
        proc = _oracled("margin", "--accounts", str(accounts), "--url", url)
        assert proc.returncode == 2, (url, proc.stderr)
        assert "proxy-pass-77" not in proc.stderr and "reader" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("oracled margin: --url 'ws://***@"), proc.stderr
        assert said in proc.stderr, proc.stderr


def test_without_config_a_command_reads_the_shipped_config_from_any_directory(
    tmp_path: Path,
) -> None:
    """Outside the project and without --config, `oracled replay` (like run, record and demo)
    reads the shipped config/default.toml instead of failing on a relative path."""
    tape = tmp_path / "tape.jsonl"
    tape.write_text(TAPE % ("coinbase", "BTC/USD"))
    proc = _oracled("replay", str(tape), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(_markets(proc.stdout)) == 23


def test_a_config_default_toml_in_the_working_directory_comes_first(tmp_path: Path) -> None:
    """A config/default.toml of the working directory is the default, before the shipped one."""
    (tmp_path / "config").mkdir()
    own = (ROOT / "tests" / "fixtures" / "tapes" / "config.toml").read_text()
    (tmp_path / "config" / "default.toml").write_text(own)
    tape = tmp_path / "tape.jsonl"
    tape.write_text(TAPE % ("a", "BTC/USDT"))
    proc = _oracled("replay", str(tape), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _markets(proc.stdout) == {"USDT/USD", "BTC/USD"}


def test_the_wheel_carries_the_shipped_config(tmp_path: Path) -> None:
    """A built wheel holds config/default.toml as oracled/default.toml, where an installed
    oracled finds it."""
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    proc = subprocess.run(
        [*build, "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("oracled-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("oracled/default.toml")
    assert shipped == (ROOT / "config" / "default.toml").read_bytes()


def test_a_reader_that_goes_away_is_no_error(tmp_path: Path) -> None:
    """`oracled audit ... | head`: the timeline's reader closes the pipe after one line; the
    command ends with exit 0 and no traceback, as `oracled replay` does."""
    from oracled.config import parse_config
    from oracled.core import Core
    from oracled.model import Quote
    from oracled.publish.audit import AuditTrail

    db = tmp_path / "audit.sqlite3"
    cfg = parse_config(
        {
            "oracle": {"round_interval_ms": 250, "resume_rounds": 1},
            "sources": {s: {"type": "binance"} for s in ("a", "b", "c")},
            "markets": [
                {
                    "symbol": "BTC/USD",
                    "min_sources": 2,
                    "sources": [{"source": s, "pair": "BTC/USD"} for s in ("a", "b", "c")],
                }
            ],
            "audit": {"enabled": True, "path": str(db), "queue": 4096},
        }
    )
    core, audit = Core(cfg), AuditTrail(cfg.audit)
    audit.start()
    now = 1_700_000_000_000
    for n in range(1_500):  # c prints 5 % away every other round: active, degraded, active...
        for s, factor in (("a", 1.0), ("b", 1.0001), ("c", 1.05 if n % 2 else 1.0002)):
            quote = Quote(s, "BTC/USD", now + 10, price=60_000.0 * factor)
            audit.add_quote(quote)
            core.ingest(quote)
        now += 250
        audit.submit(core.run_round(now))
    audit.close()
    with subprocess.Popen(
        [sys.executable, "-m", "oracled.cli", "audit", "--db", str(db), "--market", "BTC/USD"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    ) as proc:
        try:  # leaving the block waits for the process: a failure here must not wait forever
            assert proc.stdout is not None and proc.stderr is not None
            assert b"round 1 " in proc.stdout.readline()
            proc.stdout.close()
            errors = proc.stderr.read().decode()
            assert proc.wait(timeout=60) == 0, errors
        finally:
            stop(proc)
    assert "Traceback" not in errors and "Broken pipe" not in errors
