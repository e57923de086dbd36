"""`oracled` run as its users run it: a process of its own, under a timeout, so that a command
that blocks (on a FIFO, an endless file) fails its test instead of holding the suite."""

from __future__ import annotations

import subprocess
import sys

__all__ = ["run_oracled"]


def run_oracled(argv: list[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`oracled <argv>` with this interpreter, stdin empty, stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "oracled.cli", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
