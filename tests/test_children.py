"""`children.run_shell`: a shell script's result as `subprocess.run` gives it, and a script
that does not end fails its test with the whole pipeline ended, instead of hanging the run.
`children.run_in_group` (under `run_shell` and `oracled_cli.run_oracled`): a command past its
timeout is ended with the children it started."""

from __future__ import annotations

import subprocess
import sys

import pytest
from children import alive_children, run_in_group, run_shell, still_running


def test_a_script_that_ends_gives_its_status_and_output() -> None:
    """Exit status, stdout and stderr come back as text; stdin is empty, not the test's."""
    proc = run_shell("read line || echo no-input; echo out; echo err >&2; exit 3", timeout_s=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "no-input\nout\n", "err\n")


def test_a_pipeline_past_its_timeout_fails_and_leaves_no_process() -> None:
    """Both ends of a pipeline that never ends are stopped with the shell's process group once
    the timeout passes, and the test fails naming the script and what it wrote to stderr. The
    0.5 s is no timing claim: the script would run a minute."""
    before = set(alive_children())
    script = "echo started >&2; sleep 60 | sleep 61"
    with pytest.raises(AssertionError) as failed:
        run_shell(script, timeout_s=0.5)
    said = str(failed.value)
    assert said.startswith(f"sh -c {script!r} did not end within 0.5 s; its process group")
    assert said.endswith("Its stderr: 'started\\n'")
    left = still_running(before, grace_s=5.0)  # the pytest process is the orphans' subreaper
    assert not [c for c in left.values() if "sleep" in c.command], left


def test_a_command_past_its_timeout_is_ended_with_its_children() -> None:
    """A Python process that started a child of its own and never ends: once the timeout
    passes, `subprocess.TimeoutExpired` comes with what it wrote, and neither it nor its child
    is left running (`subprocess.run`'s timeout killed the parent alone and the child lived on).
    The 2 s is no timing claim (it gives the child time to start): the command would run a
    minute."""
    before = set(alive_children())
    code = (
        "import subprocess, sys, time; subprocess.Popen(['sleep', '62']);"
        " print('started', file=sys.stderr, flush=True); time.sleep(60)"
    )
    with pytest.raises(subprocess.TimeoutExpired) as late:
        run_in_group([sys.executable, "-c", code], timeout_s=2.0)
    assert late.value.stderr == "started\n"
    left = still_running(before, grace_s=5.0)  # the pytest process is the orphans' subreaper
    assert not [c for c in left.values() if "sleep 62" in c.command or "-c" in c.command], left
