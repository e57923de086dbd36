"""Properties of the lag rule (docs/pricing.md section 2), checked on generated single rounds.

A fresh quote older than `lag_ms` is stale when two or more younger quotes agree far from it.
What the rule must never do: let one venue move the price or exclude honest quotes; change
anything when every usable quote is young; let quotes routed through a leg, which share its
error, judge quotes that do not go through that leg. What it is for: old quotes of any weight
far from young ones that agree are stale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import msgspec
from core_helpers import T0, config
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from oracled.config import Config
from oracled.core import STALE, Core, RoundResult
from oracled.model import Quote, Status

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LAG_MS = 2_000
MAX_AGE_MS = 10_000
NO_LAG_MS = 86_400_000  # longer than any age limit here: the rule never acts
NOW = T0 + 60_000

weights = st.floats(0.1, 10.0, allow_nan=False)
heavy = st.one_of(st.sampled_from((1.5, 3.0)), weights)  # more than one honest venue's weight
# Young (up to lag_ms, the edge included) or old (older than lag_ms, fresh all the same).
young_ages = st.sampled_from((0, 1, 500, LAG_MS))
old_ages = st.sampled_from((LAG_MS + 1, 3_000, MAX_AGE_MS))
any_ages = st.one_of(young_ages, old_ages)


@dataclass(frozen=True)
class Round:
    """One market's quotes for one round: per source its weight, price and age."""

    weight: list[float]
    price: list[float]
    age: list[int]
    max_deviation: float
    min_sources: int


def _config(r: Round, lag_ms: int, order: list[int] | None = None) -> Config:
    order = order or list(range(len(r.weight)))
    return config(
        [
            {
                "symbol": "X/USD",
                "price_exponent": -8,
                "min_sources": r.min_sources,
                "max_deviation": r.max_deviation,
                "max_age_ms": MAX_AGE_MS,
                "lag_ms": lag_ms,
                "min_price": 1e-3,
                "sources": [
                    {"source": f"s{k}", "pair": "X/USD", "weight": r.weight[k]} for k in order
                ],
            }
        ],
        resume_rounds=1,
    )


def _run(r: Round, lag_ms: int = LAG_MS, order: list[int] | None = None) -> RoundResult:
    core = Core(_config(r, lag_ms, order))
    for k in order or range(len(r.price)):
        quote = Quote(f"s{k}", "X/USD", NOW, price=r.price[k], venue_ts=NOW - r.age[k])
        assert core.ingest(quote) is None
    return core.run_round(NOW)


def _by_id(result: RoundResult) -> bytes:
    rep = result.report(0)
    rep = msgspec.structs.replace(rep, sources=sorted(rep.sources, key=lambda s: s.id))
    return msgspec.json.encode(rep)


@st.composite
def rounds(draw: st.DrawFn, ages: st.SearchStrategy[int] = any_ages) -> Round:
    """Up to eight sources anywhere within 4 x max_deviation of 100 (some below min_price: not
    usable), at the ages `ages` draws."""
    n = draw(st.integers(1, 8))
    dev = draw(st.floats(0.001, 0.2))
    spread = st.floats(-4.0, 4.0)
    price = [
        100.0 * (1.0 + f * dev) if f > -3.9 else 1e-4  # below min_price: out of bounds
        for f in draw(st.lists(spread, min_size=n, max_size=n))
    ]
    return Round(
        weight=draw(st.lists(weights, min_size=n, max_size=n)),
        price=price,
        age=draw(st.lists(ages, min_size=n, max_size=n)),
        max_deviation=dev,
        min_sources=draw(st.integers(1, n)),
    )


@SETTINGS
@given(rounds(ages=st.one_of(young_ages, st.just(MAX_AGE_MS + 1))))
def test_with_every_usable_quote_at_most_lag_ms_old_the_rule_changes_nothing(r: Round) -> None:
    """Quotes no older than `lag_ms` (or too old to be fresh at all) give the report a config
    whose `lag_ms` never acts gives."""
    assert _by_id(_run(r)) == _by_id(_run(r, NO_LAG_MS))


@SETTINGS
@given(rounds(), st.data())
def test_the_order_of_the_sources_does_not_change_who_lags(r: Round, data: st.DataObject) -> None:
    """Listed and ingested in another order, the same quotes give the same report."""
    order = data.draw(st.permutations(range(len(r.price))))
    assert _by_id(_run(r)) == _by_id(_run(r, order=order))


@st.composite
def honest_and_few(draw: st.DrawFn) -> tuple[Round, int]:
    """Honest sources within max_deviation/4 of each other, at any ages; at most one other
    source (two agreeing are enough to outvote old quotes), lighter than the honest, at any age
    and anywhere within 2.5 x max_deviation of them (where it can drag a young median without
    being an outlier of it). Returns the round and how many sources are honest."""
    n_honest = draw(st.integers(1, 6))
    # Mostly a young quorum of two, the smallest a venue can join to drag its median.
    min_sources = draw(
        st.one_of(st.just(1), st.integers(1, n_honest)).filter(lambda m: m <= n_honest)
    )
    n_other = draw(st.integers(0, min(n_honest - 1, 1)))
    honest_w = draw(
        st.lists(st.one_of(st.just(1.0), weights), min_size=n_honest, max_size=n_honest)
    )
    other_w = draw(st.lists(heavy, min_size=n_other, max_size=n_other))
    # A strict minority with a margin (the quantile's tie slack, test_core_properties.py).
    assume(sum(other_w) < sum(honest_w) * (1 - 1e-9))
    dev = draw(st.floats(0.001, 0.2))
    # Spread out (draws of floats shrink to equal values, where no median can split them).
    unit = st.one_of(st.sampled_from((0.0, 1.0)), st.floats(0.0, 1.0))
    honest_p = [
        100.0 * (1.0 + u * dev / 4)
        for u in draw(st.lists(unit, min_size=n_honest, max_size=n_honest))
    ]
    # Just inside max_deviation of one honest edge, or where a midpoint falls so, or anywhere.
    off = st.one_of(st.sampled_from((-0.9, 1.15, -1.9, 2.2)), st.floats(-2.5, 2.5))
    other_p = [
        100.0 * (1.0 + f * dev) for f in draw(st.lists(off, min_size=n_other, max_size=n_other))
    ]
    n = n_honest + n_other
    return (
        Round(
            weight=honest_w + other_w,
            price=honest_p + other_p,
            age=draw(st.lists(st.sampled_from((0, LAG_MS + 1)), min_size=n, max_size=n)),
            max_deviation=dev,
            min_sources=min_sources,
        ),
        n_honest,
    )


@settings(SETTINGS, max_examples=500)
@given(honest_and_few())
@example(  # one venue 0.9 % under the one young honest quote: the young median was its own
    (Round([1.0, 1.0, 1.0, 2.0], [100.0, 100.2, 100.2, 99.1], [0, 2_001, 2_001, 0], 0.01, 2), 3)
)
def test_one_venue_never_makes_an_honest_quote_lag(
    case: tuple[Round, int],
) -> None:
    """One venue, whatever its value, age and weight short of the honest sources', never makes
    an honest quote stale, and a published price stays within the honest range: the young
    values are read off their middle two by count, which it cannot take both of."""
    r, n_honest = case
    result = _run(r)
    report = result.report(0)
    assert [s.reason for s in report.sources[:n_honest]].count("stale") == 0, report
    if result.status[0] <= Status.DEGRADED:
        assert min(r.price[:n_honest]) <= result.price[0] <= max(r.price[:n_honest]), report


@st.composite
def silent_majorities(draw: st.DrawFn) -> tuple[Round, int, int]:
    """A young quorum within max_deviation/4 of each other; old quotes of any number and
    weight beyond 3 x max_deviation from all of them (venues silent through a move); and fewer
    other sources than the quorum, lighter than it, at any age and value. Returns the round
    (young quorum first, then the silent, then the others), the size of the quorum and the
    number of the silent."""
    min_sources = draw(st.integers(1, 5))
    need = max(min_sources, 2)
    n_young = draw(st.integers(need, 6))
    n_old = draw(st.integers(1, 6))
    n_other = draw(st.integers(0, need - 1))
    dev = draw(st.floats(0.001, 0.2))
    unit = st.floats(0.0, 1.0)
    young = [
        100.0 * (1.0 + u * dev / 4)
        for u in draw(st.lists(unit, min_size=n_young, max_size=n_young))
    ]
    lo, hi = min(young), max(young)
    old = [
        hi * (1 + 3 * dev) * f if up else lo / ((1 + 3 * dev) * f)
        for up, f in draw(
            st.lists(st.tuples(st.booleans(), st.floats(1.0, 2.0)), min_size=n_old, max_size=n_old)
        )
    ]
    off = st.one_of(st.floats(-2.5, 2.5), st.floats(-0.9, 20.0))
    other = [
        100.0 * (1.0 + f * dev) for f in draw(st.lists(off, min_size=n_other, max_size=n_other))
    ]
    young_w = draw(st.lists(weights, min_size=n_young, max_size=n_young))
    other_w = draw(st.lists(weights, min_size=n_other, max_size=n_other))
    assume(sum(other_w) < sum(young_w) * (1 - 1e-9))  # a strict minority, as above
    return (
        Round(
            weight=young_w + draw(st.lists(weights, min_size=n_old, max_size=n_old)) + other_w,
            price=young + old + other,
            age=draw(st.lists(young_ages, min_size=n_young, max_size=n_young))
            + draw(st.lists(old_ages, min_size=n_old, max_size=n_old))
            + draw(st.lists(any_ages, min_size=n_other, max_size=n_other)),
            max_deviation=dev,
            min_sources=min_sources,
        ),
        n_young,
        n_old,
    )


@SETTINGS
@given(silent_majorities())
def test_old_quotes_far_from_a_young_quorum_lag_whatever_their_weight(
    case: tuple[Round, int, int],
) -> None:
    """What the rule is for: quotes older than `lag_ms`, of any number and weight, far from a
    young quorum that agrees are all stale, and the market is live within the young quorum's
    range, whatever fewer, lighter sources quote beside it."""
    r, n_young, n_old = case
    result = _run(r)
    report = result.report(0)
    codes = result.slot_reason[0, n_young : n_young + n_old].tolist()
    assert codes == [STALE] * n_old, report
    assert report.status in ("active", "degraded"), report
    assert min(r.price[:n_young]) <= result.price[0] <= max(r.price[:n_young]), report


def test_a_report_is_what_the_properties_compare() -> None:
    """`_by_id` sees a lagging quote: the comparisons above are not between empty reports."""
    r = Round([3.0, 3.0, 1.0, 1.0], [100.0, 100.0, 95.0, 95.0], [3_000, 3_000, 0, 0], 0.01, 2)
    assert [s.reason for s in _run(r).report(0).sources] == ["stale", "stale", None, None]
    assert _by_id(_run(r)) != _by_id(_run(r, NO_LAG_MS))


# A market quoted directly ("X/USD") and through two legs, each quoted at par by two venues of
# its own, young: the legs are live in the round, and a routed value is its quote.
GROUPS = ("X/USD", "X/AAA", "X/BBB")
LEGS = ("AAA/USD", "BBB/USD")


@st.composite
def routed_rounds(draw: st.DrawFn) -> tuple[Round, list[int]]:
    """Up to nine sources anywhere within 4 x max_deviation of 100, at any ages, each quoting
    directly or through one of the two legs. Returns the round and each source's group."""
    r = draw(rounds())
    return r, draw(st.lists(st.integers(0, 2), min_size=len(r.price), max_size=len(r.price)))


def _routed_run(r: Round, group: list[int]) -> RoundResult:
    legs = [
        {"symbol": leg, "min_sources": 2, "sources": [{"source": s, "pair": leg} for s in "uv"]}
        for leg in LEGS
    ]
    x = {
        "symbol": "X/USD",
        "price_exponent": -8,
        "min_sources": r.min_sources,
        "max_deviation": r.max_deviation,
        "max_age_ms": MAX_AGE_MS,
        "lag_ms": LAG_MS,
        "min_price": 1e-3,
        "sources": [
            {"source": f"s{k}", "pair": GROUPS[g], "weight": w}
            for k, (g, w) in enumerate(zip(group, r.weight, strict=True))
        ],
    }
    routes = [{"from": leg[:3], "to": "USD", "via": leg} for leg in LEGS]
    core = Core(config([*legs, x], routes, resume_rounds=1))
    for leg in LEGS:
        for s in "uv":
            assert core.ingest(Quote(s, leg, NOW, price=1.0, venue_ts=NOW)) is None
    for k, g in enumerate(group):
        quote = Quote(f"s{k}", GROUPS[g], NOW, price=r.price[k], venue_ts=NOW - r.age[k])
        assert core.ingest(quote) is None
    return core.run_round(NOW)


@SETTINGS
@given(routed_rounds(), st.integers(1, 2))
@example(  # revision 23: young X/BBB quotes made a quiet X/AAA quote stale
    (Round([1.0, 1.0, 1.0], [100.0, 102.0, 102.0], [3_000, 0, 0], 0.01, 1), [1, 2, 2]), 2
)
def test_young_quotes_through_a_leg_judge_no_quote_that_does_not_go_through_it(
    case: tuple[Round, list[int]], leg: int
) -> None:
    """Whether the young quotes routed through one leg are there or too old to be fresh, every
    other quote lags alike: they share the leg's error, and judge only quotes through it."""
    r, group = case
    others = [k for k, g in enumerate(group) if g != leg]
    gone = [
        MAX_AGE_MS + 1 if g == leg and a <= LAG_MS else a for g, a in zip(group, r.age, strict=True)
    ]
    result = _routed_run(r, group)
    assert all(result.status[i] <= Status.DEGRADED for i in range(2))  # both legs live
    without = _routed_run(replace(r, age=gone), group)
    x = result.layout.markets.index("X/USD")
    stale = result.slot_reason[x, others] == STALE
    assert stale.tolist() == (without.slot_reason[x, others] == STALE).tolist()
