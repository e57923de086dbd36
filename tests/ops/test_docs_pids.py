"""The process look-ups the docs give an operator (`$(pidof ...)` in the runbook) find the
daemon as every deployment starts it: the `oracled` console script."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from catalogue import ROOT
from children import stop

#: `$(pidof -s oracled)`: the command inside the substitution.
_LOOKUP = re.compile(r"\$\((pidof [^)]*)\)")


def _lookups() -> set[str]:
    """Every `pidof` command the operator-facing docs substitute into another."""
    paths = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted(ROOT.glob("docs/*.md"))]
    return {found for p in paths for found in _LOOKUP.findall(p.read_text())}


def test_every_pid_lookup_the_docs_show_finds_the_console_script(tmp_path: Path) -> None:
    """The systemd unit, the image and `make run` start `oracled`, a Python script: its
    process runs the interpreter with the script as an argument, which plain `pidof oracled`
    does not match (it wants `-x`). The runbook's file-descriptor check,
    `ls /proc/$(pidof -s oracled)/fd`, found no process and read `/proc//fd`: no such file.
    Each look-up is run here, `-s` (one pid only) left out so that other daemons on the machine
    do not hide this one, against `oracled replay -` started by the script, waiting on its
    input."""
    lookups = _lookups()
    assert lookups, "the runbook's pidof look-ups are found at all"
    script = Path(sys.executable).with_name("oracled")
    assert script.is_file(), script  # the environment's console script, as `make` installs it
    proc = subprocess.Popen(
        [str(script), "replay", "-"], stdin=subprocess.PIPE, cwd=tmp_path, text=True
    )
    try:
        for lookup in sorted(lookups):
            words = [
                w.replace("s", "") if re.fullmatch(r"-\w+", w) else w for w in shlex.split(lookup)
            ]
            argv = [w for w in words if w != "-"]
            found = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            assert str(proc.pid) in found.stdout.split(), (lookup, found.stdout)
    finally:
        stop(proc)
        assert proc.stdin is not None
        proc.stdin.close()
