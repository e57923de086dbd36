"""Replay a tape through the core and through margin engines fed by each price policy.

The core runs through `oracled.replay.replay` (its hooks show every quote and every round), so
the oracle's reports are exactly what `oracled replay` prints. At each round every policy's
engine gets that policy's price for each market and takes its decisions at the round's time;
the clean reference's view of the same accounts judges each liquidation (docs/stress.md).

The oracle's engine reads each report through `PriceView.from_report`, the published fields
only, so where a report carries a live mark (a market with `perp_sources`) it values positions at
the mark, as an outside engine would; which price each engine used is counted per round.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from oracled.config import Config
from oracled.core import RoundResult
from oracled.errors import shown
from oracled.margin import (
    Account,
    AccountsFile,
    Assessment,
    Decision,
    Frozen,
    Liquidation,
    MarginEngine,
    Position,
    PriceRef,
    PriceView,
    Resolved,
    Shortfall,
    assess_cross,
    assess_isolated,
)
from oracled.replay import ReplayStats, replay, revision_warning
from oracled.stress.policies import QuoteWatch
from oracled.tape import DEFAULT_MAX_GAP_MS, TapeHeader

__all__ = ["ORACLE", "PLAIN", "REFERENCE", "PolicyRun", "StressResult", "run_stress"]

ORACLE, PLAIN, REFERENCE = "oracled", "plain_median", "clean_reference"
PRICE_KINDS = ("mark", "index", "last_good", "none")  # PriceRef.kind: what a position was valued at
FOLLOW_TOLERANCE = 0.01  # a policy follows a move once it is within 1 % of the reference


@dataclass(frozen=True, slots=True)
class LiquidationEvent:
    ts: int
    account: str
    scope: str
    instrument: str
    price: float
    wrongful: bool
    price_kind: str  # the driver report's price the engine used: mark, index or last_good


Prices = dict[str, Resolved | Frozen]


class _JudgedEngine(MarginEngine):
    """A policy's engine that judges each liquidation just before it is decided, at the clean
    reference prices: after the decisions before it in the same step, such as a deleveraging
    that closed the account's profitable position at a bankruptcy price (docs/stress.md)."""

    def __init__(self, spec: AccountsFile) -> None:
        super().__init__(spec)
        self.clean: Prices = {}
        self.verdicts: dict[tuple[str, str], bool] = {}  # (account, scope) -> liquidatable

    def _liquidate_isolated(
        self, account: Account, pos: Position, a: Assessment, prices: Prices, now_ms: int
    ) -> list[Decision]:
        verdict = assess_isolated(pos, self.spec, self.clean).state == "liquidatable"
        self.verdicts[(account.id, f"isolated:{pos.instrument}")] = verdict
        return super()._liquidate_isolated(account, pos, a, prices, now_ms)

    def _liquidate_cross(
        self, account: Account, a: Assessment, prices: Prices, now_ms: int
    ) -> list[Decision]:
        verdict = assess_cross(account, self.spec, self.clean).state == "liquidatable"
        self.verdicts[(account.id, "cross")] = verdict
        return super()._liquidate_cross(account, a, prices, now_ms)


@dataclass
class PolicyRun:
    """One policy's engine and what it did over the run."""

    name: str
    engine: _JudgedEngine
    prices: list[float | None] = field(default_factory=list)  # the primary market, per round
    liquidations: list[LiquidationEvent] = field(default_factory=list)
    paused_rounds: dict[str, int] = field(default_factory=dict)
    max_error: dict[str, float] = field(default_factory=dict)
    follow_ms: int | None = None
    shortfall: float = 0.0
    insurance_paid: float = 0.0
    socialized: float = 0.0
    unresolved: float = 0.0
    decisions: int = 0
    # Primary market, per round: the price the engine resolved at decision time (PRICE_KINDS).
    price_used: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PRICE_KINDS, 0))

    def liquidated(self) -> set[tuple[str, str]]:
        return {(e.account, e.scope) for e in self.liquidations}


@dataclass
class StressResult:
    header: dict[str, Any]
    interval_ms: int
    primary: str
    markets: tuple[str, ...]
    policies: dict[str, PolicyRun]
    ts: list[int] = field(default_factory=list)
    reference: list[float | None] = field(default_factory=list)
    venues: dict[str, list[float | None]] = field(default_factory=dict)
    oracle_status: list[str] = field(default_factory=list)
    # The oracle's live mark of the primary market per round; empty when it has no perps.
    marks: list[float | None] = field(default_factory=list)
    has_mark: bool = False
    stats: ReplayStats | None = None
    # What the run could not do as the inputs ask, such as a follow time for a move on a market
    # the accounts do not hold (printed on stderr by the command).
    warnings: list[str] = field(default_factory=list)

    def mark_summary(self) -> dict[str, Any] | None:
        """The oracle's mark against the clean reference and its own index; None without perps."""
        if not self.has_mark:
            return None
        index = self.policies[ORACLE].prices
        error = basis = 0.0
        for mark, ref, idx in zip(self.marks, self.reference, index, strict=True):
            if mark is None:
                continue
            if ref is not None:
                error = max(error, abs(mark / ref - 1.0))
            if idx is not None:
                basis = max(basis, abs(mark / idx - 1.0))
        return {
            "rounds": sum(m is not None for m in self.marks),
            "max_error_pct": round(error * 100, 4),
            "max_basis_pct": round(basis * 100, 4),
        }

    def summary(self) -> dict[str, Any]:
        """Per-policy figures for scripts; docs/stress.md describes each key."""
        clean = self.policies[REFERENCE].liquidated()
        out: dict[str, Any] = {}
        for name, run in self.policies.items():
            mine = run.liquidated()
            out[name] = {
                "liquidations": len(run.liquidations),
                "wrongful_liquidations": sum(e.wrongful for e in run.liquidations),
                "missed_liquidations": len(clean - mine),
                "first_liquidation_ts": min((e.ts for e in run.liquidations), default=None),
                "paused_s": {m: n * self.interval_ms / 1000 for m, n in run.paused_rounds.items()},
                "max_error_pct": {m: round(e * 100, 4) for m, e in run.max_error.items()},
                "follow_s": None if run.follow_ms is None else run.follow_ms / 1000,
                "shortfall": round(run.shortfall, 2),
                "insurance_paid": round(run.insurance_paid, 2),
                "socialized": round(run.socialized, 2),
                "unresolved": round(run.unresolved, 2),
                "insurance_fund": round(run.engine.insurance_fund, 2),
                "decisions": run.decisions,
                "events": [
                    {
                        "ts": e.ts,
                        "account": e.account,
                        "scope": e.scope,
                        "instrument": e.instrument,
                        "price": e.price,
                        "wrongful": e.wrongful,
                        "price_kind": e.price_kind,
                    }
                    for e in run.liquidations
                ],
                "price_used": dict(run.price_used),
            }
        return {
            "scenario": self.header.get("scenario"),
            "primary_market": self.primary,
            "rounds": len(self.ts),
            "round_interval_ms": self.interval_ms,
            "move": {
                k: self.header.get(k) for k in ("move_market", "move_start_ms", "move_end_ms")
            },
            "policies": out,
            "mark": self.mark_summary(),
        }


def _synthetic(market: str, ts: int, rnd: int, price: float | None) -> PriceView:
    """A naive policy's price as a report: always live when it has a value, never gated."""
    text = None if price is None else repr(price)
    return PriceView(
        market=market,
        ts=ts,
        round=rnd,
        status="active" if price is not None else "unknown",
        reasons=(),
        price=price,
        price_text=text,
        last_good=price,
        last_good_text=text,
        last_good_ts=ts if price is not None else None,
        mark=None,
        mark_text=None,
        signature=None,
    )


def _clean_prices(
    markets: Iterable[str], ref: dict[str, float | None], ts: int, rnd: int
) -> Prices:
    out: dict[str, Resolved | Frozen] = {}
    for m in markets:
        p = ref.get(m)
        r = PriceRef(
            market=m,
            price=None if p is None else repr(p),
            kind="index",
            status="active" if p is not None else "unknown",
            round=rnd,
            ts=ts,
        )
        out[m] = Resolved(p, p, r) if p is not None else Frozen("no_price", r, 0)
    return out


def read_header(first_line: bytes | str) -> dict[str, Any]:
    try:
        header = json.loads(first_line)
    except ValueError:
        return {}
    return header if isinstance(header, dict) else {}


def run_stress(
    cfg: Config,
    tape: Iterable[bytes | str],
    accounts: AccountsFile,
    *,
    single_venue: str | None = None,
    max_gap_ms: int | None = DEFAULT_MAX_GAP_MS,
) -> StressResult:
    """Run the tape; `single_venue` defaults to the header's, else the primary market's first.
    A gap past `max_gap_ms` raises TapeGapError, as `replay` does."""
    it = iter(tape)
    first = next(it, None)  # None: an empty tape, which the replay refuses as such
    header = read_header(first) if first is not None else {}
    markets = accounts.markets()
    missing = [m for m in markets if cfg.market(m) is None]
    if missing:
        raise ValueError(f"the accounts need markets the config does not publish: {missing}")
    primary = markets[0]
    primary_cfg = cfg.market(primary)
    assert primary_cfg is not None
    told = single_venue or header.get("single_venue")  # a header's may be any JSON value
    venue = told or primary_cfg.sources[0].source
    quoting = {
        s.source
        for m in markets
        if (mc := cfg.market(m)) is not None
        for s in (*mc.sources, *mc.perp_sources)
    }
    # One that quotes none would make its row the plain median under another name.
    if not isinstance(venue, str) or venue not in quoting:
        origin = "--venue" if single_venue else "the tape's single_venue"
        raise ValueError(
            f"{origin} {shown(venue)} quotes none of the accounts' markets; "
            f"venues that do: {', '.join(sorted(quoting))}"
        )
    names = (ORACLE, f"single_venue:{venue}", PLAIN, REFERENCE)
    runs = {n: PolicyRun(n, _JudgedEngine(accounts)) for n in names}
    result = StressResult(header, cfg.oracle.round_interval_ms, primary, markets, runs)
    watch = QuoteWatch(cfg)
    primary_sources = [(s.source, s.pair) for s in primary_cfg.sources]
    primary_perps = [(s.source, s.pair) for s in primary_cfg.perp_sources]
    result.venues = {f"{s}:{p}": [] for s, p in primary_sources}
    result.venues.update({f"{s}:{p} perp": [] for s, p in primary_perps})
    result.has_mark = bool(primary_perps)
    move_market = header.get("move_market")
    move_end = header.get("move_end_ms")
    end_said = shown(move_end)
    if isinstance(move_end, bool):  # JSON true is no time, though Python's bool is an int
        end_said, move_end = "true" if move_end else "false", None
    if move_market is not None and move_market not in markets:
        result.warnings.append(
            f"the tape's move_market {shown(move_market)} is none of the accounts' markets "
            f"({', '.join(markets)}): follow_s is null for every policy"
        )
    elif move_market is not None and not isinstance(move_end, int):
        result.warnings.append(
            f"the tape's move_end_ms is {end_said}, not a time in ms: "
            "follow_s is null for every policy"
        )

    def on_round(rr: RoundResult) -> None:
        ts, rnd = rr.ts, rr.round
        index = {m: i for i, m in enumerate(rr.layout.markets)}
        ref = watch.reference(ts)
        plain = watch.plain_median()
        single = watch.single_venue(venue)
        oracle_views = {m: PriceView.from_report(rr.report(index[m])) for m in markets}
        views: dict[str, dict[str, PriceView]] = {
            ORACLE: oracle_views,
            names[1]: {
                m: _synthetic(m, ts, rnd, single[m] if single[m] is not None else plain[m])
                for m in markets
            },
            PLAIN: {m: _synthetic(m, ts, rnd, plain[m]) for m in markets},
            REFERENCE: {m: _synthetic(m, ts, rnd, ref[m]) for m in markets},
        }
        clean = _clean_prices(markets, ref, ts, rnd)
        result.ts.append(ts)
        result.reference.append(ref[primary])
        result.oracle_status.append(oracle_views[primary].status)
        if result.has_mark:
            result.marks.append(oracle_views[primary].mark)
        feeds = [(watch.latest, k) for k in primary_sources] + [
            (watch.perps, k) for k in primary_perps
        ]
        for key, (latest, sp) in zip(result.venues, feeds, strict=True):
            held = latest.get(sp)
            result.venues[key].append(held[0] if held is not None else None)
        for name, run in runs.items():
            engine = run.engine
            for view in views[name].values():
                engine.on_report(view)
            for m in markets:
                v = views[name][m]
                price = v.price if v.live else None
                # Paused: no price this policy's engine would act on (its own rules: degraded
                # prices refused, a distrusted mark...), as price_used's `none` counts it.
                frozen = isinstance(engine.book.resolve(m, ts), Frozen)
                run.paused_rounds[m] = run.paused_rounds.get(m, 0) + frozen
                if price is not None:
                    r = ref[m]
                    if r is not None:
                        err = abs(price / r - 1.0)
                        run.max_error[m] = max(run.max_error.get(m, 0.0), err)
                        if (
                            m == move_market
                            and isinstance(move_end, int)
                            and run.follow_ms is None
                            and ts >= move_end
                            and err <= FOLLOW_TOLERANCE
                        ):
                            run.follow_ms = ts - move_end
                if m == primary:
                    run.prices.append(price)
            engine.clean = clean
            engine.verdicts.clear()
            run.price_used[engine.book.resolve(primary, ts).ref.kind] += 1
            decisions = engine.step(ts)
            run.decisions += len(decisions)
            for d in decisions:
                if isinstance(d, Liquidation):
                    run.liquidations.append(
                        LiquidationEvent(
                            ts,
                            d.account,
                            d.scope,
                            d.instrument,
                            d.price,
                            not engine.verdicts[(d.account, d.scope)],
                            d.driver.kind,
                        )
                    )
                elif isinstance(d, Shortfall):
                    run.shortfall += d.amount
                    run.insurance_paid += d.insurance_paid
                    run.socialized += d.socialized
                    run.unresolved += d.unresolved

    def header_seen(tape_header: TapeHeader) -> None:
        """Another pricing revision's tape: said once, as `oracled replay` says it."""
        warning = revision_warning(tape_header)
        if warning is not None:
            result.warnings.append(warning)

    with open(os.devnull, "wb") as sink:
        lines = itertools.chain([] if first is None else [first], it)
        result.stats = replay(
            cfg,
            lines,
            sink,
            on_quote=watch.on_quote,
            on_round=on_round,
            on_header=header_seen,
            max_gap_ms=max_gap_ms,
        )
    if not result.ts:  # zeros that would read as "no liquidation, never paused"
        result.warnings.append(
            f"no round ran: the tape holds no quote ({result.stats.quotes} read,"
            f" {result.stats.malformed} malformed line(s)), so every figure is empty"
        )
    stats = result.stats
    if stats.dropped:  # as `oracled replay` counts them: a tape of another config drops all
        counts = ", ".join(f"{s} {r} {n}" for (s, r), n in sorted(stats.drops.items()))
        every = " (every one: is the config the tape's?)" if stats.dropped == stats.quotes else ""
        result.warnings.append(
            f"the core dropped {stats.dropped} of {stats.quotes} quotes{every}: {counts}"
        )
    return result
