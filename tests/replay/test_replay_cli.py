"""`oracled replay` as a shell script runs it: where the output cannot go, it says so and exits
non-zero, without a traceback and without harming the tape."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

from children import run_shell, stop

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tapes"
CONFIG = FIXTURES / "config.toml"
TAPE = FIXTURES / "small.jsonl"


def test_a_closed_stdout_is_a_clear_error_not_a_traceback() -> None:
    """`oracled replay TAPE >&-` (stdout closed, so Python's sys.stdout is None) ended with
    AttributeError: 'NoneType' object has no attribute 'buffer'."""
    command = f"exec '{sys.executable}' -m oracled.cli replay --config '{CONFIG}' '{TAPE}' >&-"
    proc = run_shell(command, timeout_s=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "stdout is closed" in proc.stderr


def test_out_naming_the_tape_itself_is_refused_and_the_tape_kept(tmp_path: Path) -> None:
    """`--out` naming the tape (here through a second name) opened it for writing, which
    emptied it before it was read: the recording was lost and the error blamed an 'empty tape'.
    It is a usage error (exit 2) and the tape is untouched."""
    tape = tmp_path / "tape.jsonl"
    shutil.copyfile(TAPE, tape)
    (tmp_path / "same.jsonl").symlink_to(tape)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "oracled.cli",
            "replay",
            "--config",
            str(CONFIG),
            str(tape),
            "--out",
            str(tmp_path / "same.jsonl"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--out is the tape itself" in proc.stderr
    assert tape.read_bytes() == TAPE.read_bytes()


def test_out_naming_the_file_stdin_reads_is_refused_and_the_tape_kept(tmp_path: Path) -> None:
    """`oracled replay - < tape.jsonl --out tape.jsonl`: the check above compared the paths,
    and a tape read from stdin has none, so --out was opened for writing and emptied the very
    file the shell had redirected stdin from: the recording was lost (0 bytes) and the replay
    blamed an 'empty tape'. The open tape itself is compared: refused, exit 2, tape intact."""
    tape = tmp_path / "tape.jsonl"
    shutil.copyfile(TAPE, tape)
    command = (
        f"exec '{sys.executable}' -m oracled.cli replay --config '{CONFIG}' --out '{tape}' -"
        f" < '{tape}'"
    )
    proc = run_shell(command, timeout_s=60)
    assert proc.returncode == 2, proc.stderr
    assert "--out is the tape itself" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert tape.read_bytes() == TAPE.read_bytes()


def _as_in_the_foreground() -> None:
    """SIGINT at its default, as a terminal starts a command: a shell starts a background job
    with SIGINT ignored (the suite's shards are such jobs, scripts/pytest-shards.sh), and a
    command started so keeps ignoring it, as Python does and `oracled replay` with it. Without
    this the test depended on whether an earlier test of its process had left a handler of
    its own (which a child does not inherit) where the shard began with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_replay_says_its_output_is_incomplete_and_exits_130(
    tmp_path: Path,
) -> None:
    """Ctrl-C (or `timeout -s INT`) stopped a replay at once with exit 0 and not a word, so a
    script took the reports written so far for the whole tape. It now says the output is
    incomplete and exits 130, as a shell reports a command that SIGINT ended."""
    tape = tmp_path / "gap.jsonl"
    line = '{"ts": %d, "source": "a", "pair": "USDT/USD", "price": "1.0001"}\n'
    day = 86_400_000  # a quote, then one a day later: 86,401 rounds to write
    tape.write_text(
        '{"format": "oracled-tape", "version": 1}\n'
        + line % 1_700_000_000_500
        + line % (1_700_000_000_500 + day)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "oracled.cli", "replay", "--config", str(CONFIG), str(tape)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_as_in_the_foreground,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b'{"market":"USDT/USD"')  # it is replaying
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == 130, err
    assert b"interrupted: the output is incomplete" in err
    assert b"Traceback" not in err


def test_dev_zero_as_the_tape_is_refused_at_its_first_mib() -> None:
    """`oracled replay` of /dev/zero (a file without a newline) read it as one endless line, its
    memory growing until the process was killed: now line 1 is refused as too long to be a
    header after 1 MiB, exit 1 as for any tape that is none. In a process of its own under a
    timeout: a regression fails the test instead of hanging it."""
    replay = [sys.executable, "-m", "oracled.cli", "replay", "--config", str(CONFIG), "/dev/zero"]
    proc = subprocess.run(replay, capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.endswith(
        "/dev/zero: line 1: not an oracled-tape header (longer than 1 MiB: no tape line is this"
        " long)\n"
    ), proc.stderr
