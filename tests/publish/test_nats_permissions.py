"""The NATS sink as a least-privilege user of a real nats-server.

The permissions docs/publishing.md lists (read from it here) are enough: no refusal, every
message reaches a consumer, the JetStream stream is made and stores them. Each entry left out
makes the server refuse that subject without closing the connection; the sink counts every
refusal by subject kind (and the metrics expose it), and logs it at error level once per kind,
then rate-limited with the count since the last line.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from prometheus_client.parser import text_string_to_metric_families
from publish_rig import T0, NatsServer, Rounds, make_config, until
from structlog.testing import capture_logs

from oracled.config import NatsConfig
from oracled.metrics import Metrics, MetricsInputs
from oracled.publish.nats import DENIED_SUBJECTS, NatsSink
from oracled.publish.signstall import stall_notice

DOCS = Path(__file__).resolve().parents[2] / "docs" / "publishing.md"
SAFETY_S = 15.0  # guards against hangs only
PASSWORD = "pa55-" + "c" * 27
ROUNDS = 3
MARKETS = 3  # make_config()'s
# The messages of ROUNDS rounds and one stall notice, by subject kind.
SENT = {"prices": ROUNDS * MARKETS, "rounds": ROUNDS, "stalled": 1}


def documented() -> list[tuple[list[str], list[str]]]:
    """The `permissions` blocks of the docs' least-privilege section, in order (without
    JetStream, with it): each as its publish and subscribe lists (`{deny: ">"}`: none)."""
    text = DOCS.read_text()
    section = text.split("### A least-privilege user", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```conf\n(permissions: \{.*?\})\n```", section, re.S)
    assert len(blocks) == 2, "the docs show two permission blocks: without and with JetStream"
    out = []
    for block in blocks:
        pub = re.search(r"publish: (\[.*?\])", block)
        sub = re.search(r"subscribe: (\[.*?\]|\{deny: \">\"\})", block)
        assert pub is not None and sub is not None, block
        publish = json.loads(pub.group(1))
        subscribe = [] if sub.group(1).startswith("{") else json.loads(sub.group(1))
        out.append((publish, subscribe))
    return out


PLAIN, JETSTREAM = documented()


def server_settings(publish: list[str], subscribe: list[str]) -> str:
    """The sink's user `oracled` with these permissions (an empty subscribe list: none), and a
    `reader` allowed everything."""
    sub = json.dumps(subscribe) if subscribe else '{deny: ">"}'
    return (
        "authorization { users = [\n"
        f'  {{ user: oracled, password: "{PASSWORD}",\n'
        f"    permissions: {{ publish: {json.dumps(publish)}, subscribe: {sub} }} }},\n"
        f'  {{ user: reader, password: "{PASSWORD}" }}\n'
        "] }"
    )


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start a nats-server with the sink's user so permitted; every one is stopped at the end."""
    started: list[NatsServer] = []

    async def _start(publish: list[str], subscribe: list[str], jetstream: bool) -> NatsServer:
        srv = NatsServer(
            tmp_path / f"nats{len(started)}",
            jetstream=jetstream,
            settings=server_settings(publish, subscribe),
        )
        started.append(srv)
        await srv.start()
        return srv

    yield _start
    for srv in started:
        srv.stop()


async def reader(url: str, got: list[str]) -> NatsClient:
    """A consumer of every `oracled.` subject, subscribed for sure when this returns."""
    nc = await nats.connect(url, user="reader", password=PASSWORD, allow_reconnect=False)

    async def keep(msg: Any) -> None:
        got.append(msg.subject)

    await nc.subscribe("oracled.>", cb=keep)
    inbox = nc.new_inbox()  # a message to ourselves behind the SUB: the server has it
    echo = await nc.subscribe(inbox, max_msgs=1)
    await nc.publish(inbox, b"")
    await echo.next_msg(timeout=SAFETY_S)
    return nc


def sink_for(srv: NatsServer, jetstream: bool, prefix: str = "oracled", **kwargs: Any) -> NatsSink:
    cfg = NatsConfig(
        enabled=True,
        servers=(srv.url,),
        user="oracled",
        password_env="NATS_PASS",
        jetstream=jetstream,
        subject_prefix=prefix,
    )
    return NatsSink(cfg, env={"NATS_PASS": PASSWORD}, jetstream_timeout_s=0.5, **kwargs)


async def publish_all(sink: NatsSink) -> None:
    """Connect the sink, then give it ROUNDS rounds and a stall notice behind them."""
    rounds = Rounds(make_config())
    async with asyncio.timeout(SAFETY_S):
        await sink.ready.wait()
    latest = rounds.step()
    sink.submit(latest)
    for _ in range(ROUNDS - 1):
        latest = rounds.step()
        sink.submit(latest)
    sink.stalled(stall_notice("no round for 3 s", latest.ts, latest.round, None))
    await until(lambda: sink.stats.published == sum(SENT.values()), "everything handed over")


def denied_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "nats permission denied"]


def exposed(sink: NatsSink) -> dict[str, float]:
    """oracled_nats_permission_denied_total as a real registry exposes it, by subject."""
    inputs = MetricsInputs(
        core=Rounds(make_config()).core,
        latest=lambda: None,
        source_stats={},
        now_ms=lambda: T0,
        stream_subscribers=lambda: 0,
        stream_dropped=dict,
        nats=sink.stats,
    )
    body, _ = Metrics(inputs).render()
    return {
        s.labels["subject"]: s.value
        for family in text_string_to_metric_families(body.decode())
        if family.name == "oracled_nats_permission_denied"
        for s in family.samples
        if s.name.endswith("_total")
    }


@pytest.mark.parametrize("jetstream", [False, True], ids=["core", "jetstream"])
async def test_the_documented_permissions_are_enough(
    start: Callable[..., Any], jetstream: bool
) -> None:
    """With exactly the docs' permissions every message reaches a consumer (and the stream,
    which the sink could create), and the server refuses the sink nothing."""
    publish, subscribe = JETSTREAM if jetstream else PLAIN
    srv = await start(publish, subscribe, jetstream)
    got: list[str] = []
    nc = await reader(srv.url, got)
    sink = sink_for(srv, jetstream)
    with capture_logs() as logs:
        task = asyncio.create_task(sink.run())
        try:
            await publish_all(sink)
            await until(lambda: len(got) == sum(SENT.values()), "every message at the reader")
            await sink.flush()  # a PING after the publishes: any refusal of them came before
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    try:
        if jetstream:
            info = await nc.jetstream().stream_info("ORACLED")
            assert info.state.messages == sum(SENT.values())
    finally:
        await nc.close()
    assert got[-1] == "oracled.stalled"
    assert sink.stats.permission_denied == dict.fromkeys(DENIED_SUBJECTS, 0)
    assert denied_lines(logs) == []
    assert not [e for e in logs if e["log_level"] == "error"], logs


def one_fewer() -> list[Any]:
    """Each documented entry left out, with the kind the server then refuses and how often."""
    cases = []
    for jetstream, (publish, subscribe) in ((False, PLAIN), (True, JETSTREAM)):
        for entry in [*publish, *subscribe]:
            if entry.startswith("$JS.API."):
                kind, count = "jetstream_api", 1  # one stream creation per connection
            elif entry.startswith("_INBOX."):
                kind, count = "inbox", 1  # the reply subscription of that request
            else:
                kind = entry.split(".")[1]
                count = SENT[kind]
            less = ([p for p in publish if p != entry], [s for s in subscribe if s != entry])
            cases.append(pytest.param(jetstream, *less, kind, count, id=f"{jetstream=}-{entry}"))
    return cases


@pytest.mark.parametrize(("jetstream", "publish", "subscribe", "kind", "count"), one_fewer())
async def test_each_documented_permission_left_out_is_counted_logged_and_exposed(
    start: Callable[..., Any],
    jetstream: bool,
    publish: list[str],
    subscribe: list[str],
    kind: str,
    count: int,
) -> None:
    """Without one entry the connection stays up and the server refuses that subject: every
    refusal is counted under its kind (only there) and exposed, though handed over (`published`),
    and logged at error level once (the next line waits a minute)."""
    srv = await start(publish, subscribe, jetstream)
    sink = sink_for(srv, jetstream)
    with capture_logs() as logs:
        task = asyncio.create_task(sink.run())
        try:
            await publish_all(sink)
            await until(lambda: sink.stats.permission_denied[kind] == count, f"{kind} refused")
            await sink.flush()  # any further refusal would have come before its PONG
            assert sink.stats.connected, "a refused subject does not cost the connection"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    expected = dict.fromkeys(DENIED_SUBJECTS, 0) | {kind: count}
    assert sink.stats.permission_denied == expected
    assert exposed(sink) == {k: float(v) for k, v in expected.items()}
    assert sink.stats.published == sum(SENT.values())
    lines = denied_lines(logs)
    assert len(lines) == 1, lines
    assert lines[0]["log_level"] == "error"
    assert (lines[0]["kind"], lines[0]["refusals"], lines[0]["auth"]) == (kind, 1, "user")
    assert lines[0]["action"] == ("subscription" if kind == "inbox" else "publish")
    assert PASSWORD not in repr(logs)


async def test_refusals_are_logged_again_after_the_interval_with_their_count(
    start: Callable[..., Any],
) -> None:
    """Refusals of one kind within the interval make one line; the first after it makes the
    next, which counts every refusal since the last line."""
    publish, subscribe = PLAIN
    srv = await start([p for p in publish if p != "oracled.rounds"], subscribe, False)
    sink = sink_for(srv, False, refusal_log_every_s=1.0)
    rounds = Rounds(make_config())
    with capture_logs() as logs:
        task = asyncio.create_task(sink.run())
        try:
            async with asyncio.timeout(SAFETY_S):
                await sink.ready.wait()
            for _ in range(3):  # back to back: refused within milliseconds of each other
                sink.submit(rounds.step())
            await until(lambda: sink.stats.permission_denied["rounds"] == 3, "3 refusals")
            first = denied_lines(logs)
            await asyncio.sleep(1.05)
            sink.submit(rounds.step())
            await until(lambda: sink.stats.permission_denied["rounds"] == 4, "the 4th refusal")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert [line["refusals"] for line in first] == [1]
    lines = denied_lines(logs)
    assert len(lines) == 2, lines
    assert lines[1]["refusals"] == 3  # the two held back, and this one


async def test_a_prefix_in_capitals_is_told_apart_though_the_client_lowers_the_error(
    start: Callable[..., Any],
) -> None:
    """nats-py hands the server's error over in lower case: a refused price under the prefix
    `Eu.Oracled` still counts as `prices`, not `other`, and the documented lists with that
    prefix put in place of `oracled` are enough for the rest."""
    publish, subscribe = PLAIN
    mine = [p.replace("oracled.", "Eu.Oracled.") for p in publish if ".prices." not in p]
    srv = await start(mine, subscribe, False)
    sink = sink_for(srv, False, prefix="Eu.Oracled")
    with capture_logs() as logs:
        task = asyncio.create_task(sink.run())
        try:
            await publish_all(sink)
            await until(lambda: sink.stats.permission_denied["prices"] == SENT["prices"], "refused")
            await sink.flush()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert sink.stats.permission_denied == dict.fromkeys(DENIED_SUBJECTS, 0) | {
        "prices": SENT["prices"]
    }
    assert [line["subject"] for line in denied_lines(logs)] == ["eu.oracled.prices.btc-usd"]
