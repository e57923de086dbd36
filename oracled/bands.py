"""The edge of a relative band, one rule for every layer that compares a value with a limit
relative to another: the core's outlier filter, breaker and gates, the mark's deviation filter,
the sources' own confidence and spot checks, the streams' and the pusher's deviation thresholds.
A value exactly at a decimal limit is inside it (docs/pricing.md, section 4)."""

from __future__ import annotations

from typing import Final

__all__ = ["BAND_SLACK"]

#: A relative band's edge as a factor on `limit x reference`: the config's limits are decimals
#: binary cannot hold (0.01, 0.35), and the product rounds again, so a value exactly at a decimal
#: limit (101 on 100 at 1 %, 14,850 on 11,000 at 35 %) lands a few units of the last bit either
#: side of it. 1e-12 of the band takes in every such value and none a price's digits can tell
#: apart from them. Compared as |v - c| against it, never as |v / c - 1|, which rounds more.
#: The weight majority (gates) takes it too: survivors holding half of the usable weight in
#: decimals are no majority whatever their float sums say, as weights within 1e-12 tie in the
#: weighted median (`oracled.aggregate.robust`).
BAND_SLACK: Final = 1.0 + 1e-12
