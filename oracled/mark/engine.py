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

The step works on arrays, a row per perpetual market and a column per perpetual (`_Table`), as
the spot layers do: Python per market cost 6 to 8 us a round, over the round's budget with
hundreds of perpetual markets. Only reading the quotes held (`_Reader`: those not read in an
earlier round), the index of a quote from a past round (`_Past.first_at_or_after`) and
`decay`'s `**` (once per distinct elapsed time and half-life) are Python. Every output is the
per-market code's, bit for bit: the same IEEE operations in the same order, `formulas.decay`
itself, medians sorted stably as `sorted` (tests/mark/test_mark_bits.py). `MarkValues` are
made only when a round's `values` is read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import chain
from math import isfinite, nan
from operator import is_not
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from oracled.aggregate.book import Layout, SlotKey
from oracled.bands import BAND_SLACK
from oracled.config import Config, MarketConfig
from oracled.mark.formulas import decay, median
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


_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]
_Bool = npt.NDArray[np.bool_]

# A perpetual's reason code: its place in PERP_REASONS, or _COUNTED (reason None)
_NO_QUOTE, _FLAGGED, _STALE, _FUTURE, _ROUTE, _DEVIATION, _TOO_FEW, _INDEX = range(8)
_COUNTED = len(PERP_REASONS)
_REASONS: tuple[str | None, ...] = (*PERP_REASONS, None)
# The reason of each of `MarkEngine._checks`'s checks, in their order (a perpetual's is its first
# failed one); the first `_BLOCKING` of them leave its price unconverted.
_CHECK_CODES = np.array(
    [_NO_QUOTE, _FLAGGED, _STALE, _FUTURE, _NO_QUOTE, _ROUTE, _STALE, _DEVIATION], np.int64
)
_BLOCKING = 6
# What `_Reader` reads of a quote held, as bits: held at all, both sides, a price, a flag
_HELD, _TWO, _PRICED, _FLAG = 1, 2, 4, 8
_ABSENT = (nan, nan, nan, 0)  # `_rows`'s row for a perpetual without a quote held
# The lengths of the history's rows (`_Past`), 64 to 1,024 and 1,280: doubled from the first
# while a market's window needs more, up to the bound and room for `_PAST_SLACK` rounds more, so
# that a row at the bound moves its rounds to its start once in that many rounds, not each one.
_FIRST_ROUNDS = 64
_PAST_SLACK = _PAST_ROUNDS // 4
_LENGTHS = tuple(sorted({min(_FIRST_ROUNDS << n, _PAST_ROUNDS + _PAST_SLACK) for n in range(32)}))
# A quote's time is held within +-_FAR ms: the door bounds a venue time from above only, and
# one beyond int64 (or near its limits) would not convert, or would wrap `now - stamp` into the
# other sign. That far off, a quote is stale (or ahead) by age whatever its exact time.
_FAR = 1 << 62


class _Table:
    """The perpetual markets' static inputs as arrays: a row per market (in config order), a
    column per place in its perp_sources, `width` columns (the most any market lists; a market
    with fewer has padding that never holds a quote). The step works on whole arrays rather
    than per market in Python, as the spot layers do."""

    __slots__ = (
        "blank", "cap", "ceiling", "clamp", "counts", "divided", "floor", "half_life", "ids",
        "interest", "interval", "invert", "keys", "lag_band", "lag_ms", "listed", "low_cap",
        "low_clamp", "market", "max_age", "max_band", "min_perps", "multiplied", "one_half_life",
        "padded", "routed", "routes", "rows", "via",
    )  # fmt: skip

    def __init__(self, specs: tuple[_Spec, ...]) -> None:
        width = max((len(s.perps) for s in specs), default=0)
        rows = len(specs)
        self.ids = [s.market for s in specs]  # market index of each row
        self.rows = np.arange(rows, dtype=np.int64)
        self.market = np.array(self.ids, np.int64)
        self.counts = [len(s.perps) for s in specs]
        # row-major, None where a row has no perpetual: what `_Reader` looks up
        self.keys: list[SlotKey | None] = [
            s.perps[k].key if k < len(s.perps) else None for s in specs for k in range(width)
        ]
        via = np.full((rows, width), -1, np.int64)
        self.invert = np.zeros((rows, width), np.bool_)
        for r, s in enumerate(specs):
            for perp in s.perps:
                via[r, perp.pos] = perp.via
                self.invert[r, perp.pos] = perp.invert
        self.routed = via >= 0
        self.via = np.where(self.routed, via, 0)  # 0 where none: a valid place, never read
        # where a price divides by the leg (an inverted route) or multiplies by it; `routes`:
        # whether any perpetual converts at all (without, the step skips the conversions)
        self.divided, self.multiplied = self.routed & self.invert, self.routed & ~self.invert
        self.routes = bool(self.routed.any())
        # the places that list a perpetual (`padded`: not all of them); `blank`, the reason codes
        # of a round where none fails a check: counted, and no quote in the padding
        self.listed = np.arange(width) < np.array(self.counts, np.int64).reshape(-1, 1)
        self.padded = not self.listed.all()
        self.blank = np.where(self.listed, _COUNTED, _NO_QUOTE).astype(np.int64)

        def ints(name: str) -> _I64:
            return np.array([getattr(s, name) for s in specs], np.int64)

        def floats(name: str) -> _F64:
            return np.array([getattr(s, name) for s in specs], np.float64)

        self.max_age, self.lag_ms = ints("max_age_ms"), ints("lag_ms")
        self.min_perps, self.interval = ints("min_perps"), ints("interval_ms")
        self.lag_band, self.max_band = floats("lag_band"), floats("max_band")
        self.half_life, self.interest = floats("half_life_ms"), floats("interest")
        self.clamp, self.cap = floats("clamp"), floats("cap")
        self.floor, self.ceiling = floats("floor"), floats("ceiling")
        self.low_clamp, self.low_cap = -self.clamp, -self.cap  # the clips' lower bounds
        self.one_half_life = len(set(self.half_life.tolist())) < 2  # every market's the same


class _Rounds:
    """Rows of one length, each the history of one market (`_Past`): a time per round and, per
    perpetual, the index in its own currency. A market's rounds are `[head, end)` of its row,
    oldest first; rounds leave from the front by moving `head`. Rows no market uses are `free`
    and given again before the arrays grow."""

    __slots__ = ("end", "free", "head", "own", "ts")

    def __init__(self, rows: int, size: int, width: int) -> None:
        self.ts = np.zeros((rows, size), np.int64)
        self.own = np.full((rows, size, width), nan)
        self.head = np.zeros(rows, np.int64)
        self.end = np.zeros(rows, np.int64)
        self.free: list[int] = []

    @property
    def used(self) -> int:
        """How many rows hold a market's history."""
        return len(self.ts) - len(self.free)

    def place(self, count: int) -> _I64:
        """Rows for `count` markets: free ones first, then new ones, the arrays at least doubled
        so that markets moving in one at a time copy them a few times only."""
        taken = [self.free.pop() for _ in range(min(count, len(self.free)))]
        more = count - len(taken)
        if more:
            rows, size, width = self.ts.shape[0], self.ts.shape[1], self.own.shape[2]
            grow = max(more, rows)
            self.ts = np.concatenate((self.ts, np.zeros((grow, size), np.int64)))
            self.own = np.concatenate((self.own, np.full((grow, size, width), nan)))
            self.head = np.concatenate((self.head, np.zeros(grow, np.int64)))
            self.end = np.concatenate((self.end, np.zeros(grow, np.int64)))
            taken += range(rows, rows + more)
            self.free += range(rows + grow - 1, rows + more - 1, -1)
        return np.array(taken, np.int64)

    def release(self, rows: list[int]) -> None:
        """These rows no longer hold a market's history; the arrays go when none does (a market
        that moved through a length on its way to a longer one leaves nothing behind)."""
        self.free += rows
        if not self.used:
            self.ts, self.own = self.ts[:0].copy(), self.own[:0].copy()
            self.head, self.end, self.free = self.head[:0].copy(), self.end[:0].copy(), []

    def add(self, rows: _I64, now: int, owns: _F64, oldest: _I64) -> None:
        """Remember this round in `rows`, none of them full (each market's `owns`); forget
        their rounds before their `oldest`, and beyond the bound."""
        end = self.end[rows]
        self.ts[rows, end] = now
        self.own[rows, end] = owns
        end += 1
        self.end[rows] = end
        head = np.maximum(self.head[rows], end - _PAST_ROUNDS)
        behind = self.ts[rows, head] < oldest  # this round's time is not: the walk stops there
        while behind.any():
            head += behind
            behind = self.ts[rows, head] < oldest
        self.head[rows] = head

    def shift(self, rows: _I64) -> None:
        """Move these rows' rounds to their start (rare: once in many rounds a market)."""
        for r in rows.tolist():
            head, end = int(self.head[r]), int(self.end[r])
            self.ts[r, : end - head] = self.ts[r, head:end]
            self.own[r, : end - head] = self.own[r, head:end]
            self.head[r], self.end[r] = 0, end - head

    def previous(self, rows: _I64) -> tuple[_I64, _Bool]:
        """`_Past.previous` for these rows."""
        end = self.end[rows]
        return self.ts[rows, np.maximum(end - 2, 0)], end - self.head[rows] > 1

    def first_at_or_after(self, row: int, k: int, stamp: int) -> float:
        """`_Past.first_at_or_after` in this row."""
        head, end = int(self.head[row]), int(self.end[row])
        before = np.flatnonzero(self.ts[row, head:end] < stamp)
        start = head + (int(before[-1]) + 1 if len(before) else 0)
        owns = self.own[row, start:end, k]
        finite = np.flatnonzero(np.isfinite(owns))
        return float(owns[finite[0]] if len(finite) else self.own[row, end - 1, k])


class _Past:
    """Per market, the live rounds of its last `max_age_ms`, at most `_PAST_ROUNDS`: each
    round's time and, per perpetual, the index in its own currency.

    A market's rounds are a row of one of the `_Rounds` of `_LENGTHS` (`level`, `slot`): every
    market starts in the shortest; a full row moves its rounds to its start when half of it has
    left (or at the longest, which holds the bound and `_PAST_SLACK` more), else the market
    moves to the next length. One length for every market made one market with a long age limit
    grow all the others' rows with its own (82 MB at 1,000 markets of 4 perpetuals). Arrays of
    8-byte numbers, written for every live market of a length at once: at the bound, with a long
    age limit and fast rounds, a tuple a round took about 150 bytes, some 150 MB over 1,000
    perpetual markets.
    """

    __slots__ = ("groups", "level", "levels", "slot")

    def __init__(self, markets: int, width: int) -> None:
        self.groups = [
            _Rounds(markets if n == 0 else 0, size, width) for n, size in enumerate(_LENGTHS)
        ]
        self.level = np.zeros(markets, np.int64)
        self.slot = np.arange(markets, dtype=np.int64)
        self.levels = [0]  # the lengths that hold a market (`_recount`)

    def _parts(self, rows: _I64) -> list[tuple[_Rounds, _I64 | slice]]:
        """`rows` by the length that holds them: (its `_Rounds`, where they are in `rows`), all
        of them in one slice when one length holds every market (the usual case)."""
        if len(self.levels) == 1:
            return [(self.groups[self.levels[0]], slice(None))]
        level = self.level[rows]
        return [(self.groups[n], np.flatnonzero(level == n)) for n in self.levels]

    def _recount(self) -> None:
        """The lengths that hold a market, after markets moved."""
        self.levels = [n for n, group in enumerate(self.groups) if group.used]

    def add(self, rows: _I64, now: int, owns: _F64, oldest: _I64) -> None:
        """Remember this round in `rows` (each market's `owns`); forget its rounds before its
        `oldest`, and beyond the bound."""
        slots = self.slot[rows]
        full = [
            rows[at][group.end[slots[at]] == group.ts.shape[1]] for group, at in self._parts(rows)
        ]
        if any(len(f) for f in full):
            self._room(np.concatenate(full))
            slots = self.slot[rows]
        for group, at in self._parts(rows):
            group.add(slots[at], now, owns[at], oldest[at])

    def _room(self, rows: _I64) -> None:
        """Room for one more round for these full markets: their rounds moved to the start of
        their rows where half of it has left (always at the longest: the bound leaves
        `_PAST_SLACK` free), else their rows moved to the next length."""
        for group, at in self._parts(rows):
            markets = rows[at]
            slots = self.slot[markets]
            size = group.ts.shape[1]
            shift = (2 * group.head[slots] >= size) | (size == _LENGTHS[-1])
            group.shift(slots[shift])
            moving = markets[~shift]
            if len(moving):
                self._move(moving, int(self.level[moving[0]]) + 1)
        self._recount()

    def _move(self, markets: _I64, level: int) -> None:
        """These markets' rows, all of one length, into the next length, rounds in place."""
        source, target = self.groups[level - 1], self.groups[level]
        old = self.slot[markets]
        new = target.place(len(markets))
        size = source.ts.shape[1]
        target.ts[new, :size], target.own[new, :size] = source.ts[old], source.own[old]
        target.head[new], target.end[new] = source.head[old], source.end[old]
        source.release(old.tolist())
        self.level[markets], self.slot[markets] = level, new

    def take(self, row: int, prior: _Past, at: int, picks: list[int | None]) -> None:
        """Market `at`'s rounds of `prior` (a reload) into `row`, in the shortest length they
        fit, its perpetuals picked by their new places (None: a perpetual newly listed, NaN in
        every round)."""
        group = prior.groups[int(prior.level[at])]
        slot = int(prior.slot[at])
        head, end = int(group.head[slot]), int(group.end[slot])
        n = end - head
        level = next(i for i, size in enumerate(_LENGTHS) if size >= n)
        self.groups[int(self.level[row])].release([int(self.slot[row])])
        target = self.groups[level]
        new = int(target.place(1)[0])
        target.ts[new, :n] = group.ts[slot, head:end]
        target.own[new] = nan
        for k, pick in enumerate(picks):
            if pick is not None:
                target.own[new, :n, k] = group.own[slot, head:end, pick]
        target.head[new], target.end[new] = 0, n
        self.level[row], self.slot[row] = level, new
        self._recount()

    def previous(self) -> tuple[_I64, _Bool]:
        """Each market's round before this one, and whether it has one: a quote stamped at or
        before it is from a past round."""
        if len(self.levels) == 1:
            return self.groups[self.levels[0]].previous(self.slot)
        ts = np.zeros(len(self.slot), np.int64)
        remembered = np.zeros(len(self.slot), np.bool_)
        for group, at in self._parts(np.arange(len(self.slot))):
            ts[at], remembered[at] = group.previous(self.slot[at])
        return ts, remembered

    def first_at_or_after(self, row: int, k: int, stamp: int) -> float:
        """Perpetual `k`'s index in its own currency in the first remembered live round at or
        after `stamp` (its leg live then), or this round's for a time ahead of it: where the
        market was when the venue quoted. A feed that lags delivers its quotes late, each at the
        level of its own time; judged by the index of the round that first held it, a venue
        lagging by more than `lag_ms` was never left behind through a move.

        The rounds after the last one before `stamp` (a round time may go back: the core takes
        it as given), the first of them with a finite value. Only for a new venue time from a
        past round: per perpetual, in Python."""
        group = self.groups[int(self.level[row])]
        return group.first_at_or_after(int(self.slot[row]), k, stamp)


class _State:
    """What the perpetual markets remember between rounds, a row per market (`_Table`'s)."""

    __slots__ = (
        "acc_id", "acc_on", "acc_sum", "acc_weight", "ema", "ema_ts", "last_on", "last_rate",
        "last_ts", "past", "prev", "prev_on", "seen_on", "seen_then", "seen_ts", "stepped",
    )  # fmt: skip

    def __init__(self, markets: int, width: int) -> None:
        # EMA of the basis as a fraction of the index, so that it scales with the index through
        # a large move (in price units, a 4.5 basis kept across a fall from 100 to 3 made the
        # mark negative); NaN until the first sample
        self.ema = np.full(markets, nan)
        self.ema_ts = np.zeros(markets, np.int64)  # time of the last basis sample
        # the running funding interval ((t - 1) // interval), where `acc_on`
        self.acc_on = np.zeros(markets, np.bool_)
        self.acc_id = np.zeros(markets, np.int64)
        self.acc_sum = np.zeros(markets)  # sum of weight x premium in the running interval
        self.acc_weight = np.zeros(markets)  # sum of weights (ms) in the running interval
        self.last_rate = np.full(markets, nan)  # the last completed interval's rate (NaN: none)
        self.last_on = np.zeros(markets, np.bool_)  # whether one completed: `last_ts` its end
        self.last_ts = np.zeros(markets, np.int64)
        self.prev_on = np.zeros(markets, np.bool_)  # whether there was a round: `prev` its time
        self.prev = np.zeros(markets, np.int64)
        # whether a step ran: then every row's `acc_on` and `prev_on` are set (`carry_from` sets
        # some of them in an engine that has not stepped yet)
        self.stepped = False
        # The live rounds of the last `max_age_ms` (at most _PAST_ROUNDS): the round's time and,
        # per perpetual in spec order, the index in its own currency (`_own_index`, NaN where
        # its leg was not live).
        self.past = _Past(markets, width)
        # Per perpetual, where `seen_on`: the venue time of the quote held, and the index in the
        # perpetual's own currency in the first live round at or after that time
        # (`_Past.first_at_or_after`; the lag rule: how far the index has moved since). Kept,
        # so that a quote is judged from one index however the past is trimmed; by time, not by
        # quote: a REST poll repeating a frozen ticker is a new quote with the old venue time,
        # and says nothing new.
        self.seen_on = np.zeros((markets, width), np.bool_)
        self.seen_ts = np.zeros((markets, width), np.int64)
        self.seen_then = np.full((markets, width), nan)


class _Quotes(NamedTuple):
    """The quote held for each perpetual of a round (`_Table`'s shape; absent ones: `held` false,
    NaN prices)."""

    held: _Bool
    flagged: _Bool
    stamp: _I64  # venue time where sent, else receive time
    two: _Bool  # both bid and ask quoted
    priced: _Bool  # a last price quoted
    bid: _F64
    ask: _F64
    price: _F64


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
# without running its generated Python `__new__`
_new_values = tuple.__new__


class _Outputs(NamedTuple):
    """One round's outputs as arrays, a row per perpetual market (`_Table`'s rows)."""

    markets: list[int]  # market index of each row
    counts: list[int]  # perpetuals listed per row
    price: _F64
    basis_ema: _F64
    perp_median: _F64
    fallback: _F64
    basis: _F64
    premium: _F64
    used: _I64
    estimate: _F64
    last_rate: _F64
    last_on: _Bool
    last_ts: _I64
    next_ts: _I64
    codes: npt.NDArray[np.int64]  # reason code per perpetual
    mids: _F64  # mid in market units per perpetual
    out_of_bounds: _Bool


class _Values(Mapping[int, MarkValues]):
    """A round's `MarkValues` by market index, made from the arrays when first read: the round
    itself only fills arrays, and a reader of one market pays for all of them once."""

    __slots__ = ("_made", "_out", "_rows")

    def __init__(self, out: _Outputs) -> None:
        self._out = out
        self._made: dict[int, MarkValues] | None = None
        self._rows: tuple[dict[int, int], list[tuple[Any, ...]]] | None = None

    def _all(self) -> dict[int, MarkValues]:
        if self._made is None:
            self._made = _materialize(self._out)
        return self._made

    def mark(self, i: int, decimals: int) -> Mark | None:
        """Market `i`'s `mark` object, or None for a market without perpetuals.

        Without every `MarkValues` made, from the columns `to_mark` reads as Python lists
        (made once a round, a few us each): a report made for one market (`RoundResult.report`)
        reads its mark alone, and the perpetuals' reasons and mids, most of the cost of making
        every `MarkValues`, are in no `mark` object. The hub's encoder writes marks straight
        from the arrays (`oracled.publish.markjson`)."""
        if self._made is not None:
            found = self._made.get(i)
            return None if found is None else found.to_mark(decimals)
        if self._rows is None:
            self._rows = _rows_of(self._out)
        row = self._rows[0].get(i)
        if row is None:
            return None
        values: MarkValues = _new_values(MarkValues, self._rows[1][row])
        return values.to_mark(decimals)

    def __getitem__(self, i: int) -> MarkValues:
        return self._all()[i]

    def __iter__(self) -> Iterator[int]:
        return iter(self._out.markets)

    def __len__(self) -> int:
        return len(self._out.markets)

    def __contains__(self, i: object) -> bool:
        return i in (self._all() if self._made is not None else self._index())

    def _index(self) -> dict[int, int]:
        """Each market's row."""
        if self._rows is None:
            self._rows = _rows_of(self._out)
        return self._rows[0]


def _modes(out: _Outputs) -> npt.NDArray[np.int8]:
    """Each row's `MarkValues.mode` as its place in MODES."""
    perps = np.where(np.isfinite(out.perp_median), 0, 1)
    return np.where(np.isfinite(out.price), perps, 2).astype(np.int8)


def _rows_of(out: _Outputs) -> tuple[dict[int, int], list[tuple[Any, ...]]]:
    """Each market's row and every row's `MarkValues` fields, the perpetuals' reasons and mids
    left empty (`to_mark` reads neither)."""
    rows = {i: r for r, i in enumerate(out.markets)}
    columns = _columns(out)
    empty = [()] * len(out.markets)
    return rows, list(zip(*columns, empty, empty, out.out_of_bounds.tolist(), strict=True))


def _columns(out: _Outputs) -> tuple[list[Any], ...]:
    """The `MarkValues` fields from `price` to `next_funding_ts`, a Python list each."""
    last_ts = [
        t if on else None for t, on in zip(out.last_ts.tolist(), out.last_on.tolist(), strict=True)
    ]
    return (
        out.price.tolist(),
        out.basis_ema.tolist(),
        out.perp_median.tolist(),
        out.fallback.tolist(),
        out.basis.tolist(),
        out.premium.tolist(),
        out.used.tolist(),
        out.estimate.tolist(),  # funding_estimate
        out.last_rate.tolist(),
        last_ts,
        out.next_ts.tolist(),  # next_funding_ts
    )


def _materialize(out: _Outputs) -> dict[int, MarkValues]:
    """Every row's `MarkValues`, of Python floats and ints as the fields were always built."""
    codes, mids, counts = out.codes.tolist(), out.mids.tolist(), out.counts
    columns = (
        *_columns(out),
        [tuple([_REASONS[c] for c in row[:n]]) for row, n in zip(codes, counts, strict=True)],
        [tuple(row[:n]) for row, n in zip(mids, counts, strict=True)],  # perp_mids
        out.out_of_bounds.tolist(),
    )
    return {
        i: _new_values(MarkValues, row)
        for i, row in zip(out.markets, zip(*columns, strict=True), strict=True)
    }


class MarkRound:
    """The mark outputs of one round, by market index (perpetual markets only): the round's
    arrays (`outputs`, a row per perpetual market, `markets` ascending), and what is read from
    them.

    `values` makes every market's `MarkValues` when first read (about 1 ms at 1,000 perpetual
    markets); readers of a few fields for every market each round (the mode log line, the
    metrics, the hub's filters, the signer, the encoder) take them from the arrays instead.
    """

    __slots__ = ("modes", "outputs", "values")

    def __init__(self, outputs: _Outputs) -> None:
        self.outputs = outputs
        self.values = _Values(outputs)
        self.modes = _modes(outputs)  # each row's `MarkValues.mode`, as its place in MODES

    @property
    def markets(self) -> list[int]:
        """The market index of each row, ascending."""
        return self.outputs.markets

    @property
    def perps_used(self) -> _I64:
        return self.outputs.used

    @property
    def price(self) -> _F64:
        """Each row's mark, NaN for none."""
        return self.outputs.price

    def mark(self, i: int, decimals: int) -> Mark | None:
        """Market `i`'s `mark` object, or None for a market without perpetuals (without making
        every `MarkValues` of the round)."""
        return self.values.mark(i, decimals)


class MarkEngine:
    """Per-market mark state; `step` once per round, after the index prices are known."""

    __slots__ = ("_fails", "_reader", "_round_ms", "_skew", "_specs", "_state", "_table")

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
        self._table = _Table(self._specs)
        self._state = _State(len(specs), self._table.via.shape[1])
        self._reader = _Reader(self._table)
        # each check's result per perpetual (`_checks`), written in place each round
        self._fails = np.zeros((len(_CHECK_CODES), *self._table.via.shape), np.bool_)
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
        old_rows = {s.market: r for r, s in enumerate(old._specs)}
        state, prior = self._state, old._state
        for row, spec in enumerate(self._specs):
            j = old_markets.get(markets[spec.market])
            if j is None or j not in old_rows:
                continue
            at = old_rows[j]
            old_spec = old._specs[at]
            state.ema_ts[row] = prior.ema_ts[at]
            state.prev_on[row], state.prev[row] = prior.prev_on[at], prior.prev[at]
            where = {p.key: k for k, p in enumerate(old_spec.perps)}
            picks = [where.get(p.key) for p in spec.perps]
            for k, pick in enumerate(picks):
                if pick is not None:
                    state.seen_on[row, k] = prior.seen_on[at, pick]
                    state.seen_ts[row, k] = prior.seen_ts[at, pick]
                    state.seen_then[row, k] = prior.seen_then[at, pick]
            state.past.take(row, prior.past, at, picks)
            ema, dev = float(prior.ema[at]), spec.max_dev
            state.ema[row] = min(max(ema, -dev), dev) if isfinite(ema) else ema
            if old_spec.interval_ms == spec.interval_ms:
                for name in ("acc_on", "acc_id", "acc_sum", "acc_weight"):
                    getattr(state, name)[row] = getattr(prior, name)[at]
                for name in ("last_rate", "last_on", "last_ts"):
                    getattr(state, name)[row] = getattr(prior, name)[at]

    def step(
        self, now_ms: int, index: npt.NDArray[np.float64], perps: Mapping[SlotKey, Quote]
    ) -> MarkRound:
        """Advance every perpetual market by one round at `now_ms` with this round's index."""
        t, state = self._table, self._state
        quotes = self._reader.read(t, perps)
        with np.errstate(all="ignore"):  # NaN and inf are values here, as in the scalar rules
            x = index[t.market]
            live = np.isfinite(x)
            every = bool(live.all())  # every index live (most rounds): no row to pick or blank
            xs = x[:, None]
            if t.routes:
                leg = index[t.via]
                own = np.where(t.routed, np.where(t.invert, xs * leg, xs / leg), xs)
            else:  # the index is every perpetual's own; no leg is read
                leg = own = xs
            # older quotes are stale by age anyway
            if every:
                state.past.add(t.rows, now_ms, own, now_ms - t.max_age)
            else:
                rows = np.flatnonzero(live)
                state.past.add(rows, now_ms, own[rows], now_ms - t.max_age[rows])
            then = self._judged(quotes, own, live, every)
            codes, mids, premiums = self._checks(now_ms, x, quotes, own, then, leg)
            if not every:
                codes[~live] = _INDEX
            counted = codes == _COUNTED
            used = counted.sum(axis=1)
            few = used < t.min_perps  # too few to outvote one venue: as if none counted
            if few.any():
                codes[counted & few[:, None]] = _TOO_FEW
                counted &= ~few[:, None]
                used[few] = 0
            perp_median = _medians(mids, counted, used)
            premium = _medians(premiums, counted, used)
            # perp_mids: NaN where not converted
            shown = mids if every else np.where(live[:, None], mids, nan)
            out = self._mark(now_ms, x, live, used, perp_median, premium, codes, shown)
            return MarkRound(out)

    def _judged(self, quotes: _Quotes, own: _F64, live: _Bool, every: bool) -> _F64:
        """Per perpetual, the index in its own currency its held quote is judged from by the lag
        rule (`_left_behind`): the index of the first live round at or after a new venue time,
        kept while the venue time stays (`_State.seen`); `own` elsewhere. `every`: every index
        is live."""
        state = self._state
        judged = quotes.held if every else quotes.held & live[:, None]
        if self._table.routes:  # else `own` is the index: live where it is finite
            judged = judged & np.isfinite(own)
        new = judged & ~(state.seen_on & (state.seen_ts == quotes.stamp))
        if not new.any():  # every venue time held before (a quiet round): nothing to remember
            return np.where(judged, state.seen_then, own)
        previous, remembered = state.past.previous()
        past = new & remembered[:, None] & (quotes.stamp <= previous[:, None])
        then = np.where(judged & ~new, state.seen_then, own)
        if past.any():  # a quote from a past round, first seen now (a feed that lags)
            for r, k in zip(*np.nonzero(past), strict=True):
                then[r, k] = state.past.first_at_or_after(r, k, int(quotes.stamp[r, k]))
        state.seen_on |= new
        state.seen_ts = np.where(new, quotes.stamp, state.seen_ts)
        state.seen_then = np.where(new, then, state.seen_then)
        return then

    def _checks(
        self, now: int, x: _F64, quotes: _Quotes, own: _F64, then: _F64, leg: _F64
    ) -> tuple[_I64, _F64, _F64]:
        """Each perpetual's reason code (the first check it fails: a quote held, its flag, its
        age, a price, its leg, then the lag rule and the deviation), its mid in market units
        (NaN where it did not convert) and its premium over the index.

        The checks are written into `_fails`; only the perpetuals failing one are given their
        reason, from the first check they fail (np.select over every cell and eight conditions
        cost a fifth of the step while, in most rounds, few perpetuals or none fail)."""
        t, q, fails = self._table, quotes, self._fails
        xs = x[:, None]
        age = now - q.stamp
        # bid, ask and mid in one array, converted into market units through the leg in one
        # pass: divided as spot slots are, one rounding. A lone bid or ask converts too, unread:
        # the premium takes bid and ask only where both are quoted.
        trio = np.empty((3, *q.bid.shape))
        trio[0], trio[1] = q.bid, q.ask
        np.add(q.bid, q.ask, out=trio[2])
        trio[2] *= 0.5
        np.copyto(trio[2], q.price, where=~q.two)
        if t.routes:
            legs = np.broadcast_to(leg, trio.shape)
            np.divide(trio, legs, out=trio, where=t.divided)
            np.multiply(trio, legs, out=trio, where=t.multiplied)
        bid, ask, mid = trio
        above, below = bid - xs, xs - ask  # what a seller gets over, a buyer saves under
        impact = (np.where(above > 0.0, above, 0.0) - np.where(below > 0.0, below, 0.0)) / xs
        # formulas.premium_of
        premiums = impact if q.two.all() else np.where(q.two, impact, (mid - xs) / xs)
        np.logical_not(q.held, out=fails[0])
        np.copyto(fails[1], q.flagged)
        np.greater(age, t.max_age[:, None], out=fails[2])
        np.less(age, -self._skew, out=fails[3])
        np.logical_or(q.two, q.priced, out=fails[4])  # a lone bid or ask is no price at the door
        np.logical_not(fails[4], out=fails[4])
        if t.routes:  # a leg not live blocks the perp, as spot slots (else never set)
            np.isfinite(leg, out=fails[5])
            np.greater(t.routed, fails[5], out=fails[5])
        _left_behind(t, age, then, own, fails[6])
        np.greater(abs(mid - xs), t.max_band[:, None] * xs, out=fails[7])  # 103 on 100 at 3 %
        failing = fails.any(axis=0)
        if t.padded:  # the padding fails (no quote), its code already in `blank`
            failing &= t.listed
        codes = t.blank.copy()
        if failing.any():
            cells = np.flatnonzero(failing)
            first = fails.reshape(len(fails), -1)[:, cells].argmax(axis=0)
            codes.reshape(-1)[cells] = _CHECK_CODES[first]
            mid.reshape(-1)[cells[first < _BLOCKING]] = nan  # the premiums are taken
        return codes, mid, premiums

    def _mark(
        self,
        now: int,
        x: _F64,
        live: _Bool,
        used: _I64,
        perp_median: _F64,
        premium: _F64,
        codes: _I64,
        mids: _F64,
    ) -> _Outputs:
        """The estimators and the mark from this round's perp median (docs/mark.md), the basis
        EMA updated where perpetuals counted, and the funding fields."""
        t, state = self._table, self._state
        basis = perp_median - x  # NaN without a live index or a fresh perp
        counted = used > 0
        ema = state.ema
        every = counted.all()  # (most rounds) then every index is live, no market falls back
        decaying = np.isfinite(ema) if every else live & np.isfinite(ema)
        keep = _decays(now - state.ema_ts, t, decaying)
        sample = basis / x
        # formulas.ema_update: a NaN EMA (no sample yet) starts at the sample
        updated = np.where(np.isnan(ema), sample, ema * keep + sample * (1.0 - keep))
        if every:  # the merges below, each taking its first branch everywhere
            state.ema = updated
            state.ema_ts = np.full_like(state.ema_ts, now)
            basis_ema = x * (1.0 + updated)
            fallback = np.full_like(x, nan)
            price = (basis_ema + perp_median) * 0.5
        else:
            state.ema = np.where(counted, updated, ema)
            state.ema_ts = np.where(counted, now, state.ema_ts)
            basis_ema = np.where(counted, x * (1.0 + state.ema), nan)
            carried = ema * keep
            fallen = live & ~counted
            fallback = np.where(fallen, np.where(np.isfinite(carried), x * (1.0 + carried), x), nan)
            # with both estimators, their median is their mean
            price = np.where(counted, (basis_ema + perp_median) * 0.5, fallback)
        # The index is in its band, but a perp far below it (up to max_perp_deviation) or an old
        # basis can take the mark under the market's floor: "0.00" at two decimals, a zero mark.
        # Outside the band and finite (NaN compares false; the band is never NaN).
        out_of_bounds = (price < t.floor) | (price > t.ceiling)
        if out_of_bounds.any():
            out_of_bounds &= np.isfinite(price)
            price = np.where(out_of_bounds, nan, price)
        estimate = self._fund(now, premium)
        return _Outputs(
            markets=t.ids,
            counts=t.counts,
            price=price,
            basis_ema=basis_ema,
            perp_median=perp_median,
            fallback=fallback,
            basis=basis,
            premium=premium,
            used=used,
            estimate=estimate,
            last_rate=state.last_rate,
            last_on=state.last_on,
            last_ts=state.last_ts,
            next_ts=(state.acc_id + 1) * t.interval,
            codes=codes,
            mids=mids,
            out_of_bounds=out_of_bounds,
        )

    def _fund(self, now: int, premium: _F64) -> _F64:
        """Add this round's premium samples to the running intervals; settle intervals that
        ended. Every state array is replaced, not written into: a round's outputs hold them.

        Interval k covers (k * I, (k + 1) * I]: a round exactly on a boundary closes the interval.
        A sample's weight is the time since the previous round, cut at the interval's start.
        """
        t, state = self._table, self._state
        size = t.interval
        current = (now - 1) // size
        if state.stepped:  # every row has a running interval and a previous round
            ended = current > state.acc_id
            prev = state.prev
        else:
            ended = state.acc_on & (current > state.acc_id)
            state.acc_id = np.where(state.acc_on, state.acc_id, current)
            state.acc_on = np.ones_like(state.acc_on)
            prev = np.where(state.prev_on, state.prev, now - self._round_ms)
            state.prev_on, state.stepped = np.ones_like(state.prev_on), True
        if ended.any():  # most rounds end no interval: nothing to settle or skip
            self._settle(ended)
            skipped = ended & (current > state.acc_id)  # whole intervals passed without a round
            state.last_rate = np.where(skipped, nan, state.last_rate)
            state.last_ts = np.where(skipped, current * size, state.last_ts)
            state.acc_id = np.where(skipped, current, state.acc_id)
        state.prev = np.full_like(state.prev, now)
        weight = now - np.maximum(current * size, prev)  # since the later of both (integers)
        sampled = np.isfinite(premium) & (weight > 0)
        if sampled.all():  # (most rounds) the merges below, taking their first branch
            state.acc_sum = state.acc_sum + weight * premium
            state.acc_weight = state.acc_weight + weight
        elif sampled.any():
            state.acc_sum = np.where(sampled, state.acc_sum + weight * premium, state.acc_sum)
            state.acc_weight = np.where(sampled, state.acc_weight + weight, state.acc_weight)
        # Only the running interval's own end settles it: a round time that went back onto an
        # earlier boundary (the core takes it as given) would settle it early, a grid ahead.
        ends = (current + 1) * size == now
        if ends.any():
            self._settle(ends & (current == state.acc_id))
        weighed = state.acc_weight > 0.0
        return np.where(weighed, _funding_rates(t, state.acc_sum / state.acc_weight), nan)

    def _settle(self, rows: _Bool) -> None:
        """Close the running interval of `rows`: its rate becomes the last rate; a new interval
        starts."""
        if not rows.any():
            return
        t, state = self._table, self._state
        weighed = state.acc_weight > 0.0
        rate = np.where(weighed, _funding_rates(t, state.acc_sum / state.acc_weight), nan)
        state.last_rate = np.where(rows, rate, state.last_rate)
        state.last_ts = np.where(rows, (state.acc_id + 1) * t.interval, state.last_ts)
        state.last_on = state.last_on | rows
        state.acc_id = state.acc_id + rows
        state.acc_sum = np.where(rows, 0.0, state.acc_sum)
        state.acc_weight = np.where(rows, 0.0, state.acc_weight)


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


class _Reader:
    """Reads the quote held for each perpetual into arrays (`_Table`'s shape), in Python per
    perpetual: a lookup, then, for a quote not read in an earlier round, a few attributes. A
    quote held is immutable, so one held again (the same object) is not read again.

    The lookups use the mapping's own key objects where it has them (`_keys`): a dict compares
    a key found by its hash with the one it holds, at once when they are one object, element by
    element otherwise (a third of the lookups' cost)."""

    __slots__ = (
        "_held", "_keys", "_known", "_listed", "_quotes", "_stamps", "_values", "_zeros"
    )  # fmt: skip

    def __init__(self, t: _Table) -> None:
        self._held: list[Quote | None] = [None] * len(t.keys)
        self._values = np.array([_ABSENT] * len(t.keys), np.float64).reshape(-1, 4)
        self._stamps = np.zeros(len(t.keys), np.int64)
        self._keys = t.keys
        self._known = -1  # how many keys the mapping held when `_keys` were taken from it
        self._quotes: _Quotes | None = None  # what the last `read` returned
        self._zeros = False  # whether a price read is a zero (`_same`)
        # the mapping's keys (None: not listed) and quotes, in its order, at the last `read`
        self._listed: tuple[list[SlotKey] | None, list[Quote]] = (None, [])

    def read(self, t: _Table, perps: Mapping[SlotKey, Quote]) -> _Quotes:
        """This round's quotes; the arrays are the reader's, valid until its next `read`."""
        # The mapping as it was last round (a quiet book): its quotes, then its keys, listed in
        # its order without a lookup and compared as below. The keys are listed only when the
        # quotes compare equal (a round with new quotes pays for one list).
        quotes = list(perps.values())
        if quotes == self._listed[1] and self._same():
            keys = list(perps)
            if keys == self._listed[0]:
                return self._quotes  # type: ignore[return-value]  # _same: not None
            self._listed = (keys, quotes)
        else:
            self._listed = (None, quotes)
        if len(perps) != self._known:  # keys came (or went): take the mapping's own again
            own = {key: key for key in perps}
            self._keys = [None if k is None else own.get(k, k) for k in t.keys]
            self._known = len(perps)
        found = list(map(perps.get, self._keys))  # type: ignore[arg-type]  # padding: finds none
        # The same quotes as last round (a quiet round): `==` on the lists compares each pair as
        # one object first, then by value, in C.
        if found == self._held and self._same():
            self._held = found
            return self._quotes  # type: ignore[return-value]  # _same: not None
        fresh = np.fromiter(map(is_not, found, self._held), np.bool_, len(found))
        if fresh.any():
            at: slice | _I64 = slice(None)  # all of them: no picking
            got = found
            if not fresh.all():
                at = np.flatnonzero(fresh)
                got = [found[i] for i in at.tolist()]
            self._values[at] = _rows(got)
            stamps = [
                0 if q is None else q.recv_ts if q.venue_ts is None else q.venue_ts for q in got
            ]
            try:
                read = np.fromiter(stamps, np.int64, len(stamps))
            except OverflowError:  # a time beyond int64: as far off as _FAR
                cut = [-_FAR if s < -_FAR else _FAR if s > _FAR else s for s in stamps]
                read = np.fromiter(cut, np.int64, len(cut))
            self._stamps[at] = np.clip(read, -_FAR, _FAR)
            self._held = found
            self._zeros = bool((self._values[:, :3] == 0.0).any())
        shape = t.via.shape
        values = self._values.reshape(*shape, 4)
        bits = values[..., 3].astype(np.int64)
        self._quotes = _Quotes(
            held=bits > 0,
            flagged=(bits & _FLAG) > 0,
            stamp=self._stamps.reshape(shape),
            two=(bits & _TWO) > 0,
            priced=(bits & _PRICED) > 0,
            bid=values[..., 0],
            ask=values[..., 1],
            price=values[..., 2],
        )
        return self._quotes

    def _same(self) -> bool:
        """Whether quotes equal to those last read may be taken as read: there is a last read,
        and no zero price in it. Equal quotes read the same numbers but for the sign of a zero
        (0.0 == -0.0)."""
        return self._quotes is not None and not self._zeros


def _rows(quotes: list[Quote | None]) -> _F64:
    """(bid, ask, price, what is present as bits) per quote, None read as NaN: one list of rows
    and one flat conversion (numpy converts a list of rows or a list per attribute slower than
    the rows are made)."""
    rows = [
        _ABSENT
        if q is None
        else (
            nan if q.bid is None else q.bid,
            nan if q.ask is None else q.ask,
            nan if q.price is None else q.price,
            _HELD
            | (_TWO if q.bid is not None and q.ask is not None else 0)
            | (0 if q.price is None else _PRICED)
            | (0 if q.flag is None else _FLAG),
        )
        for q in quotes
    ]
    return np.fromiter(chain.from_iterable(rows), np.float64, 4 * len(rows)).reshape(-1, 4)


def _medians(values: _F64, counted: _Bool, used: _I64) -> _F64:
    """Per row, `formulas.median` of the counted values (`used` of them): sorted (stably, as
    `sorted`, for signed zeros), the middle one or the mean of the middle two. With one
    perpetual a market (the usual listing), the value itself where it counted: one call."""
    if values.shape[1] == 1:
        return np.where(counted[:, 0], values[:, 0], nan)
    rows = np.arange(len(values))
    kept = np.where(counted, values, nan)  # NaN sorts last
    odd = np.isnan(kept) & counted
    kept.sort(axis=1, kind="stable")
    high = kept[rows, used // 2]
    low = kept[rows, np.maximum(used - 1, 0) // 2]
    out = np.where(used % 2 == 1, high, (low + high) * 0.5)
    out = np.where(used == 0, nan, out)
    for r in np.flatnonzero(odd.any(axis=1)).tolist():  # a NaN that counted: sorted's order
        out[r] = median(
            [v for v, c in zip(values[r].tolist(), counted[r].tolist(), strict=True) if c]
        )
    return out


def _decays(elapsed: _I64, t: _Table, rows: _Bool) -> _F64:
    """`formulas.decay` per row of `rows` (1.0 elsewhere) with the market's basis half-life,
    computed once per distinct (elapsed, half-life): Python's `**` as before, not a numpy power,
    so a replay gives the same bits everywhere; nearly every market has the same two each
    round."""
    keep = np.ones(len(elapsed))
    if not rows.any():
        return keep
    every = rows.all()
    times = elapsed if every else elapsed[rows]
    halves = t.half_life if every else t.half_life[rows]
    if (times == times[0]).all() and (t.one_half_life or (halves == halves[0]).all()):
        keep[rows] = decay(int(times[0]), float(halves[0]))  # the common round
        return keep
    times, at_time = np.unique(times, return_inverse=True)
    halves, at_half = np.unique(halves, return_inverse=True)
    pairs, at_pair = np.unique(at_half * len(times) + at_time, return_inverse=True)
    times_l, halves_l = times.tolist(), halves.tolist()
    each = [decay(times_l[p % len(times_l)], halves_l[p // len(times_l)]) for p in pairs.tolist()]
    keep[rows] = np.array(each)[at_pair]
    return keep


def _funding_rates(t: _Table, premium: _F64) -> _F64:
    """`formulas.funding_rate` per row: premium + clip(interest - premium, -clamp, clamp),
    capped; `clip` as there (a bound replaces a value only if strictly beyond it)."""
    return _clip(premium + _clip(t.interest - premium, t.low_clamp, t.clamp), t.low_cap, t.cap)


def _clip(value: _F64, low: _F64, high: _F64) -> _F64:
    """`formulas.clip` per row."""
    value = np.where(low > value, low, value)
    return np.where(high < value, high, value)


def _left_behind(t: _Table, age: _I64, then: _F64, own: _F64, out: _Bool) -> None:
    """Into `out`, true for a perpetual quote `age` ms old by its venue time, older than the
    market's `lag_ms`, while the index (`own`, in the perpetual's own currency) has moved by more
    than `max_deviation` from `then`, its value in the first live round at or after the quote's
    venue time (`_Past.first_at_or_after`).

    The perps' analogue of the spot lag rule (docs/mark.md, Inputs): a perp venue silent behind
    an open socket keeps its last quote fresh until `max_age_ms`, and through a fast move the
    silent ones would hold the perp median, and the mark, at the level before it (up to
    `max_perp_deviation` from the index). The judge is the index, made of young spot quotes by
    the spot lag rule, not the young perps (one may be a venue's wick) nor the basis EMA (which
    the silent perps feed while they count: with a short half-life it followed them). A quiet
    contract counts while the index stays where it was when the contract last quoted.
    """
    np.greater(age, t.lag_ms[:, None], out=out)
    if out.any():  # most rounds hold no quote that old: no move to measure
        out &= abs(own - then) > t.lag_band[:, None] * then
