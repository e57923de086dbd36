"""Price policies the oracle is compared with, computed from the same quotes as it sees them.

* `clean_reference`: the median of every source's latest value that is fresh (within its slot's
  age limit, as the core ages it: the market's `max_age_ms` unless the slot or its on-chain feed
  sets its own) and not flagged, converted through the reference price of the route's
  leg market, and inside the market's price bounds (its own `min_price`/`max_price`, else the
  oracle's) as the core bounds the converted value. It is what "the median of all venues"
  means in the stress results and the yardstick for wrongful liquidations. It has no gates: it
  follows a crash at once, and it is only clean because the simulator also knows which values
  are fresh and unflagged.
* `plain_median`: the median of every source's latest value, whatever its age or flag, with
  stablecoins taken at par (a naive engine's shortcut).
* `single_venue`: one venue's latest value, at par, whatever its age or flag; a perpetual venue
  (in the market's `perp_sources`) gives its latest perpetual mid: an engine that marks to one
  contract venue's book.

Perpetual quotes never enter the reference or the plain median: the index is made of spot.
Quotes the core refuses at the door as not a price or out of time (crossed, NaN, zero or
negative, outside the oracle's band, from the future, older than the one held) are no value
for any policy: the naive ones ignore age and flags, not the quote's own validity.
"""

from __future__ import annotations

from statistics import median

from oracled.config import Config, MarketConfig, slot_max_age_ms
from oracled.model import Quote

__all__ = ["QuoteWatch"]


class QuoteWatch:
    """The latest valid value of every (source, pair) a market reads, with its time and flag."""

    __slots__ = (
        "_bounds",
        "_by_market",
        "_ceiling",
        "_floor",
        "_max_age",
        "_routes",
        "_skew",
        "_wanted",
        "cfg",
        "latest",
        "perps",
    )

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.latest: dict[tuple[str, str], tuple[float, int, str | None]] = {}
        self.perps: dict[tuple[str, str], tuple[float, int, str | None]] = {}
        # The (source, pair) keys the markets read: a tape may name any number of others.
        self._wanted = frozenset(
            (s.source, s.pair) for m in cfg.markets for s in (*m.sources, *m.perp_sources)
        )
        self._routes = {(r.from_, r.to): r.via for r in cfg.routes}
        self._by_market = {m.symbol: m for m in cfg.markets}
        self._floor, self._ceiling = cfg.oracle.min_price, cfg.oracle.max_price
        self._skew = cfg.oracle.max_clock_skew_ms
        # Per market, the bounds of a converted value (slot reason `bounds` in the core).
        self._bounds = {
            m.symbol: (m.min_price or self._floor, m.max_price or self._ceiling)
            for m in cfg.markets
        }
        # Per market, each slot's age limit, as the core's layout holds it.
        self._max_age = {
            m.symbol: [slot_max_age_ms(cfg, m, s) for s in m.sources] for m in cfg.markets
        }

    def on_quote(self, quote: Quote) -> None:
        """Hold the quote's value unless the core would refuse it at the door (docs/pricing.md
        §1): crossed, not finite or positive, outside the oracle's band (spot), from the future,
        or older than the value held."""
        if quote.kind not in ("spot", "perp") or (quote.source, quote.pair) not in self._wanted:
            return
        if quote.bid is not None and quote.ask is not None:
            if quote.bid > quote.ask:
                return
            value = (quote.bid + quote.ask) / 2
        elif quote.price is not None:
            value = quote.price
        else:
            return
        if not value > 0 or value == float("inf"):
            return
        if quote.kind == "spot" and not self._floor <= value <= self._ceiling:
            return
        venue_ts = quote.venue_ts
        if venue_ts is not None and venue_ts > quote.recv_ts + self._skew:
            return
        stamp = venue_ts if venue_ts is not None else quote.recv_ts
        held = self.latest if quote.kind == "spot" else self.perps
        key = (quote.source, quote.pair)
        before = held.get(key)
        if before is not None and stamp < before[1]:
            return
        held[key] = (value, stamp, quote.flag)

    def _route(self, market: MarketConfig, pair: str) -> tuple[bool, str | None, bool]:
        """How a source's pair prices the market, as the core converts it: (inverse pair, the
        leg market it converts through or None, whether that leg is listed the other way round).
        A pair that needs a leg the config does not route gives leg "" (never priced)."""
        base, quote = market.symbol.split("/")
        p_base, p_quote = pair.split("/")
        if (p_base, p_quote) == (quote, base):
            return True, None, False
        if p_quote == quote:
            return False, None, False
        via = self._routes.get((p_quote, quote), "")
        return False, via, via != f"{p_quote}/{quote}"

    def _at_par(self, market: MarketConfig, pair: str, value: float) -> float:
        """A value in the market's units with any conversion leg taken at par."""
        return 1.0 / value if self._route(market, pair)[0] else value

    def reference(self, now_ms: int) -> dict[str, float | None]:
        memo: dict[str, float | None] = {}

        def price(symbol: str) -> float | None:
            if symbol in memo:
                return memo[symbol]
            memo[symbol] = None  # a cycle (rejected by the config anyway) resolves to nothing
            market = self._by_market[symbol]
            values: list[float] = []
            floor, ceiling = self._bounds[symbol]
            for src, max_age in zip(market.sources, self._max_age[symbol], strict=True):
                held = self.latest.get((src.source, src.pair))
                if held is None:
                    continue
                value, stamp, flag = held
                if flag is not None or now_ms - stamp > max_age:
                    continue
                inverse, via, divide = self._route(market, src.pair)
                if inverse:
                    value = 1.0 / value
                if via is not None:
                    leg = price(via) if via in self._by_market else None
                    if leg is None:
                        continue
                    value = value / leg if divide else value * leg
                if floor <= value <= ceiling:
                    values.append(value)
            memo[symbol] = median(values) if values else None
            return memo[symbol]

        return {m.symbol: price(m.symbol) for m in self.cfg.markets}

    def plain_median(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for market in self.cfg.markets:
            values = [
                self._at_par(market, src.pair, held[0])
                for src in market.sources
                if (held := self.latest.get((src.source, src.pair))) is not None
            ]
            out[market.symbol] = median(values) if values else None
        return out

    def single_venue(self, venue: str) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for market in self.cfg.markets:
            value: float | None = next(
                (
                    self._at_par(market, s.pair, self.latest[(s.source, s.pair)][0])
                    for s in market.sources
                    if s.source == venue and (s.source, s.pair) in self.latest
                ),
                None,
            )
            if value is None:
                value = next(
                    (
                        self.perps[(s.source, s.pair)][0]
                        for s in market.perp_sources
                        if s.source == venue and (s.source, s.pair) in self.perps
                    ),
                    None,
                )
            out[market.symbol] = value
        return out
