"""A stalled daemon says so on NATS too: the stall notice on `<prefix>.stalled`, and
`OracleClient.watch_nats` taking it as `watch_ws` takes the stream's `stalled` frame.

The daemon is the API tests' rig (a real core, hub and app on loopback, its round loop "stalled"
by moving the rig's clock past the limit without a round), signing every round and handing it
to a real NATS sink on a real nats-server, which signs the notice with the same key; the app's
stall watch, the one that sends the streams' frame, hands the sink the notice. The client trusts
reports for 60 s, far longer than the daemon's limit, so only the notice can tell it that the
round is no current price.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from publish_rig import NatsServer, assert_stall_signed, stalled_in
from structlog.testing import capture_logs

from oracled.api import ApiContext, build_app
from oracled.client import STALL_NOTICE_MIN_AGE_MS, STALLED_REFUSED, OracleClient
from oracled.config import NatsConfig
from oracled.core import RoundResult
from oracled.publish.nats import NatsSink, StallNotice, stalled_subject
from oracled.publish.signer import (
    RoundSigner,
    SignedRound,
    SigningKey,
    stall_digest,
)
from oracled.publish.signstall import SignedStall, stall_notice

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
import api_rig  # the API tests' rig: a core, a hub and a clock, wired by hand

KEY = SigningKey.from_hex("0x" + "66" * 32)
OTHER = SigningKey.from_hex("0x" + "77" * 32)
SAFETY_S = 15.0  # guards against hangs only
MAX_AGE_MS = 60_000  # the client's: far past the daemon's stall limit
SUBJECT = stalled_subject("oracled")


class BusDaemon(api_rig.Rig):
    """The API rig signing every round with `signer` and publishing it on NATS through
    `sink`, whose stall notices come from the app's stall watch (signed with `signer`), and
    those of rounds left unsigned from the daemon's rule (`SignedStall`), wired as the service
    wires them; its stall limit is 750 ms (a floor of 0.5 s)."""

    LIMIT_MS = 750

    def __init__(self, sink: NatsSink, signer: RoundSigner) -> None:
        super().__init__(api_rig.make_config())
        self.sink = sink
        self.signer = signer
        self.rule = SignedStall(lambda: self.LIMIT_MS, self.signer)
        self.hub.signer = KEY.address
        self.signed: list[SignedRound] = []

    def context(self) -> ApiContext:
        ctx = super().context()
        return dataclasses.replace(ctx, ready_min_s=0.5, on_stalled=self.sink.stalled)

    def step(self, markets: dict[str, float] | None = None) -> RoundResult:
        result = super().step(markets)
        self.signed.append(self.signer.sign(result))
        self.rule.signed(result.ts, result.round, self.monotonic_ms())
        self.hub.publish_signed(self.signed[-1])
        self.sink.submit(self.signed[-1])
        return result

    def monotonic_ms(self) -> float:
        """The rule's time, as the daemon hands it: the clock's monotonic milliseconds (on the
        rig's clock, a round's time)."""
        return self.clock.monotonic() * 1000.0

    def step_unsigned(self, reason: str = "lease", signing: int | None = None) -> RoundResult:
        """A round the signer leaves unsigned (`reason`; `signing`, when a round still being
        signed was handed to the signer: its time, on the rig's clock), handed to the rule and
        the sink as the daemon hands it: published unsigned by the hub, nothing of it on the
        bus, the rule's notice to both when due."""
        result = super().step()
        told = self.rule.unsigned(reason, self.monotonic_ms(), signing)
        if told is not None:
            self.hub.signed_stalled(told.notice)
        self.sink.unsigned(result, self.rule.notice)
        return result

    def stall(self) -> None:
        """Past the limit without a round: the loop is stalled."""
        self.clock.advance(self.LIMIT_MS + 1)

    def client(self) -> OracleClient:
        """A client that trusts the key's reports for `MAX_AGE_MS`, on the rig's clock, taking
        notices as soon as the daemon's floor here allows."""
        return OracleClient(
            {KEY.address},
            deployment="test",
            max_age_ms=MAX_AGE_MS,
            now_ms=self.clock.now_ms,
            stall_notice_min_age_ms=500,  # as the daemon's floor here (ready_min_s)
        )

    @asynccontextmanager
    async def priced(self, client: OracleClient, url: str) -> AsyncIterator[SignedRound]:
        """The rig's app served on loopback (its stall watch running) and `client` watching
        NATS at `url` for the block, which starts once a round has priced BTC/USD in `client`
        (its subscription lands some time after its task starts): that round."""
        app = build_app(self.context())
        async with api_rig.DaemonServer(app, host="127.0.0.1"), watching(client, url):
            async with asyncio.timeout(SAFETY_S):
                while client.price("BTC/USD").price is None:
                    self.step()
                    await asyncio.sleep(0.05)
            latest = self.signed[-1]
            await until(priced_at(client, latest.ts), "the latest round priced")
            yield latest


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    srv = NatsServer(tmp_path / "nats", jetstream=False)
    await srv.start()
    yield srv
    srv.stop()


@asynccontextmanager
async def sink_running(url: str) -> AsyncIterator[NatsSink]:
    sink = NatsSink(NatsConfig(enabled=True, servers=(url,)))
    task = asyncio.create_task(sink.run(), name="nats-sink")
    try:
        async with asyncio.timeout(SAFETY_S):
            await sink.ready.wait()
        yield sink
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def watching(client: OracleClient, url: str) -> AsyncIterator[None]:
    """`client.watch_nats(url, ["BTC/USD"])` for the block's length."""
    watcher = asyncio.create_task(client.watch_nats(url, ["BTC/USD"]))
    try:
        yield
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


@asynccontextmanager
async def notices(url: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Every stall notice published on the server while the block runs, decoded."""
    nc = await nats.connect(url, allow_reconnect=False)
    got: list[dict[str, Any]] = []

    async def keep(msg: Any) -> None:
        got.append(msgspec.json.decode(msg.data))

    await nc.subscribe(SUBJECT, cb=keep)
    await nc.flush()
    try:
        yield got
    finally:
        await nc.close()


async def until(done: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(SAFETY_S):
            while not done():  # noqa: ASYNC110 - polled: the conditions have no event of their own
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def read(client: OracleClient) -> int:
    """Every notice the client has read: taken (`stalled`) or refused (`stalled_refused`)."""
    return client.stream_errors["stalled"] + client.stream_errors[STALLED_REFUSED]


def signed_notice(
    ts: int,
    round_no: int,
    message: str,
    *,
    signer: str | None = KEY.address,
    deployment: str | None = "test",
    key: SigningKey | None = KEY,
    signed_for: str = "test",
) -> bytes:
    """A notice naming `signer` and `deployment`, signed as a daemon signs it by `key` for
    `signed_for` (None: unsigned, as from a daemon that does not sign)."""
    signature = None
    if key is not None:
        raw = key.sign_digest(stall_digest(ts, round_no, message, signed_for))
        signature = "0x" + raw.hex()
    notice = StallNotice("error", "stalled", message, ts, round_no, signer, deployment, signature)
    return msgspec.json.encode(notice)


def priced_at(client: OracleClient, ts: int) -> Callable[[], bool]:
    view = client.price
    return lambda: view("BTC/USD").price is not None and view("BTC/USD").ts == ts


async def test_a_stall_reaches_nats_once_per_stalled_round_and_the_client_takes_it(
    server: NatsServer,
) -> None:
    """The round loop stalls: the bus gets one notice naming the stalled round, its signer and
    the stream frame's words, however long the stall lasts, and a client fed only by NATS
    leaves the daemon's reports out (`unknown`, the `Stall` named with the subject) until the
    next round, which prices the market again; a second stall is a second notice. Before, the
    bus stayed silent and the client priced BTC/USD from the stalled round for 59 s more. Each
    notice is signed by the rounds' key over its round and words. The second is taken too:
    before, the gap that ended the first stall (1 s) counted as the daemon's pace, the second
    notice (0.75 s after its round) was refused as sooner than twice that, and `stream_errors`
    counted it as `stalled` all the same."""
    signer = RoundSigner(KEY, "test")
    async with sink_running(server.url) as sink, notices(server.url) as told:
        daemon = BusDaemon(sink, signer)
        client = daemon.client()
        async with daemon.priced(client, server.url) as first:
            daemon.stall()
            await until(lambda: bool(client.stalled), "the stall taken from NATS")
            (stall,) = client.stalled.values()
            assert (stall.signer, stall.ts, stall.source) == (KEY.address, first.ts, SUBJECT)
            assert stall.message.startswith("the latest round is 0.8 s old (limit 0.75 s)")
            assert client.price("BTC/USD").status == "unknown"
            assert client.price("BTC/USD").stalled == (stall,)
            await asyncio.sleep(0.3)  # the stall watch looks four more times: nothing more
            daemon.step()  # rounds again
            second = daemon.signed[-1]
            await until(priced_at(client, second.ts), "priced again by the next round")
            assert not client.stalled
            daemon.stall()
            await until(lambda: bool(client.stalled), "the second stall taken from NATS")
            assert [s.ts for s in client.stalled.values()] == [second.ts]
            assert told[-1]["ts"] == second.ts
    assert [(n["ts"], n["round"], n["signer"], n["deployment"]) for n in told] == [
        (signed.ts, signed.round, KEY.address, "test") for signed in (first, second)
    ]
    assert list(told[0]) == list(StallNotice.__struct_fields__)
    for n in told:  # the stream frame's words, and its type and code
        assert (n["type"], n["code"]) == ("error", "stalled")
        assert n["message"].startswith(
            "the latest round is 0.8 s old (limit 0.75 s): rounds have stalled, so its reports"
        )
        assert_stall_signed(n, KEY.address)
    assert dict(client.stream_errors) == {"stalled": 2}
    assert sink.stats.unpublished == {"disconnected": 0, "queue_full": 0, "error": 0, "unsigned": 0}


async def test_rounds_left_unsigned_past_the_limit_are_told_and_the_client_takes_it(
    server: NatsServer,
) -> None:
    """The round loop runs but the signer leaves its rounds unsigned (its lease cannot be
    written): nothing of them goes on the bus, and once no round has been signed for longer
    than the stall limit (750 ms here, as the API's) the bus gets one notice naming the last
    signed round, signed by the key, whose words say why. A client fed only by NATS that trusts
    reports for 60 s leaves the daemon's reports out (`unknown`, the `Stall` named) instead of
    pricing from the last signed round, until the next signed round prices the market again.
    Before, the bus went silent and the client priced BTC/USD from the last signed round for
    60 s, a frozen price that looked live."""
    signer = RoundSigner(KEY, "test")
    async with (
        sink_running(server.url) as sink,
        notices(server.url) as told,
    ):
        daemon = BusDaemon(sink, signer)
        client = daemon.client()
        async with daemon.priced(client, server.url) as last:
            published = sink.stats.published
            while daemon.clock.now_ms() + api_rig.INTERVAL - last.ts <= BusDaemon.LIMIT_MS:
                daemon.step_unsigned()  # up to the limit
            await asyncio.sleep(0.2)
            assert told == [] and sink.stats.published == published  # nothing yet
            assert client.price("BTC/USD").ts == last.ts  # still priced: within its 60 s
            unsigned = daemon.step_unsigned()  # past the limit
            await until(lambda: bool(client.stalled), "the notice taken from NATS")
            (stall,) = client.stalled.values()
            assert (stall.signer, stall.ts, stall.source) == (KEY.address, last.ts, SUBJECT)
            assert client.price("BTC/USD").status == "unknown"
            for _ in range(3):  # still unsigned: the notice is kept, not sent again
                daemon.step_unsigned()
            await asyncio.sleep(0.2)
            assert sink.stats.published == published + 1  # the notice alone
            daemon.step()  # signed again
            assert daemon.signed[-1].round == unsigned.round + 4
            await until(priced_at(client, daemon.signed[-1].ts), "priced by a signed round")
            assert not client.stalled
    (notice,) = told
    assert (notice["ts"], notice["round"]) == (last.ts, last.round)
    assert (notice["type"], notice["code"], notice["signer"]) == ("error", "stalled", KEY.address)
    assert notice["message"] == (
        f"no round signed since round {last.round} for {(unsigned.ts - last.ts) / 1000:.1f} s"
        " (the round loop runs; the signer skips its rounds: lease), so its signed reports are"
        " not current; signed reports follow with the next signed round"
    )
    assert_stall_signed(notice, KEY.address)
    assert dict(client.stream_errors) == {"stalled": 1}
    skipped = daemon.signed[-1].round - last.round - 1  # the rounds between, each a message
    assert sink.stats.unpublished["unsigned"] == skipped * (len(unsigned.layout.markets) + 1)


async def test_rounds_skipped_while_one_is_being_signed_are_told_only_if_it_never_ends(
    server: NatsServer,
) -> None:
    """A round skipped as `busy` while the one before it is still being signed says nothing of
    signing having stopped: the sink counts from that round's time, not from the last one
    delivered signed (seen: a stall's first round in the signer thread, the next skipped, a
    notice sent though a signed round was milliseconds away). A signing that never ends (a hung
    signer thread) is told once its round is older than the limit, naming the last signed
    round."""
    signer = RoundSigner(KEY, "test")
    async with (
        sink_running(server.url) as sink,
        notices(server.url) as told,
    ):
        daemon = BusDaemon(sink, signer)
        daemon.step()
        last = daemon.signed[-1]
        await until(lambda: sink.stats.published == last.count + 1, "the signed round sent")
        being_signed = api_rig.Rig.step(daemon)  # handed to the signer: nothing back yet
        for _ in range(3):  # up to the limit after it, past the limit after the last signed
            daemon.step_unsigned("busy", being_signed.ts)
        await asyncio.sleep(0.2)
        assert told == [] and sink.stats.published == last.count + 1
        daemon.step_unsigned("busy", being_signed.ts)  # past the limit after it: hung
        await until(lambda: len(told) == 1, "the notice")
    assert (told[0]["ts"], told[0]["round"]) == (last.ts, last.round)
    assert "the signer skips its rounds: busy" in told[0]["message"]


async def test_notices_that_do_not_stall_a_signer(server: NatsServer) -> None:
    """The client takes a notice only for an allowed signer of its deployment, for the newest
    round it holds of it: a notice of an older round (a JetStream replay, a late copy), of
    signing off, of another deployment or another key changes nothing (the unattributable
    ones are logged, the first of them: one line per `log_every_ms`), and a malformed one is
    logged; the real one after them, signed and sent when the round is as old as a daemon's
    notice can be, is taken with its own words. Each one read is counted, the real one as
    `stalled` and the others as `stalled_refused`."""
    signer = RoundSigner(KEY, "test")
    rounds = api_rig.Rig(api_rig.make_config())
    older, newer = signer.sign(rounds.step()), signer.sign(rounds.step())
    client = OracleClient(
        {KEY.address}, deployment="test", max_age_ms=MAX_AGE_MS, now_ms=rounds.clock.now_ms
    )
    client.feed(older.envelope(0))
    client.feed(newer.envelope(0))
    rounds.clock.advance(STALL_NOTICE_MIN_AGE_MS)  # as old as a daemon's notice says

    def notice(ts: int, signer: str | None, deployment: str | None, message: str) -> bytes:
        return signed_notice(ts, 1, message, signer=signer, deployment=deployment)

    sent = [
        notice(older.ts, KEY.address, "test", "old news"),
        notice(newer.ts, None, None, "signing off"),
        notice(newer.ts, KEY.address, "staging", "another deployment"),
        notice(newer.ts, OTHER.address, "test", "another key"),
        b'{"code": "stalled", "ts": "0"}',
        notice(newer.ts, KEY.address.lower(), "test", "the real one"),
    ]
    publisher = await nats.connect(server.url, allow_reconnect=False)
    async with watching(client, server.url):
        async with asyncio.timeout(SAFETY_S):
            while not read(client):  # until the subscription is in
                await publisher.publish(SUBJECT, sent[0])  # one that is silently left out
                await asyncio.sleep(0.05)
        refused = client.stream_errors[STALLED_REFUSED]
        with capture_logs() as logs:
            for payload in sent:
                await publisher.publish(SUBJECT, payload)
            await until(lambda: bool(client.stalled), "the real one taken")
    await publisher.close()
    (stall,) = client.stalled.values()
    assert (stall.message, stall.ts) == ("the real one", newer.ts)
    assert client.stream_errors["stalled"] == 1
    assert client.stream_errors[STALLED_REFUSED] == refused + len(sent) - 1
    events = [(e["event"], e.get("signer")) for e in logs if e["event"].startswith("client nats")]
    assert events == [("client nats stalled", None), ("client nats notice malformed", None)]


def _early(signed: SignedRound, message: str = "too soon") -> bytes:
    """A notice of the round just signed, signed by its key as a daemon signs one."""
    return signed_notice(signed.ts, signed.round, message)


async def _read(client: OracleClient, publisher: Any, payload: bytes) -> None:
    """Publish one notice and wait until the client has read it (it counts every notice)."""
    before = read(client)
    await publisher.publish(SUBJECT, payload)
    await until(lambda: read(client) > before, "the notice read")


@pytest.mark.parametrize(
    ("floor_ms", "least_ms"),
    [(100, 500), (1_000, 1_000)],
    ids=["twice-the-gap", "the-floor"],
)
async def test_a_notice_sent_right_after_each_round_hides_nothing(
    server: NatsServer, floor_ms: int, least_ms: int
) -> None:
    """A notice sent after every round, naming the round just published and its signer, hid the
    daemon from that round to the next, every round, for as long as it went on (a quorum of
    such daemons: every market `unknown`); unsigned, anyone on the bus could send it. Beside
    the signature (next test), the client takes a notice only once the signer's newest round is
    older, by its clock, than `stall_notice_min_age_ms` and than twice the gap between its last
    two rounds, as it is when a daemon sends one: so notices that come sooner, signed by the key
    all the same (another process with the key, clocks apart), change nothing and are logged
    once, and the same notice sent when the round is that old is taken (rounds 250 ms apart: at
    two gaps, or at the floor when that is longer)."""
    signer = RoundSigner(KEY, "test")
    rounds = api_rig.Rig(api_rig.make_config())
    client = OracleClient(
        {KEY.address},
        deployment="test",
        max_age_ms=MAX_AGE_MS,
        now_ms=rounds.clock.now_ms,
        stall_notice_min_age_ms=floor_ms,
    )
    publisher = await nats.connect(server.url, allow_reconnect=False)
    async with watching(client, server.url):
        async with asyncio.timeout(SAFETY_S):  # until the subscription is in
            while not read(client):
                await publisher.publish(SUBJECT, b'{"code": "stalled", "ts": 0}')
                await asyncio.sleep(0.05)
        with capture_logs() as logs:
            for _ in range(5):  # a round (250 ms apart), then its notice at once
                signed = signer.sign(rounds.step())
                client.feed(signed.envelope(0))
                await _read(client, publisher, _early(signed))
                assert not client.stalled
                assert client.price("BTC/USD").status == "active"
            rounds.clock.advance(least_ms - 1)  # not as old as a daemon's notice: refused
            await _read(client, publisher, _early(signed))
            assert not client.stalled
            rounds.clock.advance(1)  # as old as a daemon's notice can be: taken
            await publisher.publish(SUBJECT, _early(signed, "late enough"))
            await until(lambda: bool(client.stalled), "the notice taken")
    await publisher.close()
    (stall,) = client.stalled.values()
    assert (stall.message, stall.ts) == ("late enough", signed.ts)
    refused = [e for e in logs if e["event"] == "client nats notice refused"]
    assert len(refused) == 1  # one line per log_every_ms, not one per notice
    assert refused[0]["signer"] == KEY.address
    assert refused[0]["age_ms"] == 0


async def test_a_notice_is_taken_only_with_its_signers_signature(server: NatsServer) -> None:
    """The notice was not signed: anyone on the bus could hide a daemon whose rounds were late
    (a notice sent once its round was as old as a daemon's can be). The client now takes a
    notice only when its signature, over its `ts`, `round` and `message` in the client's
    deployment, recovers the signer it names: unsigned, not a signature, or signed by another
    key, for another deployment or over other words, each is refused, counted in
    `stream_errors["stalled_refused"]` and logged (`client nats notice not verified`, with the
    reason, one line per reason per period); the daemon's own notice is then taken."""
    signer = RoundSigner(KEY, "test")
    rounds = api_rig.Rig(api_rig.make_config())
    signed = signer.sign(rounds.step())
    client = OracleClient(
        {KEY.address}, deployment="test", max_age_ms=MAX_AGE_MS, now_ms=rounds.clock.now_ms
    )
    client.feed(signed.envelope(0))
    rounds.clock.advance(STALL_NOTICE_MIN_AGE_MS)  # as old as a daemon's notice says
    ts, round_no, words = signed.ts, signed.round, "the latest round is old"
    real = msgspec.json.decode(signed_notice(ts, round_no, words))
    other_words = dict(real, message="other words")  # the signature of the real words
    other_round = dict(real, round=round_no + 1)
    refused = [
        signed_notice(ts, round_no, words, key=None),
        msgspec.json.encode(dict(real, signature="0x1234")),
        signed_notice(ts, round_no, words, key=OTHER),
        signed_notice(ts, round_no, words, signed_for="staging"),
        msgspec.json.encode(other_words),
        msgspec.json.encode(other_round),
    ]
    publisher = await nats.connect(server.url, allow_reconnect=False)
    async with watching(client, server.url):
        async with asyncio.timeout(SAFETY_S):  # until the subscription is in
            while not read(client):
                await publisher.publish(SUBJECT, b'{"code": "stalled", "ts": 0}')
                await asyncio.sleep(0.05)
        before = client.stream_errors[STALLED_REFUSED]
        with capture_logs() as logs:
            for payload in refused:
                await _read(client, publisher, payload)
                assert not client.stalled
            assert client.stream_errors[STALLED_REFUSED] == before + len(refused)
            assert client.stream_errors["stalled"] == 0
            await _read(client, publisher, msgspec.json.encode(real))
    await publisher.close()
    (stall,) = client.stalled.values()
    assert (stall.signer, stall.ts, stall.message) == (KEY.address, ts, words)
    assert client.stream_errors["stalled"] == 1
    lines = [
        (e["reason"], e["signer"]) for e in logs if e["event"] == "client nats notice not verified"
    ]
    assert lines == [
        ("unsigned", KEY.address),
        ("bad_signature", KEY.address),
        ("forged", KEY.address),
    ]


async def test_a_flood_of_notices_logs_a_line_per_kind_per_period(server: NatsServer) -> None:
    """Anyone on the bus can send notices: malformed ones, ones naming a signer the client does
    not allow, one it has heard nothing from yet. Each was a warning line, so a flood of them
    was a flood of log lines; now each kind is logged at most once every `log_every_ms`, the
    next line saying how many were held back (`suppressed`), as for refused prices. Every one
    is counted as refused (`stalled_refused`), the malformed ones too; none as `stalled`: before,
    the refused ones counted as `stalled`, like a stall taken, and the malformed ones not at all."""
    signer = RoundSigner(KEY, "test")
    rounds = api_rig.Rig(api_rig.make_config())
    client = OracleClient(
        {KEY.address}, deployment="test", max_age_ms=MAX_AGE_MS, now_ms=rounds.clock.now_ms
    )
    unknown = msgspec.json.encode(
        StallNotice("error", "stalled", "who?", rounds.clock.now_ms(), 1, OTHER.address, "test")
    )
    unheard = _early(signer.sign(rounds.step()))  # an allowed signer, nothing held of it yet
    kinds = [b"not json", unknown, unheard]
    publisher = await nats.connect(server.url, allow_reconnect=False)
    async with watching(client, server.url):
        async with asyncio.timeout(SAFETY_S):  # until the subscription is in
            while not read(client):
                await publisher.publish(SUBJECT, b'{"code": "stalled", "ts": 0}')
                await asyncio.sleep(0.05)
        errors = read(client)
        rounds.clock.advance(client.log_every_ms)  # the warm-up's line is a period ago
        with capture_logs() as logs:
            for _ in range(50):
                for payload in kinds:
                    await publisher.publish(SUBJECT, payload)
            await until(lambda: read(client) == errors + 150, "all read")
            rounds.clock.advance(client.log_every_ms)
            for payload in kinds:
                await publisher.publish(SUBJECT, payload)
            await until(lambda: read(client) == errors + 153, "all read")
    await publisher.close()
    lines = [(e["event"], e.get("signer"), e["suppressed"]) for e in logs]
    kinds_logged = [
        ("client nats notice malformed", None),
        ("client nats stalled", OTHER.address),
        ("client nats stalled", KEY.address),
    ]
    assert [line[:2] for line in lines] == kinds_logged * 2  # a line per kind per period
    assert [line[2] for line in lines[3:]] == [49, 49, 49]  # then the number held back
    assert not client.stalled
    assert client.stream_errors["stalled"] == 0  # every one refused


async def test_a_stall_while_the_bus_is_down_is_told_once_it_is_back(tmp_path: Path) -> None:
    """The stall watch tells the sink once per stalled round. If the server is unreachable at
    that moment the notice is counted `disconnected` and dropped, and nothing sent it later:
    the bus's subscribers, connected to the server again, heard nothing of a stall that was
    still going on, and kept the stalled round's price until max_age_ms. The sink now keeps
    the notice of a stall still going on and sends it again when it connects again; once a
    round came (submitted, even while disconnected), the stall is over and nothing is sent
    again (no stale notice). Stored by JetStream, so that this test reads what was sent."""
    srv = NatsServer(tmp_path / "nats")  # JetStream on, its store kept across the restarts
    await srv.start()
    stream = "STALLS"
    sink = NatsSink(NatsConfig(enabled=True, servers=(srv.url,), jetstream=True, stream=stream))
    task = asyncio.create_task(sink.run(), name="nats-sink")
    signer = RoundSigner(KEY, "test")
    rounds = api_rig.Rig(api_rig.make_config())
    try:
        async with asyncio.timeout(SAFETY_S):
            await sink.ready.wait()
        result = rounds.step()
        first = signer.sign(result)
        sink.submit(first)
        srv.stop()
        await until(lambda: not sink.stats.connected, "the sink disconnected")
        sink.stalled(stall_notice("the latest round is old", result.ts, result.round, signer))
        assert sink.stats.unpublished["disconnected"] == 1  # the notice, dropped for now
        await srv.start()
        await until(lambda: sink.stats.reconnects == 1, "the sink reconnected")
        reader = await nats.connect(srv.url, allow_reconnect=False)
        try:
            (told,) = await stalled_in(reader.jetstream(), stream)
        finally:
            await reader.close()
        assert (told["ts"], told["round"], told["signer"]) == (first.ts, first.round, KEY.address)
        assert told["message"] == "the latest round is old"
        # A round ends the stall, even one dropped while the server is away.
        srv.stop()
        await until(lambda: not sink.stats.connected, "the sink disconnected again")
        sink.submit(signer.sign(rounds.step()))
        await srv.start()
        await until(lambda: sink.stats.reconnects == 2, "the sink reconnected again")
        third = signer.sign(rounds.step())
        sink.submit(third)  # after any notice it would have queued on reconnecting
        reader = await nats.connect(srv.url, allow_reconnect=False)
        try:
            js = reader.jetstream()

            async def stored() -> int:
                last = await js.get_last_msg(stream, "oracled.rounds")
                return int(msgspec.json.decode(last.data)["ts"])

            async with asyncio.timeout(SAFETY_S):  # the round is stored: the queue went out
                while await stored() != third.ts:  # noqa: ASYNC110 - polled: no event for it
                    await asyncio.sleep(0.05)
            assert len(await stalled_in(js, stream)) == 1  # the first one only
        finally:
            await reader.close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        srv.stop()
