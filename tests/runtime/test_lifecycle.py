"""The runtime's stop against the admin API's reload: nothing a reload starts outlives `run()`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
from file_lease import Lease
from inert_source import InertSource
from one_venue import one_venue_toml, service_running
from pydantic import SecretStr
from structlog.testing import capture_logs

from oracled.config import load_config
from oracled.core import RoundResult
from oracled.errors import ServiceStopping
from oracled.service import Service, run_service
from oracled.sim import BinanceSim
from oracled.sources import Source

TOKEN = "lifecycle-token-0123456789"


def _service(path: Path) -> Service:
    cfg = load_config(path).model_copy(update={"admin_token": SecretStr(TOKEN)})
    return Service(cfg, config_path=path)


async def _waits_on(lease: Lease) -> None:
    """Return once an open of the leased file (the reload's `read_config`) waits on `lease`."""
    async with asyncio.timeout(10):
        while not lease.waited_on():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def _left_behind() -> list[str]:
    names = [t.get_name() for t in asyncio.all_tasks()]
    return [n for n in names if n == "reload" or n.startswith(("source:", "round-loop"))]


async def test_an_admin_reload_that_stop_overtakes_is_refused_and_starts_nothing(
    tmp_path: Path,
) -> None:
    """`POST /v1/admin/reload` racing a stop: the reload was reading its file when the stop
    began. It is answered 503 `stopping` and applies nothing; it used to apply the new file
    after `shutting down` and restart a changed source on the closing session, a task that
    outlived `run()` (the SIGHUP path was guarded, the admin one was not)."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url))
        service = _service(path)
        task = asyncio.create_task(service.run())
        await service.started.wait()
        changed = one_venue_toml(sim.ws_url + "?changed", sim.rest_url)  # a source restart
        path.write_text(changed)
        url = f"http://127.0.0.1:{service.bound_port}/v1/admin/reload"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as http:
            lease = Lease(path)  # the reload's open of the file waits until it is released
            try:
                post = asyncio.create_task(http.post(url, headers=auth))
                await _waits_on(lease)
                with capture_logs() as logs:
                    service.stop()
                    async with asyncio.timeout(10):
                        while "shutting down" not in [e["event"] for e in logs]:  # noqa: ASYNC110
                            await asyncio.sleep(0.01)
                    lease.release()
                    async with asyncio.timeout(10):
                        resp = await post
                        body = await resp.json()
                        await task
            finally:
                lease.release()
            left = _left_behind()
    events = [e["event"] for e in logs]
    assert (resp.status, body["error"]["code"]) == (503, "stopping")
    assert left == []
    assert "config reloaded" not in events
    assert events[0] == "shutting down" and events[-1] == "stopped"
    assert service.cfg.sources["good"].ws_url == sim.ws_url


async def test_a_reload_asked_once_stopping_is_refused(tmp_path: Path) -> None:
    """A reload asked for after the stop began (the admin endpoint's request in the last
    milliseconds before the API closes) raises `ServiceStopping` before reading the file."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url))
        service = _service(path)
        task = asyncio.create_task(service.run())
        await service.started.wait()
        service.stop()
        try:
            await service.reload("test")
        except ServiceStopping as exc:
            refused: Exception | None = exc
        else:
            refused = None
        async with asyncio.timeout(10):
            await task
    assert isinstance(refused, ServiceStopping)
    assert service.metrics.reloads.labels("applied")._value.get() == 0


async def test_a_sighup_while_starting_reloads_a_changed_source_once_the_daemon_runs(
    tmp_path: Path,
) -> None:
    """The file edited after the daemon read it (its source's URL), and a SIGHUP while it
    starts: the reload is applied once the daemon runs, every time. It used to start at once
    and, when its read finished before the sources started (about one start in four here),
    died on the missing HTTP session: no `config reloaded`, not counted, and a `Task exception
    was never retrieved` on stderr. Repeated, since the old code lost the race only sometimes."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        for attempt in range(20):
            path = tmp_path / f"oracled-{attempt}.toml"
            path.write_text(one_venue_toml(sim.ws_url, sim.rest_url))
            service = _service(path)
            path.write_text(one_venue_toml(sim.ws_url + "?changed", sim.rest_url))
            service.early_hangups = lambda: 1
            async with service_running(service):
                async with asyncio.timeout(10):
                    await service.started.wait()
                    while not service.metrics.reloads.labels("applied")._value.get():  # noqa: ASYNC110
                        await asyncio.sleep(0.005)
            assert service.cfg.sources["good"].ws_url == sim.ws_url + "?changed", attempt


class _BrokenRounds(Service):
    """A daemon whose rounds hit a bug from the third on (a test double of the runtime's own
    round hand-off, standing for any error in a round)."""

    def _publish_round(self, result: RoundResult) -> None:
        if result.round >= 3:
            raise RuntimeError("bug in a round")
        super()._publish_round(result)


async def test_a_crashed_round_loop_stops_the_daemon_with_the_error_logged(
    tmp_path: Path,
) -> None:
    """An error in a round ends the round loop: the daemon stops by itself, marked failed (the
    command exits 1, so systemd's Restart=on-failure restarts it), with the traceback logged.
    It used to run on without a word, its API serving the last round's prices as live for
    ever; the error surfaced nowhere (the stop's gather swallowed it)."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url))
        service = _BrokenRounds(load_config(path), config_path=path)
        with capture_logs() as logs:
            async with service_running(service) as task:
                async with asyncio.timeout(10):
                    await asyncio.shield(task)
    crashed = [e for e in logs if e["event"].startswith("round loop crashed")]
    assert [e["log_level"] for e in crashed] == ["error"]
    assert isinstance(crashed[0]["exc_info"], RuntimeError)
    assert service.failed
    assert [e["event"] for e in logs][-1] == "stopped"


_NEW_CHAIN = """
[chains.fresh]
chain_id = 31337
rpc_urls = ["http://127.0.0.1:9"]

[sources.cl]
type = "chainlink"
chain = "fresh"
feeds."BTC/USD" = { address = "0x5FbDB2315678afecb367f032d93F642f64180aa3", heartbeat_s = 3600 }

[[markets]]
symbol = "BTC/USD"
min_sources = 1
sources = [{ source = "cl", pair = "BTC/USD" }]
"""


async def test_a_reload_adding_a_chain_says_its_sources_wait_for_a_restart(
    tmp_path: Path,
) -> None:
    """A reload that adds a chain (with its RPC URL) and a source on it: the chain's reader
    starts only with the daemon, so the source waits for a restart, and the log says so. It
    used to say `source disabled: its chain has no RPC URL`, sending the operator after a URL
    that is there."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url))
        service = _service(path)
        async with service_running(service):
            await service.started.wait()
            path.write_text(one_venue_toml(sim.ws_url, sim.rest_url) + _NEW_CHAIN)
            with capture_logs() as logs:
                changes = await service.reload("test")
    assert changes["needs_restart"] == ["chains"]
    events = [(e["event"], e.get("source"), e.get("chain")) for e in logs]
    assert ("source not started: its chain is read from the next restart", "cl", "fresh") in events
    assert not [e for e in events if e[0] == "source disabled: its chain has no RPC URL"]


class _DeafSource(InertSource):
    """A source whose task ignores every cancellation (a library that swallows it, a bug)."""

    async def run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)


def test_a_task_that_ignores_cancellation_is_named_and_abandoned_within_the_budget(
    tmp_path: Path,
) -> None:
    """`run_service` (what `oracled run` calls) with a source task that swallows every cancel:
    the stop still ends within the shutdown budget, and the task is logged by name as
    abandoned. `run()` returned after the budget, but `asyncio.Runner.close()` then cancelled the
    task again and waited for it with no limit: the process never exited (found following up
    the lifecycle fixes). The `stopped` line names the part that held the stop: the tasks'."""
    path = tmp_path / "oracled.toml"
    path.write_text(one_venue_toml("ws://127.0.0.1:9", "http://127.0.0.1:9"))

    def deaf(sid: str, *args: Any) -> Source:
        return _DeafSource(sid, *args)

    service = Service(load_config(path), source_factory=deaf)
    service.shutdown_budget_s = 1.5
    with capture_logs() as logs:
        runner = threading.Thread(target=run_service, args=(service, None), daemon=True)
        runner.start()
        deadline = time.monotonic() + 10
        while not service.started.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.started.is_set() and service._loop is not None
        service._loop.call_soon_threadsafe(service.stop)
        runner.join(service.shutdown_budget_s + 1.0)  # the bound only turns a hang into a failure
        assert not runner.is_alive(), "the stop waited on the deaf task"
    abandoned = [e for e in logs if e["event"] == "task ignored its cancellation; abandoned"]
    assert [(e["log_level"], e["task"]) for e in abandoned] == [("warning", "source:good")]
    (stopped,) = [e for e in logs if e["event"] == "stopped"]  # what held the stop, and how long
    assert list(stopped["parts_s"]) == ["tasks", "api", "session"]
    assert stopped["parts_s"]["tasks"] >= 0.49  # the tasks' share: the budget but a second
    assert stopped["took_s"] >= sum(stopped["parts_s"].values()) - 0.002  # rounded to 1 ms
