"""Mark price and funding inputs of the perpetual markets, one step per core round.

`MarkEngine.step` is called by the core after the index prices of a round are known. It reads
the latest perpetual quotes (`Book.perps`), keeps per-market state (the basis EMA and the
running funding interval) and returns a `MarkRound` from which reports take their `mark`
object. Like the rest of the core it never reads a clock: time is the round's `now_ms`.

Per market with perp_sources, with `x` the round's live index (NaN when not live):
1. a perpetual quote counts if it is fresh (the market's `max_age_ms`, the clock-skew bound),
   not flagged by its source, its conversion leg is live (the same routes as spot slots), not
   left behind (older than the market's `lag_ms` while `x`, in the perpetual's own currency, has
   moved more than `max_deviation` since the first live round at or after its venue time:
   `_left_behind`)
   and its mid is within `max_perp_deviation` of `x`;
2. basis = median perp mid - x, as a fraction of x, updates the EMA (decayed by elapsed time);
   premium = median of the venues' premiums is one funding sample, weighted by the time since
   the previous round;
3. mark = median of the estimators that exist (see `Mark` and docs/mark.md).
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from math import isfinite, nan
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from oracled.aggregate.book import Layout, SlotKey
from oracled.bands import BAND_SLACK
from oracled.config import Config, MarketConfig
from oracled.mark.formulas import decay, ema_update, funding_rate, median, premium_of
from oracled.model import Mark, MarkEstimators, Quote

__all__ = [
    "MODES",
    "PERP_REASONS",
    "RATE_DECIMALS",
    "REASON_BOUNDS",
    "REASON_INDEX",
    "MarkEngine",
    "MarkRound",
    "MarkValues",
]

RATE_DECIMALS = 8  # premium and funding rates leave the process with 8 decimals
# The most live rounds a market remembers for the lag rule, which keeps those of its last
# `max_age_ms` (40 at the defaults, 10 s of 250 ms rounds) to read the index at a late quote's
# own time. A bound for an age limit of many rounds (a day of 10 ms rounds would be 8.6
# million): a quote older than the oldest kept is judged from that round.
_PAST_ROUNDS = 1_024
_RATE_FMT = f".{RATE_DECIMALS}f"
REASON_INDEX = "index"  # the index is not live, so neither is the mark
# The mark falls outside the market's price band (below one unit of its last decimal, say): it
# could only be published as a wrong number ("0.00"), so it is none.
REASON_BOUNDS = "bounds"
# What a market's mark is made of in a round: the perpetuals (basis EMA and perp median), the
# fallback (fewer than min_perp_sources counted), or nothing (the index is not live).
MODES = ("perps", "fallback", "none")
# Why a perpetual did not count in a round (docs/mark.md, Inputs): no quote held, flagged by its
# source, too old (or left behind by the index: `_left_behind`) or too far ahead, its conversion
# leg not live, too far from the index, fewer counting than min_perp_sources, or no live index
# (nothing was checked).
PERP_REASONS = (
    "no_quote", "flagged", "stale", "future", "route", "deviation", "too_few", "index"
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Perp:
    """One perpetual input of a market and how it converts into the market's units."""

    key: SlotKey
    pos: int  # its place in the market's perp_sources (in `_State.past`, the reasons)
    via: int  # market index of the conversion leg, -1 for none
    invert: bool  # divide by the leg's price instead of multiplying


@dataclass(frozen=True, slots=True)
class _Spec:
    """A perpetual market's static inputs, derived from the config once."""

    market: int
    perps: tuple[_Perp, ...]
    max_age_ms: int
    routed: bool  # some perp converts through a leg (else each one's own index is `x`)
    lag_ms: int  # older than this, a perp counts while the index stays near (the lag rule)
    lag_band: float  # the market's `max_deviation` x BAND_SLACK: how near
    max_dev: float
    max_band: float  # max_dev x BAND_SLACK (the check's product, made once: the same float)
    min_perps: int
    half_life_ms: float
    interval_ms: int
    interest: float
    clamp: float
    cap: float
    floor: float  # the market's price band (`Layout.price_floor`, `price_ceiling`)
    ceiling: float


class _Past:
    """The live rounds of a market's last `max_age_ms`, at most `_PAST_ROUNDS`, oldest first:
    each round's time and, per perpetual, the index in its own currency.

    Flat arrays of 8-byte numbers, not a tuple a round: at the bound, with a long age limit and
    fast rounds, tuples took about 150 bytes a round, some 150 MB over 1,000 perpetual markets.
    Rounds leave from the front by moving `_head`; the arrays are cut when half of them is gone.
    """

    __slots__ = ("_head", "_own", "_perps", "_ts")

    def __init__(self, perps: int) -> None:
        self._perps = perps
        self._ts = array("q")
        self._own = array("d")
        self._head = 0

    def add(self, now: int, owns: tuple[float, ...], oldest: int) -> None:
        """Remember this round; forget rounds before `oldest`, and beyond the bound."""
        ts = self._ts
        ts.append(now)
        self._own.extend(owns)
        head = max(self._head, len(ts) - _PAST_ROUNDS)
        while ts[head] < oldest:
            head += 1
        if head >= _PAST_ROUNDS // 4 and 2 * head >= len(ts):
            del ts[:head]
            del self._own[: head * self._perps]
            head = 0
        self._head = head

    def take(self, prior: _Past, picks: list[int | None]) -> None:
        """The rounds of `prior` (a reload), its perpetuals picked by their new places (None: a
        perpetual newly listed, NaN in every round)."""
        n = prior._perps
        for r in range(prior._head, len(prior._ts)):
            self._ts.append(prior._ts[r])
            self._own.extend(nan if k is None else prior._own[r * n + k] for k in picks)

    def before_this_round(self, stamp: int) -> bool:
        """True if `stamp` is at or before the round before this one: a quote from a past round."""
        return len(self._ts) - self._head > 1 and stamp <= self._ts[-2]

    def first_at_or_after(self, stamp: int, i: int) -> float:
        """Perpetual `i`'s index in its own currency in the first remembered live round at or
        after `stamp` (its leg live then), or this round's for a time ahead of it: where the
        market was when the venue quoted. A feed that lags delivers its quotes late, each at the
        level of its own time; judged by the index of the round that first held it, a venue
        lagging by more than `lag_ms` was never left behind through a move."""
        ts, own, n = self._ts, self._own, self._perps
        last = len(ts) - 1
        then = own[last * n + i]
        for r in range(last, self._head - 1, -1):
            if ts[r] < stamp:
                break
            value = own[r * n + i]
            if isfinite(value):
                then = value
        return then


class _State:
    """What a perpetual market remembers between rounds."""

    __slots__ = (
        "acc_id", "acc_sum", "acc_weight", "ema", "ema_ts", "last_rate", "last_ts", "past", "prev",
        "seen",
    )  # fmt: skip

    def __init__(self, perps: int) -> None:
        # EMA of the basis as a fraction of the index, so that it scales with the index through
        # a large move (in price units, a 4.5 basis kept across a fall from 100 to 3 made the
        # mark negative); NaN until the first sample
        self.ema = nan
        self.ema_ts = 0  # time of the last basis sample
        self.acc_id: int | None = None  # running funding interval: ((t - 1) // interval)
        self.acc_sum = 0.0  # sum of weight x premium in the running interval
        self.acc_weight = 0.0  # sum of weights (ms) in the running interval
        self.last_rate = nan  # rate of the last completed interval, NaN if it had no sample
        self.last_ts: int | None = None  # end of that interval
        self.prev: int | None = None  # the previous round's time
        # The live rounds of the last `max_age_ms` (at most _PAST_ROUNDS): the round's time and,
        # per perpetual in spec order, the index in its own currency (`_own_index`, NaN where
        # its leg was not live).
        self.past = _Past(perps)
        # Per perpetual: the venue time of the quote held, and the index in the perpetual's own
        # currency in the first live round at or after that time (`_Past.first_at_or_after`;
        # the lag rule: how far the index has moved since). Kept, so that a quote is judged from
        # one index however the past is trimmed; by time, not by quote: a REST poll repeating a
        # frozen ticker is a new quote with the old venue time, and says nothing new.
        self.seen: dict[SlotKey, tuple[int, float]] = {}


class MarkValues(NamedTuple):
    """One market's mark outputs of one round, as floats (NaN for none).

    A named tuple: one is built per perpetual market per round, and a tuple is built several
    times faster than a frozen dataclass.
    """

    price: float
    basis_ema: float
    perp_median: float
    fallback: float
    basis: float
    premium: float
    perps_used: int
    funding_estimate: float
    last_funding: float
    last_funding_ts: int | None
    next_funding_ts: int
    # Per entry of the market's perp_sources, in config order: None if it counted, else why
    # not (one of PERP_REASONS), and its mid in market units (NaN without one).
    perp_reasons: tuple[str | None, ...] = ()
    perp_mids: tuple[float, ...] = ()
    # The index was live but the mark fell outside the market's price band: `price` is NaN.
    out_of_bounds: bool = False

    @property
    def mode(self) -> str:
        """Which of `MODES` made this round's mark (metrics and the fallback log line)."""
        if not isfinite(self.price):
            return "none"
        return "perps" if isfinite(self.perp_median) else "fallback"

    def to_mark(self, decimals: int) -> Mark:
        """The report's `mark` object: prices at the market's precision, rates at 8 decimals."""
        fmt = f".{decimals}f"
        return Mark(
            price=_dec(self.price, fmt),
            reason=(
                None
                if isfinite(self.price)
                else REASON_BOUNDS
                if self.out_of_bounds
                else REASON_INDEX
            ),
            estimators=MarkEstimators(
                basis_ema=_dec(self.basis_ema, fmt),
                perp_median=_dec(self.perp_median, fmt),
                fallback=_dec(self.fallback, fmt),
            ),
            basis=_dec(self.basis, fmt),
            premium=_dec(self.premium, _RATE_FMT),
            perps_used=self.perps_used,
            funding_rate_estimate=_dec(self.funding_estimate, _RATE_FMT),
            last_funding_rate=_dec(self.last_funding, _RATE_FMT),
            last_funding_ts=self.last_funding_ts,
            next_funding_ts=self.next_funding_ts,
        )


def _dec(value: float, fmt: str) -> str | None:
    """A decimal string, or None for NaN; never "-0.00" for a value that rounds to zero."""
    if not isfinite(value):
        return None
    text = format(value, fmt)
    if text.startswith("-") and not text.strip("-0."):
        return text[1:]
    return text


# Every field in order, with no defaults to fill: the same named tuple as `MarkValues(...)`, built
# without running its generated Python `__new__` (a third of the cost, once per market per round)
_new_values = tuple.__new__


@dataclass(frozen=True, slots=True)
class MarkRound:
    """The mark outputs of one round, by market index (perpetual markets only)."""

    values: Mapping[int, MarkValues]

    def mark(self, i: int, decimals: int) -> Mark | None:
        """Market `i`'s `mark` object, or None for a market without perpetuals."""
        found = self.values.get(i)
        return None if found is None else found.to_mark(decimals)


class MarkEngine:
    """Per-market mark state; `step` once per round, after the index prices are known."""

    __slots__ = ("_markets", "_round_ms", "_skew", "_specs", "_states")

    def __init__(self, cfg: Config, layout: Layout) -> None:
        index = {sym: i for i, sym in enumerate(layout.markets)}
        routes = {(r.from_, r.to): r.via for r in cfg.routes}
        specs: list[_Spec] = []
        for i, market in enumerate(cfg.markets):
            if not market.perp_sources:
                continue
            quote_ccy = market.symbol.split("/")[1]
            perps: list[_Perp] = []
            for pos, ps in enumerate(market.perp_sources):
                p_quote = ps.pair.split("/")[1]
                via_sym = None if p_quote == quote_ccy else routes[(p_quote, quote_ccy)]
                perps.append(
                    _Perp(
                        key=(ps.source, ps.pair, ps.kind),
                        pos=pos,
                        via=-1 if via_sym is None else index[via_sym],
                        invert=via_sym is not None and via_sym != f"{p_quote}/{quote_ccy}",
                    )
                )
            band = (float(layout.price_floor[i]), float(layout.price_ceiling[i]))
            specs.append(_spec(i, tuple(perps), market, band))
        self._specs = tuple(specs)
        self._states = {s.market: _State(len(s.perps)) for s in self._specs}
        # what `step` walks: a state looked up once, not per round (`carry_from` fills the same)
        self._markets = tuple((s, self._states[s.market]) for s in self._specs)
        self._skew = cfg.oracle.max_clock_skew_ms
        self._round_ms = cfg.oracle.round_interval_ms

    @property
    def active(self) -> bool:
        """True when some market has perpetuals; the core skips the step otherwise."""
        return bool(self._specs)

    def carry_from(
        self, old: MarkEngine, old_markets: Mapping[str, int], markets: tuple[str, ...]
    ) -> None:
        """Keep the state of markets that stay perpetual across a config reload.

        The basis EMA is kept, cut to the new `max_perp_deviation` (every estimator stays
        within the limit in force); the funding interval is kept only if its length is
        unchanged (a running average over a different interval grid would settle a wrong rate);
        the past rounds and the index each held perpetual quote was judged from are kept for
        the perpetuals still listed (the book keeps their quotes; one newly listed has no past).
        """
        old_specs = {s.market: s for s in old._specs}
        for spec in self._specs:
            j = old_markets.get(markets[spec.market])
            if j is None or j not in old._states:
                continue
            state, prior = self._states[spec.market], old._states[j]
            state.ema_ts, state.prev = prior.ema_ts, prior.prev
            keys = {p.key for p in spec.perps}
            state.seen = {k: v for k, v in prior.seen.items() if k in keys}
            where = {p.key: i for i, p in enumerate(old_specs[j].perps)}
            picks = [where.get(p.key) for p in spec.perps]
            state.past.take(prior.past, picks)
            dev = spec.max_dev
            state.ema = min(max(prior.ema, -dev), dev) if isfinite(prior.ema) else prior.ema
            if old_specs[j].interval_ms == spec.interval_ms:
                state.acc_id, state.acc_sum, state.acc_weight = (
                    prior.acc_id,
                    prior.acc_sum,
                    prior.acc_weight,
                )
                state.last_rate, state.last_ts = prior.last_rate, prior.last_ts

    def step(
        self, now_ms: int, index: npt.NDArray[np.float64], perps: Mapping[SlotKey, Quote]
    ) -> MarkRound:
        """Advance every perpetual market by one round at `now_ms` with this round's index."""
        live = index.tolist()
        return MarkRound(
            {
                spec.market: self._market(spec, state, now_ms, live, perps)
                for spec, state in self._markets
            }
        )

    def _market(
        self,
        spec: _Spec,
        state: _State,
        now: int,
        live: list[float],
        perps: Mapping[SlotKey, Quote],
    ) -> MarkValues:
        x = live[spec.market]
        mids: list[float] = []
        premiums: list[float] = []
        reasons: list[str | None] = []
        seen: list[float] = []
        if isfinite(x):
            if spec.routed:
                owns = tuple([_own_index(perp, x, live) for perp in spec.perps])
            else:
                owns = (x,) * len(spec.perps)
            past = state.past
            past.add(now, owns, now - spec.max_age_ms)  # older quotes are stale by age anyway
            for perp in spec.perps:  # not enumerate: one object fewer per market per round
                quote = perps.get(perp.key)
                if quote is None:
                    reasons.append("no_quote")
                    seen.append(nan)
                    continue
                stamp = quote.venue_ts if quote.venue_ts is not None else quote.recv_ts
                age = now - stamp  # read once here, not again in each check
                found = _convert(perp, quote, age, live, spec.max_age_ms, self._skew)
                own = then = owns[perp.pos]
                if isfinite(own):
                    first = state.seen.get(perp.key)
                    if first is None or first[0] != stamp:  # a new venue time
                        if past.before_this_round(stamp):
                            then = past.first_at_or_after(stamp, perp.pos)
                        state.seen[perp.key] = (stamp, then)
                    else:
                        then = first[1]
                if isinstance(found, str):
                    reasons.append(found)
                    seen.append(nan)
                    continue
                mid, bid, ask = found
                seen.append(mid)
                if _left_behind(spec, age, then, own):
                    reasons.append("stale")
                    continue
                if abs(mid - x) > spec.max_band * x:  # 103 on 100 counts at 3 %
                    reasons.append("deviation")
                    continue
                reasons.append(None)
                mids.append(mid)
                premiums.append(premium_of(x, mid, bid, ask))
            if len(mids) < spec.min_perps:  # too few to outvote one venue: as if none counted
                mids.clear()
                premiums.clear()
                reasons = ["too_few" if r is None else r for r in reasons]
        else:
            reasons = ["index"] * len(spec.perps)
            seen = [nan] * len(spec.perps)

        perp_median = median(mids)
        basis = perp_median - x  # NaN without a live index or a fresh perp
        premium = median(premiums)
        basis_ema = fallback = nan
        if mids:
            state.ema = ema_update(state.ema, basis / x, now - state.ema_ts, spec.half_life_ms)
            state.ema_ts = now
            basis_ema = x * (1.0 + state.ema)
            price = (basis_ema + perp_median) * 0.5  # the median of two estimators
        elif isfinite(x):
            carried = state.ema * decay(now - state.ema_ts, spec.half_life_ms)
            fallback = x * (1.0 + carried) if isfinite(carried) else x
            price = fallback
        else:
            price = nan
        # The index is in its band, but a perp far below it (up to max_perp_deviation) or an old
        # basis can take the mark under the market's floor: "0.00" at two decimals, a zero mark.
        out_of_bounds = isfinite(price) and not spec.floor <= price <= spec.ceiling
        if out_of_bounds:
            price = nan

        estimate = self._fund(spec, state, now, premium)
        assert state.acc_id is not None  # set by _fund
        return _new_values(
            MarkValues,
            (
                price,
                basis_ema,
                perp_median,
                fallback,
                basis,
                premium,
                len(mids),
                estimate,  # funding_estimate
                state.last_rate,
                state.last_ts,
                (state.acc_id + 1) * spec.interval_ms,  # next_funding_ts
                tuple(reasons),
                tuple(seen),  # perp_mids
                out_of_bounds,
            ),
        )

    def _fund(self, spec: _Spec, state: _State, now: int, premium: float) -> float:
        """Add this round's premium sample to the running interval; settle intervals that ended.

        Interval k covers (k * I, (k + 1) * I]: a round exactly on a boundary closes the interval.
        A sample's weight is the time since the previous round, cut at the interval's start.
        """
        size = spec.interval_ms
        current = (now - 1) // size
        if state.acc_id is None:
            state.acc_id = current
        elif current > state.acc_id:
            self._settle(spec, state)
            if current > state.acc_id:  # whole intervals passed without a round
                state.last_rate, state.last_ts = nan, current * size
                state.acc_id = current
        prev = state.prev if state.prev is not None else now - self._round_ms
        state.prev = now
        start = current * size
        weight = now - (start if start > prev else prev)  # max(prev, start), without the builtin
        if isfinite(premium) and weight > 0:
            state.acc_sum += weight * premium
            state.acc_weight += weight
        # Only the running interval's own end settles it: a round time that went back onto an
        # earlier boundary (the core takes it as given) would settle it early, a grid ahead.
        if now == (current + 1) * size and current == state.acc_id:
            self._settle(spec, state)
        if state.acc_weight <= 0.0:
            return nan
        return funding_rate(state.acc_sum / state.acc_weight, spec.interest, spec.clamp, spec.cap)

    @staticmethod
    def _settle(spec: _Spec, state: _State) -> None:
        """Close the running interval: its rate becomes the last rate; a new interval starts."""
        assert state.acc_id is not None
        state.last_rate = (
            funding_rate(state.acc_sum / state.acc_weight, spec.interest, spec.clamp, spec.cap)
            if state.acc_weight > 0.0
            else nan
        )
        state.last_ts = (state.acc_id + 1) * spec.interval_ms
        state.acc_id += 1
        state.acc_sum = state.acc_weight = 0.0


def _spec(
    market: int,
    perps: tuple[_Perp, ...],
    cfg: MarketConfig,
    band: tuple[float, float],
) -> _Spec:
    mk = cfg.mark
    return _Spec(
        market=market,
        perps=perps,
        max_age_ms=cfg.max_age_ms,
        routed=any(p.via >= 0 for p in perps),
        lag_ms=cfg.lag_ms,
        lag_band=cfg.max_deviation * BAND_SLACK,
        max_dev=mk.max_perp_deviation,
        max_band=mk.max_perp_deviation * BAND_SLACK,
        min_perps=mk.min_perp_sources,
        half_life_ms=mk.basis_half_life_s * 1000.0,
        interval_ms=mk.funding_interval_s * 1000,
        interest=mk.interest_rate,
        clamp=mk.premium_clamp,
        cap=mk.funding_cap,
        floor=band[0],
        ceiling=band[1],
    )


def _own_index(perp: _Perp, x: float, live: list[float]) -> float:
    """The index `x` in the perpetual's own currency (back through its leg; NaN when the leg is
    not live): what a quiet contract's quote follows. A leg that moves while `x` stays (a
    depeg) moves the contract's price in its currency, and a contract silent through it is left
    behind; one whose leg and `x` moved together is where the market is."""
    if perp.via < 0:
        return x
    leg = live[perp.via]
    return x * leg if perp.invert else x / leg


def _left_behind(spec: _Spec, age: int, then: float, x: float) -> bool:
    """True for a perpetual quote `age` ms old by its venue time, older than the market's
    `lag_ms`, while the index (`x`, in the perpetual's own currency: `_own_index`) has moved by
    more than `max_deviation` from `then`, its value in the first live round at or after the
    quote's venue time (`_Past.first_at_or_after`).

    The perps' analogue of the spot lag rule (docs/mark.md, Inputs): a perp venue silent behind
    an open socket keeps its last quote fresh until `max_age_ms`, and through a fast move the
    silent ones would hold the perp median, and the mark, at the level before it (up to
    `max_perp_deviation` from the index). The judge is the index, made of young spot quotes by
    the spot lag rule, not the young perps (one may be a venue's wick) nor the basis EMA (which
    the silent perps feed while they count: with a short half-life it followed them). A quiet
    contract counts while the index stays where it was when the contract last quoted.
    """
    return age > spec.lag_ms and abs(x - then) > spec.lag_band * then


def _convert(
    perp: _Perp,
    quote: Quote,
    age: int,
    live: list[float],
    max_age_ms: int,
    skew: int,
) -> tuple[float, float | None, float | None] | str:
    """(mid, bid, ask) of a fresh perpetual quote (`age` ms old by its venue time) in market
    units, or why it cannot count (as a spot slot, a value its source flagged as not a price
    never counts)."""
    if quote.flag is not None:
        return "flagged"
    if age > max_age_ms:
        return "stale"
    if age < -skew:
        return "future"
    bid, ask = quote.bid, quote.ask
    if bid is not None and ask is not None:
        mid = (bid + ask) * 0.5
    elif quote.price is not None:
        mid, bid, ask = quote.price, None, None
    else:  # never held: a lone bid or ask is no price at the door (docs/pricing.md section 1)
        return "no_quote"
    if perp.via >= 0:
        leg = live[perp.via]
        if not isfinite(leg):
            return "route"  # a leg that is not live blocks the perp, as it blocks spot slots
        if perp.invert:  # divided, as spot slots are: one rounding, not two
            mid /= leg
            if bid is not None and ask is not None:
                bid, ask = bid / leg, ask / leg
        else:
            mid *= leg
            if bid is not None and ask is not None:
                bid, ask = bid * leg, ask * leg
    return mid, bid, ask
