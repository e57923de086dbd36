"""OracleClient.watch_ws against the API's stall rig: a daemon that says its rounds have stalled.

The daemon's parts are the API tests' rig (a real core, hub and app on loopback) signing each
round; its round loop "stalls" when the test moves the rig's clock past the limit without a
round, and the app's stall watch sends the `stalled` error frame (docs/contracts.md, Stream
errors), to the client's signed subscription signed with the rig's key. The client's clock is
the rig's, and trusts reports for 60 s: far longer than the daemon's limit, so only the frame
can tell the client that the round is no current price.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from oracled.api import ApiContext, build_app
from oracled.client import MarketView, OracleClient
from oracled.core import RoundResult
from oracled.publish.signer import RoundSigner, SignedRound, SigningKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
import api_rig  # the API tests' rig: a core, a hub and a clock, wired by hand

KEY_A = SigningKey.from_hex("0x" + "44" * 32)
KEY_B = SigningKey.from_hex("0x" + "55" * 32)
SAFETY_S = 15.0  # guards against hangs only
MAX_AGE_MS = 60_000  # the client's: far past the daemon's stall limit
NOTICE_MIN_AGE_MS = 500  # the client's least age of a round told stalled: the daemon's floor


class StallingDaemon(api_rig.Rig):
    """The API rig signing every round with `key`, with a readiness floor of 0.5 s: its stall
    limit is 3 intervals (750 ms), and its stall watch looks every 75 ms."""

    LIMIT_MS = 750

    def __init__(self, key: SigningKey) -> None:
        super().__init__(api_rig.make_config())
        self.signer = RoundSigner(key, "test")
        self.hub.signer = key.address
        self.signed: list[SignedRound] = []

    def context(self) -> ApiContext:
        return dataclasses.replace(super().context(), ready_min_s=0.5)

    def step(self, markets: dict[str, float] | None = None) -> RoundResult:
        result = super().step(markets)
        self.signed.append(self.signer.sign(result))
        self.hub.publish_signed(self.signed[-1])
        return result

    def stall(self) -> None:
        """Past the limit without a round: the loop is stalled."""
        self.clock.advance(self.LIMIT_MS + 1)


@asynccontextmanager
async def served(daemon: StallingDaemon) -> AsyncIterator[str]:
    """The daemon's API on loopback; yields its base URL."""
    async with api_rig.DaemonServer(build_app(daemon.context()), host="127.0.0.1") as server:
        yield str(server.make_url("/"))


@asynccontextmanager
async def watching(client: OracleClient, url: str, markets: list[str]) -> AsyncIterator[None]:
    """`client.watch_ws(url, markets)` for the block's length."""
    watcher = asyncio.create_task(client.watch_ws(url, markets, reconnect_s=0.05))
    try:
        yield
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def until(done: Callable[[], bool]) -> None:
    async with asyncio.timeout(SAFETY_S):
        while not done():  # noqa: ASYNC110 - polled: the conditions have no event of their own
            await asyncio.sleep(0.01)


def priced_at(client: OracleClient, market: str, ts: int) -> Callable[[], bool]:
    """The market is priced (active or degraded: ETH/USD and SOL/USD are thin) from the round
    at `ts`."""
    return lambda: client.price(market).price is not None and client.price(market).ts == ts


async def test_a_stalled_daemons_reports_stop_counting_until_a_newer_round_and_say_why() -> None:
    """The client trusts a report for 60 s; the daemon says its rounds stalled once its round
    is 0.75 s old. Before, the client only counted the frame and priced BTC/USD from that round
    for 59 s more. Now every market held from the daemon is `unknown` at once, its reports left
    out and the `Stall` named (signer, the round time held, the daemon's words, the URL); a late
    copy of the stalled round (SOL/USD's, fed by hand) does not end it; the next round does, and
    the markets are priced again. One warning when it begins, one info line when it ends."""
    daemon = StallingDaemon(KEY_A)
    daemon.step()
    ts1 = daemon.clock.now_ms()
    client = OracleClient(
        {KEY_A.address},
        deployment="test",
        max_age_ms=MAX_AGE_MS,
        now_ms=daemon.clock.now_ms,
        stall_notice_min_age_ms=NOTICE_MIN_AGE_MS,
    )
    with capture_logs() as logs:
        async with served(daemon) as url, watching(client, url, ["BTC/USD", "ETH/USD"]):
            await until(priced_at(client, "BTC/USD", ts1))
            await until(priced_at(client, "ETH/USD", ts1))
            daemon.stall()
            await until(lambda: bool(client.stalled))
            (stall,) = client.stalled.values()
            assert (stall.signer, stall.identity, stall.ts, stall.source) == (
                KEY_A.address,
                KEY_A.address,
                ts1,
                url,
            )
            assert stall.message.startswith("the latest round is 0.8 s old (limit 0.75 s)")
            assert stall.at_ms == daemon.clock.now_ms()
            for market in ("BTC/USD", "ETH/USD"):
                assert client.price(market) == MarketView(
                    market, "unknown", None, None, (), (), stalled=(stall,)
                )
            # SOL/USD's report of the stalled round, arriving late: taken, not current.
            client.feed(daemon.signed[0].envelope(2))
            assert client.price("SOL/USD").stalled == (stall,)
            assert client.price("SOL/USD").status == "unknown"
            assert client.stalled == {KEY_A.address: stall}
            daemon.step()  # rounds again
            ts2 = daemon.clock.now_ms()
            await until(priced_at(client, "BTC/USD", ts2))
            await until(priced_at(client, "ETH/USD", ts2))
    assert not client.stalled
    assert client.price("BTC/USD").stalled == ()
    # What was held counts again, as fresh as its round: the daemon's rounds are current.
    assert (client.price("SOL/USD").status, client.price("SOL/USD").ts) == ("degraded", ts1)
    assert dict(client.stream_errors) == {"stalled": 1}
    told = [e for e in logs if e["event"].startswith("client signer")]
    assert [(e["event"], e["log_level"]) for e in told] == [
        ("client signer stalled", "warning"),
        ("client signer current", "info"),
    ]
    assert (told[0]["signer"], told[0]["ts"], told[1]["ts"]) == (KEY_A.address, ts1, ts2)
    assert not [e for e in logs if e["event"] == "client stream error"]


async def test_one_stalled_daemon_of_two_leaves_the_other_to_make_the_price() -> None:
    """Two daemons, allowed by identity, quorum 1: daemon a stalls while b's rounds go on.
    Only a's reports are left out (the view says a's stall), and b alone makes the price; a's
    frame on its own connection says nothing of b."""
    a, b = StallingDaemon(KEY_A), StallingDaemon(KEY_B)
    for daemon in (a, b):
        daemon.step()
    client = OracleClient(
        {"a": [KEY_A.address], "b": KEY_B.address},
        deployment="test",
        max_age_ms=MAX_AGE_MS,
        stall_notice_min_age_ms=NOTICE_MIN_AGE_MS,
        now_ms=a.clock.now_ms,
    )
    async with (
        served(a) as url_a,
        served(b) as url_b,
        watching(client, url_a, ["BTC/USD"]),
        watching(client, url_b, ["BTC/USD"]),
    ):
        await until(lambda: client.price("BTC/USD").identities == ("a", "b"))
        for _ in range(4):  # a second on both clocks, with rounds at b only
            b.step()
            a.clock.advance(api_rig.INTERVAL)
        await until(lambda: "a" in client.stalled)
        await until(priced_at(client, "BTC/USD", b.clock.now_ms()))
        view = client.price("BTC/USD")
    assert list(client.stalled) == ["a"]
    assert (view.identities, view.signers) == (("b",), (KEY_B.address,))
    assert [r.identity for r in view.reports] == ["b"]
    assert [(s.identity, s.signer, s.source) for s in view.stalled] == [("a", KEY_A.address, url_a)]
    assert view.price is not None


async def test_a_stall_told_on_a_new_connection_stands_for_the_signer_heard_there_before() -> None:
    """A connection made while the daemon is stalled gets its ack and the `stalled` frame, no
    report: the client takes it for the signer the frame names and signed, whose reports it
    holds from an earlier connection, so a reconnect during a stall does not keep the old round
    current. A client that never heard from that signer holds nothing of it: it logs the frame,
    marks none, and counts it refused (`stalled_refused`), as a bus's notice."""
    daemon = StallingDaemon(KEY_A)
    daemon.step()
    ts1 = daemon.clock.now_ms()

    def new_client() -> OracleClient:
        return OracleClient(
            {KEY_A.address},
            deployment="test",
            max_age_ms=MAX_AGE_MS,
            now_ms=daemon.clock.now_ms,
            stall_notice_min_age_ms=NOTICE_MIN_AGE_MS,
        )

    client, stranger = new_client(), new_client()
    with capture_logs() as logs:
        async with served(daemon) as url:
            async with watching(client, url, ["BTC/USD"]):
                await until(priced_at(client, "BTC/USD", ts1))
            daemon.stall()  # while no connection is open
            async with watching(client, url, ["BTC/USD"]), watching(stranger, url, ["BTC/USD"]):
                await until(lambda: bool(client.stalled) and bool(stranger.stream_errors))
    assert [s.ts for s in client.stalled.values()] == [ts1]
    assert client.price("BTC/USD").status == "unknown"
    assert (stranger.stalled, stranger.markets) == ({}, [])
    assert dict(stranger.stream_errors) == {"stalled_refused": 1}
    unheard = [e for e in logs if e["event"] == "client stream stalled"]
    assert len(unheard) == 1 and unheard[0]["message"].startswith("the latest round is")


def test_note_stalled_refuses_a_signer_that_is_not_allowed() -> None:
    """A stall can only be noted for an allowed signer (a typo would otherwise note nothing);
    an allowed one whose reports the client holds none of is noted as nothing to leave out."""
    client = OracleClient({KEY_A.address}, deployment="test")
    with pytest.raises(ValueError, match=KEY_B.address):
        client.note_stalled(KEY_B.address, "stalled")
    assert client.note_stalled(KEY_A.address.lower(), "stalled") is None
    assert client.stalled == {}
