"""The runtime tests' smallest config: one Binance venue (a loopback simulator) quoting one
market, with the API on a free port (also with signing and NATS: `stalling_config`,
`signing_table`, `MovableLease`); a daemon run for the length of a block (`service_running`;
with an HTTP session on its API: `serving_api`); a clock whose wall time a test can step
back; and its streams read as a subscriber reads them (`reading`, `stalls`, `first_event`),
its bus as a NATS subscriber does (`bus_messages`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
from nats.aio.client import Client as NatsClient

from oracled.config import Config, parse_config
from oracled.publish.signer import SigningKey
from oracled.service import Service
from oracled.sim import BinanceSim


class SteppedClock:
    """The real clock, whose wall time the test can step back (monotonic time never is)."""

    def __init__(self) -> None:
        self.back_ms = 0

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 - self.back_ms

    def monotonic(self) -> float:
        return time.monotonic()


def one_venue_toml(ws: str, rest: str, interval_ms: int = 50, audit: Path | None = None) -> str:
    """Source `good` at `ws`/`rest` quoting BTC/USDT alone; an audit trail at `audit` if given."""
    text = f"""
[oracle]
round_interval_ms = {interval_ms}

[api]
listen = "127.0.0.1:0"

[sources.good]
type = "binance"
ws_url = "{ws}"
rest_url = "{rest}"

[[markets]]
symbol = "BTC/USDT"
min_sources = 1
sources = [{{ source = "good", pair = "BTC/USDT" }}]
"""
    if audit is not None:
        text += f'\n[audit]\nenabled = true\npath = "{audit}"\nreserve_bytes = 65_536\n'
    return text


def stalling_config(sim: BinanceSim, **tables: Any) -> Config:
    """Source `v` (`sim`) quoting BTC/USDT alone, rounds every 50 ms that resume after one round
    (a stall's end is quick to see), the API on a free port without an admin token; `tables`:
    more tables (`signing`, `nats`)."""
    return parse_config(
        {
            "oracle": {"round_interval_ms": 50, "resume_rounds": 1},
            "api": {"listen": "127.0.0.1:0", "admin_token_env": None},
            **tables,
            "sources": {"v": {"type": "binance", "ws_url": sim.ws_url, "rest_url": sim.rest_url}},
            "markets": [
                {
                    "symbol": "BTC/USDT",
                    "min_sources": 1,
                    "sources": [{"source": "v", "pair": "BTC/USDT"}],
                }
            ],
        }
    )


def signing_table(
    tmp_path: Path, lease_file: Path, **extra: Any
) -> tuple[SigningKey, dict[str, Any]]:
    """A new key in a file of `tmp_path` (mode 0400, as the daemon requires) and the `signing`
    table that signs with it for deployment `test`, its lease at `lease_file`; `extra`: more
    keys of the table."""
    key = SigningKey.generate()
    key_file = tmp_path / "signing.key"
    key_file.write_text(key.hex())
    key_file.chmod(0o400)
    table = {
        "enabled": True,
        "deployment": "test",
        "key_file": str(key_file),
        "lease_file": str(lease_file),
        **extra,
    }
    return key, table


class MovableLease:
    """A `signing` table (`signing_table`, a 1 s lease window) whose lease lives in a directory
    the test can move away: every lease write then fails, and the rounds past the lease go
    unsigned (`lease`), the round loop running, until it is brought back."""

    def __init__(self, tmp_path: Path) -> None:
        self.state, self.gone = tmp_path / "state", tmp_path / "state-gone"
        self.state.mkdir()
        lease_file = self.state / "signing-lease.json"
        self.key, self.signing = signing_table(tmp_path, lease_file, lease_window_ms=1_000)

    def move_away(self) -> None:
        self.state.rename(self.gone)

    def bring_back(self) -> None:
        self.gone.rename(self.state)


@contextlib.asynccontextmanager
async def serving_api(
    service: Service, safety_s: float
) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """`service` running and started, and an HTTP session with its API's base URL, for a block
    bounded by `safety_s` (a guard against hangs only)."""
    async with (
        service_running(service),
        aiohttp.ClientSession() as http,
        asyncio.timeout(safety_s),
    ):
        await service.started.wait()
        yield http, f"http://127.0.0.1:{service.bound_port}"


@contextlib.asynccontextmanager
async def service_running(service: Service) -> AsyncIterator[asyncio.Task[None]]:
    """`service` running as a task for the block (the task); on leaving, however the block
    ends, it is stopped as a signal stops it and awaited."""
    task = asyncio.create_task(service.run())
    try:
        yield task
    finally:
        service.stop()
        await task


@contextlib.asynccontextmanager
async def reading(
    http: aiohttp.ClientSession,
    base: str,
    request: dict[str, Any],
    raw: list[bytes] | None = None,
) -> AsyncIterator[list[dict[str, Any]]]:
    """A `WS /v1/stream` connection that sent `request`: every frame it gets, decoded, while
    the block runs (and as sent, into `raw` if given)."""
    frames: list[dict[str, Any]] = []
    async with http.ws_connect(base + "/v1/stream") as ws:
        await ws.send_json(request)

        async def read() -> None:
            async for msg in ws:
                frames.append(json.loads(msg.data))
                if raw is not None:
                    data = msg.data
                    raw.append(data.encode() if isinstance(data, str) else data)

        reader = asyncio.create_task(read(), name="test-stream-reader")
        try:
            yield frames
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


def stalls(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `stalled` error frames among `frames`."""
    return [f for f in frames if f.get("code") == "stalled"]


async def first_event(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """The first `data:` event of an event stream."""
    async with http.get(url) as resp:
        assert resp.status == 200
        while True:
            line = (await resp.content.readline()).decode()
            assert line, "the event stream ended"
            if line.startswith("data: "):
                data: dict[str, Any] = json.loads(line[6:])
                return data


async def bus_messages(url: str, subject: str) -> tuple[NatsClient, list[bytes]]:
    """A plain NATS connection to `url` (no reconnects) and the list every message on `subject`
    is appended to, in arrival order, subscribed and flushed when this returns; the caller
    closes the connection."""
    bus = await nats.connect(url, allow_reconnect=False)
    got: list[bytes] = []

    async def keep(msg: Any) -> None:
        got.append(msg.data)

    await bus.subscribe(subject, cb=keep)
    await bus.flush()
    return bus, got
