"""Every bit of the mark engine's outputs, pinned over generated tapes.

The engine computes on arrays; before that it computed per market in Python. Replays must give
the same marks byte for byte on any machine and across such rewrites, so this digest of every
`MarkValues` field of every round (`repr`: the float's bits up to NaN payloads, the sign of a
zero, int or None) was taken with the per-market engine and must not move without a
PRICING_REVISION bump. test_mark_sequences.py checks the rules within a relative 1e-9; this
checks that nothing moved at all.

The tapes drive `MarkEngine` directly, not through the book, so that the values the door drops
(NaN, infinities, zero, negatives, a lone bid) reach it too; routed perpetuals (a leg multiplied
and a leg divided), round times that repeat, go back or jump over funding intervals, quotes from
past rounds (the lag rule's history), pauses of the index and of a leg, and reloads that reorder,
add and drop perpetuals and change the mark settings.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

import numpy as np

from oracled.aggregate.book import Layout, SlotKey
from oracled.config import Config, parse_config
from oracled.mark import MarkEngine, MarkRound
from oracled.mark.engine import MODES
from oracled.model import Quote

HOSTILE = (0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 5e-324, 1e-310, 1e300, 1.7e308)
# (source, quote currency): USD direct, USDT through USDT/USD, EUR through USD/EUR (divided)
PERPS = (("p", "USD"), ("q", "USDT"), ("e", "EUR"), ("r", "USD"), ("s", "USD"))
PINNED = "d6809f0e3b12d4f81b62d2067d268700a9f73eb3bbc847b4e4b18aeddf57fc63"


def _config(rng: random.Random, count: int, single: bool = False, quiet: bool = False) -> Config:
    """Two legs, then `count` markets with 0 to 4 perpetuals each and drawn mark settings;
    `single`: one perpetual each, USD or routed; `quiet`: age limits of a minute and more."""

    def spot(symbol: str) -> dict[str, Any]:
        return {"symbol": symbol, "min_sources": 1, "sources": [{"source": "a", "pair": symbol}]}

    markets = [spot("USDT/USD"), spot("USD/EUR")]
    for i in range(count):
        market = spot(f"X{i}/USD")
        market.update(
            max_age_ms=rng.choice([60_000, 600_000] if quiet else [5_000, 8_000, 60_000]),
            lag_ms=rng.choice([1_000, 2_000]),
            max_deviation=rng.choice([0.01, 0.02]),
        )
        if rng.random() < 0.2:
            market["max_price"] = 101.0  # the mark can leave the band
        chosen = [rng.choice(PERPS)] if single else rng.sample(PERPS, rng.randint(0, 4))
        if chosen:
            market["perp_sources"] = [{"source": s, "pair": f"X{i}/{c}"} for s, c in chosen]
            market["mark"] = {
                "basis_half_life_s": rng.choice([1, 5, 60]),
                "funding_interval_s": rng.choice([60, 120]),
                "max_perp_deviation": rng.choice([0.02, 0.05]),
                "min_perp_sources": rng.randint(1, len(chosen)),
                "interest_rate": rng.choice([0.0001, -0.001]),
                "premium_clamp": rng.choice([0.0005, 0.0]),
                "funding_cap": rng.choice([0.0075, 0.001]),
            }
        markets.append(market)
    return parse_config(
        {
            "oracle": {"round_interval_ms": 1_000},
            "sources": {s: {"type": "binance" if s == "a" else "okx"} for s in "apqers"},
            "markets": markets,
            "routes": [
                {"from": "USDT", "to": "USD", "via": "USDT/USD"},
                {"from": "EUR", "to": "USD", "via": "USD/EUR"},
            ],
        },
        env={},
    )


def _quote(
    rng: random.Random,
    key: SlotKey,
    value: float,
    now: int,
    held: Quote | None,
    quiet: bool = False,
) -> Quote:
    """A perpetual quote near `value`, now or from the past, sometimes hostile or flagged;
    `quiet`: rarely anything but a quote of now with bid and ask."""
    source, pair, _ = key
    rare = 0.1 if quiet else 1.0
    if rng.random() < 0.03 * rare:
        value = rng.choice(HOSTILE)
    weights = [95, 4, 0.3, 0.7] if quiet else [60, 30, 3, 7]
    stamp = rng.choices([now, now - rng.randint(0, 9_000), now + 3_000, -1], weights)[0]
    if stamp == -1:  # the venue time of the quote held again (a REST poll of a frozen ticker)
        stamp = held.venue_ts if held is not None and held.venue_ts is not None else now
    venue_ts = stamp if rng.random() < 0.9 else None
    flag = "liquidity" if rng.random() < 0.03 * rare else None
    shape = rng.random()
    if shape < 0.5:
        return Quote(source, pair, stamp, price=value, kind="perp", venue_ts=venue_ts, flag=flag)
    if shape < 1.0 - 0.1 * rare:
        spread = abs(value) * rng.choice([0.0, 0.0005, 0.002])
        price = value if rng.random() < 0.5 else None
        return Quote(
            source,
            pair,
            stamp,
            bid=value - spread,
            ask=value + spread,
            price=price,
            kind="perp",
            venue_ts=venue_ts,
            flag=flag,
        )
    return Quote(source, pair, stamp, bid=value, kind="perp", venue_ts=venue_ts, flag=flag)


def _tape(seed: int, rounds: int, single: bool = False, quiet: bool = False) -> str:
    """Every round's values of one generated tape, as text. `single`: one perpetual a market;
    `quiet`: rounds of 250 ms, half of them holding every quote again, small moves, few index
    pauses and few bad quotes, so that many rounds have every index live and no perpetual
    failing a check, or no quote older than `lag_ms` (the step's shortcuts for such rounds)."""
    rng = random.Random(seed)
    cfg = _config(rng, 12, single, quiet)
    layout = Layout.from_config(cfg)
    engine = MarkEngine(cfg, layout)
    now = 1_700_000_040_000
    held: dict[SlotKey, Quote] = {}
    level: dict[str, float] = {}
    out: list[str] = []
    for _ in range(rounds):
        if rng.random() < 0.03:  # a reload
            new_cfg = _config(rng, 12 + rng.randint(-2, 2), single, quiet)
            new_layout = Layout.from_config(new_cfg)
            new_engine = MarkEngine(new_cfg, new_layout)
            old_index = {sym: i for i, sym in enumerate(layout.markets)}
            new_engine.carry_from(engine, old_index, new_layout.markets)
            cfg, layout, engine = new_cfg, new_layout, new_engine
        steps = [12, 4, 1, 80, 1, 1, 1] if quiet else [80, 4, 3, 5, 4, 3, 1]
        now += rng.choices([1_000, 0, -500, 250, 7_000, 65_000, 400_000], steps)[0]
        index = np.empty(len(layout.markets))
        for i, sym in enumerate(layout.markets):
            base = level.setdefault(sym, 1.0 if i < 2 else 100.0)
            if rng.random() < 0.3:
                move = 0.001 if quiet else 0.01 if i >= 2 else 0.002
                base = level[sym] = base * (1 + rng.gauss(0, move))
            index[i] = math.nan if rng.random() < (0.002 if quiet else 0.08) else base
        held_again = quiet and rng.random() < 0.5  # no new quote this round
        for market in cfg.markets:
            for ps in market.perp_sources:
                key = (ps.source, ps.pair, ps.kind)
                if held_again or rng.random() < (0.1 if quiet else 0.5):
                    continue
                if rng.random() < 0.05 * (0.1 if quiet else 1.0):
                    held.pop(key, None)
                    continue
                value = level.get(market.symbol, 100.0)
                currency = ps.pair.split("/")[1]
                if currency == "USDT":
                    value /= level.get("USDT/USD", 1.0)
                elif currency == "EUR":
                    value *= level.get("USD/EUR", 1.0)
                value *= 1 + rng.gauss(0.002, 0.002 if quiet else 0.01)
                held[key] = _quote(rng, key, value, now, held.get(key), quiet)
        result = engine.step(now, index, held)
        _agrees(result)
        out.append(repr(list(result.values.items())))
    return "\n".join(out)


def _agrees(result: MarkRound) -> None:
    """The round's arrays (what the mode log line, the metrics, the hub's filters and the signer
    read) say what its `values` say, market for market; so do the `mark` objects made from them
    for the encoder, at any precision, before and after the values are made."""
    width = max(result.markets, default=0) + 2  # and markets without perpetuals
    places = [i % 19 for i in range(width)]  # every precision a market can have
    before = [(i in result.values, result.mark(i, places[i])) for i in range(width)]
    values = result.values
    made = [
        (i in values, None if i not in values else values[i].to_mark(places[i]))
        for i in range(width)
    ]
    assert before == made
    assert [result.mark(i, places[i]) for i in range(width)] == [m for _, m in made]
    assert list(result.markets) == sorted(values)
    rows = zip(result.markets, result.modes.tolist(), result.perps_used.tolist(), strict=True)
    for (i, mode, used), price in zip(rows, result.price.tolist(), strict=True):
        v = values[i]
        assert (MODES[mode], used, repr(price)) == (v.mode, v.perps_used, repr(v.price)), i


def digest() -> str:
    """The SHA-256 of three tapes' values."""
    text = "\n".join(_tape(seed, 400) for seed in range(3))
    return hashlib.sha256(text.encode()).hexdigest()


def test_every_output_bit_of_the_mark_engine_is_as_pinned() -> None:
    assert digest() == PINNED, (
        "the mark engine's outputs moved: a change of pricing needs a PRICING_REVISION bump "
        "and a new digest here; a rewrite must keep every bit"
    )


# Taken with the engine before its shortcuts for one perpetual a market and for quiet rounds
# (every quote held again, every index live, no perpetual failing a check), which these tapes
# take in most rounds: the shortcuts must give the bits of the general path.
PINNED_SHAPES = "f6ef710252b3363288d960ef4dbc2b37fd34fb608e82a579ef4eda86afb5d3a1"


def shapes_digest() -> str:
    """The SHA-256 of tapes of one perpetual a market, of quiet rounds, and of both."""
    shapes = ((True, False), (True, True), (False, True))
    text = "\n".join(
        _tape(seed, 400, single, quiet) for single, quiet in shapes for seed in range(3)
    )
    return hashlib.sha256(text.encode()).hexdigest()


def test_every_output_bit_of_the_step_s_shortcuts_is_as_pinned() -> None:
    assert shapes_digest() == PINNED_SHAPES, (
        "the mark engine's outputs moved in rounds its shortcuts take: a shortcut must give "
        "the bits of the general path"
    )
