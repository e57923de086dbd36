"""The daemon dials every URL of its config by host name as well as by address: a venue's
stream and its REST fallback, a chain's JSON-RPC endpoint and the NATS bus, all given as
`localhost` here, resolved as in production.

Every other test names 127.0.0.1, which no resolver is asked about: a resolver that resolves
nothing (aiodns 3.x beside pycares 5 failed every lookup) would pass them all and leave a
deployment, whose URLs are host names, without a single source. The venues and the chain are
reached through the daemon's one HTTP session, whose resolver is c-ares (aiodns; the test
fails if aiohttp fell back to its thread resolver); the bus through nats-py, which asks the
event loop's `getaddrinfo` (the system resolver). c-ares answers `localhost` with ::1 first
(it adds ::1 to `localhost` whatever /etc/hosts says), while the simulators, anvil and
nats-server listen on 127.0.0.1 alone: the daemon reaches them as a deployment would, by
trying the next address when ::1 refuses the connection (docs/config.md, *Host names*).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp.resolver import AsyncResolver
from chain_rig import Anvil, Deployed

from oracled.config import parse_config
from oracled.service import Service
from oracled.sim import BinanceSim

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "publish"))  # the bus's rig
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))  # the daemon's
from one_venue import service_running, signing_table
from publish_rig import NatsServer

pytestmark = pytest.mark.asyncio(loop_scope="session")

SAFETY_S = 30.0  # a hang guard, not a timing claim


def by_name(url: str) -> str:
    """`url` with its loopback address given as the host name `localhost`."""
    assert "127.0.0.1" in url, url
    return url.replace("127.0.0.1", "localhost", 1)


async def until(done: Callable[[], bool]) -> None:
    while not done():  # noqa: ASYNC110 - counters of the daemon's tasks, no event to await
        await asyncio.sleep(0.02)


async def test_the_daemon_reaches_venue_rest_chain_and_bus_by_host_name(
    anvil: Anvil, snapshot: Deployed, tmp_path: Path
) -> None:
    """With every URL naming `localhost`: the daemon's HTTP session resolves with c-ares
    (`AsyncResolver`, which gives 127.0.0.1 among its answers); the venue's stream delivers
    quotes, and once its handshakes are refused and its connection dropped, so do REST polls;
    the chain's reader quotes the Chainlink feed through the JSON-RPC URL; the NATS sink
    connects and publishes signed rounds."""
    server = NatsServer(tmp_path / "nats", jetstream=False)
    await server.start()
    _, signing = signing_table(tmp_path, tmp_path / "signing-lease.json")
    try:
        async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
            cfg = parse_config(
                {
                    "oracle": {"round_interval_ms": 50},
                    "api": {"listen": "127.0.0.1:0", "admin_token_env": None},
                    "signing": signing,
                    "nats": {"enabled": True, "servers": [by_name(server.url)]},
                    "chains": {
                        "local": {
                            "chain_id": 31337,
                            "rpc_urls": [by_name(anvil.url)],
                            "poll_interval_s": 0.05,
                        }
                    },
                    "sources": {
                        "v": {
                            "type": "binance",
                            "ws_url": by_name(sim.ws_url),
                            "rest_url": by_name(sim.rest_url),
                            "rest_poll_interval_s": 0.2,
                            "reconnect_max_s": 1.0,
                        },
                        "cl": {
                            "type": "chainlink",
                            "chain": "local",
                            "feeds": {
                                "ETH/USD": {"address": snapshot.eth_proxy, "heartbeat_s": 3600}
                            },
                        },
                    },
                    "markets": [
                        {
                            "symbol": "BTC/USDT",
                            "min_sources": 1,
                            "sources": [{"source": "v", "pair": "BTC/USDT"}],
                        },
                        {
                            "symbol": "ETH/USD",
                            "min_sources": 1,
                            "sources": [{"source": "cl", "pair": "ETH/USD"}],
                        },
                    ],
                },
                env={},
            )
            service = Service(cfg)
            venue, chain = service.source_stats["v"], service.source_stats["cl"]
            async with service_running(service), asyncio.timeout(SAFETY_S):
                await service.started.wait()
                connector = service._session.connector if service._session else None
                assert connector is not None
                resolver = connector._resolver  # aiohttp names no public way to it
                assert type(resolver) is AsyncResolver

                await until(lambda: venue.quotes > 0 and sim.stats.connections > 0)
                await until(lambda: chain.quotes > 0)
                sink = service.nats
                assert sink is not None
                await until(lambda: sink.stats.connected and sink.stats.published > 0)

                sim.ws_enabled = False  # the stream is refused: the source polls REST
                sim.disconnect()
                polls = sim.stats.rest_requests
                await until(lambda: sim.stats.rest_requests > polls)
                streamed = venue.quotes  # from here on, quotes come by REST alone
                await until(lambda: venue.quotes > streamed)
                # Among its answers, the address the servers listen on (c-ares gives ::1 first:
                # refused, and the next one tried).
                answers = await resolver.resolve("localhost", sim.port, socket.AF_UNSPEC)
                assert "127.0.0.1" in [a["host"] for a in answers]
    finally:
        server.stop()
