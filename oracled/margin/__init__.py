"""Reference margin and liquidation components that consume oracled's reports like a user would.

A library (pure decisions from accounts, reports and a decision time), a service mode that reads
`WS /v1/stream` (`oracled margin`), and the engine the stress simulator drives. docs/margin.md.
"""

from oracled.margin.config import AccountsFile, RiskPolicy, load_accounts, parse_accounts
from oracled.margin.decisions import (
    Decision,
    Deleverage,
    FreezeCall,
    Liquidation,
    MarginCall,
    Shortfall,
    UnfreezeCall,
    encode_decision,
)
from oracled.margin.engine import MarginEngine
from oracled.margin.prices import Frozen, PriceBook, PriceRef, PriceView, Resolved, SignerRef
from oracled.margin.risk import (
    STATES,
    Account,
    Assessment,
    Levels,
    Position,
    assess_cross,
    assess_isolated,
    liquidation_price,
    tier_levels,
)

__all__ = [
    "STATES",
    "Account",
    "AccountsFile",
    "Assessment",
    "Decision",
    "Deleverage",
    "FreezeCall",
    "Frozen",
    "Levels",
    "Liquidation",
    "MarginCall",
    "MarginEngine",
    "Position",
    "PriceBook",
    "PriceRef",
    "PriceView",
    "Resolved",
    "RiskPolicy",
    "Shortfall",
    "SignerRef",
    "UnfreezeCall",
    "assess_cross",
    "assess_isolated",
    "encode_decision",
    "liquidation_price",
    "load_accounts",
    "parse_accounts",
    "tier_levels",
]
