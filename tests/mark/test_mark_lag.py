"""The perpetuals' lag rule (docs/mark.md, Inputs; pricing revisions 25 to 28).

A perp venue silent behind an open socket keeps its last quote fresh until `max_age_ms`. Through
a fast move the silent ones held the perp median, and with it the mark that margin engines
liquidate on, at the level before the move, up to `max_perp_deviation` from the index. A perp
quote older than the market's `lag_ms` now counts only while the index, in the contract's own
currency, is within `max_deviation` of its value in the first live round at or after the quote's
own time (venue time where sent).

BTC/USD (mark_rig): spot a, b, c; perps p (BTC/USD), q (BTC/USDT through USDT/USD) and r
(BTC/USD); `lag_ms` 2 s and `max_deviation` 1 % (the defaults), `max_age_ms` 5 s.
"""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
from mark_rig import B, Rig, make_config

from oracled.aggregate.book import Layout
from oracled.config import parse_config
from oracled.mark import MarkEngine, MarkValues
from oracled.model import Quote

BTC = 1  # market index in mark_rig's config


def _rig(**mark: object) -> Rig:
    return Rig(make_config(more_perps="r", mark=dict(mark)))


def _step(
    rig: Rig,
    now: int,
    index: float,
    *,
    p: float | None = None,
    q: float | None = None,
    r: float | None = None,
) -> MarkValues:
    """One round: spot at `index`, each perp given a quote received now (None: silent)."""
    if r is not None:
        assert rig.core.ingest(Quote("r", "BTC/USD", now, price=r, kind="perp")) is None
    rig.round(now, index=index, p=p, q=q)
    assert rig.last is not None and rig.last.mark is not None
    return rig.last.mark.values[BTC]


def test_two_silent_perps_of_three_no_longer_hold_the_mark_through_a_fall() -> None:
    """An 8 % fall over 10 s with p and r silent from its start (min_perp_sources 2): their
    quotes count while they are young (2 s), then are `stale` once the index has moved more than
    1 % since they quoted, and the mark falls back to the index and the kept basis instead of
    the old level (before revision 25: the perp median at the old level until 5 s, the mark up
    to 1.3 % above the index)."""
    rig = _rig(min_perp_sources=2)
    for s in range(5):  # calm: all three quote a small premium
        _step(rig, B + s * 1_000, 100.0, p=100.05, q=100.05, r=100.05)
    start = B + 4_000
    worst_after_lag = 0.0
    for tenth in range(1, 101):  # 8 % in 10 s, a round every 100 ms
        now = start + tenth * 100
        index = 100.0 * (1.0 - 0.008 * tenth / 10)
        v = _step(rig, now, index, q=index * 1.0005)
        if tenth > 20:  # p and r older than lag_ms
            if 100.0 - index > 1.0 * (1 + 1e-12):  # moved 1 % since they last quoted at 100
                assert v.perp_reasons == ("stale", "too_few", "stale"), (tenth, v)
                assert v.mode == "fallback", v
            worst_after_lag = max(worst_after_lag, abs(v.price / index - 1.0))
    assert worst_after_lag < 0.002  # the kept basis (0.05 %) and the moves of its samples


def test_quiet_perps_near_the_index_and_the_basis_keep_counting() -> None:
    """A calm market: p and r silent for 4 s (older than lag_ms) at a 2 % premium still count,
    though 2 % from the index: they are judged by how far the index has moved since they quoted,
    not by how far they are from it (a contract trades at a basis)."""
    rig = _rig(max_perp_deviation=0.05)
    for s in range(120):  # two minutes at a steady 2 % premium: the EMA (60 s half-life) is there
        _step(rig, B + s * 1_000, 100.0, p=102.0, q=102.0, r=102.0)
    last = B + 119_000
    v = _step(rig, last + 4_000, 100.0, q=102.0)
    assert v.perp_reasons == (None, None, None), v
    assert v.perps_used == 3


def test_an_old_perp_counts_until_the_index_has_moved_max_deviation_since_it_quoted() -> None:
    """p quotes once with the index at 100; spot alone from then on. 3 s later (older than
    lag_ms) it counts with the index 0.9 % and exactly 1 % away (the boundary counts, as
    everywhere) and is stale at 1.1 %, its mid still shown."""
    rig = _rig()
    _step(rig, B, 100.0, p=100.2)
    assert _step(rig, B + 3_000, 100.9).perp_reasons[0] is None
    assert _step(rig, B + 3_500, 101.0).perp_reasons[0] is None
    v = _step(rig, B + 4_000, 101.1)
    assert v.perp_reasons == ("stale", "no_quote", "no_quote"), v
    assert v.perp_mids[0] == 100.2  # its mid is kept for /v1/markets/{market}/sources
    back = _step(rig, B + 4_500, 100.5)  # the index back within 1 %: it counts again
    assert back.perp_reasons[0] is None, back


def test_a_young_perp_is_never_judged_by_the_rule() -> None:
    """A young print 3 % from the index (within max_perp_deviation) counts as before: the rule
    judges only quotes older than lag_ms, and one venue's fresh print is the deviation check's
    business."""
    rig = _rig()
    v = _step(rig, B, 100.0, p=103.0)
    assert v.perp_reasons == (None, "no_quote", "no_quote"), v
    assert math.isclose(v.perp_median, 103.0)


def test_an_old_routed_perp_is_judged_like_a_direct_one() -> None:
    """q quotes BTC/USDT, converted through USDT/USD at 0.98. Old, it counts while the index
    stays where it was when q quoted, and is stale once the index has moved 2 %."""
    rig = _rig()
    rig.round(B, index=100.0, usdt=0.98, q=100.0 / 0.98)
    assert rig.last is not None and rig.last.mark is not None
    rig.round(B + 3_000, index=100.0, usdt=0.98)
    assert rig.last is not None and rig.last.mark is not None
    v = rig.last.mark.values[BTC]
    assert v.perp_reasons == ("no_quote", None, "no_quote"), v
    # the index moves 2 % under the old routed quote: stale
    rig.round(B + 4_000, index=102.0, usdt=0.98)
    assert rig.last is not None and rig.last.mark is not None
    assert rig.last.mark.values[BTC].perp_reasons == ("no_quote", "stale", "no_quote")


def test_lag_ms_is_the_markets_own() -> None:
    """r quoted with the index at 100; 3 s later the index is at 98. A market with lag_ms 10 s
    keeps r counting; the same at 2 s makes it stale."""
    for lag, want in ((10_000, None), (2_000, "stale")):
        rig = Rig(make_config(more_perps="r", lag_ms=lag))
        _step(rig, B, 100.0, r=100.0)
        v = _step(rig, B + 3_000, 98.0)
        assert v.perp_reasons[2] == want, (lag, v)


def test_a_quote_first_seen_while_the_index_was_not_live_is_judged_from_the_first_live_round() -> (
    None
):
    """No spot quote yet (no index): p's quote (96) is held but nothing is checked. The first live
    round (index 95) is where it is seen: 3 s after its quote the index at 95.5 leaves it
    counting, at 96.5 (1.6 % from 95) it is stale."""
    rig = _rig()
    assert rig.core.ingest(Quote("p", "BTC/USD", B, price=96.0, kind="perp")) is None
    rig.round(B + 500, index=None, usdt=None)
    assert rig.last is not None and rig.last.mark is not None
    assert rig.last.mark.values[BTC].perp_reasons[0] == "index"
    assert _step(rig, B + 1_000, 95.0).perp_reasons[0] is None
    assert _step(rig, B + 3_000, 95.5).perp_reasons[0] is None
    assert _step(rig, B + 3_500, 96.5).perp_reasons[0] == "stale"


def test_a_short_basis_half_life_does_not_let_silent_perps_judge_themselves() -> None:
    """With basis_half_life_s 0.5 the EMA follows whatever counts within a round or two: while
    the silent perps held the median, their basis became the kept basis, and a level made of it
    never left them behind. Judged by how far the index has moved since each quote's time, they
    are stale once it has moved 1 %, whatever the EMA."""
    rig = _rig(min_perp_sources=2, basis_half_life_s=0.5)
    for s in range(5):
        _step(rig, B + s * 1_000, 100.0, p=100.05, q=100.05, r=100.05)
    start = B + 4_000
    for tenth in range(1, 41):  # 8 % in 10 s, a round every 100 ms, for 4 s
        now = start + tenth * 100
        index = 100.0 * (1.0 - 0.008 * tenth / 10)
        v = _step(rig, now, index, q=index * 1.0005)
        if tenth > 20:  # older than lag_ms, and the index 1.6 % or more from where it was
            assert v.perp_reasons == ("stale", "too_few", "stale"), (tenth, v)


def test_a_frozen_ticker_polled_again_is_still_left_behind() -> None:
    """r's stream is down and its venue's book frozen: each REST poll answers the same ticker with
    the same venue time (a ticker stamped with its book's last change), a new quote the book
    holds in place of the old one (not older). Its age runs from that venue time, and so does
    the rule: through a 3 % fall it is stale once the index has left 100 by 1 %, however often
    the poll repeats it (before, each repeat was judged from the index of its own round, and a
    poll every round kept it counting until max_age_ms)."""
    rig = _rig()
    for s in range(3):
        _step(rig, B + s * 1_000, 100.0, p=100.0, r=100.0)
    frozen = B + 2_000
    for tenth in range(1, 31):  # 3 % in 3 s, a round every 100 ms, a poll before each
        now = frozen + tenth * 100
        index = 100.0 * (1.0 - 0.01 * tenth / 10)
        poll = Quote("r", "BTC/USD", now, price=100.0, kind="perp", venue_ts=frozen)
        assert rig.core.ingest(poll) is None  # not older than the one held: it replaces it
        v = _step(rig, now, index, p=index)
        if tenth > 20:  # older than lag_ms, the index 2 % or more below 100
            assert v.perp_reasons == (None, "no_quote", "stale"), (tenth, v)


def test_an_old_routed_perp_is_left_behind_by_a_move_of_its_leg() -> None:
    """q quotes BTC/USDT at 100 with USDT at 1.00, then falls silent; USDT/USD falls 3 % (a
    depeg) while BTC/USD stays at 100, so BTC/USDT is now 103: q's old quote, 97 in USD, is 3 %
    under the index, inside max_perp_deviation. It is judged by the index in its own currency
    (x / leg), which has moved 3 %: stale (before, the index in USD had not moved, and q held
    the perp median at 97)."""
    rig = _rig()
    rig.round(B, index=100.0, usdt=1.0, q=100.0)
    rig.round(B + 3_000, index=100.0, usdt=0.97, p=100.0)
    assert rig.last is not None and rig.last.mark is not None
    v = rig.last.mark.values[BTC]
    assert v.perp_reasons == (None, "stale", "no_quote"), v
    assert math.isclose(v.perp_mids[1], 97.0)
    assert v.perp_median == 100.0


def test_an_old_routed_perp_that_moved_with_its_leg_keeps_counting() -> None:
    """The other way round: q quotes BTC/USDT at 100 with USDT at 1.00; then USDT/USD and
    BTC/USD both fall 3 % while BTC/USDT stays at 100. q's quiet quote, 97 in USD, is where the
    market is: it counts (before, the 3 % move of the index in USD made it stale)."""
    rig = _rig()
    rig.round(B, index=100.0, usdt=1.0, q=100.0)
    rig.round(B + 3_000, index=97.0, usdt=0.97)
    assert rig.last is not None and rig.last.mark is not None
    v = rig.last.mark.values[BTC]
    assert v.perp_reasons == ("no_quote", None, "no_quote"), v
    assert math.isclose(v.perp_median, 97.0)


def test_a_reload_keeps_the_index_each_old_perp_was_first_seen_with() -> None:
    """p and q quote with the index at 100 and fall silent; a reload (lag_ms 2.5 s, r no longer
    listed) comes as the index starts to move. 3 s after they quoted, the index at 102 has left
    them by 2 % since they quoted: stale under the new lag_ms, as without the reload (a reload
    that forgot where they were seen would judge them from the index of the first round after
    it, and they would count through the move)."""
    rig = _rig()
    _step(rig, B, 100.0, p=100.0, q=100.0, r=100.0)
    _step(rig, B + 1_000, 100.5)
    rig.core.reconfigure(make_config(lag_ms=2_500))
    rig.round(B + 2_000, index=101.0)
    rig.round(B + 3_000, index=102.0)
    assert rig.last is not None and rig.last.mark is not None
    v = rig.last.mark.values[BTC]
    assert v.perp_reasons == ("stale", "stale"), v


def test_perps_whose_quotes_arrive_late_do_not_hold_the_mark_through_a_fall() -> None:
    """p and r quote all along, but their feeds lag 3 s: each quote arrives with the venue time
    and the price of 3 s before. Through an 8 % fall over 10 s (min_perp_sources 2), older than
    lag_ms as they arrive, each is judged from the index of the round at its own time, which the
    index has left by 2.4 %: stale, and the mark falls back to the index and the kept basis
    (before, each was judged from the index of the round that first held it, and the two held
    the perp median, and the mark, up to 1.5 % over the index through the fall)."""
    rig = _rig(min_perp_sources=2)

    def level(t: int) -> float:  # the index t ms after the fall starts
        return 100.0 * (1.0 - 0.08 * min(max(t, 0), 10_000) / 10_000)

    start = B + 5_000
    for tenth in range(-50, 101):  # 5 s calm, then the fall; a round every 100 ms
        t = tenth * 100
        now = start + t
        for perp in "pr":  # the level of 3 s before, stamped then
            late = Quote(
                perp,
                "BTC/USD",
                now,
                price=level(t - 3_000) * 1.0005,
                kind="perp",
                venue_ts=now - 3_000,
            )
            assert rig.core.ingest(late) is None
        v = _step(rig, now, level(t), q=level(t) * 1.0005)
        if t < 0:
            assert v.perp_reasons == (None, None, None), (tenth, v)  # old, on a flat index
        elif t > 1_300:  # the index 1 % or more from where it was at each quote's own time
            assert v.perp_reasons == ("stale", "too_few", "stale"), (tenth, v)
            assert abs(v.price / level(t) - 1.0) < 0.002, (tenth, v)


def test_the_rounds_remembered_for_late_quotes_are_bounded() -> None:
    """max_age_ms 200 s, rounds 100 ms apart: the engine would need 2,000 rounds to cover the age
    limit, and keeps the last 1,024 (102.4 s; docs/mark.md, Inputs). The index is 100 for 20 s,
    then 103. p's quote stamped at the start arrives 150 s late: judged from the oldest round
    kept (103), not from its own time (100), it counts, as documented, and memory stays bounded
    however long the age limit."""
    rig = Rig(make_config(more_perps="r", max_age_ms=200_000))
    for tenth in range(1_501):
        now = B + tenth * 100
        if tenth == 1_500:
            late = Quote("p", "BTC/USD", now, price=100.0, kind="perp", venue_ts=B)
            assert rig.core.ingest(late) is None
        rig.round(now, index=100.0 if tenth < 200 else 103.0)
    assert rig.last is not None and rig.last.mark is not None
    v = rig.last.mark.values[BTC]
    assert v.perp_reasons == (None, "no_quote", "no_quote"), v


def test_a_quote_ahead_of_its_first_round_is_judged_from_that_round() -> None:
    """r's venue clock runs 500 ms ahead: its quote, stamped after the round that first holds it
    (index 100), is judged from that round's index, not from the next one's (101.5, the first at
    or after its venue time), as docs/mark.md (Inputs, item 4) says: 2.5 s later, the index
    still at 101.5, 1.5 % from 100, it is stale."""
    rig = _rig()
    ahead = Quote("r", "BTC/USD", B, price=100.0, kind="perp", venue_ts=B + 500)
    assert rig.core.ingest(ahead) is None
    assert _step(rig, B, 100.0).perp_reasons[2] is None
    assert _step(rig, B + 1_000, 101.5).perp_reasons[2] is None  # young
    assert _step(rig, B + 3_000, 101.5).perp_reasons[2] == "stale"


def test_the_rounds_remembered_take_a_few_bytes_each() -> None:
    """At its bound the history is 1,024 rounds a market; as tuples of a time and a tuple of
    indices it took about 150 bytes a round, 150 MB over 1,000 perpetual markets with a long
    age limit and fast rounds (132 KB here). Kept in flat arrays of 8-byte numbers it takes 8 per
    time and 8 per perpetual (32 for BTC/USD's three), twice that at most before the arrays are
    cut (49 KB here)."""
    rig = Rig(make_config(more_perps="r", max_age_ms=200_000))
    for tenth in range(200):
        rig.round(B + tenth * 100, index=100.0, p=100.0)

    def later_rounds() -> None:
        for tenth in range(200, 1_500):
            rig.round(B + tenth * 100, index=100.0)

    grown = _engine_growth(later_rounds)
    assert grown < 2 * 1_024 * 32 * 1.25, grown  # 132 KB as tuples


def _engine_growth(run: Callable[[], object]) -> int:
    """Bytes that allocations made in oracled/mark/engine.py grew by while `run` ran, what it
    returns still held (an engine it made). Traced 8 frames deep: numpy allocates from Python
    frames of its own (numpy.full), so the engine's frame may not be the last."""
    tracemalloc.start(8)
    try:
        start = tracemalloc.take_snapshot()
        held = run()
        end = tracemalloc.take_snapshot()
        del held
    finally:
        tracemalloc.stop()
    engine = [tracemalloc.Filter(True, "*/mark/engine.py", all_frames=True)]
    return sum(
        stat.size_diff
        for stat in end.filter_traces(engine).compare_to(start.filter_traces(engine), "filename")
    )


def _engine(count: int, long: int) -> MarkEngine:
    """`count` markets X0/USD... of three perpetuals p, q, r (10 s `max_age_ms`, the default),
    market `long` with 50 minutes instead, rounds of 1 s."""
    markets: list[dict[str, Any]] = [
        {
            "symbol": f"X{i}/USD",
            "min_sources": 1,
            "sources": [{"source": "a", "pair": f"X{i}/USD"}],
            "perp_sources": [{"source": s, "pair": f"X{i}/USD"} for s in "pqr"],
        }
        for i in range(count)
    ]
    markets[long]["max_age_ms"] = 3_000_000
    cfg = parse_config(
        {
            "oracle": {"round_interval_ms": 1_000},
            "sources": {s: {"type": "okx"} for s in "apqr"},
            "markets": markets,
        },
        env={},
    )
    return MarkEngine(cfg, Layout.from_config(cfg))


def test_one_long_age_limit_does_not_lengthen_every_market_s_history() -> None:
    """100 markets of three perpetuals, one with a 50-minute `max_age_ms`, rounds of 1 s: the
    long one keeps 1,024 rounds, the others the 10 of their 10 s. Each market's history is as
    long as its own window needs (at most 128 rounds for 10, 1,280 at the bound: 0.45 MB); with
    one length for every row, the long window grew all 100 to 2,048 rounds (6.6 MB)."""
    index = np.full(100, 100.0)

    def rounds() -> MarkEngine:
        engine = _engine(100, long=37)
        for s in range(1_100):
            engine.step(B + s * 1_000, index, {})
        return engine

    grown = _engine_growth(rounds)
    per_round = 8 + 3 * 8  # a time and three indices
    assert grown < (99 * 128 + 1_280) * per_round * 1.25, grown


def test_a_late_quote_beside_a_market_with_a_shorter_history_is_judged_from_its_time() -> None:
    """X1/USD keeps 50 minutes of rounds, X0/USD 10 s: after 100 rounds their histories are of
    different lengths. p's quote for X1 arrives at 104 s stamped 98 s, when the index was 100;
    the index has been 101.5 since 100 s, 1.5 % away, so the quote is stale, as it is beside
    markets of its own length: X1's rounds are read, not X0's (whose index is not live since
    99 s: by its rounds, 98 s is after the round before this one, and the quote is new).
    """
    engine = _engine(2, long=1)
    for s in range(105):
        index = np.array([100.0 if s < 99 else math.nan, 100.0 if s < 100 else 101.5])
        perps: dict[tuple[str, str, str], Quote] = {}
        if s == 104:
            late = Quote(
                "p", "X1/USD", B + s * 1_000, price=101.5, kind="perp", venue_ts=B + 98_000
            )
            perps[("p", "X1/USD", "perp")] = late
        values = engine.step(B + s * 1_000, index, perps).values
    assert values[1].perp_reasons == ("stale", "no_quote", "no_quote")
