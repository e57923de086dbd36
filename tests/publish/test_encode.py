"""ReportEncoder: the array encoder writes exactly the bytes msgspec writes for `Report` objects."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import msgspec
import numpy as np

from oracled.config import Config, parse_config
from oracled.core import Core, RoundResult
from oracled.model import Quote
from oracled.publish.encode import ReportEncoder

T0 = 1_700_000_000_000
SPOT = ("a1", "b2", "c3", "d4", "e5")
# Source flags with characters a template must escape or carry through: % " \ and non-ASCII.
FLAGS = ("bound", 'pct%d "quoted" \\ back', "séquenceur")


def make_config(btc_exponent: int = -2, reloaded: bool = False) -> Config:
    """A leg (USDT/USD), direct and USDT-routed markets at several precisions and weights, and a
    perpetual market with a mark; markets list different numbers of sources. `reloaded` is the
    same world reconfigured: markets in another order, BTC/USD with its sources reordered,
    reweighted and one fewer, ETH/USD with one more, and a new market (SOL/USD)."""
    markets: list[dict[str, Any]] = [
        {
            "symbol": "USDT/USD",
            "price_exponent": -4,
            "min_sources": 2,
            "sources": [{"source": s, "pair": "USDT/USD"} for s in SPOT[:3]],
        },
        {
            "symbol": "BTC/USD",
            "price_exponent": btc_exponent,
            "min_sources": 2,
            "max_age_ms": 2_000,
            "sources": [
                {"source": "a1", "pair": "BTC/USD", "weight": 2.0},
                {"source": "b2", "pair": "BTC/USDT", "weight": 1.5},
                {"source": "c3", "pair": "BTC/USD", "weight": 0.1},
                {"source": "d4", "pair": "BTC/USDT"},
                {"source": "e5", "pair": "BTC/USD", "weight": 1e-7},
            ],
            "perp_sources": [
                {"source": "p", "pair": "BTC/USD"},
                {"source": "q", "pair": "BTC/USDT"},
            ],
            "mark": {},
        },
        {
            "symbol": "ETH/USD",
            "price_exponent": 0,
            "min_sources": 3,
            "min_price": 1_000.0,
            "max_price": 10_000.0,
            "sources": [{"source": s, "pair": "ETH/USD"} for s in SPOT[:4]],
        },
        {
            "symbol": "PEPE/USD",
            "price_exponent": -18,
            "min_sources": 1,
            "sources": [{"source": s, "pair": "PEPE/USDT", "weight": 3.0} for s in SPOT[:2]],
        },
    ]
    if reloaded:
        btc = markets[1]
        btc["sources"] = [
            {**src, "weight": 0.5 + k} for k, src in enumerate(reversed(btc["sources"][:4]))
        ]
        markets[2]["sources"].append({"source": "e5", "pair": "ETH/USD", "weight": 4.0})
        markets.append(
            {
                "symbol": "SOL/USD",
                "price_exponent": -3,
                "min_sources": 2,
                "sources": [{"source": s, "pair": "SOL/USDT"} for s in SPOT[1:4]],
            }
        )
        markets.reverse()
    return parse_config(
        {
            "oracle": {"round_interval_ms": 250, "resume_rounds": 2},
            "sources": {
                **{s: {"type": "binance"} for s in SPOT},
                **{s: {"type": "okx"} for s in ("p", "q")},
            },
            "markets": markets,
            "routes": [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
        },
        env={},
    )


BASE = {
    "USDT/USD": 1.0,
    "BTC/USD": 64_000.125,
    "ETH/USD": 3_100.5,
    "PEPE/USD": 0.0000123,
    "SOL/USD": 151.0625,
}


def feed(core: Core, rng: random.Random, now: int) -> None:
    """Random quotes for one round: missing, stale, future, outlying, flagged and perp ones."""
    for m in core.config.markets:
        for s in m.sources:
            roll = rng.random()
            if roll < 0.15:
                continue  # no new quote: the slot keeps its old one, or has none
            quote_ccy = s.pair.split("/")[1]
            base = BASE[m.symbol] * (1.0 if quote_ccy == m.symbol.split("/")[1] else 1.0001)
            price = base * rng.uniform(0.995, 1.005)
            if roll < 0.22:
                price *= rng.choice((0.5, 1.6, 40.0))  # an outlier or out of bounds
            age = rng.choice((0, 5, 120, 1_900, 2_500, 12_000, -30))
            flag = rng.choice(FLAGS) if roll > 0.96 else None
            core.ingest(Quote(s.source, s.pair, now, price=price, venue_ts=now - age, flag=flag))
        for p in m.perp_sources:
            if rng.random() < 0.7:
                price = BASE[m.symbol] * rng.uniform(0.99, 1.01)
                core.ingest(Quote(p.source, p.pair, now, price=price, kind="perp"))
    if rng.random() < 0.05:
        core.set_manual(rng.choice(core.markets), rng.random() < 0.5)


def reference(result: RoundResult, indices: list[int]) -> list[bytes]:
    return [msgspec.json.encode(result.report(i)) for i in indices]


def test_array_encoding_is_byte_identical_to_report_encoding_over_random_rounds() -> None:
    """Over 400 random rounds (every status, stale, routed, blocked, outlying, flagged and
    missing slots, prices at 0 to 18 decimals, marks), one long-lived encoder writes exactly
    msgspec's bytes of `result.report(i)`, for all markets and for random subsets in any order."""
    rng = random.Random(20_240_611)
    core = Core(make_config())
    encoder = ReportEncoder()
    seen_status: set[str] = set()
    seen_reasons: set[str | None] = set()
    seen_via: set[tuple[str, str | None]] = set()
    now = T0
    for _ in range(400):
        now += 250
        feed(core, rng, now)
        result = core.run_round(now)
        every = list(range(len(core.markets)))
        assert encoder.encode(result, every) == reference(result, every)
        subset = rng.sample(every, rng.randint(1, len(every)))
        assert encoder.encode(result, subset) == reference(result, subset)
        for report in result.reports():
            seen_status.add(report.status)
            seen_reasons.update(s.reason for s in report.sources)
            seen_via.update((s.pair, s.via) for s in report.sources)
    # The rounds did cover what they claim to cover, routed slots naming their leg among them.
    assert seen_status == {"active", "degraded", "paused", "unknown"}
    assert seen_via == {
        ("USDT/USD", None),
        ("BTC/USD", None),
        ("ETH/USD", None),
        ("BTC/USDT", "USDT/USD"),
        ("PEPE/USDT", "USDT/USD"),
    }
    assert {None, "no_quote", "stale", "route", "bounds", "outlier", *FLAGS} <= seen_reasons


def test_marks_are_spliced_into_the_report() -> None:
    """A perpetual market's report carries its `mark` object exactly as msgspec encodes it."""
    rng = random.Random(7)
    core = Core(make_config())
    encoder = ReportEncoder()
    btc = core.index["BTC/USD"]
    for k in range(1, 6):
        feed(core, rng, T0 + 250 * k)
        result = core.run_round(T0 + 250 * k)
    (data,) = encoder.encode(result, [btc])
    assert data == msgspec.json.encode(result.report(btc))
    assert msgspec.json.decode(data)["mark"]["next_funding_ts"] > 0


def test_times_beyond_float_precision_are_encoded_exactly() -> None:
    """An age or last-good time that a float cannot hold exactly is still encoded exactly."""
    rng = random.Random(3)
    core = Core(make_config())
    for k in range(1, 5):
        feed(core, rng, T0 + 250 * k)
    result = core.run_round(T0 + 1_250)
    huge = 2**53 + 1
    age = result.age.copy()
    age[:, 0] = huge
    last_good_ts = np.where(result.last_good_ts >= 0, huge + 2, result.last_good_ts)
    odd = dataclasses.replace(result, age=age, last_good_ts=last_good_ts)
    every = list(range(len(core.markets)))
    encoded = ReportEncoder().encode(odd, every)
    assert encoded == reference(odd, every)
    assert any(b'"age_ms":9007199254740993' in e for e in encoded)


def test_a_new_layout_or_new_flag_names_start_from_fresh_templates() -> None:
    """After a reconfigure (new layout) or a newly seen flag, the encoder still matches."""
    rng = random.Random(11)
    core = Core(make_config())
    encoder = ReportEncoder()
    now = T0
    for step in range(60):
        now += 250
        feed(core, rng, now)
        if step == 30:
            core.reconfigure(make_config())
        result = core.run_round(now)
        every = list(range(len(core.markets)))
        assert encoder.encode(result, every) == reference(result, every)
    assert encoder.encode(result, []) == []


def feed_some(
    core: Core, rng: random.Random, now: int, share: float, last: dict[tuple[str, str], float]
) -> None:
    """New quotes for a `share` of the slots only (the others keep their value); a third of the
    new quotes repeat the slot's last price exactly (same value, newer age)."""
    for m in core.config.markets:
        for s in m.sources:
            if rng.random() >= share:
                continue
            key = (s.source, s.pair)
            price = last.get(key)
            if price is None or rng.random() < 0.67:
                price = BASE[m.symbol] * rng.uniform(0.995, 1.005)
                if rng.random() < 0.05:
                    price *= rng.choice((0.5, 40.0))  # an outlier or out of bounds
            last[key] = price
            age = rng.choice((0, 5, 120, 1_900, 2_500))
            core.ingest(Quote(s.source, s.pair, now, price=price, venue_ts=now - age))


def test_decimal_strings_kept_from_round_to_round_stay_exact() -> None:
    """One encoder over 320 consecutive rounds in which none, few, half or all of the slots get a
    new quote (some at the very same price), through a reconfigure that changes a market's
    precision but not its prices, and with older rounds encoded again in between: every report
    is msgspec's bytes, so a kept decimal string is only reused for the same float at the same
    precision."""
    rng = random.Random(99)
    core = Core(make_config())
    encoder = ReportEncoder()
    last: dict[tuple[str, str], float] = {}
    results: list[RoundResult] = []
    same = changed = 0
    now = T0
    for n in range(320):
        now += 250
        feed_some(core, rng, now, (0.0, 0.05, 0.5, 1.0)[n // 10 % 4], last)
        if n == 200:  # BTC/USD at 3 decimals instead of 2: the same floats, other strings
            core.reconfigure(make_config(btc_exponent=-3))
        result = core.run_round(now)
        every = list(range(len(core.markets)))
        assert encoder.encode(result, every) == reference(result, every)
        subset = rng.sample(every, rng.randint(1, len(every)))
        assert encoder.encode(result, subset) == reference(result, subset)
        if results and results[-1].layout is result.layout:
            before, after = results[-1].value, result.value
            both = np.isfinite(before) & np.isfinite(after)
            same += int((both & (before == after)).sum())
            changed += int((both & (before != after)).sum())
        if n % 7 == 6:  # an older round again: its floats differ from the ones kept since
            old = results[rng.randrange(max(0, len(results) - 20), len(results))]
            if old.layout is result.layout:
                assert encoder.encode(old, every) == reference(old, every)
        results.append(result)
    # Both cases happened many times: values kept from the round before, and values changed.
    assert same > 500 and changed > 500


def test_routed_slots_name_their_leg_and_others_carry_no_via_key() -> None:
    """A slot quoted in USDT carries `"via":"USDT/USD"` after `age_ms`, in both the array
    encoding and msgspec's, whatever its state; a direct slot has no `via` key at all."""
    rng = random.Random(5)
    core = Core(make_config())
    encoder = ReportEncoder()
    for k in range(1, 4):
        feed(core, rng, T0 + 250 * k)
        result = core.run_round(T0 + 250 * k)
    every = list(range(len(core.markets)))
    encoded = encoder.encode(result, every)
    assert encoded == reference(result, every)
    for data in encoded:
        for slot in msgspec.json.decode(data)["sources"]:
            if slot["pair"].endswith("/USDT"):
                assert list(slot)[-2:] == ["age_ms", "via"]
                assert slot["via"] == "USDT/USD"
            else:
                assert "via" not in slot


def test_a_report_paused_for_resolution_carries_no_live_price() -> None:
    """XYZ/USD (two decimals) is live at 1.05, then its sources agree on 0.014: the encoded
    report is paused for resolution with price and confidence null (it went out `active` at
    "0.01", 29 % off, before) and 1.05 kept apart as the last good price, in the same bytes as the
    `Report` path, for a fresh encoder and for one that encoded the live rounds."""
    cfg = parse_config(
        {
            "oracle": {"resume_rounds": 1},
            "sources": {s: {"type": "binance"} for s in SPOT[:3]},
            "markets": [
                {
                    "symbol": "XYZ/USD",
                    "min_sources": 2,
                    "sources": [{"source": s, "pair": "XYZ/USD"} for s in SPOT[:3]],
                }
            ],
        },
        env={},
    )
    core = Core(cfg)
    warm = ReportEncoder()
    for k, price in enumerate((1.05, 1.05, 0.014)):
        now = T0 + k * 250
        for s in SPOT[:3]:
            assert core.ingest(Quote(s, "XYZ/USD", now, price=price)) is None
        result = core.run_round(now)
        (data,) = warm.encode(result, [0])
    assert [data] == ReportEncoder().encode(result, [0]) == reference(result, [0])
    report = msgspec.json.decode(data)
    assert (report["status"], report["reasons"]) == ("paused", ["resolution"])
    assert (report["price"], report["confidence"]) == (None, None)
    assert report["last_good_price"] == "1.05"


def test_a_fresh_encoder_fed_subsets_in_any_order_first_matches_then_for_all() -> None:
    """A fresh encoder (daemon start) and one after each reload to another layout (markets
    reordered, added, sources reordered, reweighted, added and removed) is given a random subset
    of markets in a random order first, in slices, and only then every market: each call writes
    msgspec's bytes, and after the first slice only the markets encoded so far have their
    literal pieces made (nothing is built for the whole layout at once)."""
    rng = random.Random(4_242)
    core = Core(make_config())
    encoder = ReportEncoder()
    now = T0
    fresh_layouts = 0
    for step in range(240):
        now += 250
        feed(core, rng, now)
        if step % 40 == 39:  # a reload: the other layout, or back
            core.reconfigure(make_config(reloaded=step % 80 == 39))
        if step % 60 == 59:
            encoder = ReportEncoder()  # a restart
        result = core.run_round(now)
        every = list(range(len(result.layout.markets)))
        fresh = encoder._static is None or encoder._static.layout is not result.layout
        subset = rng.sample(every, rng.randint(1, len(every)))
        seen: set[int] = set()
        while subset:
            size = rng.randint(1, 3)
            part, subset = subset[:size], subset[size:]
            assert encoder.encode(result, part) == reference(result, part)
            seen.update(part)
            if fresh:
                # Private, on purpose: laziness leaves no trace in the bytes.
                static = encoder._static
                assert static is not None
                assert {i for i, m in enumerate(static.markets) if m is not None} == seen
        fresh_layouts += fresh
        assert encoder.encode(result, every) == reference(result, every)
    assert fresh_layouts == 9  # the start, 6 reloads, 4 restarts (two on a reload's round)


def test_warm_says_whether_encoding_would_make_a_template() -> None:
    """`warm` (what the hub sizes its slices by) holds for markets encoded before in this
    layout, and for nothing of a fresh encoder, of a new layout or after new flag names."""
    rng = random.Random(5)
    core = Core(make_config())
    encoder = ReportEncoder()
    feed(core, rng, T0)
    result = core.run_round(T0)
    every = list(range(len(result.layout.markets)))
    assert len(every) > 2
    assert not encoder.warm(result, every)
    encoder.encode(result, every[:2])
    assert encoder.warm(result, every[:2])
    assert not encoder.warm(result, every)
    encoder.encode(result, every)
    assert encoder.warm(result, every)
    feed(core, rng, T0 + 250)
    assert encoder.warm(core.run_round(T0 + 250), every)  # templates outlive the round
    renamed = dataclasses.replace(result, slot_names=(*result.slot_names, "newly-seen"))
    assert not encoder.warm(renamed, every)
    core.reconfigure(make_config(reloaded=True))
    feed(core, rng, T0 + 500)
    reloaded = core.run_round(T0 + 500)
    assert not encoder.warm(reloaded, range(len(reloaded.layout.markets)))
