"""Signed mode reads again only the quorum views that can have changed (oracled/margin/reads.py),
and the engine gets exactly what reading every market at every refresh gave it.

Scripted interleavings of three daemons' rounds, signed by real RoundSigners (the stream's
`signed` frames, byte for byte), with lost frames, paused and degraded rounds, prices that are
none, ticks that age reports out, stalls, equivocations, markets removed and served again, late
and repeated frames, and a clock stepped back, go through two services frame by frame: the
service as it is, and one that reads every market at every refresh (the code before). The
frames are handed to each service's frame handler as its connection hands them, so that both
see one interleaving."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from oracled.client import MarketView
from oracled.margin import MarginEngine, parse_accounts
from oracled.margin.prices import PriceView
from oracled.margin.signed import SignedMarginService
from oracled.model import Status
from oracled.publish.signer import MARK_MODE_CODES, Leaf, RoundSigner, SigningKey
from oracled.publish.signstall import stall_notice

T0 = 1_700_000_000_000
ROUND_MS = 250
MARKETS = {"BTC/USD": 64_000.0, "ETH/USD": 3_100.0, "SOL/USD": 150.0, "XRP/USD": 0.5}
KEYS = [SigningKey.from_hex("0x" + f"{n:02x}" * 32) for n in (0x51, 0x52, 0x53, 0x54)]
URLS = [f"ws://daemon-{name}.invalid/v1/stream" for name in "abc"]
#: daemon-c signs with two keys in turn (a key rotation): one identity, counted once.
SIGNERS: dict[str, Any] = {
    "daemon-a": KEYS[0].address,
    "daemon-b": KEYS[1].address,
    "daemon-c": [KEYS[2].address, KEYS[3].address],
}


class Recording(MarginEngine):
    """The engine, keeping every view it was given, in order."""

    def __init__(self) -> None:
        tiers = [{"initial": 0.02, "maintenance": 0.01}]
        instruments = {f"{m[:3]}-PERP": {"market": m, "tiers": tiers} for m in MARKETS}
        positions = [
            {"instrument": f"{m[:3]}-PERP", "qty": q, "entry": MARKETS[m]}
            for m, q in (("BTC/USD", 1), ("ETH/USD", -20), ("SOL/USD", 100))
        ]
        spec = {
            "policy": {
                "liquidation_fee": 0.0,
                "max_report_age_ms": 1_000,
                "max_report_future_ms": 400,
                "pause_grace_ms": 3_000,
                "after_grace": "last_good",
            },
            "assets": {"USD": {}, "XRP": {"market": "XRP/USD", "haircut": 0.1}},
            "instruments": instruments,
            "accounts": [
                {"id": "hedged", "collateral": {"USD": 3_000}, "positions": positions},
                {"id": "xrp", "collateral": {"USD": 100, "XRP": 2_000}, "positions": []},
            ],
            "signed": {"deployment": "test", "signers": SIGNERS, "quorum": 2},
        }
        super().__init__(parse_accounts(spec))
        self.given: list[PriceView] = []

    def on_report(self, view: PriceView, *, in_order: bool = False) -> None:
        self.given.append(view)
        super().on_report(view, in_order=in_order)


class Counting(SignedMarginService):
    """Signed mode, counting the quorum views read."""

    reads = 0

    def _to_read(self, now: int, arriving: set[str]) -> Iterable[str]:
        markets = list(super()._to_read(now, arriving))
        self.reads += len(markets)
        return markets


class EveryMarket(Counting):
    """Signed mode as it was: every market read at every refresh, and the plain view of a
    market read up to the cuts read before it, live or not."""

    def _to_read(self, now: int, arriving: set[str]) -> Iterable[str]:
        super()._to_read(now, arriving)
        self.reads += len(self.engine.markets)
        return self.engine.markets

    def _known_live(self, market: str) -> int | None:
        return None


def frames(
    signer: RoundSigner, ts: int, number: int, statuses: Mapping[str, Status], scale: float
) -> dict[str, str]:
    """One signed round (`statuses`: its markets): live markets at their price x `scale`,
    except an `active` price of 0 where the scale is 0 (a price that is none)."""
    leaves = []
    for market, status in statuses.items():
        if status in (Status.ACTIVE, Status.DEGRADED):
            price = round(MARKETS[market] * scale * 100)
            perps = MARK_MODE_CODES["perps"]
            leaves.append(Leaf(market, ts, status, price, 1, -2, price + 1, perps))
        else:
            leaves.append(Leaf(market, ts, status, 0, 0, -2, 0, MARK_MODE_CODES["none"]))
    signed = signer.sign_leaves(ts, number, tuple(leaves))
    return {
        leaf.market: '{"type":"signed","data":' + signed.envelope(i).decode() + "}"
        for i, leaf in enumerate(leaves)
    }


class Script:
    """A seeded interleaving of three daemons' signed rounds and the faults above."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = T0
        self.signers = [RoundSigner(KEYS[0], "test"), RoundSigner(KEYS[1], "test")]
        self.signers.append(RoundSigner(KEYS[2], "test"))
        self.rotated = RoundSigner(KEYS[3], "test")
        self.rounds = [0, 0, 0]
        self.ts = [0, 0, 0]
        self.pending: list[list[str]] = [[], [], []]  # frames of each daemon's round still to go
        self.sent: list[list[str]] = [[], [], []]  # frames each daemon sent (to repeat one)
        self.removed: list[set[str]] = [set(), set(), set()]

    def _round(self, d: int) -> list[str]:
        rng = self.rng
        self.rounds[d] += 1
        self.ts[d] = max(self.ts[d] + 1, self.now - rng.choice((0, 0, 0, 100, 300)))
        statuses = {}
        for market in MARKETS:
            if market in self.removed[d]:
                continue
            roll = rng.random()
            statuses[market] = (
                Status.PAUSED if roll < 0.08 else Status.DEGRADED if roll < 0.15 else Status.ACTIVE
            )
        if not statuses:
            return []  # every market removed: the daemon publishes nothing of them
        scale = rng.choice((1.0, 1.0, 0.99, 1.01, 0.97, 1.3 if d == 2 else 1.0, 0.0 if d else 1))
        signer = self.signers[d]
        if d == 2 and rng.random() < 0.2:  # daemon-c's other key
            signer = self.rotated
        out = frames(signer, self.ts[d], self.rounds[d], statuses, scale)
        order = list(out.values())
        if rng.random() < 0.3:
            rng.shuffle(order)
        if rng.random() < 0.2:  # a frame lost on the way
            order.pop(rng.randrange(len(order)))
        return order

    def _equivocation(self, d: int) -> str | None:
        """Another round signed by daemon `d`'s key at the time of its last round."""
        if not self.ts[d]:
            return None
        other = RoundSigner(self.signers[d].key, "test")
        market = self.rng.choice(list(MARKETS))
        return frames(other, self.ts[d], self.rounds[d] + 7, {market: Status.ACTIVE}, 0.9)[market]

    def _stall(self, d: int) -> str:
        """Daemon `d`'s `stalled` frame as its signed streams send it: the StallNotice naming
        its latest round, signed by its key."""
        notice = stall_notice("round 5000 ms old", self.ts[d], self.rounds[d], self.signers[d])
        return notice.decode()

    def events(self, steps: int) -> Iterable[tuple[str, Any, int]]:
        """(kind, payload, daemon): `frame` (text), `tick` (ms to advance), `back` (ms)."""
        rng = self.rng
        for _ in range(steps):
            d = rng.randrange(3)
            roll = rng.random()
            if roll < 0.6:
                if not self.pending[d]:
                    self.pending[d] = self._round(d)
                if self.pending[d]:
                    frame = self.pending[d].pop(0)
                    self.sent[d].append(frame)
                    yield "frame", frame, d
            elif roll < 0.8:
                self.now += rng.choice((0, 50, 250, 400, 700, 1_200))
                yield "tick", None, d
            elif roll < 0.84:
                yield "frame", self._stall(d), d
            elif roll < 0.87:
                frame = self._equivocation(d)
                if frame is not None:
                    yield "frame", frame, d
            elif roll < 0.91:
                market = rng.choice(list(MARKETS))
                self.removed[d].add(market)
                error = {"type": "error", "code": "market_removed", "markets": [market]}
                yield "frame", json.dumps({**error, "message": "removed by a reload"}), d
            elif roll < 0.94:
                self.removed[d].clear()  # served again: its next round has them
            elif roll < 0.97 and self.sent[d]:
                yield "frame", rng.choice(self.sent[d][-8:]), d  # late, or the same again
            elif roll < 0.98:
                self.now -= rng.choice((10, 300, 900))
                yield "tick", None, d


def run(seed: int, steps: int) -> tuple[Counting, EveryMarket, dict[str, int]]:
    """Run one script through both services, comparing what the engines got after each event."""
    script = Script(seed)
    services: list[SignedMarginService] = []
    for kind in (Counting, EveryMarket):
        engine = Recording()
        assert engine.spec.signed is not None
        service = kind(engine, URLS, io.BytesIO(), engine.spec.signed, clock=lambda: script.now)
        # The script's daemons say they stalled at any time, not only 5 s after a round as a
        # real one does: its clients take a notice as soon as the rounds' pace allows.
        service.client.stall_notice_min_age_ms = 0
        services.append(service)
    seen: dict[str, int] = {}
    for kind, payload, d in script.events(steps):
        seen[kind] = seen.get(kind, 0) + 1
        for service in services:
            if kind == "frame":
                service._frame(payload, URLS[d])
            else:
                service._decide()
        fast, full = services
        assert isinstance(fast.engine, Recording) and isinstance(full.engine, Recording)
        assert fast.engine.given == full.engine.given, (seed, kind)
        assert fast.out.getvalue() == full.out.getvalue(), (seed, kind)  # type: ignore[attr-defined]
        assert fast.engine.book.stalled == full.engine.book.stalled
        assert fast.engine.book.unavailable == full.engine.book.unavailable
        assert fast._unverified == full._unverified
    counting, every = services
    assert isinstance(counting, Counting) and isinstance(every, EveryMarket)
    return counting, every, seen


@pytest.mark.parametrize("seed", range(12))
def test_the_engine_gets_what_reading_every_market_gave_it(seed: int) -> None:
    """Every view handed to the engine, every decision written and every freeze, after each
    frame and tick of a seeded interleaving, are those of the service that reads every market
    at every refresh; and the service read fewer views."""
    with capture_logs() as logs:
        fast, full, seen = run(seed, 700)
    assert seen["frame"] > 300 and seen["tick"] > 100
    assert fast.client.accepted > 200 and len(fast.engine.given) > 100  # type: ignore[attr-defined]
    assert 0 < fast.reads < full.reads
    events = [e["event"] for e in logs]
    assert events.count("no_quorum") >= 2  # each service's, the same


def test_the_scripts_reach_every_case_the_views_change_on() -> None:
    """Across the seeds, the scripts do what the equivalence is about: markets frozen without a
    quorum and for a stall, stalls withdrawn, equivocations, markets removed and served again,
    prices that are none, and views read again at the tick only (reports aged out)."""
    reasons: set[str] = set()
    equivocations = stalls = removed = 0
    bad = 0
    for seed in range(12):
        with capture_logs() as logs:
            fast, _, _ = run(seed, 700)
        reasons.update(fast._unverified.values())
        reasons.update(e.get("reason", "") for e in logs if e["event"] == "no_quorum")
        equivocations += fast.client.equivocated.total()
        stalls += sum(1 for e in logs if e["event"] == "stalled" and e.get("identity"))
        removed += sum(1 for e in logs if e["event"] == "market_unavailable")
        bad += sum(1 for e in logs if e["event"] == "bad_report")
    assert {"no_quorum", "stalled"} <= reasons
    assert equivocations > 0 and stalls > 0 and removed > 0 and bad > 0


def test_a_tick_with_nothing_aged_out_reads_no_market() -> None:
    """Three daemons' complete rounds, then ticks before any report ages out: no quorum view is
    read again (the service read every market at each tick before); once the first round's
    reports pass max_report_age_ms, the tick reads every market and freezes them."""
    engine = Recording()
    assert engine.spec.signed is not None
    now = [T0]
    service = Counting(engine, URLS, io.BytesIO(), engine.spec.signed, clock=lambda: now[0])
    statuses = dict.fromkeys(MARKETS, Status.ACTIVE)
    for d, key in enumerate(KEYS[:3]):
        for frame in frames(RoundSigner(key, "test"), T0, 1, statuses, 1.0).values():
            service._frame(frame, URLS[d])
    assert {v.status for v in engine.book.latest.values()} == {"active"}
    service.reads = 0
    for _ in range(4):
        now[0] += 250
        service._decide()
    assert service.reads == 0
    now[0] = T0 + 1_001
    with capture_logs() as logs:
        service._decide()
    assert service.reads == len(MARKETS)
    assert [e["market"] for e in logs if e["event"] == "no_quorum"] == list(MARKETS)
    views: Mapping[str, MarketView] = {m: service.client.price(m) for m in MARKETS}
    assert {v.status for v in views.values()} == {"unknown"}


class Pair:
    """The service and the one that reads every market, fed the same events; the engines'
    views, decisions and freezes compared after each. `calls`: `OracleClient.price` calls of
    the service (the real client's, counted on the way)."""

    def __init__(self) -> None:
        self.now = T0
        self.services: list[SignedMarginService] = []
        for kind in (Counting, EveryMarket):
            engine = Recording()
            assert engine.spec.signed is not None
            self.services.append(
                kind(engine, URLS, io.BytesIO(), engine.spec.signed, clock=lambda: self.now)
            )
        self.calls = 0
        client = self.services[0].client
        price = client.price

        def counted(market: str, *, upto: Mapping[str, int] | None = None) -> MarketView:
            self.calls += 1
            return price(market, upto=upto)

        client.price = counted  # type: ignore[method-assign]

    def _compare(self) -> None:
        fast, full = self.services
        assert isinstance(fast.engine, Recording) and isinstance(full.engine, Recording)
        assert fast.engine.given == full.engine.given
        assert fast.out.getvalue() == full.out.getvalue()  # type: ignore[attr-defined]
        assert fast._unverified == full._unverified

    def frame(self, text: str, d: int) -> int:
        """Hand a daemon's frame to both; the views read for it."""
        before = self.calls
        for service in self.services:
            service._frame(text, URLS[d])
        self._compare()
        return self.calls - before

    def tick(self) -> int:
        before = self.calls
        for service in self.services:
            service._decide()
        self._compare()
        return self.calls - before


def test_a_round_completed_reads_each_market_once_and_a_tick_only_what_changed() -> None:
    """Three daemons' rounds interleaved market by market, a tick after each first frame of a
    market: each daemon's completed round reads each market's quorum view once (the markets
    the others' rounds are coming in for were read twice, their plain view first, though
    it stayed live), and a tick reads only the market that joined the rounds coming in, not
    those whose only new frames are live ones beyond their daemons' last complete round
    (their view up to those rounds is the same). The engine gets what reading every market
    twice at every refresh gave it."""
    pair = Pair()
    signers = [RoundSigner(KEYS[d], "test") for d in range(3)]
    statuses = dict.fromkeys(MARKETS, Status.ACTIVE)
    completed: list[int] = []
    ticked: list[int] = []
    for number in range(1, 6):
        ts = T0 + number * ROUND_MS
        pair.now = ts
        scale = (1.0, 1.01, 0.99)
        rounds = [
            frames(s, ts, number, statuses, scale[(number + d) % 3]) for d, s in enumerate(signers)
        ]
        for i, market in enumerate(MARKETS):
            for d in range(3):
                reads = pair.frame(rounds[d][market], d)
                if i < len(MARKETS) - 1:
                    assert reads == 0
                elif number >= 3:
                    completed.append(reads)  # the daemon's round is complete: a refresh
                if d == 0 and number >= 3:
                    ticked.append(pair.tick())
    # Before: 7, 7 and 4 views a round completed (the three markets of the rounds coming in
    # read twice), and 2, 4, 4 and 0 a tick.
    assert completed == [len(MARKETS)] * 9
    assert ticked == [1, 1, 1, 0] * 3  # the last market's tick follows its round's refresh
    fast = pair.services[0]
    assert {v.status for v in fast.engine.book.latest.values()} == {"active"}


def test_a_late_frame_of_a_round_its_daemon_moved_past_is_read() -> None:
    """A daemon's frame of a round time between its last complete round and the one now
    coming in (it never came in: the daemon began a later one) is verified and held, but
    belongs to no round coming in: the market's plain view is the one taken, and it changed,
    so it is read at the next refresh though the frame is live and beyond the daemon's cut."""
    pair = Pair()
    signers = [RoundSigner(KEYS[d], "test") for d in range(3)]
    statuses = dict.fromkeys(MARKETS, Status.ACTIVE)
    for d, signer in enumerate(signers):  # round 1 of each, complete
        for text in frames(signer, T0, 1, statuses, 1.0).values():
            pair.frame(text, d)
    late = frames(signers[0], T0 + ROUND_MS, 2, statuses, 1.01)  # never sent in its time
    pair.now = T0 + 2 * ROUND_MS
    pair.frame(frames(signers[0], pair.now, 3, statuses, 1.02)["ETH/USD"], 0)  # round 3 begins
    pair.tick()
    given = len(pair.services[0].engine.given)  # type: ignore[attr-defined]
    assert pair.frame(late["BTC/USD"], 0) == 0
    assert pair.tick() == 1  # BTC/USD's plain view, now with daemon-a's round 2
    fast = pair.services[0]
    assert len(fast.engine.given) == given + 1  # type: ignore[attr-defined]
    assert fast.engine.given[-1].market == "BTC/USD"  # type: ignore[attr-defined]
    assert {s.round for s in fast.engine.given[-1].signers} == {1, 2}  # type: ignore[attr-defined]
