"""The pause state machine, vectorized over markets.

States: active, degraded (live, with a warning), paused (had a price, a gate stopped it) and
unknown (no price can be formed: never had one, or a conversion leg is not live).

Rules, per market and round:
- A hard reason (quorum, dispersion, stale, route, manual, jump) stops the price at once: pausing
  has no delay, because publishing a wrong price is worse than publishing none.
- A jump beyond the circuit-breaker band from the last good price is held for
  `jump_confirm_rounds` rounds. If the sources still agree on the new level after that, it is
  accepted: one venue cannot move the median (that needs a quorum), and a real market-wide move
  is followed after a short, bounded hold instead of being frozen forever. A round beyond the
  breaker from the level held the round before does not confirm it: a further jump during a
  hold is followed no sooner than in its second round.
- Resuming needs `resume_rounds` consecutive healthy rounds (hysteresis), so a flapping source
  cannot toggle the market every round. The rounds of a held jump count (they had a quorum and
  agreement), so that a level on the breaker's edge cannot keep a market paused. A confirmed
  jump counts as its own confirmation only for a market that was live when the hold began; a
  market that was already paused (quorum, manual, ...) and comes back beyond the breaker needs
  both the confirmation and `resume_rounds` rounds at the new level, so the jump is never a
  shorter way back.
- A price below the market's resolution floor (`config.RESOLUTION_UNITS` units of its last
  digit: 0.001 at two decimals would go out as "0.00") is a hard reason too, `resolution`: the
  market is paused (unknown if it never had a price) rather than published as a rounded number
  far from the real one, and resumes after the same healthy streak once the price is back above
  the floor.
- At start every market is unknown and needs the same healthy streak: never active before the
  quorum is rebuilt.
- A quorum lost to a non-live conversion leg (`route`) or to sources that flagged their own values
  as not prices (`flagged`: a Chainlink answer at its bound, a thin pool, a sequencer down) makes
  the market `unknown`, not `paused`: the oracle does not know the price at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from oracled.bands import BAND_SLACK
from oracled.model import REASON_BITS, Status

__all__ = ["GateInputs", "GateParams", "GateState", "step"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

QUORUM = REASON_BITS["quorum"]
DISPERSION = REASON_BITS["dispersion"]
JUMP = REASON_BITS["jump"]
STALE = REASON_BITS["stale"]
ROUTE = REASON_BITS["route"]
FLAGGED = REASON_BITS["flagged"]
MANUAL = REASON_BITS["manual"]
RESUMING = REASON_BITS["resuming"]
OUTLIER = REASON_BITS["outlier"]
THIN = REASON_BITS["thin"]
RESOLUTION = REASON_BITS["resolution"]


@dataclass(frozen=True, slots=True)
class GateParams:
    """Per-market gate parameters for the markets of one evaluation (aligned arrays)."""

    min_sources: IntArray
    circuit_breaker: FloatArray
    confidence_limit: FloatArray
    resolution_floor: FloatArray  # the smallest price the market's decimals publish live
    resume_rounds: int
    jump_confirm_rounds: int


@dataclass(frozen=True, slots=True)
class GateInputs:
    """What the aggregation measured this round, per market."""

    candidate: FloatArray  # weighted median of the surviving sources (NaN if none)
    confidence: FloatArray  # half-width of the band around the candidate
    used: IntArray  # sources that survived the filters
    usable: IntArray  # fresh, valid sources before the outlier filter
    used_weight: FloatArray
    usable_weight: FloatArray
    outliers: IntArray  # fresh sources excluded for deviation
    stale: IntArray  # sources whose latest quote is too old
    route_blocked: IntArray  # fresh sources excluded because their conversion leg is not live
    flagged: IntArray  # fresh sources that flagged their own value as not a price


class GateState:
    """Mutable per-market gate memory: status, last good price, streak counters."""

    __slots__ = (
        "jump_count",
        "jump_level",
        "jump_live",
        "last_good",
        "last_good_ts",
        "manual",
        "status",
        "streak",
    )

    def __init__(self, markets: int) -> None:
        self.status = np.full(markets, int(Status.UNKNOWN), dtype=np.int64)
        self.last_good = np.full(markets, np.nan)
        self.last_good_ts = np.full(markets, -1, dtype=np.int64)
        self.streak = np.zeros(markets, dtype=np.int64)
        self.jump_count = np.zeros(markets, dtype=np.int64)
        # The candidate of the running hold's latest round (NaN without a hold): a round beyond
        # the breaker from it does not confirm the hold.
        self.jump_level = np.full(markets, np.nan)
        # The running hold began while the market was live: only then is its confirmation
        # enough to go live without the resume streak.
        self.jump_live = np.zeros(markets, dtype=bool)
        self.manual = np.zeros(markets, dtype=bool)


def step(
    state: GateState, idx: IntArray | slice, p: GateParams, x: GateInputs, now_ms: int
) -> tuple[IntArray, IntArray, FloatArray]:
    """Advance the markets `idx` (indices or a slice) by one round; return (status, reasons,
    live price) for them."""
    quorum_ok = x.used >= p.min_sources
    # A band of exactly the limit is not wide (BAND_SLACK): 0.0003 x 10,000 rounds below 3.
    wide = x.confidence > p.confidence_limit * BAND_SLACK * x.candidate
    # Exactly half is no majority also for decimal weights, whose float sums miss the tie
    # (0.05 + 0.67 of 1.44 came out above half): the slack the median's ties take too.
    no_majority = 2.0 * x.used_weight <= x.usable_weight * BAND_SLACK
    dispersion = (x.usable >= p.min_sources) & (no_majority | wide)

    reasons = np.zeros(len(x.candidate), dtype=np.int64)
    reasons |= np.where(quorum_ok, 0, QUORUM)
    reasons |= np.where(~quorum_ok & (x.stale > 0), STALE, 0)
    reasons |= np.where(~quorum_ok & (x.route_blocked > 0), ROUTE, 0)
    reasons |= np.where(~quorum_ok & (x.flagged > 0), FLAGGED, 0)
    reasons |= np.where(dispersion, DISPERSION, 0)
    # Named only where it is what stops a price the sources agree on: a market without a
    # quorum says quorum, as before, whatever its few sources show.
    agreed = quorum_ok & ~dispersion
    coarse = agreed & (x.candidate < p.resolution_floor)
    reasons |= np.where(coarse, RESOLUTION, 0)
    candidate_ok = agreed & ~coarse

    manual = state.manual[idx]
    reasons |= np.where(manual, MANUAL, 0)

    last_good = state.last_good[idx]
    # A move of exactly the breaker is not beyond it (BAND_SLACK): measured as |a / b - 1|,
    # 100 to 110 was 0.10000000000000009, held as a jump at a 10 % breaker.
    breaker = p.circuit_breaker * BAND_SLACK
    level = state.jump_level[idx]
    with np.errstate(invalid="ignore"):
        move_beyond = np.abs(x.candidate - last_good) > breaker * last_good
        moved_on = np.abs(x.candidate - level) > breaker * level
    # Rounds under a manual pause do not count towards confirming a jump: otherwise a release
    # could land on a confirmed round and go live at once, skipping the healthy streak.
    beyond = candidate_ok & ~manual & np.isfinite(last_good) & move_beyond
    was_live = state.status[idx] <= Status.DEGRADED
    prior_count = state.jump_count[idx]
    jump_count = np.where(beyond, prior_count + 1, 0)
    jump_live = beyond & np.where(prior_count == 0, was_live, state.jump_live[idx])
    # A hold is confirmed only in a round that stays within the breaker of the level held the
    # round before: a further jump during a hold is never published in the round it appears.
    # (Starting the count again would freeze a market through a crash faster than the breaker
    # per round; this keeps the count and waits for one round at the new level.)
    confirmed = beyond & (jump_count > p.jump_confirm_rounds) & ~moved_on
    held = beyond & ~confirmed
    reasons |= np.where(held, JUMP, 0)

    # The streak counts rounds with a quorum and agreement and no operator pause, held ones
    # included: a level on the breaker's edge, beyond it one round and inside the next, would
    # otherwise reset the hold and the streak in turn and keep the market paused as long as
    # that lasts.
    counted = candidate_ok & ~manual
    healthy = counted & ~held
    streak = np.where(counted, state.streak[idx] + 1, 0)
    # A hold that began in a paused market is followed only once its rounds (each had a quorum
    # and agreement) make a full healthy streak; a price inside the breaker needs the streak.
    followed = confirmed & (jump_live | (jump_count >= p.resume_rounds))
    live = healthy & (was_live | ((streak >= p.resume_rounds) & ~beyond) | followed)

    degraded_bits = np.where(x.outliers > 0, OUTLIER, 0) | np.where(
        x.used == p.min_sources, THIN, 0
    )
    unknown = ((reasons & (ROUTE | FLAGGED)) != 0) | ~np.isfinite(last_good)
    status = np.where(
        live,
        np.where(degraded_bits != 0, int(Status.DEGRADED), int(Status.ACTIVE)),
        np.where(unknown, int(Status.UNKNOWN), int(Status.PAUSED)),
    )
    reasons = np.where(live, degraded_bits, np.where(healthy, RESUMING, reasons))
    price = np.where(live, x.candidate, np.nan)

    state.status[idx] = status
    state.streak[idx] = streak
    # A confirmed jump still waiting for the streak keeps counting, so that it is not held again.
    state.jump_count[idx] = np.where(live, 0, jump_count)
    state.jump_live[idx] = jump_live & ~live
    state.jump_level[idx] = np.where(beyond & ~live, x.candidate, np.nan)
    state.last_good[idx] = np.where(live, x.candidate, last_good)
    state.last_good_ts[idx] = np.where(live, now_ms, state.last_good_ts[idx])
    return status, reasons, price
