"""OracleClient.watch_nats against a real nats-server on loopback that is down at first."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import nats
import pytest
from publish_rig import NatsServer, Rounds, make_config
from structlog.testing import capture_logs

from oracled.client import OracleClient
from oracled.publish.nats import price_subject
from oracled.publish.signer import RoundSigner, SigningKey

KEY = SigningKey.from_hex("0x" + "55" * 32)
SAFETY_S = 20.0  # guards against hangs only


async def test_an_unreachable_server_is_one_log_line_per_attempt_not_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While NATS is down the client says so in one structured warning per failed attempt
    (the NATS library's own error log, a full traceback every half second, stays silent),
    and once the server listens it connects and accepts signed prices."""
    server = NatsServer(tmp_path / "nats")  # the port is chosen; nothing listens yet
    signed = RoundSigner(KEY, "test").sign(Rounds(make_config()).step())
    client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: signed.ts)
    caplog.set_level(logging.DEBUG, logger="nats")
    with capture_logs() as logs:
        watcher = asyncio.create_task(client.watch_nats(server.url, ["BTC/USD"]))
        try:
            async with asyncio.timeout(SAFETY_S):
                while not any(e["event"] == "client nats error" for e in logs):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                await server.start()
                publisher = await nats.connect(server.url)
                while not client.accepted:
                    await publisher.publish(price_subject("oracled", "BTC/USD"), signed.envelope(0))
                    await asyncio.sleep(0.05)
                await publisher.close()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            server.stop()
    errors = [e for e in logs if e["event"] == "client nats error"]
    assert errors and all(e["log_level"] == "warning" and e["error"] for e in errors)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("nats")] == []
    assert client.price("BTC/USD").status == "active"


# nats-py's defaults (a ping every 2 minutes, 2 outstanding) take about 6 minutes to notice.
NOTICE_BOUND_S = 15.0


async def test_a_frozen_server_is_dropped_within_seconds_and_prices_flow_again_on_thaw(
    tmp_path: Path,
) -> None:
    """A server frozen with its socket open (SIGSTOP) is noticed by the client's own pings and
    the connection dropped, long before nats-py's default pings would; once the server answers
    again the client reconnects on its own and accepts the next signed price."""
    server = NatsServer(tmp_path / "nats")
    await server.start()
    rounds, signer = Rounds(make_config()), RoundSigner(KEY, "test")
    first = signer.sign(rounds.step())
    now = [first.ts]
    client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: now[0])

    def said(event: str) -> bool:
        return any(e["event"] == event for e in logs)

    async def deliver(envelope: bytes) -> None:
        """Publish from a fresh connection until the client has accepted one more report."""
        before = client.accepted
        publisher = await nats.connect(server.url)
        try:
            while client.accepted == before:
                await publisher.publish(price_subject("oracled", "BTC/USD"), envelope)
                await asyncio.sleep(0.05)
        finally:
            await publisher.close()

    with capture_logs() as logs:
        watcher = asyncio.create_task(client.watch_nats(server.url, ["BTC/USD"]))
        try:
            async with asyncio.timeout(SAFETY_S):
                await deliver(first.envelope(0))
            server.pause()
            async with asyncio.timeout(NOTICE_BOUND_S):
                while not said("client nats disconnected"):  # noqa: ASYNC110 - a log line
                    await asyncio.sleep(0.05)
            server.resume()
            second = signer.sign(rounds.step())
            now[0] = second.ts
            async with asyncio.timeout(SAFETY_S):
                while not said("client nats reconnected"):  # noqa: ASYNC110 - a log line
                    await asyncio.sleep(0.05)
                await deliver(second.envelope(0))
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            server.stop()
    assert client.price("BTC/USD").ts == second.ts
