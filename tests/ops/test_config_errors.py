"""A config the daemon refuses stops every shipped deployment instead of restarting it forever.

`oracled run` refuses an invalid config with exit code 2 (`EXIT_CONFIG`) and a line per problem
naming its key, before it starts anything; any other failure exits 1. systemd does not restart
exit 2 (`RestartPreventExitStatus`) and restarts the rest. Docker and Kubernetes cannot spare one
exit code, so compose runs `oracled check-config --as-daemon` as a one-shot service the daemon
waits for, and the pods run it as an init container (tests/ops/test_pod_signing_keys.py): it
refuses whatever the daemon would refuse at start, the secrets and the pause file included.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from catalogue import ROOT
from children import stop, stop_async
from daemon import ADMIN_TOKEN, Daemon, free_port, sim_config

from oracled.cli import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, main
from oracled.sim import BinanceSim

DEPLOY = ROOT / "deploy"
CLI = [sys.executable, "-m", "oracled.cli"]
TOKEN_ENV = "ORACLED_TEST_ADMIN_TOKEN"


def _good() -> str:
    """A valid config without warnings whose venues are unreachable (nothing here needs a
    quote): three hosts, so that no venue counts as another's duplicate."""
    port = free_port()
    hosts = [f"127.0.0.{i}:{port}" for i in (1, 2, 3)]
    return sim_config([(f"ws://{host}/ws", f"http://{host}") for host in hosts])


def _bad_configs(root: Path) -> dict[str, tuple[Path, str, dict[str, str]]]:
    """Kinds of config `run` must refuse: name -> (config path, the start of the line that
    names the problem, extra environment). Paths inside are absolute: `check-config` below
    runs in this process, whose working directory is not the config's."""
    good = _good()
    key = root / "signing.key"
    key.write_text("0x" + "11" * 32)
    key.chmod(0o644)
    pauses = root / "pauses.json"
    pauses.write_text('{"format": "oracled-manual-pauses", "version": 1, "paused": ')
    signing = '\n[signing]\nenabled = true\ndeployment = "test"\n'
    own_key = root / "own.key"  # a usable key: what is wrong is its lease
    own_key.write_text("0x" + "22" * 32)
    own_key.chmod(0o600)
    leased = good + signing + f'key_file = "{own_key}"\n'
    lease = root / "lease.json"
    lease.write_text('{"format": "oracled-signing-lease", "version": 1, "leases": ')
    gone = root / "gone" / "lease.json"
    fresh = f'lease_file = "{root / "signing-lease.json"}"\n'  # required: none there yet
    trail = root / "audit.sqlite3"
    trail.mkdir()  # a directory where the trail's database file goes
    texts = {
        "toml": ("[oracle\n", "{path}: not valid TOML", {}),
        "unknown key": (
            good.replace("[oracle]\n", "[oracle]\nround_interval = 100\n", 1),
            "oracle.round_interval: is not a known key",
            {},
        ),
        "type": (
            good.replace("round_interval_ms = 100", 'round_interval_ms = "100"'),
            "oracle.round_interval_ms: must be an integer",
            {},
        ),
        "range": (
            good.replace("round_interval_ms = 100", "round_interval_ms = 1"),
            "oracle.round_interval_ms: must be >= 10",
            {},
        ),
        "short admin token": (
            good,
            f"api.admin_token_env: ${TOKEN_ENV} must hold at least 16 characters",
            {TOKEN_ENV: "short"},
        ),
        "key variable unset": (
            good + signing + 'key_env = "ORACLED_TEST_NO_SUCH_KEY"\n' + fresh,
            "signing.key_env: $ORACLED_TEST_NO_SUCH_KEY is not set",
            {},
        ),
        "key file open to others": (
            good + signing + f'key_file = "{key}"\n' + fresh,
            f"signing.key_file: {key} is accessible by group or others (mode 644)",
            {},
        ),
        "torn lease file": (
            leased + f'lease_file = "{lease}"\n',
            f"signing.lease_file: {lease} (signer ",
            {},
        ),
        "lease directory missing": (
            leased + f'lease_file = "{gone}"\n',
            f"signing.lease_file: {gone} (signer ",
            {},
        ),
        "torn pause file": (
            good.replace("[oracle]\n", f'[oracle]\nmanual_pauses_file = "{pauses}"\n', 1),
            f"oracle.manual_pauses_file: {pauses} is not a pause file",
            {},
        ),
        "audit path a directory": (
            good + f'\n[audit]\nenabled = true\npath = "{trail}"\n',
            f"audit.path: {trail} is a directory, not a file",
            {},
        ),
    }
    cases = {"missing file": (root / "missing.toml", "{path}: cannot read", {})}
    for i, (name, (text, line, env)) in enumerate(texts.items()):
        path = root / f"bad-{i}.toml"
        path.write_text(text)
        cases[name] = (path, line, env)
    return {name: (path, line.format(path=path), env) for name, (path, line, env) in cases.items()}


def _unit_restart_prevented() -> set[int]:
    """The exit codes the systemd unit does not restart (RestartPreventExitStatus=)."""
    prevented: set[int] = set()
    for line in (DEPLOY / "systemd" / "oracled.service").read_text().splitlines():
        if line.startswith("RestartPreventExitStatus="):
            prevented.update(int(code) for code in line.split("=", 1)[1].split())
    return prevented


def test_run_refuses_every_kind_of_invalid_config_with_exit_2_and_the_key_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Twelve kinds of invalid config (unreadable, not TOML, an unknown key, a wrong type, a
    value out of range, an admin token too short, a signing key variable unset, a key file
    others can read, a torn signing lease file, a lease file's directory missing, a torn pause
    file, an audit path that is a directory): `oracled run`, a real process each, exits 2, the
    code the systemd unit never restarts, with a line that names the key, and starts nothing
    (no listener). `check-config --as-daemon` refuses each with the same line, while plain
    `check-config` passes the six that only the start-up reads (the key variable, the key file,
    the lease file twice, the pause file, the audit path): it was what compose and the pods
    could have run before the daemon, and it let them through to a daemon that exits 2 and is
    restarted forever. The lease cases were passed by `--as-daemon` too: the signing lease
    (added after it) was not read, so a torn lease went on to that restart loop. An audit path
    that is a directory was run: the daemon priced with no audit trail at all, logging "unable
    to open database file" every 5 s for its whole life."""
    cases = _bad_configs(tmp_path)
    procs = {
        name: subprocess.Popen(  # all at once: each is an interpreter start, mostly waiting
            [*CLI, "run", "--config", str(path), "--listen", f"127.0.0.1:{free_port()}"],
            cwd=tmp_path,
            env={**_environment(), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (path, _, env) in cases.items()
    }
    prevented = _unit_restart_prevented()
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            _, line, _ = cases[name]
            assert proc.returncode == EXIT_CONFIG, (name, err[-2000:])
            assert proc.returncode in prevented
            assert err.startswith("oracled: refusing to start: 1 config problem(s)\n"), (name, err)
            assert err.splitlines()[1].startswith(f"  {line}"), (name, err)
            assert "api listening" not in err + out, name
    finally:  # a daemon that started after all would run on past the test
        for proc in procs.values():
            stop(proc)

    only_at_start = {
        "key variable unset",
        "key file open to others",
        "torn lease file",
        "lease directory missing",
        "torn pause file",
        "audit path a directory",
    }
    for name, (path, line, env) in cases.items():
        if env:  # the environment of this process is left alone: run's refusal covers it
            continue
        assert main(["check-config", "--as-daemon", str(path)]) == EXIT_CONFIG, name
        problems = capsys.readouterr().err.splitlines()[1:]
        assert any(problem.startswith(f"  {line}") for problem in problems), (name, problems)
        plain = main(["check-config", str(path)])
        capsys.readouterr()
        assert plain == (EXIT_OK if name in only_at_start else EXIT_CONFIG), name


def test_the_check_as_daemon_reads_the_daemons_files_and_holds_or_writes_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check-config --as-daemon` runs just before the daemon on the daemon's own files (compose
    and the pods mount them read-only; on `docker compose up` of a changed config the daemon it
    replaces may still run and hold their locks). It reads the key, the signing lease and the
    pause file, and takes no lock and writes nothing: the directory is the same after it, byte
    for byte and by modification time, with no `.lock` file that the daemon started right
    after could find held; and the same check passes while another process holds the lease's
    and the pause file's locks (the daemon's start refuses a lock held, not the check)."""
    from oracled.lockfile import lock_beside
    from oracled.publish.signer import SigningKey

    state = tmp_path / "state"
    state.mkdir()
    key = tmp_path / "own.key"
    key.write_text("0x" + "22" * 32)
    key.chmod(0o600)
    address = SigningKey.from_hex("0x" + "22" * 32).address
    lease = state / "lease.json"
    leases = {
        "format": "oracled-signing-lease",
        "version": 1,
        "leases": {address: 1_700_000_000_000},
    }
    lease.write_text(json.dumps(leases) + "\n")
    pauses = state / "pauses.json"
    pauses.write_text('{"format": "oracled-manual-pauses", "version": 1, "paused": {}}')
    config = tmp_path / "oracled.toml"
    config.write_text(
        _good().replace("[oracle]\n", f'[oracle]\nmanual_pauses_file = "{pauses}"\n', 1)
        + f'\n[signing]\nenabled = true\ndeployment = "test"\nkey_file = "{key}"\n'
        + f'lease_file = "{lease}"\n'
    )

    def files() -> dict[str, tuple[bytes, int]]:
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in state.iterdir()}

    before = files()
    assert main(["check-config", "--as-daemon", str(config)]) == EXIT_OK, capsys.readouterr()
    assert files() == before
    held = [lock_beside(lease), lock_beside(pauses)]  # the daemon still running
    try:
        assert main(["check-config", "--as-daemon", str(config)]) == EXIT_OK
    finally:
        for fd in held:
            os.close(fd)
    capsys.readouterr()


def _environment() -> dict[str, str]:
    """This process's environment without the admin token variable the configs name."""
    return {k: v for k, v in os.environ.items() if k != TOKEN_ENV}


def test_a_failure_that_is_no_config_error_exits_1_and_is_restarted(tmp_path: Path) -> None:
    """What a restart can cure must not look like a config error: a listen port another process
    holds (it may be released) fails the start with exit 1, logged as `fatal`, which the unit
    restarts (Restart=on-failure, 1 not in RestartPreventExitStatus), as do Docker's and
    Kubernetes' restart policies. The line names the setting and the address, as a config problem
    would (a bare `[Errno -2] Name or service not known` said neither), and says the OS's
    reason once, in words (it read `[Errno 98] --listen: ...`)."""
    config = tmp_path / "oracled.toml"
    config.write_text(_good())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*CLI, "run", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
            cwd=tmp_path,
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == EXIT_FAILURE, done.stderr[-2000:]
    assert "address already in use" in done.stderr and '"event":"fatal"' in done.stderr
    # which setting asked for it, as a config problem would say: here the command line's
    fatal = [json.loads(line) for line in done.stderr.splitlines() if '"event":"fatal"' in line]
    said = f"--listen: cannot listen on 127.0.0.1:{port} (address already in use)"
    assert [line["error"] for line in fatal] == [said]
    assert EXIT_FAILURE not in _unit_restart_prevented()
    unit = (DEPLOY / "systemd" / "oracled.service").read_text().splitlines()
    assert "Restart=on-failure" in unit


def _mounted(service: dict[str, object], target: str) -> tuple[str, bool]:
    """The host side of a compose service's mount of `target`, and whether it is read-only."""
    for volume in service["volumes"]:  # type: ignore[attr-defined]
        source, inside, *mode = str(volume).split(":")
        if inside == target:
            return source, mode == ["ro"]
    raise AssertionError(f"nothing mounted at {target}")


def test_compose_starts_the_daemon_only_after_its_config_passed_the_check(
    tmp_path: Path,
) -> None:
    """`restart: unless-stopped` restarted a daemon that exits 2 on its config forever (Docker's
    policies cannot spare one exit code). The stack now runs `oracled check-config --as-daemon`
    first, once, in the daemon's image with the daemon's environment and mounts (read-only), and
    the daemon starts only once it completed successfully; an invalid config stops `docker
    compose up` there, every problem in that service's log. Run here on the files compose mounts:
    the shipped config passes; a torn pause file on the data volume, which the daemon would
    refuse, is refused, with exit 2."""
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    daemon, check = services["oracled"], services["config-check"]
    assert daemon["depends_on"]["config-check"] == {"condition": "service_completed_successfully"}
    assert check["image"] == daemon["image"] and "build" in daemon
    assert "entrypoint" not in check, "the image's entrypoint: tini, then oracled"
    config = daemon["command"][daemon["command"].index("--config") + 1]
    assert check["command"] == ["check-config", "--as-daemon", config]
    assert check["restart"] == "no" and check["healthcheck"] == {"disable": True}
    for key in ("env_file", "read_only", "tmpfs", "cap_drop", "security_opt"):
        assert check[key] == daemon[key], key
    assert check.get("environment", {}).items() <= daemon.get("environment", {}).items()
    data = "/var/lib/oracled"  # the image's working directory: the pause file is there
    for target in (config, data):
        assert _mounted(check, target) == (_mounted(daemon, target)[0], True), target
    assert len(check["volumes"]) == 2

    shipped = (DEPLOY / _mounted(check, config)[0]).resolve()
    argv = [*CLI, *check["command"][:-1], str(shipped)]
    passed = subprocess.run(  # in an empty data volume, as on the first `up`
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert passed.returncode == EXIT_OK, passed.stderr
    (tmp_path / "oracled-manual-pauses.json").write_text("{")
    refused = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode == EXIT_CONFIG, refused.stderr
    assert "  oracle.manual_pauses_file: oracled-manual-pauses.json is not a pause file" in (
        refused.stderr
    )


async def test_a_reload_of_a_broken_file_keeps_the_daemon_pricing_and_a_restart_refuses_it(
    venues: list[BinanceSim], tmp_path: Path
) -> None:
    """`systemctl reload` (SIGHUP) of a file cut short mid-edit, no longer TOML: the daemon logs
    the refusal, keeps its running config (the gauge says 0) and goes on publishing rounds, and
    its health stays 200, so no deployment restarts it. The restart that would come next (a
    deploy, a crash) refuses the same file with exit 2, which the unit does not restart, and
    the deployments' check refuses it first."""
    daemon = Daemon(sim_config([(s.ws_url, s.rest_url) for s in venues]), tmp_path)
    try:
        await daemon.start()
        await daemon.wait_status("BTC/USD", {"active", "degraded"}, limit_s=20)
        text = daemon.config.read_text()
        daemon.config.write_text(text[: text.index("[[markets]]") + len("[[mark")])
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        (refused,) = await daemon.wait_for(
            lambda: daemon.events("config reload refused"), 10, "the refusal logged"
        )
        assert "not valid TOML" in str(refused["problems"]), refused
        first = (await daemon.report("BTC/USD"))["round"]

        async def priced_on() -> bool:
            report = await daemon.report("BTC/USD")
            return report["round"] > first + 5 and report["status"] in {"active", "degraded"}

        await daemon.wait_for(priced_on, 10, "rounds published after the refusal")
        assert (await daemon.get("/healthz"))[0] == 200
        status, metrics = await daemon.get("/metrics")
        assert status == 200 and "oracled_config_last_reload_successful 0.0" in metrics
        status, markets = await daemon.get("/v1/markets")
        assert [m["symbol"] for m in markets["markets"]] == ["USDT/USD", "BTC/USD", "ETH/USD"]
        assert daemon.terminate() == EXIT_OK
    finally:
        await daemon.close()

    restarted = await asyncio.create_subprocess_exec(
        *CLI,
        "run",
        "--config",
        str(daemon.config),
        "--listen",
        f"127.0.0.1:{free_port()}",
        cwd=tmp_path,
        env={**os.environ, TOKEN_ENV: ADMIN_TOKEN},
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(restarted.communicate(), 120)
    finally:
        await stop_async(restarted)
    assert restarted.returncode == EXIT_CONFIG in _unit_restart_prevented(), err.decode()
    assert f"  {daemon.config}: not valid TOML" in err.decode()
    assert main(["check-config", "--as-daemon", str(daemon.config)]) == EXIT_CONFIG
