"""The NATS sink against a real nats-server on loopback: subjects, JetStream replay, outages."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError
from publish_rig import NatsServer, Rounds, make_config, subscribed, until
from structlog.testing import capture_logs

from oracled.client import OracleClient
from oracled.config import NatsConfig
from oracled.publish.nats import NatsSink, market_token, price_subject, round_subject
from oracled.publish.signer import RoundSigner, SigningKey

KEY = SigningKey.from_hex("0x" + "22" * 32)
SAFETY_S = 15.0  # guards against hangs only


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    srv = NatsServer(tmp_path / "nats")
    await srv.start()
    yield srv
    srv.stop()


def events(logs: list[dict[str, Any]], level: str) -> list[str]:
    return [str(e["event"]) for e in logs if e["log_level"] == level]


async def consumer(url: str) -> NatsClient:
    return await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)


async def running(sink: NatsSink) -> asyncio.Task[None]:
    task = asyncio.create_task(sink.run(), name="nats-sink")
    async with asyncio.timeout(SAFETY_S):
        await sink.ready.wait()
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_rig_refuses_a_port_another_program_listens_on(tmp_path: Path) -> None:
    """The test server is ready when it says so, not when the port answers: a stranger on the
    port (another suite's server on a busy machine) is an error, never silently used."""
    srv = NatsServer(tmp_path / "taken")
    with socket.socket() as stranger:
        # As a server binds (the rig's port waits in TIME_WAIT, which only such a bind may take).
        stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        stranger.bind(("127.0.0.1", srv.port))
        stranger.listen()
        with pytest.raises(RuntimeError, match="nats-server exited"):
            await srv.start()
    srv.stop()


def test_market_tokens_are_single_subject_tokens() -> None:
    """`BTC/USD` becomes `BTC-USD`: no dot, wildcard or space can appear in a token."""
    assert market_token("BTC/USD") == "BTC-USD"
    assert price_subject("oracled", "ETH/USDT") == "oracled.prices.ETH-USDT"
    assert round_subject("desk.eu") == "desk.eu.rounds"


async def test_each_market_has_its_subject_and_the_client_verifies_them(
    server: NatsServer,
) -> None:
    """A signed round lands on one subject per market plus the round subject; all verify."""
    sink = NatsSink(NatsConfig(enabled=True, servers=(server.url,)))
    task = await running(sink)
    sub_nc = await consumer(server.url)
    try:
        received: dict[str, bytes] = {}

        async def keep(msg: Any) -> None:
            received[msg.subject] = msg.data

        await subscribed(sub_nc, "oracled.>", keep)
        rounds = Rounds(make_config())
        signed = RoundSigner(KEY, "test").sign(rounds.step())
        sink.submit(signed)
        subjects = {
            "oracled.prices.BTC-USD",
            "oracled.prices.ETH-USD",
            "oracled.prices.SOL-USD",
            "oracled.rounds",
        }
        try:
            await until(lambda: subjects <= set(received), "every subject")
        except TimeoutError:  # say what did arrive and what the sink did
            raise AssertionError(
                f"received {sorted(received)}; sink {sink.stats}; server log:\n"
                + server.log.read_text()[-2000:]
            ) from None
        assert set(received) == subjects
        client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: signed.ts)
        for subject in subjects - {"oracled.rounds"}:
            client.feed(received[subject])
        assert client.price("ETH/USD").status == "active"
        assert msgspec.json.decode(received["oracled.rounds"])["root"] == "0x" + signed.root.hex()
        assert sink.stats.published == 4 and sink.stats.connected
    finally:
        await sub_nc.close()
        await stop(task)


async def test_unsigned_rounds_publish_reports_that_the_client_refuses(
    server: NatsServer,
) -> None:
    """With signing off the sink sends plain reports; a verifying client counts them unsigned."""
    sink = NatsSink(NatsConfig(enabled=True, servers=(server.url,)))
    task = await running(sink)
    client = OracleClient({KEY.address}, deployment="test")
    watcher = asyncio.create_task(client.watch_nats(server.url, ["BTC/USD"]))
    rounds = Rounds(make_config())

    def refused() -> bool:
        sink.submit(rounds.step())
        return client.rejected["unsigned"] > 0

    await until(refused, "an unsigned report refused")
    assert client.accepted == 0 and client.price("BTC/USD").status == "unknown"
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    await stop(task)


async def test_the_client_follows_a_market_over_nats(server: NatsServer) -> None:
    """watch_nats subscribes to one market's subject and keeps its latest verified price."""
    sink = NatsSink(NatsConfig(enabled=True, servers=(server.url,)))
    task = await running(sink)
    rounds = Rounds(make_config())
    signer = RoundSigner(KEY, "test")
    first = signer.sign(rounds.step())
    client = OracleClient(
        {KEY.address}, deployment="test", now_ms=lambda: first.ts, max_age_ms=60_000
    )
    watcher = asyncio.create_task(client.watch_nats(server.url, ["SOL/USD"]))

    def seen() -> bool:
        sink.submit(signer.sign(rounds.step()))
        return client.price("SOL/USD").status == "active"

    await until(seen, "SOL/USD verified over NATS")
    assert client.markets == ["SOL/USD"]  # only the subscribed subject arrived
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    await stop(task)


async def test_a_late_consumer_replays_rounds_from_jetstream(server: NatsServer) -> None:
    """With JetStream on, a consumer that starts after the rounds still reads all of them."""
    cfg = NatsConfig(enabled=True, servers=(server.url,), jetstream=True, stream="LATE")
    sink = NatsSink(cfg)
    task = await running(sink)
    rounds = Rounds(make_config())
    signer = RoundSigner(KEY, "test")
    sent = [signer.sign(rounds.step()) for _ in range(5)]
    for signed in sent:
        sink.submit(signed)
    await until(lambda: sink.stats.published == 5 * 4, "five rounds published")
    late = await consumer(server.url)
    js = late.jetstream()
    await until_stream(js, "LATE", 20)
    sub = await js.subscribe("oracled.rounds", ordered_consumer=True)
    got = []
    async with asyncio.timeout(SAFETY_S):
        while len(got) < 5:
            got.append(msgspec.json.decode((await sub.next_msg(timeout=SAFETY_S)).data)["round"])
    assert got == [s.round for s in sent]
    await late.close()
    await stop(task)


async def until_stream(js: Any, name: str, messages: int) -> None:
    async with asyncio.timeout(SAFETY_S):
        while (await js.stream_info(name)).state.messages < messages:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def newest_round(js: Any, name: str) -> int | None:
    """The round number of the newest round message stream `name` holds, None if none yet."""
    try:
        msg = await js.get_last_msg(name, "oracled.rounds")
    except NotFoundError:
        return None
    return int(msgspec.json.decode(msg.data)["round"])


async def test_nats_down_at_start_then_up_counts_nothing_lost_after(tmp_path: Path) -> None:
    """No server yet: submit never blocks and rounds are counted; once one listens, they flow."""
    srv = NatsServer(tmp_path / "late-server")
    sink = NatsSink(NatsConfig(enabled=True, servers=(srv.url,), queue=2), connect_timeout_s=0.5)
    task = asyncio.create_task(sink.run())
    rounds = Rounds(make_config())
    for _ in range(5):
        sink.submit(rounds.step())  # not connected: counted and dropped, nothing queued
    assert sink.stats.unpublished["disconnected"] == 5 * 4
    await srv.start()
    try:
        await until(lambda: sink.stats.connected, "connected once the server listens")
        sink.submit(rounds.step())
        await until(lambda: sink.stats.published == 4, "the next round published")
        assert sink.stats.unpublished["queue_full"] == 0
    finally:
        await stop(task)
        srv.stop()


async def test_a_crash_of_the_sink_is_logged_counted_and_followed_by_a_new_start(
    server: NatsServer,
) -> None:
    """An error that is not the NATS client's own (here a signed round with a status code
    that has no label, as a status added without one would make) is logged with its traceback,
    counts a restart and the round as unpublished `error`, and the sink connects again and
    publishes the next round. It used to end the sink's task without a word while the daemon
    went on as if it published (found reading the sink's task, which caught only NatsError)."""
    sink = NatsSink(NatsConfig(enabled=True, servers=(server.url,)), restart_base_s=0.05)
    task = await running(sink)
    try:
        rounds = Rounds(make_config())
        signer = RoundSigner(KEY, "test")
        signed = signer.sign(rounds.step())
        leaves = (dataclasses.replace(signed.leaves[0], status=9), *signed.leaves[1:])
        with capture_logs() as logs:
            sink.submit(dataclasses.replace(signed, leaves=leaves))
            await until(lambda: sink.stats.restarts == 1, "the crash counted")
            await until(lambda: sink.stats.connected, "connected again")
        crashed = [e for e in logs if e["event"] == "nats sink crashed; restarting"]
        assert [(e["log_level"], e["lost"]) for e in crashed] == [("error", 0)]
        assert crashed[0]["exc_info"] is True
        assert sink.stats.unpublished["error"] == 4 and sink.stats.published == 0
        sink.submit(signer.sign(rounds.step()))
        await until(lambda: sink.stats.published == 4, "the next round published")
        assert not task.done()
    finally:
        await stop(task)


async def test_a_round_of_many_markets_is_encoded_between_turns_of_the_event_loop(
    server: NatsServer,
) -> None:
    """A signed round of 1,000 markets: the sink encodes each message when it publishes it, so
    the event loop (venues, API, round loop) has a turn between every 256 of them. Before, the
    whole round was encoded in one turn first (15 to 23 ms at 1,000 markets, signed or not, on
    the 2-vCPU machine). Seen from another task: the round's envelopes get encoded part by
    part, where before it only ever saw none or all of them."""
    markets = {f"C{i:04d}/USD": 10.0 + i for i in range(1_000)}
    signed = RoundSigner(KEY, "test").sign(Rounds(make_config(markets), markets).step())
    sink = NatsSink(NatsConfig(enabled=True, servers=(server.url,)))
    task = await running(sink)
    seen: list[int] = []
    try:
        sink.submit(signed)
        async with asyncio.timeout(SAFETY_S):
            while sink.stats.published < 1_001:
                seen.append(len(signed._envelopes))  # the cache, read only
                await asyncio.sleep(0)
        assert any(0 < n < 1_000 for n in seen), sorted(set(seen))
    finally:
        await stop(task)


async def test_a_full_queue_drops_its_oldest_round_and_counts_it(server: NatsServer) -> None:
    """Rounds submitted faster than the task runs: past `queue` rounds the oldest go, counted."""
    sink = NatsSink(NatsConfig(enabled=True, servers=(server.url,), queue=2))
    task = await running(sink)
    rounds = Rounds(make_config())
    for _ in range(5):  # no yield in between: the publisher task cannot take any yet
        sink.submit(rounds.step())
    assert sink.stats.unpublished["queue_full"] == 3 * 4
    await until(lambda: sink.stats.published == 2 * 4, "the two newest rounds published")
    await stop(task)


async def test_server_death_is_counted_and_jetstream_keeps_what_it_held(
    server: NatsServer,
) -> None:
    """SIGKILL the server mid-run: rounds meanwhile are counted `disconnected`; after the restart
    the sink reconnects by itself, and the stream holds every round from before and after."""
    cfg = NatsConfig(enabled=True, servers=(server.url,), jetstream=True, stream="DURABLE")
    sink = NatsSink(cfg)
    task = await running(sink)
    rounds = Rounds(make_config())
    signer = RoundSigner(KEY, "test")
    before = [signer.sign(rounds.step()) for _ in range(3)]
    for signed in before:
        sink.submit(signed)
    probe = await consumer(server.url)
    await until_stream(probe.jetstream(), "DURABLE", 3 * 4)
    await probe.close()

    server.kill()
    await until(lambda: not sink.stats.connected, "the sink saw the server go")
    during = signer.sign(rounds.step())
    sink.submit(during)
    await until(lambda: sink.stats.unpublished["disconnected"] == 4, "the outage counted")

    await server.start()  # same port, same store
    await until(lambda: sink.stats.connected, "reconnected")
    assert sink.stats.reconnects >= 1
    after = signer.sign(rounds.step())
    sink.submit(after)

    late = await consumer(server.url)
    js = late.jetstream()
    await until_stream(js, "DURABLE", 4 * 4)
    sub = await js.subscribe("oracled.rounds", ordered_consumer=True)
    got = []
    async with asyncio.timeout(SAFETY_S):
        while len(got) < 4:
            got.append(msgspec.json.decode((await sub.next_msg(timeout=SAFETY_S)).data)["round"])
    assert got == [s.round for s in (*before, after)]  # nothing held was lost; `during` never left
    await late.close()
    await stop(task)


async def test_the_rest_of_a_round_the_server_died_in_is_dropped_not_buffered(
    server: NatsServer,
) -> None:
    """The server is killed while the sink is part-way through a round of 1,000 markets: what
    it would publish once the client knows the connection is lost is counted `disconnected`
    and dropped. Before, the sink checked the connection once per round, and nats-py took the
    rest of the round into its pending buffer (2 MB) and sent it when a server was back,
    however long that took: every message counted `published`, none `disconnected`."""
    markets = {f"C{i:04d}/USD": 10.0 + i for i in range(1_000)}
    signed = RoundSigner(KEY, "test").sign(Rounds(make_config(markets), markets).step())
    sink = NatsSink(NatsConfig(enabled=True, servers=(server.url,)))
    task = await running(sink)
    try:
        sink.submit(signed)
        async with asyncio.timeout(SAFETY_S):  # the first 256 handed over, the sink yielding
            while len(signed._envelopes) < 256:  # noqa: ASYNC110 - the cache, read only
                await asyncio.sleep(0)
        server.kill()
        await until(
            lambda: sink.stats.published + sink.stats.unpublished["disconnected"] == 1_001,
            "the whole round handed over or counted",
        )
        assert not sink.stats.connected
        assert sink.stats.unpublished["disconnected"] > 0
        assert sink.stats.published >= 256
        await server.start()
        await until(lambda: sink.stats.connected, "reconnected")
    finally:
        await stop(task)


async def test_a_hung_server_is_noticed_and_rounds_meanwhile_are_dropped_not_sent_late(
    server: NatsServer,
) -> None:
    """A server that keeps its socket open but reads nothing (frozen): the sink notices its
    pings go unanswered, shows itself disconnected and counts the rounds meanwhile instead of
    piling them into the socket, where they would reach consumers late once the server wakes;
    it reconnects when the server answers again."""
    sink = NatsSink(NatsConfig(enabled=True, servers=(server.url,)))
    task = await running(sink)
    listener = await consumer(server.url)
    got: list[int] = []

    async def keep(msg: Any) -> None:
        got.append(msgspec.json.decode(msg.data)["round"])

    await subscribed(listener, "oracled.rounds", keep)
    rounds = Rounds(make_config())
    try:
        server.pause()
        sink.submit(rounds.step())  # goes into the socket: the sink cannot know yet
        await until(lambda: not sink.stats.connected, "the hung server noticed")
        late = [rounds.step() for _ in range(5)]
        for batch in late:
            sink.submit(batch)
        assert sink.stats.unpublished["disconnected"] == 5 * 4
        server.resume()
        await until(lambda: sink.stats.connected, "the server answering again")
        assert sink.stats.reconnects == 1
        fresh = rounds.step()
        sink.submit(fresh)
        await until(lambda: fresh.round in got, "the next round delivered")
        assert not {b.round for b in late} & set(got)  # nothing from the stall arrived late
    finally:
        server.resume()
        await listener.close()
        await stop(task)


async def test_the_stream_the_sink_creates_keeps_at_most_max_bytes_the_newest_first(
    server: NatsServer,
) -> None:
    """The stream is bounded by `max_bytes` as well as by `max_age_s`: every message of every
    round is stored (about 1.3 MB a round at 1,000 signed markets, 18 GB an hour at the default
    interval, in memory with `storage = "memory"`), and a stream with an age alone grew that
    far. Past the limit the oldest messages go and the newest round stays."""
    cfg = NatsConfig(
        enabled=True, servers=(server.url,), jetstream=True, stream="SIZED", max_bytes=1 << 20
    )
    markets = {f"C{i:04d}/USD": 10.0 + i for i in range(1_000)}
    rounds = Rounds(make_config(markets), markets)
    signer = RoundSigner(KEY, "test")
    sink = NatsSink(cfg)
    task = await running(sink)
    probe = await consumer(server.url)
    try:
        for n in range(1, 4):
            last = signer.sign(rounds.step())
            sink.submit(last)
            await until(lambda n=n: sink.stats.published == n * 1_001, f"round {n} published")
        js = probe.jetstream()
        async with asyncio.timeout(SAFETY_S):  # stored once the server has taken it in
            while await newest_round(js, "SIZED") != last.round:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        info = await js.stream_info("SIZED")
        assert info.config.max_bytes == 1 << 20
        assert 0 < info.state.bytes <= 1 << 20 < 3 * 1_001 * 1_000  # less than what was sent
    finally:
        await probe.close()
        await stop(task)


async def test_a_server_without_room_for_max_bytes_gets_a_smaller_stream_not_none(
    tmp_path: Path,
) -> None:
    """A server whose JetStream may store 100 MB, and the default `max_bytes` of 1 GiB: the
    server cannot reserve it and refuses the stream (`insufficient storage resources`). The
    sink asks for half as much until the server has room, says so, and the rounds are stored.
    (A stream without a limit, before `max_bytes`, was made there; with 1 GiB asked, none.)"""
    srv = NatsServer(tmp_path / "small", settings="jetstream { max_file_store: 100MB }")
    await srv.start()
    try:
        sink = NatsSink(NatsConfig(enabled=True, servers=(srv.url,), jetstream=True))
        with capture_logs() as logs:
            task = await running(sink)
        assert events(logs, "error") == []
        assert events(logs, "warning") == [
            "jetstream stream made smaller than nats.max_bytes: no room for more"
        ]
        probe = await consumer(srv.url)
        js = probe.jetstream()
        assert (await js.stream_info("ORACLED")).config.max_bytes == 64 << 20  # 1 GiB / 16
        sink.submit(RoundSigner(KEY, "test").sign(Rounds(make_config()).step()))
        await until_stream(js, "ORACLED", 4)
        await probe.close()
        await stop(task)
    finally:
        srv.stop()


#: Loop turns from the sink's connection to its cancellation: nats-py's JetStream request dropped
#: the cancellation as the server answered at 3 and 4 of them (Python 3.11.7), every time.
STREAM_TURNS = range(10)


async def test_one_cancellation_stops_the_sink_as_it_sets_its_stream_up(
    server: NatsServer,
) -> None:
    """The sink, connected, asks the JetStream API for its stream; cancelled once (the daemon
    stopping) 0 to 9 loop turns after it connected, it stops. Before, nats-py's request, waiting
    for the answer through `asyncio.wait_for`, dropped a cancellation that came as the answer
    did: the sink said it was ready and waited for rounds, for good, a daemon's stop held by it
    until its deadline."""
    cfg = NatsConfig(enabled=True, servers=(server.url,), jetstream=True, stream="STOPPING")
    for turns in STREAM_TURNS:
        await cancelled_after_connecting(NatsSink(cfg), turns)


async def cancelled_after_connecting(sink: NatsSink, turns: int) -> None:
    """Run `sink`, cancel it once `turns` loop turns after it connected; fail unless it stops.
    A failure leaves nothing running."""
    with capture_logs():
        task = asyncio.create_task(sink.run())
        try:
            async with asyncio.timeout(SAFETY_S):
                while not sink.stats.connected:  # noqa: ASYNC110 - the turn it connected in
                    await asyncio.sleep(0)
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.wait({task}, timeout=SAFETY_S)
            assert task.cancelled(), f"the sink went on after its cancellation ({turns} turns)"
        finally:
            async with asyncio.timeout(SAFETY_S):
                while not task.done():
                    task.cancel()
                    await asyncio.wait({task}, timeout=0.1)


#: Loop turns from the server's PONG taken (nats-py's `_pongs` emptied) to a flush's
#: cancellation: nats-py's `asyncio.wait_for` dropped it at 0 and 1 of them (Python 3.11.7),
#: every time; from 2 on the flush had returned.
PONG_TURNS = range(4)


async def test_one_cancellation_ends_a_flush_as_the_server_answers(server: NatsServer) -> None:
    """`flush` waits for the server's PONG through nats-py's `asyncio.wait_for`: cancelled as
    the PONG came (a caller's timeout, a caller stopping), it returned as if it had not been,
    and its caller went on. It raises the cancellation now."""
    sink = NatsSink(NatsConfig(enabled=True, servers=(server.url,)))
    task = await running(sink)
    try:
        nc = sink._nc
        assert nc is not None
        cancelled = []
        for turns in PONG_TURNS:
            flushing = asyncio.create_task(sink.flush())
            async with asyncio.timeout(SAFETY_S):
                while not nc._pongs:  # noqa: ASYNC110 - the turn its PING is written in
                    await asyncio.sleep(0)
                while nc._pongs:  # noqa: ASYNC110 - the turn the PONG is taken in
                    await asyncio.sleep(0)
            for _ in range(turns):
                await asyncio.sleep(0)
            if flushing.done():  # it returned first: nothing to cancel
                continue
            flushing.cancel()
            await asyncio.wait({flushing}, timeout=SAFETY_S)
            assert flushing.cancelled(), f"the flush went on, cancelled {turns} turns after"
            cancelled.append(turns)
        assert cancelled, "every flush returned before its cancellation"
    finally:
        await stop(task)


async def test_an_existing_stream_with_other_settings_is_left_as_it_is(
    server: NatsServer,
) -> None:
    """Operators made the stream first, with their own limits: the sink warns, leaves it as it
    is (its limits are not undone) and publishes into it."""
    ops = await consumer(server.url)
    js = ops.jetstream()
    await js.add_stream(StreamConfig(name="OPS", subjects=["oracled.>"], max_msgs=1_000))
    cfg = NatsConfig(enabled=True, servers=(server.url,), jetstream=True, stream="OPS")
    sink = NatsSink(cfg)
    with capture_logs() as logs:
        task = await running(sink)
    assert "jetstream stream exists with other settings; left as it is" in events(logs, "warning")
    rounds = Rounds(make_config())
    sink.submit(RoundSigner(KEY, "test").sign(rounds.step()))
    await until_stream(js, "OPS", 4)
    assert (await js.stream_info("OPS")).config.max_msgs == 1_000
    await ops.close()
    await stop(task)


async def test_a_server_without_jetstream_is_logged_and_prices_still_flow(
    tmp_path: Path,
) -> None:
    """`jetstream = true` against a server that has it off: the stream cannot be made, which is
    logged as an error, and the rounds are still published on their subjects."""
    srv = NatsServer(tmp_path / "plain", jetstream=False)
    await srv.start()
    try:
        sink = NatsSink(NatsConfig(enabled=True, servers=(srv.url,), jetstream=True))
        with capture_logs() as logs:
            task = await running(sink)
        assert events(logs, "error") == ["jetstream stream not set up"]
        listener = await consumer(srv.url)
        got: list[str] = []

        async def keep(msg: Any) -> None:
            got.append(msg.subject)

        await subscribed(listener, "oracled.rounds", keep)
        sink.submit(Rounds(make_config()).step())
        await until(lambda: got == ["oracled.rounds"], "the round published")
        await listener.close()
        await stop(task)
    finally:
        srv.stop()


async def test_a_message_over_the_servers_payload_limit_is_counted_as_an_error(
    tmp_path: Path,
) -> None:
    """A round message larger than the server's max_payload cannot be sent: it is counted as
    unpublished (`error`) and logged, the prices before it went out, and the sink goes on."""
    srv = NatsServer(tmp_path / "small", settings="max_payload: 1024")
    await srv.start()
    try:
        markets = {f"C{i:02d}/USD": 10.0 + i for i in range(20)}
        rounds = Rounds(make_config(markets), markets)
        signer = RoundSigner(KEY, "test")
        signed = signer.sign(rounds.step())
        assert len(signed.message()) > 1024 >= max(len(signed.envelope(i)) for i in range(20))
        sink = NatsSink(NatsConfig(enabled=True, servers=(srv.url,)))
        task = await running(sink)
        with capture_logs() as logs:
            sink.submit(signed)
            await until(lambda: sink.stats.unpublished["error"] == 1, "the round message lost")
        assert sink.stats.published == 20
        assert events(logs, "warning") == ["nats publish failed"]
        sink.submit(signer.sign(rounds.step()))  # the sink is still there for the next round
        await until(lambda: sink.stats.unpublished["error"] == 2, "the next round tried")
        assert sink.stats.published == 40
        await stop(task)
    finally:
        srv.stop()


async def test_a_price_message_over_the_payload_limit_leaves_the_rest_of_its_round_sent(
    tmp_path: Path,
) -> None:
    """Price messages differ in size (a longer symbol, a longer proof for the leaves of the
    tree's full part, a perpetual's mark): one over the server's max_payload is counted and not
    sent, and the markets after it still go out. Before, the first such message ended the
    round's publishing: every market after it and the round message were lost too, counted as
    errors, on every round."""
    markets = {"LONGBASESYMBOL01/USD": 10.0, **{f"C{i:02d}/USD": 11.0 + i for i in range(19)}}
    rounds = Rounds(make_config(markets), markets)
    signed = RoundSigner(KEY, "test").sign(rounds.step())
    sizes = [len(signed.envelope(i)) for i in range(20)]
    limit = sizes[0] - 1  # the first market's message alone is too large
    assert max(sizes[1:]) <= limit < len(signed.message())
    srv = NatsServer(tmp_path / "small", settings=f"max_payload: {limit}")
    await srv.start()
    sub_nc = await consumer(srv.url)
    try:
        received: dict[str, bytes] = {}

        async def keep(msg: Any) -> None:
            received[msg.subject] = msg.data

        await subscribed(sub_nc, "oracled.prices.>", keep)
        sink = NatsSink(NatsConfig(enabled=True, servers=(srv.url,)))
        task = await running(sink)
        sink.submit(signed)
        expected = {price_subject("oracled", m) for m in list(markets)[1:]}
        await until(lambda: expected <= set(received), "the markets that fit")
        assert set(received) == expected
        assert sink.stats.published == 19
        assert sink.stats.unpublished["error"] == 2  # the first market's and the round message
        await stop(task)
    finally:
        await sub_nc.close()
        srv.stop()


async def test_a_round_over_the_payload_limit_every_round_is_logged_once_a_minute(
    tmp_path: Path,
) -> None:
    """The round message over the server's max_payload fails at every round while the markets
    stay as they are: each is counted, but the warning is written once a minute, not once a
    round (before: a line every round, four a second at the default interval)."""
    srv = NatsServer(tmp_path / "small", settings="max_payload: 1024")
    await srv.start()
    try:
        markets = {f"C{i:02d}/USD": 10.0 + i for i in range(20)}
        rounds = Rounds(make_config(markets), markets)
        signer = RoundSigner(KEY, "test")
        sink = NatsSink(NatsConfig(enabled=True, servers=(srv.url,)))
        task = await running(sink)
        with capture_logs() as logs:
            for n in range(1, 4):
                sink.submit(signer.sign(rounds.step()))
                await until(lambda n=n: sink.stats.unpublished["error"] == n, f"round {n} lost")
        assert sink.stats.published == 3 * 20  # the prices went out each time
        assert events(logs, "warning") == ["nats publish failed"]
        await stop(task)
    finally:
        srv.stop()


async def test_credentials_in_a_server_url_never_reach_the_logs(tmp_path: Path) -> None:
    """A server URL may carry `user:password@` (the only way the config gives NATS
    credentials): the start-up description and the connected line name the host, never the
    password; both once logged it whole."""
    srv = NatsServer(
        tmp_path / "nats",
        jetstream=False,
        settings="authorization { user: alice, password: s3cretpw }",
    )
    await srv.start()
    try:
        url = f"nats://alice:s3cretpw@127.0.0.1:{srv.port}"
        sink = NatsSink(NatsConfig(enabled=True, servers=(url,)))
        with capture_logs() as logs:
            described = sink.describe()
            task = await running(sink)
            await stop(task)
        assert described["servers"] == [f"nats://127.0.0.1:{srv.port}"]
        assert "nats connected" in events(logs, "info")
        assert "s3cretpw" not in repr(logs)
    finally:
        srv.stop()
