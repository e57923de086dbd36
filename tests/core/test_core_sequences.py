"""Properties of the pure core over time: many rounds of `Core.ingest` + `Core.run_round(now)`
on generated timelines, the promises a liquidation engine leans on (docs/pricing.md, docs/mark.md).

A real crash is followed within the documented hold, a lone venue never moves nor pauses a
market that has its quorum without it, silent sources take the market out of live within
`max_age_ms` of their last quote, a paused market comes back only through the healthy streak
(or a jump held since it was live), routed prices are the product of their legs, the mark stays
inside its clamp of the index and the same inputs give the same bytes in any ingest order.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from decimal import Decimal

import msgspec
from core_helpers import (
    ROUND_MS,
    T0,
    USDT_ROUTE,
    Round,
    config,
    play,
    went_live_legitimately,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from oracled.config import Config
from oracled.core import Core
from oracled.model import Kind, Quote, Report

LIVE = ("active", "degraded")
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
BASE = 50_000.0
IDS = "abcdefg"

weights = st.floats(0.1, 10.0, allow_nan=False)


def _at(r: int) -> int:
    return T0 + r * ROUND_MS


def _round_of(prices: Iterable[tuple[str, str, float]], r: int) -> Round:
    """Quotes of (source, pair, price), all received at round r's time."""
    return Round([Quote(s, pair, _at(r), price=p) for s, pair, p in prices], {})


def _one_market(
    ids: str,
    weight: Sequence[float],
    *,
    min_sources: int,
    resume: int,
    confirm: int,
    **extra: object,
) -> Config:
    return config(
        [
            {
                "symbol": "X/USD",
                "min_sources": min_sources,
                "sources": [
                    {"source": s, "pair": "X/USD", "weight": w}
                    for s, w in zip(ids, weight, strict=True)
                ],
                **extra,
            }
        ],
        resume_rounds=resume,
        jump_confirm_rounds=confirm,
    )


def _first_live(reports: Sequence[Report], start: int) -> int | None:
    return next((r for r in range(start, len(reports)) if reports[r].status in LIVE), None)


# 1. A real crash ---------------------------------------------------------------------------


@st.composite
def crashes(draw: st.DrawFn) -> tuple[int, int, int, list[float], list[float]]:
    """(resume, confirm, sources, path, hold): every source quotes path[k] x BASE, then holds at
    the final level with a market-wide jitter (hold[k], a relative move shared by all sources).
    The path may bounce inside [final, 1]; the final fall is 5 % to 60 %, sometimes right at
    the 10 % breaker, where a small jitter puts the same level on either side of it."""
    resume, confirm = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    final = draw(st.one_of(st.sampled_from((0.9, 0.8999, 0.9001)), st.floats(0.4, 0.95)))
    path = [1.0 - u * (1.0 - final) for u in draw(st.lists(st.floats(0, 1), max_size=4))]
    jitter = draw(st.sampled_from((0.0005, 0.0, 0.002)))
    signs = st.lists(st.sampled_from((-1, 0, 1)), min_size=16, max_size=16)
    hold = [jitter * s for s in draw(st.one_of(st.just([-1, 1] * 8), signs))]
    return resume, confirm, draw(st.integers(3, 6)), [*path, final], hold


@SETTINGS
@given(crashes(), st.data())
def test_a_crash_of_every_source_is_followed_within_the_jump_confirmation(
    crash: tuple[int, int, int, list[float], list[float]], data: st.DataObject
) -> None:
    """Every source falls together by 5 % to 60 % over a few rounds (bouncing or not), then
    holds at the new level with a small market-wide jitter. The market, live when the crash
    began, is live again at most jump_confirm_rounds rounds after the sources reach the new
    level (docs/pricing.md section 6: the hold stands in for the streak), priced at that level,
    and stays live: a real crash never freezes it longer, whatever resume_rounds is. A hold
    ends back inside the breaker from the last good price, or at a level within the breaker of
    the one held the round before, never at a level first seen in that round."""
    resume, confirm, n, path, hold = crash
    ids = IDS[:n]
    w = data.draw(st.lists(weights, min_size=n, max_size=n))
    cfg = _one_market(
        ids, w, min_sources=data.draw(st.integers(1, n)), resume=resume, confirm=confirm
    )
    levels = [1.0] * resume + path[:-1] + [path[-1] * (1.0 + j) for j in hold]
    tape = [_round_of(((s, "X/USD", BASE * lv) for s in ids), r) for r, lv in enumerate(levels)]
    reports = [res.report(0) for res in play(cfg, tape)]
    assert reports[resume - 1].status in LIVE
    settled = resume + len(path) - 1  # the first round at the new level
    live = _first_live(reports, settled)
    assert live is not None and live <= settled + confirm, (live, settled, reports[settled:])
    for r in range(live, len(levels)):
        assert reports[r].status in LIVE, (r, reports[r])
        assert reports[r].price == format(BASE * levels[r], ".2f"), (r, reports[r])
    # A move of exactly the breaker is inside it (docs/pricing.md section 4): the ratios below
    # round, so they may land a few units of the last bit past it.
    breaker = cfg.markets[0].circuit_breaker * (1 + 1e-9)
    for r, rep in enumerate(reports):  # a hold ends back inside the breaker or at its level
        good = reports[r - 1].last_good_price
        if rep.status in LIVE and reports[r - 1].reasons == ["jump"] and good is not None:
            back = abs(BASE * levels[r] / float(good) - 1) <= breaker
            assert back or abs(levels[r] / levels[r - 1] - 1) <= breaker, (r, reports[: r + 1])


@SETTINGS
@given(
    st.integers(1, 6),
    st.integers(1, 6),
    st.floats(0.4, 0.95),
    st.lists(st.integers(0, 3), min_size=3, max_size=6),
    st.data(),
)
def test_a_crash_that_reaches_the_venues_at_different_rounds_is_followed_after_its_streak(
    resume: int, confirm: int, final: float, delay: list[int], data: st.DataObject
) -> None:
    """The venues fall to the same level, each in a round of its own (up to three rounds apart),
    then hold steady. Meanwhile the market may pause (the two camps disagree, or too few are left
    once the others are outliers), and a hold that begins in a paused market needs its streak:
    the market is live again at most max(jump_confirm_rounds, resume_rounds - 1) rounds after
    the last venue arrived (docs/pricing.md section 6), at the new level, and stays live."""
    n = len(delay)
    ids = IDS[:n]
    w = data.draw(st.lists(weights, min_size=n, max_size=n))
    cfg = _one_market(
        ids, w, min_sources=data.draw(st.integers(1, n)), resume=resume, confirm=confirm
    )
    settled = resume + max(delay)
    tape = [
        _round_of(
            (
                (s, "X/USD", BASE * (final if r >= resume + d else 1.0))
                for s, d in zip(ids, delay, strict=True)
            ),
            r,
        )
        for r in range(settled + max(confirm, resume) + 3)
    ]
    reports = [res.report(0) for res in play(cfg, tape)]
    assert reports[resume - 1].status in LIVE
    live = _first_live(reports, settled)
    bound = settled + max(confirm, resume - 1)
    assert live is not None and live <= bound, (live, settled, reports[resume:])
    for rep in reports[live:]:
        assert rep.status in LIVE and rep.price == format(BASE * final, ".2f"), rep


# 2. A lone venue ----------------------------------------------------------------------------


@st.composite
def lone_venues(draw: st.DrawFn) -> tuple[Config, list[list[float]], list[float | None], int]:
    """Honest sources within max_deviation (1 %) of each other every round, and one lone venue
    (the last source, a strict minority by weight) printing anything, or nothing, for any number
    of rounds. min_sources goes up to the honest count plus one, where the lone venue is needed."""
    n = draw(st.integers(2, 6))
    honest_w = draw(st.lists(weights, min_size=n, max_size=n))
    lone_w = draw(weights)
    # A strict minority with a margin (the quantiles' tie slack, tests/core/test_core_properties)
    assume(lone_w < sum(honest_w) * (1 - 1e-9))
    min_sources = draw(st.integers(1, n + 1))
    cfg = _one_market(
        IDS[: n + 1], [*honest_w, lone_w], min_sources=min_sources, resume=2, confirm=2
    )
    rounds = draw(st.integers(1, 24))
    noise = st.lists(st.floats(0, 0.0099), min_size=n, max_size=n)
    honest = [[BASE * (1 + u) for u in draw(noise)] for _ in range(rounds)]
    lone = draw(
        st.lists(
            st.one_of(
                st.none(),
                st.floats(1e-3, 1e8),
                st.floats(BASE * 0.9, BASE * 1.1),
                st.floats(BASE * 0.98, BASE * 1.03),
            ),
            min_size=rounds,
            max_size=rounds,
        )
    )
    return cfg, honest, lone, n


@SETTINGS
@given(lone_venues())
def test_a_lone_venue_never_moves_the_price_out_of_the_honest_range_nor_pauses_a_quorum(
    case: tuple[Config, list[list[float]], list[float | None], int],
) -> None:
    """Whatever one venue prints, for as long as it likes, while the others are honest: every
    round's price lies within the honest sources' range, and the market stays live unless the
    honest sources alone are fewer than min_sources and the lone venue's value is not used (the
    quorum would be lost without it; then the reason is quorum alone, and resuming after). It
    takes a quorum to move the median (docs/pricing.md section 4), so no duration makes a lone
    print the level; with the honest values within max_deviation of each other, none of them
    is ever excluded for it."""
    cfg, honest, lone, n = case
    ids = IDS[: n + 1]
    warm = [_round_of(((s, "X/USD", BASE) for s in ids), r) for r in range(2)]
    tape = warm + [
        _round_of(
            [
                *((s, "X/USD", p) for s, p in zip(ids, h, strict=False)),
                *(() if v is None else ((ids[n], "X/USD", v),)),
            ],
            len(warm) + k,
        )
        for k, (h, v) in enumerate(zip(honest, lone, strict=True))
    ]
    results = play(cfg, tape)
    assert results[1].report(0).status in LIVE
    min_sources = cfg.markets[0].min_sources
    for res, h in zip(results[2:], honest, strict=True):
        rep = res.report(0)
        assert all(s.used for s in rep.sources[:n]), rep
        if rep.status in LIVE:
            assert min(h) <= res.price[0] <= max(h), (rep, h)
        else:  # the quorum lost without the lone venue's value, or the streak after that
            assert n < min_sources, rep
            assert rep.reasons == ["resuming"] or (
                rep.reasons == ["quorum"] and not rep.sources[n].used
            ), rep


def test_a_lone_venue_can_split_honest_venues_further_apart_than_max_deviation() -> None:
    """The documented limit of the property above (docs/pricing.md section 4): honest venues
    1.2 % apart (max_deviation 1 %) are live at their mean; a third, lighter venue printing 5 %
    below moves the centre onto the lower one, the upper one is 1.2 % away, an outlier, and the
    one survivor holds less than half of the weight: the market pauses for dispersion."""
    cfg = _one_market("abc", [1.0, 1.0, 0.5], min_sources=1, resume=1, confirm=2)
    honest = [("a", "X/USD", BASE), ("b", "X/USD", BASE * 1.012)]
    first, second = play(
        cfg, [_round_of(honest, 0), _round_of([*honest, ("c", "X/USD", BASE * 0.95)], 1)]
    )
    assert (first.report(0).status, first.report(0).price) == ("active", "50300.00")
    report = second.report(0)
    assert (report.status, report.reasons) == ("paused", ["dispersion"])
    assert [s.reason for s in report.sources] == [None, "outlier", "outlier"]


# 3. Sources that stop quoting ---------------------------------------------------------------


@st.composite
def silences(draw: st.DrawFn) -> tuple[Config, list[int | None], list[int], int]:
    """Sources that quote every round until their own last round (None: never stop), each with
    a venue time behind its receive time by its own delay, or ahead of it (a venue clock running
    1.5 s fast, inside the 2 s skew bound); max_age_ms of about 1 to 10 rounds."""
    n = draw(st.integers(2, 6))
    max_age = draw(st.sampled_from((250, 300, 999, 1_000, 2_500)))
    cfg = _one_market(
        IDS[:n],
        [1.0] * n,
        min_sources=draw(st.integers(1, n)),
        resume=draw(st.integers(1, 3)),
        confirm=2,
        max_age_ms=max_age,
    )
    last = draw(st.lists(st.one_of(st.none(), st.integers(3, 30)), min_size=n, max_size=n))
    lag = draw(st.lists(st.sampled_from((0, 0, 100, 240, -1_500)), min_size=n, max_size=n))
    return cfg, last, lag, 36


@SETTINGS
@given(silences())
def test_silent_sources_take_the_market_out_of_live_within_max_age_of_their_last_quote(
    case: tuple[Config, list[int | None], list[int], int],
) -> None:
    """A live round uses only quotes whose venue time is within max_age_ms of the round, and at
    least min_sources of them; once fewer sources than min_sources have quoted within max_age_ms
    the market is not live, price null, for `quorum` and `stale`: no later than max_age_ms
    after the last quote that kept the quorum, so within max_age_ms plus one round. Age is
    counted from venue time (docs/pricing.md section 2): a venue clock running ahead keeps its
    quote fresh that much longer after it was received, never more than max_clock_skew_ms."""
    cfg, last, lag, rounds = case
    ids = IDS[: len(last)]
    market = cfg.markets[0]
    tape = [
        Round(
            [
                Quote(s, "X/USD", _at(r), price=BASE, venue_ts=_at(r) - lag[k])
                for k, s in enumerate(ids)
                if (end := last[k]) is None or r <= end
            ],
            {},
        )
        for r in range(rounds)
    ]
    # The venue time of each source's last quote held at round r.
    stamps = [
        [_at(r if end is None else min(r, end)) - lag[k] for r in range(rounds)]
        for k, end in enumerate(last)
    ]
    for r, res in enumerate(play(cfg, tape)):
        rep = res.report(0)
        now = _at(r)
        newest = sorted((held[r] for held in stamps), reverse=True)
        quorum_kept_until = newest[market.min_sources - 1]  # the last quote that kept it
        if rep.status in LIVE:
            used = [s for s in rep.sources if s.used]
            assert len(used) >= market.min_sources
            assert all(s.age_ms is not None and s.age_ms <= market.max_age_ms for s in used)
            for k, s in enumerate(rep.sources):
                if s.used:  # received (lag: venue time behind it) within the age limit + skew
                    received = stamps[k][r] + lag[k]
                    assert now - received <= market.max_age_ms + cfg.oracle.max_clock_skew_ms
        if now > quorum_kept_until + market.max_age_ms:
            assert rep.status not in LIVE and rep.price is None, (r, rep)
            assert {"quorum", "stale"} <= set(rep.reasons), (r, rep)
        elif r >= cfg.oracle.resume_rounds - 1 and r > 0:
            assert rep.status in LIVE or rep.reasons == ["resuming"], (r, rep)


# 4. Resuming after any pause ----------------------------------------------------------------

# Runs of rounds alike: level, who quotes, who prints an outlier, a split into two camps
# (dispersion), venue lag (stale when over max_age_ms), an operator toggle, the run's length.
runs = st.lists(
    st.tuples(
        st.sampled_from((1.0, 1.0, 1.0, 1.003, 0.995, 1.3, 0.7, 0.899)),
        st.sets(st.sampled_from(IDS[:5]), min_size=1),
        st.sets(st.sampled_from(IDS[:5]), max_size=2),
        st.sampled_from((False, False, False, True)),
        st.sampled_from((0, 0, 0, 400, 900)),
        st.sampled_from((False, False, False, True)),
        st.integers(1, 8),
    ),
    min_size=3,
    max_size=12,
)


@SETTINGS
@given(runs, st.integers(1, 7), st.integers(1, 6), st.integers(1, 4))
def test_a_paused_market_comes_back_only_after_the_streak_or_a_jump_held_since_it_was_live(
    tape_runs: list[tuple[float, set[str], set[str], bool, int, bool, int]],
    resume: int,
    confirm: int,
    min_sources: int,
) -> None:
    """On long tapes mixing silent and late sources, outliers, camps that disagree, jumps and
    operator pauses: a market that was not live becomes live only after resume_rounds rounds in
    a row with a quorum, agreement and no operator pause (held jump rounds among them), or when
    it follows a jump held since it was live (docs/pricing.md section 6). When it comes back
    beyond the breaker from its last good price, the jump was held jump_confirm_rounds rounds,
    and resume_rounds rounds at the new level unless the hold began while it was live (then
    the hold alone, no round waiting for the streak)."""
    ids = IDS[:5]
    cfg = _one_market(
        ids, [1.0] * 5, min_sources=min_sources, resume=resume, confirm=confirm, max_age_ms=500
    )
    tape: list[Round] = []
    paused = False
    for level, quoting, outliers, split, lag, toggle, length in tape_runs:
        for k in range(length):
            r = len(tape)
            quotes = []
            for j, s in enumerate(ids):
                if s not in quoting:
                    continue
                p = BASE * level * (1.5 if s in outliers else 1.0)
                if split and j % 2:
                    p *= 1.05
                quotes.append(Quote(s, "X/USD", _at(r), price=p, venue_ts=_at(r) - lag))
            manual = {}
            if toggle and k == 0:
                paused = not paused
                manual["X/USD"] = paused
            tape.append(Round(quotes, manual))
    reports = [res.report(0) for res in play(cfg, tape)]
    breaker = cfg.markets[0].circuit_breaker
    for r, rep in enumerate(reports):
        if rep.status not in LIVE or r == 0 or reports[r - 1].status in LIVE:
            continue
        assert went_live_legitimately(reports, r, resume), (r, reports[: r + 1])
        good = reports[r - 1].last_good_price
        assert rep.price is not None
        if good is not None and abs(Decimal(rep.price) / Decimal(good) - 1) > breaker:
            # The rounds since the market was last live or stopped: the hold (`jump`), then,
            # for a hold begun in a paused market, its confirmed rounds waiting for the streak.
            run = 0
            while r - 1 - run >= 0 and reports[r - 1 - run].reasons in (["jump"], ["resuming"]):
                run += 1
            held = sum(rep_.reasons == ["jump"] for rep_ in reports[r - run : r])
            assert held >= confirm, (r, reports[: r + 1])
            from_live = r - 1 - run >= 0 and reports[r - 1 - run].status in LIVE
            assert (from_live and held == run) or run + 1 >= resume, (r, reports[: r + 1])


# 5. Conversion routes -----------------------------------------------------------------------


def _route_world() -> Config:
    """USDT/USD (a-d direct, d inverted as USD/USDT), ETH/USD quoted only in USDT (a-c) and
    BTC/USD with two direct venues and two in USDT; resume 2, jump hold 2."""
    return config(
        [
            {
                "symbol": "USDT/USD",
                "price_exponent": -6,
                "min_sources": 2,
                "max_age_ms": 500,
                "sources": [
                    {"source": s, "pair": "USD/USDT" if s == "d" else "USDT/USD"} for s in "abcd"
                ],
            },
            {
                "symbol": "ETH/USD",
                "min_sources": 2,
                "max_age_ms": 500,
                "sources": [{"source": s, "pair": "ETH/USDT"} for s in "abc"],
            },
            {
                "symbol": "BTC/USD",
                "min_sources": 2,
                "max_age_ms": 500,
                "sources": [
                    {"source": s, "pair": "BTC/USDT" if s in "cd" else "BTC/USD"} for s in "abcd"
                ],
            },
        ],
        [USDT_ROUTE],
        resume_rounds=2,
        jump_confirm_rounds=2,
    )


route_rounds = st.lists(
    st.tuples(
        st.one_of(st.none(), st.sampled_from((1.0, 0.9951, 1.0049, 1.2)), st.floats(0.97, 1.03)),
        st.one_of(st.none(), st.floats(1_900.0, 2_100.0)),
        st.lists(st.sampled_from("abc"), max_size=3, unique=True),
        st.sampled_from((None, None, None, True, False)),
    ),
    min_size=1,
    max_size=30,
)


@SETTINGS
@given(route_rounds)
def test_a_routed_price_is_the_product_of_its_legs_and_a_non_live_leg_blocks_it(
    rounds: list[tuple[float | None, float | None, list[str], bool | None]],
) -> None:
    """Each round the USDT venues quote a level (or stay silent), the ETH/USDT venues a price
    (some of them), BTC at a fixed level, and the operator may pause or release USDT/USD. Every
    used routed value is its quote times the leg's price of the round (divided, inverted); a
    routed-only market's price is that product at its decimals when its venues agree; and while
    the leg is not live no routed slot is used, ETH/USD is not live and, with a fresh routed
    quote, is unknown for `route` (docs/pricing.md section 3). ETH/USD comes back only after
    resume_rounds rounds with its leg live (its streak starts in the leg's first live round)."""
    tape = []
    for r, (usdt, eth, eth_sources, manual) in enumerate(rounds):
        quotes = []
        if usdt is not None:
            quotes += [Quote(s, "USDT/USD", _at(r), price=usdt) for s in "abc"]
            quotes.append(Quote("d", "USD/USDT", _at(r), price=1.0 / usdt))
        if eth is not None:
            quotes += [Quote(s, "ETH/USDT", _at(r), price=eth) for s in eth_sources]
        quotes += [Quote(s, "BTC/USD", _at(r), price=BASE) for s in "ab"]
        quotes += [Quote(s, "BTC/USDT", _at(r), price=BASE) for s in "cd"]
        tape.append(Round(quotes, {} if manual is None else {"USDT/USD": manual}))
    cfg = _route_world()
    core = Core(cfg)
    seen: list[list[Report]] = []
    for r, rnd in enumerate(tape):
        for q in rnd.quotes:
            assert core.ingest(q) is None
        for market, paused in rnd.manual.items():
            core.set_manual(market, paused)
        res = core.run_round(_at(r))
        usdt_rep, eth_rep, btc_rep = reports = res.reports()
        seen.append(reports)
        leg = float(res.price[0])
        for i, rep in ((1, eth_rep), (2, btc_rep)):
            for k, src in enumerate(rep.sources):
                if src.via is None or src.reason == "no_quote":
                    continue
                if usdt_rep.status not in LIVE:
                    assert not src.used and src.value is None, (rep, usdt_rep)
                    continue
                raw = core.book.latest[(src.id, src.pair, "spot")].price
                assert raw is not None
                assert res.value[i, k] == raw * leg, (rep, leg)
        if usdt_rep.status not in LIVE:
            assert eth_rep.status not in LIVE and eth_rep.price is None
            if any(s.reason == "route" for s in eth_rep.sources):
                assert eth_rep.status == "unknown" and "route" in eth_rep.reasons, eth_rep
            fresh = [s for s in eth_rep.sources if s.age_ms is not None and s.age_ms <= 500]
            assert all(s.reason == "route" for s in fresh), eth_rep
        elif eth_rep.status in LIVE:
            raws = {
                core.book.latest[(s.id, s.pair, "spot")].price for s in eth_rep.sources if s.used
            }
            if len(raws) == 1:
                (raw,) = raws
                assert raw is not None
                assert eth_rep.price == format(raw * leg, ".2f"), (eth_rep, leg)
    resume = cfg.oracle.resume_rounds
    for i in range(3):
        reps = [reports[i] for reports in seen]
        for r, rep in enumerate(reps):
            if rep.status in LIVE and r > 0 and reps[r - 1].status not in LIVE:
                assert went_live_legitimately(reps, r, resume), (r, reps[: r + 1])
                if i == 1:  # ETH/USD counts its streak only while its leg is live
                    legs = [seen[k][0].status for k in range(r - resume + 1, r + 1)]
                    assert all(status in LIVE for status in legs), (r, seen[: r + 1])


# 6. The mark of a perpetual market ----------------------------------------------------------


def _perp_world(min_perps: int) -> Config:
    """USDT/USD and BTC/USD (spot a-c); perpetuals p (BTC/USD), q and r (BTC/USDT, routed)."""
    return config(
        [
            {
                "symbol": "USDT/USD",
                "price_exponent": -4,
                "min_sources": 2,
                "max_age_ms": 600,
                "sources": [{"source": s, "pair": "USDT/USD"} for s in "abc"],
            },
            {
                "symbol": "BTC/USD",
                "min_sources": 2,
                "max_age_ms": 600,
                "sources": [{"source": s, "pair": "BTC/USD"} for s in "abc"],
                "perp_sources": [
                    {"source": "p", "pair": "BTC/USD"},
                    {"source": "q", "pair": "BTC/USDT"},
                    {"source": "r", "pair": "BTC/USDT"},
                ],
                "mark": {
                    "basis_half_life_s": 1,
                    "funding_interval_s": 60,
                    "max_perp_deviation": 0.05,
                    "min_perp_sources": min_perps,
                },
            },
        ],
        [USDT_ROUTE],
        resume_rounds=2,
        jump_confirm_rounds=2,
    )


perp_value = st.one_of(
    st.none(),
    st.floats(-0.08, 0.08),  # a premium: a single price
    st.tuples(st.floats(-0.08, 0.08), st.floats(0, 0.01)),  # a premium and a spread
)
mark_rounds = st.lists(
    st.tuples(
        st.one_of(st.none(), st.sampled_from((1.0, 1.0, 1.02, 1.3, 0.6))),
        st.one_of(st.none(), st.sampled_from((1.0, 1.0, 0.98, 1.2))),
        perp_value,
        perp_value,
        perp_value,
        st.sampled_from((1, 1, 1, 4)),  # rounds to the next one: sometimes a gap
    ),
    min_size=1,
    max_size=40,
)


def _perp_quotes(index: float, usdt: float, values: Sequence[object], now: int) -> list[Quote]:
    quotes = []
    for source, pair, v in zip("pqr", ("BTC/USD", "BTC/USDT", "BTC/USDT"), values, strict=True):
        units = 1.0 if pair == "BTC/USD" else 1.0 / usdt
        if isinstance(v, float):
            quotes.append(Quote(source, pair, now, price=index * (1 + v) * units, kind="perp"))
        elif isinstance(v, tuple):
            mid, spread = index * (1 + v[0]) * units, v[1]
            quotes.append(
                Quote(
                    source, pair, now, bid=mid * (1 - spread), ask=mid * (1 + spread), kind="perp"
                )
            )
    return quotes


@SETTINGS
@given(mark_rounds, st.integers(1, 3))
def test_the_mark_is_finite_positive_within_its_clamp_of_the_index_and_null_without_it(
    rounds: list[tuple[float | None, float | None, object, object, object, int]],
    min_perps: int,
) -> None:
    """Over tapes where the index jumps, pauses and resumes, the USDT leg comes and goes, and
    perpetuals print inside and beyond max_perp_deviation, one-sided or with spreads, with gaps
    between rounds: while the index is live the mark price is finite, positive and within
    max_perp_deviation of it (every estimator is, docs/mark.md); while it is not, the mark
    price is null with reason `index` (the funding fields may stay). A perpetual quoted in USDT
    never counts while the USDT/USD leg is not live (reason `route` when fresh)."""
    cfg = _perp_world(min_perps)
    core = Core(cfg)
    dev = 0.05
    now = T0
    index_level, usdt_level = 1.0, 1.0
    for spot, usdt, p, q, r_, gap in rounds:
        now += gap * ROUND_MS
        if usdt is not None:
            usdt_level = usdt
            for s in "abc":
                core.ingest(Quote(s, "USDT/USD", now, price=usdt))
        if spot is not None:
            index_level = spot
            for s in "abc":
                core.ingest(Quote(s, "BTC/USD", now, price=BASE * spot))
        for quote in _perp_quotes(BASE * index_level, usdt_level, (p, q, r_), now):
            assert core.ingest(quote) is None
        res = core.run_round(now)
        rep = res.report(1)
        mark = rep.mark
        assert mark is not None and res.mark is not None
        values = res.mark.values[1]
        if rep.status not in LIVE:
            assert (mark.price, mark.reason) == (None, "index"), rep
            continue
        x = float(res.price[1])
        assert mark.price is not None and Decimal(mark.price) > 0, rep
        assert abs(values.price / x - 1.0) <= dev * (1 + 1e-9), (values, x)
        for estimate in (values.basis_ema, values.perp_median, values.fallback):
            if estimate == estimate:
                assert abs(estimate / x - 1.0) <= dev * (1 + 1e-9), (values, x)
        assert values.perps_used == 0 or values.perps_used >= min_perps
        if res.report(0).status not in LIVE:  # q and r convert through USDT/USD: never at 1.0
            assert values.perp_reasons[1] in ("route", "stale", "no_quote"), values
            assert values.perp_reasons[2] in ("route", "stale", "no_quote"), values


# 7. Determinism and order ---------------------------------------------------------------------


# One quote: source, pair, kind, price factor, venue age (ms; distinct within a slot's round)
det_quote = st.tuples(
    st.sampled_from(
        (
            ("a", "USDT/USD", "spot"),
            ("b", "USDT/USD", "spot"),
            ("c", "USDT/USD", "spot"),
            ("a", "BTC/USD", "spot"),
            ("b", "BTC/USD", "spot"),
            ("c", "BTC/USD", "spot"),
            ("p", "BTC/USD", "perp"),
            ("q", "BTC/USDT", "perp"),
            ("r", "BTC/USDT", "perp"),
        )
    ),
    st.sampled_from((1.0, 1.0, 1.001, 0.98, 1.3, 0.5)),
    st.integers(0, 700),
)
det_rounds = st.lists(
    st.tuples(
        st.lists(det_quote, max_size=20),
        st.sampled_from((None, None, None, "BTC/USD", "USDT/USD")),
    ),
    min_size=1,
    max_size=25,
)
PAIR_BASE = {"USDT/USD": 1.0, "BTC/USD": BASE, "BTC/USDT": BASE}


def _det_tape(
    rounds: list[tuple[list[tuple[tuple[str, str, str], float, int]], str | None]],
) -> list[Round]:
    """Quotes with venue times; of several quotes of one slot in a round only those with
    distinct venue times are kept (equal times: the later one wins, docs/pricing.md section 1,
    so only distinct ones can promise order independence)."""
    tape = []
    manual: set[str] = set()
    for r, (quotes, toggle) in enumerate(rounds):
        kept: dict[tuple[str, str, str, int], Quote] = {}
        for (source, pair, kind), factor, age in quotes:
            kind_: Kind = "perp" if kind == "perp" else "spot"
            kept.setdefault(
                (source, pair, kind, age),
                Quote(
                    source,
                    pair,
                    _at(r),
                    price=PAIR_BASE[pair] * factor,
                    venue_ts=_at(r) - age,
                    kind=kind_,
                ),
            )
        commands = {}
        if toggle is not None:
            manual ^= {toggle}
            commands[toggle] = toggle in manual
        tape.append(Round(list(kept.values()), commands))
    return tape


@SETTINGS
@given(det_rounds, st.randoms(use_true_random=False))
def test_the_same_tape_gives_the_same_bytes_in_any_ingest_order_within_a_round(
    rounds: list[tuple[list[tuple[tuple[str, str, str], float, int]], str | None]],
    rnd: random.Random,
) -> None:
    """Two cores fed the same tape encode byte-identical reports, marks included; so does a
    core fed each round's quotes shuffled, several quotes of one slot with distinct venue times
    among them (the newest is held whatever the order, an older one is `out_of_order`)."""
    cfg = _perp_world(2)  # a conversion leg, spot and perpetuals
    tape = _det_tape(rounds)
    shuffled = []
    for t in tape:
        quotes = list(t.quotes)
        rnd.shuffle(quotes)
        shuffled.append(Round(quotes, t.manual))
    enc = msgspec.json.Encoder()
    runs = [play(cfg, tape), play(cfg, tape), play(cfg, shuffled)]
    for a, b, c in zip(*runs, strict=True):
        first = [enc.encode(rep) for rep in a.reports()]
        assert first == [enc.encode(rep) for rep in b.reports()]
        assert first == [enc.encode(rep) for rep in c.reports()]
