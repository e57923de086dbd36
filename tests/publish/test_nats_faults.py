"""The NATS sink and the client's NATS watch under a hostile or failing bus.

A real nats-server on loopback, reached through `NatsRelay`, a TCP relay the test breaks: the
connection cut, a path that stops moving bytes with both sockets open, a server that answers
with `-ERR`. Each case says what must hold and is bounded by `until` (no timing asserts).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats_relay import NatsRelay
from publish_rig import NatsServer, Rounds, make_config, until
from structlog.testing import capture_logs

from oracled.client import OracleClient
from oracled.config import NatsConfig
from oracled.publish.nats import NatsSink
from oracled.publish.signer import RoundSigner, SigningKey

KEY = SigningKey.from_hex("0x" + "33" * 32)
SAFETY_S = 15.0  # guards against hangs only


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    srv = NatsServer(tmp_path / "nats", jetstream=False)
    await srv.start()
    yield srv
    srv.stop()


@pytest.fixture
async def relay(server: NatsServer) -> AsyncIterator[NatsRelay]:
    async with NatsRelay(server.port) as relay:
        yield relay


async def running(sink: NatsSink) -> asyncio.Task[None]:
    task = asyncio.create_task(sink.run(), name="nats-sink")
    async with asyncio.timeout(SAFETY_S):
        await sink.ready.wait()
    return task


async def stop(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_the_client_connects_again_after_the_server_ends_its_connection_with_an_error(
    server: NatsServer, relay: NatsRelay
) -> None:
    """A server that ends the consumer's connection with `-ERR` (here `Authorization
    Violation`, as after a reload that revoked and then restored its user) makes nats-py close
    the client for good. `watch_nats` connects anew, says so once, and verifies the rounds
    published after. Before, it waited on the closed connection for ever: its prices only aged
    out, and nothing came again once the server would have let it back in."""
    sink = NatsSink(NatsConfig(enabled=True, servers=(server.url,)))
    rounds = Rounds(make_config())
    signer = RoundSigner(KEY, "test")
    newest = [0]
    client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: newest[0])
    task = await running(sink)
    watcher = asyncio.create_task(client.watch_nats(relay.url, ["BTC/USD"], reconnect_s=0.05))

    def seen_after(ts: int) -> bool:
        """Publish the next round; True once the client verified one newer than `ts`."""
        signed = signer.sign(rounds.step())
        newest[0] = signed.ts
        sink.submit(signed)
        view = client.price("BTC/USD")
        return view.status == "active" and view.ts is not None and view.ts > ts

    try:
        await until(lambda: seen_after(0), "a first round verified")
        with capture_logs() as logs:
            assert relay.open == 1
            relay.inject(b"-ERR 'Authorization Violation'\r\n")
            await until(lambda: relay.accepted == 2, "the client connecting again")
            cut_at = newest[0]
            await until(lambda: seen_after(cut_at), "a round published after it verified")
        again = "client nats closed by the server; connecting again"
        assert [e["log_level"] for e in logs if e["event"] == again] == ["warning"]
        assert not watcher.done()
    finally:
        await stop(watcher, task)
