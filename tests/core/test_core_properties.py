"""Properties of the whole core (book -> aggregate -> gates), checked on generated inputs."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from core_helpers import ROUND_MS, T0, USDT_ROUTE, config, went_live_legitimately
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from oracled.config import Config
from oracled.core import Core, RoundResult
from oracled.model import Quote, Report, Status

LIVE = ("active", "degraded")
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

weights = st.floats(0.1, 10.0, allow_nan=False)


@dataclass(frozen=True)
class Panel:
    """One market's sources for a single round: ids, weights, prices, which are honest."""

    ids: list[str]
    weight: list[float]
    price: list[float]
    honest: list[bool]
    max_deviation: float
    min_sources: int


@st.composite
def panels(draw: st.DrawFn, far_outliers: bool) -> Panel:
    """Honest sources within max_deviation/4 of each other plus a strict minority of outliers
    (fewer and lighter); with `far_outliers` they sit beyond 3x max_deviation from the honest."""
    n_honest = draw(st.integers(1, 7))
    n_out = draw(st.integers(0, n_honest - 1))
    honest_w = draw(st.lists(weights, min_size=n_honest, max_size=n_honest))
    out_w = draw(st.lists(weights, min_size=n_out, max_size=n_out))
    # A strict minority with a margin: the quantile treats cumulative weights within 1e-12 of
    # the target as a tie (so that 0.1 + 0.2 ties with 0.3) and would average across it.
    assume(sum(out_w) < sum(honest_w) * (1 - 1e-9))
    dev = draw(st.floats(0.001, 0.5))
    base = draw(st.floats(1e-3, 1e6))
    honest_p = [
        base * (1.0 + u * dev / 4)
        for u in draw(st.lists(st.floats(0, 1), min_size=n_honest, max_size=n_honest))
    ]
    lo, hi = min(honest_p), max(honest_p)
    if far_outliers:
        out_p = [
            hi * (1 + 3 * dev) * f if up else lo / ((1 + 3 * dev) * f)
            for up, f in draw(
                st.lists(
                    st.tuples(st.booleans(), st.floats(1.0, 100.0)), min_size=n_out, max_size=n_out
                )
            )
        ]
    else:
        out_p = draw(st.lists(st.floats(1e-6, 1e9), min_size=n_out, max_size=n_out))
    order = draw(st.permutations(range(n_honest + n_out)))
    ids = [f"s{k}" for k in range(n_honest + n_out)]
    all_w = honest_w + out_w
    all_p = honest_p + out_p
    return Panel(
        ids=ids,
        weight=[all_w[k] for k in order],
        price=[all_p[k] for k in order],
        honest=[k < n_honest for k in order],
        max_deviation=dev,
        min_sources=draw(st.integers(1, n_honest)),
    )


def _panel_config(p: Panel) -> Config:
    return config(
        [
            {
                "symbol": "X/USD",
                "price_exponent": -8,
                "min_sources": p.min_sources,
                "max_deviation": p.max_deviation,
                "sources": [
                    {"source": s, "pair": "X/USD", "weight": w}
                    for s, w in zip(p.ids, p.weight, strict=True)
                ],
            }
        ],
        resume_rounds=1,
    )


def _run_panel(p: Panel) -> RoundResult:
    core = Core(_panel_config(p))
    for s, price in zip(p.ids, p.price, strict=True):
        assert core.ingest(Quote(s, "X/USD", T0, price=price)) is None
    return core.run_round(T0)


@SETTINGS
@given(panels(far_outliers=False))
def test_price_stays_inside_the_honest_range_under_a_minority_of_outliers(p: Panel) -> None:
    """Whatever values a strict minority (by count and weight) of sources sends, a published
    price lies within [min, max] of the honest sources."""
    result = _run_panel(p)
    honest = [x for x, h in zip(p.price, p.honest, strict=True) if h]
    if result.status[0] <= Status.DEGRADED:
        assert min(honest) <= result.price[0] <= max(honest)


@SETTINGS
@given(panels(far_outliers=True))
def test_far_outliers_are_excluded_and_the_honest_price_is_published(p: Panel) -> None:
    """Outliers far beyond max_deviation are all excluded; the market is live at once (resume
    streak 1), priced inside the honest range, degraded exactly when something was excluded."""
    result = _run_panel(p)
    report = result.report(0)
    honest = [x for x, h in zip(p.price, p.honest, strict=True) if h]
    assert report.status in LIVE, report
    assert min(honest) <= result.price[0] <= max(honest)
    used = [s.used for s in report.sources]
    assert used == p.honest
    assert ("outlier" in report.reasons) == (not all(p.honest))


# A small world for whole-sequence properties: a USDT leg, a mixed market, a routed-only market.
SOURCES = "abcde"
LEVELS = (1.0, 1.0, 1.0, 1.004, 1.3, 0.6)  # mostly calm, sometimes a jump or an outlier


def _world(
    order: list[int], resume: int, confirm: int, min_sources: int, weight: list[float] | None = None
) -> Config:
    ids = [SOURCES[k] for k in order]
    w = weight or [1.0 + k * 0.25 for k in range(len(SOURCES))]

    def table(symbol: str, pairs: dict[str, str]) -> dict[str, object]:
        return {
            "symbol": symbol,
            "min_sources": min_sources,
            "max_age_ms": 1_000,
            "sources": [
                {"source": s, "pair": pairs[s], "weight": w[SOURCES.index(s)]} for s in ids
            ],
        }

    return config(
        [
            table("USDT/USD", dict.fromkeys(SOURCES, "USDT/USD")),
            table("BTC/USD", {s: "BTC/USDT" if s in "de" else "BTC/USD" for s in SOURCES}),
            table("ETH/USD", dict.fromkeys(SOURCES, "ETH/USDT")),
        ],
        [USDT_ROUTE],
        resume_rounds=resume,
        jump_confirm_rounds=confirm,
    )


BASE = {"USDT/USD": 1.0, "BTC/USD": 50_000.0, "BTC/USDT": 50_000.0, "ETH/USDT": 2_000.0}
# What each source quotes: d and e quote BTC in USDT, the others in USD.
PAIRS = {s: ["USDT/USD", "BTC/USDT" if s in "de" else "BTC/USD", "ETH/USDT"] for s in SOURCES}

# One quote: source, index into its PAIRS, price factor, venue age (ms).
event = st.tuples(
    st.sampled_from(SOURCES),
    st.integers(0, 2),
    st.sampled_from(LEVELS),
    st.sampled_from((0, 0, 0, 200, 1_500)),
)
rounds_st = st.lists(
    st.tuples(
        st.lists(event, max_size=14), st.sampled_from((None, None, None, "BTC/USD", "USDT/USD"))
    ),
    min_size=1,
    max_size=14,
)


@dataclass(frozen=True)
class Run:
    results: list[RoundResult]
    reports: list[dict[str, Report]]


def _play(
    cfg: Config, rounds: list[tuple[list[tuple[str, int, float, int]], str | None]], *, rev: bool
) -> Run:
    """Feed each round's events (reversed within the round if `rev`), toggle manual pauses."""
    core = Core(cfg)
    results: list[RoundResult] = []
    manual: set[str] = set()
    for r, (events, toggle) in enumerate(rounds):
        now = T0 + r * ROUND_MS
        quotes = []
        for s, pick, level, age in events:
            pair = PAIRS[s][pick % len(PAIRS[s])]
            quotes.append(Quote(s, pair, now, price=BASE[pair] * level, venue_ts=now - age))
        # Within a round, the same (source, pair) may appear twice; keep only its last quote so
        # that reordering the round cannot change which one wins.
        last = {(q.source, q.pair): q for q in quotes}
        for q in reversed(list(last.values())) if rev else last.values():
            core.ingest(q)
        if toggle is not None:
            manual ^= {toggle}
            core.set_manual(toggle, toggle in manual)
        results.append(core.run_round(now))
    return Run(results, [{rep.market: rep for rep in res.reports()} for res in results])


def _canonical(rep: Report) -> Report:
    return msgspec.structs.replace(rep, sources=sorted(rep.sources, key=lambda s: s.id))


@SETTINGS
@given(
    rounds_st,
    st.permutations(range(len(SOURCES))),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 5),
    st.lists(weights, min_size=len(SOURCES), max_size=len(SOURCES)),
)
def test_source_order_and_ingest_order_do_not_change_the_outcome(
    rounds: list[tuple[list[tuple[str, int, float, int]], str | None]],
    order: list[int],
    resume: int,
    confirm: int,
    min_sources: int,
    weight: list[float],
) -> None:
    """Listing the sources in another order in the config, and ingesting a round's quotes in
    another order, gives the same reports (sources compared by id), for any weights."""
    identity = list(range(len(SOURCES)))
    a = _play(_world(identity, resume, confirm, min_sources, weight), rounds, rev=False)
    b = _play(_world(order, resume, confirm, min_sources, weight), rounds, rev=True)
    for ra, rb in zip(a.reports, b.reports, strict=True):
        for market, rep in ra.items():
            assert _canonical(rep) == _canonical(rb[market])


@SETTINGS
@given(rounds_st, st.integers(1, 4), st.integers(1, 4), st.integers(1, 5))
def test_live_markets_always_have_a_quorum_and_blocked_legs_never_price(
    rounds: list[tuple[list[tuple[str, int, float, int]], str | None]],
    resume: int,
    confirm: int,
    min_sources: int,
) -> None:
    """In every round: a live market has at least min_sources used sources and a price, a
    non-live one has none; when the USDT/USD leg is not live no USDT-quoted slot is used and the
    USDT-only market is never live."""
    run = _play(_world(list(range(len(SOURCES))), resume, confirm, min_sources), rounds, rev=False)
    for reports in run.reports:
        for rep in reports.values():
            used = sum(s.used for s in rep.sources)
            if rep.status in LIVE:
                assert used >= min_sources, rep
                assert rep.price is not None
            else:
                assert rep.price is None and rep.confidence is None
        if reports["USDT/USD"].status not in LIVE:
            for market in ("BTC/USD", "ETH/USD"):
                for s in reports[market].sources:
                    if s.pair.endswith("/USDT"):
                        assert not s.used and s.value is None, (market, s)
                        assert s.reason in ("route", "stale", "no_quote")
            assert reports["ETH/USD"].status not in LIVE


@SETTINGS
@given(rounds_st, st.integers(1, 4), st.integers(1, 4), st.integers(1, 5))
def test_the_same_inputs_give_byte_identical_reports(
    rounds: list[tuple[list[tuple[str, int, float, int]], str | None]],
    resume: int,
    confirm: int,
    min_sources: int,
) -> None:
    """Two cores fed the same quotes at the same round times encode byte-identical reports."""
    cfg = _world(list(range(len(SOURCES))), resume, confirm, min_sources)
    enc = msgspec.json.Encoder()
    a = _play(cfg, rounds, rev=False)
    b = _play(cfg, rounds, rev=False)
    for ra, rb in zip(a.results, b.results, strict=True):
        assert [enc.encode(r) for r in ra.reports()] == [enc.encode(r) for r in rb.reports()]


# A gate-focused tape for one market, in runs of rounds alike: in each run, which of five
# sources quote (the others are stale in the next round: max_age_ms is half a round), at which
# level, and whether the operator toggles a pause at its start.
gate_runs = st.lists(
    st.tuples(
        st.sampled_from((1.0, 1.0, 1.3, 0.7)),
        st.sets(st.sampled_from(SOURCES), min_size=2),
        st.sampled_from((False, False, True)),
        st.integers(1, 9),
    ),
    min_size=1,
    max_size=8,
)


def _rounds(runs: list[tuple[float, set[str], bool, int]]) -> list[tuple[float, set[str], bool]]:
    return [
        (level, quoting, toggle and k == 0) for level, quoting, toggle, n in runs for k in range(n)
    ]


def _play_gates(
    rounds: list[tuple[float, set[str], bool]], resume: int, confirm: int, min_sources: int
) -> list[Report]:
    cfg = config(
        [
            {
                "symbol": "BTC/USD",
                "min_sources": min_sources,
                "max_age_ms": ROUND_MS // 2,
                "sources": [{"source": s, "pair": "BTC/USD"} for s in SOURCES],
            }
        ],
        resume_rounds=resume,
        jump_confirm_rounds=confirm,
    )
    core = Core(cfg)
    paused = False
    reports = []
    for r, (level, quoting, toggle) in enumerate(rounds):
        now = T0 + r * ROUND_MS
        for s in sorted(quoting):
            assert core.ingest(Quote(s, "BTC/USD", now, price=50_000.0 * level)) is None
        if toggle:
            paused = not paused
            core.set_manual("BTC/USD", paused)
        reports.append(core.run_round(now).report(0))
    return reports


@SETTINGS
@given(gate_runs, st.integers(1, 8), st.integers(1, 6), st.integers(1, 5))
def test_a_market_goes_live_only_after_a_full_healthy_streak_or_a_confirmed_jump_from_live(
    runs: list[tuple[float, set[str], bool, int]], resume: int, confirm: int, min_sources: int
) -> None:
    """Hysteresis holds for any tape, any resume_rounds and jump_confirm_rounds: a market that
    was not live becomes live only after resume_rounds healthy rounds in a row, or when it
    follows a jump held since it was last live. A move that happened while it was paused (for
    its quorum, by an operator) is never a shorter way back than the streak."""
    reps = _play_gates(_rounds(runs), resume, confirm, min_sources)
    for r, rep in enumerate(reps):
        if rep.status in LIVE and (r == 0 or reps[r - 1].status not in LIVE):
            assert went_live_legitimately(reps, r, resume), (r, reps[: r + 1])
