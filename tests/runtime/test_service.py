"""The runtime in-process: supervision keeps one broken source from hurting anything else."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import io
import itertools
import json
import os
import re
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.resolver import AsyncResolver, DefaultResolver
from inert_source import InertSource
from one_venue import one_venue_toml, service_running, serving_api
from structlog.testing import capture_logs

from oracled.api.encoding import OFF_LOOP
from oracled.cli import _Hangups, _Stops
from oracled.clock import FIRST_MS, Clock, SystemClock
from oracled.config import Config, SourceConfig, load_config, parse_config
from oracled.errors import ConfigError
from oracled.model import Kind, Quote
from oracled.publish.audit import AuditReader
from oracled.publish.audit_replay import replay_trail
from oracled.replay import replay
from oracled.service import Service
from oracled.sim import BinanceSim
from oracled.sim._base import VenueSim
from oracled.sim.coinbase import CoinbaseSim
from oracled.sources import Source, SourceStats, build_source


class CrashingSource(InertSource):
    """A source whose task dies at once, as a programming error would make it."""

    async def run(self) -> None:
        raise RuntimeError("bug in an adapter")


def _factory(
    sid: str,
    cfg: SourceConfig,
    pairs: list[tuple[str, Kind]],
    emit: Callable[[Quote], None],
    clock: Clock,
    session: aiohttp.ClientSession,
    stats: SourceStats,
) -> Source:
    if sid == "broken":
        return CrashingSource(sid, cfg, pairs, emit, clock, session, stats)
    return build_source(sid, cfg, pairs, emit, clock, session, stats)


def _config(ws: str, rest: str) -> Config:
    return parse_config(
        {
            "oracle": {"round_interval_ms": 50, "resume_rounds": 2},
            "api": {"listen": "127.0.0.1:0", "admin_token_env": None},
            "sources": {
                "good": {"type": "binance", "ws_url": ws, "rest_url": rest},
                "broken": {"type": "binance"},
            },
            "markets": [
                {
                    "symbol": "BTC/USDT",
                    "min_sources": 1,
                    "sources": [
                        {"source": "good", "pair": "BTC/USDT"},
                        {"source": "broken", "pair": "BTC/USDT"},
                    ],
                }
            ],
        }
    )


async def test_a_crashing_source_is_restarted_while_rounds_and_other_sources_go_on() -> None:
    """The broken source is restarted with backoff; the good one streams; the market is live."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        service = Service(
            _config(sim.ws_url, sim.rest_url), source_factory=_factory, restart_base_s=0.05
        )
        async with service_running(service):
            async with asyncio.timeout(10):
                while True:
                    await asyncio.sleep(0.05)
                    result = service.hub.latest_result
                    live = result is not None and int(result.status[0]) <= 1
                    if live and service.source_stats["broken"].restarts >= 3:
                        break
            assert service.source_stats["good"].quotes > 0
            assert service.core.rounds >= 3
    assert service.source_stats["broken"].state.value == "stopped"


async def _round_times(service: Service, count: int) -> list[int]:
    """The times of the next `count` rounds, as the hub saw them."""
    times: list[int] = []
    async with asyncio.timeout(10):
        while len(times) < count:
            await asyncio.sleep(0.01)
            result = service.hub.latest_result
            if result is not None and (not times or result.ts != times[-1]):
                times.append(result.ts)
    return times


async def test_a_reload_reports_restart_only_settings_and_keeps_running_them(
    tmp_path: Path,
) -> None:
    """A new round interval and a new [audit] section are listed in `needs_restart`, and the
    daemon goes on with what runs: rounds every 50 ms, no audit trail, and the config in force
    (what /v1/info and /metrics read) says so, while a market change in the same file applies."""
    async with BinanceSim({"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url, 50, None))
        service = Service(load_config(path), config_path=path)
        async with service_running(service):
            await _round_times(service, 3)
            trail = tmp_path / "audit.sqlite3"
            text = one_venue_toml(sim.ws_url, sim.rest_url, 400, trail).replace(
                'pair = "BTC/USDT" }]',
                'pair = "BTC/USDT" }]\n\n[[markets]]\nsymbol = "ETH/USDT"'
                '\nmin_sources = 1\nsources = [{ source = "good", pair = "ETH/USDT" }]',
                1,
            )
            path.write_text(text)
            changes = await service.reload("test")
            assert changes["needs_restart"] == ["oracle.round_interval_ms", "audit"]
            assert changes["markets_added"] == ["ETH/USDT"]
            assert service.core.markets == ("BTC/USDT", "ETH/USDT")
            assert service.cfg.oracle.round_interval_ms == 50
            assert not service.cfg.audit.enabled
            times = await _round_times(service, 6)
            assert {b - a for a, b in itertools.pairwise(times)} & {50}, times
            assert all(t % 50 == 0 for t in times) and any(t % 400 for t in times), times
            exposition = service.metrics.render()[0].decode()
            assert "oracled_round_interval_seconds 0.05" in exposition
    assert not trail.exists()


async def test_price_bodies_served_past_the_rounds_bounds_are_counted_in_the_metrics(
    tmp_path: Path,
) -> None:
    """With `api.round_bodies = 0` the daemon keeps no price body: each `/v1/prices` answer is
    made for its request alone and counted in `oracled_api_price_bodies_uncached_total`, which
    its /metrics serves: how an operator sees that the round's bounds are too small."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        listen = 'listen = "127.0.0.1:0"'
        text = one_venue_toml(sim.ws_url, sim.rest_url)
        path.write_text(text.replace(listen, f"{listen}\nround_bodies = 0", 1))
        service = Service(load_config(path), config_path=path)
        async with serving_api(service, 30) as (http, base):
            served = 0
            while served < 2:  # 503 until the first round
                async with http.get(base + "/v1/prices") as resp:
                    if resp.status == 200:
                        served += 1
                    else:
                        await asyncio.sleep(0.05)
            async with http.get(base + "/metrics") as resp:
                exposition = await resp.text()
    assert "oracled_api_price_bodies_uncached_total 2.0" in exposition.splitlines()


async def test_the_apis_gzip_work_is_counted_in_the_metrics(tmp_path: Path) -> None:
    """A daemon of 260 markets (its `/v1/prices` and `/v1/markets` past the 64 KiB gzipped in
    a worker thread), keeping no price body (`api.round_bodies = 0`): two gzip requests of
    `/v1/prices` gzip twice, off the loop; one of a single market once, on the loop; two of
    `/v1/markets` once (kept with its config), off the loop; two of `/openapi.json` once (kept
    for the process), off the loop; identity requests gzip nothing. Two `/metrics` scrapes
    that ask for gzip, one after the other, gzip two renders. /metrics serves the three counts
    as `oracled_api_bodies_gzipped_total` 5, `..._off_loop_total` 4 and
    `oracled_api_metrics_gzipped_total` 2."""
    symbols = [f"C{i:03d}" for i in range(260)]
    gz, plain = {"Accept-Encoding": "gzip"}, {"Accept-Encoding": "identity"}
    async with BinanceSim({f"{s}USDT": 100.0 for s in symbols}, rate_hz=1.0) as sim:
        cfg = parse_config(
            {
                "oracle": {"round_interval_ms": 50},
                "api": {"listen": "127.0.0.1:0", "admin_token_env": None, "round_bodies": 0},
                "sources": {
                    "v": {"type": "binance", "ws_url": sim.ws_url, "rest_url": sim.rest_url}
                },
                "markets": [
                    {
                        "symbol": f"{s}/USDT",
                        "min_sources": 1,
                        "sources": [{"source": "v", "pair": f"{s}/USDT"}],
                    }
                    for s in symbols
                ],
            },
            env={},
        )
        service = Service(cfg)
        async with serving_api(service, 30) as (http, base):

            async def get(path: str, headers: dict[str, str]) -> tuple[int, bytes, str | None]:
                async with http.get(base + path, headers=headers, auto_decompress=False) as r:
                    return r.status, await r.read(), r.headers.get("Content-Encoding")

            while (await get("/v1/prices", plain))[0] != 200:  # noqa: ASYNC110 - 503 until a round
                await asyncio.sleep(0.05)
            assert service.hub.bodies_gzipped == 0
            for path in ("/v1/prices", "/v1/prices", "/v1/prices/C000-USDT"):
                status, _, coding = await get(path, gz)
                assert (status, coding) == (200, "gzip"), path
            for _ in range(2):
                status, body, coding = await get("/v1/markets", gz)
                assert (status, coding) == (200, "gzip")
            assert len(gzip.decompress(body)) >= OFF_LOOP
            assert (await get("/v1/markets", plain))[2] is None
            for _ in range(2):
                status, body, coding = await get("/openapi.json", gz)
                assert (status, coding) == (200, "gzip")
            assert len(gzip.decompress(body)) >= OFF_LOOP
            assert (await get("/openapi.json", plain))[2] is None
            for _ in range(2):
                status, _, coding = await get("/metrics", gz)
                assert (status, coding) == (200, "gzip")
            status, exposition, coding = await get("/metrics", plain)
            assert status == 200 and coding is None
    lines = exposition.decode().splitlines()
    assert "oracled_api_bodies_gzipped_total 5.0" in lines
    assert "oracled_api_bodies_gzipped_off_loop_total 4.0" in lines
    assert "oracled_api_metrics_gzipped_total 2.0" in lines


async def test_a_reload_that_removes_a_market_removes_its_counters(tmp_path: Path) -> None:
    """The gate-transition and admin-action series of a market a reload removed leave the
    exposition with its gauges, so the series stay bounded by the config in force (reloads that
    add and remove markets must not pile up series); a market that stays keeps its counts."""
    async with BinanceSim({"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        both = one_venue_toml(sim.ws_url, sim.rest_url, 50, None) + (
            '\n[[markets]]\nsymbol = "ETH/USDT"\nmin_sources = 1'
            '\nsources = [{ source = "good", pair = "ETH/USDT" }]\n'
        )
        path.write_text(both)
        service = Service(load_config(path), config_path=path)
        async with service_running(service):
            for _ in range(200):  # each market's first change of status (to live) is counted
                exposition = service.metrics.render()[0].decode()
                if all(
                    f'transitions_total{{market="{m}/USDT"' in exposition for m in ("BTC", "ETH")
                ):
                    break
                await _round_times(service, 1)
            assert 'oracled_gate_transitions_total{market="ETH/USDT"' in exposition
            service.on_manual("ETH/USDT", True, "test")
            assert 'oracled_admin_actions_total{action="pause",market="ETH/USDT"} 1.0' in (
                service.metrics.render()[0].decode()
            )
            path.write_text(one_venue_toml(sim.ws_url, sim.rest_url, 50, None))
            changes = await service.reload("test")
            assert changes["markets_removed"] == ["ETH/USDT"]
            await _round_times(service, 2)
            exposition = service.metrics.render()[0].decode()
            assert [line for line in exposition.splitlines() if "ETH/USDT" in line] == []
            assert 'oracled_gate_transitions_total{market="BTC/USDT"' in exposition


def test_venue_names_are_resolved_on_the_event_loop() -> None:
    """aiohttp's default resolver is the c-ares one (the aiodns dependency), not a thread: a
    lookup in flight when SIGTERM comes is dropped with the loop instead of holding its close
    until the system resolver gives up (2 s a stop measured without a network, 0.03 s with it)."""
    assert DefaultResolver is AsyncResolver


def _source_series(service: Service, sid: str) -> list[str]:
    """The exposition lines of one source's `oracled_source_*` families."""
    text = service.metrics.render()[0].decode()
    return [
        line
        for line in text.splitlines()
        if line.startswith("oracled_source_") and f'source="{sid}"' in line
    ]


def _two_sources_toml(ws: str, rest: str, other_enabled: bool) -> str:
    """`good` and `other` on one simulator, both in BTC/USDT; `spare` in no market."""
    return f"""
[oracle]
round_interval_ms = 50

[api]
listen = "127.0.0.1:0"

[sources.good]
type = "binance"
ws_url = "{ws}"
rest_url = "{rest}"

[sources.other]
type = "binance"
enabled = {"true" if other_enabled else "false"}
ws_url = "{ws}"
rest_url = "{rest}"

[sources.spare]
type = "binance"
ws_url = "{ws}"
rest_url = "{rest}"

[[markets]]
symbol = "BTC/USDT"
min_sources = 1
sources = [{{ source = "good", pair = "BTC/USDT" }}, {{ source = "other", pair = "BTC/USDT" }}]
"""


async def test_sources_that_are_not_running_have_no_source_series(tmp_path: Path) -> None:
    """A source no market uses is never started, and one a reload disables is stopped: neither
    keeps `oracled_source_*` series (an `oracled_source_up` stuck at 0 would fire
    OracledSourceDown for a source that is off on purpose, as the chain sources of the shipped
    config are without an RPC URL); a reload that enables it again brings them back."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(_two_sources_toml(sim.ws_url, sim.rest_url, True))
        service = Service(load_config(path), config_path=path)
        task = asyncio.create_task(service.run())

        async def up(sid: str) -> None:
            line = f'oracled_source_up{{source="{sid}"}} 1.0'
            async with asyncio.timeout(10):
                for _ in itertools.count():
                    if line in _source_series(service, sid):
                        return
                    await asyncio.sleep(0.02)

        try:
            await up("other")
            assert _source_series(service, "spare") == []
            path.write_text(_two_sources_toml(sim.ws_url, sim.rest_url, False))
            changes = await service.reload("test")
            assert changes["sources_restarted"] == ["other"]
            assert _source_series(service, "other") == []
            assert _source_series(service, "good") != []
            path.write_text(_two_sources_toml(sim.ws_url, sim.rest_url, True))
            await service.reload("test")
            await up("other")
        finally:
            service.stop()
            await task


async def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout_s(tmp_path: Path) -> None:
    """A client that keeps its connection open and sends nothing more is let go after
    api.idle_timeout_s (aiohttp's own default is an hour, so vanished clients would hold
    places under max_connections); one that keeps asking keeps it."""
    path = tmp_path / "oracled.toml"
    path.write_text(
        one_venue_toml("ws://127.0.0.1:9", "http://127.0.0.1:9", 250, None).replace(
            'listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\nidle_timeout_s = 0.5'
        )
    )
    service = Service(load_config(path))
    async with service_running(service):
        await _round_times(service, 1)  # running: the API listens
        assert service.bound_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", service.bound_port)
        request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        for _ in range(3):  # busy: 0.3 s apart, under the timeout, the connection stays
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            assert length is not None
            await reader.readexactly(int(length[1]))
            await asyncio.sleep(0.3)
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # idle: closed by the daemon
        writer.close()


async def test_a_reload_logs_the_warnings_of_the_config_it_applies(tmp_path: Path) -> None:
    """A reload that disables `other` while BTC/USDT still needs two sources is applied (an
    operator may disable a bad venue mid-incident) and logs the config warning that the quorum
    now needs a disabled source, as `oracled run` and check-config would say of that file."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        two = _two_sources_toml(sim.ws_url, sim.rest_url, True)
        path.write_text(two.replace("min_sources = 1", "min_sources = 2"))
        service = Service(load_config(path), config_path=path)
        async with service_running(service):
            await _round_times(service, 2)
            one = _two_sources_toml(sim.ws_url, sim.rest_url, False)
            path.write_text(one.replace("min_sources = 1", "min_sources = 2"))
            with capture_logs() as logs:
                changes = await service.reload("test")
    assert changes["sources_restarted"] == ["other"]
    warned = [e for e in logs if e["event"] == "config warning"]
    assert any(e["key"] == "markets[0].min_sources" and "other" in e["warning"] for e in warned)


def _reload_ok(service: Service) -> str | None:
    """The value of oracled_config_last_reload_successful in the exposition (None if absent)."""
    found = re.search(
        r"^oracled_config_last_reload_successful (\S+)$",
        service.metrics.render()[0].decode(),
        flags=re.M,
    )
    return found.group(1) if found else None


async def test_a_refused_reload_is_a_gauge_until_a_reload_is_applied(tmp_path: Path) -> None:
    """A reload refused (the file on disk does not validate) sets
    oracled_config_last_reload_successful to 0, and it stays 0 while the daemon runs on its old
    config: a SIGHUP has no one to answer, and a restart would refuse the same file (exit 2), so
    the state must be visible, not only a counter that grew once. A reload applied sets it back
    to 1; a daemon that has not reloaded reports 1 (it started from a valid file)."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        good = one_venue_toml(sim.ws_url, sim.rest_url, 50, None)
        path.write_text(good)
        service = Service(load_config(path), config_path=path)
        async with service_running(service):
            await _round_times(service, 2)
            assert _reload_ok(service) == "1.0"
            path.write_text(good.replace("round_interval_ms = 50", "round_interval_ms = -5"))
            with contextlib.suppress(ConfigError):
                await service.reload("test")
            await _round_times(service, 2)
            assert _reload_ok(service) == "0.0"
            path.write_text(good)
            await service.reload("test")
            assert _reload_ok(service) == "1.0"


async def test_a_reload_of_the_clock_skew_bound_gives_every_source_the_new_one(
    tmp_path: Path,
) -> None:
    """Sources refuse quotes from further ahead than `oracle.max_clock_skew_ms` themselves: the
    service builds each with the configured bound, and a reload that changes it restarts every
    source, so that the new one is applied (a source built before it would keep the old)."""
    built: list[Source] = []

    def recording(*args: Any) -> Source:
        source = build_source(*args)
        built.append(source)
        return source

    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"

        def write(skew_ms: int) -> None:
            text = _two_sources_toml(sim.ws_url, sim.rest_url, True)
            path.write_text(
                text.replace("[oracle]\n", f"[oracle]\nmax_clock_skew_ms = {skew_ms}\n")
            )

        async def running(skew_ms: int) -> None:
            """Wait until both market sources have been built with `skew_ms`."""
            want = {"good", "other"}
            async with asyncio.timeout(10):
                for _ in itertools.count():
                    if {s.source_id for s in built if s.max_clock_skew_ms == skew_ms} == want:
                        return
                    await asyncio.sleep(0.02)

        write(3_000)
        service = Service(load_config(path), config_path=path, source_factory=recording)
        async with service_running(service):
            await running(3_000)
            write(5_000)
            changes = await service.reload("test")
            assert changes["sources_restarted"] == ["good", "other", "spare"]
            assert changes["needs_restart"] == [] and changes["markets_changed"] == []
            await running(5_000)
            assert service.cfg.oracle.max_clock_skew_ms == 5_000
            assert "spare" not in {s.source_id for s in built}  # listed, but in no market: not run


async def test_every_source_the_service_builds_shares_its_host_rests(tmp_path: Path) -> None:
    """A limit that a venue documents as one on our IP rests every source polling that REST host
    (oracled/sources/hostrests.py): the service hands each source it builds its one registry,
    and so the sources a reload builds again, so that a rest learnt before the reload holds for
    them too. A source left with a registry of its own would learn every ban from its own
    refused request."""
    built: list[Source] = []

    def recording(*args: Any) -> Source:
        source = build_source(*args)
        built.append(source)
        return source

    async def sources_built(count: int) -> None:
        async with asyncio.timeout(10):
            while len(built) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.02)

    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        text = _two_sources_toml(sim.ws_url, sim.rest_url, True)
        path.write_text(text)
        service = Service(load_config(path), config_path=path, source_factory=recording)
        async with service_running(service):
            await sources_built(2)
            path.write_text(text.replace("[oracle]\n", "[oracle]\nmax_clock_skew_ms = 4000\n"))
            changes = await service.reload("test")  # a new skew bound restarts every source
            assert changes["sources_restarted"] == ["good", "other", "spare"]
            await sources_built(4)
    assert sorted(s.source_id for s in built) == ["good", "good", "other", "other"]
    assert all(s.host_rests is service.host_rests for s in built)


@contextlib.contextmanager
def _sim_in_thread(venue: VenueSim | None = None) -> Iterator[Any]:
    """A venue (a Binance one unless `venue` is given) on its own event loop in a thread, so
    that it keeps sending while the daemon's loop is held, as a real venue does."""
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    sim = venue or BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=400.0, volatility=0.001)

    def serve() -> None:
        loop.run_until_complete(sim.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(sim.stop())
        loop.close()

    thread = threading.Thread(target=serve, name="venue")
    thread.start()
    assert ready.wait(10)
    try:
        yield sim
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


async def _busy_loop() -> None:
    """Hold the event loop for 4 ms every few ms, as a busy daemon's handlers do: the round
    loop then often wakes late, after sockets that became readable in the meantime."""
    while True:
        await asyncio.sleep(0.003)
        time.sleep(0.004)  # noqa: ASYNC251 - blocking the loop is the point


def _stored_and_replayed(
    cfg: Config, trail: Path, market: str = "BTC/USDT"
) -> tuple[dict[int, Any], dict[int, Any]]:
    """`market`'s reports in the audit trail, and those of a replay of the trail's own tape,
    each by round time."""
    reader = AuditReader(trail)
    stored = {s.report.ts: s.report for s in reader.reports(market, 0, 1 << 62)}
    tape = io.BytesIO()
    reader.tape(tape, 0, 1 << 62)
    reader.close()
    out = io.BytesIO()
    replay(cfg, io.BytesIO(tape.getvalue()), out)
    return stored, {r["ts"]: r for r in map(json.loads, out.getvalue().splitlines())}


async def test_a_round_never_uses_a_quote_received_after_its_tick(tmp_path: Path) -> None:
    """The round loop wakes a little after its tick; a quote received in between waits for the
    next round, as in a replay of the tape (a quote takes part in the rounds at or after its
    receive time). No stored report shows a negative age, and replaying the audit trail's tape
    gives the stored price of every round both ran."""
    trail = tmp_path / "audit.sqlite3"
    with _sim_in_thread() as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url, 20, trail))
        cfg = load_config(path)
        service = Service(cfg)
        task = asyncio.create_task(service.run())
        busy = asyncio.create_task(_busy_loop())
        try:
            await _round_times(service, 60)
        finally:
            busy.cancel()
            service.stop()
            await task
    stored, replayed = _stored_and_replayed(cfg, trail)
    ages = [src.age_ms for r in stored.values() for src in r.sources if src.age_ms is not None]
    assert len(ages) > 50 and min(ages) >= 0
    both = sorted(stored.keys() & replayed.keys())
    assert len(both) > 50
    assert [replayed[ts]["price"] for ts in both] == [stored[ts].price for ts in both]


class _CoarseClock(SystemClock):
    """The system clock read in steps of 10 ms, as a coarse wall clock reads (some virtual
    machines' clocks); the same millisecond then lasts long enough to matter."""

    __slots__ = ()

    def now_ms(self) -> int:
        return super().now_ms() // 10 * 10


async def test_a_round_runs_only_once_its_millisecond_has_passed(tmp_path: Path) -> None:
    """A quote received in the very millisecond of a round's tick takes part in that round, as
    in a replay of the tape (a quote takes part in the rounds at or after its receive time): the
    round waits for the wall clock to pass its tick, so a quote stamped with it cannot arrive
    after the round ran. Found running the audit tape's replay test under load: one round in a
    few runs had the replay's price from a quote stamped at the tick (age 0) and the stored one
    the quote before it (age 21); a clock read in 10 ms steps makes it every round."""
    trail = tmp_path / "audit.sqlite3"
    with _sim_in_thread() as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url, 50, trail))
        cfg = load_config(path)
        service = Service(cfg, clock=_CoarseClock())
        async with service_running(service):
            await _round_times(service, 30)
    stored, replayed = _stored_and_replayed(cfg, trail)
    both = sorted(stored.keys() & replayed.keys())
    assert len(both) > 20
    assert [replayed[ts]["price"] for ts in both] == [stored[ts].price for ts in both]


async def _stalls(count: int, seconds: float) -> None:
    """Block the event loop `count` times for `seconds`, as a stopped or starved process is."""
    for _ in range(count):
        await asyncio.sleep(0.15)
        time.sleep(seconds)  # noqa: ASYNC251 - blocking the loop is the point


class _SelfScrapingService(Service):
    """A daemon that reads its own `oracled_rounds_total` after every round it computes, caught-up
    rounds included: the moments at which a scrape in the executor thread can land."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.rounds_seen: list[float | None] = []

    def _log_transitions(self, result: Any, log: Any) -> None:
        super()._log_transitions(result, log)
        self.rounds_seen.append(self.metrics.registry.get_sample_value("oracled_rounds_total"))


async def test_rounds_total_never_goes_back_while_missed_rounds_are_caught_up(
    tmp_path: Path,
) -> None:
    """oracled_rounds_total read at any moment, in the middle of a catch-up too, never exceeds a
    later reading: it counted the rounds being caught up until the catch-up ended and then took
    them back, which Prometheus reads as a counter reset (rate and increase jump by the whole
    count, right when the loop stalled and OracledRoundsStalled should see fewer rounds)."""
    with _sim_in_thread() as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url, 20, None))
        service = _SelfScrapingService(load_config(path))
        async with service_running(service):
            await _round_times(service, 5)
            await _stalls(2, 0.13)
            await _round_times(service, 5)
    assert service.rounds_caught_up >= 2 * 5
    seen = [v for v in service.rounds_seen if v is not None]
    assert len(seen) > service.rounds_caught_up
    assert [b - a for a, b in itertools.pairwise(seen) if b < a] == []


async def test_rounds_missed_while_the_loop_was_blocked_are_computed_as_a_replay_runs_them(
    tmp_path: Path,
) -> None:
    """A blocked loop misses rounds; it computes them afterwards without publishing them, so
    that the gates and the round numbers go on as a replay of the tape (which runs every round)
    does: every stored report equals its replay in status, reasons and price, and the round
    numbers of the two stay a constant distance apart (the live daemon ran rounds before the
    first quote; the replay starts at it). The missed rounds are counted."""
    trail = tmp_path / "audit.sqlite3"
    with _sim_in_thread() as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url, 20, trail))
        cfg = load_config(path)
        service = Service(cfg)
        async with service_running(service):
            await _round_times(service, 10)
            await _stalls(3, 0.13)
            await _round_times(service, 10)
    caught_up = service.metrics.registry.get_sample_value("oracled_rounds_caught_up_total")
    assert caught_up is not None and caught_up >= 3 * 5
    stored, replayed = _stored_and_replayed(cfg, trail)
    both = sorted(stored.keys() & replayed.keys())
    assert len(both) > 20
    assert len(replayed) - len(both) >= caught_up  # the rounds computed but never published
    live = [(stored[ts].status, list(stored[ts].reasons), stored[ts].price) for ts in both]
    assert live == [
        (replayed[ts]["status"], replayed[ts]["reasons"], replayed[ts]["price"]) for ts in both
    ]
    assert len({stored[ts].round - replayed[ts]["round"] for ts in both}) == 1


class _SteppedClock(SystemClock):
    """The system clock plus an offset a test can step, as NTP steps a wall clock."""

    __slots__ = ("offset_ms",)

    def __init__(self, offset_ms: int) -> None:
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return super().now_ms() + self.offset_ms


async def test_round_times_only_grow_when_the_wall_clock_steps_back(tmp_path: Path) -> None:
    """A wall clock stepped back 600 ms: no round reuses or goes below an earlier round's time
    (downstream and the tape rely on that); the rounds wait for the clock to pass the last one,
    say so once, and go on from the next round time: in the audit trail every round's time is
    the first one's plus one interval per round number."""
    trail = tmp_path / "audit.sqlite3"
    with _sim_in_thread() as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url, 20, trail))
        clock = _SteppedClock(600)
        service = Service(load_config(path), clock=clock)
        async with service_running(service):
            with capture_logs() as logs:
                before = await _round_times(service, 10)
                clock.offset_ms = 0
                after = await _round_times(service, 10)
    assert after[-1] > before[-1]
    reader = AuditReader(trail)
    stored = [s.report for s in reader.reports("BTC/USDT", 0, 1 << 62)]
    reader.close()
    assert len(stored) >= 15
    first = stored[0]
    assert [r.ts - first.ts for r in stored] == [20 * (r.round - first.round) for r in stored]
    warned = [e for e in logs if e["event"] == "wall clock went back: rounds wait for it"]
    assert len(warned) == 1 and 500 <= warned[0]["by_ms"] <= 620


async def _past_the_last_round(service: Service, source: str = "good") -> int:
    """The time of the daemon's last round, once `source` has handed it a quote received after
    that round (returned with no wait after the check: the caller acts before the next round).
    A replay of the tape then runs a round after that one."""
    stats = service.source_stats[source]
    async with asyncio.timeout(10):
        while True:
            result = service.hub.latest_result
            newest = stats.last_quote_ms
            if (
                result is not None
                and result.round == service.core.rounds  # no round caught up since
                and newest is not None
                and newest > result.ts
            ):
                return result.ts
            await asyncio.sleep(0.001)


async def _quotes_taken(service: Service, count: int, source: str = "good") -> None:
    """Return once the daemon has taken `count` more quotes from `source`."""
    stats = service.source_stats[source]
    goal = stats.quotes + count
    async with asyncio.timeout(10):
        while stats.quotes < goal:  # noqa: ASYNC110 - a counter, no event to await
            await asyncio.sleep(0.005)


async def test_a_trail_replays_equal_across_a_wall_clock_stepped_back(tmp_path: Path) -> None:
    """A wall clock stepped back 1.5 s: the rounds wait for it, and meanwhile the daemon takes
    the quotes of a venue that sends its own times (stamped before the last round, their venue
    times newer than the ones held); the venue then goes quiet, so the rounds after the wait
    price its last quote taken in the wait. `audit --replay` feeds the stored quotes as the
    daemon took them and every report is equal; before, it skipped those quotes as earlier
    than the line before, priced the venue's last quote before the step, and called the rounds
    after the wait mismatches. A replay of the trail's `--tape` still skips them (the tape's
    contract), so it differs in the rounds after the wait: the stepped quotes mattered. The
    venue's price rises every tick, so the quotes of the wait have prices of their own; the
    clock steps back once the daemon has taken a quote after its last round, so the replay of
    the `--tape` (which runs no round after its last quote read) prices a round after the
    wait; the venue goes quiet once the daemon has taken 100 quotes in the wait."""
    trail = tmp_path / "audit.sqlite3"
    venue = CoinbaseSim({"BTC-USD": 50_000.0}, rate_hz=400.0)
    with _sim_in_thread(venue) as sim:
        # 1 cent a ms, 2.5 cents a tick: one attribute its publishing task reads, set from
        # this loop, whose time is the same monotonic clock as the venue's loop
        sim.ramp("BTC-USD", 60_000.0, 1_000.0)
        path = tmp_path / "oracled.toml"
        text = one_venue_toml(sim.ws_url, sim.rest_url, 20, trail)
        path.write_text(text.replace('"binance"', '"coinbase"').replace("BTC/USDT", "BTC/USD"))
        cfg = load_config(path)
        clock = _SteppedClock(0)
        service = Service(cfg, clock=clock, config_path=path, config_text=path.read_bytes())
        async with service_running(service):
            await _round_times(service, 10)
            last = await _past_the_last_round(service)
            clock.offset_ms = -1_500
            await _quotes_taken(service, 100)  # stamped before round `last`: the rounds wait
            sim.silence(None)  # one attribute its publishing task reads: no lock needed
            await _round_times(service, 10)
    reader = AuditReader(trail)
    try:
        summary = replay_trail(reader, 0, 1 << 62, None, [])
    finally:
        reader.close()
    assert summary.exit_code() == 0, (summary.problems, summary.mismatches[:3])
    assert summary.rounds >= 15 and summary.equal == summary.reports == summary.rounds
    stored, replayed = _stored_and_replayed(cfg, trail, "BTC/USD")
    after = [ts for ts in stored.keys() & replayed.keys() if ts > last]
    assert after and all(stored[ts].price != replayed[ts]["price"] for ts in after)


class _StepsBackAfterRound(Service):
    """A daemon whose wall clock steps back `by_ms` right after it published round `at`, before
    any quote could come in after that round (the step and the round are one step of its
    loop)."""

    def __init__(self, path: Path, clock: _SteppedClock, at: int, by_ms: int) -> None:
        super().__init__(
            load_config(path), clock=clock, config_path=path, config_text=path.read_bytes()
        )
        self.stepped_clock, self.at, self.by_ms = clock, at, by_ms

    def _publish_round(self, result: Any) -> None:
        super()._publish_round(result)
        if result.round == self.at:
            self.stepped_clock.offset_ms -= self.by_ms


async def test_quotes_taken_after_a_round_replay_after_it_though_stamped_before(
    tmp_path: Path,
) -> None:
    """A wall clock stepped back 1 s right after round 10: the quotes the daemon takes next
    are stamped before round 10 (a venue sending its own times has them newer than the ones
    held) and priced from round 11 on. `audit --replay` reads them after round 10, as the trail
    stores them with round 11; before, it ran round 10 only at the first quote later than it,
    after the wait, so round 10 priced the venue's quotes of the wait, a mismatch."""
    trail = tmp_path / "audit.sqlite3"
    venue = CoinbaseSim({"BTC-USD": 50_000.0}, rate_hz=400.0, volatility=0.001)
    with _sim_in_thread(venue) as sim:
        path = tmp_path / "oracled.toml"
        text = one_venue_toml(sim.ws_url, sim.rest_url, 20, trail)
        path.write_text(text.replace('"binance"', '"coinbase"').replace("BTC/USDT", "BTC/USD"))
        service = _StepsBackAfterRound(path, _SteppedClock(0), 10, 1_000)
        async with service_running(service):
            while service.rounds_published < 20:
                await _round_times(service, 1)
    reader = AuditReader(trail)
    try:
        tenth = next(r for r in reader.rounds(0, 1 << 62) if r.round == 10)
        blocks = [(b, ts) for b, _, ts in reader.tape_blocks(0, 1 << 62) if ts is not None]
        summary = replay_trail(reader, 0, 1 << 62, None, [])
    finally:
        reader.close()
    after = next(b for b, ts in blocks if ts > tenth.ts)  # the quotes taken after round 10
    assert json.loads(after.splitlines()[0])["ts"] < tenth.ts
    assert summary.exit_code() == 0, (summary.problems, summary.mismatches[:3])
    assert summary.rounds >= 15 and summary.equal == summary.reports == summary.rounds


async def test_a_reload_while_a_stepped_back_clock_is_waited_for_replays_equal(
    tmp_path: Path,
) -> None:
    """A reload while the rounds wait for a wall clock stepped back 600 ms: the trail puts it
    after the round run last (and after the start), and `audit --replay` applies it from the
    next round on, every report equal. Before, the trail stored it at the stepped-back time,
    before the start: the replay never applied it, and every round priced under it (at the
    new exponent) was a mismatch. The quotes the daemon took after the step, stamped before
    its last round, are read after that round, as the trail stores them."""
    trail = tmp_path / "audit.sqlite3"
    with _sim_in_thread() as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url, 20, trail))
        clock = _SteppedClock(0)
        service = Service(
            load_config(path), clock=clock, config_path=path, config_text=path.read_bytes()
        )
        async with service_running(service):
            await _round_times(service, 10)
            clock.offset_ms = -600
            await asyncio.sleep(0.2)  # within the 600 ms the rounds wait
            before = service.hub.latest_result
            exponent = "min_sources = 1\nprice_exponent = -1"
            path.write_text(path.read_text().replace("min_sources = 1", exponent))
            await service.reload("test")
            await _round_times(service, 10)
    assert before is not None
    reader = AuditReader(trail)
    try:
        start, reload = reader.configs(0, 1 << 62)
        after = list(reader.reports("BTC/USDT", reload.ts, 1 << 62))
        summary = replay_trail(reader, 0, 1 << 62, None, [])
    finally:
        reader.close()
    assert (start.event, reload.event) == ("start", "reload")
    assert start.ts < before.ts < reload.ts
    assert after and all(len(s.report.price.split(".")[1]) == 1 for s in after if s.report.price)
    assert summary.exit_code() == 0, (summary.problems, summary.mismatches[:3])
    assert "1 reload(s) applied" in summary.starts[0]
    assert summary.rounds >= 15 and summary.equal == summary.reports == summary.rounds


async def test_a_wall_clock_stepped_forward_is_logged_and_a_blocked_loop_is_not(
    tmp_path: Path,
) -> None:
    """The rounds a wall clock stepped forward passes are computed late, as those of a blocked
    loop are (a replay runs them), and counted with them; unlike a blocked loop, the step is
    said, once, with its size: before, nothing told it from a stalled process, and the signer's
    `lease` errors it causes (a critical alert) had no cause in the log. The loop blocked for
    0.4 s, late by the monotonic clock as well, says nothing of the wall clock."""
    with _sim_in_thread() as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url, 50))
        clock = _SteppedClock(0)
        service = Service(load_config(path), clock=clock)
        async with service_running(service):
            await _round_times(service, 5)
            with capture_logs() as blocked:
                await _stalls(1, 0.4)
                await _round_times(service, 5)
            with capture_logs() as stepped:
                clock.offset_ms = 2_000
                await _round_times(service, 5)
    caught_up = service.metrics.registry.get_sample_value("oracled_rounds_caught_up_total")
    assert caught_up is not None and caught_up >= 2_000 // 50 + 0.4 // 0.05 - 2
    event = "wall clock went forward: its rounds are computed late"
    assert [e for e in blocked if e["event"] == event] == []
    told = [e for e in stepped if e["event"] == event]
    assert len(told) == 1 and 1_900 <= told[0]["by_ms"] <= 2_100, told
    assert told[0]["rounds"] >= 2_000 // 50 - 1


async def test_a_wall_clock_never_set_runs_no_round_until_it_is(tmp_path: Path) -> None:
    """A start with the wall clock in January 1970 (a machine without a battery-backed clock,
    before its time sync) runs no round, and says why once; the first round follows the clock
    being set. Before, it published (and with a key signed) rounds stamped 1970: no tape reader
    takes such a time, and a signing lease of one stops the next start."""
    with _sim_in_thread() as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url, 50))
        clock = _SteppedClock(1_000_000_000 - SystemClock().now_ms())  # 1970-01-12
        service = Service(load_config(path), clock=clock)
        async with service_running(service):
            with capture_logs() as logs:
                await asyncio.sleep(0.5)  # ten round intervals
                unset = service.rounds_published
                clock.offset_ms = 0
                times = await _round_times(service, 3)
    assert unset == 0
    assert min(times) >= FIRST_MS
    told = [e for e in logs if e["event"] == "wall clock is not set: rounds wait for it"]
    assert len(told) == 1 and told[0]["now_ms"] < FIRST_MS, told


async def test_a_sighup_while_starting_is_a_reload_once_running(tmp_path: Path) -> None:
    """`systemctl reload` just after `start`: a SIGHUP that comes while `oracled run` is still
    importing the runtime is held by the command line (Python's default would end the process
    without a word) and becomes a reload as soon as the daemon runs."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url, 50, None))
        hangups = _Hangups()
        try:
            signal.raise_signal(signal.SIGHUP)  # would end this process without the latch
            service = Service(load_config(path), config_path=path)
            service.early_hangups = lambda: hangups.count
            async with service_running(service):
                async with asyncio.timeout(10):
                    for _ in itertools.count():
                        if _reloads(service, "applied"):
                            break
                        await asyncio.sleep(0.02)
        finally:
            assert hangups.release() == 1  # the test's own SIGHUP handling is back


def _reloads(service: Service, result: str) -> float:
    return service.metrics.reloads.labels(result)._value.get()


async def test_a_sighup_without_a_config_file_is_logged_not_silent() -> None:
    """A daemon started without a file (`oracled demo`) cannot reload: a SIGHUP says so in the
    log, where it used to do nothing visible, and the daemon runs on."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        service = Service(_config(sim.ws_url, sim.rest_url), source_factory=_factory)
        async with service_running(service) as task:
            await service.started.wait()
            with capture_logs() as logs:

                def said() -> list[str]:
                    # Not the sources' own lines: the good one connecting, the broken one
                    # crashing again, may fall in the same moment on a loaded machine.
                    return [e["event"] for e in logs if "source" not in e]

                os.kill(os.getpid(), signal.SIGHUP)
                async with asyncio.timeout(5):
                    while not said():  # noqa: ASYNC110 - the handler runs on the loop
                        await asyncio.sleep(0.01)
            assert said() == ["SIGHUP ignored: this daemon was not started from a config file"]
            assert not task.done()


async def test_run_gives_the_signals_their_handlers_back_when_it_returns() -> None:
    """After `run()` returns, SIGTERM and SIGINT have the handlers they had before (the command
    line's, which keep a late signal from ending the exiting process with 143), not the
    defaults the event loop leaves; a stop caught early (`early_stop`) stops it unstarted."""
    stops = _Stops()
    try:
        signal.raise_signal(signal.SIGTERM)  # would end this process without the latch
        service = Service(
            _config("ws://127.0.0.1:9", "http://127.0.0.1:9"), source_factory=_factory
        )
        service.early_stop = lambda: stops.signal
        with capture_logs() as logs:
            async with asyncio.timeout(10):
                await service.run()
        assert [e["event"] for e in logs] == ["signal received", "shutting down", "stopped"]
        assert not service.started.is_set() and service.bound_port is None
        handler = stops._on_stop
        assert signal.getsignal(signal.SIGTERM) == handler
        assert signal.getsignal(signal.SIGINT) == handler
    finally:
        assert stops.release() == signal.SIGTERM


async def test_a_sighup_while_stopping_is_no_reload(tmp_path: Path) -> None:
    """`systemctl reload` racing `systemctl stop`: a SIGHUP that comes once the daemon is shutting
    down is logged and ignored. It used to start a reload that outlived `run()`: a source
    restarted on the closed session, or `config reloaded` after `shutting down`."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url, 50, None))
        service = Service(load_config(path), config_path=path)
        task = asyncio.create_task(service.run())
        await service.started.wait()
        path.write_text(
            one_venue_toml(sim.ws_url + "?changed", sim.rest_url, 50, None)
        )  # a restart
        with capture_logs() as logs:
            service.stop()
            os.kill(os.getpid(), signal.SIGHUP)  # handled on the loop once run() is stopping
            async with asyncio.timeout(10):
                await task
        names = [t.get_name() for t in asyncio.all_tasks()]
        left = [n for n in names if n == "reload" or n.startswith(("source:", "round-loop"))]
    events = [e["event"] for e in logs]
    assert left == []
    assert "config reloaded" not in events
    assert events[0] == "shutting down" and events[-1] == "stopped"
    assert "SIGHUP ignored: the daemon is stopping" in events


async def test_a_stop_while_the_audit_writer_is_held_up_says_the_trail_may_miss_rounds(
    tmp_path: Path,
) -> None:
    """A stop while the audit writer waits for the database (another connection holds its write
    lock, as a backup or a sqlite3 shell can): after its 1 s to finish, the daemon stops anyway
    and logs that the trail may miss its last rounds, where it used to log `stopped` alone."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path, trail = tmp_path / "oracled.toml", tmp_path / "audit.sqlite3"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url, 50, trail))
        service = Service(load_config(path), config_path=path)
        assert service.audit is not None
        task = asyncio.create_task(service.run())
        async with asyncio.timeout(10):
            while service.audit.stats.rounds < 2:  # noqa: ASYNC110 - the writer is a thread
                await asyncio.sleep(0.01)
        blocker = sqlite3.connect(trail, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # the writer's next batch waits for this
            await _round_times(service, 3)  # rounds submitted behind the lock
            with capture_logs() as logs:
                service.stop()
                async with asyncio.timeout(10):
                    await task
        finally:
            blocker.close()
        service.audit.close(10.0)  # let the writer finish before the directory goes
    held = [e for e in logs if e["event"].startswith("audit trail not finished")]
    assert [(e["log_level"], e["path"]) for e in held] == [("warning", str(trail))]
    assert [e["event"] for e in logs][-1] == "stopped"


class _StubbornSource(CrashingSource):
    """A source that, cancelled, holds on until `release` is set: a task that outlives the
    shutdown budget (a blocking call in a library, a bug)."""

    release = asyncio.Event()

    async def run(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await self.release.wait()
            raise


async def test_the_api_and_the_session_close_even_when_a_task_outlives_the_shutdown_budget() -> (
    None
):
    """A source task that does not end within the shutdown budget: `run()` still returns, the
    API no longer listens and the sources' HTTP session is closed (its sockets, and no
    `Unclosed client session` at exit). Both used to be closed only inside the budget, after
    every task had ended, so a task that outlived it left the API port open and the session
    too (found reading the stop while exploring it)."""

    def stubborn(sid: str, *args: Any) -> Source:
        return _StubbornSource(sid, *args)

    service = Service(_config("ws://127.0.0.1:9", "http://127.0.0.1:9"), source_factory=stubborn)
    service.shutdown_budget_s = 1.2  # 0.2 s for the tasks
    _StubbornSource.release = asyncio.Event()
    task = asyncio.create_task(service.run())
    try:
        await service.started.wait()
        session = service._session
        assert session is not None and not session.closed
        service.stop()
        async with asyncio.timeout(10):
            await task
        assert session.closed
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", service.bound_port), timeout=5).close()
    finally:
        _StubbornSource.release.set()
        left = [t for t in asyncio.all_tasks() if t.get_name().startswith("source:")]
        await asyncio.gather(*left, return_exceptions=True)


async def test_a_listen_address_that_cannot_be_bound_is_named_with_its_key() -> None:
    """`api.listen` on a port another socket holds: the start fails with an OSError (exit 1,
    restarted, as a port may be released) whose text names the key, the address and why, as a
    config problem would; a bare resolver error named neither. The OS's reason is said once, in
    words: no "[Errno 98]" before the key, and the code still on the error for a caller."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = parse_config(
            {
                "api": {"listen": f"127.0.0.1:{port}", "admin_token_env": None},
                "sources": {"a": {"type": "binance"}},
                "markets": [
                    {"symbol": "BTC/USDT", "min_sources": 1,
                     "sources": [{"source": "a", "pair": "BTC/USDT"}]}
                ],
            },
            env={},
        )  # fmt: skip
        with pytest.raises(OSError) as caught:
            await Service(cfg, source_factory=_factory).run()
    said = f"api.listen: cannot listen on 127.0.0.1:{port} (address already in use)"
    assert (str(caught.value), caught.value.errno) == (said, errno.EADDRINUSE)
