"""Mark price and funding inputs of perpetual markets (docs/mark.md).

Pure like the rest of the core: no I/O, no clock. The core calls `MarkEngine.step` once per
round after the index prices are known; reports carry the result as their `mark` object.
"""

from oracled.mark.engine import RATE_DECIMALS, MarkEngine, MarkRound, MarkValues
from oracled.mark.formulas import decay, ema_update, funding_rate, median, premium_of

__all__ = [
    "RATE_DECIMALS",
    "MarkEngine",
    "MarkRound",
    "MarkValues",
    "decay",
    "ema_update",
    "funding_rate",
    "median",
    "premium_of",
]
