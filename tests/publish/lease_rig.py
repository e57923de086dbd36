"""Signing daemons as processes of their own (lease_daemon.py), for the signing lease's tests:
started with their clock set behind, killed, frozen, stopped, each with the signed frames a
subscriber read from its stream as soon as it could connect."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from children import stop
from publish_rig import free_port

from oracled.publish.signer import SigningKey
from oracled.sim import BinanceSim

HERE = Path(__file__).parent
KEY = SigningKey.from_hex("0x" + "44" * 32)
ROUND_MS = 100
WINDOW_MS = 1_000
SAFETY_S = 30.0

#: As root, file modes bind only a process without these capabilities: the daemon runs without.
_CAPS = "-dac_override,-dac_read_search"
_NO_OVERRIDE = (
    ["setpriv", f"--inh-caps={_CAPS}", f"--bounding-set={_CAPS}", "--"] if os.geteuid() == 0 else []
)


def remove_dir(path: Path) -> None:
    """Remove `path` and all in it while a daemon may be writing there: a lease write's
    temporary file can come and go between the listing and its removal."""
    for _ in range(10):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
    raise AssertionError(f"{path} could not be removed")


def key_file(directory: Path) -> Path:
    path = directory / "signing.key"
    path.write_text(KEY.hex() + "\n")
    path.chmod(0o600)
    return path


def lease_config(
    sim: BinanceSim,
    workdir: Path,
    lease: str,
    window_ms: int = WINDOW_MS,
    nats_url: str | None = None,
    audit: Path | None = None,
) -> Path:
    """One venue, rounds every ROUND_MS, signing with KEY and its lease at `lease` (relative:
    in `workdir`, the daemon's working directory), the audit trail off (the default) or kept
    at `audit`; with `nats_url`, every signed round to that server too."""
    lease_line = f'lease_file = "{lease}"\nlease_window_ms = {window_ms}\n'
    nats = "" if nats_url is None else f'[nats]\nenabled = true\nservers = ["{nats_url}"]\n'
    if audit is not None:
        nats += f'[audit]\nenabled = true\npath = "{audit}"\n'
    path = workdir / "oracled.toml"
    path.write_text(
        f"[oracle]\nround_interval_ms = {ROUND_MS}\nresume_rounds = 1\n"
        "max_clock_skew_ms = 10000\n"  # the venue's times are ahead of a clock set behind
        '[api]\nadmin_token_env = "ORACLED_UNSET_TOKEN_FOR_THIS_TEST"\n'
        '[log]\nformat = "json"\n'
        f'[signing]\nenabled = true\ndeployment = "test"\nkey_file = "{key_file(workdir)}"\n'
        f"{lease_line}{nats}"
        f'[sources.venue]\ntype = "binance"\nws_url = "{sim.ws_url}"\n'
        f'rest_url = "{sim.rest_url}"\n'
        '[[markets]]\nsymbol = "BTC/USDT"\nmin_sources = 1\n'
        'sources = [{ source = "venue", pair = "BTC/USDT" }]\n'
    )
    return path


class Daemon:
    """A daemon process (lease_daemon.py: `oracled run` whose clock reads `start` when it is made,
    else the system clock) and the signed frames it streamed to one subscriber that connected as
    soon as it could. `name` tells apart the logs of several processes run from one config."""

    def __init__(
        self,
        config: Path,
        start: int | None = None,
        *,
        no_override: bool = False,
        name: str | None = None,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = config.parent / f"oracled-{name or start or 'now'}.log"
        argv = [sys.executable, str(HERE / "lease_daemon.py"), str(config)]
        argv += [f"127.0.0.1:{self.port}", "now" if start is None else str(start)]
        self.argv = [*_NO_OVERRIDE, *argv] if no_override else argv
        self.cwd = config.parent
        self.signed: list[dict[str, Any]] = []
        self.floor_count = 0.0  # rounds it counted as under the floor, read before it stopped
        self.proc: subprocess.Popen[bytes] | None = None
        self.connected = False  # its stream answered: it is up, its signals handled
        self.sent: set[int] = set()  # the signals `signal` sent it
        self._reader: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Daemon]:
        async with aiohttp.ClientSession() as http:
            self.start(http)
            try:
                yield self
            finally:
                await self.close()

    def start(self, http: aiohttp.ClientSession) -> None:
        """Start the process, and read its signed frames through `http` until `close`."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT
            )
        self.http = http
        self._reader = asyncio.create_task(self._read_stream())

    async def close(self) -> None:
        """Stop reading, and end the process if it still runs (thawed first, if frozen)."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        assert self.proc is not None
        await asyncio.to_thread(stop, self.proc)

    async def _read_stream(self) -> None:
        """Every signed frame, from the first moment the API answers until the process ends."""
        while True:
            try:
                async with self.http.ws_connect(f"ws://127.0.0.1:{self.port}/v1/stream") as ws:
                    self.connected = True
                    await ws.send_json({"op": "subscribe", "signed": True})
                    async for msg in ws:
                        frame = json.loads(msg.data)
                        if frame["type"] == "signed":
                            self.signed.append(frame["data"])
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.02)

    async def until(self, what: str, check: Any) -> None:
        async with asyncio.timeout(SAFETY_S):
            while not await check():
                assert self.proc is not None
                assert self.proc.poll() is None, f"{what}: exited\n{self.logs()}"
                await asyncio.sleep(0.05)

    async def counter(self, name: str) -> float:
        """One sample of /metrics (0 while the API is not up yet)."""
        try:
            async with self.http.get(self.base + "/metrics") as resp:
                text = await resp.text()
        except aiohttp.ClientError:
            return 0.0
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: signal.Signals) -> None:
        """Send `signum` to a process still running (SIGSTOP freezes it, SIGCONT thaws it)."""
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, signum)
            self.sent.add(signum)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, event: str) -> list[dict[str, Any]]:
        lines = (json.loads(ln) for ln in self.logs().splitlines() if ln.startswith("{"))
        return [r for r in lines if r.get("event") == event]
