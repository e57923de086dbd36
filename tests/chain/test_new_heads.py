"""How the reader follows blocks when newHeads is refused, breaks, or is not configured: it
polls meanwhile, comes back to newHeads when it can, and says so once, not on every retry."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Sequence

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from chain_rig import Anvil, Chain, Deployed
from prometheus_client.parser import text_string_to_metric_families
from reading import Collected, make_reader, watch, watch_eth
from rpc_proxy import RpcProxy
from structlog.testing import capture_logs
from ws_relay import WsRelay

from oracled.config import parse_config
from oracled.core import Core
from oracled.metrics import Metrics, MetricsInputs
from oracled.sources.evm.chain import ChainReader
from oracled.sources.evm.feed import Block, Call, Feed, FeedResult

pytestmark = pytest.mark.asyncio(loop_scope="session")

UPDATE = "updateAnswer(int256)"


class FixedDelay(random.Random):
    """Backoff without jitter: every reconnect waits 100 ms, so retries come quickly and in a
    known number."""

    def uniform(self, a: float, b: float) -> float:
        return min(b, 0.1)


@pytest_asyncio.fixture(loop_scope="session")
async def relay(anvil: Anvil, http: aiohttp.ClientSession) -> AsyncIterator[WsRelay]:
    r = await WsRelay(anvil.ws_url, http).start()
    yield r
    await r.stop()


async def until(done: Callable[[], bool]) -> None:
    """Wait for a state of the reader running in the background (not a timing assertion: the
    bound only turns a hang into a failure)."""
    async with asyncio.timeout(10):
        while not done():  # noqa: ASYNC110 - the reader's counters have no event to wait on
            await asyncio.sleep(0.01)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def read_by_new_heads(chain: Chain, snapshot: Deployed, got: Collected) -> None:
    """Move the answer and wait for it: it arrives with the reader following newHeads."""
    await chain.transact(snapshot.eth_aggregator, UPDATE, 3333_00000000)
    await got.until(lambda: got.last.price == 3333.0)
    assert got.stats.state == "streaming"


async def test_a_refused_subscription_polls_meanwhile_and_returns_to_new_heads(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, relay: WsRelay
) -> None:
    """A node that refuses newHeads: the reader polls (the price still comes, the feeds say
    polling), retries the subscription with backoff, warns once per change rather than once
    per retry, and follows newHeads as soon as the node accepts."""
    relay.mode = "refuse"
    reader = make_reader([anvil.url], http, ws_url=relay.url, rng=FixedDelay(),
                         poll_interval_s=0.02)  # fmt: skip
    got = watch_eth(reader, snapshot.eth_proxy)
    with capture_logs() as logs:
        task = asyncio.create_task(reader.run())
        try:
            await got.until(lambda: bool(got.quotes))  # polled while refused
            seen = relay.connections
            await until(lambda: relay.connections >= seen + 2)  # refused twice more
            assert reader.stats.mode == "polling"
            assert [q.price for q in got.quotes] == [3000.0]
            assert got.stats.state == "polling"
            # The first refusal warns, and so does the first after a poll published (a change)
            # if the poll that runs while the socket opens came second; the refusals after,
            # with no new block, do not.
            down = [e for e in logs if e["event"] == "newHeads down, polling"]
            assert 1 <= len(down) <= 2
            assert "subscription refused" in down[0]["error"]
            relay.mode = "relay"
            await until(lambda: relay.following == 1 and reader.stats.mode == "newHeads")
            await read_by_new_heads(chain, snapshot, got)
        finally:
            await stop(task)


def scraped_modes(reader: ChainReader) -> dict[str, float]:
    """The reader's `oracled_chain_mode` series as a scrape renders them: mode -> value."""
    market = {
        "symbol": "BTC/USD",
        "min_sources": 1,
        "sources": [{"source": "a", "pair": "BTC/USD"}],
    }
    cfg = parse_config({"sources": {"a": {"type": "binance"}}, "markets": [market]}, env={})
    metrics = Metrics(
        MetricsInputs(
            core=Core(cfg), latest=lambda: None, source_stats={}, now_ms=lambda: 0,
            stream_subscribers=lambda: 0, stream_dropped=dict, chains=lambda: [reader.stats],
        )
    )  # fmt: skip
    body, _ = metrics.render()
    return {
        sample.labels["mode"]: sample.value
        for family in text_string_to_metric_families(body.decode())
        if family.name == "oracled_chain_mode"
        for sample in family.samples
    }


async def test_the_readers_mode_is_exported_starting_polling_then_new_heads(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed, relay: WsRelay
) -> None:
    """`oracled_chain_mode` says how the reader follows blocks, one mode at 1: starting before
    it runs, polling while newHeads is refused, new_heads once the node accepts. Before, the
    mode was held but not exported, and a reader left on polling did not show."""
    relay.mode = "refuse"
    reader = make_reader([anvil.url], http, ws_url=relay.url, rng=FixedDelay(),
                         poll_interval_s=0.02)  # fmt: skip
    got = watch_eth(reader, snapshot.eth_proxy)
    assert scraped_modes(reader) == {"starting": 1.0, "polling": 0.0, "new_heads": 0.0}
    task = asyncio.create_task(reader.run())
    try:
        await got.until(lambda: bool(got.quotes))  # polled while refused
        assert scraped_modes(reader) == {"starting": 0.0, "polling": 1.0, "new_heads": 0.0}
        relay.mode = "relay"
        await until(lambda: reader.stats.mode == "newHeads")
        assert scraped_modes(reader) == {"starting": 0.0, "polling": 0.0, "new_heads": 1.0}
    finally:
        await stop(task)


class BrokenFeed(Feed):
    """A feed with a bug: asked for its calls, it raises what no read failure is."""

    __slots__ = ()

    def calls(self) -> Sequence[Call]:
        raise RuntimeError("a bug in a feed")

    def decode(
        self, results: Sequence[tuple[bool, bytes]], block: Block, recv_ts: int
    ) -> FeedResult:
        return None


async def test_a_reader_that_crashed_says_starting_until_its_restart_polls(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, relay: WsRelay
) -> None:
    """A reader that crashes (here a feed's bug, on the next block) waits for its supervisor's
    restart, 1 s to 30 s: meanwhile its mode says `starting`, not the `new_heads` it had, and
    `oracled_chain_mode` does not show a reader that reads nothing as following newHeads."""
    reader = make_reader([anvil.url], http, ws_url=relay.url, rng=FixedDelay(),
                         poll_interval_s=0.02)  # fmt: skip
    got = watch_eth(reader, snapshot.eth_proxy)
    task = asyncio.create_task(reader.run())
    try:
        await until(lambda: reader.stats.mode == "newHeads")
        assert scraped_modes(reader)["new_heads"] == 1.0
        watch(reader, BrokenFeed("bug", "BUG/USD"))
        await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
        with pytest.raises(RuntimeError, match="a bug in a feed"):
            await task
    finally:
        task.cancel()
    assert reader.stats.mode == "starting"
    assert scraped_modes(reader) == {"starting": 1.0, "polling": 0.0, "new_heads": 0.0}
    assert [q.price for q in got.quotes] == [3000.0]


async def test_a_new_heads_handshake_redirected_elsewhere_is_refused_and_blocks_are_polled(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, relay: WsRelay
) -> None:
    """A newHeads endpoint that answers its handshake with a redirect to another host (here
    anvil's own socket, which would serve real heads): the reader does not subscribe there,
    says why without the URL, and polls. Before, aiohttp followed it and the reader took its
    heads from a host nobody configured."""
    relay.mode = "redirect"
    reader = make_reader([anvil.url], http, ws_url=relay.url, rng=FixedDelay(),
                         poll_interval_s=0.02)  # fmt: skip
    got = watch_eth(reader, snapshot.eth_proxy)
    with capture_logs() as logs:
        task = asyncio.create_task(reader.run())
        try:
            await got.until(lambda: bool(got.quotes))  # polled
            await until(lambda: relay.connections >= 2)  # tried again, refused again
            assert reader.stats.mode == "polling"
        finally:
            await stop(task)
    down = [e for e in logs if e["event"] == "newHeads down, polling"]
    assert down and "redirected to another URL" in down[0]["error"], down


async def test_a_new_heads_socket_that_ends_falls_back_to_polling_and_reconnects(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, relay: WsRelay
) -> None:
    """The subscription is accepted and the socket then closes: the reader notices, polls, and
    subscribes again; a socket that carries non-notice messages is followed through them."""
    relay.mode = "drop_after_ack"
    reader = make_reader([anvil.url], http, ws_url=relay.url, rng=FixedDelay(),
                         poll_interval_s=0.02)  # fmt: skip
    got = watch_eth(reader, snapshot.eth_proxy)
    with capture_logs() as logs:
        task = asyncio.create_task(reader.run())
        try:
            await until(lambda: relay.connections >= 2)
            assert [q.price for q in got.quotes] == [3000.0]
            down = [e for e in logs if e["event"] == "newHeads down, polling"]
            assert "socket ended" in down[0]["error"]
            relay.mode = "relay"
            await until(lambda: relay.following == 1 and reader.stats.mode == "newHeads")
            await read_by_new_heads(chain, snapshot, got)
        finally:
            await stop(task)


async def test_a_socket_dropping_after_every_subscription_is_logged_once_a_minute(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, relay: WsRelay
) -> None:
    """A newHeads socket that ends after each subscription while the chain moves: the polls
    between publish new blocks, and `newHeads down, polling` is still written once a minute,
    not once per retry. Before, each published block made the next drop a change of kind,
    and every retry wrote its line."""
    relay.mode = "drop_after_ack"
    reader = make_reader([anvil.url], http, ws_url=relay.url, rng=FixedDelay(),
                         poll_interval_s=0.02)  # fmt: skip
    got = watch_eth(reader, snapshot.eth_proxy)
    with capture_logs() as logs:
        task = asyncio.create_task(reader.run())
        try:
            for price in (3100, 3200, 3300):
                await chain.transact(snapshot.eth_aggregator, UPDATE, price * 10**8)
                await got.until(lambda p=price: bool(got.quotes) and got.last.price == p)
                seen = relay.connections
                await until(lambda s=seen: relay.connections >= s + 2)  # dropped since
        finally:
            await stop(task)
    down = [e for e in logs if e["event"] == "newHeads down, polling"]
    assert len(down) == 1, down  # before: one per failure
    assert down[0]["failures"] == 1
    assert "socket ended" in down[0]["error"]
    # Each socket that ended is counted all the same, as no poll left it (before: not at all).
    stats = reader.stats
    assert relay.connections - 1 <= stats.failed_left <= relay.connections  # the last: cut?
    assert (stats.silent_left, stats.refused_left) == (0, 0)


@pytest.mark.usefixtures("daemon_recursion_limit")
async def test_a_new_heads_message_nested_too_deep_falls_back_to_polling_and_reconnects(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, relay: WsRelay
) -> None:
    """A message on the newHeads socket nested past the decoder's depth limit (a broken or
    hostile node) raises RecursionError, not a msgspec error: the reader now takes it as a
    broken subscription (says so, polls, subscribes again) instead of letting it end run(),
    which crashed the chain reader (its supervisor restarted it with a traceback)."""
    relay.mode = "deep"
    reader = make_reader([anvil.url], http, ws_url=relay.url, rng=FixedDelay(),
                         poll_interval_s=0.02)  # fmt: skip
    got = watch_eth(reader, snapshot.eth_proxy)
    with capture_logs() as logs:
        task = asyncio.create_task(reader.run())
        try:
            await until(lambda: relay.connections >= 2 or task.done())
            assert not task.done(), task.exception()
            down = [e for e in logs if e["event"] == "newHeads down, polling"]
            assert down[0]["error"].startswith("RecursionError")
            relay.mode = "relay"
            await until(lambda: relay.following == 1 and reader.stats.mode == "newHeads")
            await read_by_new_heads(chain, snapshot, got)
        finally:
            await stop(task)


async def test_a_notice_whose_number_is_no_hex_quantity_is_counted_as_a_polled_one_is(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, relay: WsRelay
) -> None:
    """A newHeads notice was turned into a block by `int(x, 16)` alone, without the checks of
    a polled head: a number "-0x5" became block -5, counted as a block gone backwards. Its
    header now goes through the polled head's checks: counted as a failed read, never as a
    block, the subscription kept."""
    relay.mode = "negative"
    reader = make_reader([anvil.url], http, ws_url=relay.url, rng=FixedDelay())
    got = watch_eth(reader, snapshot.eth_proxy)
    with capture_logs() as logs:
        task = asyncio.create_task(reader.run())
        try:
            await until(lambda: relay.following == 1 and reader.stats.mode == "newHeads")
            failed = reader.stats.reads_failed
            await chain.mine()
            await until(lambda: relay.garbled >= 1)
            await until(lambda: reader.stats.reads_failed > failed or reader.stats.backwards > 0)
            assert reader.stats.backwards == 0
            assert reader.stats.reads_failed == failed + 1
            assert relay.connections == 1 and reader.stats.mode == "newHeads"
            (event,) = [e for e in logs if e["event"] == "read failed"]
            assert event["error"].startswith("newHeads notice: block header: number")
            assert len(got.quotes) == 1  # the head polled at the subscription's start only
        finally:
            await stop(task)


async def test_without_a_ws_url_the_reader_polls_every_interval(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A chain with no ws_url is polled: each new block's answer arrives from a poll, and the
    feeds say polling."""
    reader = make_reader([anvil.url], http, poll_interval_s=0.02)
    got = watch_eth(reader, snapshot.eth_proxy)
    task = asyncio.create_task(reader.run())
    try:
        await got.until(lambda: bool(got.quotes))
        await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
        await got.until(lambda: got.last.price == 3100.0)
        assert reader.stats.mode == "polling"
        assert got.stats.state == "polling"
    finally:
        await stop(task)


async def test_heads_arriving_during_a_slow_read_are_skipped_for_the_newest(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """An RPC endpoint slower than the chain: the heads that arrive while a read is in flight
    are not read one after the other (the reader would fall one more block behind with every
    block, up to max_block_age_s); the next read is of the newest head, and each head passed
    over is counted as superseded."""
    reader = make_reader([proxy.url], http, ws_url=anvil.ws_url, timeout_s=5.0)
    got = watch_eth(reader, snapshot.eth_proxy)
    task = asyncio.create_task(reader.run())
    try:
        await until(lambda: reader.stats.mode == "newHeads" and bool(got.quotes))
        proxy.mode = "hold"
        await chain.mine()  # its read is held: a slow endpoint
        await until(lambda: proxy.held == 1)
        await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
        newest = await chain.transact(snapshot.eth_aggregator, UPDATE, 3200_00000000)
        await until(lambda: reader.stats.superseded == 1)  # 3100's head, passed by 3200's
        proxy.mode = "pass"
        proxy.release.set()
        await got.until(lambda: got.last.price == 3200.0)
        assert [q.price for q in got.quotes] == [3000.0, 3200.0]
        assert reader.stats.last_block == int(newest["blockNumber"], 16)
        assert reader.stats.superseded == 1
    finally:
        await stop(task)


class RecordedDelay(random.Random):
    """Backoff that records each ceiling it is given (the backoff's size) and waits 10 ms."""

    def __init__(self) -> None:
        super().__init__()
        self.ceilings: list[float] = []

    def uniform(self, a: float, b: float) -> float:
        self.ceilings.append(b)
        return 0.01


async def test_the_backoff_starts_again_after_a_subscription_that_delivered_heads(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, relay: WsRelay
) -> None:
    """Refusals grow the reconnect backoff; once a subscription has delivered heads, the next
    break starts from the first step again, not from where the earlier refusals left it (after a
    few breaks over a long run the reader would otherwise always wait the longest step, polling,
    before it came back to newHeads)."""
    relay.mode = "refuse"
    delays = RecordedDelay()
    reader = make_reader([anvil.url], http, ws_url=relay.url, rng=delays, poll_interval_s=0.02)
    got = watch_eth(reader, snapshot.eth_proxy)
    task = asyncio.create_task(reader.run())
    try:
        await until(lambda: len(delays.ceilings) >= 3)
        assert delays.ceilings[:3] == [1.0, 2.0, 4.0]
        relay.mode = "relay"
        await until(lambda: relay.following == 1 and reader.stats.mode == "newHeads")
        await read_by_new_heads(chain, snapshot, got)
        seen = len(delays.ceilings)
        await relay.stop()  # the socket breaks after it delivered a head
        await until(lambda: len(delays.ceilings) > seen)
        assert delays.ceilings[seen] == 1.0
    finally:
        await stop(task)


async def test_a_refused_handshake_is_logged_without_the_url_and_its_key(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed
) -> None:
    """A provider's WebSocket URL carries its API key in the path, and a handshake it refuses
    (a bad key, a rate limit: HTTP 401, 429) raised an error whose text is the whole URL: the
    warning gives the status and the redacted endpoint only."""

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=401)

    app = web.Application()
    app.router.add_get("/ws/v3/{key}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    reader = make_reader([anvil.url], http, ws_url=f"ws://127.0.0.1:{port}/ws/v3/S3CRETKEY",
                         rng=FixedDelay(), poll_interval_s=0.02)  # fmt: skip
    got = watch_eth(reader, snapshot.eth_proxy)
    try:
        with capture_logs() as logs:
            task = asyncio.create_task(reader.run())
            try:
                await until(lambda: any(e["event"] == "newHeads down, polling" for e in logs))
                await got.until(lambda: bool(got.quotes))  # polled meanwhile
            finally:
                await stop(task)
        down = next(e for e in logs if e["event"] == "newHeads down, polling")
        assert "401" in down["error"]
        assert f"ws://127.0.0.1:{port}" in down["error"]
        assert "S3CRETKEY" not in repr(logs)
    finally:
        await runner.cleanup()


async def test_blocks_are_polled_while_the_new_heads_socket_is_opening(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A WebSocket endpoint that accepts the connection and never answers the upgrade (a hung
    or blackholed endpoint) does not stop the reading: the reader polls while the socket is
    opening, so blocks keep coming from the HTTP endpoint whatever the socket does."""
    held: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as patient:  # no timeout: the socket opens forever
        reader = make_reader([anvil.url], patient, ws_url=f"ws://127.0.0.1:{port}",
                             poll_interval_s=0.02)  # fmt: skip
        got = watch_eth(reader, snapshot.eth_proxy)
        task = asyncio.create_task(reader.run())
        try:
            await got.until(lambda: bool(got.quotes))
            await chain.transact(snapshot.eth_aggregator, UPDATE, 3100_00000000)
            await got.until(lambda: got.last.price == 3100.0)
            assert len(held) == 1  # still the first socket, still opening
            assert (reader.stats.mode, got.stats.state) == ("polling", "polling")
        finally:
            await stop(task)
            server.close()
            await server.wait_closed()


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        # Accepted, then never a notice (the socket up and answering pings): after three block
        # times of silence the reader polls, and the poll finds the block the socket kept quiet
        # about (not only after max_block_age_s, 300 s).
        ("silent", "silent"),
        # Every head from the future (refused, counted `future`), more often than three block
        # times: the silence rule never fired, and the reader stayed on the socket, refusing
        # head after head, while the chain moved on unread. Refused heads no longer break the
        # silence.
        ("future", "only refused heads"),
    ],
)
async def test_a_subscription_that_delivers_no_usable_head_is_left_for_polling(
    anvil: Anvil,
    http: aiohttp.ClientSession,
    chain: Chain,
    snapshot: Deployed,
    relay: WsRelay,
    mode: str,
    why: str,
) -> None:
    """A subscription silent, or sending only heads from the future: with `block_time_s`, after
    three block times without a usable head the reader polls; the poll finds the new block, so
    the new answer arrives, the socket is left (counted by its reason, logged with it), and the
    reader subscribes again; a second such subscription is left the same way."""
    relay.mode = mode
    reader = make_reader([anvil.url], http, ws_url=relay.url, rng=FixedDelay(),
                         poll_interval_s=0.02, block_time_s=0.1)  # fmt: skip
    got = watch_eth(reader, snapshot.eth_proxy)
    stats = reader.stats
    with capture_logs() as logs:
        task = asyncio.create_task(reader.run())
        try:
            await until(lambda: stats.mode == "newHeads")
            assert [q.price for q in got.quotes] == [3000.0]
            await chain.transact(snapshot.eth_aggregator, UPDATE, 3200_00000000)
            await got.until(lambda: got.last.price == 3200.0)
            left = (lambda: stats.silent_left) if mode == "silent" else (lambda: stats.refused_left)
            await until(lambda: left() >= 1 and relay.connections >= 2 and stats.mode == "newHeads")
            if mode == "silent":
                assert stats.refused_left == 0
            else:
                assert stats.silent_left == 0 and stats.future_blocks >= 2  # refused one by one
            down = [e for e in logs if e["event"] == "newHeads down, polling"]
            assert why in down[0]["error"]
            relay.mode = "relay"
            await chain.mine()  # the second such subscription is left the same way
            await until(lambda: relay.following == 1 and stats.mode == "newHeads")
            await read_by_new_heads(chain, snapshot, got)
            assert stats.last_block is not None and stats.last_block < 1 << 32
        finally:
            await stop(task)


async def test_a_quiet_chain_is_polled_but_keeps_its_subscription(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed, relay: WsRelay
) -> None:
    """No notice because no block was made: each silence of three block times costs one poll,
    which finds nothing new, and the subscription is kept (no reconnect, no warning)."""
    relay.mode = "silent"
    reader = make_reader([anvil.url], http, ws_url=relay.url, rng=FixedDelay(),
                         poll_interval_s=0.02, block_time_s=0.05)  # fmt: skip
    watch_eth(reader, snapshot.eth_proxy)
    with capture_logs() as logs:
        task = asyncio.create_task(reader.run())
        try:
            await until(lambda: reader.stats.mode == "newHeads")
            trips = reader.stats.round_trips
            await until(lambda: reader.stats.round_trips >= trips + 3)  # polled in the silence
            assert relay.connections == 1
            assert reader.stats.mode == "newHeads"
            assert not [e for e in logs if e["event"] == "newHeads down, polling"]
        finally:
            await stop(task)
