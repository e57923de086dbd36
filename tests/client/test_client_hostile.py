"""OracleClient under a hostile peer: real signed frames, mutated, through real transports.

The frames are hostile_rig.py's: a real signer's (`RoundSigner`, the daemon's code, with a
throwaway key) over real rounds of a real core, which hypothesis mutates (every field: types
swapped, numbers to their extremes, prices, marks and statuses changed to others that read as
such, hex flipped, proofs reordered, dropped or padded, rounds and times moved, markets renamed,
another deployment, another key, cut short, made huge, nested past the decoder's depth, unknown
frame types, error frames of any code, stall notices forged or replayed, and the genuine frames
again in any order). They go to `watch_ws` from a loopback WebSocket server speaking the
daemon's stream protocol, or to `watch_nats` through a real nats-server. Whatever comes, the
client may refuse but must hold, as its public API shows:

1. the watch task runs on, and every message is read (the peer's fence arrives);
2. every report a view holds is a genuine leaf of the allowed key in the client's deployment,
   and no refused stall notice hides the key;
3. no view goes back to an older round: a market's view is at least as new as the newest
   genuine frame of it that was sent, and its signer never counts as equivocating (no
   forgery makes the client withdraw it);
4. what the peer can make the client keep is bounded (`stream_errors` by code, the markets
   listed unavailable, the refusals kept).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import nats
import pytest
from aiohttp import web
from hostile_rig import (
    CODES,
    DEPLOYMENT,
    GENUINE,
    KEY,
    MARKETS,
    MAX_AGE_MS,
    NOW,
    Script,
    as_json,
    scripted_stream,
    scripts,
)
from hypothesis import HealthCheck, given, settings
from publish_rig import NatsServer

from oracled.client import REASONS, STALLED_REFUSED, OracleClient
from oracled.publish.nats import price_subject, stalled_subject

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from api_rig import DaemonServer  # the API tests' loopback server, as the daemon serves

SAFETY_S = 5.0  # guards against hangs only (short: hypothesis retries a failure many times)
FENCE = "signing_disabled"  # the WebSocket script's last frame: an error frame, counted


# -- the invariants ---------------------------------------------------------------------------


def check(client: OracleClient, script: Script) -> None:
    """What a hostile peer must never achieve, read through the client's public API."""
    assert not client.equivocations and not client.equivocated  # no forgery withdraws the key
    assert set(client.markets) <= set(MARKETS)
    for stall in client.stalled.values():  # hidden only by the key's own word
        assert stall.message in script.told and stall.signer == KEY.address
    for market in client.markets:
        view = client.price(market)
        for report in view.reports:
            assert report.signer == KEY.address and report.identity == KEY.address
            genuine = GENUINE[(market, report.ts)]
            round_no, status, price, confidence, expo, mark, mode = genuine
            assert (report.round, report.status, report.mark_mode) == (round_no, status, mode)
            live = status in ("active", "degraded")
            assert report.price == (Decimal(price).scaleb(expo) if live else None)
            assert report.confidence == (Decimal(confidence).scaleb(expo) if live else None)
            marked = live and mark is not None and mode != "none"
            assert report.mark == (Decimal(mark).scaleb(expo) if marked else None)
        if view.price is not None:
            assert view.ts is not None
            assert view.price == Decimal(GENUINE[(market, view.ts)][2]).scaleb(
                GENUINE[(market, view.ts)][4]
            )
        sent = script.genuine.get(market)
        if sent and not view.stalled:  # never older than the newest genuine frame sent
            assert view.ts is not None and view.ts >= max(sent)
    for market in script.genuine:
        assert market in client.markets, f"{market}: genuine frames sent, none taken"
    # bounded, whatever was sent: the codes counted are the contract's and the client's own,
    # the markets unavailable are the daemon's
    assert set(client.stream_errors) <= CODES
    assert all(set(markets) <= set(MARKETS) for markets in client.unavailable.values())
    assert len(client.rejections) <= 256
    assert set(client.rejected) == set(REASONS)


def _client() -> OracleClient:
    return OracleClient(
        {KEY.address}, deployment=DEPLOYMENT, max_age_ms=MAX_AGE_MS, now_ms=lambda: NOW
    )


# -- through a WebSocket ----------------------------------------------------------------------


async def _over_ws(script: Script) -> OracleClient:
    """Serve the script as the daemon's `/v1/stream` on loopback to `watch_ws`; returns the
    client once it has read the fence after it (its task still running)."""
    client = _client()
    connections: list[int] = []

    fence = as_json({"type": "error", "code": FENCE, "message": "fence"})
    app = web.Application()
    app.router.add_get("/v1/stream", scripted_stream(script.frames, fence, connections))
    async with DaemonServer(app, host="127.0.0.1") as server:
        watcher = asyncio.create_task(client.watch_ws(str(server.make_url("/")), reconnect_s=0))
        try:
            async with asyncio.timeout(SAFETY_S):
                while not client.stream_errors[FENCE]:
                    assert not watcher.done(), watcher
                    await asyncio.sleep(0.005)
            assert not watcher.done()  # refusing never ends the watch
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    assert connections == [1]  # nothing in the script ended the connection
    return client


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scripts())
def test_a_hostile_stream_never_moves_a_view_off_the_signed_rounds(script: Script) -> None:
    """Genuine signed frames of four rounds, mutated in every field, replayed out of order,
    mixed with frames of another key and another deployment, unknown types, cut-short frames,
    error frames of any code and forged stall notices, sent to `watch_ws` on one connection:
    the watch reads them all and runs on, and every view holds only genuine leaves of the
    allowed key, as new as the newest genuine frame sent, with no equivocation charged."""
    check(asyncio.run(_over_ws(script)), script)


# -- through NATS -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = NatsServer(Path(tmp_path_factory.mktemp("nats")), jetstream=False)
    asyncio.run(server.start())
    yield server.url
    server.stop()


async def _over_nats(url: str, script: Script) -> OracleClient:
    """Publish the script's signed payloads on `<prefix>.prices.<market>` and its notices on
    `<prefix>.stalled` to `watch_nats`; returns the client once it has read every one."""
    client = _client()
    prefix = "fuzz"
    payloads = [f for f in script.frames if f.startswith('{"type":"signed","data":')]
    payloads = [f[len('{"type":"signed","data":') : -1] for f in payloads]
    watcher = asyncio.create_task(client.watch_nats(url, prefix=prefix))
    publisher = await nats.connect(url, allow_reconnect=False)
    try:
        async with asyncio.timeout(SAFETY_S):
            probe = '{"code":"stalled"}'  # counted as refused: the subscriptions are in
            while not client.stream_errors[STALLED_REFUSED]:
                await publisher.publish(stalled_subject(prefix), probe.encode())
                await asyncio.sleep(0.02)
            notices_before = client.stream_errors[STALLED_REFUSED]
            for payload in payloads:
                subject = price_subject(prefix, MARKETS[0])  # any market's subject reads alike
                await publisher.publish(subject, payload.encode())
            for notice in script.notices:
                await publisher.publish(stalled_subject(prefix), notice.encode())
            await publisher.flush()

            def read() -> bool:
                prices = client.accepted + client.duplicates + client.rejected.total()
                told = client.stream_errors["stalled"] + client.stream_errors[STALLED_REFUSED]
                return prices >= len(payloads) and told >= notices_before + len(script.notices)

            while not read():
                assert not watcher.done(), watcher
                await asyncio.sleep(0.005)
        assert not watcher.done()
    finally:
        await publisher.close()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    return client


@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scripts())
def test_a_hostile_bus_publisher_never_moves_a_view_off_the_signed_rounds(
    nats_url: str, script: Script
) -> None:
    """The same messages published on a real nats-server by anyone who may publish there: the
    signed payloads on the price subjects, the stall notices on `.stalled`. `watch_nats` reads
    every one and runs on, and the views keep to the genuine leaves of the allowed key."""
    check(asyncio.run(_over_nats(nats_url, script)), script)
