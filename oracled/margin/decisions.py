"""The decisions the engine takes, each with the price reports that drove it (for audit).

One JSON object per decision, tagged by `kind`:

    margin_call   an account's (or isolated position's) state changed
    freeze        liquidations of an account wait: an exposed market has no usable price
    unfreeze      every exposed market has a usable price again
    liquidation   a position was closed
    shortfall     a closed account owed more than it had: insurance fund, then deleveraging
"""

from __future__ import annotations

import msgspec

from oracled.margin.prices import PriceRef

__all__ = [
    "Decision",
    "Deleverage",
    "FreezeCall",
    "Liquidation",
    "MarginCall",
    "Shortfall",
    "UnfreezeCall",
    "encode_decision",
]


class MarginCall(msgspec.Struct, frozen=True, tag_field="kind", tag="margin_call"):
    ts: int
    account: str
    scope: str
    state: str
    previous: str
    equity: float
    maintenance: float
    initial: float
    reasons: list[str]
    drivers: list[PriceRef]


class FreezeCall(msgspec.Struct, frozen=True, tag_field="kind", tag="freeze"):
    ts: int
    account: str
    scope: str
    markets: list[str]
    reasons: list[str]
    paused_ms: int
    drivers: list[PriceRef]


class UnfreezeCall(msgspec.Struct, frozen=True, tag_field="kind", tag="unfreeze"):
    ts: int
    account: str
    scope: str
    drivers: list[PriceRef]


class Liquidation(msgspec.Struct, frozen=True, tag_field="kind", tag="liquidation"):
    ts: int
    account: str
    scope: str
    instrument: str
    qty: float  # the position closed (signed as it was held)
    price: float  # execution price, after slippage
    bankruptcy_price: float  # closing here would have left the pool at exactly zero
    equity: float  # pool equity before the close
    maintenance: float
    fee: float
    driver: PriceRef


class Deleverage(msgspec.Struct, frozen=True):
    account: str
    instrument: str
    qty: float  # part of the counterparty's position closed at the bankruptcy price
    price: float
    loss: float  # what it gave up against the execution price


class Shortfall(msgspec.Struct, frozen=True, tag_field="kind", tag="shortfall"):
    ts: int
    account: str
    scope: str
    amount: float
    insurance_paid: float
    insurance_fund: float  # left in the fund afterwards
    socialized: float
    unresolved: float
    deleveraged: list[Deleverage]
    drivers: list[PriceRef]


Decision = MarginCall | FreezeCall | UnfreezeCall | Liquidation | Shortfall

_encoder = msgspec.json.Encoder()


def encode_decision(decision: Decision) -> bytes:
    return _encoder.encode(decision)
