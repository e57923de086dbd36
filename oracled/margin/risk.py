"""Pure margin arithmetic: tiered margin, equity, states, liquidation prices.

Nothing here keeps state or reads a clock: an assessment is a function of an account, the
instrument and asset specs, and the prices resolved for one decision time (docs/margin.md).

    equity       = sum over collateral of amount x index x (1 - haircut)   (haircut on assets held,
                   none on a negative balance) + sum of cross positions' qty x (price - entry)
    margin(N)    = sum over brackets of rate x the part of notional N inside the bracket
    maintenance  = sum over instruments of margin(|net qty| x price), x (1 + buffer) on a last
                   good price; warning and reduce-only levels weigh each bracket by its multiples
    state        = healthy if equity >= warning level, warning if >= reduce-only level,
                   reduce_only if >= maintenance, else liquidatable (each bar less a
                   billionth of it: float rounding never puts an account on it below it;
                   a notional on its `max_notional` is not over it, alike)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from oracled.margin.config import AccountsFile, StrategyConfig, Tier
from oracled.margin.prices import Frozen, PriceRef, Resolved

__all__ = [
    "STATES",
    "Account",
    "Assessment",
    "Levels",
    "Position",
    "assess_cross",
    "assess_isolated",
    "liquidation_price",
    "settle",
    "tier_levels",
]

STATES = ("healthy", "warning", "reduce_only", "liquidatable")
Prices = Mapping[str, Resolved | Frozen]


@dataclass(slots=True)
class Position:
    instrument: str
    qty: float
    entry: float
    strategy: str | None = None
    isolated_margin: float | None = None

    @property
    def isolated(self) -> bool:
        return self.isolated_margin is not None


@dataclass(slots=True)
class Account:
    """An account's mutable state in the engine: balances per asset and open positions."""

    id: str
    cash: dict[str, float]
    positions: list[Position]
    strategies: dict[str, StrategyConfig] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Levels:
    """Margin requirements in the numeraire for one notional, or a sum of them."""

    initial: float = 0.0
    maintenance: float = 0.0
    warning: float = 0.0
    reduce_only: float = 0.0

    def __add__(self, other: Levels) -> Levels:
        return Levels(
            self.initial + other.initial,
            self.maintenance + other.maintenance,
            self.warning + other.warning,
            self.reduce_only + other.reduce_only,
        )

    def scaled(self, factor: float) -> Levels:
        """The maintenance-based levels times `factor` (initial margin is not a liquidation bar)."""
        return Levels(
            self.initial,
            self.maintenance * factor,
            self.warning * factor,
            self.reduce_only * factor,
        )


def tier_levels(tiers: Sequence[Tier], notional: float) -> Levels:
    """Margin for `notional`, bracket by bracket: larger positions pay higher rates at the top.

    Marginal brackets keep the requirement continuous: one more unit of notional never makes
    the whole position jump to a higher rate.
    """
    out = Levels()
    low = 0.0
    for tier in tiers:
        high = math.inf if tier.up_to is None else tier.up_to
        part = min(notional, high) - low
        if part <= 0:
            break
        mm = part * tier.maintenance
        out = out + Levels(part * tier.initial, mm, mm * tier.warning, mm * tier.reduce_only)
        low = high
    return out


@dataclass(frozen=True, slots=True)
class Assessment:
    """An account's (or an isolated position's) standing at one decision time."""

    scope: str  # "cross" or "isolated:<instrument>"
    state: str  # one of STATES, or "frozen" when an exposed market has no usable price
    equity: float
    levels: Levels
    reasons: tuple[str, ...]
    drivers: tuple[PriceRef, ...]
    frozen: tuple[tuple[str, str], ...] = ()  # (market, reason)


#: Equity and levels are sums of binary floats: an account that decimal arithmetic puts exactly
#: on a level can come out just below it (0.01 x 10,007 is 100.07000000000001, not 100.07).
#: Below a level means below it by more than this fraction of it: rounding, not money.
ROUNDING = 1e-9


def _at_least(equity: float, level: float) -> bool:
    return equity >= level - ROUNDING * abs(level)


def _over(notional: float, limit: float) -> bool:
    """Over a concentration limit by more than rounding: 0.1 x 64,064 is 6,406.400000000001."""
    return notional > limit + ROUNDING * abs(limit)


def _state(equity: float, levels: Levels) -> str:
    if _at_least(equity, levels.warning):
        return "healthy"
    if _at_least(equity, levels.reduce_only):
        return "warning"
    if _at_least(equity, levels.maintenance):
        return "reduce_only"
    return "liquidatable"


def settle(a: Assessment, previous: str, band: float) -> str:
    """The state to report, given the one reported before: a worse state at once, a better one
    only once equity clears its bar by `band` (a fraction of the warning or reduce-only level).

    Without it an account whose equity sits on a bar is called and cleared at every step the
    price ticks across it. The band never touches maintenance: liquidation stays on the bare
    bar, and a pool is never held `liquidatable` after a liquidation left it above it.
    """
    if a.state not in STATES or previous not in STATES:
        return a.state
    rank = STATES.index
    if rank(a.state) >= rank(previous):
        return a.state
    lv = a.levels
    widened = Levels(
        lv.initial, lv.maintenance, lv.warning * (1 + band), lv.reduce_only * (1 + band)
    )
    # The worse of the state on the widened bars and the bare one (which also carries a
    # concentration limit), but no worse than before: recovering is never a step down.
    climbed = max(rank(a.state), rank(_state(a.equity, widened)))
    return STATES[min(climbed, rank(previous))]


def _markets(account: Account, spec: AccountsFile, isolated: Position | None) -> list[str]:
    if isolated is not None:
        return [spec.instruments[isolated.instrument].market]
    out = [spec.instruments[p.instrument].market for p in account.positions if not p.isolated]
    for asset, amount in account.cash.items():
        market = spec.assets[asset].market
        if market is not None and amount != 0:
            out.append(market)
    return list(dict.fromkeys(out))


def _gather(
    markets: list[str], prices: Prices
) -> tuple[dict[str, Resolved], tuple[PriceRef, ...], tuple[tuple[str, str], ...]]:
    usable: dict[str, Resolved] = {}
    refs: list[PriceRef] = []
    frozen: list[tuple[str, str]] = []
    for market in markets:
        got = prices.get(market)
        if got is None:
            frozen.append((market, "no_report"))
            continue
        refs.append(got.ref)
        if isinstance(got, Frozen):
            frozen.append((market, got.reason))
        else:
            usable[market] = got
    return usable, tuple(refs), tuple(frozen)


def assess_cross(account: Account, spec: AccountsFile, prices: Prices) -> Assessment:
    """The cross pool: collateral plus every non-isolated position, netted per instrument."""
    markets = _markets(account, spec, None)
    usable, refs, frozen = _gather(markets, prices)
    if frozen:
        return Assessment("cross", "frozen", math.nan, Levels(), (), refs, frozen)
    equity = 0.0
    for asset, amount in account.cash.items():
        if amount == 0:
            continue  # an empty balance exposes the account to nothing
        a = spec.assets[asset]
        price = 1.0 if a.market is None else usable[a.market].value
        equity += amount * price * ((1.0 - a.haircut) if amount > 0 else 1.0)
    net: dict[str, float] = {}
    for p in account.positions:
        if p.isolated:
            continue
        price = usable[spec.instruments[p.instrument].market].position_value
        equity += p.qty * (price - p.entry)
        net[p.instrument] = net.get(p.instrument, 0.0) + p.qty
    levels = Levels()
    reasons: list[str] = []
    for name, qty in net.items():
        inst = spec.instruments[name]
        got = usable[inst.market]
        notional = abs(qty) * got.position_value
        levels = levels + tier_levels(inst.tiers, notional).scaled(1.0 + got.buffer)
        if inst.max_notional is not None and _over(notional, inst.max_notional):
            reasons.append(f"concentration:{name}")
    reasons.extend(_strategy_breaches(account, spec, usable))
    state = _state(equity, levels)
    if state in ("healthy", "warning") and any(r.startswith("concentration:") for r in reasons):
        state = "reduce_only"  # over the concentration limit: may only shrink the position
    return Assessment("cross", state, equity, levels, tuple(reasons), refs)


def _strategy_breaches(
    account: Account, spec: AccountsFile, usable: Mapping[str, Resolved]
) -> list[str]:
    """Each strategy against its own limits: gross notional and virtual balance vs its margin."""
    out: list[str] = []
    for name, limits in account.strategies.items():
        equity = limits.balance
        gross = 0.0
        net: dict[str, float] = {}
        for p in account.positions:
            if p.strategy != name or p.isolated:
                continue
            price = usable[spec.instruments[p.instrument].market].position_value
            equity += p.qty * (price - p.entry)
            gross += abs(p.qty) * price
            net[p.instrument] = net.get(p.instrument, 0.0) + p.qty
        maintenance = sum(
            tier_levels(
                spec.instruments[i].tiers,
                abs(q) * usable[spec.instruments[i].market].position_value,
            ).maintenance
            for i, q in net.items()
        )
        if limits.max_notional is not None and _over(gross, limits.max_notional):
            out.append(f"strategy:{name}:notional")
        if not _at_least(equity, maintenance):
            out.append(f"strategy:{name}:margin")
    return out


def assess_isolated(position: Position, spec: AccountsFile, prices: Prices) -> Assessment:
    """An isolated position on its own: its set-aside margin plus its PnL against its margin."""
    inst = spec.instruments[position.instrument]
    usable, refs, frozen = _gather([inst.market], prices)
    scope = f"isolated:{position.instrument}"
    if frozen:
        return Assessment(scope, "frozen", math.nan, Levels(), (), refs, frozen)
    got = usable[inst.market]
    assert position.isolated_margin is not None
    equity = position.isolated_margin + position.qty * (got.position_value - position.entry)
    levels = tier_levels(inst.tiers, abs(position.qty) * got.position_value)
    levels = levels.scaled(1.0 + got.buffer)
    return Assessment(scope, _state(equity, levels), equity, levels, (), refs)


def liquidation_price(
    account: Account, spec: AccountsFile, prices: Mapping[str, Resolved], market: str
) -> float | None:
    """The price of `market` at which the cross equity meets maintenance, others held fixed.

    Found by bisection on equity - maintenance (piecewise linear in the price); None when it
    does not change sign between a millionth and a million times the current price.
    """
    base = prices[market]

    def gap(price: float) -> float:
        moved = dict(prices)
        moved[market] = Resolved(price, price, base.ref, base.buffer)
        a = assess_cross(account, spec, moved)
        return a.equity - a.levels.maintenance

    lo, hi = base.position_value * 1e-6, base.position_value * 1e6
    g_lo, g_hi = gap(lo), gap(hi)
    if g_lo == 0:
        return lo
    if (g_lo > 0) == (g_hi > 0):
        return None
    for _ in range(200):
        mid = math.sqrt(lo * hi) if hi / lo > 4 else (lo + hi) / 2
        g_mid = gap(mid)
        if (g_mid > 0) == (g_lo > 0):
            lo, g_lo = mid, g_mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return (lo + hi) / 2
