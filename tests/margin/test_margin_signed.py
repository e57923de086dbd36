"""`oracled margin` in signed mode against the daemon's real API on loopback, its rounds signed by
real RoundSigners: only verified quorum views move the engine (oracled/margin/signed.py)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import numpy as np
import pytest
from aiohttp import web
from children import stop as stop_child
from structlog.testing import capture_logs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from api_rig import CONFIG, INTERVAL, PRICES, T0, TOKEN, DaemonServer, Rig
from margin_helpers import spec

from oracled.api import build_app
from oracled.cli import main
from oracled.client import OracleClient
from oracled.clock import ManualClock
from oracled.config import parse_config
from oracled.margin import FreezeCall, Liquidation, MarginEngine, parse_accounts
from oracled.margin.prices import Frozen, Resolved
from oracled.margin.service import MarginService
from oracled.margin.signed import SignedMarginService, view_of
from oracled.model import Quote, Status
from oracled.publish.signer import MARK_MODE_CODES, Leaf, RoundSigner, SigningKey
from oracled.publish.signstall import stall_notice

SAFETY_S = 15.0  # guards against hangs only
KEYS = [SigningKey.from_hex("0x" + f"{n:02x}" * 32) for n in (0x41, 0x42, 0x43, 0x44)]
PREMIUM = 0.001  # the perpetual trades this fraction above the index: the mark differs


class SignedRig(Rig):
    """The daemon's parts with BTC/USD a perpetual market, each round signed as the daemon
    signs it (a RoundSigner over the round, into the hub's signed frames)."""

    def __init__(
        self,
        key: SigningKey,
        *,
        deployment: str = "test",
        scale: float = 1.0,
        max_price: float | None = None,
    ) -> None:
        data = copy.deepcopy(CONFIG)
        data["sources"]["perp"] = {"type": "okx"}
        data["markets"][0]["perp_sources"] = [{"source": "perp", "pair": "BTC/USD"}]
        if max_price is not None:  # BTC/USD's band: a mark above it is none
            data["markets"][0]["max_price"] = max_price
        super().__init__(parse_config(data, env={"ORACLED_ADMIN_TOKEN": TOKEN}))
        self.signer = RoundSigner(key, deployment)
        self.hub.signer = key.address
        self.scale = scale  # a replica whose venues all quote this much higher
        self.signing = True  # False: rounds go unsigned (published as reports only)

    def step(self, markets: dict[str, float] | None = None, *, advance: bool = True) -> Any:
        """One round, signed; `advance` False for a replica sharing another rig's clock."""
        if advance:
            self.clock.advance(INTERVAL)
        now = self.clock.now_ms()
        for market in self.core.config.markets:
            price = (PRICES if markets is None else markets).get(market.symbol)
            if price is None:
                continue
            price *= self.scale
            for k, ms in enumerate(market.sources):
                self.quote(ms.source, ms.pair, price * (1 + 1e-5 * k))
            for ps in market.perp_sources:
                perp = Quote(ps.source, ps.pair, now, price=price * (1 + PREMIUM), kind="perp")
                assert self.core.ingest(perp) is None
        result = self.core.run_round(now)
        self.hub.publish(result)
        if self.signing:
            self.hub.publish_signed(self.signer.sign(result))
        self.round_at = self.clock.monotonic()
        return result


class Relay:
    """A WebSocket relay on loopback between the engine and a daemon (a proxy, a network path):
    once `tamper` is set it rewrites BTC/USD's price in every frame it passes on."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.tamper: float | None = None  # the factor BTC/USD's price is multiplied by
        #: Set: after each signed BTC/USD frame, an unsigned report of it at this price.
        self.inject: float | None = None
        #: Set: called on every unsigned report passed on, which it may change (True if so).
        self.edit: Callable[[dict[str, Any]], bool] | None = None
        #: Set: every signed frame's `signer` written in lower case (the signature covers none).
        self.lower_signer = False
        self.changed = 0
        app = web.Application()
        app.router.add_get("/v1/stream", self._relay)
        self.server = DaemonServer(app, host="127.0.0.1")

    def _rewrite(self, text: str) -> str:
        frame = json.loads(text)
        kind = frame.get("type")
        items = frame["data"] if isinstance(frame.get("data"), list) else [frame.get("data")]
        if self.edit is not None and kind in ("report", "reports"):
            self.changed += sum(self.edit(item) for item in items)
            return json.dumps(frame, separators=(",", ":"))
        if self.lower_signer and kind == "signed":
            frame["data"]["signer"] = frame["data"]["signer"].lower()
            self.changed += 1
            return json.dumps(frame, separators=(",", ":"))
        if self.tamper is None or kind not in ("signed", "reports"):
            return text
        for item in items:
            if item["market"] == "BTC/USD" and item.get("price") not in (None, "0"):
                if frame["type"] == "signed":  # the mantissa, an integer string
                    item["price"] = str(int(int(item["price"]) * self.tamper))
                else:
                    item["price"] = f"{float(item['price']) * self.tamper:.2f}"
                    item["mark"] = None  # the engine would price the position at the mark
                self.changed += 1
        return json.dumps(frame, separators=(",", ":"))

    def _report(self, signed: dict[str, Any], price: float) -> str:
        """An unsigned report of the signed frame's round, at `price`."""
        self.changed += 1
        data = {key: signed[key] for key in ("market", "ts", "round")}
        data.update(status="active", reasons=[], price=f"{price:.2f}", mark=None)
        return json.dumps({"type": "report", "data": data}, separators=(",", ":"))

    async def _relay(self, request: web.Request) -> web.WebSocketResponse:
        down = web.WebSocketResponse()
        await down.prepare(request)
        async with aiohttp.ClientSession() as session, session.ws_connect(self.upstream) as up:

            async def upward() -> None:
                async for msg in down:
                    await up.send_str(msg.data)
                await up.close()  # the engine went: so does the relay's upstream connection

            task = asyncio.create_task(upward())
            try:
                async for msg in up:
                    await down.send_str(self._rewrite(msg.data))
                    if self.inject is not None and msg.data.startswith('{"type":"signed"'):
                        signed = json.loads(msg.data)["data"]
                        if signed["market"] == "BTC/USD":
                            await down.send_str(self._report(signed, self.inject))
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return down


async def until(done: Callable[[], bool]) -> None:
    async with asyncio.timeout(SAFETY_S):
        while not done():  # noqa: ASYNC110 - the service exposes no event for this
            await asyncio.sleep(0.01)


def decisions(out: io.BytesIO) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in out.getvalue().splitlines()]


def signed_section(rigs: list[SignedRig], quorum: int = 1, deployment: str = "test") -> Any:
    names = "abcdefgh"
    signers = {f"daemon-{names[i]}": rig.hub.signer for i, rig in enumerate(rigs)}
    return {"deployment": deployment, "signers": signers, "quorum": quorum}


def accounts(
    policy: dict[str, Any],
    signed: Any,
    *accts: dict[str, Any],
    max_notional: float | None = None,
    assets: dict[str, Any] | None = None,
) -> MarginEngine:
    """An engine on these accounts; `max_notional`: BTC-PERP's concentration limit; `assets`:
    more than USD."""
    tiers = [{"initial": 0.02, "maintenance": 0.01}]
    btc: dict[str, Any] = {"market": "BTC/USD", "tiers": tiers}
    if max_notional is not None:
        btc["max_notional"] = max_notional
    data: dict[str, Any] = {
        "policy": {"liquidation_fee": 0.0, **policy},
        "assets": {"USD": {}, **(assets or {})},
        "instruments": {"BTC-PERP": btc, "ETH-PERP": {"market": "ETH/USD", "tiers": tiers}},
        "accounts": list(accts),
    }
    if signed is not None:
        data["signed"] = signed
    return MarginEngine(parse_accounts(data))


#: equity 1,000 against 640 maintenance at 64,000; liquidatable below about 63,350
TIGHT = {
    "id": "tight",
    "collateral": {"USD": 1_000},
    "positions": [{"instrument": "BTC-PERP", "qty": 1, "entry": 64_000}],
}


class Servers:
    """Daemon APIs, relays and services started by a test; `close` stops them all."""

    def __init__(self) -> None:
        self.stops: list[Callable[[], Awaitable[None]]] = []

    async def api(self, rig: Rig) -> str:
        server = DaemonServer(build_app(rig.context()), host="127.0.0.1")
        await server.start_server()
        self.stops.append(server.close)
        return str(server.make_url("/v1/stream")).replace("http://", "ws://")

    async def relay(self, upstream: str) -> tuple[Relay, str]:
        relay = Relay(upstream)
        await relay.server.start_server()
        self.stops.append(relay.server.close)
        return relay, str(relay.server.make_url("/v1/stream")).replace("http://", "ws://")

    async def run(self, service: MarginService) -> None:
        task = asyncio.create_task(service.run())

        async def stop() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        self.stops.append(stop)

    async def close(self) -> None:
        for stop in reversed(self.stops):  # services first, then what they read
            await stop()


@pytest.fixture
async def serve() -> AsyncIterator[Servers]:
    servers = Servers()
    yield servers
    await servers.close()


async def test_a_relay_changing_a_price_liquidates_unsigned_and_is_refused_signed(
    serve: Servers,
) -> None:
    """A relay on the stream's path lowers BTC/USD's price by 2 %. The unsigned service takes
    it and liquidates an account the daemon's true price keeps healthy. The signed service
    refuses every changed frame (`forged`: the leaf no longer fits the signed root), never
    liquidates, and once its last verified price is older than max_report_age_ms freezes the
    account with reason `unknown:no_quorum`, a pause, on the tick, without a new round."""
    rig = SignedRig(KEYS[0])
    rig.step()
    upstream = await serve.api(rig)
    policy = {"max_report_age_ms": 1_000, "pause_grace_ms": 600_000}
    outcomes: dict[str, io.BytesIO] = {}
    for mode in ("unsigned", "signed"):
        relay, url = await serve.relay(upstream)
        signed = signed_section([rig]) if mode == "signed" else None
        eng = accounts(policy, signed, TIGHT)
        out = io.BytesIO()
        service: MarginService
        if signed is None:
            service = MarginService(eng, url, out, step_ms=20, clock=rig.clock.now_ms)
        else:
            assert eng.spec.signed is not None
            service = SignedMarginService(
                eng, [url], out, eng.spec.signed, step_ms=20, clock=rig.clock.now_ms
            )
        with capture_logs() as logs:
            await serve.run(service)
            await until(lambda eng=eng: "BTC/USD" in eng.book.latest)
            assert eng.state("tight") == "healthy"
            relay.tamper = 0.98
            for n in range(1, 4):  # one round at a time: rounds published at once coalesce
                rig.step()
                await until(lambda relay=relay, n=n: relay.changed >= n)
            if mode == "unsigned":
                await until(lambda out=out: b"liquidation" in out.getvalue())
            else:
                assert isinstance(service, SignedMarginService)
                await until(lambda s=service: s.client.rejected["forged"] >= 3)
                rig.clock.advance(1_001)  # the last verified report is now too old
                await until(
                    lambda eng=eng: (
                        eng.prices(rig.clock.now_ms())["BTC/USD"].ref.status == "unknown"
                    )
                )
                btc = eng.prices(rig.clock.now_ms())["BTC/USD"]
                assert isinstance(btc, Frozen) and btc.reason == "unknown:no_quorum"
                await until(lambda out=out: b"freeze" in out.getvalue())
                assert [e for e in logs if e["event"] == "no_quorum"]
        outcomes[mode] = out
        relay.tamper = None
    liquidated = [d for d in decisions(outcomes["unsigned"]) if d["kind"] == "liquidation"]
    assert liquidated and 62_500 < float(liquidated[0]["driver"]["price"]) < 63_000
    assert liquidated[0]["driver"]["signers"] == []  # an unsigned report rests on no signer
    signed_out = decisions(outcomes["signed"])
    assert not [d for d in signed_out if d["kind"] == "liquidation"]
    # The service may step before the first report arrives and freeze for want of one (then
    # unfreeze on it, at the same clock time): a busy machine does. The forged rounds end in a
    # freeze for want of a verified quorum.
    *before, freeze = [d for d in signed_out if d["kind"] == "freeze"]
    assert freeze["account"] == "tight" and freeze["reasons"] == ["unknown:no_quorum"]
    assert all(d["reasons"] == ["no_report"] for d in before), before


async def test_a_pause_whose_last_good_price_is_no_price_still_freezes_the_market(
    serve: Servers,
) -> None:
    """The unsigned service through a relay that spoils the informational prices of BTC/USD's
    paused reports (last good price `NaN`, mark `0`). The operator pauses BTC/USD: the pause
    reaches the engine (frozen `paused:manual`, the account's freeze written), the two fields
    left out and told as `bad_report`. Such a report was skipped whole, so the engine kept
    the round before's live report and priced on it until it aged out."""
    rig = SignedRig(KEYS[0])
    rig.step()
    relay, url = await serve.relay(await serve.api(rig))
    eng = accounts({"max_report_age_ms": 60_000}, None, TIGHT)
    out = io.BytesIO()
    service = MarginService(eng, url, out, step_ms=60_000, clock=rig.clock.now_ms)

    def spoil(item: dict[str, Any]) -> bool:
        if item["market"] != "BTC/USD" or item["status"] != "paused":
            return False
        item["last_good_price"] = "NaN"
        item["mark"]["price"] = "0"
        return True

    with capture_logs() as logs:
        await serve.run(service)
        await until(lambda: isinstance(eng.prices(rig.clock.now_ms())["BTC/USD"], Resolved))
        relay.edit = spoil
        rig.core.set_manual("BTC/USD", True)
        rig.step()
        await until(lambda: relay.changed >= 1)
        await until(lambda: b"freeze" in out.getvalue())
    btc = eng.prices(rig.clock.now_ms())["BTC/USD"]
    assert isinstance(btc, Frozen) and btc.reason == "paused:manual"
    held = eng.book.latest["BTC/USD"]
    assert (held.round, held.last_good, held.mark) == (2, None, None)
    assert held.dropped == ("last_good_price: not a price: 'NaN'", "mark: not a price: '0'")
    told = [e for e in logs if e["event"] == "bad_report"]
    assert [(e["market"], e["error"]) for e in told] == [
        ("BTC/USD", "last_good_price: not a price: 'NaN' (left out)")
    ]
    freeze = next(d for d in decisions(out) if d["kind"] == "freeze")
    assert freeze["account"] == "tight" and freeze["reasons"] == ["paused:manual"]


async def test_a_notional_exactly_on_its_limit_is_not_over_it_by_float_rounding(
    serve: Servers,
) -> None:
    """BTC-PERP's limit, and a strategy's, is 6,406.4: 0.1 BTC at the signed mark 64,064.00.
    In binary floats 0.1 x 64,064 is 6,406.400000000001, so the account exactly on the limit
    was put `reduce_only` for `concentration:BTC-PERP` and `strategy:s:notional`; it is
    healthy and no call is written. 0.10001 BTC (6,407.04) is over both limits."""

    def holder(name: str, qty: float) -> dict[str, Any]:
        return {
            "id": name,
            "collateral": {"USD": 1_000},
            "strategies": {"s": {"balance": 1_000, "max_notional": 6_406.4}},
            "positions": [{"instrument": "BTC-PERP", "qty": qty, "entry": 64_064, "strategy": "s"}],
        }

    rig = SignedRig(KEYS[0])
    rig.step()
    eng = accounts(
        {}, signed_section([rig]), holder("at", 0.1), holder("over", 0.10001), max_notional=6_406.4
    )
    assert eng.spec.signed is not None
    out = io.BytesIO()
    url = await serve.api(rig)
    service = SignedMarginService(eng, [url], out, eng.spec.signed, clock=rig.clock.now_ms)
    await serve.run(service)
    await until(lambda: {"BTC/USD", "ETH/USD"} <= set(eng.book.latest))
    btc = eng.prices(rig.clock.now_ms())["BTC/USD"]
    assert isinstance(btc, Resolved) and btc.ref.price == "64064.00"
    assert (eng.state("at"), eng.state("over")) == ("healthy", "reduce_only")
    calls = [(d["account"], d["reasons"]) for d in decisions(out) if d["kind"] == "margin_call"]
    assert calls == [("over", ["concentration:BTC-PERP", "strategy:s:notional"])]


async def test_an_unsigned_report_put_among_signed_frames_is_refused_as_unsigned(
    serve: Servers,
) -> None:
    """A relay that adds a plain `report` frame of BTC/USD at 60,000 after each signed one: the
    signed service hands it to the client, which refuses it as `unsigned`; the engine keeps
    the verified 64,000 and liquidates nobody (the unsigned reader would have taken it)."""
    rig = SignedRig(KEYS[0])
    rig.step()
    relay, url = await serve.relay(await serve.api(rig))
    eng = accounts({}, signed_section([rig]), TIGHT)
    assert eng.spec.signed is not None
    out = io.BytesIO()
    service = SignedMarginService(eng, [url], out, eng.spec.signed, clock=rig.clock.now_ms)
    await serve.run(service)
    await until(lambda: "BTC/USD" in eng.book.latest)
    relay.inject = 60_000.0
    for n in range(1, 4):
        rig.step()
        await until(lambda n=n: service.client.rejected["unsigned"] >= n)
    await until(lambda: {v.round for v in eng.book.latest.values()} == {4})
    btc = eng.prices(rig.clock.now_ms())["BTC/USD"]
    assert isinstance(btc, Resolved) and btc.value == pytest.approx(64_000, rel=1e-4)
    assert eng.state("tight") == "healthy" and b"liquidation" not in out.getvalue()


async def test_a_signer_written_in_lower_case_is_its_verified_key_and_stops_nothing(
    serve: Servers,
) -> None:
    """The round signature covers no `signer` field, and the client takes one that names the
    signing key in any case. A relay writing it in lower case stopped the signed service: the
    identity of the address was looked up as written (a KeyError out of the frame handler, and
    `oracled margin` exited). The frames now count as their key's: rounds are taken whole,
    priced, and the decisions name the key in its EIP-55 form."""
    rig = SignedRig(KEYS[0])
    rig.step()
    relay, url = await serve.relay(await serve.api(rig))
    relay.lower_signer = True
    eng = accounts({}, signed_section([rig]), TIGHT)
    assert eng.spec.signed is not None
    out = io.BytesIO()
    service = SignedMarginService(eng, [url], out, eng.spec.signed, clock=rig.clock.now_ms)
    await serve.run(service)
    for n in range(2, 4):
        await until(lambda n=n: {v.round for v in eng.book.latest.values()} == {n - 1})
        rig.step({"BTC/USD": 60_000.0, "ETH/USD": 3_100.0} if n == 3 else None)
    await until(lambda: {v.round for v in eng.book.latest.values()} == {3})
    assert relay.changed >= 6 and service.client.accepted >= 6
    liquidation = next(d for d in decisions(out) if d["kind"] == "liquidation")
    assert [s["address"] for s in liquidation["driver"]["signers"]] == [KEYS[0].address]


async def test_a_hedge_is_judged_on_one_signed_round_not_on_a_mix_of_two(
    serve: Servers,
) -> None:
    """Signed frames come one per market, not in a round's batch. A long BTC perpetual hedged
    by a short ETH one, both down 2 % in one round: the account stays healthy, since the
    service decides once the daemon's round is complete (both markets verified), never after
    BTC's frame against the round before's ETH (equity 2,000 - 1,281 against 1,268
    maintenance: it would liquidate the ETH leg, leaving the BTC long unhedged)."""
    rig = SignedRig(KEYS[0])
    rig.step()
    hedged = {
        "id": "hedged",
        "collateral": {"USD": 2_000},
        "positions": [
            {"instrument": "BTC-PERP", "qty": 1, "entry": 64_000 * (1 + PREMIUM)},
            {"instrument": "ETH-PERP", "qty": -64_064 / 3_100, "entry": 3_100},
        ],
    }
    eng = accounts({}, signed_section([rig]), hedged)
    assert eng.spec.signed is not None
    url = await serve.api(rig)
    out = io.BytesIO()
    service = SignedMarginService(eng, [url], out, eng.spec.signed, clock=rig.clock.now_ms)
    await serve.run(service)
    await until(lambda: {"BTC/USD", "ETH/USD"} <= set(eng.book.latest))
    assert eng.state("hedged") == "healthy"
    rig.step({m: p * 0.98 for m, p in PRICES.items()})
    await until(lambda: {v.round for v in eng.book.latest.values()} == {2})
    assert service.reports == 4 and service.client.accepted == 4  # two rounds of two markets
    assert eng.state("hedged") == "healthy" and b"liquidation" not in out.getvalue()
    btc = eng.prices(rig.clock.now_ms())["BTC/USD"]
    assert isinstance(btc, Resolved) and btc.ref.kind == "mark"
    assert btc.position_value == pytest.approx(64_000 * 0.98 * (1 + PREMIUM), rel=1e-4)


class StandIn:
    """A stand-in daemon on loopback: acks the subscribe request, then sends the signed frames
    the test hands it, when it hands them (so that several daemons' rounds interleave as the
    test says). Its rounds are signed by a real RoundSigner."""

    def __init__(self, key: SigningKey) -> None:
        self.signer = RoundSigner(key, "test")
        self.frames: asyncio.Queue[str] = asyncio.Queue()
        app = web.Application()
        app.router.add_get("/v1/stream", self._stream)
        self.server = DaemonServer(app, host="127.0.0.1")

    def signed_round(self, ts: int, number: int, prices: dict[str, float]) -> dict[str, str]:
        """One signed round, every market active at its price (its mark too, from the
        perpetuals): the stream's `signed` frame of each market."""
        perps = MARK_MODE_CODES["perps"]
        leaves = tuple(
            Leaf(m, ts, Status.ACTIVE, round(p * 100), 1, -2, round(p * 100), perps)
            for m, p in prices.items()
        )
        signed = self.signer.sign_leaves(ts, number, leaves)
        return {
            leaf.market: '{"type":"signed","data":' + signed.envelope(i).decode() + "}"
            for i, leaf in enumerate(leaves)
        }

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        asked = await ws.receive_json()
        await ws.send_json({"type": "subscribed", "markets": asked["markets"], "signed": True})

        async def send() -> None:
            while True:
                await ws.send_str(await self.frames.get())

        sender = asyncio.create_task(send())
        try:
            async for _ in ws:  # until the service goes
                pass
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        return ws


def rested_on(decision: dict[str, Any]) -> dict[str, set[int]]:
    """Per identity, the round times of its signed reports that a decision's drivers rest on."""
    refs = decision["drivers"] if "drivers" in decision else [decision["driver"]]
    out: dict[str, set[int]] = {}
    for ref in refs:
        for signer in ref["signers"]:
            out.setdefault(signer["identity"], set()).add(signer["ts"])
    return out


async def test_a_decision_rests_on_one_round_of_each_daemon_across_its_markets(
    serve: Servers,
) -> None:
    """Two stand-in daemons, quorum 2, their signed frames interleaved; a hedge (long BTC, short
    ETH) and a long of both. A daemon's round was taken whole, but not the other's: when A's
    round 2 was complete, B's was half in (BTC), and every market's view was taken, so BTC
    rested on B's round 2 and ETH on its round 1 (the hedge, judged on BTC down 2 % and ETH
    down 1 %, was put reduce_only). Likewise A's round 3, which lacked SOL, was completed by
    the first frame of its round 4 (BTC, 10 % down), already in the client: BTC was priced
    from A's round 4, ETH from its round 3, and both accounts were liquidated on BTC 5 % down
    against ETH unchanged. Now, while a round of any daemon is coming in, each daemon counts
    by its last complete round: every decision rests on one round time of each identity
    across its markets, the hedge stays healthy, the long is called at round 2 and cleared
    at round 3, and a daemon left mid-round (A, round 4) holds back no other's: B's round 4
    is taken with A's round 3."""
    a, b = StandIn(KEYS[0]), StandIn(KEYS[1])
    urls = []
    for daemon in (a, b):
        await daemon.server.start_server()
        serve.stops.append(daemon.server.close)
        urls.append(str(daemon.server.make_url("/v1/stream")).replace("http://", "ws://"))
    signed = {
        "deployment": "test",
        "signers": {"daemon-a": KEYS[0].address, "daemon-b": KEYS[1].address},
        "quorum": 2,
    }
    hedged = {
        "id": "hedged",
        "collateral": {"USD": 2_000},
        "positions": [
            {"instrument": "BTC-PERP", "qty": 1, "entry": 64_000},
            {"instrument": "ETH-PERP", "qty": -64_000 / 3_100, "entry": 3_100},
        ],
    }
    long = {  # healthy at the start; at 2 % down, equity 1,542 against a warning level of 1,852
        "id": "long",
        "collateral": {"USD": 4_062},
        "positions": [
            {"instrument": "BTC-PERP", "qty": 1, "entry": 64_000},
            {"instrument": "ETH-PERP", "qty": 20, "entry": 3_100},
        ],
    }
    eng = accounts({}, signed, hedged, long, assets={"SOL": {"market": "SOL/USD"}})
    assert eng.spec.signed is not None and "SOL/USD" in eng.markets
    out = io.BytesIO()
    now = T0 + 1_000
    service = SignedMarginService(
        eng, urls, out, eng.spec.signed, step_ms=60_000, clock=lambda: now
    )
    await serve.run(service)

    def prices(scale: float) -> dict[str, float]:
        return {"BTC/USD": 64_000 * scale, "ETH/USD": 3_100 * scale, "SOL/USD": 150 * scale}

    async def send(daemon: StandIn, frame: str) -> None:
        accepted = service.client.accepted
        daemon.frames.put_nowait(frame)
        await until(lambda: service.client.accepted > accepted)

    rounds = {
        (daemon, n): daemon.signed_round(T0 + 250 * n, n, prices(scale))
        for daemon in (a, b)
        for n, scale in ((1, 1.0), (2, 0.98), (3, 1.0), (4, 1.0))
    }
    rounds[a, 4]["BTC/USD"] = a.signed_round(T0 + 1_000, 4, prices(0.9))["BTC/USD"]
    script = [(a, 1, m) for m in prices(1)] + [(b, 1, m) for m in prices(1)]
    script += [(b, 2, "BTC/USD"), (a, 2, "BTC/USD"), (a, 2, "ETH/USD"), (a, 2, "SOL/USD")]
    script += [(b, 2, "ETH/USD"), (b, 2, "SOL/USD")]
    script += [(b, 3, m) for m in prices(1)] + [(a, 3, "BTC/USD"), (a, 3, "ETH/USD")]
    script += [(a, 4, "BTC/USD")] + [(b, 4, m) for m in prices(1)]
    for daemon, n, market in script:
        await send(daemon, rounds[daemon, n][market])
    made = decisions(out)
    mixed = [(d["kind"], d["account"], rested_on(d)) for d in made]
    assert all(len(times) == 1 for *_, on in mixed for times in on.values()), mixed
    # A's round 1 alone is no quorum: both accounts wait for B's (`no_report`), then priced.
    start = [("freeze", ["no_report", "no_report"]), ("unfreeze", None)]
    hedge = [(d["kind"], d.get("reasons")) for d in made if d["account"] == "hedged"]
    assert hedge == start and eng.state("hedged") == "healthy"
    called = [d for d in made if d["account"] == "long"]
    assert [(d["kind"], d.get("reasons")) for d in called[:2]] == start
    assert [(d["kind"], d.get("state")) for d in called[2:]] == [
        ("margin_call", "warning"),
        ("margin_call", "healthy"),
    ]
    assert rested_on(called[2]) == {"daemon-a": {T0 + 500}, "daemon-b": {T0 + 500}}
    btc = eng.prices(now)["BTC/USD"]
    assert isinstance(btc, Resolved) and btc.value == pytest.approx(64_000)
    on = {(s.identity, s.ts) for s in btc.ref.signers}
    assert on == {("daemon-a", T0 + 750), ("daemon-b", T0 + 1_000)}


async def test_a_quorum_of_replicas_outvotes_a_liar_and_one_alone_is_no_price(
    serve: Servers,
) -> None:
    """Three replicas, each its own key and identity, quorum 2; the third's venues all quote
    30 % high, its rounds validly signed. The engine's price and mark are the medians of the
    three signed ones: the honest. When only the liar keeps publishing, its frames are verified
    but below the quorum: BTC/USD is frozen `unknown:no_quorum` instead of priced 30 % high,
    and the account exposed to it is neither liquidated nor assessed on that price."""
    honest_a, honest_b, liar = SignedRig(KEYS[0]), SignedRig(KEYS[1]), SignedRig(KEYS[2], scale=1.3)
    honest_b.clock = liar.clock = honest_a.clock
    rigs = [honest_a, honest_b, liar]
    for i, rig in enumerate(rigs):
        rig.step(advance=i == 0)
    urls = [await serve.api(rig) for rig in rigs]
    short = {  # a short that a 30 % higher price would liquidate
        "id": "short",
        "collateral": {"USD": 10_000},
        "positions": [{"instrument": "BTC-PERP", "qty": -1, "entry": 64_000}],
    }
    policy = {"max_report_age_ms": 1_000, "pause_grace_ms": 600_000}
    eng = accounts(policy, signed_section(rigs, quorum=2), short)
    assert eng.spec.signed is not None
    out = io.BytesIO()
    clock = honest_a.clock.now_ms
    service = SignedMarginService(eng, urls, out, eng.spec.signed, step_ms=20, clock=clock)
    await serve.run(service)
    await until(lambda: service.client.accepted >= 2 * 3)  # two markets, three daemons
    for i, rig in enumerate(rigs):
        rig.step(advance=i == 0)
    await until(lambda: service.client.accepted >= 2 * 3 * 2)
    btc = eng.prices(clock())["BTC/USD"]
    assert isinstance(btc, Resolved) and btc.ref.kind == "mark"
    assert btc.value == pytest.approx(64_000, rel=1e-4)
    assert btc.position_value == pytest.approx(64_000 * (1 + PREMIUM), rel=1e-4)
    for n in range(1, 6):  # only the liar now (4 x 250 ms: the others' reports are stale)
        liar.step()
        await until(lambda n=n: service.client.accepted >= 2 * 3 * 2 + 2 * n)
    await until(lambda: isinstance(eng.prices(clock())["BTC/USD"], Frozen))
    btc = eng.prices(clock())["BTC/USD"]
    assert isinstance(btc, Frozen) and btc.reason == "unknown:no_quorum"
    assert service.client.price("BTC/USD").signers == ()
    assert not [d for d in decisions(out) if d["kind"] == "liquidation"]
    await until(lambda: any(d["kind"] == "freeze" for d in decisions(out)))
    assert eng.state("short") == "healthy"


async def test_a_signed_decision_names_the_signers_and_rounds_its_price_rests_on(
    serve: Servers,
) -> None:
    """Two replicas, quorum 2, the second quoting 1 % higher. A signed-mode decision said
    which price it used but not whose signatures it rested on (its `signature` is null: the
    price is a median). The liquidation's driver now lists each identity's verified report:
    identity, EIP-55 address, the signed round's time and number, status, signed price and
    mark, and the signed format (3); its price is the median of those marks."""
    rigs = [SignedRig(KEYS[0]), SignedRig(KEYS[1], scale=1.01)]
    rigs[1].clock = rigs[0].clock
    for i, rig in enumerate(rigs):
        rig.step(advance=i == 0)
    urls = [await serve.api(rig) for rig in rigs]
    under = {  # equity about 100 + 384 against about 644 maintenance at the median mark
        "id": "under",
        "collateral": {"USD": 100},
        "positions": [{"instrument": "BTC-PERP", "qty": 1, "entry": 64_000}],
    }
    eng = accounts({}, signed_section(rigs, quorum=2), under)
    assert eng.spec.signed is not None
    out = io.BytesIO()
    service = SignedMarginService(eng, urls, out, eng.spec.signed, clock=rigs[0].clock.now_ms)
    await serve.run(service)
    await until(lambda: b"liquidation" in out.getvalue())
    driver = next(d for d in decisions(out) if d["kind"] == "liquidation")["driver"]
    ts = rigs[0].clock.now_ms()
    assert driver["kind"] == "mark" and driver["ts"] == ts and driver["signature"] is None
    signers = driver["signers"]
    assert [(s["identity"], s["address"], s["ts"], s["round"]) for s in signers] == [
        ("daemon-a", KEYS[0].address, ts, 1),
        ("daemon-b", KEYS[1].address, ts, 1),
    ]
    assert [(s["status"], s["format"]) for s in signers] == [("active", 3)] * 2
    marks = [float(s["mark"]) for s in signers]
    assert marks == pytest.approx([64_000 * (1 + PREMIUM), 64_640 * (1 + PREMIUM)], rel=1e-4)
    assert [float(s["price"]) for s in signers] == pytest.approx([64_000, 64_640], rel=1e-4)
    assert float(driver["price"]) == pytest.approx(sum(marks) / 2, rel=1e-9)


async def test_a_signed_price_of_zero_is_skipped_as_a_bad_report_and_never_liquidated_on(
    serve: Servers,
) -> None:
    """A market quoting below its exponent's resolution (0.001 at two places): a daemon from
    before the band's floor of one unit and the resolution gate (emulated: both set to 0;
    docs/pricing.md) publishes and signs it `active` at 0, mark 0 too. The unsigned reader
    skips such a report (`bad_report`); the signed one handed the verified 0 to the engine,
    which valued a long at 0 and liquidated it. A quorum view whose price or mark is no positive
    finite number is now skipped alike: logged once as `bad_report`, the market keeps its last
    view (none here: `no_report`), and nobody is liquidated."""
    rig = SignedRig(KEYS[0])
    no_floor = np.zeros(len(rig.core.layout.markets))
    rig.core.layout = dataclasses.replace(
        rig.core.layout, price_floor=no_floor, resolution_floor=no_floor
    )
    report = rig.step({"BTC/USD": 0.001, "ETH/USD": 3_100.0}).report(0)
    assert (report.status, report.price) == ("active", "0.00")  # that daemon's own output
    eng = accounts({}, signed_section([rig]), TIGHT)
    assert eng.spec.signed is not None
    out = io.BytesIO()
    url = await serve.api(rig)
    service = SignedMarginService(eng, [url], out, eng.spec.signed, clock=rig.clock.now_ms)
    with capture_logs() as logs:
        await serve.run(service)
        await until(lambda: "ETH/USD" in eng.book.latest)  # the round is complete
    assert service.client.price("BTC/USD").price == 0  # verified: the signature is good
    btc = eng.prices(rig.clock.now_ms())["BTC/USD"]
    assert isinstance(btc, Frozen) and btc.reason == "no_report"
    assert b"liquidation" not in out.getvalue() and eng.state("tight") == "healthy"
    told = [e for e in logs if e["event"] == "bad_report"]
    assert [(e["market"], e["error"]) for e in told] == [("BTC/USD", "not a price: '0.00'")]


async def test_a_decision_on_the_last_good_price_names_the_signers_of_that_price(
    serve: Servers,
) -> None:
    """after_grace = "last_good": the daemon goes quiet, the quorum lapses (`no_quorum`), and
    past the grace period the account is liquidated on the last verified price with the
    buffer. The driver's `signers` are those of the report that price came from (daemon-a,
    round 1), not of the unsigned no-quorum view the pause is measured on (none)."""
    rig = SignedRig(KEYS[0])
    rig.step()
    policy = {
        "max_report_age_ms": 1_000,
        "pause_grace_ms": 2_000,
        "after_grace": "last_good",
        "pause_buffer": 1.0,  # 640 x 2 against equity 1,000: liquidated on the buffer alone
    }
    eng = accounts(policy, signed_section([rig]), TIGHT)
    assert eng.spec.signed is not None
    out = io.BytesIO()
    url = await serve.api(rig)
    service = SignedMarginService(
        eng, [url], out, eng.spec.signed, step_ms=20, clock=rig.clock.now_ms
    )
    await serve.run(service)
    await until(lambda: "BTC/USD" in eng.book.latest)
    ts = rig.clock.now_ms()
    rig.clock.advance(2_500)  # no round: past the age limit and the grace, below the stall
    await until(lambda: b"liquidation" in out.getvalue())
    driver = next(d for d in decisions(out) if d["kind"] == "liquidation")["driver"]
    assert driver["kind"] == "last_good" and driver["status"] == "unknown"
    assert float(driver["price"]) == pytest.approx(64_000, rel=1e-4)
    assert [(s["identity"], s["address"], s["ts"], s["round"]) for s in driver["signers"]] == [
        ("daemon-a", KEYS[0].address, ts, 1)
    ]


async def test_a_stalled_daemon_freezes_signed_markets_until_a_later_round_is_verified(
    serve: Servers,
) -> None:
    """The daemon's `stalled` error frame reaches a signed subscriber too: every market is
    frozen at once with reason `stalled` (the policy trusts a report for 60 s, so it is not
    age), and the next round's verified frames price it again."""
    rig, eng, service, out = await _one_stalling(serve)
    with capture_logs() as logs:
        await serve.run(service)
        await until(lambda: "BTC/USD" in eng.book.latest)
        assert isinstance(eng.prices(rig.clock.now_ms())["BTC/USD"], Resolved)
        rig.clock.advance(5_001)  # past the daemon's stall limit
        await until(lambda: b"stalled" in out.getvalue())
        btc = eng.prices(rig.clock.now_ms())["BTC/USD"]
        assert isinstance(btc, Frozen) and btc.reason == "stalled"
        rig.step()
        await until(lambda: isinstance(eng.prices(rig.clock.now_ms())["BTC/USD"], Resolved))
    assert [e for e in logs if e["event"] == "stalled"]
    kinds = [d["kind"] for d in decisions(out)]
    assert kinds[-2:] == ["freeze", "unfreeze"]


async def test_rounds_no_longer_signed_freeze_signed_markets_until_a_later_round_is_verified(
    serve: Servers,
) -> None:
    """The round loop runs but its rounds go unsigned: once the daemon tells its signed
    subscribers so (the signed `stalled` frame naming its last signed round, as a daemon sends
    it past its stall limit), every market is frozen at once with reason `stalled` (the policy
    trusts a report for 60 s, so it is not age), and the next signed round prices it again.
    Without the frame the engine kept pricing from the last signed round for 60 s."""
    rig, eng, service, out = await _one_stalling(serve)
    with capture_logs() as logs:
        await serve.run(service)
        await until(lambda: "BTC/USD" in eng.book.latest)
        rig.signing = False
        last = rig.hub.latest_signed
        assert last is not None
        while rig.clock.now_ms() - last.ts <= 5_000:  # past the daemon's stall limit, 5 s
            rig.step()  # the loop runs, the signer skips its rounds
        assert isinstance(eng.prices(rig.clock.now_ms())["BTC/USD"], Resolved)
        message = f"no round signed since round {last.round} (the signer skips its rounds: lease)"
        rig.hub.signed_stalled(stall_notice(message, last.ts, last.round, rig.signer))
        await until(lambda: b"stalled" in out.getvalue())
        btc = eng.prices(rig.clock.now_ms())["BTC/USD"]
        assert isinstance(btc, Frozen) and btc.reason == "stalled"
        rig.signing = True
        rig.step()
        await until(lambda: isinstance(eng.prices(rig.clock.now_ms())["BTC/USD"], Resolved))
    assert [e for e in logs if e["event"] == "stalled" and e["identity"] == "daemon-a"]
    kinds = [d["kind"] for d in decisions(out)]
    assert kinds[-2:] == ["freeze", "unfreeze"]


async def test_a_stalled_frame_its_daemon_did_not_sign_freezes_nothing(serve: Servers) -> None:
    """A `stalled` frame that is not the daemon's signed notice (what anyone on the way could
    write: the plain frame of a report stream, or one naming the daemon's key but signed by
    another) is refused by the client and counted (`stalled_refused`): no market is frozen,
    although it comes when a notice would be plausible (the round 4 s old). The daemon's own
    signed notice, at that moment, freezes every market with reason `stalled`. Before, signed
    mode took any `stalled` frame for the signer it last verified from that daemon."""
    rig, eng, service, out = await _one_stalling(serve)
    await serve.run(service)
    await until(lambda: "BTC/USD" in eng.book.latest)
    rig.clock.advance(4_000)  # past the client's least age (3 s), short of the stall limit (5 s)
    last = rig.hub.latest_signed
    assert last is not None
    message = "the latest round is 4.0 s old (limit 5 s): rounds have stalled"
    plain = msgspec.json.encode({"type": "error", "code": "stalled", "message": message})
    forged = msgspec.json.decode(
        stall_notice(message, last.ts, last.round, RoundSigner(KEYS[1], "test"))
    )
    forged["signer"] = KEYS[0].address  # the daemon's key named, another key's signature
    for frame in (plain, msgspec.json.encode(forged)):
        rig.hub.tell(frame)
    await until(lambda: service.client.stream_errors["stalled_refused"] == 2)
    assert isinstance(eng.prices(rig.clock.now_ms())["BTC/USD"], Resolved)
    assert not service.client.stalled and b"stalled" not in out.getvalue()
    rig.hub.tell(stall_notice(message, last.ts, last.round, rig.signer))
    await until(lambda: b"stalled" in out.getvalue())
    btc = eng.prices(rig.clock.now_ms())["BTC/USD"]
    assert isinstance(btc, Frozen) and btc.reason == "stalled"
    assert dict(service.client.stream_errors) == {"stalled_refused": 2, "stalled": 1}


async def test_floods_of_refused_stalled_frames_and_made_up_errors_are_logged_once_a_minute(
    serve: Servers,
) -> None:
    """A peer on the way sending 300 error frames of made-up codes and 300 `stalled` frames the
    client refuses (unsigned): each was its own warning (`stream_error`, `stalled`), 600 lines
    at the peer's will. The first of each kind is logged now, the rest held for a minute (the
    next line's `frames` counts them); the client still counts every refused frame, and
    nothing is frozen."""
    rig, eng, service, _ = await _one_stalling(serve)
    await serve.run(service)
    await until(lambda: "BTC/USD" in eng.book.latest)
    rig.clock.advance(4_000)  # a notice would be plausible now: the frames are refused as unsigned
    flood = 300
    plain = msgspec.json.encode({"type": "error", "code": "stalled", "message": "stalled!"})
    with capture_logs() as logs:
        for n in range(flood):
            rig.hub.tell(msgspec.json.encode({"type": "error", "code": f"no_{n}", "message": "x"}))
        for _ in range(flood):
            rig.hub.tell(plain)
        await until(lambda: service.client.stream_errors["stalled_refused"] == flood)
    told = [(e["event"], e.get("code"), e.get("frames")) for e in logs]
    told = [t for t in told if t[0] in ("stream_error", "stalled")]
    assert told == [("stream_error", "no_0", 1), ("stalled", None, 1)]
    assert isinstance(eng.prices(rig.clock.now_ms())["BTC/USD"], Resolved)


async def _one_stalling(
    serve: Servers,
) -> tuple[SignedRig, MarginEngine, SignedMarginService, io.BytesIO]:
    """One daemon with one verified round, and a signed service reading it (not yet running)
    that trusts a report for 60 s, so that a stall is not age."""
    rig = SignedRig(KEYS[0])
    rig.step()
    eng = accounts({"max_report_age_ms": 60_000}, signed_section([rig]), TIGHT)
    assert eng.spec.signed is not None
    out = io.BytesIO()
    url = await serve.api(rig)
    service = SignedMarginService(
        eng, [url], out, eng.spec.signed, step_ms=60_000, clock=rig.clock.now_ms
    )
    return rig, eng, service, out


async def _replicas_stalling(
    serve: Servers, scales: list[float], quorum: int, max_age_ms: int = 60_000
) -> tuple[list[SignedRig], MarginEngine, SignedMarginService, io.BytesIO]:
    """Replicas on one clock (their own keys and identities), one verified round each, and a
    signed service reading them all that trusts a report for `max_age_ms` (60 s by default, so
    a stall is not age)."""
    rigs = [SignedRig(KEYS[i], scale=scale) for i, scale in enumerate(scales)]
    for i, rig in enumerate(rigs):
        rig.clock = rigs[0].clock
        rig.step(advance=i == 0)
    urls = [await serve.api(rig) for rig in rigs]
    eng = accounts({"max_report_age_ms": max_age_ms}, signed_section(rigs, quorum), TIGHT)
    assert eng.spec.signed is not None
    out = io.BytesIO()
    service = SignedMarginService(
        eng, urls, out, eng.spec.signed, step_ms=20, clock=rigs[0].clock.now_ms
    )
    await serve.run(service)
    await until(lambda: service.client.accepted >= 2 * len(rigs))  # two markets each
    return rigs, eng, service, out


async def _round_of(rigs: list[SignedRig], service: SignedMarginService, ms: int) -> None:
    """`ms` later, one round of each of `rigs` (the others stay quiet), all verified."""
    rigs[0].clock.advance(ms)  # below the stall limit (5 s) of the replicas that step
    accepted = service.client.accepted
    for rig in rigs:
        rig.step(advance=False)
    await until(lambda: service.client.accepted >= accepted + 2 * len(rigs))


async def test_a_quorum_view_turned_paused_by_age_freezes_at_the_tick(serve: Servers) -> None:
    """Three replicas, quorum 2, a report trusted for 1 s. 500 ms after a round of all three,
    the second and third publish one more, the third with BTC/USD paused by its operator: the
    quorum view is still live (the first's and the second's prices). Once the first's report
    is over 1 s old, the fresh ones agree there is no price (`paused`): the tick freezes
    BTC/USD at once. It only froze views without a quorum (`unknown`), so the engine kept the
    live price of the second's round (501 ms old, fresh) until a next round came."""
    rigs, eng, service, out = await _replicas_stalling(serve, [1.0, 1.0, 1.0], 2, 1_000)
    now = rigs[0].clock.now_ms
    rigs[2].core.set_manual("BTC/USD", True)
    await _round_of(rigs[1:], service, 500)
    assert service.client.price("BTC/USD").status == "active"
    assert isinstance(eng.prices(now())["BTC/USD"], Resolved)
    before = len(decisions(out))
    rigs[0].clock.advance(501)  # the first's report is 1,001 ms old; the others' 501 ms
    assert service.client.price("BTC/USD").status == "paused"
    await until(lambda: isinstance(eng.prices(now())["BTC/USD"], Frozen))
    btc = eng.prices(now())["BTC/USD"]
    assert isinstance(btc, Frozen) and btc.reason == "paused"
    await until(lambda: len(decisions(out)) > before)
    assert [(d["kind"], d["reasons"]) for d in decisions(out)[before:]] == [("freeze", ["paused"])]
    assert b"liquidation" not in out.getvalue()


async def test_a_stalled_replica_leaves_the_quorum_and_the_others_keep_pricing(
    serve: Servers,
) -> None:
    """Three replicas, quorum 2, quoting 1.0, 1.01 and 1.3 times the venues' prices. The third
    stops publishing; once its daemon says its rounds have stalled, its reports leave the
    quorum at once (though 60 s young): BTC/USD is priced by the two others' median (64,320,
    not 64,640 with the stalled one's), never frozen, and no account decision is written.
    Without the withdrawal every market froze `stalled` and the stalled replica's price kept
    counting until its reports were 60 s old."""
    rigs, eng, service, out = await _replicas_stalling(serve, [1.0, 1.01, 1.3], quorum=2)
    now = rigs[0].clock.now_ms
    btc = eng.prices(now())["BTC/USD"]
    assert isinstance(btc, Resolved) and btc.value == pytest.approx(64_640, rel=1e-4)
    before = len(decisions(out))  # the start's (no report yet, then priced)
    with capture_logs() as logs:
        for _ in range(6):  # the third replica's last round is now 6 s old: stalled
            await _round_of(rigs[:2], service, 1_000)
        await until(lambda: any(e["event"] == "stalled" for e in logs))
        btc = eng.prices(now())["BTC/USD"]
        assert isinstance(btc, Resolved) and btc.value == pytest.approx(64_320, rel=1e-4)
        assert list(service.client.stalled) == ["daemon-c"]
        await _round_of(rigs[:2], service, 250)
    btc = eng.prices(now())["BTC/USD"]
    assert isinstance(btc, Resolved) and btc.value == pytest.approx(64_320, rel=1e-4)
    assert service.client.price("BTC/USD").identities == ("daemon-a", "daemon-b")
    assert decisions(out)[before:] == [] and eng.state("tight") == "healthy"
    stalled = next(e for e in logs if e["event"] == "stalled")
    assert stalled["identity"] == "daemon-c" and "stalled" in stalled["message"]


async def test_an_equivocating_signer_leaves_the_engines_price_at_once(serve: Servers) -> None:
    """Three replicas, quorum 2, quoting 1.0, 1.01 and 1.3 times the venues' prices; the third
    publishes its round 300 ms after the others', so its report is the newest: BTC/USD is
    64,640. A fourth daemon signing with the third's key then signs another round for that
    very time (replicas given one key): the client refuses it as `equivocation` and withdraws
    the third's report. The engine's price is the two others' median (64,320) at once, with no
    round and no tick (60 s). It kept 64,640 for up to a round: an equivocation refreshed
    nothing, and a refresh passed on only views of the same or a newer round time, while the
    view without the newest report is older."""
    rigs = [SignedRig(KEYS[i], scale=scale) for i, scale in enumerate([1.0, 1.01, 1.3])]
    twin = SignedRig(KEYS[2], scale=1.2)  # the third's key, in another daemon's hands
    for rig in (*rigs[1:], twin):
        rig.clock = rigs[0].clock
    now = rigs[0].clock.now_ms
    rigs[0].step()
    rigs[1].step(advance=False)
    urls = [await serve.api(rig) for rig in (*rigs, twin)]
    eng = accounts({"max_report_age_ms": 60_000}, signed_section(rigs, 2), TIGHT)
    assert eng.spec.signed is not None
    out = io.BytesIO()
    service = SignedMarginService(
        eng, urls, out, eng.spec.signed, step_ms=60_000, clock=rigs[0].clock.now_ms
    )
    await serve.run(service)
    await until(lambda: service.client.accepted >= 4)
    await _round_of(rigs[2:], service, 300)
    btc = eng.prices(now())["BTC/USD"]
    assert isinstance(btc, Resolved) and btc.value == pytest.approx(64_640, rel=1e-4)
    assert btc.ref.ts == now()  # the third's round time
    twin.step(advance=False)
    await until(lambda: service.client.rejected["equivocation"] >= 1)
    await until(lambda: eng.prices(now())["BTC/USD"].ref.ts < now())
    btc = eng.prices(now())["BTC/USD"]
    assert isinstance(btc, Resolved) and btc.value == pytest.approx(64_320, rel=1e-4)
    assert [s.identity for s in btc.ref.signers] == ["daemon-a", "daemon-b"]
    assert service.client.price("BTC/USD").identities == ("daemon-a", "daemon-b")


async def test_a_replica_whose_report_ages_out_leaves_the_engines_price_at_the_tick(
    serve: Servers,
) -> None:
    """Three replicas, quorum 2, quoting 1.0, 1.01 and 1.3 times the venues' prices, a report
    trusted for 1 s. The third goes quiet; 500 ms later the first two publish a round. Once
    the third's report is over 1 s old, the quorum view is the two others' median (64,320),
    and the engine has it at the tick, without a round: it kept the median of all three
    (64,640, the view of the last round, still fresh) until a next round came."""
    rigs, eng, service, _ = await _replicas_stalling(serve, [1.0, 1.01, 1.3], 2, 1_000)
    now = rigs[0].clock.now_ms
    await _round_of(rigs[:2], service, 500)
    btc = eng.prices(now())["BTC/USD"]
    assert isinstance(btc, Resolved) and btc.value == pytest.approx(64_640, rel=1e-4)
    rigs[0].clock.advance(501)  # the third's report is 1,001 ms old; the others' 501 ms
    assert service.client.price("BTC/USD").identities == ("daemon-a", "daemon-b")
    await until(lambda: len(eng.prices(now())["BTC/USD"].ref.signers) == 2)
    btc = eng.prices(now())["BTC/USD"]
    assert isinstance(btc, Resolved) and btc.value == pytest.approx(64_320, rel=1e-4)
    assert eng.state("tight") == "healthy"


async def test_a_stall_leaving_fewer_than_a_quorum_freezes_stalled_until_it_ends(
    serve: Servers,
) -> None:
    """Two replicas, quorum 2; the second stalls while the first keeps publishing. Its reports
    leave the quorum, which the first alone does not make: every market is frozen with reason
    `stalled` (why the quorum is gone), and stays frozen through the first's next rounds
    (which, with the stalled reports still counted, priced it again); the stalled replica's
    next round ends the stall and prices the market."""
    rigs, eng, service, out = await _replicas_stalling(serve, [1.0, 1.0], quorum=2)
    now = rigs[0].clock.now_ms
    assert isinstance(eng.prices(now())["BTC/USD"], Resolved)
    before = len(decisions(out))  # the start's (no report yet, then priced)
    with capture_logs() as logs:
        for _ in range(6):
            await _round_of(rigs[:1], service, 1_000)
        await until(lambda: any(e["event"] == "stalled" for e in logs))
        await _round_of(rigs[:1], service, 250)
        for market in ("BTC/USD", "ETH/USD"):
            frozen = eng.prices(now())[market]
            assert isinstance(frozen, Frozen) and frozen.reason == "stalled"
        await until(lambda: len(decisions(out)) > before)
        assert [(d["kind"], d["reasons"]) for d in decisions(out)[before:]] == [
            ("freeze", ["stalled"])
        ]
        await _round_of(rigs, service, 250)
    await until(lambda: isinstance(eng.prices(now())["BTC/USD"], Resolved))
    assert [d["kind"] for d in decisions(out)[before:]] == ["freeze", "unfreeze"]
    assert not service.client.stalled
    quorum = [e for e in logs if e["event"] == "no_quorum"]
    assert quorum and {e["reason"] for e in quorum} == {"stalled"}


async def test_frames_signed_for_another_deployment_or_by_another_key_price_nothing(
    serve: Servers,
) -> None:
    """A daemon signing for `staging` (a consumer expecting `test`), and one signing with a key
    that is not among the signers: every frame of both is refused, with those reasons, and
    the engine has no price at all (`no_report`)."""
    staging, stranger = SignedRig(KEYS[0], deployment="staging"), SignedRig(KEYS[3])
    stranger.clock = staging.clock
    staging.step()
    stranger.step(advance=False)
    urls = [await serve.api(rig) for rig in (staging, stranger)]
    allowed = {"deployment": "test", "signers": {"daemon-a": KEYS[0].address}}
    eng = accounts({}, allowed, TIGHT)
    assert eng.spec.signed is not None
    service = SignedMarginService(
        eng, urls, io.BytesIO(), eng.spec.signed, step_ms=20, clock=staging.clock.now_ms
    )
    await serve.run(service)
    rejected = service.client.rejected
    await until(lambda: rejected["wrong_deployment"] >= 2 and rejected["unknown_signer"] >= 2)
    assert service.client.accepted == 0 and eng.book.latest == {}
    btc = eng.prices(staging.clock.now_ms())["BTC/USD"]
    assert isinstance(btc, Frozen) and btc.reason == "no_report"


@pytest.mark.parametrize(
    ("signed", "urls", "said"),
    [
        (None, 2, "several --url need signed mode"),
        (
            {
                "deployment": "test",
                "signers": {"a": KEYS[0].address, "b": KEYS[1].address},
                "quorum": 2,
            },
            1,
            "quorum = 2 needs a daemon (--url) per identity: 1 given",
        ),
        ({"deployment": "", "signers": {"a": KEYS[0].address}}, 1, "signed.deployment"),
        ({"deployment": "test", "signers": {"a": "0x12"}}, 1, "'0x12' is no 0x address"),
        (  # a pasted key file, not its address: cut, and said to be
            {"deployment": "test", "signers": {"a": "0x" + "ab" * 100}},
            1,
            f"{'0x' + 'ab' * 29!r}... (202 characters) is no 0x address",
        ),
        (
            {"deployment": "test", "signers": {"a": KEYS[0].address, "b": KEYS[0].address}},
            1,
            "is also listed for 'a'",
        ),
        (
            {"deployment": "test", "signers": {"a": KEYS[0].address}, "quorum": 2},
            2,
            "quorum: 2 is more than the 1 identities in signers",
        ),
    ],
)
def test_a_bad_signed_mode_is_refused_with_exit_2_naming_it(
    signed: Any, urls: int, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`oracled margin` refuses, before connecting, several daemons without signed mode (their
    unsigned reports cannot be told apart), fewer daemons than the quorum, and a [signed]
    section that is wrong: exit 2 and the problem named."""
    data: dict[str, Any] = {"assets": {"USD": {}}, "instruments": {}}
    if signed is not None:
        data["signed"] = signed
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps(data))
    argv = ["margin", "--accounts", str(path)]
    for port in range(9, 9 + urls):
        argv += ["--url", f"ws://127.0.0.1:{port}/v1/stream"]
    assert main(argv) == 2
    assert said in capsys.readouterr().err


async def test_oracled_margin_runs_signed_mode_from_the_accounts_file(
    serve: Servers, tmp_path: Path
) -> None:
    """`oracled margin` with a `[signed]` section and two --url, the daemon's own stream and a
    relay that raises BTC/USD 2 % on the way, the rounds stamped with the wall clock: the
    command verifies each frame, refuses the relay's as `forged` (logged), liquidates an account
    below maintenance on the verified mark, and stops on SIGTERM with exit 0."""
    rig = SignedRig(KEYS[0])
    rig.clock = ManualClock(time.time_ns() // 1_000_000)
    url = await serve.api(rig)
    relay, relayed = await serve.relay(url)
    relay.tamper = 1.02
    under = {  # equity 500 against 640 maintenance
        "id": "under",
        "collateral": {"USD": 500},
        "positions": [{"instrument": "BTC-PERP", "qty": 1, "entry": 64_000}],
    }
    data = {
        "policy": {"liquidation_fee": 0.0},
        "assets": {"USD": {}},
        "instruments": {
            "BTC-PERP": {"market": "BTC/USD", "tiers": [{"initial": 0.02, "maintenance": 0.01}]}
        },
        "accounts": [under],
        "signed": signed_section([rig]),
    }
    accounts_file, out, log = (tmp_path / n for n in ("accounts.json", "out.jsonl", "log.jsonl"))
    accounts_file.write_text(json.dumps(data))
    argv = [sys.executable, "-m", "oracled.cli", "margin", "--accounts", str(accounts_file)]
    argv += ["--url", relayed, "--url", url, "--step-ms", "100", "--log-format", "json"]
    with out.open("wb") as sink, log.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=sink, stderr=err)  # noqa: ASYNC220
    try:
        async with asyncio.timeout(SAFETY_S):
            while b"liquidation" not in out.read_bytes():
                assert proc.poll() is None, f"oracled margin exited with {proc.returncode}"
                rig.clock.advance(time.time_ns() // 1_000_000 - rig.clock.now_ms())
                rig.step()  # a round every 100 ms of the wall clock
                await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(SAFETY_S):
            while proc.poll() is None:  # noqa: ASYNC110 - a child process, no event to await
                await asyncio.sleep(0.05)
        assert proc.returncode == 0
    finally:
        stop_child(proc)
    liquidation = next(
        d for d in map(json.loads, out.read_text().splitlines()) if d["kind"] == "liquidation"
    )
    assert liquidation["account"] == "under" and liquidation["driver"]["kind"] == "mark"
    refused = [json.loads(line) for line in log.read_text().splitlines() if "rejected" in line]
    assert refused and refused[0]["reason"] == "forged"
    assert float(liquidation["driver"]["price"]) == pytest.approx(64_000 * (1 + PREMIUM), rel=1e-4)


def test_a_signed_live_price_without_a_mark_is_no_perpetuals_mark_to_the_policy() -> None:
    """A round signed with BTC/USD live at 64,000 and its mark (0.1 % above) over the market's
    `max_price` of 64,050: the leaf's mark mode is `none` beside a live price. The quorum view
    of it is no mark made from the perpetuals: `mark_fallback = "freeze"` freezes the market
    (reason `mark_fallback`) rather than liquidate on the index, and `index` values the
    position at the index, as in unsigned mode. An account 10 BTC-PERP long from 70,000 with
    1,000 USD is liquidatable at 64,000."""
    rig = SignedRig(KEYS[0], max_price=64_050)
    result = rig.step()
    assert result.status[0] == Status.ACTIVE and result.mark.values[0].mode == "none"
    client = OracleClient({KEYS[0].address}, deployment="test", now_ms=rig.clock.now_ms)
    signed = rig.hub.latest_signed
    assert signed is not None
    client.feed(signed.envelope(0))
    reading = view_of(client.price("BTC/USD"))
    assert (reading.status, reading.mark, reading.mark_mode) == ("active", None, "none")
    account = {
        "id": "a",
        "collateral": {"USD": 1_000},
        "positions": [{"instrument": "BTC-PERP", "qty": 10, "entry": 70_000}],
    }
    taken: dict[str, list[Any]] = {}
    for choice in ("index", "freeze"):
        engine = MarginEngine(spec([account], policy={"mark_fallback": choice}))
        engine.on_report(reading)
        taken[choice] = engine.step(rig.clock.now_ms())
    liquidated = [d for d in taken["index"] if isinstance(d, Liquidation)]
    assert liquidated and liquidated[0].driver.kind == "index"
    assert [d.reasons for d in taken["freeze"] if isinstance(d, FreezeCall)] == [["mark_fallback"]]
    assert not any(isinstance(d, Liquidation) for d in taken["freeze"])
