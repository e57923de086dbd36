"""OracleClient.watch_nats against a real nats-server on loopback that is down at first."""

from __future__ import annotations

import asyncio
import json
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


FLOOD = 20_000  # messages published in one burst: far past the limits below


async def test_a_flood_past_the_pending_limits_is_counted_said_once_and_shown_until_caught_up(
    tmp_path: Path,
) -> None:
    """Anyone who may publish on the bus floods a subject the client watches faster than it
    verifies. Past the subscription's pending limits the NATS library drops what arrives, as
    a slow consumer: each drop is counted in `nats_dropped`, the episode is said in one line
    (`client nats slow consumer`, no `client nats error`), and the market's view names the
    subscription in `lagging` while the price held stays. A new signed report accepted on an
    empty queue ends it (`client nats caught up`, with the number dropped). Under nats-py's
    default limits (512k messages, 128 MB per subscription) nothing would be dropped."""
    server = NatsServer(tmp_path / "nats", jetstream=False)
    await server.start()
    rounds, signer = Rounds(make_config()), RoundSigner(KEY, "test")
    first = signer.sign(rounds.step())
    now = [first.ts]
    client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: now[0])
    subject = price_subject("oracled", "BTC/USD")
    publisher = await nats.connect(server.url)

    async def deliver(envelope: bytes) -> None:
        before = client.accepted
        while client.accepted == before:
            await publisher.publish(subject, envelope)
            await asyncio.sleep(0.05)

    def dropped_now() -> int:
        return client.nats_dropped[subject]

    with capture_logs() as logs:
        watcher = asyncio.create_task(
            client.watch_nats(server.url, ["BTC/USD"], pending_msgs=64, pending_bytes=64 * 1024)
        )
        try:
            async with asyncio.timeout(SAFETY_S):
                await deliver(first.envelope(0))
                assert client.price("BTC/USD").lagging == ()
                refused = client.rejected["malformed"]
                for k in range(FLOOD):
                    await publisher.publish(subject, b"%d" % k)
                await publisher.flush()
                # Until each message of the flood is refused (not JSON) or dropped.
                while client.rejected["malformed"] - refused + dropped_now() < FLOOD:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                flooded = client.price("BTC/USD")
                dropped = client.nats_dropped[subject]
                second = signer.sign(rounds.step())
                now[0] = second.ts
                await deliver(second.envelope(0))
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await publisher.close()
            server.stop()
    assert dropped > 0
    assert flooded.lagging == (subject,)
    assert flooded.status == "active" and flooded.ts == first.ts  # held, and said to lag
    slow = [e for e in logs if e["event"] == "client nats slow consumer"]
    assert len(slow) == 1 and slow[0]["subject"] == subject
    assert slow[0]["log_level"] == "warning" and slow[0]["pending_limits"] == (64, 64 * 1024)
    assert not [e for e in logs if e["event"] == "client nats error"]
    (caught,) = [e for e in logs if e["event"] == "client nats caught up"]
    assert caught["subject"] == subject and caught["dropped"] == dropped
    view = client.price("BTC/USD")
    assert view.lagging == () and view.ts == second.ts


async def test_a_password_in_a_server_url_is_used_and_never_logged(tmp_path: Path) -> None:
    """The only way to give `watch_nats` a user and password is the server's URL
    (`nats://reader:<password>@host:port`). The client logs in with them and verifies prices,
    and the lines that name the servers (bound to every line of the watch: `client nats
    error` and `client nats disconnected` when the server goes) show `nats://***@host:port`.
    They showed the URL whole, the password in it."""
    password = "nats-pass-3c9b0e"
    server = NatsServer(
        tmp_path / "nats",
        jetstream=False,
        settings=f'authorization {{ users = [ {{ user: reader, password: "{password}" }} ] }}',
    )
    await server.start()
    signed = RoundSigner(KEY, "test").sign(Rounds(make_config()).step())
    client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: signed.ts)
    url = f"nats://reader:{password}@127.0.0.1:{server.port}"
    with capture_logs() as logs:
        watcher = asyncio.create_task(client.watch_nats(url, ["BTC/USD"]))
        try:
            async with asyncio.timeout(SAFETY_S):
                publisher = await nats.connect(url)
                while not client.accepted:
                    await publisher.publish(price_subject("oracled", "BTC/USD"), signed.envelope(0))
                    await asyncio.sleep(0.05)
                await publisher.close()
                server.stop()
                while not any(e["event"] == "client nats disconnected" for e in logs):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            server.stop()
    named = [e["servers"] for e in logs if "servers" in e]
    assert named and all(s == [f"nats://***@127.0.0.1:{server.port}"] for s in named), named
    assert password not in json.dumps(logs)
