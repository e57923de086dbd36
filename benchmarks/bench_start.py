"""How long oracled takes to start: its imports, `check-config`, and `run` to its first round.

A daemon restarted after a crash or `kill -9` prices nothing until it has imported its code and
run a round, and the test suite starts it as a subprocess over a hundred times. Each run of this
benchmark times, in fresh interpreters:

- `import`: `python -c "import oracled.service"` (wall and CPU time of the whole process);
- `check-config`: `oracled check-config config/default.toml`;
- `plain`: `oracled run` of the shipped config on its simulators (the audit trail on, the
  on-chain sources off for want of an RPC URL) from its start to its first round (`/readyz`
  names a round) and to ready (`/readyz` answers 200);
- `signed`: the same with signing, the signing lease, the NATS sink (a real nats-server) and the
  pauses file on, the configuration `bench_stop.py` stops.

The cases of one run are timed one after another, and runs repeat, so that a machine's load
falls on every case alike. CPU time (user + system of the child) moves less with other work
than wall time does.

    python benchmarks/bench_start.py --runs 5
    python benchmarks/bench_start.py --runs 7 --cases import,check-config --json out.json

See benchmarks/README.md for the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w
from bench_stop import daemon_config, free_port, nats_binary, stop_venues

from oracled.config import load_config
from oracled.sim.venues import simulate

ROOT = Path(__file__).resolve().parents[1]
CASES = ("import", "check-config", "plain", "signed")
POLL_S = 0.02


def child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_command(args: list[str], cwd: Path) -> dict[str, float]:
    """Wall and CPU seconds of one command run to its end (exit 0 expected). Run outside the
    repository: `-c` and `-m` put the working directory ahead of PYTHONPATH, which would hide
    another tree given in it."""
    cpu = child_cpu_s()
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, check=False, cwd=cwd)
    took = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{args} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return {"wall_s": round(took, 3), "cpu_s": round(child_cpu_s() - cpu, 3)}


async def first_round(config: Path, work: Path, timeout_s: float) -> dict[str, float | None]:
    """Start `oracled run`; seconds to its first answer, its first round and ready; then stop."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/readyz"
    log = work / f"oracled-{time.monotonic_ns()}.log"
    cmd = [sys.executable, "-m", "oracled.cli", "run", "--config", str(config)]
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - started, not waited for
            [*cmd, "--listen", f"127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=work,
        )
    found: dict[str, float | None] = {"answer_s": None, "first_round_s": None, "ready_s": None}
    try:
        async with aiohttp.ClientSession() as session:
            while found["ready_s"] is None and time.monotonic() - started < timeout_s:
                if proc.poll() is not None:
                    raise SystemExit(f"the daemon exited at start ({proc.returncode}); see {log}")
                try:
                    async with session.get(base) as resp:
                        body = await resp.json()
                        now = round(time.monotonic() - started, 3)
                        found["answer_s"] = found["answer_s"] or now
                        if body.get("round") is not None:
                            found["first_round_s"] = found["first_round_s"] or now
                        if resp.status == 200:
                            found["ready_s"] = now
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(POLL_S)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if found["ready_s"] is None:
        raise SystemExit(f"the daemon was not ready within {timeout_s} s; see {log}")
    return found


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    cfg = load_config(ROOT / "config" / "default.toml", env={})
    sim_cfg, venues = await simulate(cfg, rate_hz=args.rate)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        work = Path(tmp)
        nats_port = free_port()
        nats = subprocess.Popen(  # noqa: ASYNC220 - started, not waited for
            [nats_binary(), "-a", "127.0.0.1", "-p", str(nats_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            signed = work / "signed.toml"
            signed.write_text(daemon_config(sim_cfg, work, f"nats://127.0.0.1:{nats_port}"))
            plain = work / "plain.toml"
            plain.write_text(plain_config(signed))
            for run in range(args.runs):
                for case in args.cases:
                    result: dict[str, Any] = {"run": run, "case": case}
                    if case == "import":
                        cmd = [sys.executable, "-c", "import oracled.service"]
                        result |= timed_command(cmd, work)
                    elif case == "check-config":
                        default = str(ROOT / "config" / "default.toml")
                        cmd = [sys.executable, "-m", "oracled.cli", "check-config", default]
                        result |= timed_command(cmd, work)
                    else:
                        config = plain if case == "plain" else signed
                        result |= await first_round(config, work, 90.0)
                    print(json.dumps(result), flush=True)
                    results.append(result)
        finally:
            nats.terminate()
            nats.wait()
            await stop_venues(venues)
    return results


def plain_config(signed: Path) -> str:
    """The signed config without signing, the NATS sink and the pauses file."""
    data = tomllib.loads(signed.read_text())
    data.pop("signing", None)
    data["nats"] = {"enabled": False}
    data["oracle"].pop("manual_pauses_file", None)
    return tomli_w.dumps(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions of every case")
    parser.add_argument("--rate", type=float, default=4.0, help="simulator updates a second")
    parser.add_argument(
        "--cases",
        type=lambda text: text.split(","),
        default=list(CASES),
        help=f"comma-separated, of {', '.join(CASES)}",
    )
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    os.environ.pop("ORACLED_ETH_RPC_URLS", None)  # the on-chain sources stay off
    results = asyncio.run(main_async(args))
    for case in args.cases:
        runs = [r for r in results if r["case"] == case]
        keys = [k for k in runs[0] if k not in ("run", "case")]
        medians = {
            k: round(statistics.median(r[k] for r in runs if r[k] is not None), 3) for k in keys
        }
        print(f"{case}: medians of {len(runs)} runs {medians}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
