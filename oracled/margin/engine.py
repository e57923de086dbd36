"""The margin engine: accounts, the latest reports, and the decisions taken at each step.

`MarginEngine.step(now_ms)` is deterministic: the same accounts, the same reports and the same
decision times give the same decisions. It reads no clock and does no I/O; the service mode and
the stress simulator feed it reports and call it.

Liquidation (docs/margin.md): a liquidatable cross pool closes its instruments one at a time,
the largest maintenance first, until it is no longer liquidatable; an isolated position closes on
its own and its loss never reaches the cross pool. A pool left below zero is a shortfall: the
insurance fund pays first, then ranked counterparties are deleveraged at the bankruptcy price.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from oracled.margin.config import AccountsFile
from oracled.margin.decisions import (
    Decision,
    Deleverage,
    FreezeCall,
    Liquidation,
    MarginCall,
    Shortfall,
    UnfreezeCall,
)
from oracled.margin.prices import Frozen, PriceBook, PriceRef, PriceView, Resolved
from oracled.margin.risk import (
    Account,
    Assessment,
    Position,
    assess_cross,
    assess_isolated,
    settle,
    tier_levels,
)

__all__ = ["MarginEngine"]

Prices = dict[str, Resolved | Frozen]


class MarginEngine:
    """Holds the accounts and the insurance fund; turns reports into decisions."""

    def __init__(self, spec: AccountsFile) -> None:
        self.spec = spec
        self.policy = spec.policy
        self.book = PriceBook(spec.policy)
        self.numeraire = spec.numeraire
        self.markets = spec.markets()
        self.accounts: dict[str, Account] = {
            a.id: Account(
                id=a.id,
                cash=dict(a.collateral),
                positions=[
                    Position(p.instrument, p.qty, p.entry, p.strategy, p.isolated_margin)
                    for p in a.positions
                ],
                strategies=dict(a.strategies),
            )
            for a in spec.accounts
        }
        self.insurance_fund = spec.policy.insurance_fund
        # Last standing per (account, scope): state and reasons; and the frozen markets.
        self._standing: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}
        self._frozen: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}

    def on_report(self, view: PriceView, *, in_order: bool = False) -> None:
        """Take a report; `in_order`: from one stream, so newer than any before it
        (PriceBook.update)."""
        self.book.update(view, in_order=in_order)

    def prices(self, now_ms: int) -> Prices:
        return {m: self.book.resolve(m, now_ms) for m in self.markets}

    def state(self, account: str, scope: str = "cross") -> str:
        """The last state decided for an account's pool (healthy until told otherwise)."""
        return self._standing.get((account, scope), ("healthy", ()))[0]

    def step(self, now_ms: int) -> list[Decision]:
        """Assess every account at `now_ms` and act: calls, freezes, liquidations, shortfalls."""
        prices = self.prices(now_ms)
        out: list[Decision] = []
        for account in self.accounts.values():
            for pos in [p for p in account.positions if p.isolated]:
                a = assess_isolated(pos, self.spec, prices)
                out.extend(self._transition(account.id, a, now_ms, prices))
                if a.state == "liquidatable":
                    out.extend(self._liquidate_isolated(account, pos, a, prices, now_ms))
            a = assess_cross(account, self.spec, prices)
            out.extend(self._transition(account.id, a, now_ms, prices))
            if a.state == "liquidatable":
                out.extend(self._liquidate_cross(account, a, prices, now_ms))
        return out

    # -- standing ---------------------------------------------------------------------------

    def _transition(
        self, account: str, a: Assessment, now_ms: int, prices: Prices
    ) -> Iterable[Decision]:
        key = (account, a.scope)
        if a.state == "frozen":
            if self._frozen.get(key) != a.frozen:
                self._frozen[key] = a.frozen
                paused = max(
                    (p.paused_ms for m, _ in a.frozen if isinstance(p := prices.get(m), Frozen)),
                    default=0,
                )
                yield FreezeCall(
                    ts=now_ms,
                    account=account,
                    scope=a.scope,
                    markets=[m for m, _ in a.frozen],
                    reasons=[r for _, r in a.frozen],
                    paused_ms=paused,
                    drivers=list(a.drivers),
                )
            return
        if self._frozen.pop(key, None):
            yield UnfreezeCall(ts=now_ms, account=account, scope=a.scope, drivers=list(a.drivers))
        previous = self._standing.get(key, ("healthy", ()))
        current = (settle(a, previous[0], self.policy.call_hysteresis), a.reasons)
        if current != previous:
            self._standing[key] = current
            yield MarginCall(
                ts=now_ms,
                account=account,
                scope=a.scope,
                state=current[0],
                previous=previous[0],
                equity=a.equity,
                maintenance=a.levels.maintenance,
                initial=a.levels.initial,
                reasons=list(a.reasons),
                drivers=list(a.drivers),
            )

    # -- liquidation ------------------------------------------------------------------------

    def _exec_price(self, price: float, qty: float) -> float:
        """Closing a long sells below the price, closing a short buys above it."""
        slip = self.policy.liquidation_slippage
        return price * (1.0 - slip) if qty > 0 else price * (1.0 + slip)

    def _liquidate_isolated(
        self, account: Account, pos: Position, a: Assessment, prices: Prices, now_ms: int
    ) -> list[Decision]:
        market = self.spec.instruments[pos.instrument].market
        got = prices[market]
        assert isinstance(got, Resolved)
        assert pos.isolated_margin is not None
        price = self._exec_price(got.position_value, pos.qty)
        left = pos.isolated_margin + pos.qty * (price - pos.entry)
        fee = min(self.policy.liquidation_fee * abs(pos.qty) * price, max(left, 0.0))
        self.insurance_fund += fee
        account.positions.remove(pos)
        scope = a.scope
        out: list[Decision] = [
            Liquidation(
                ts=now_ms,
                account=account.id,
                scope=scope,
                instrument=pos.instrument,
                qty=pos.qty,
                price=price,
                bankruptcy_price=pos.entry - pos.isolated_margin / pos.qty,
                equity=a.equity,
                maintenance=a.levels.maintenance,
                fee=fee,
                driver=got.ref,
            )
        ]
        if left >= 0:
            self._add_cash(account, left - fee)
        else:
            out.append(
                self._shortfall(account, scope, -left, [(pos, price)], [got.ref], prices, now_ms)
            )
        self._standing.pop((account.id, scope), None)
        return out

    def _liquidate_cross(
        self, account: Account, a: Assessment, prices: Prices, now_ms: int
    ) -> list[Decision]:
        out: list[Decision] = []
        closed: list[tuple[Position, float]] = []
        refs: list[PriceRef] = []
        for instrument in self._by_maintenance(account, prices):
            market = self.spec.instruments[instrument].market
            got = prices[market]
            assert isinstance(got, Resolved)
            group = [p for p in account.positions if p.instrument == instrument and not p.isolated]
            net = sum(p.qty for p in group)
            price = self._exec_price(got.position_value, net)
            for p in group:
                self._add_cash(account, p.qty * (price - p.entry))
                account.positions.remove(p)
            after = assess_cross(account, self.spec, prices)
            # Closing at the bankruptcy price instead would leave the pool at exactly zero.
            bankruptcy = price - after.equity / net if net else price
            fee = 0.0
            # The fee comes out of what is left above the remaining maintenance: it never pushes
            # the pool back into liquidation by itself.
            spare = after.equity - after.levels.maintenance
            if spare > 0:
                fee = min(self.policy.liquidation_fee * abs(net) * price, spare)
                self._add_cash(account, -fee)
                self.insurance_fund += fee
            closed.append((Position(instrument, net, price), price))
            refs.append(got.ref)
            out.append(
                Liquidation(
                    ts=now_ms,
                    account=account.id,
                    scope="cross",
                    instrument=instrument,
                    qty=net,
                    price=price,
                    bankruptcy_price=bankruptcy,
                    equity=a.equity,
                    maintenance=a.levels.maintenance,
                    fee=fee,
                    driver=got.ref,
                )
            )
            a = assess_cross(account, self.spec, prices)
            if a.state != "liquidatable":
                break
        if not any(not p.isolated for p in account.positions):
            owed = self._seize_collateral(account, prices)
            if owed > 0:
                out.append(self._shortfall(account, "cross", owed, closed, refs, prices, now_ms))
        after = assess_cross(account, self.spec, prices)
        out.extend(self._transition(account.id, after, now_ms, prices))
        return out

    def _by_maintenance(self, account: Account, prices: Prices) -> list[str]:
        net: dict[str, float] = {}
        for p in account.positions:
            if not p.isolated:
                net[p.instrument] = net.get(p.instrument, 0.0) + p.qty
        sized: list[tuple[float, str]] = []
        for name, qty in net.items():
            inst = self.spec.instruments[name]
            got = prices[inst.market]
            assert isinstance(got, Resolved)
            sized.append((tier_levels(inst.tiers, abs(qty) * got.position_value).maintenance, name))
        sized.sort(key=lambda t: (-t[0], t[1]))
        return [name for _, name in sized]

    def _add_cash(self, account: Account, amount: float) -> None:
        account.cash[self.numeraire] = account.cash.get(self.numeraire, 0.0) + amount

    def _seize_collateral(self, account: Account, prices: Prices) -> float:
        """With no position left, sell every other asset at its index price; return what is owed."""
        for asset, amount in list(account.cash.items()):
            market = self.spec.assets[asset].market
            if market is None or amount == 0:
                continue
            got = prices.get(market)
            if isinstance(got, Resolved) and account.cash[self.numeraire] < 0:
                self._add_cash(account, amount * got.value)
                account.cash[asset] = 0.0
        return max(-account.cash.get(self.numeraire, 0.0), 0.0)

    # -- shortfall --------------------------------------------------------------------------

    def _shortfall(
        self,
        account: Account,
        scope: str,
        amount: float,
        closed: list[tuple[Position, float]],
        refs: list[PriceRef],
        prices: Prices,
        now_ms: int,
    ) -> Shortfall:
        """Insurance fund first; the rest from ranked counterparties at the bankruptcy price."""
        paid = min(self.insurance_fund, amount)
        self.insurance_fund -= paid
        rest = amount - paid
        deleveraged: list[Deleverage] = []
        recovered = 0.0
        total_notional = sum(abs(p.qty) * px for p, px in closed) or 1.0
        for pos, price in closed:
            if rest <= 0 or pos.qty == 0:
                break
            share = abs(pos.qty) * price / total_notional
            part = amount * share  # this instrument's part of the whole shortfall
            bankruptcy = price + math.copysign(part / abs(pos.qty), pos.qty)
            unit_loss = abs(bankruptcy - price)
            needed = abs(pos.qty) * rest / amount  # quantity to deleverage for this instrument
            for other, cpos in self._ranked(pos.instrument, -pos.qty, account.id, prices):
                if needed <= 1e-12:
                    break
                qty = math.copysign(min(abs(cpos.qty), needed), cpos.qty)
                needed -= abs(qty)
                loss = abs(qty) * unit_loss
                realized = qty * (bankruptcy - cpos.entry)
                self._settle_counterparty(other, cpos, qty, realized)
                recovered += loss
                deleveraged.append(
                    Deleverage(
                        account=other.id,
                        instrument=pos.instrument,
                        qty=qty,
                        price=bankruptcy,
                        loss=loss,
                    )
                )
        socialized = min(recovered, rest)
        unresolved = max(rest - socialized, 0.0)
        if scope == "cross":
            account.cash[self.numeraire] = 0.0  # the debt is settled, or written off as unresolved
        return Shortfall(
            ts=now_ms,
            account=account.id,
            scope=scope,
            amount=amount,
            insurance_paid=paid,
            insurance_fund=self.insurance_fund,
            socialized=socialized,
            unresolved=unresolved,
            deleveraged=deleveraged,
            drivers=refs,
        )

    def _settle_counterparty(
        self, account: Account, pos: Position, qty: float, realized: float
    ) -> None:
        if pos.isolated:
            assert pos.isolated_margin is not None
            pos.isolated_margin += realized
        else:
            self._add_cash(account, realized)
        pos.qty -= qty
        if abs(pos.qty) <= 1e-12:
            account.positions.remove(pos)

    def _ranked(
        self, instrument: str, side: float, skip: str, prices: Prices
    ) -> list[tuple[Account, Position]]:
        """Profitable positions on `side`, highest profit ratio x leverage first (then by id)."""
        market = self.spec.instruments[instrument].market
        got = prices[market]
        assert isinstance(got, Resolved)
        price = got.position_value
        ranked: list[tuple[float, str, Account, Position]] = []
        for account in self.accounts.values():
            if account.id == skip:
                continue
            cross = assess_cross(account, self.spec, prices)
            for pos in account.positions:
                if pos.instrument != instrument or (pos.qty > 0) != (side > 0):
                    continue
                pnl = pos.qty * (price - pos.entry)
                if pnl <= 0:
                    continue
                base = (
                    pos.isolated_margin + pnl
                    if pos.isolated_margin is not None
                    else (cross.equity if math.isfinite(cross.equity) else 0.0)
                )
                leverage = abs(pos.qty) * price / base if base > 0 else math.inf
                ratio = pnl / (abs(pos.qty) * pos.entry)
                ranked.append((ratio * leverage, account.id, account, pos))
        ranked.sort(key=lambda t: (-t[0], t[1]))
        return [(a, p) for _, _, a, p in ranked]
