"""The runtime tests' smallest config: one Binance venue (a loopback simulator) quoting one
market, with the API on a free port; a daemon run for the length of a block; and a clock whose
wall time a test can step back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from oracled.service import Service


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
