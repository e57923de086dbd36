"""The book: the latest quote of every (market, source slot), held in preallocated arrays.

`Layout` is computed once from the config: which slot each (source, pair, kind) feeds, how a
slot's quote converts into the market's units (inversion, conversion leg), and the order in which
markets must be computed so that a conversion leg is priced before the markets that use it.

`Book.ingest` is the hot path: it validates one quote (finite, positive, sane, not crossed, not from
the future) and writes its mid price into every slot it feeds. Invalid quotes are dropped with a
reason and counted; they never reach a price.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from oracled.config import Config, resolution_floor, slot_max_age_ms
from oracled.model import Quote

__all__ = [
    "FLAG_BASE",
    "MAX_FLAGS",
    "NAMED_OTHER_SOURCES",
    "OTHER_SOURCES",
    "Book",
    "DropReason",
    "Layout",
    "SlotKey",
]

SlotKey = tuple[str, str, str]  # (source id, pair, kind)
#: Slot outcome codes below this are the core's own (core.SLOT_REASONS); source flags follow.
FLAG_BASE = 6
MAX_FLAGS = 100
#: Sources the config does not define that `Book.drops` counts by name, the first it meets (a
#: tape of another config); the quotes of any more are counted under OTHER_SOURCES: a tape
#: (replay, stress) can name any number of them, and a key each would grow the counts for ever.
NAMED_OTHER_SOURCES = 16
OTHER_SOURCES = "(other sources)"  # no source id is spelled so (`config._ID`)
_INF = math.inf
#: Below this a value has no finite reciprocal to feed an inverted pair's slot (1 / 5e-324 is
#: inf); only a global band reaching down to subnormals lets one in.
_MIN_INVERTIBLE = 1e-308


class DropReason(StrEnum):
    """Why a quote was refused at the door; each is counted per source."""

    UNKNOWN_SYMBOL = "unknown_symbol"
    NO_PRICE = "no_price"
    NOT_FINITE = "not_finite"
    NON_POSITIVE = "non_positive"
    ABSURD = "absurd"
    CROSSED = "crossed"
    FUTURE = "future"
    OUT_OF_ORDER = "out_of_order"


@dataclass(frozen=True, slots=True)
class Layout:
    """Static shape of the core, derived from the config once."""

    markets: tuple[str, ...]
    decimals: npt.NDArray[np.int64]
    slot_count: npt.NDArray[np.int64]
    slot_ids: tuple[tuple[str, ...], ...]
    slot_pairs: tuple[tuple[str, ...], ...]
    slot_keys: tuple[tuple[SlotKey, ...], ...]  # (source, pair, kind) of every slot, per market
    slot_via: tuple[tuple[str | None, ...], ...]  # conversion leg market of every slot, or None
    weight: npt.NDArray[np.float64]  # (M, S), 0 where no slot
    configured: npt.NDArray[np.bool_]  # (M, S)
    route_via: npt.NDArray[np.int64]  # (M, S), market index of the conversion leg or -1
    route_invert: npt.NDArray[np.bool_]  # (M, S), divide by the leg's price instead of multiply
    layers: tuple[npt.NDArray[np.int64], ...]  # market indices, legs before their users
    feeds: dict[SlotKey, tuple[tuple[int, bool], ...]]  # key -> ((flat slot, invert pair), ...)
    perp_feeds: frozenset[SlotKey]  # perpetual instruments kept for the mark price, no vote
    min_sources: npt.NDArray[np.int64]
    max_age_ms: npt.NDArray[np.int64]  # (M, S): per slot (on-chain feeds have their own limits)
    lag_ms: npt.NDArray[np.int64]  # quotes older than this can be outvoted by younger ones
    max_deviation: npt.NDArray[np.float64]
    circuit_breaker: npt.NDArray[np.float64]
    confidence_limit: npt.NDArray[np.float64]
    price_floor: npt.NDArray[np.float64]
    price_ceiling: npt.NDArray[np.float64]
    resolution_floor: npt.NDArray[np.float64]  # below it a price is not published live

    @property
    def width(self) -> int:
        return int(self.weight.shape[1])

    @classmethod
    def from_config(cls, cfg: Config) -> Layout:
        markets = tuple(m.symbol for m in cfg.markets)
        index = {sym: i for i, sym in enumerate(markets)}
        width = max(len(m.sources) for m in cfg.markets)
        shape = (len(markets), width)
        weight = np.zeros(shape)
        configured = np.zeros(shape, dtype=bool)
        route_via = np.full(shape, -1, dtype=np.int64)
        route_invert = np.zeros(shape, dtype=bool)
        routes = {(r.from_, r.to): r.via for r in cfg.routes}
        feeds: dict[SlotKey, list[tuple[int, bool]]] = {}
        depends: dict[int, set[int]] = {i: set() for i in range(len(markets))}
        for i, market in enumerate(cfg.markets):
            base, quote = market.symbol.split("/")
            for j, ms in enumerate(market.sources):
                weight[i, j] = ms.weight
                configured[i, j] = True
                p_base, p_quote = ms.pair.split("/")
                invert_pair = (p_base, p_quote) == (quote, base)
                if not invert_pair and p_quote != quote:
                    via = routes[(p_quote, quote)]
                    route_via[i, j] = index[via]
                    route_invert[i, j] = via != f"{p_quote}/{quote}"
                    depends[i].add(index[via])
                feeds.setdefault((ms.source, ms.pair, ms.kind), []).append(
                    (i * width + j, invert_pair)
                )
        depth: dict[int, int] = {}

        def level(i: int) -> int:
            if i not in depth:
                depth[i] = 1 + max((level(d) for d in depends[i]), default=-1)
            return depth[i]

        for i in range(len(markets)):
            level(i)
        layers = tuple(
            np.array(sorted(i for i, d in depth.items() if d == lv), dtype=np.int64)
            for lv in range(max(depth.values()) + 1)
        )
        glob = cfg.oracle
        max_age = np.full(shape, np.iinfo(np.int64).max // 4, dtype=np.int64)
        for i, market in enumerate(cfg.markets):
            for j, ms in enumerate(market.sources):
                max_age[i, j] = slot_max_age_ms(cfg, market, ms)
        return cls(
            markets=markets,
            decimals=np.array([-m.price_exponent for m in cfg.markets], dtype=np.int64),
            slot_count=np.array([len(m.sources) for m in cfg.markets], dtype=np.int64),
            slot_ids=tuple(tuple(s.source for s in m.sources) for m in cfg.markets),
            slot_pairs=tuple(tuple(s.pair for s in m.sources) for m in cfg.markets),
            slot_keys=tuple(
                tuple((s.source, s.pair, s.kind) for s in m.sources) for m in cfg.markets
            ),
            slot_via=tuple(
                tuple(markets[v] if v >= 0 else None for v in row[: len(m.sources)])
                for m, row in zip(cfg.markets, route_via.tolist(), strict=True)
            ),
            weight=weight,
            configured=configured,
            route_via=route_via,
            route_invert=route_invert,
            layers=layers,
            feeds={k: tuple(v) for k, v in feeds.items()},
            perp_feeds=frozenset(
                (ps.source, ps.pair, ps.kind) for m in cfg.markets for ps in m.perp_sources
            ),
            min_sources=np.array([m.min_sources for m in cfg.markets], dtype=np.int64),
            max_age_ms=max_age,
            lag_ms=np.array([m.lag_ms for m in cfg.markets], dtype=np.int64),
            max_deviation=np.array([m.max_deviation for m in cfg.markets]),
            circuit_breaker=np.array([m.circuit_breaker for m in cfg.markets]),
            confidence_limit=np.array([m.confidence_limit for m in cfg.markets]),
            # Never below one unit of the market's last decimal: a value under it could only
            # be published as zero (0.004 at two decimals is "0.00").
            price_floor=np.array(
                [max(m.min_price or glob.min_price, 10.0**m.price_exponent) for m in cfg.markets]
            ),
            price_ceiling=np.array([m.max_price or glob.max_price for m in cfg.markets]),
            resolution_floor=np.array([resolution_floor(m.price_exponent) for m in cfg.markets]),
        )


class Book:
    """Latest valid quote per slot. Mutated only by `ingest`; read by the round."""

    __slots__ = (
        "_ceiling",
        "_feeds",
        "_flag_codes",
        "_flat_flag",
        "_flat_mid",
        "_flat_stamp",
        "_floor",
        "_named",
        "_named_limit",
        "_perp_only",
        "_perps",
        "_single",
        "_skew",
        "drops",
        "flag",
        "flag_names",
        "latest",
        "layout",
        "mid",
        "perps",
        "stamp",
    )

    def __init__(self, layout: Layout, cfg: Config) -> None:
        self.layout = layout
        shape = layout.weight.shape
        self.mid = np.full(shape, np.nan)  # in market units before any conversion leg
        self.stamp = np.full(shape, np.iinfo(np.int64).min // 2, dtype=np.int64)  # age reference
        # Source flags: 0 for none, else FLAG_BASE + index into flag_names (grown on first use).
        self.flag = np.zeros(shape, dtype=np.int8)
        self.flag_names: list[str] = []
        self._flag_codes: dict[str, int] = {}
        self.latest: dict[SlotKey, Quote] = {}
        self.drops: Counter[tuple[str, str]] = Counter()
        self._named = set(cfg.sources)  # the sources `drops` names (`counted_as`)
        self._named_limit = len(self._named) + NAMED_OTHER_SOURCES
        self._feeds = layout.feeds
        self._skew = cfg.oracle.max_clock_skew_ms
        self._floor = cfg.oracle.min_price
        self._ceiling = cfg.oracle.max_price
        # The straight lines check the sides against the band, not their mid: under a band past
        # half the float limit two sides inside it (1e308, 1.7e308) have an infinite mid, so
        # every quote then takes the checked path, which drops it as absurd.
        straight = math.isfinite(self._ceiling + self._ceiling)
        # Feeds of exactly one slot, not inverted, not also a perpetual of some market's mark:
        # the straight path of `ingest` (flat index).
        self._single = {
            key: slots[0][0]
            for key, slots in layout.feeds.items()
            if len(slots) == 1 and not slots[0][1] and key not in layout.perp_feeds and straight
        }
        self._perps = layout.perp_feeds
        # A voting slot goes first.
        self._perp_only = layout.perp_feeds - layout.feeds.keys() if straight else frozenset()
        self.perps: dict[SlotKey, Quote] = {}  # latest valid perpetual quote, for the mark price
        # Flat memoryviews of the arrays, made once: the hot path reads and writes single slots,
        # which costs a third of numpy's item access (the arrays are never reallocated).
        self._flat_mid = self.mid.reshape(-1).data.cast("B").cast("d")
        self._flat_stamp = self.stamp.reshape(-1).data.cast("B").cast("q")
        self._flat_flag = self.flag.reshape(-1).data.cast("B").cast("b")

    def ingest(self, quote: Quote) -> DropReason | None:
        """Validate one quote and store it; return the drop reason, or None if it was stored.

        The hot path: one call per venue frame. A quote of a feed with one plain slot (the usual
        case), with bid and ask inside the price bounds and no flag, takes the straight line
        below; a perpetual for the mark price has its own, written out here rather than called
        (a Python call per perpetual frame cost more than its checks); anything else, including
        every quote that may be dropped for its prices, goes through `_ingest_checked`, which
        names the reason.
        """
        key = (quote.source, quote.pair, quote.kind)
        flat = self._single.get(key)
        bid = quote.bid
        ask = quote.ask
        if flat is None:
            # A perpetual for the mark price: its own straight line for the usual quote, both
            # sides inside the global price band, any last price finite and positive, the bid not
            # above the ask, not from the future, not older than the one held; else the full path.
            if key in self._perp_only:
                recv_ts = quote.recv_ts
                venue_ts = quote.venue_ts
                if (
                    bid is not None
                    and ask is not None
                    and self._floor <= bid <= ask <= self._ceiling
                    and (quote.price is None or 0.0 < quote.price < _INF)
                    and (venue_ts is None or venue_ts <= recv_ts + self._skew)
                ):
                    # `_keep_perp` inlined: not older than the one held.
                    stamp = recv_ts if venue_ts is None else venue_ts
                    held = self.perps.get(key)
                    if held is None or stamp >= (
                        held.recv_ts if held.venue_ts is None else held.venue_ts
                    ):
                        self.perps[key] = quote
                        return None
            # The full path names the reason (`out_of_order` for one older than the one held).
            return self._ingest_checked(key, self._feeds.get(key), quote)
        # One chained comparison rejects a missing side, NaN, +-inf, zero, negatives, a crossed
        # book and both bounds (the mid of a pair inside the bounds is inside them).
        if (
            bid is None
            or ask is None
            or quote.flag is not None
            or not self._floor <= bid <= ask <= self._ceiling
        ):
            return self._ingest_checked(key, self._feeds.get(key), quote)
        recv_ts = quote.recv_ts
        venue_ts = quote.venue_ts
        if venue_ts is None:
            stamp = recv_ts
        elif venue_ts > recv_ts + self._skew:
            self.drops[(quote.source, DropReason.FUTURE)] += 1
            return DropReason.FUTURE
        else:
            stamp = venue_ts
        try:
            if stamp < self._flat_stamp[flat]:
                self.drops[(quote.source, DropReason.OUT_OF_ORDER)] += 1
                return DropReason.OUT_OF_ORDER
            # First: the one write that refuses a time that is no int.
            self._flat_stamp[flat] = stamp
        except TypeError:
            return self._ingest_checked(key, self._feeds.get(key), quote)
        self._flat_mid[flat] = (bid + ask) * 0.5
        self._flat_flag[flat] = 0
        self.latest[key] = quote
        return None

    def _keep_perp(self, key: SlotKey, quote: Quote) -> DropReason | None:
        """Hold a checked perpetual quote unless it is older than the one held (a resent frame,
        a REST answer behind the stream): the mark never goes back to an older price."""
        held = self.perps.get(key)
        if held is not None and _stamp(quote) < _stamp(held):
            return DropReason.OUT_OF_ORDER
        self.perps[key] = quote
        return None

    def _ingest_checked(
        self, key: SlotKey, slots: tuple[tuple[int, bool], ...] | None, quote: Quote
    ) -> DropReason | None:
        """The full path: every check in order, the drop counted with its reason."""
        reason = self._check(key, slots, quote)
        if reason is not None:
            self.drops[(self.counted_as(quote.source), reason)] += 1
        return reason

    def counted_as(self, source: str) -> str:
        """The source name a drop of `source` is counted under: itself if the config defines
        it or it is one of the first NAMED_OTHER_SOURCES others met, else OTHER_SOURCES."""
        named = self._named
        if source in named:
            return source
        if len(named) < self._named_limit:
            named.add(source)
            return source
        return OTHER_SOURCES

    def _check(
        self, key: SlotKey, slots: tuple[tuple[int, bool], ...] | None, quote: Quote
    ) -> DropReason | None:
        if slots is None:
            if key in self._perps:
                return self._check_perp(key, quote)
            return DropReason.UNKNOWN_SYMBOL
        # A perpetual that also votes is judged as one that does not (`_check_perp`), so that no
        # quote is kept in one configuration and dropped in the other: every value it carries
        # counts, a last price beside both sides, or a lone side beside a price, too.
        bid, ask = quote.bid, quote.ask
        if bid is not None and ask is not None:
            if not (math.isfinite(bid) and math.isfinite(ask)):
                return DropReason.NOT_FINITE
            price = quote.price
            if price is not None and not 0.0 < price < _INF and key in self._perps:
                return _bad_values(quote)
            if bid <= 0.0 or ask <= 0.0:
                return DropReason.NON_POSITIVE
            if bid > ask:
                return DropReason.CROSSED
            mid = (float(bid) + float(ask)) * 0.5  # the memoryview below takes floats only
        elif quote.price is not None:
            if (bid is not None or ask is not None) and key in self._perps:
                reason = _bad_values(quote)
                if reason is not None:
                    return reason
            mid = float(quote.price)
            if not math.isfinite(mid):
                return DropReason.NOT_FINITE
            if mid <= 0.0:
                return DropReason.NON_POSITIVE
        else:
            return DropReason.NO_PRICE
        if not self._floor <= mid <= self._ceiling:
            return DropReason.ABSURD
        if mid < _MIN_INVERTIBLE and any(invert for _, invert in slots):
            return DropReason.ABSURD
        venue_ts = quote.venue_ts
        if venue_ts is None:
            stamp = int(quote.recv_ts)  # the memoryviews below take ints only
        elif venue_ts > quote.recv_ts + self._skew:
            return DropReason.FUTURE
        else:
            stamp = int(venue_ts)
        flat_stamp = self._flat_stamp
        # Every slot of a feed, not the first: after a reload a new market's slot on a kept
        # feed holds nothing yet, and the others still hold the time an older quote must not pass.
        for flat, _ in slots:
            if stamp < flat_stamp[flat]:
                return DropReason.OUT_OF_ORDER
        flat_mid, flat_flag = self._flat_mid, self._flat_flag
        flag = 0 if quote.flag is None else self._flag_code(quote.flag)
        for flat, invert in slots:
            flat_mid[flat] = 1.0 / mid if invert else mid
            flat_stamp[flat] = stamp
            flat_flag[flat] = flag
        self.latest[key] = quote
        if key in self._perps:  # a perpetual that votes is a mark input all the same
            self._keep_perp(key, quote)
        return None

    def _flag_code(self, name: str) -> int:
        code = self._flag_codes.get(name)
        if code is None:
            if len(self.flag_names) >= MAX_FLAGS:
                name = "flagged"  # a misbehaving source cannot grow the table without bound
                code = self._flag_codes.get(name)
            if code is None:
                code = FLAG_BASE + len(self.flag_names)
                self.flag_names.append(name)
                self._flag_codes[name] = code
        return code

    def _check_perp(self, key: SlotKey, quote: Quote) -> DropReason | None:
        """Keep a perpetual quote for the mark price after the same sanity checks."""
        bid, ask, mid = quote.bid, quote.ask, quote.price
        if mid is None and (bid is None or ask is None):
            # A lone bid or ask is no price, as on spot and for a perpetual that also votes: it
            # never displaces the quote held (docs/pricing.md section 1).
            return DropReason.NO_PRICE
        reason = _bad_values(quote)
        if reason is not None:
            return reason
        if bid is not None and ask is not None:
            if bid > ask:
                return DropReason.CROSSED
            mid = (bid + ask) * 0.5
        assert mid is not None  # for mypy: a price, or both sides (above)
        # The value the mark reads is inside the global band, as on spot (two finite sides near
        # the float limit make an infinite mid).
        if not self._floor <= mid <= self._ceiling:
            return DropReason.ABSURD
        if quote.venue_ts is not None and quote.venue_ts > quote.recv_ts + self._skew:
            return DropReason.FUTURE
        return self._keep_perp(key, quote)


def _bad_values(quote: Quote) -> DropReason | None:
    """Why a perpetual quote's values cannot be kept (one not finite or not positive), or None:
    each value it carries is checked, those the mark will not read too."""
    values = [v for v in (quote.price, quote.bid, quote.ask) if v is not None]
    if not all(math.isfinite(v) for v in values):
        return DropReason.NOT_FINITE
    if not all(v > 0.0 for v in values):
        return DropReason.NON_POSITIVE
    return None


def _stamp(quote: Quote) -> float:
    """The time a quote's age is counted from: the venue's event time where sent."""
    return quote.recv_ts if quote.venue_ts is None else quote.venue_ts
