"""The daemon's chain set: a chain without an RPC URL is switched off with its sources, and a
reader that fails is restarted by its supervisor rather than leaving the chain unread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from chain_rig import Anvil, Deployed
from rpc_proxy import RpcProxy
from structlog.testing import capture_logs

from oracled.clock import ManualClock, SystemClock
from oracled.config import Config, parse_config
from oracled.model import Quote
from oracled.sources.evm.chainlink import ChainlinkSource
from oracled.sources.evm.runtime import ChainSet
from oracled.sources.stats import SourceStats

pytestmark = pytest.mark.asyncio(loop_scope="session")

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
    http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A node down at start is logged at the first failed start and then at most once a minute
    (the daemon's clock), with the number of failed starts since the last line (`failures`),
    as the pusher's start-up retries are; the lines say `component=chain` (the pusher's, of the
    same event, `component=push`), and the chain is read once the node answers. Before, every
    start wrote a line: seven in the first minute of its backoff (1 s doubling to 30 s), then
    one every 30 s for as long as the node stayed down."""
    proxy.mode = "error"
    cfg = config(proxy.url, snapshot.eth_proxy)
    clock = ManualClock(1_000_000)
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
