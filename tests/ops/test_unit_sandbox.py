"""The deployments' sandboxes, applied for real to a running daemon on loopback venues.

systemd cannot start the unit here (no init system), but its system call filter can be rebuilt
exactly: the unit's `SystemCallFilter=` groups resolved by `systemd-analyze syscall-filter` (the
same tables systemd compiles in), installed with libseccomp (the library systemd uses) by
tests/ops/seccomp_launch.py, which then execs `oracled run`. The read-only file system that every
deployment gives the daemon (but for its working directory) is a mount namespace of its own.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from catalogue import ROOT
from daemon import ADMIN_TOKEN, Daemon, sim_config

from oracled.sim import BinanceSim

pytestmark = pytest.mark.integration
UNIT = ROOT / "deploy" / "systemd" / "oracled.service"
LAUNCHER = Path(__file__).with_name("seccomp_launch.py")


def _service_values(key: str) -> list[str]:
    """Every value of `key` in the unit's [Service] section, in order."""
    section, values = "", []
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line.startswith(f"{key}="):
            values.append(line.split("=", 1)[1])
    return values


def _expand(name: str, seen: set[str]) -> set[str]:
    """A system call or a `@group`, as the system calls systemd puts in the filter for it."""
    if not name.startswith("@"):
        return {name}
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is missing (Debian package systemd)"
    done = subprocess.run(
        [exe, "syscall-filter", "--no-pager", name],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    calls: set[str] = set()
    for line in done.stdout.splitlines()[1:]:
        entry = line.strip()
        if not entry or entry.startswith("#") or entry in seen:
            continue
        seen.add(entry)
        calls |= _expand(entry, seen)
    return calls


def unit_filter() -> tuple[set[str], str | None]:
    """(allowed system calls, errno name or None for SIGSYS) of the unit, as systemd reads it:
    an allow list, then `~` lists that take calls out of it (systemd.exec(5))."""
    allowed: set[str] = set()
    for value in _service_values("SystemCallFilter"):
        deny = value.startswith("~")
        calls = set().union(*(_expand(n, set()) for n in value.removeprefix("~").split()))
        allowed = allowed - calls if deny else allowed | calls
    (errno_name,) = _service_values("SystemCallErrorNumber") or [None]
    return allowed, errno_name


def _seccomp_mode(pid: int) -> str:
    """The process's seccomp mode from /proc (0 none, 2 a filter)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Seccomp:"):
            return line.split()[1]
    raise AssertionError(f"no Seccomp line in /proc/{pid}/status")


def _config(venues: list[BinanceSim]) -> str:
    """Three loopback venues, with a pauses file and an audit trail in the working directory."""
    config = sim_config([(s.ws_url, s.rest_url) for s in venues]).replace(
        "[oracle]\n", '[oracle]\nmanual_pauses_file = "pauses.json"\n', 1
    )
    return config + '\n[audit]\nenabled = true\npath = "audit.sqlite3"\n'


async def _price_pause_reload_stop(daemon: Daemon, workdir: Path) -> None:
    """What a deployed daemon does: prices, a manual pause kept in its file, its audit trail
    (SQLite, the WAL), a reload on SIGHUP, a stop on SIGTERM with exit 0, and no error logged."""
    assert daemon.proc is not None
    await daemon.wait_status("BTC/USD", {"active", "degraded"}, limit_s=20)
    status, body = await daemon.post(
        "/v1/admin/markets/ETH-USD/pause", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert status == 200, body
    await daemon.wait_for(lambda: "ETH/USD" in _text(workdir / "pauses.json"), 10, "pause file")
    daemon.proc.send_signal(signal.SIGHUP)
    await daemon.wait_for(lambda: daemon.events("config reloaded"), 10, "reload")
    await daemon.wait_for(lambda: (workdir / "audit.sqlite3-wal").exists(), 10, "trail")
    assert daemon.terminate() == 0, daemon.logs()[-3000:]
    errors = [ln for ln in daemon.logs().splitlines() if '"level":"error"' in ln]
    errors += [ln for ln in daemon.logs().splitlines() if '"level":"critical"' in ln]
    assert errors == [], errors


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@contextlib.asynccontextmanager
async def _started_by(
    wrapper: Path, venues: list[BinanceSim], tmp_path: Path
) -> AsyncIterator[Daemon]:
    """The daemon of `_config(venues)` started by `wrapper` (a python that confines what it
    runs) in `tmp_path`; closed on leaving, however the block ends."""
    daemon = Daemon(_config(venues), tmp_path)
    daemon.argv = [str(wrapper), "run"]
    try:
        await daemon.start()
        yield daemon
    finally:
        await daemon.close()


async def test_the_daemon_runs_and_stops_under_the_units_system_call_filter(
    venues: list[BinanceSim], tmp_path: Path
) -> None:
    """The unit allows `@system-service` less `@privileged @resources`, and systemd kills a
    process that makes any other call (SIGSYS) unless `SystemCallErrorNumber=` is set. The
    daemon makes one at start: numpy's OpenBLAS calls mbind (in `@resources`) when it allocates
    its buffers at import, so under the shipped unit `oracled run` died of SIGSYS before its
    first log line, and Restart=on-failure started it again every 2 s, forever (found by
    rebuilding the filter here: `python -c 'import numpy'` died too). With EPERM the call fails
    and OpenBLAS carries on, as it does under Docker's and Kubernetes' default seccomp profiles,
    which answer EPERM as well. Here the daemon, under the unit's filter, serves prices, keeps a
    manual pause in its file and writes its audit trail (SQLite, the WAL), reloads on SIGHUP and
    stops on SIGTERM with exit 0."""
    allowed, errno_name = unit_filter()
    assert {"mbind", "setrlimit", "setuid"}.isdisjoint(allowed), "the filter lost its deny list"
    spec = tmp_path / "filter.json"
    spec.write_text(json.dumps({"allow": sorted(allowed), "errno": errno_name}))
    wrapper = tmp_path / "python-filtered"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{LAUNCHER}" "{spec}" "{sys.executable}" "$@"\n'
    )
    wrapper.chmod(0o755)
    async with _started_by(wrapper, venues, tmp_path) as daemon:
        assert daemon.proc is not None
        assert _seccomp_mode(daemon.proc.pid) == "2", "the daemon runs without the filter"
        await _price_pause_reload_stop(daemon, tmp_path)


def _root_mount_options(pid: int) -> list[str]:
    """The mount options of / as the process sees it (its mount namespace)."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError(f"no root mount in /proc/{pid}/mountinfo")


async def test_the_daemon_writes_nowhere_but_its_working_directory(
    venues: list[BinanceSim], tmp_path: Path
) -> None:
    """Every deployment leaves the daemon one writable directory, its working directory: the
    unit's state directory under ProtectSystem=strict, the image's volume under a read-only root
    in the pods (readOnlyRootFilesystem) and in compose (read_only). Here the daemon runs in a
    mount namespace of its own where the whole root filesystem is read-only (even /tmp) but for
    its working directory, bound writable: it prices, keeps a pause, writes its trail, reloads
    and stops as it does anywhere, with no error logged (a write that failed elsewhere would be
    logged, or stop it)."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare is missing (Debian package util-linux)"
    wrapper = tmp_path / "python-read-only-root"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'exec "{unshare}" --mount --propagation private sh -c '
        '\'mount --bind "$0" "$0" && mount -o remount,bind,ro / && cd "$0" && exec "$@"\' '
        f'"{tmp_path}" "{sys.executable}" "$@"\n'
    )
    wrapper.chmod(0o755)
    async with _started_by(wrapper, venues, tmp_path) as daemon:
        assert daemon.proc is not None
        assert "ro" in _root_mount_options(daemon.proc.pid), "the root is writable"
        await _price_pause_reload_stop(daemon, tmp_path)
