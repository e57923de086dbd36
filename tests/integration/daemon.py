"""Start `oracled run` as a real subprocess on a free loopback port, pointed at simulators."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from children import stop
from ports import free_port

ADMIN_TOKEN = "integration-token-0123456789"


def sim_config(urls: Sequence[tuple[str, str]], *, min_sources: int = 3) -> str:
    """TOML for venues given as (ws_url, rest_url): USDT/USD, and BTC/USD and ETH/USD via USDT."""
    names = [f"v{i + 1}" for i in range(len(urls))]
    out = [
        "[oracle]\nround_interval_ms = 100\nresume_rounds = 5\njump_confirm_rounds = 5\n",
        '[api]\nadmin_token_env = "ORACLED_TEST_ADMIN_TOKEN"\nready_fraction = 1.0\n',
        '[log]\nformat = "json"\n',
    ]
    for name, (ws, rest) in zip(names, urls, strict=True):
        out.append(
            f'[sources.{name}]\ntype = "binance"\nws_url = "{ws}"\nrest_url = "{rest}"\n'
            "liveness_timeout_s = 1.0\nrest_poll_interval_s = 0.5\nreconnect_max_s = 1.0\n"
        )
    out.append('[[routes]]\nfrom = "USDT"\nto = "USD"\nvia = "USDT/USD"\n')
    for symbol, pair, exponent in (
        ("USDT/USD", "USDT/USD", -6),
        ("BTC/USD", "BTC/USDT", -2),
        ("ETH/USD", "ETH/USDT", -2),
    ):
        entries = ", ".join(f'{{ source = "{n}", pair = "{pair}" }}' for n in names)
        out.append(
            f'[[markets]]\nsymbol = "{symbol}"\nprice_exponent = {exponent}\n'
            f"min_sources = {min_sources}\nmax_age_ms = 1500\nmax_deviation = 0.01\n"
            f"circuit_breaker = 0.2\nsources = [{entries}]\n"
        )
    return "\n".join(out)


class Daemon:
    """A running `oracled run` process and an HTTP session to it."""

    def __init__(self, config_text: str, workdir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "oracled.toml"
        self.config.write_text(config_text)
        self.log_path = workdir / "oracled.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.argv = [sys.executable, "run"]  # [python, command]; tests may switch the command
        self.session: aiohttp.ClientSession | None = None

    async def start(self, *extra: str) -> None:
        env = dict(os.environ, ORACLED_TEST_ADMIN_TOKEN=ADMIN_TOKEN)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - starting, not waiting
            [
                self.argv[0],
                "-m",
                "oracled.cli",
                self.argv[1],
                "--config",
                str(self.config.resolve()),
                "--listen",
                f"127.0.0.1:{self.port}",
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            # Relative paths of the config (an audit trail, the kept manual pauses) land in the
            # test's own directory, never in the checkout where the next run would find them.
            cwd=self.config.parent,
        )
        self.session = aiohttp.ClientSession()
        try:
            await self.wait_for(self._healthy, 20.0, "healthz")
        except BaseException:  # a start that fails (or is cancelled) leaves nothing running
            await self.close()
            raise

    async def _healthy(self) -> bool:
        status, _ = await self.get("/healthz")
        return status == 200

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.get(self.base + path, **kwargs) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.post(self.base + path, **kwargs) as resp:
            return resp.status, await resp.json()

    async def wait_for(self, predicate: Any, limit_s: float, what: str) -> Any:
        """Poll an async or sync predicate until it returns a truthy value."""
        deadline = asyncio.get_running_loop().time() + limit_s
        last: Any = None
        while asyncio.get_running_loop().time() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                last = predicate()
                if asyncio.iscoroutine(last):
                    last = await last
            except aiohttp.ClientError:
                last = None
            if last:
                return last
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last={last!r}\n{self.logs()[-4000:]}")

    async def report(self, market: str) -> dict[str, Any]:
        status, body = await self.get(f"/v1/prices/{market.replace('/', '-')}")
        assert status == 200, body
        return dict(body)

    async def wait_status(
        self, market: str, statuses: set[str], limit_s: float = 15.0
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            status, body = await self.get(f"/v1/prices/{market.replace('/', '-')}")
            return body if status == 200 and body["status"] in statuses else None

        return dict(await self.wait_for(check, limit_s, f"{market} in {statuses}"))

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, event: str) -> list[dict[str, Any]]:
        """The daemon's JSON log records of one event, oldest first."""
        records = (json.loads(ln) for ln in self.logs().splitlines() if ln.startswith("{"))
        return [r for r in records if r.get("event") == event]

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            stop(self.proc)
        self._log.close()
