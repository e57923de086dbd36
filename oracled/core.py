"""The pure core: quotes in, one report per market per round out.

`Core` holds the book and the gate state and nothing else. It never reads a clock, never does
I/O and never awaits: the caller passes `now_ms` to every round. The same quotes ingested in the
same order with the same round times give the same reports, which is what makes `oracled replay`,
stress runs and audits possible.

A round, for each layer of markets (conversion legs first):
1. a slot is fresh if its quote's age (venue time where sent, else receive time) is within the
   slot's age limit (the market's `max_age_ms`, or an on-chain feed's own, see
   config.slot_max_age_ms) and not further in the future than the clock-skew bound; a fresh
   slot older than the market's `lag_ms` is stale all the same when two or more younger slots
   (direct ones for a direct slot, direct or through the same leg for a routed one) agree on a
   level more than `max_deviation` away from it (`Core._lagging`);
2. routed slots are converted through the leg market's live price from this round; a leg that is
   not live blocks the slot (reason `route`) and is never replaced by 1.0;
3. a weighted median over fresh slots; slots deviating more than `max_deviation` from it are
   excluded as outliers; the weighted median and quartiles are recomputed over the survivors;
4. the gates decide the status from quorum, agreement, the circuit breaker, the market's
   resolution (a price its decimals cannot show within 1 % is not published) and hysteresis;
5. confidence is half the weighted inter-quartile range of the survivors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, cached_property
from math import isfinite
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from oracled.aggregate.book import FLAG_BASE, Book, DropReason, Layout, SlotKey
from oracled.aggregate.robust import SortedRows, row_counts, row_order
from oracled.bands import BAND_SLACK
from oracled.config import Config
from oracled.gates.machine import GateInputs, GateParams, GateState, step
from oracled.mark.engine import MarkEngine, MarkRound
from oracled.model import Quote, Report, SourceValue, Status, reasons_from_bits

__all__ = ["PRICING_REVISION", "SLOT_REASONS", "Core", "RoundResult", "Transition"]

#: The pricing rules' revision: bumped by any change that can make the same tape and config give
#: different reports (CHANGELOG.md names what each revision changed). Tapes and the audit trail
#: carry it, so that a replay by an oracled of another revision says why its reports may differ
#: from the recorded ones. Not the package version, which says nothing about the rules.
PRICING_REVISION: Final = 28

# Per-slot outcome codes of a round, and the names reports use for them.
USED, NO_QUOTE, STALE, ROUTE, BOUNDS, OUTLIER = range(FLAG_BASE)
SLOT_REASONS: tuple[str | None, ...] = (None, "no_quote", "stale", "route", "bounds", "outlier")
# Codes from FLAG_BASE on are the sources' own flags; a RoundResult names them in slot_names.
_STATUS_LABELS = tuple(s.label for s in Status)


@cache
def _reason_names(bits: int) -> tuple[str, ...]:
    """`reasons_from_bits`, decoded once per distinct mask (a handful occur in practice)."""
    return tuple(reasons_from_bits(bits))


def _as_slice(idx: npt.NDArray[np.int64]) -> npt.NDArray[np.int64] | slice:
    """`idx` as a slice when it is a run of consecutive indices (sorted, as layers are)."""
    if len(idx) and int(idx[-1]) - int(idx[0]) + 1 == len(idx):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


@dataclass(frozen=True, slots=True)
class Transition:
    """A market's status change in one round, for logs and counters."""

    market: str
    old: str
    new: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RoundResult:
    """Everything one round computed, as arrays; reports are built from it on demand."""

    layout: Layout
    ts: int
    round: int
    status: npt.NDArray[np.int64]
    reasons: npt.NDArray[np.int64]
    price: npt.NDArray[np.float64]
    confidence: npt.NDArray[np.float64]
    used: npt.NDArray[np.int64]
    last_good: npt.NDArray[np.float64]
    last_good_ts: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]  # (M, S) converted per-slot values
    slot_reason: npt.NDArray[np.int8]  # (M, S)
    age: npt.NDArray[np.int64]  # (M, S)
    transitions: tuple[Transition, ...]
    slot_names: tuple[str | None, ...] = SLOT_REASONS  # slot code -> reason, flags included
    mark: MarkRound | None = None  # perpetual markets' mark and funding; None without any

    @cached_property
    def _rows(self) -> tuple[list[Any], ...]:
        """The arrays as Python lists, converted once: reading numpy scalars one by one is slow."""
        return (
            self.status.tolist(),
            self.reasons.tolist(),
            self.price.tolist(),
            self.confidence.tolist(),
            self.last_good.tolist(),
            self.last_good_ts.tolist(),
            self.value.tolist(),
            self.slot_reason.tolist(),
            self.age.tolist(),
            self.layout.weight.tolist(),
            self.layout.decimals.tolist(),
        )

    def report(self, i: int) -> Report:
        """Materialize market `i`'s report: decimal strings at the market's precision."""
        lay = self.layout
        status, reasons, price, conf, last_good, last_good_ts, value, code, age, weight, dec = (
            self._rows
        )
        fmt = f".{dec[i]}f"
        names = self.slot_names
        live = status[i] <= Status.DEGRADED
        good = last_good[i]
        ids, pairs, values, codes, ages, weights, vias = (
            lay.slot_ids[i],
            lay.slot_pairs[i],
            value[i],
            code[i],
            age[i],
            weight[i],
            lay.slot_via[i],
        )
        # Positional fields (id, pair, value, weight, used, reason, age_ms, via) over zipped
        # rows: this runs once per slot per published round, the publish path's inner loop.
        sources = [
            SourceValue(
                sid,
                pair,
                format(v, fmt) if isfinite(v) else None,
                w,
                c == USED,
                names[c],
                a if c != NO_QUOTE else None,
                via,
            )
            for sid, pair, v, w, c, a, via in zip(
                ids, pairs, values, weights, codes, ages, vias, strict=False
            )
        ]
        return Report(
            market=lay.markets[i],
            ts=self.ts,
            round=self.round,
            status=_STATUS_LABELS[status[i]],
            reasons=list(_reason_names(reasons[i])),
            price=format(price[i], fmt) if live else None,
            confidence=format(conf[i], fmt) if live else None,
            last_good_price=format(good, fmt) if isfinite(good) else None,
            last_good_ts=last_good_ts[i] if last_good_ts[i] >= 0 else None,
            sources=sources,
            mark=None if self.mark is None else self.mark.mark(i, dec[i]),
        )

    def reports(self) -> list[Report]:
        return [self.report(i) for i in range(len(self.layout.markets))]


def _moved_pairs(old: Config, new: Config, keys: Iterable[SlotKey]) -> set[tuple[str, str]]:
    """The (source, pair) of `keys` that the source reads from elsewhere under `new`: another
    type, chain or contract, or another instrument or feed for the pair."""
    moved: set[tuple[str, str]] = set()
    for sid, pair, _ in keys:
        before, after = old.sources.get(sid), new.sources.get(sid)
        if before is None or after is None:
            continue
        if (before.type, before.chain, before.address) != (
            after.type, after.chain, after.address
        ) or (before.instruments.get(pair), before.feeds.get(pair)) != (
            after.instruments.get(pair), after.feeds.get(pair)
        ):  # fmt: skip
            moved.add((sid, pair))
    return moved


class Core:
    """Book + gates. Deterministic; see the module docstring for the round's steps."""

    def __init__(self, cfg: Config) -> None:
        self.config = cfg
        self.layout = Layout.from_config(cfg)
        self.book = Book(self.layout, cfg)
        self.gates = GateState(len(self.layout.markets))
        self.marks = MarkEngine(cfg, self.layout)
        self.index = {sym: i for i, sym in enumerate(self.layout.markets)}
        self.rounds = 0
        self._skew = cfg.oracle.max_clock_skew_ms
        self._resume = cfg.oracle.resume_rounds
        self._confirm = cfg.oracle.jump_confirm_rounds

    def reconfigure(self, cfg: Config) -> None:
        """Swap in a new (already validated) config between rounds, keeping what still applies.

        A market that stays keeps its gate state (status, last good price, streaks, manual pause)
        and the latest quote of every (source, pair, kind) it still lists, unless the source is
        now disabled or reads that pair from elsewhere (another feed, contract, chain or
        instrument: the old value is not the new feed's, and would keep its newer stamp as the
        bar); such slots are `no_quote` at once, as at start-up. Thresholds take effect
        from the next round. A new market starts `unknown` like at start-up; a removed one is gone.
        `index` is updated in place, so holders of it see the new markets.
        """
        off = {sid for sid, src in cfg.sources.items() if not src.enabled}
        layout = Layout.from_config(cfg)
        moved = _moved_pairs(self.config, cfg, {*layout.feeds, *layout.perp_feeds})
        book = Book(layout, cfg)
        gates = GateState(len(layout.markets))
        old_layout, old_book, old_gates = self.layout, self.book, self.gates
        for name in old_book.flag_names:  # the same codes as before for flags already in the book
            book._flag_code(name)
        for i, sym in enumerate(layout.markets):
            j = self.index.get(sym)
            if j is None:
                continue
            for attr in GateState.__slots__:
                getattr(gates, attr)[i] = getattr(old_gates, attr)[j]
            old_slots = {key: k for k, key in enumerate(old_layout.slot_keys[j])}
            for k, key in enumerate(layout.slot_keys[i]):
                ok = old_slots.get(key)
                if ok is not None and key[0] not in off and key[:2] not in moved:
                    for attr in ("mid", "stamp", "flag"):
                        getattr(book, attr)[i, k] = getattr(old_book, attr)[j, ok]
        kept = layout.feeds.keys() - {k for k in layout.feeds if k[0] in off or k[:2] in moved}
        book.latest.update((k, q) for k, q in old_book.latest.items() if k in kept)
        book.perps.update(
            (k, q)
            for k, q in old_book.perps.items()
            if k in layout.perp_feeds and k[0] not in off and k[:2] not in moved
        )
        book.drops.update(old_book.drops)
        marks = MarkEngine(cfg, layout)
        marks.carry_from(self.marks, self.index, layout.markets)
        self.config, self.layout, self.book, self.gates = cfg, layout, book, gates
        self.marks = marks
        self.index.clear()
        self.index.update((sym, i) for i, sym in enumerate(layout.markets))
        self._skew = cfg.oracle.max_clock_skew_ms
        self._resume = cfg.oracle.resume_rounds
        self._confirm = cfg.oracle.jump_confirm_rounds

    @property
    def markets(self) -> tuple[str, ...]:
        return self.layout.markets

    @property
    def book(self) -> Book:
        return self._book

    @book.setter
    def book(self, book: Book) -> None:
        # `ingest` is the book's own bound method, not a wrapper: it runs once per venue frame.
        self._book = book
        self.ingest: Callable[[Quote], DropReason | None] = book.ingest

    def set_manual(self, market: str, paused: bool) -> None:
        """Operator pause (or release). Releasing still needs the healthy streak to go live."""
        self.gates.manual[self.index[market]] = paused

    def _lagging(
        self,
        value: npt.NDArray[np.float64],
        usable: npt.NDArray[np.bool_],
        age: npt.NDArray[np.int64],
        routed: npt.NDArray[np.bool_],
        idx: npt.NDArray[np.int64] | slice,
        order: npt.NDArray[np.intp],
    ) -> npt.NDArray[np.bool_] | None:
        """The usable slots outvoted by younger quotes (docs/pricing.md section 2), or None.

        A slot older than the market's `lag_ms` is judged by the young ones (`_left_behind`).
        Slots routed through a conversion leg share its error (a stablecoin repriced on the
        books before its own leg market follows moves all of them alike), so they judge only
        slots routed through that leg: a directly quoted old slot is judged by the direct young
        ones alone, one routed through a leg by the direct ones and those through the same leg,
        and a leg's lag never makes quiet direct books, or those of another leg, stale.
        """
        old = usable & (age > self.layout.lag_ms[idx, None])
        if not old.any():  # the usual round: every usable quote is young
            return None
        young = usable & ~old
        via = self.layout.route_via[idx]
        direct = ~routed
        ordered = value.reshape(-1)[order]  # the rows' usable values sorted, for every pass
        left = self._left_behind(value, ordered, young & direct, old & direct, idx, order)
        # The legs of the old routed slots (a leg or two in any real config); counted, not
        # sorted: np.unique's sort cost more than the two passes of a one-leg layer.
        for leg in np.flatnonzero(np.bincount(via[old & routed])).tolist():
            on_leg = via == leg
            judges = young & (direct | on_leg)
            more = self._left_behind(value, ordered, judges, old & on_leg, idx, order)
            if more is not None:
                left = more if left is None else left | more
        return left

    def _left_behind(
        self,
        value: npt.NDArray[np.float64],
        ordered: npt.NDArray[np.float64],
        young: npt.NDArray[np.bool_],
        old: npt.NDArray[np.bool_],
        idx: npt.NDArray[np.int64] | slice,
        order: npt.NDArray[np.intp],
    ) -> npt.NDArray[np.bool_] | None:
        """The `old` slots the `young` ones have left behind, or None.

        The young slots of a row say where the market is when at least two of them agree:
        their two middle values by count (one for an odd count), within `max_deviation` of each
        other, with a second young value within it of the lower one. An old slot further than
        `max_deviation` from both has been left behind by its venue; as a weight majority it
        would hold the price where it was until its quote aged out. Counted by venue, not
        weight, and read off the middle two: one venue's print, however heavy, can never leave
        an old value that is within `max_deviation` of every other young value outside both.
        """
        if not old.any():
            return None
        count = row_counts(young)
        rows = count >= 2  # a row without old slots needs no check: `old & ...` marks none
        if not rows.any():
            return None
        # The young values' ranks along the row's sorted usable values (`order`).
        ranks = np.cumsum(young.reshape(-1)[order], axis=1)
        at = np.arange(len(count))
        lo = ordered[at, np.argmax(ranks > ((count - 1) // 2)[:, None], axis=1)]
        hi = ordered[at, np.argmax(ranks > (count // 2)[:, None], axis=1)]
        dev = self.layout.max_deviation[idx] * BAND_SLACK
        with np.errstate(invalid="ignore"):
            near_lo = np.abs(value - lo[:, None]) <= (dev * lo)[:, None]
            near_hi = np.abs(value - hi[:, None]) <= (dev * hi)[:, None]
            rows &= (hi - lo <= dev * lo) & (row_counts(young & near_lo) >= 2)
        left: npt.NDArray[np.bool_] = old & ~near_lo & ~near_hi & rows[:, None]
        # None also when nothing is left behind (old quotes that agree): the round skips its
        # bookkeeping.
        return left if left.any() else None

    def run_round(self, now_ms: int) -> RoundResult:
        lay, book, gates = self.layout, self.book, self.gates
        self.rounds += 1
        previous = gates.status.copy()
        n_markets, width = lay.weight.shape
        live_price = np.full(n_markets, np.nan)
        status = np.zeros(n_markets, dtype=np.int64)
        reasons = np.zeros(n_markets, dtype=np.int64)
        confidence = np.full(n_markets, np.nan)
        used_count = np.zeros(n_markets, dtype=np.int64)
        value_all = np.full((n_markets, width), np.nan)
        slot_reason = np.full((n_markets, width), NO_QUOTE, dtype=np.int8)

        age_all = now_ms - book.stamp
        has_quote_all = lay.configured & np.isfinite(book.mid)
        for layer in lay.layers:
            # A layer of consecutive markets (the usual case) is read through views, not copies.
            idx = _as_slice(layer)
            age = age_all[idx]
            has_quote = has_quote_all[idx]
            fresh = has_quote & (age <= lay.max_age_ms[idx]) & (age >= -self._skew)
            via = lay.route_via[idx]
            routed = via >= 0
            leg = np.where(routed, live_price[np.maximum(via, 0)], 1.0)
            # A leg listed the other way round divides: one rounding, where multiplying by its
            # reciprocal rounds twice and moved a price across a cent (docs/pricing.md section 3).
            mid = book.mid[idx]
            value = np.where(lay.route_invert[idx], mid / leg, mid * leg)
            blocked = fresh & routed & ~np.isfinite(leg)
            floor, ceiling = lay.price_floor[idx, None], lay.price_ceiling[idx, None]
            in_bounds = (value >= floor) & (value <= ceiling)
            flag = book.flag[idx]
            flagged = fresh & (flag != 0)
            usable = fresh & ~blocked & in_bounds & ~flagged
            weight = lay.weight[idx]

            order = row_order(value, usable)  # sorted once: the masks below are its subsets
            ranked = SortedRows(value, weight, order)
            lagging = self._lagging(value, usable, age, routed, idx, order)
            if lagging is not None:
                usable &= ~lagging
            (center,) = ranked.quantiles(usable, (0.5,))
            # A venue exactly max_deviation away is kept (BAND_SLACK): measured as |v / c - 1|,
            # 101 on a centre of 100 was 0.010000000000000009 away, an outlier at 1 %.
            band = lay.max_deviation[idx, None] * BAND_SLACK * center[:, None]
            with np.errstate(invalid="ignore"):
                keep = usable & (np.abs(value - center[:, None]) <= band)
            q25, median, q75 = ranked.quantiles(keep, (0.25, 0.5, 0.75))

            code = np.full(value.shape, NO_QUOTE, dtype=np.int8)
            code[has_quote & ~fresh] = STALE
            if lagging is not None:
                code[lagging] = STALE
            code[blocked] = ROUTE
            code[fresh & ~blocked & ~in_bounds] = BOUNDS
            code[flagged] = flag[flagged]
            code[usable & ~keep] = OUTLIER
            code[keep] = USED

            used = row_counts(keep)
            inputs = GateInputs(
                candidate=median,
                confidence=(q75 - q25) * 0.5,
                used=used,
                usable=row_counts(usable),
                used_weight=np.where(keep, weight, 0.0).sum(axis=1),
                usable_weight=np.where(usable, weight, 0.0).sum(axis=1),
                outliers=row_counts(code == OUTLIER),
                stale=row_counts(code == STALE),
                route_blocked=row_counts(blocked),
                flagged=row_counts(flagged),
            )
            params = GateParams(
                min_sources=lay.min_sources[idx],
                circuit_breaker=lay.circuit_breaker[idx],
                confidence_limit=lay.confidence_limit[idx],
                resolution_floor=lay.resolution_floor[idx],
                resume_rounds=self._resume,
                jump_confirm_rounds=self._confirm,
            )
            st, rs, price = step(gates, idx, params, inputs, now_ms)
            live_price[idx] = price
            status[idx] = st
            reasons[idx] = rs
            confidence[idx] = inputs.confidence
            used_count[idx] = used
            value_all[idx] = value
            slot_reason[idx] = code

        changed = np.nonzero(previous != status)[0]
        transitions = tuple(
            Transition(
                market=lay.markets[i],
                old=_STATUS_LABELS[int(previous[i])],
                new=_STATUS_LABELS[int(status[i])],
                reasons=tuple(reasons_from_bits(int(reasons[i]))),
            )
            for i in changed
        )
        return RoundResult(
            layout=lay,
            ts=now_ms,
            round=self.rounds,
            status=status,
            reasons=reasons,
            price=live_price,
            confidence=confidence,
            used=used_count,
            last_good=gates.last_good.copy(),
            last_good_ts=gates.last_good_ts.copy(),
            value=value_all,
            slot_reason=slot_reason,
            age=age_all,
            transitions=transitions,
            slot_names=SLOT_REASONS + tuple(book.flag_names),
            mark=self.marks.step(now_ms, live_price, book.perps) if self.marks.active else None,
        )
