"""A real Prometheus server on loopback, started from the distribution's package for a test."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
from children import stop
from daemon import free_port


class Prometheus:
    """`prometheus` scraping one target every second, with the given rule files loaded."""

    def __init__(self, workdir: Path, target: str, rule_files: list[Path]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.config = workdir / "prometheus.yml"
        rules = "".join(f"  - {path}\n" for path in rule_files)
        self.config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n{rules}"
            "scrape_configs:\n"
            "  - job_name: oracled\n"
            "    scrape_interval: 1s\n"
            "    scrape_timeout: 900ms\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        exe = shutil.which("prometheus")
        assert exe, "prometheus is missing: run scripts/ops-setup.sh (make install-test does)"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - starting, not waiting
            [
                exe,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.session = aiohttp.ClientSession()
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.logs()}"
            try:
                async with self.session.get(self.base + "/-/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"prometheus not ready in 20 s:\n{self.logs()}")

    async def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET an HTTP API path; the decoded body, whatever its status (errors are data too)."""
        assert self.session is not None
        async with self.session.get(self.base + path, params=params) as resp:
            body: dict[str, Any] = await resp.json()
            return body

    async def query(self, expr: str) -> dict[str, Any]:
        return await self.api("/api/v1/query", query=expr)

    async def wait_for(self, expr: str, limit_s: float) -> list[Any]:
        """Poll an instant query until it returns at least one series."""
        deadline = time.monotonic() + limit_s
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = await self.query(expr)
            if body.get("status") == "success" and body["data"]["result"]:
                return list(body["data"]["result"])
            await asyncio.sleep(0.25)
        raise AssertionError(f"no series for {expr} in {limit_s} s; last answer {body}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            stop(self.proc, term_s=10)
            self._log.close()
