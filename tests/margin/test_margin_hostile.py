"""The margin service's signed mode under a hostile peer on its stream's path.

The frames are tests/client/hostile_rig.py's: a real signer's rounds with a throwaway key,
mutated by hypothesis in every field, replayed out of order, mixed with another key's, another
deployment's, cut-short, huge, nested, unknown and forged frames and stall notices. They reach
`SignedMarginService` from a loopback WebSocket server speaking the daemon's stream protocol.
Whatever comes, the service runs on, and every price it gives its engine is a genuine leaf of
the allowed key: what it decides on rests on the signed rounds alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from structlog.testing import capture_logs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "publish"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))
from api_rig import DaemonServer  # the API tests' loopback server, as the daemon serves
from hostile_rig import (
    DEPLOYMENT,
    GENUINE,
    KEY,
    MAX_AGE_MS,
    NOW,
    ROUNDS,
    Script,
    redirecting,
    scripted_stream,
    scripts,
)

from oracled.margin import MarginEngine, parse_accounts
from oracled.margin.prices import PriceView
from oracled.margin.signed import SignedMarginService
from oracled.publish.signer import RoundSigner

SAFETY_S = 5.0  # guards against hangs only (short: hypothesis retries a failure many times)
#: The script's last frame: a genuine round ten minutes ahead of the clock, which the client
#: verifies and refuses as `future`, a reason no frame of the script can earn (their rounds are
#: all in the past, and a moved time no longer verifies).
_AHEAD = NOW + 600_000
FENCE = (
    RoundSigner(KEY, DEPLOYMENT)
    .sign_leaves(_AHEAD, 99, tuple(dataclasses.replace(x, ts=_AHEAD) for x in ROUNDS[0].leaves))
    .envelope(0)
)


class _Engine(MarginEngine):
    """The real engine, keeping every view the service gave it (a view given and taken back
    before the script ended was decided on all the same)."""

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.given: list[PriceView] = []

    def on_report(self, view: PriceView, *, in_order: bool = False) -> None:
        self.given.append(view)
        super().on_report(view, in_order=in_order)


def _engine() -> _Engine:
    """Positions on BTC/USD and ETH/USD (a perpetual: its signed mark counts), read signed."""
    tiers = [{"initial": 0.02, "maintenance": 0.01}]
    return _Engine(
        parse_accounts(
            {
                "policy": {"liquidation_fee": 0.0, "max_report_age_ms": MAX_AGE_MS},
                "assets": {"USD": {}},
                "instruments": {
                    "BTC-PERP": {"market": "BTC/USD", "tiers": tiers},
                    "ETH-PERP": {"market": "ETH/USD", "tiers": tiers},
                },
                "accounts": [
                    {
                        "id": "a",
                        "collateral": {"USD": 1_000},
                        "positions": [
                            {"instrument": "BTC-PERP", "qty": 0.01, "entry": 64_000},
                            {"instrument": "ETH-PERP", "qty": -0.1, "entry": 3_100},
                        ],
                    }
                ],
                "signed": {"deployment": DEPLOYMENT, "signers": {"daemon": KEY.address}},
            }
        )
    )


async def _serve(script: Script) -> tuple[_Engine, SignedMarginService, io.BytesIO]:
    """Serve the script, then the fence, to a signed margin service; returns once the fence is
    read (the service still running)."""
    eng, out = _engine(), io.BytesIO()
    assert eng.spec.signed is not None
    connections: list[int] = []

    fence = '{"type":"signed","data":' + FENCE.decode() + "}"
    app = web.Application()
    app.router.add_get("/v1/stream", scripted_stream(script.frames, fence, connections))
    async with DaemonServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("/v1/stream")).replace("http://", "ws://")
        service = SignedMarginService(
            eng, [url], out, eng.spec.signed, step_ms=600_000, clock=lambda: NOW
        )
        task = asyncio.create_task(service.run())
        try:
            async with asyncio.timeout(SAFETY_S):
                while not service.client.rejected["future"]:
                    assert not task.done(), task
                    await asyncio.sleep(0.005)
            assert not task.done()  # refusing never ends the service
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert connections == [1]
    return eng, service, out


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scripts())
def test_a_hostile_stream_never_gives_the_engine_a_price_off_the_signed_rounds(
    script: Script,
) -> None:
    """Every view the service gives the engine is a genuine signed leaf of the allowed key: its
    price and mark, and each report it names (round, status, price) as that key signed it at
    that round time; no market is kept that the engine did not ask for, no forgery charges the
    key with equivocation, and every decision written is a whole JSON line."""
    eng, service, out = asyncio.run(_serve(script))
    assert not service.client.equivocations
    assert set(eng.book.latest) <= set(eng.markets)
    for view in eng.given:
        if view.price is None:
            continue
        market = view.market
        _, status, price, _, expo, mark, mode = GENUINE[(market, view.ts)]
        assert view.status == status
        assert view.price_text == str(Decimal(price).scaleb(expo))
        marked = mark is not None and mode != "none"
        assert view.mark_text == (str(Decimal(mark).scaleb(expo)) if marked else None)
        assert view.signers
        for ref in view.signers:
            round_no, status, price, _, expo, mark, _ = GENUINE[(market, ref.ts)]
            assert (ref.identity, ref.address) == ("daemon", KEY.address)
            assert (ref.round, ref.status) == (round_no, status)
            assert ref.price == str(Decimal(price).scaleb(expo))
    for line in out.getvalue().splitlines():
        msgspec.json.decode(line)


async def test_a_handshake_redirected_to_another_host_is_refused_in_signed_mode_too() -> None:
    """Signed mode shares the unsigned service's connection: a handshake redirected to another
    host is refused before subscribing (`connect_failed`, naming where it pointed), so the
    rounds that host serves, genuine as they are, are not taken from a daemon never named."""
    eng, out = _engine(), io.BytesIO()
    assert eng.spec.signed is not None
    frames = [
        '{"type":"signed","data":' + r.envelope(i).decode() + "}"
        for r in ROUNDS
        for i in range(len(r.leaves))
    ]
    subscribed: list[int] = []  # subscriptions the other host got
    elsewhere = web.Application()
    elsewhere.router.add_get("/v1/stream", scripted_stream(frames, frames[0], subscribed))
    asked: list[int] = []
    with capture_logs() as logs:
        async with DaemonServer(elsewhere, host="127.0.0.1") as other:
            target = str(other.make_url("/v1/stream"))
            async with DaemonServer(redirecting(307, target, asked), host="127.0.0.1") as server:
                url = str(server.make_url("/v1/stream")).replace("http://", "ws://")
                service = SignedMarginService(
                    eng, [url], out, eng.spec.signed, step_ms=600_000, clock=lambda: NOW
                )
                task = asyncio.create_task(service.run())

                def settled() -> bool:  # prices taken there (the old way), or refused twice
                    failed = [e for e in logs if e["event"] == "connect_failed"]
                    return service.client.accepted > 0 or (len(asked) >= 2 and len(failed) >= 2)

                try:
                    async with asyncio.timeout(SAFETY_S):
                        while not settled():  # noqa: ASYNC110 - no event for this
                            await asyncio.sleep(0.005)
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
    assert service.client.accepted == 0 and not eng.given and eng.book.latest == {}
    assert subscribed == []
    failed = [e for e in logs if e["event"] == "connect_failed"]
    assert failed[0]["error"] == f"handshake redirected to {target}" and failed[0]["url"] == url
