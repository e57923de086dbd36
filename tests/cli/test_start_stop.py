"""`oracled run` (and `oracled demo`, `oracled margin`) asked to stop at any moment of its
start: it stops cleanly, exit 0.

Real processes: the daemon is started as `python -m oracled.cli run`, its sources point at a
loopback server (or at nothing), and the signal is sent at a moment the test observes from the
outside (the process catching SIGHUP, a log line, the source's connection being accepted).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from children import stop
from cli_configs import warned_config
from file_lease import leased
from pipe_lines import PipeLines


class _Daemon:
    """One `oracled run` (or `demo`) and the JSON lines of its stderr, read as they come."""

    def __init__(self, config: Path, command: str = "run", argv: list[str] | None = None) -> None:
        self.config = config
        argv = argv or [command, "--config", str(config), "--listen", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oracled.cli", *argv],
            stderr=subprocess.PIPE,
            cwd=config.parent,
            text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        self._stderr = PipeLines(self.proc.stderr)

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines]

    def read_until(self, event: str, timeout_s: float = 30.0) -> dict[str, object]:
        """Read stderr up to the first line with this event."""
        deadline = time.monotonic() + timeout_s
        while (line := self.next_line(deadline - time.monotonic())) is not None:
            self.lines.append(line)
            entry = json.loads(line)
            if entry["event"] == event:
                return entry  # type: ignore[no-any-return]
        assert not self._stderr.ended, f"the daemon ended before {event!r}: {self.lines}"
        raise AssertionError(f"no {event!r} within {timeout_s} s: {self.lines}")

    def next_line(self, timeout_s: float) -> str | None:
        """The next line of stderr (JSON or not), None at its end or after `timeout_s`."""
        return self._stderr.next_line(max(0.0, timeout_s))

    def finish(self, timeout_s: float = 30.0) -> int:
        """Wait for the exit; keep the rest of stderr."""
        self.lines.extend(self._stderr.rest(timeout_s))
        return self.proc.wait(timeout_s)

    def catches(self, sig: signal.Signals) -> bool:
        """Whether the process has a handler for `sig` (the SigCgt mask of /proc)."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
        return False


@contextmanager
def _daemon(tmp_path: Path, port: int, command: str = "run") -> Iterator[_Daemon]:
    config = tmp_path / "oracled.toml"
    config.write_text(warned_config(port))
    daemon = _Daemon(config, command)
    try:
        yield daemon
    finally:
        stop(daemon.proc)
        if daemon.proc.stderr is not None:
            daemon.proc.stderr.close()


def _wait(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def _left_running(config: Path) -> list[int]:
    """Processes whose command line names this test's config (the daemon or any child)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:  # gone meanwhile
                continue
            if str(config).encode() in cmdline:
                found.append(int(entry))
    return found


def _assert_stopped_cleanly(daemon: _Daemon, sig: signal.Signals, code: int) -> list[str]:
    """Exit 0, the signal and `stopped` logged, nothing but JSON lines, nothing left running."""
    assert code == 0, daemon.lines
    events = daemon.events()  # every stderr line is a log line: no traceback
    names = [e["event"] for e in events]
    assert [e.get("signal") for e in events if e["event"] == "signal received"] == [sig.name]
    assert names[-1] == "stopped"
    assert _left_running(daemon.config) == []
    return names  # type: ignore[return-value]


def _stopped_at_its_first_line(daemon: _Daemon, sig: signal.Signals) -> list[str]:
    """`sig` sent once the command catches it, at its first line (SIGHUP is caught from its
    first line until the arguments are parsed: that is when SIGTERM and SIGINT are surely the
    latch's; SIGINT has Python's own handler before); the events of its clean stop."""
    _wait(lambda: daemon.catches(signal.SIGHUP) and daemon.catches(sig))
    daemon.proc.send_signal(sig)
    return _assert_stopped_cleanly(daemon, sig, daemon.finish())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_as_soon_as_the_command_line_runs_stops_it_before_it_starts(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """A stop sent the moment the command line catches signals (it then imports the runtime for
    about a second) ends the daemon with exit 0 and `signal received` and `stopped` lines, and
    it never starts: no API, no source. It used to end with 143 and no line for SIGTERM."""
    with _daemon(tmp_path, 9) as daemon:
        names = _stopped_at_its_first_line(daemon, sig)
    assert "api listening" not in names and "oracled started" not in names


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_as_soon_as_the_demo_runs_stops_it_before_it_starts(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """`oracled demo` keeps a stop sent while it starts, as `oracled run` does: exit 0, the
    signal and `stopped` logged, the daemon never started. It used to give the signals back
    after parsing its arguments, and a SIGTERM in its first second or so ended it with 143
    and not one log line (found by sending SIGTERM 0.3, 0.8 and 1.3 s after start)."""
    with _daemon(tmp_path, 9, "demo") as daemon:
        names = _stopped_at_its_first_line(daemon, sig)
    assert "api listening" not in names and "oracled started" not in names


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_as_soon_as_the_margin_service_runs_stops_it_before_it_connects(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """`oracled margin` keeps a stop sent while it starts (it imports its runtime for a second
    or so), as the daemon does: exit 0, `signal received` and `stopped` logged, no connection
    tried. A SIGTERM in its first second or two used to end it with 143 and no line at all
    (found sending SIGTERM 0.2 to 2 s after start)."""
    accounts = tmp_path / "accounts.json"  # the test's path names it: _left_running finds it
    accounts.write_text(
        json.dumps(
            {
                "assets": {"USD": {}},
                "instruments": {
                    "BTC-PERP": {
                        "market": "BTC/USD",
                        "tiers": [{"initial": 0.02, "maintenance": 0.01}],
                    }
                },
                "accounts": [{"id": "a", "collateral": {"USD": 1_000}}],
            }
        )
    )
    argv = ["margin", "--accounts", str(accounts), "--url", "ws://127.0.0.1:9/v1/stream"]
    daemon = _Daemon(accounts, argv=[*argv, "--log-format", "json"])
    try:
        names = _stopped_at_its_first_line(daemon, sig)
    finally:
        stop(daemon.proc)
        if daemon.proc.stderr is not None:
            daemon.proc.stderr.close()
    assert "connect_failed" not in names


def test_a_sigterm_while_the_runtime_imports_stops_it_before_it_starts(tmp_path: Path) -> None:
    """SIGTERM after the config is read and logged, while the runtime is being imported: exit
    0, logged, never started (where it used to die with 143 and no line)."""
    with _daemon(tmp_path, 9) as daemon:
        daemon.read_until("config warning")
        daemon.proc.send_signal(signal.SIGTERM)
        names = _assert_stopped_cleanly(daemon, signal.SIGTERM, daemon.finish())
    assert "api listening" not in names and "oracled started" not in names


def test_a_sigterm_while_a_source_connects_stops_it_and_closes_everything(
    tmp_path: Path,
) -> None:
    """SIGTERM while the source's connection is open and unanswered (a loopback server that
    accepts and says nothing): exit 0, the source's connection closed, the API port closed."""
    accepted: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as server:

        def accept() -> None:
            conn, _ = server.accept()
            accepted.append(conn)

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        try:
            with _daemon(tmp_path, server.getsockname()[1]) as daemon:
                api = daemon.read_until("api listening")
                # Said once its start is whole: a SIGTERM before it is another test's case.
                daemon.read_until("oracled started")
                _wait(lambda: bool(accepted))
                daemon.proc.send_signal(signal.SIGTERM)
                names = _assert_stopped_cleanly(daemon, signal.SIGTERM, daemon.finish())
        except BaseException:
            for conn in accepted:  # not left for a later test's garbage collection to warn of
                conn.close()
            raise
    assert names.index("oracled started") < names.index("signal received")
    conn = accepted[0]
    conn.settimeout(10)
    with conn:
        while conn.recv(4096):  # the daemon's handshake request, then the end of the stream
            pass
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(api["port"])), timeout=5).close()  # type: ignore[call-overload]


def test_sigquit_dumps_every_thread_and_the_daemon_runs_on(tmp_path: Path) -> None:
    """SIGQUIT (`kill -QUIT`, or Ctrl-backslash) writes every thread's stack to stderr, the way
    to see where a blocked loop is stuck, and the daemon runs on; SIGTERM then stops it, exit 0.
    It used to end the process at once (exit -3): no stack, no `stopped`, the audit queue lost.
    """
    with _daemon(tmp_path, 9) as daemon:
        daemon.read_until("oracled started")
        daemon.proc.send_signal(signal.SIGQUIT)
        dump: list[str] = []
        while not any("oracled/cli.py" in line for line in dump):  # the main thread's stack
            line = daemon.next_line(30)
            assert line is not None, f"the daemon ended or went quiet: {dump}"
            if not line.startswith("{"):
                dump.append(line)
        assert any(line.startswith("Thread 0x") for line in dump)
        assert daemon.proc.poll() is None
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.finish()  # may hold the rest of the dump
    assert code == 0
    assert json.loads(daemon.lines[-1])["event"] == "stopped"


def test_a_sigterm_while_a_reload_cannot_read_its_file_still_ends_the_process(
    tmp_path: Path,
) -> None:
    """A SIGHUP whose reload hangs reading the config (its open held by the test's lease on the
    file here, as by a file server recalling its delegation; a file on a hung network mount
    alike), then SIGTERM: the process exits 0 after `stopped`. It used to log `stopped` and
    then wait for ever for the reading thread (the event loop's executor is joined on the way
    out, and a second SIGTERM is ignored), until SIGKILL. (The kernel breaks a lease itself
    after fs.lease-break-time, 45 s by default: past `finish`'s 30 s.)"""
    with _daemon(tmp_path, 9) as daemon:
        daemon.read_until("oracled started")
        with leased(daemon.config) as lease:
            daemon.proc.send_signal(signal.SIGHUP)
            _wait(lease.waited_on)  # the reload's open of the config waits on the lease
            daemon.proc.send_signal(signal.SIGTERM)
            code = daemon.finish()
        _assert_stopped_cleanly(daemon, signal.SIGTERM, code)
