"""Types shared by every layer: the normalized quote and the per-market report.

A `Quote` is what a source adapter hands to the core; a `Report` is what the core hands to the
publishers. Both are msgspec structs: cheap to build on the hot path and encoded to JSON without
an intermediate dict. Field names of `Report` are the contract in docs/contracts.md.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Final, Literal

import msgspec

__all__ = [
    "REASON_BITS",
    "Kind",
    "Mark",
    "MarkEstimators",
    "Quote",
    "Report",
    "SourceValue",
    "Status",
    "market_name",
    "reasons_from_bits",
]

Kind = Literal["spot", "perp"]

# A market as people write it: `BTC/USD`, `btc/usd`, or `BTC-USD` where a slash cannot go (a URL
# path segment); symbols never hold a dash.
_MARKET_NAME: Final = re.compile(r"^([A-Za-z0-9]{1,20})[/-]([A-Za-z0-9]{1,20})$")


def market_name(text: str) -> str | None:
    """`BTC-usd` -> `BTC/USD`, the canonical `BASE/QUOTE`; None if `text` cannot name a market."""
    match = _MARKET_NAME.match(text.strip())
    return f"{match[1]}/{match[2]}".upper() if match else None


class Quote(msgspec.Struct, frozen=True, gc=False):
    """One normalized price observation from one source.

    Prices are floats inside the process (exact decimals only where a price leaves it).
    `venue_ts` is the venue's own event time where it sends one; `recv_ts` is when we received it.
    Both are integer milliseconds since the Unix epoch.
    """

    source: str
    pair: str
    recv_ts: int
    price: float | None = None
    bid: float | None = None
    ask: float | None = None
    kind: Kind = "spot"
    venue_ts: int | None = None
    volume: float | None = None
    #: Set by a source that knows its own value is not a price (a Chainlink answer at the
    #: aggregator's bound, a pool below its liquidity minimum, an L2 sequencer down): the slot is
    #: excluded with this reason instead of voting.
    flag: str | None = None
    #: On-chain quotes only: the block number the value was read at and that block's timestamp
    #: (ms). `venue_ts` stays the feed's own update time, which is what staleness is measured on.
    block: int | None = None
    block_ts: int | None = None


class Status(IntEnum):
    """A market's gate state; the order is from most to least usable."""

    ACTIVE = 0
    DEGRADED = 1
    PAUSED = 2
    UNKNOWN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


# Gate reasons as bits so that a whole round can be computed as one integer array.
REASON_BITS: Final[dict[str, int]] = {
    "quorum": 1 << 0,  # fewer surviving sources than the market's minimum
    "dispersion": 1 << 1,  # surviving sources do not agree (no weighted majority, wide band)
    "jump": 1 << 2,  # price moved beyond the circuit-breaker band, waiting for confirmation
    "stale": 1 << 3,  # quorum lost because quotes are too old
    "route": 1 << 4,  # a conversion leg market is not live
    "manual": 1 << 5,  # paused by an operator
    "resuming": 1 << 6,  # healthy again, inside the hysteresis window
    "outlier": 1 << 7,  # degraded: a source was excluded as an outlier
    "thin": 1 << 8,  # degraded: exactly the minimum number of sources is left
    "flagged": 1 << 9,  # quorum lost while sources flagged their own values as not prices
    "resolution": 1 << 10,  # the price is too small for the market's decimals to show it
}
_REASON_ORDER: Final = tuple(REASON_BITS.items())


def reasons_from_bits(bits: int) -> list[str]:
    """Decode a reason bitmask into the contract's list of names, in a fixed order."""
    return [name for name, bit in _REASON_ORDER if bits & bit]


class SourceValue(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One source's part in a market's round: what it said and whether it counted.

    `via` names the conversion leg market of a routed slot (docs/pricing.md §3); it is left out
    of the encoding for every other slot (`omit_defaults`), so their bytes are as before.
    """

    id: str
    pair: str
    value: str | None
    weight: float
    used: bool
    reason: str | None
    age_ms: int | None
    via: str | None = None


class MarkEstimators(msgspec.Struct, frozen=True, gc=False):
    """The candidates the mark is the median of; null where an estimator has no inputs.

    `basis_ema`: index x (1 + time-weighted EMA of (median perp mid - index) / index), while
    perps are fresh.
    `perp_median`: median of the fresh perpetual mids across venues.
    `fallback`: the same with the last EMA decayed by its half-life, only when no perp is fresh.
    """

    basis_ema: str | None
    perp_median: str | None
    fallback: str | None


class Mark(msgspec.Struct, frozen=True, gc=False):
    """A perpetual market's mark price and funding inputs for one round (docs/mark.md).

    Present only for markets with `perp_sources`. `price` is null exactly when the index (the
    report's own `price`) is not live, with `reason` "index"; it never outlives the gates.
    Rates (`premium`, funding) are plain fractions per funding interval as decimal strings.
    """

    price: str | None
    reason: str | None
    estimators: MarkEstimators
    basis: str | None  # this round's median perp mid - index, market precision
    premium: str | None  # this round's premium index sample (fraction of the index)
    perps_used: int  # fresh perpetual venues that entered this round
    funding_rate_estimate: str | None  # the running interval's rate so far
    last_funding_rate: str | None  # the rate of the last completed interval
    last_funding_ts: int | None  # the end (ms) of that interval
    next_funding_ts: int  # the end (ms) of the running interval


class Report(msgspec.Struct, frozen=True, gc=False):
    """The result of one round for one market (docs/contracts.md, Report).

    `price` is None unless status is active or degraded; the last good price lives in its own
    field so that no consumer can mistake a frozen price for a live one.
    """

    market: str
    ts: int
    round: int
    status: str
    reasons: list[str]
    price: str | None
    confidence: str | None
    last_good_price: str | None
    last_good_ts: int | None
    sources: list[SourceValue]
    #: Perpetual markets only (those with perp_sources): the mark price and funding inputs.
    mark: Mark | None = None
