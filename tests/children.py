"""The tests' child processes: ended with their process group and reaped however a test ends,
and the look at what is left running that tests/conftest.py takes after every test.

A daemon a test started and never stopped keeps pricing (a CPU busy with rounds) under every
later test of the run, and a server kept on its port; so a rig ends its processes in a
`finally` or a fixture's teardown through `stop`, and the conftest fails the test that left one.
A child started in a process group of its own (`process_group=0`: one that starts children of
its own, a shell running a pipeline) is ended by `stop` with its whole group, so that none of
them is left behind once their parent is gone. `run_in_group` runs a command so, under a
timeout that ends its whole group; `run_shell` runs a `sh -c` script through it, and fails the
test rather than hanging the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Child",
    "ChildWatch",
    "alive_children",
    "become_subreaper",
    "end_children",
    "run_in_group",
    "run_shell",
    "still_running",
    "stop",
    "stop_async",
]

_PROC = Path("/proc")


def _exited(pid: int) -> bool | None:
    """Whether child `pid` has exited, looked at without reaping it (its pid, and its group,
    stay ours); None if it is no unreaped child of ours (reaped elsewhere: the pid is free)."""
    try:
        found = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    return found is not None


def _signal(pid: int, signum: signal.Signals) -> None:
    """`signum` to the process group `pid` leads, or to `pid` alone if it leads none.

    Called only while `pid` is unreaped (running, or a zombie): its pid, and the group it
    leads, cannot have been handed to another process meanwhile."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)


def _ending(pid: int, term_s: float) -> None:
    """Thaw `pid`'s group (a stopped process acts on no SIGTERM), give it `term_s` to leave on
    SIGTERM (a server flushing its store), then SIGKILL what is left of the group."""
    if _exited(pid) is None:
        return
    _signal(pid, signal.SIGCONT)
    if term_s > 0:
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + term_s
        while _exited(pid) is False and time.monotonic() < deadline:
            time.sleep(0.01)
    if _exited(pid) is not None:  # still ours: also the group's other members if it left
        _signal(pid, signal.SIGKILL)


def stop(proc: subprocess.Popen[Any], *, term_s: float = 0.0) -> int:
    """End `proc` (and its process group if it leads one) and reap it; its exit status.

    A process already reaped is left as it is: its pid may be another process's by now."""
    if proc.returncode is None:
        _ending(proc.pid, term_s)
    return proc.wait()


def run_in_group(
    argv: list[str], *, timeout_s: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`argv` (stdin empty, stdout and stderr captured as text) in a process group of its own.
    Past `timeout_s` the whole group, the process and every child it started, is ended and
    reaped, and `subprocess.TimeoutExpired` raised with what the group wrote:
    `subprocess.run(timeout=...)` kills the process alone and leaves its children running."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop(proc)
        try:  # what the group wrote before it was ended (a process that left it may hold on)
            out, err = proc.communicate(timeout=5.0)
        except subprocess.TimeoutExpired:
            out, err = "", "(not read: a process outside the group holds the pipe)"
        raise subprocess.TimeoutExpired(argv, timeout_s, out, err) from None
    finally:
        stop(proc)  # ended already, or an interrupt: its group goes with it either way
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_shell(
    script: str, *, timeout_s: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`sh -c script` through `run_in_group`. Past `timeout_s` the shell and every process of
    its pipeline are ended, and the test fails naming the script and what it wrote to stderr;
    without a timeout, a hang there hangs the whole run."""
    try:
        return run_in_group(["sh", "-c", script], timeout_s=timeout_s, cwd=cwd)
    except subprocess.TimeoutExpired as late:
        err = late.stderr if isinstance(late.stderr, str) else ""
        raise AssertionError(
            f"sh -c {script!r} did not end within {timeout_s:g} s; its process group was"
            f" stopped. Its stderr: {err[-2000:]!r}"
        ) from None


async def stop_async(proc: asyncio.subprocess.Process, *, term_s: float = 0.0) -> int:
    """`stop` for a process of `asyncio.create_subprocess_exec`: its watcher reaps it, so the
    signals go to the process alone, and the wait is the event loop's."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            if term_s > 0:
                proc.terminate()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(term_s):
                        return await proc.wait()
            proc.kill()
    return await proc.wait()


@dataclass(frozen=True)
class Child:
    """A running child process of this one, as /proc shows it."""

    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid}: {self.command}"


def _child(entry: str, parent: int) -> Child | None:
    """The process of /proc entry `entry` if it is a living (not zombie) child of `parent`."""
    try:
        stat = (_PROC / entry / "stat").read_text()
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses: split past its end.
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) != parent or state in ("Z", "X"):
            return None
        cmdline = (_PROC / entry / "cmdline").read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return None
    command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return Child(int(entry), command[:300] or stat.split(" ", 2)[1])


def alive_children() -> dict[int, Child]:
    """This process's living children, by pid (zombies, which hold nothing, are left out)."""
    me = os.getpid()
    found = (_child(e, me) for e in os.listdir(_PROC) if e.isdigit())
    return {c.pid: c for c in found if c is not None}


def end_children(pids: set[int]) -> None:
    """SIGKILL the given children (their process groups if they lead one), leaving them to
    whoever started them to reap: what the conftest does to the processes a test left."""
    for pid in pids:
        if _exited(pid) is False:
            _signal(pid, signal.SIGCONT)
            _signal(pid, signal.SIGKILL)


def still_running(known: AbstractSet[int], grace_s: float) -> dict[int, Child]:
    """The living children not in `known` that are still there after up to `grace_s` (a child
    sent its signal a moment ago is given the time to leave)."""
    deadline = time.monotonic() + grace_s
    while True:
        left = {pid: c for pid, c in alive_children().items() if pid not in known}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def become_subreaper() -> bool:
    """Have the orphans of this process's descendants handed to it, not to init (Linux's
    PR_SET_CHILD_SUBREAPER): the grandchild of a child that died then shows as a child here,
    where `alive_children` sees it. False where the system does not offer it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


_PR_SET_CHILD_SUBREAPER = 36


class ChildWatch:
    """This process's living children as last looked at, looked at again (a scan of /proc, a
    few ms) only once this process may have started one since: an audit event of a process
    start counts it. A test that starts no process costs no scan."""

    STARTS = frozenset(
        {"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system"}
    )

    def __init__(self) -> None:
        self.starts = 0
        self._looked_at = -1  # `starts` when `_seen` was taken
        self._seen: frozenset[int] = frozenset()
        sys.addaudithook(self._audit)

    def _audit(self, event: str, _args: tuple[Any, ...]) -> None:
        if event in self.STARTS:
            self.starts += 1

    def current(self) -> frozenset[int]:
        """The pids of the living children (orphans handed over since a last start aside)."""
        if self.starts != self._looked_at:
            self._looked_at = self.starts  # first: a start during the scan gets a scan of its own
            self._seen = frozenset(alive_children())
        return self._seen
