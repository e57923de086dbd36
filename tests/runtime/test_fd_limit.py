"""An open-file limit too low for `api.max_connections` is said at start, not found in a flood.

Found running the daemon under `ulimit -n 256` with the default cap (1024) and opening 300
client connections: 76 were accepted and closed unanswered by the event loop, with no 503, no
count in `oracled_api_connections_closed_total` and no log line; the cap never came into play.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from one_venue import service_running
from structlog.testing import capture_logs

from oracled.api.limits import FD_RESERVE
from oracled.config import load_config
from oracled.service import Service
from oracled.sim import BinanceSim

LOW = 256  # well under the default max_connections (1024)


@contextmanager
def _open_file_limit(soft: int) -> Iterator[None]:
    """This process's soft RLIMIT_NOFILE set to `soft` for the block (the daemon runs here)."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


def _toml(ws: str, rest: str, max_connections: int) -> str:
    return (
        "[oracle]\nround_interval_ms = 50\n"
        f'[api]\nlisten = "127.0.0.1:0"\nmax_connections = {max_connections}\n'
        f'[sources.good]\ntype = "binance"\nws_url = "{ws}"\nrest_url = "{rest}"\n'
        '[[markets]]\nsymbol = "BTC/USDT"\nmin_sources = 1\n'
        'sources = [{ source = "good", pair = "BTC/USDT" }]\n'
    )


async def _start_and_stop(path: Path) -> list[dict[str, object]]:
    """Run the daemon from `path` until it has started; the events it logged."""
    service = Service(load_config(path), config_path=path)
    with capture_logs() as logs:
        async with service_running(service):
            async with asyncio.timeout(10):
                await service.started.wait()
    return logs


async def test_a_limit_below_max_connections_is_warned_at_start(tmp_path: Path) -> None:
    """Under a soft open-file limit of 256 with max_connections = 1024, start-up logs
    `open-file limit below api.max_connections` with the limit, the cap and the descriptors
    kept for the rest; a cap that fits under the limit with that reserve logs nothing of it."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        with _open_file_limit(LOW):
            path.write_text(_toml(sim.ws_url, sim.rest_url, 1024))
            short = await _start_and_stop(path)
            path.write_text(_toml(sim.ws_url, sim.rest_url, LOW - FD_RESERVE))
            fits = await _start_and_stop(path)
    warned = [e for e in short if e["event"] == "open-file limit below api.max_connections"]
    assert len(warned) == 1, short
    assert warned[0]["limit"] == LOW
    assert warned[0]["max_connections"] == 1024
    assert warned[0]["reserve"] == FD_RESERVE
    assert warned[0]["log_level"] == "warning"
    assert [e for e in fits if e["event"].startswith("open-file limit")] == []


async def test_a_reload_that_raises_max_connections_past_the_limit_is_warned(
    tmp_path: Path,
) -> None:
    """max_connections applies on reload, so the check runs there too: a reload from a cap that
    fits to one past the limit logs the warning after `config reloaded`."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        with _open_file_limit(LOW):
            path.write_text(_toml(sim.ws_url, sim.rest_url, LOW - FD_RESERVE))
            service = Service(load_config(path), config_path=path)
            async with service_running(service):
                async with asyncio.timeout(10):
                    await service.started.wait()
                path.write_text(_toml(sim.ws_url, sim.rest_url, 1024))
                with capture_logs() as logs:
                    await service.reload("test")
    events = [e["event"] for e in logs]
    assert "config reloaded" in events
    assert "open-file limit below api.max_connections" in events
