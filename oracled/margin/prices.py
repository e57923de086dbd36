"""What the margin engine reads from a price report, and whether it may act on it.

The engine consumes reports the way an outside user does: the wire form of `WS /v1/stream` and
`GET /v1/prices` (docs/contracts.md, Report). `PriceView` keeps only what a risk decision needs;
`PriceBook` holds the latest view per market and resolves, at a decision time, either a price the
engine may use or the reason it must not act (docs/margin.md, prices):

* `active` (or `degraded`, when the policy allows it) and fresh: the mark price when the report
  carries a live one and the policy uses marks, else the index price;
* otherwise frozen, with the reason; once a pause has lasted longer than the grace period, the
  `last_good` policy uses the last good price with a wider maintenance buffer;
* a market the daemon said it does not have (`unknown_market`, `market_removed`: `unavailable`)
  is frozen with that reason until a report of it arrives again, grace period or not;
* a mark in `fallback` (not made from the perpetuals) is used, replaced by the index, or frozen
  on (`mark_fallback`), as the policy says;
* a report stamped more than `max_report_future_ms` ahead of the decision time is frozen on
  (`future_report`): a clock ahead would otherwise keep it fresh for as long as the skew;
* every market is frozen with reason `stalled` once the daemon says its rounds have stalled
  (its latest round is no current price, however young), until a newer report of it arrives.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from oracled.margin.config import RiskPolicy

__all__ = [
    "Frozen",
    "PriceBook",
    "PriceRef",
    "PriceView",
    "Resolved",
    "SignerRef",
    "WireReport",
    "parse_price",
]


class WireEstimators(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    perp_median: str | None = None


class WireMark(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    price: str | None = None
    estimators: WireEstimators | None = None


class WireReport(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """The fields of a published report the engine reads; unknown keys are ignored."""

    market: str
    ts: int
    round: int
    status: str
    reasons: list[str] = []
    price: str | None = None
    last_good_price: str | None = None
    last_good_ts: int | None = None
    mark: WireMark | None = None
    signature: str | None = None


_wire_decoder = msgspec.json.Decoder(WireReport)


# A decimal as the contract writes prices (docs/contracts.md): digits, an optional point and
# exponent. float() alone would also take `NaN`, `inf`, `1_000` and spaces.
_DECIMAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_price(text: str | None) -> float | None:
    """A price of a report, or ValueError: a risk decision on a price that is not finite and
    positive (a broken or forged frame; the daemon never publishes one) would be no decision."""
    if text is None:
        return None
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"not a price: {text[:32]!r}")
    return value


class SignerRef(msgspec.Struct, frozen=True, gc=False):
    """One verified signed report a signed-mode price rests on: an auditor can fetch the very
    message (the signer's frame of `market` at `ts`) and check it, and knows whose it was."""

    identity: str  # the accounts file's name for the daemon (`[signed.signers]`)
    address: str  # the EIP-55 address that signed
    ts: int  # the signed round's time, ms
    round: int
    status: str
    price: str | None  # the signed price (None unless live)
    mark: str | None  # the signed mark of a perpetual, else None
    format: int  # the signed format (EIP-712 domain version) it was verified in


class PriceRef(msgspec.Struct, frozen=True, gc=False):
    """The report behind a decision, kept with it for audit."""

    market: str
    price: str | None
    kind: str  # "mark", "index", "last_good", or "none" for a frozen market
    status: str
    round: int
    ts: int
    reasons: list[str] = []
    signature: str | None = None
    #: Signed mode: the verified reports of the quorum behind the price, by identity; empty
    #: for an unsigned report.
    signers: list[SignerRef] = []


class PriceView(msgspec.Struct, frozen=True, gc=False):
    market: str
    ts: int
    round: int
    status: str
    reasons: tuple[str, ...]
    price: float | None
    price_text: str | None
    last_good: float | None
    last_good_text: str | None
    last_good_ts: int | None
    mark: float | None
    mark_text: str | None
    signature: str | None
    #: What made the mark, as the signed leaf says it (docs/mark.md, signed): `perps` when the
    #: perpetuals' median counted, else `fallback`; `none` for a perpetual market's report
    #: without a mark (its index not live, or the mark out of its band); None for a spot market.
    mark_mode: str | None = None
    #: Signed mode: the verified reports the quorum view was made of (none from the wire).
    signers: tuple[SignerRef, ...] = ()
    #: The fields of a report that is not live (`paused`, `unknown`) that were no price and
    #: were left out, each with why (`last_good_price: not a price: 'NaN'`): its status is
    #: what counts.
    dropped: tuple[str, ...] = ()

    @classmethod
    def from_wire(cls, report: WireReport) -> PriceView:
        """ValueError for a live report whose price, last good price or mark is no positive
        finite decimal. A report that is not live is taken whatever its prices: a pause must
        reach the engine (the market's older, live report would stay in use until it aged
        out), and there they only inform, so a bad one is left out and named in `dropped`."""
        mark_text = report.mark.price if report.mark is not None else None
        dropped: list[str] = []

        def num(name: str, text: str | None) -> tuple[float | None, str | None]:
            try:
                return parse_price(text), text
            except ValueError as exc:
                if report.status in ("active", "degraded"):
                    raise
                dropped.append(f"{name}: {exc}")
                return None, None

        price, price_text = num("price", report.price)
        last_good, last_good_text = num("last_good_price", report.last_good_price)
        mark, mark_text = num("mark", mark_text)
        mode = None
        if report.mark is not None and mark_text is None:
            mode = "none"  # a perpetual market's, without a mark: none made from the perpetuals
        elif report.mark is not None:
            est = report.mark.estimators  # a report without them proves no perpetual counted
            mode = "perps" if est is not None and est.perp_median is not None else "fallback"
        return cls(
            market=report.market,
            ts=report.ts,
            round=report.round,
            status=report.status,
            reasons=tuple(report.reasons),
            price=price,
            price_text=price_text,
            last_good=last_good,
            last_good_text=last_good_text,
            last_good_ts=report.last_good_ts,
            mark=mark,
            mark_text=mark_text,
            signature=report.signature,
            mark_mode=mode,
            dropped=tuple(dropped),
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> PriceView:
        """One report as JSON text (the `data` of a stream frame, a replay line)."""
        return cls.from_wire(_wire_decoder.decode(data))

    @classmethod
    def from_report(cls, report: object) -> PriceView:
        """An in-process report (`oracled.model.Report`), read by attribute like the wire form."""
        return cls.from_wire(msgspec.convert(report, WireReport, from_attributes=True))

    @property
    def live(self) -> bool:
        return self.status in ("active", "degraded") and self.price is not None

    def ref(
        self, kind: str, price: str | None, signers: tuple[SignerRef, ...] | None = None
    ) -> PriceRef:
        """This report as a decision's driver; `signers`: those of the price (default, its own)."""
        return PriceRef(
            market=self.market,
            price=price,
            kind=kind,
            status=self.status,
            round=self.round,
            ts=self.ts,
            reasons=list(self.reasons),
            signature=self.signature,
            signers=list(self.signers if signers is None else signers),
        )


@dataclass(frozen=True, slots=True)
class Resolved:
    """A price the engine may act on: the index (or mark) value and the buffer to apply."""

    value: float  # the index price: what collateral is valued at
    position_value: float  # the mark when used, else the index: what positions are valued at
    ref: PriceRef
    buffer: float = 0.0  # maintenance margin multiplier minus one (0 on a live price)


@dataclass(frozen=True, slots=True)
class Frozen:
    """No usable price: liquidations of exposed accounts wait, for this reason."""

    reason: str
    ref: PriceRef
    paused_ms: int


class PriceBook:
    """The latest report per market, resolved against a policy at decision time."""

    __slots__ = ("_last_usable", "latest", "policy", "stalled", "unavailable")

    def __init__(self, policy: RiskPolicy) -> None:
        self.policy = policy
        self.latest: dict[str, PriceView] = {}
        # Markets the daemon refused or removed, with its error code: no report will come.
        self.unavailable: dict[str, str] = {}
        # Markets whose latest report is of a round the daemon said has stalled: the (ts,
        # round) of that report; only a newer one is current again.
        self.stalled: dict[str, tuple[int, int]] = {}
        # The last report the policy accepted: a pause is measured from it, and its price is
        # the last good one (the daemon's `last_good_price` may be a degraded price that a
        # policy without degraded prices refused).
        self._last_usable: dict[str, PriceView] = {}

    def update(self, view: PriceView, *, in_order: bool = False) -> None:
        """Keep the newest report of a market; an older one arriving late is ignored, unless
        `in_order`: the caller's reports come in the daemon's order (one stream: the service),
        so each is the newest whatever its time says (a daemon clock set back, a replica's
        clock behind: the time of the one held would hold every later report back)."""
        held = self.latest.get(view.market)
        newer = held is None or (view.ts, view.round) >= (held.ts, held.round)
        if not (newer or in_order):
            return
        self.latest[view.market] = view
        self.unavailable.pop(view.market, None)  # the daemon has it (again)
        held_at = self.stalled.get(view.market)
        if held_at is not None and (in_order or (view.ts, view.round) > held_at):
            del self.stalled[view.market]  # a round after the stall
        if self._usable_status(view):
            self._last_usable[view.market] = view

    def _usable_status(self, view: PriceView) -> bool:
        return self._live_status(view) and not self._distrusted_mark(view)

    def _live_status(self, view: PriceView) -> bool:
        if view.price is None:
            return False
        return view.status == "active" or (view.status == "degraded" and self.policy.allow_degraded)

    def _distrusted_mark(self, view: PriceView) -> bool:
        """A perpetual market's report without a mark from the perpetuals (a fallback, or no
        mark at all beside a live index: out of its band), which the policy freezes on: the
        report is no usable one (a pause of the mark: measured from the last report with a mark
        from the perpetuals)."""
        policy = self.policy
        return (
            policy.use_mark
            and policy.mark_fallback == "freeze"
            and view.mark_mode is not None
            and view.mark_mode != "perps"
        )

    def mark_unavailable(self, market: str, reason: str) -> None:
        """The daemon does not (or no longer) serve `market`: freeze it with `reason` now
        rather than wait for its last report to go stale."""
        self.unavailable[market] = reason

    def mark_stalled(self, markets: Iterable[str] | None = None) -> None:
        """The daemon's rounds have stalled: no report held is current, however young, until
        a newer one of its market arrives (`stalled`, docs/contracts.md, stream errors). Every
        market held, or only `markets` (signed mode: those a stall left without a quorum)."""
        wanted = None if markets is None else set(markets)
        for market, view in self.latest.items():
            if wanted is None or market in wanted:
                self.stalled[market] = (view.ts, view.round)

    def resolve(self, market: str, now_ms: int) -> Resolved | Frozen:
        view = self.latest.get(market)
        gone = self.unavailable.get(market)
        if view is None:
            none = PriceRef(market=market, price=None, kind="none", status="unknown", round=0, ts=0)
            return Frozen(gone or "no_report", none, 0)
        policy = self.policy
        age = now_ms - view.ts
        stalled = market in self.stalled
        future = -age > policy.max_report_future_ms
        fresh = not stalled and not future and age <= policy.max_report_age_ms
        if gone is None and self._usable_status(view) and fresh:
            assert view.price is not None
            trusted = view.mark_mode == "perps" or policy.mark_fallback == "use"
            if policy.use_mark and view.mark is not None and trusted:
                return Resolved(view.price, view.mark, view.ref("mark", view.mark_text))
            return Resolved(view.price, view.price, view.ref("index", view.price_text))
        if gone is not None:
            reason = gone
        elif stalled:
            reason = "stalled"
        elif self._live_status(view) and future:
            reason = "future_report"
        elif self._live_status(view) and age > policy.max_report_age_ms:
            reason = "stale_report"
        elif self._live_status(view):  # live and fresh, but on a mark the policy distrusts
            reason = "mark_fallback"
        elif view.status == "degraded":
            reason = "degraded_not_allowed"
        else:
            reason = (
                ":".join((view.status, ",".join(view.reasons))) if view.reasons else view.status
            )
        # A report that went quiet while live is its own last usable one. Without one seen
        # (the engine started during the pause), the daemon's last good price is all there is.
        last = self._last_usable.get(market)
        since: int | None
        signers: tuple[SignerRef, ...] = ()  # whose signed reports the last good price was
        if last is not None:
            since, good, good_text, signers = last.ts, last.price, last.price_text, last.signers
        else:
            since, good, good_text = view.last_good_ts, view.last_good, view.last_good_text
        paused = max(0, now_ms - since) if since is not None else 0  # 0 for a future report
        if (
            policy.after_grace == "last_good"
            and gone is None  # a pause ends; a market the daemon dropped never reports again
            and since is not None
            and paused > policy.pause_grace_ms
            and good is not None
        ):
            ref = view.ref("last_good", good_text, signers)
            return Resolved(good, good, ref, policy.pause_buffer)
        return Frozen(reason, view.ref("none", None), paused)
