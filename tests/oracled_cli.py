"""`oracled` run as its users run it: a process of its own, under a timeout, so that a command
that blocks (on a FIFO, an endless file) fails its test instead of holding the suite. The
process leads a group of its own, ended whole on the timeout: a child the command started (a
worker, a shell) does not outlive it and keep running under later tests."""

from __future__ import annotations

import subprocess
import sys

from children import run_in_group

__all__ = ["run_oracled"]


def run_oracled(argv: list[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`oracled <argv>` with this interpreter, stdin empty, stdout and stderr captured as text;
    `subprocess.TimeoutExpired` past `timeout`, its process group ended and reaped."""
    return run_in_group([sys.executable, "-m", "oracled.cli", *argv], timeout_s=timeout)
