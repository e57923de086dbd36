"""The daemon's chain set: a chain without an RPC URL is switched off with its sources, a chain
is read only while a source reads it (a reload starts and stops its reader), and a reader that
fails is restarted by its supervisor rather than leaving the chain unread."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from chain_rig import Anvil, Chain, Deployed
from prometheus_client.parser import text_string_to_metric_families
from rpc_proxy import RpcProxy
from structlog.testing import capture_logs
from ws_relay import WsRelay

from oracled.clock import ManualClock, SystemClock
from oracled.config import Config, load_config, parse_config
from oracled.model import Quote
from oracled.service import Service
from oracled.sim import BinanceSim
from oracled.sources.evm.chainlink import ChainlinkSource
from oracled.sources.evm.runtime import ChainSet
from oracled.sources.stats import SourceStats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))  # the daemon's rig
from one_venue import service_running

pytestmark = pytest.mark.asyncio(loop_scope="session")

SAFETY_S = 60.0  # a hang guard, not a timing claim

DARK_ENV = "ORACLED_TEST_DARK_CHAIN_RPC_URLS"


def config(url: str, eth_proxy: str) -> Config:
    """A lit chain (`local`) and a dark one (its URL variable unset), a Chainlink source on
    each, and an off-chain venue."""
    feed = {"ETH/USD": {"address": eth_proxy, "heartbeat_s": 3600}}
    data = {
        "chains": {
            "local": {"chain_id": 31337, "rpc_urls": [url], "poll_interval_s": 0.02},
            "dark": {"chain_id": 10, "rpc_urls_env": DARK_ENV},
        },
        "sources": {
            "cl": {"type": "chainlink", "chain": "local", "feeds": feed},
            "op": {"type": "chainlink", "chain": "dark", "feeds": feed},
            "v": {"type": "binance"},
        },
        "markets": [
            {
                "symbol": "ETH/USD",
                "min_sources": 1,
                "sources": [{"source": s, "pair": "ETH/USD"} for s in ("cl", "op", "v")],
            }
        ],
    }
    return parse_config(data, env={})


async def until(done: Callable[[], bool]) -> None:
    """Wait for a state of the tasks running in the background (the bound only turns a hang
    into a failure)."""
    async with asyncio.timeout(10):
        while not done():  # noqa: ASYNC110 - log lines and quotes lists have no event
            await asyncio.sleep(0.01)


def source(cfg: Config, sid: str, http: aiohttp.ClientSession, emit: Callable[[Quote], None]
           ) -> ChainlinkSource:  # fmt: skip
    return ChainlinkSource(sid, cfg.sources[sid], [("ETH/USD", "spot")], emit, SystemClock(),
                           http, SourceStats(sid))  # fmt: skip


async def test_a_chain_without_an_rpc_url_is_switched_off_with_its_sources(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed
) -> None:
    """Only chains with URLs get a reader; the dark one is named once in the log with the
    variable to set and the sources it takes with it, and those sources are not usable (and
    get no reader), while the lit chain's sources and the venues are."""
    cfg = config(anvil.url, snapshot.eth_proxy)
    with capture_logs() as logs:
        chains = ChainSet(cfg, http, SystemClock())
    assert list(chains.readers) == ["local"]
    (dark,) = [e for e in logs if e["event"] == "chain disabled: no RPC URL"]
    assert (dark["chain"], dark["set"], dark["sources"]) == ("dark", f"${DARK_ENV}", ["op"])
    assert [chains.usable(cfg.sources[s]) for s in ("cl", "op", "v")] == [True, False, True]
    lit, unlit = source(cfg, "cl", http, print), source(cfg, "op", http, print)
    chains.attach(lit)
    chains.attach(unlit)
    assert lit.reader is chains.readers["local"] and unlit.reader is None
    assert chains.stats() == [chains.readers["local"].stats]


async def test_a_chain_gets_a_reader_only_for_a_source_that_reads_it(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed
) -> None:
    """Of four chains with URLs, only the one an enabled source of a market reads gets a reader
    at start: not one named only by the pusher's `[push]`, nor one whose source is disabled, nor
    one whose source no market uses (each reader polls its chain). Their sources are usable all
    the same, and `read` starts the reader of such a chain once, when a reload starts its first
    source; a venue and a chain without URLs get none."""
    feed = {"ETH/USD": {"address": snapshot.eth_proxy, "heartbeat_s": 3600}}
    lit = {"chain_id": 31337, "rpc_urls": [anvil.url], "poll_interval_s": 0.02}
    data = {
        "chains": {
            **dict.fromkeys(("read", "pushed", "off", "unused"), lit),
            "dark": {"chain_id": 10, "rpc_urls_env": DARK_ENV},
        },
        "push": {
            "enabled": True,
            "chain": "pushed",
            "contract": snapshot.eth_proxy,
            "key_env": "UNUSED",
        },
        "sources": {
            "cl": {"type": "chainlink", "chain": "read", "feeds": feed},
            "cl_off": {"type": "chainlink", "chain": "off", "feeds": feed, "enabled": False},
            "cl_unused": {"type": "chainlink", "chain": "unused", "feeds": feed},
            "op": {"type": "chainlink", "chain": "dark", "feeds": feed},
            "v": {"type": "binance"},
        },
        "markets": [
            {
                "symbol": "ETH/USD",
                "min_sources": 1,
                "sources": [{"source": s, "pair": "ETH/USD"} for s in ("cl", "cl_off", "op", "v")],
            }
        ],
    }
    cfg = parse_config(data, env={})
    with capture_logs() as logs:
        chains = ChainSet(cfg, http, SystemClock())
    assert list(chains.readers) == ["read"]
    assert [e["chain"] for e in logs if e["event"] == "chain enabled"] == ["read"]
    usable = [chains.usable(cfg.sources[s]) for s in ("cl", "cl_off", "cl_unused", "op", "v")]
    assert usable == [True, True, True, False, True]
    tasks = chains.start()
    try:
        assert [t.get_name() for t in tasks] == ["chain:read"]
        assert chains.read(cfg.sources["cl"]) is None  # started already
        assert chains.read(cfg.sources["op"]) is None and chains.read(cfg.sources["v"]) is None
        with capture_logs() as logs:
            late = chains.read(cfg.sources["cl_off"])
            assert late is not None
            tasks.append(late)
            assert late.get_name() == "chain:off" and chains.read(cfg.sources["cl_off"]) is None
        assert list(chains.readers) == ["read", "off"] and chains.start() == []
        assert [e["chain"] for e in logs if e["event"] == "chain enabled"] == ["off"]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_release_stops_the_reader_of_a_chain_that_no_running_source_reads(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed
) -> None:
    """Given the sources still running, `release` stops the reader of each chain none of them
    reads (a reload stopped its last source): its task cancelled and awaited, the reader and
    its series gone, one log line. A chain still read keeps its reader and task. `read` then
    builds a new reader for the chain's next source, which reads blocks again."""
    feed = {"ETH/USD": {"address": snapshot.eth_proxy, "heartbeat_s": 3600}}
    lit = {"chain_id": 31337, "rpc_urls": [anvil.url], "poll_interval_s": 0.02}
    cfg = parse_config(
        {
            "chains": dict.fromkeys(("kept", "left"), lit),
            "sources": {
                "ck": {"type": "chainlink", "chain": "kept", "feeds": feed},
                "cl": {"type": "chainlink", "chain": "left", "feeds": feed},
                "v": {"type": "binance"},
            },
            "markets": [
                {
                    "symbol": "ETH/USD",
                    "min_sources": 1,
                    "sources": [{"source": s, "pair": "ETH/USD"} for s in ("ck", "cl", "v")],
                }
            ],
        },
        env={},
    )
    chains = ChainSet(cfg, http, SystemClock())
    kept, left = chains.start()
    tasks = [kept, left]
    try:
        old = chains.readers["left"]
        await until(lambda: all(r.stats.blocks > 0 for r in chains.readers.values()))
        with capture_logs() as logs:
            stopped = await chains.release([cfg.sources["ck"], cfg.sources["v"]])
        assert stopped == ["left"]
        assert left.cancelled() and not kept.done()
        assert list(chains.readers) == ["kept"]
        assert chains.stats() == [chains.readers["kept"].stats]
        assert [(e["event"], e["chain"]) for e in logs] == [
            ("chain reader stopped: no source reads it", "left")
        ]
        assert await chains.release([cfg.sources["ck"]]) == []  # nothing more to stop
        again = chains.read(cfg.sources["cl"])
        assert again is not None and again.get_name() == "chain:left"
        tasks.append(again)
        assert chains.readers["left"] is not old and chains.read(cfg.sources["cl"]) is None
        await until(lambda: chains.readers["left"].stats.blocks > 0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


HEADS_ENV = "ORACLED_TEST_HEADS_URL"


def _heads_env_config(anvil: Anvil, snapshot: Deployed) -> dict[str, Any]:
    """One Chainlink feed on the local chain, whose newHeads URL is `HEADS_ENV`'s."""
    feed = {"ETH/USD": {"address": snapshot.eth_proxy, "heartbeat_s": 3600}}
    return {
        "chains": {"local": {"chain_id": 31337, "rpc_urls": [anvil.url], "ws_url_env": HEADS_ENV}},
        "sources": {"cl": {"type": "chainlink", "chain": "local", "feeds": feed}},
        "markets": [
            {
                "symbol": "ETH/USD",
                "min_sources": 1,
                "sources": [{"source": "cl", "pair": "ETH/USD"}],
            }
        ],
    }


async def test_a_chains_websocket_url_may_come_from_the_environment(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed
) -> None:
    """A provider's WebSocket URL carries its key as its RPC URLs do, so `ws_url_env` names
    the variable that holds it, and the reader follows newHeads there with no URL in the file
    (`chain enabled` says `newHeads`). Before, the key had to be written in the file: there was
    no such variable (`ws_url_env` was refused as an unknown key)."""
    relay = await WsRelay(anvil.ws_url, http).start()
    data = _heads_env_config(anvil, snapshot)
    cfg = parse_config(data, env={HEADS_ENV: relay.url})
    assert cfg.chains["local"].ws_url is None  # nothing of it in the file's values
    try:
        with capture_logs() as logs:
            chains = ChainSet(cfg, http, SystemClock())
            tasks = chains.start()
            try:
                await until(lambda: relay.following == 1)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await relay.stop()
    assert [e["blocks"] for e in logs if e["event"] == "chain enabled"] == ["newHeads"]


async def test_a_chains_websocket_url_variable_unset_is_warned_of_naming_the_variable(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed
) -> None:
    """`ws_url_env` names a variable that is unset (and no `ws_url` stands in): the reader
    polls, and a warning says so naming the variable to set, as an unset `rpc_urls_env` is
    said. Set, there is no such warning, and no line carries its value. Before, only the info
    line `chain enabled` said `polling`."""
    data = _heads_env_config(anvil, snapshot)
    warned = "chain polling: no WebSocket URL"
    with capture_logs() as logs:
        ChainSet(parse_config(data, env={}), http, SystemClock())
    (polling,) = [e for e in logs if e["event"] == warned]
    assert (polling["log_level"], polling["chain"], polling["set"]) == (
        "warning",
        "local",
        f"${HEADS_ENV}",
    )
    assert [e["blocks"] for e in logs if e["event"] == "chain enabled"] == ["polling"]
    with capture_logs() as logs:
        ChainSet(parse_config(data, env={HEADS_ENV: anvil.ws_url}), http, SystemClock())
    assert not [e for e in logs if e["event"] == warned]
    assert [e["blocks"] for e in logs if e["event"] == "chain enabled"] == ["newHeads"]
    assert anvil.ws_url not in repr(logs)


def _daemon_toml(anvil: Anvil, relay: WsRelay, venue: BinanceSim, proxy: str, cl: bool) -> str:
    """BTC/USDT from a venue; with `cl`, ETH/USD from a Chainlink source on the one chain,
    whose reader follows newHeads through `relay`."""
    text = f"""
[oracle]
round_interval_ms = 50

[api]
listen = "127.0.0.1:0"
admin_token_env = "ORACLED_TEST_NO_ADMIN_TOKEN"

[chains.local]
chain_id = 31337
rpc_urls = ["{anvil.url}"]
ws_url = "{relay.url}"
poll_interval_s = 0.05

[sources.v]
type = "binance"
ws_url = "{venue.ws_url}"
rest_url = "{venue.rest_url}"

[[markets]]
symbol = "BTC/USDT"
min_sources = 1
sources = [{{ source = "v", pair = "BTC/USDT" }}]
"""
    if cl:
        text += f"""
[sources.cl]
type = "chainlink"
chain = "local"
feeds = {{ "ETH/USD" = {{ address = "{proxy}", heartbeat_s = 3600 }} }}

[[markets]]
symbol = "ETH/USD"
min_sources = 1
sources = [{{ source = "cl", pair = "ETH/USD" }}]
"""
    return text


def _chain_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "chain:local"]


def _chain_labels(service: Service) -> set[str]:
    """The `chain` label of every series /metrics would show now."""
    text = service.metrics.render()[0].decode()
    return {
        s.labels["chain"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "chain" in s.labels
    }


async def test_a_reload_that_removes_a_chains_last_source_stops_its_reader(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed, tmp_path: Path
) -> None:
    """A daemon reading a Chainlink feed over newHeads, whose reload removes that source (the
    chain's only one): the reload returns with the reader stopped, its task gone, its newHeads
    socket closed, no chain series in /metrics. A reload that adds the source back starts a new
    reader, which subscribes again, and the source quotes through it. Before, the reader kept
    following the chain for no feed until the daemon stopped."""
    relay = await WsRelay(anvil.ws_url, http).start()
    path = tmp_path / "oracled.toml"
    try:
        async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as venue:
            toml = partial(_daemon_toml, anvil, relay, venue, snapshot.eth_proxy)
            path.write_text(toml(cl=True))
            service = Service(load_config(path), config_path=path)
            with capture_logs() as logs:
                async with service_running(service), asyncio.timeout(SAFETY_S):
                    await until(lambda: "cl" in service.source_stats)
                    await until(lambda: service.source_stats["cl"].quotes > 0)
                    await until(lambda: relay.following == 1)
                    assert service.chains is not None and len(_chain_tasks()) == 1
                    first = service.chains.readers["local"]
                    assert _chain_labels(service) == {"local"}

                    path.write_text(toml(cl=False))
                    changes = await service.reload("test")
                    assert changes["sources_restarted"] == ["cl"]
                    assert service.chains.readers == {} and _chain_tasks() == []
                    assert _chain_labels(service) == set()
                    await until(lambda: relay.open == 0)  # the client closed its socket

                    path.write_text(toml(cl=True))
                    await service.reload("test")
                    await until(lambda: "cl" in service.source_stats)
                    await until(lambda: service.source_stats["cl"].quotes > 0)
                    await until(lambda: relay.following == 2)
                    assert list(service.chains.readers) == ["local"]
                    assert service.chains.readers["local"] is not first
                    assert len(_chain_tasks()) == 1 and relay.open == 1
                    assert _chain_labels(service) == {"local"}
    finally:
        await relay.stop()
    stopped = [e for e in logs if e["event"] == "chain reader stopped: no source reads it"]
    assert [e["chain"] for e in stopped] == ["local"]
    assert [e["chain"] for e in logs if e["event"] == "chain enabled"] == ["local", "local"]


async def test_a_chain_unreachable_at_start_is_retried_without_a_traceback(
    http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A node that cannot say its chain id at start (it answers HTTP errors) is an operational
    condition, not a bug: the supervisor logs `chain unreachable; retrying` as a warning with
    the error and no traceback, counts the restart, and once the node answers the chain is
    read. It used to log `chain reader crashed; restarting` with a traceback, which the runbook
    tells operators to file as a bug (found starting a daemon on an endpoint that was down)."""
    proxy.mode = "error"
    cfg = config(proxy.url, snapshot.eth_proxy)
    quotes: list[Quote] = []
    chains = ChainSet(cfg, http, SystemClock())
    cl = source(cfg, "cl", http, quotes.append)
    chains.attach(cl)
    with capture_logs() as logs:
        tasks = [*chains.start(), asyncio.create_task(cl.run())]
        try:
            await until(lambda: any(e["event"] == "chain unreachable; retrying" for e in logs))
            proxy.mode = "pass"
            await until(lambda: bool(quotes))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert quotes[0].price == 3000.0
    retried = [e for e in logs if e["event"] == "chain unreachable; retrying"]
    assert [(e["chain"], e["log_level"]) for e in retried[:1]] == [("local", "warning")]
    assert "eth_chainId" in retried[0]["error"] and "delay_s" in retried[0]
    assert retried[0]["component"] == "chain" and retried[0]["failures"] == 1
    assert not any("exc_info" in e for e in logs)
    assert not any(e["event"] == "chain reader crashed; restarting" for e in logs)
    assert chains.readers["local"].stats.restarts == len(retried)


async def test_a_start_that_fails_again_and_again_is_logged_once_a_minute_with_the_count(
    http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A node down at start is logged at the first failed start and then at most once a minute
    (the daemon's clock), with the number of failed starts since the last line (`failures`),
    as the pusher's start-up retries are; the lines say `component=chain` (the pusher's, of the
    same event, `component=push`), and the chain is read once the node answers. Before, every
    start wrote a line: seven in the first minute of its backoff (1 s doubling to 30 s), then
    one every 30 s for as long as the node stayed down."""
    proxy.mode = "error"
    cfg = config(proxy.url, snapshot.eth_proxy)
    clock = ManualClock(await chain.timestamp() * 1000)  # the node's blocks are current by it
    quotes: list[Quote] = []
    chains = ChainSet(cfg, http, clock)
    reader = chains.readers["local"]
    cl = source(cfg, "cl", http, quotes.append)
    chains.attach(cl)

    def lines() -> list[dict[str, Any]]:
        return [e for e in logs if e["event"] == "chain unreachable; retrying"]

    with capture_logs() as logs:
        tasks = [*chains.start(), asyncio.create_task(cl.run())]
        try:
            await until(lambda: reader.stats.restarts >= 2)  # two starts, 1 s apart
            assert [e["failures"] for e in lines()] == [1]
            clock.advance(60_000)
            await until(lambda: len(lines()) == 2)  # the next failed start, 2 s later
            proxy.mode = "pass"  # before the next start, 4 s later
            await until(lambda: bool(quotes))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    first, second = lines()
    # Every failed start is in a line's count: the first alone, the second with those held.
    assert (first["failures"], second["failures"]) == (1, reader.stats.restarts - 1)
    assert second["failures"] >= 2 and second["log_level"] == "warning"
    assert {first["component"], second["component"]} == {"chain"}
    assert "eth_chainId" in second["error"] and second["delay_s"] > first["delay_s"]


async def test_a_chain_reader_refused_again_and_again_is_logged_once_a_minute(
    http: aiohttp.ClientSession, snapshot: Deployed, anvil: Anvil
) -> None:
    """An endpoint of another chain refuses every start: one error line, then the refused
    starts held until a minute has passed and told in the next line's `failures`."""
    cfg = config(anvil.url, snapshot.eth_proxy)
    chain = cfg.chains["local"].model_copy(update={"chain_id": 1})
    cfg = cfg.model_copy(update={"chains": {**cfg.chains, "local": chain}})
    clock = ManualClock(1_000_000)
    chains = ChainSet(cfg, http, clock)
    reader = chains.readers["local"]

    def lines() -> list[dict[str, Any]]:
        return [e for e in logs if e["event"] == "chain reader refused; retrying"]

    with capture_logs() as logs:
        tasks = chains.start()
        try:
            await until(lambda: reader.stats.restarts >= 2)
            assert [e["failures"] for e in lines()] == [1]
            clock.advance(60_000)
            await until(lambda: len(lines()) == 2)
            held = reader.stats.restarts
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert [(e["log_level"], e["failures"]) for e in lines()] == [("error", 1), ("error", held - 1)]
    assert held >= 3 and "is chain 31337, not 1" in lines()[1]["error"]


async def test_a_rate_limited_start_is_waited_out_not_restarted(
    http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """The only URL answers the start's eth_chainId with QuickNode's per-second limit: the
    supervised start rests it (1 s), asks again and reads the chain, with the limit counted
    `rate_limited`, no `chain unreachable`, and no restart counted. Before, the start failed:
    counted `node`, logged `chain unreachable; retrying` and restarted."""
    proxy.script = ["limit_32007"]
    cfg = config(proxy.url, snapshot.eth_proxy)
    quotes: list[Quote] = []
    chains = ChainSet(cfg, http, SystemClock())
    cl = source(cfg, "cl", http, quotes.append)
    chains.attach(cl)
    with capture_logs() as logs:
        tasks = [*chains.start(), asyncio.create_task(cl.run())]
        try:
            await until(lambda: bool(quotes))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    reader = chains.readers["local"]
    assert quotes[0].price == 3000.0
    assert reader.stats.restarts == 0
    assert reader.rpc.stats[0].by_kind == {"rate_limited": 1}
    assert not any(e["event"] == "chain unreachable; retrying" for e in logs)
    assert [e["event"] for e in logs if "rate_limited" in e.get("error", "")] == [
        "chain id unknown"
    ]


async def test_an_endpoint_of_another_chain_is_an_error_without_a_traceback(
    http: aiohttp.ClientSession, snapshot: Deployed, anvil: Anvil
) -> None:
    """An endpoint that serves another chain (a misconfigured URL) stops the reader's start:
    logged as an error naming the endpoint and both chain ids, without a traceback, counted,
    and retried with backoff; nothing of the chain is read."""
    cfg = config(anvil.url, snapshot.eth_proxy)
    chain = cfg.chains["local"].model_copy(update={"chain_id": 1})
    cfg = cfg.model_copy(update={"chains": {**cfg.chains, "local": chain}})
    chains = ChainSet(cfg, http, SystemClock())
    with capture_logs() as logs:
        tasks = chains.start()
        try:
            await until(lambda: chains.readers["local"].stats.restarts >= 1)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    refused = [e for e in logs if e["event"] == "chain reader refused; retrying"]
    assert [(e["chain"], e["log_level"]) for e in refused] == [("local", "error")]
    assert "is chain 31337, not 1" in refused[0]["error"]
    assert not any("exc_info" in e for e in logs)
    assert chains.readers["local"].stats.blocks == 0
