"""The NATS sink and the client's NATS watch under a hostile or failing bus.

A real nats-server on loopback, reached through `NatsRelay`, a TCP relay the test breaks: the
connection cut, a path that stops moving bytes with both sockets open, a server that answers
with `-ERR`. Each case says what must hold and is bounded by `until` (no timing asserts).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import DEFAULT_PENDING_SIZE
from nats_relay import NatsRelay
from publish_rig import NatsServer, Rounds, make_config, subscribed, until
from structlog.testing import capture_logs

from oracled.client import OracleClient
from oracled.config import NatsConfig
from oracled.publish.nats import NatsSink
from oracled.publish.nats_conn import MAX_ANNOUNCED_SERVERS
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


def announcing(urls: list[Any]) -> bytes:
    """A server's INFO line naming `urls` as the cluster's other nodes (`connect_urls`)."""
    info = msgspec.json.encode({"server_id": "announcer", "connect_urls": urls})
    return b"INFO " + info + b"\r\n"


async def running(sink: NatsSink) -> asyncio.Task[None]:
    task = asyncio.create_task(sink.run(), name="nats-sink")
    async with asyncio.timeout(SAFETY_S):
        await sink.ready.wait()
    return task


async def stop(*tasks: asyncio.Task[Any]) -> None:
    """Cancel `tasks` and wait for them (bounded: a task that ignores its cancellation fails
    the test instead of hanging it).

    Cancelled again while still running, every 0.1 s: under Python 3.11, `asyncio.wait_for`
    returns the result of a future that completes as the cancellation arrives and drops the
    cancellation, and nats-py opens each connection through it. A relay that accepts and closes
    at once makes that race likely: a watcher cancelled right then went on retrying until the
    bound (seen once in a CI run of the test below). The NATS clients now end on one
    cancellation (the `test_one_cancellation_...` tests cancel once): the repetition keeps a
    test that fails from leaving its tasks running."""
    async with asyncio.timeout(SAFETY_S):
        while pending := [task for task in tasks if not task.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.1)
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


async def test_a_stalled_path_under_large_rounds_is_dropped_and_a_new_connection_made(
    server: NatsServer, relay: NatsRelay
) -> None:
    """Rounds of 1,000 markets (1.3 MB each) through a path that stops moving bytes with both
    sockets open. nats-py's pings go unanswered and it gives the connection up: the sink throws
    it away with what it had not written (counted `lost`), connects again (the relay lets new
    connections through) and a round submitted then reaches a subscriber while the old path is
    still stalled. Before, nats-py closed the connection politely and waited for the stalled peer
    to take the bytes it had written, which it never did: no new connection was made, the sink
    went on showing itself connected, and whenever the path came back those rounds went out late,
    after newer ones (seen: rounds 4 to 12 arriving after round 35)."""
    markets = {f"C{i:04d}/USD": 10.0 + i for i in range(1_000)}
    rounds = Rounds(make_config(markets), markets)
    signer = RoundSigner(KEY, "test")
    first, during, fresh = (signer.sign(rounds.step()) for _ in range(3))
    sink = NatsSink(NatsConfig(enabled=True, servers=(relay.url,)))
    task = await running(sink)
    listener = await nats.connect(server.url)  # on the server itself, past the relay
    got: list[int] = []

    async def keep(msg: Any) -> None:
        got.append(msgspec.json.decode(msg.data)["round"])

    def filling() -> bool:
        if sink.stats.reconnects > 0:
            return True
        sink.submit(during)  # the same round again and again: the stalled path fills
        return False

    try:
        await subscribed(listener, "oracled.rounds", keep)
        sink.submit(first)
        await until(lambda: first.round in got, "the first round delivered")
        relay.stall()
        await until(filling, "the stalled connection given up and another made")
        assert relay.accepted == 2 and sink.stats.lost > 0
        sink.submit(fresh)
        await until(lambda: fresh.round in got, "a round after the stall delivered")
        assert during.round not in got, got
    finally:
        relay.flow()
        await listener.close()
        await stop(task)


async def test_the_sink_stops_when_cancelled_while_a_stalled_path_holds_its_publish(
    server: NatsServer, relay: NatsRelay
) -> None:
    """Rounds of 1,000 markets into a stalled path: once nats-py's buffer is full, a publish
    waits for it to be written, and nats-py swallows a cancellation that lands there. The sink's
    task still ends when cancelled (the daemon stopping). Before, it took the cancellation as
    never made and went on publishing, then waiting for rounds, for ever: a stop left it
    behind."""
    markets = {f"C{i:04d}/USD": 10.0 + i for i in range(1_000)}
    rounds = Rounds(make_config(markets), markets)
    signer = RoundSigner(KEY, "test")
    signed = signer.sign(rounds.step())
    sink = NatsSink(NatsConfig(enabled=True, servers=(relay.url,)))
    task = await running(sink)

    def held() -> bool:
        """nats-py's buffer over its limit: the publish that filled it waits (read only)."""
        sink.submit(signed)  # the same round again and again: the stalled path fills
        nc = sink._nc
        return nc is not None and nc._pending_data_size > DEFAULT_PENDING_SIZE

    try:
        relay.stall()
        await until(held, "a publish held by the stalled path")
        task.cancel()
        try:
            async with asyncio.timeout(SAFETY_S):
                await asyncio.gather(task, return_exceptions=True)
        except TimeoutError:
            raise AssertionError("the sink's task went on after its cancellation") from None
        assert task.cancelled()
    finally:
        relay.flow()
        await stop(task)


async def test_rounds_dropped_from_a_full_queue_are_logged_once_per_episode(
    server: NatsServer,
) -> None:
    """Rounds submitted faster than the sink publishes: past `queue` rounds the oldest go,
    counted `queue_full` (as before), and now said: one warning at the first drop, and one line
    with the number dropped once the sink has emptied its queue; a second episode, two more
    lines, never one per round. Before, a sink that fell behind dropped rounds without a line."""
    sink = NatsSink(NatsConfig(enabled=True, servers=(server.url,), queue=2))
    task = await running(sink)
    rounds = Rounds(make_config())
    try:
        with capture_logs() as logs:
            for episode in (1, 2):
                for _ in range(5):  # no yield in between: the publisher task cannot take any
                    sink.submit(rounds.step())

                def caught_up(n: int = episode) -> bool:
                    return sum(e["event"] == "nats sink caught up" for e in logs) == n

                await until(caught_up, f"episode {episode} over")
        behind = [e for e in logs if e["event"] == "nats sink behind; dropping its oldest rounds"]
        assert [e["log_level"] for e in behind] == ["warning", "warning"]
        assert [e["dropped"] for e in logs if e["event"] == "nats sink caught up"] == [12, 12]
        assert sink.stats.unpublished["queue_full"] == 2 * 3 * 4
    finally:
        await stop(task)


async def test_the_client_says_a_server_it_cannot_reach_once_not_per_attempt(
    relay: NatsRelay,
) -> None:
    """A NATS server the consumer cannot reach (here every connection is closed at once, as
    by a server at its connection limit or a proxy without one behind it): nats-py retries twice
    a second and tells the client each time. The client logs it once per `log_every_ms`, not a
    line per attempt (before: one each, two a second for as long as the outage lasted)."""
    client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: 0)
    relay.refuse()
    with capture_logs() as logs:
        watcher = asyncio.create_task(client.watch_nats(relay.url, ["BTC/USD"]))
        try:
            await until(lambda: relay.accepted >= 4, "four attempts to connect")
        finally:
            await stop(watcher)
    errors = [e for e in logs if e["event"] == "client nats error"]
    assert [e["log_level"] for e in errors] == ["warning"]


#: Loop turns from a connection taken (and closed at once) to the cancellation: nats-py's
#: `asyncio.wait_for` lost it at 0 to 4 of them (Python 3.11.7), every time.
TURNS = range(10)


def running_since(before: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    """The tasks started since `before` and still running, but the relay's: what a NATS client
    left behind (its attempt to connect, nats-py's reconnection)."""
    return [
        task for task in asyncio.all_tasks() - before if not name(task).startswith("NatsRelay.")
    ]


def name(task: asyncio.Task[Any]) -> str:
    """What `task` runs (`Client._attempt_reconnect`)."""
    return getattr(task.get_coro(), "__qualname__", task.get_name())


async def cancel_once(
    relay: NatsRelay,
    task: asyncio.Task[Any],
    turns: int,
    before: set[asyncio.Task[Any]],
    moment: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Cancel `task` once, `turns` loop turns after `moment` (by default, once the relay took
    its next connection); return once it has ended, and every task started since `before` (the
    relay's aside). Fails if it goes on after the cancellation, or if one of those connects
    again once it has ended."""
    try:
        await (moment or (lambda: relay.taken(relay.accepted + 1)))()
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.wait({task}, timeout=SAFETY_S)
        assert task.cancelled(), f"{name(task)} went on after its cancellation ({turns} turns)"
        ended = relay.accepted
        await until(lambda: not running_since(before) or relay.accepted > ended, "tasks ended")
        left = [name(other) for other in running_since(before)]
        assert (relay.accepted - ended, left) == (0, []), f"after {turns} turns"
    finally:  # a failure leaves nothing running
        await stop(task, *running_since(before))


class Watching:
    """Client watches through the relay of the signed rounds the sink publishes."""

    def __init__(self, sink: NatsSink, relay: NatsRelay) -> None:
        self.sink, self.relay = sink, relay
        self.rounds = Rounds(make_config())
        self.signer = RoundSigner(KEY, "test")
        self.newest = 0

    async def verified(self) -> asyncio.Task[None]:
        """A new client's watch through the relay (let pass), once it verified a round."""
        self.relay.pass_()
        client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: self.newest)
        watcher = asyncio.create_task(client.watch_nats(self.relay.url, ["BTC/USD"]))

        def verified() -> bool:
            """Publish the next round; True once the client verified a round."""
            signed = self.signer.sign(self.rounds.step())
            self.newest = signed.ts
            self.sink.submit(signed)
            return client.price("BTC/USD").status == "active"

        await until(verified, "a round verified")
        return watcher


async def test_one_cancellation_ends_a_client_watch_connecting_to_a_server_that_hangs_up(
    relay: NatsRelay,
) -> None:
    """A consumer's watch started while every connection is closed at once (a server at its
    connection limit, a proxy without one behind it) is cancelled once, right after a
    connection was taken: it ends, and nothing of it goes on connecting. Before, nats-py's
    `asyncio.wait_for` returned the connection (or the greeting) that completed as the
    cancellation arrived and dropped the cancellation: the watch went on retrying twice a second
    for good, and a consumer stopping (a margin engine's shutdown) was held by it."""
    relay.refuse()
    for turns in TURNS:
        before = asyncio.all_tasks()
        client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: 0)
        watcher = asyncio.create_task(client.watch_nats(relay.url, ["BTC/USD"]))
        await cancel_once(relay, watcher, turns, before)


async def test_one_cancellation_ends_a_client_watch_and_the_reconnection_it_left(
    server: NatsServer, relay: NatsRelay
) -> None:
    """A watch connected through the relay loses its server (the connection cut, the next ones
    closed at once): nats-py connects again in a task of its own. The watch is cancelled once,
    right after one of those attempts was taken: it ends, and so does that task. Before, the
    watch ended, but nats-py's close cancelled the reconnection task once, through the same
    `wait_for`, which could drop it: the task went on connecting for good, behind a consumer
    that had stopped."""
    sink = NatsSink(NatsConfig(enabled=True, servers=(server.url,)))
    task = await running(sink)
    watching = Watching(sink, relay)
    try:
        for turns in TURNS:
            before = asyncio.all_tasks()
            watcher = await watching.verified()
            relay.refuse()
            relay.cut()
            await cancel_once(relay, watcher, turns, before)
    finally:
        await stop(task)


async def test_one_cancellation_ends_a_client_watch_whose_reconnection_just_succeeded(
    server: NatsServer, relay: NatsRelay
) -> None:
    """A watch's connection is cut and nats-py connects again in its reconnection task; the
    relay holds the server's answer to the new connection, lets it through, and the watch is
    cancelled once, 0 to 9 loop turns later: it ends, and so does all it started. Before,
    nats-py's close cancelled the reconnection task, and its `wait_for` could drop that as the
    answer came: the reconnection went on as connected, on the closed client, and once that
    connection went it connected again, and again."""
    sink = NatsSink(NatsConfig(enabled=True, servers=(server.url,)))
    task = await running(sink)
    watching = Watching(sink, relay)

    async def answered() -> None:
        """The new connection's answer held, then let through."""
        await relay.held(relay.holding + 1)
        relay.flow()

    try:
        for turns in TURNS:
            before = asyncio.all_tasks()
            watcher = await watching.verified()
            relay.hold()
            relay.cut()
            await cancel_once(relay, watcher, turns, before, answered)
    finally:
        await stop(task)


@pytest.mark.parametrize("connected", [False, True], ids=["at start", "after a cut"])
async def test_one_cancellation_ends_the_sink_and_every_attempt_it_made(
    relay: NatsRelay, connected: bool
) -> None:
    """The sink, cancelled once (the daemon stopping) right after a connection taken and closed
    at once, at start or once its connection was cut: its task ends, and so do the tasks that
    connect for it. Before, its task ended, but its attempt to connect (at start) or nats-py's
    reconnection (after the cut) was cancelled once through nats-py's `wait_for`, which could
    drop it: that task went on connecting for good."""
    for turns in TURNS:
        before = asyncio.all_tasks()
        relay.pass_()
        sink = NatsSink(NatsConfig(enabled=True, servers=(relay.url,)))
        task = asyncio.create_task(sink.run(), name="nats-sink")
        if connected:
            async with asyncio.timeout(SAFETY_S):
                await sink.ready.wait()
            relay.refuse()
            relay.cut()
        else:
            relay.refuse()
        await cancel_once(relay, task, turns, before)


async def test_one_cancellation_ends_the_sink_as_its_first_connection_is_made(
    relay: NatsRelay,
) -> None:
    """The relay holds the server's answer to the sink's first connection, lets it through, and
    the sink is cancelled once, 0 to 9 loop turns later (the daemon stopping as it starts): its
    task ends, and so does all its attempt started, the connection made included. Before, a
    cancellation that came as the attempt connected ended the sink's task and left the client
    connected: its reading and pings ran on behind the stopped sink, and it would reconnect for
    good."""
    relay.hold()

    async def answered() -> None:
        """The connection's answer held, then let through."""
        await relay.held(relay.holding + 1)
        relay.flow()

    for turns in TURNS:
        before = asyncio.all_tasks()
        sink = NatsSink(NatsConfig(enabled=True, servers=(relay.url,)))
        task = asyncio.create_task(sink.run(), name="nats-sink")
        await cancel_once(relay, task, turns, before, answered)
        await until(lambda: relay.open == 0, f"the connection closed ({turns} turns)")


async def test_a_server_at_its_connection_limit_is_counted_and_said_once(
    tmp_path: Path,
) -> None:
    """A real nats-server with `max_connections: 1`, its one connection taken: it ends each
    attempt of the sink at once (its `-ERR 'maximum connections exceeded'` is not read before
    the reset: nats-py reports the reset, then the broken pipe of its CONNECT). Each attempt is
    counted (`server_error`) and said once a minute at most; once the slot is free the sink
    connects. Before, such attempts were counted under no reason at all (the operator saw
    rounds lost and no connect failure) and logged at debug level only."""
    srv = NatsServer(tmp_path / "full", jetstream=False, settings="max_connections: 1")
    await srv.start()
    occupant = await nats.connect(srv.url, allow_reconnect=False)
    sink = NatsSink(NatsConfig(enabled=True, servers=(srv.url,)))
    task = asyncio.create_task(sink.run(), name="nats-sink")
    try:
        with capture_logs() as logs:
            failures = sink.stats.connect_failures
            await until(lambda: failures["server_error"] >= 3, "three attempts refused")
            assert not sink.stats.connected
            await occupant.close()
            await until(lambda: sink.stats.connected, "connected once the slot is free")
        said = [e for e in logs if e["event"] == "nats server ended the connection; retrying"]
        assert [e["log_level"] for e in said] == ["warning"]
        assert (failures["unreachable"], failures["credentials"], failures["tls"]) == (0, 0, 0)
    finally:
        await stop(task)
        await occupant.close()
        srv.stop()


async def test_a_verifying_subscriber_gets_whole_signed_rounds_in_order_through_faults(
    server: NatsServer, relay: NatsRelay
) -> None:
    """The sink publishes signed rounds of 200 markets through the relay, which cuts the
    connection while a round is on its way (handed to the client, its bytes not all through),
    injects garbage, then an `-ERR`, then cuts again; a
    verifying client on the server itself takes every price subject. After each fault the sink
    comes back and the client verifies newer rounds; it refuses nothing: a message cut short is
    dropped whole by the server (never truncated or forged), and none arrives after a newer
    one (never reordered)."""
    markets = {f"C{i:03d}/USD": 10.0 + i for i in range(200)}
    rounds = Rounds(make_config(markets), markets)
    signer = RoundSigner(KEY, "test")
    newest = [0]
    client = OracleClient(
        {KEY.address}, deployment="test", now_ms=lambda: newest[0], max_age_ms=60_000
    )
    sink = NatsSink(NatsConfig(enabled=True, servers=(relay.url,)), restart_base_s=0.05)
    task = await running(sink)
    watcher = asyncio.create_task(client.watch_nats(server.url))

    def seen_after(ts: int) -> bool:
        """Publish the next round; True once the client verified one newer than `ts`."""
        signed = signer.sign(rounds.step())
        newest[0] = signed.ts
        sink.submit(signed)
        view = client.price("C199/USD")
        return view.ts is not None and view.ts > ts

    async def part_way() -> None:
        """Submit rounds until the sink takes one (its envelopes being encoded): a round
        submitted while the sink is away is counted, never published, so then the next."""
        async with asyncio.timeout(SAFETY_S):
            while True:
                signed = signer.sign(rounds.step())
                newest[0] = signed.ts
                sink.submit(signed)
                for _ in range(1_000):
                    if len(signed._envelopes) > 0:  # the cache, read only
                        return
                    await asyncio.sleep(0)

    faults = {
        "cut": relay.cut,
        "garbage": lambda: relay.inject(b"GARBAGE FROM THE SERVER\r\n"),
        "error": lambda: relay.inject(b"-ERR 'Unknown Protocol Operation'\r\n"),
        "cut again": relay.cut,
    }
    try:
        await until(lambda: seen_after(0), "a first round verified")
        for name, fault in faults.items():
            await part_way()
            fault()
            before = newest[0]
            await until(lambda b=before: seen_after(b), f"a round verified after the {name}")
        refused = {reason: n for reason, n in client.rejected.items() if n}
        assert refused == {}
        assert client.accepted > 0
    finally:
        await stop(watcher, task)


async def test_a_server_unreachable_from_the_start_is_said_once_not_never(
    tmp_path: Path,
) -> None:
    """No server listens when the sink starts: every round is counted `disconnected` and each
    attempt `unreachable`, and now one warning says so (once a minute at most, with the number
    of attempts). Before, nothing above debug level did: `nats disconnected` needs a connection
    first, so a daemon started with NATS down dropped every round without a line."""
    srv = NatsServer(tmp_path / "later", jetstream=False)  # its port, nothing listening yet
    sink = NatsSink(NatsConfig(enabled=True, servers=(srv.url,)), connect_timeout_s=0.5)
    rounds = Rounds(make_config())
    with capture_logs() as logs:
        task = asyncio.create_task(sink.run(), name="nats-sink")
        try:
            failures = sink.stats.connect_failures

            def attempted() -> bool:
                sink.submit(rounds.step())
                return failures["unreachable"] >= 3

            await until(attempted, "three attempts")
        finally:
            await stop(task)
    said = [e for e in logs if e["event"] == "nats server unreachable; retrying"]
    assert [e["log_level"] for e in said] == ["warning"]
    assert sink.stats.unpublished["disconnected"] > 0


async def test_a_smaller_max_payload_after_a_reconnection_is_counted_not_fatal(
    server: NatsServer, relay: NatsRelay
) -> None:
    """The connection is cut and the server the sink reaches next announces a `max_payload` of
    1 KiB (its INFO rewritten by the relay): the round message no longer fits. The prices still
    go out, each round message is counted `error`, the warning is written once, and the sink
    stays connected."""
    markets = {f"C{i:02d}/USD": 10.0 + i for i in range(20)}
    rounds = Rounds(make_config(markets), markets)
    signer = RoundSigner(KEY, "test")
    sink = NatsSink(NatsConfig(enabled=True, servers=(relay.url,)))
    task = await running(sink)
    try:
        relay.info(lambda line: line.replace(b'"max_payload":1048576', b'"max_payload":1024'))
        relay.cut()
        await until(lambda: sink.stats.reconnects == 1, "reconnected to the smaller server")
        with capture_logs() as logs:
            for n in range(1, 4):
                sink.submit(signer.sign(rounds.step()))
                await until(lambda n=n: sink.stats.unpublished["error"] == n, f"round {n} tried")
        assert sink.stats.published == 3 * 20 and sink.stats.connected
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["nats publish failed"]
    finally:
        await stop(task)


async def test_a_server_that_never_greets_is_counted_and_left_for_one_that_does(
    relay: NatsRelay,
) -> None:
    """After a cut, the next connections meet a socket that accepts and never sends INFO: each
    attempt times out, counted `unreachable`, and the rounds meanwhile `disconnected`; once the
    server greets again the sink connects and publishes."""
    sink = NatsSink(NatsConfig(enabled=True, servers=(relay.url,)), connect_timeout_s=0.3)
    rounds = Rounds(make_config())
    task = await running(sink)
    try:
        relay.mute()
        relay.cut()
        failures = sink.stats.connect_failures
        await until(lambda: failures["unreachable"] >= 2, "two attempts without a greeting")
        sink.submit(rounds.step())
        assert sink.stats.unpublished["disconnected"] >= 4
        relay.pass_()
        relay.cut()  # the mute connection nats-py may still wait on
        await until(lambda: sink.stats.connected, "connected to a server that greets")
        published = sink.stats.published
        sink.submit(rounds.step())
        await until(lambda: sink.stats.published == published + 4, "a round published")
    finally:
        await stop(task)


async def test_the_servers_a_cluster_announces_are_its_latest_announcement_and_bounded(
    server: NatsServer, relay: NatsRelay
) -> None:
    """A server names the cluster's other nodes in its INFO (`connect_urls`), again at any time,
    and nats-py kept every new name for good, for its reconnections: 200 announcements of 10
    new names each made a list of 2,001 servers, scanned whole at every INFO. The sink keeps the
    servers of the latest announcement only (a node gone from it is forgotten), at most
    MAX_ANNOUNCED_SERVERS; the others, and entries that name no server, are counted and logged
    once; the connection is kept, and rounds go on reaching subscribers."""
    rounds = Rounds(make_config())
    sink = NatsSink(NatsConfig(enabled=True, servers=(relay.url,)))
    task = await running(sink)
    listener = await nats.connect(server.url)  # on the server itself, past the relay
    got: list[int] = []

    async def keep(msg: Any) -> None:
        got.append(msgspec.json.decode(msg.data)["round"])

    try:
        await subscribed(listener, "oracled.rounds", keep)
        nc = sink._nc
        assert nc is not None
        last = [f"10.200.0.{j}:4222" for j in range(MAX_ANNOUNCED_SERVERS + 8)]
        with capture_logs() as logs:
            for i in range(200):
                relay.inject(announcing([f"10.{i}.0.{j}:4222" for j in range(10)]))
            relay.inject(announcing(last))

            def read_last() -> bool:
                return any(uri.netloc == last[0] for uri in nc.servers)

            await until(read_last, "the last announcement read")
            kept = {uri.netloc for uri in nc.servers}
            assert kept == {f"127.0.0.1:{relay.port}", *last[:MAX_ANNOUNCED_SERVERS]}
            relay.inject(announcing([*last, 7, "[::1"]))  # and two entries that name no server
            await until(lambda: sink.stats.announced_refused == 2 * 8 + 2, "the second one read")
        assert {uri.netloc for uri in nc.servers} == kept
        refused = [e for e in logs if e["event"] == "nats announced servers refused"]
        assert [(e["log_level"], e["refused"]) for e in refused] == [("warning", 8)]
        assert sink._nc is nc and nc.is_connected and relay.accepted == 1
        result = rounds.step()
        sink.submit(result)
        await until(lambda: result.round in got, "a round after the announcements delivered")
    finally:
        await listener.close()
        await stop(task)


async def test_the_client_keeps_the_servers_a_cluster_announces_bounded(
    server: NatsServer, relay: NatsRelay
) -> None:
    """`watch_nats` reads the same announcements (its client is the sink's `AnnouncedClient`):
    one naming more servers than MAX_ANNOUNCED_SERVERS has the rest counted in
    `announced_refused` and said once, and the client verifies the rounds published after it
    on the same connection. Before, nats-py's client kept every server ever announced."""
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
            for i in range(50):
                many = [f"10.{i}.0.{j}:4222" for j in range(MAX_ANNOUNCED_SERVERS + 5)]
                relay.inject(announcing(many))
            await until(lambda: client.announced_refused == 50 * 5, "the announcements read")
            said_at = newest[0]
            await until(lambda: seen_after(said_at), "a round after them verified")
        said = [e for e in logs if e["event"] == "client nats announced servers refused"]
        assert [e["log_level"] for e in said] == ["warning"]
        assert relay.accepted == 1 and not watcher.done()
    finally:
        await stop(watcher, task)
