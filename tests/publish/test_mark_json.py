"""The encoder's `mark` objects written from a round's arrays (`MarkWriter`) against msgspec's
encoding of `MarkValues.to_mark` over hostile values: NaN, infinities, signed zeros, values at
and around half a unit of the last place, huge and tiny magnitudes, at 0 to 18 places."""

from __future__ import annotations

import dataclasses
import random
import sys

import msgspec
import numpy as np
import pytest
from test_encode import T0, feed, make_config, reference

from oracled.core import Core
from oracled.mark.engine import MarkRound, _materialize, _Outputs
from oracled.publish import markjson
from oracled.publish.encode import ReportEncoder
from oracled.publish.markjson import MarkWriter

_ENC = msgspec.json.Encoder()
_FLOATS = ("price", "basis_ema", "perp_median", "fallback", "basis", "premium")
_RATES = ("premium", "estimate", "last_rate")


def _hostile(rng: random.Random, places: int) -> float:
    """A float chosen to trip a formatter: special values, or near a rounding edge at `places`
    (or at the rates' 8) on either side of zero."""
    unit = 10.0 ** -rng.choice((places, 8))
    return rng.choice(
        (
            float("nan"),
            float("inf"),
            -float("inf"),
            0.0,
            -0.0,
            sys.float_info.max,
            -sys.float_info.max,
            sys.float_info.min,
            -5e-324,
            rng.choice((-1.0, 1.0)) * unit * rng.choice((0.5, 0.49999999, 0.5000001, 1.0, 1.5)),
            -unit * rng.random(),
            rng.uniform(-1e6, 1e6),
            rng.choice((-1.0, 1.0)) * 10.0 ** rng.uniform(-20, 300),
        )
    )


def _round(rng: random.Random, markets: list[int], places: list[int]) -> MarkRound:
    """A round's mark arrays, a row per market of `markets`, filled with hostile values."""
    n = len(markets)

    def floats() -> np.ndarray:
        return np.array([_hostile(rng, places[i]) for i in markets], dtype=np.float64)

    def ints(lo: int, hi: int) -> np.ndarray:
        return np.array([rng.randint(lo, hi) for _ in markets], dtype=np.int64)

    out = _Outputs(
        markets=markets,
        counts=[1] * n,
        price=floats(),
        basis_ema=floats(),
        perp_median=floats(),
        fallback=floats(),
        basis=floats(),
        premium=floats(),
        used=ints(0, 2**40),
        estimate=floats(),
        last_rate=floats(),
        last_on=np.array([rng.random() < 0.5 for _ in markets]),
        last_ts=ints(-(2**63), 2**63 - 1),
        next_ts=ints(-(2**63), 2**63 - 1),
        codes=np.zeros((n, 1), dtype=np.int64),
        mids=np.full((n, 1), np.nan),
        out_of_bounds=np.array([rng.random() < 0.5 for _ in markets]),
    )
    return MarkRound(out)


@pytest.mark.parametrize("seed", range(6))
def test_marks_from_the_arrays_are_msgspecs_bytes(seed: int) -> None:
    """Every `mark` object is byte-identical to msgspec's encoding of `to_mark` at the market's
    places; markets without perpetuals get none, in any order and subset."""
    rng = random.Random(seed)
    total = 60
    places = [rng.randint(0, 18) for _ in range(total)]
    decimals = np.array(places, dtype=np.intp)
    writer = MarkWriter()
    for _ in range(20):
        markets = sorted(rng.sample(range(total), rng.randint(0, total)))
        mark = _round(rng, markets, places)
        values = _materialize(mark.outputs) if mark.outputs is not None else {}
        for _ in range(3):
            indices = rng.sample(range(total), rng.randint(1, total))
            written = writer.write(mark, np.array(indices, dtype=np.intp), decimals)
            expected = [
                _ENC.encode(values[i].to_mark(places[i])) if i in values else None for i in indices
            ]
            assert written == expected


def test_the_hostile_values_reach_every_rule() -> None:
    """The generated values do produce nulls, unsigned zeros, huge numbers and both reasons, so
    the comparison above checks each rule (it would pass vacuously otherwise)."""
    rng = random.Random(0)
    places = [rng.randint(0, 18) for _ in range(60)]
    mark = _round(rng, list(range(60)), places)
    assert mark.outputs is not None
    values = _materialize(mark.outputs)
    text = b"".join(_ENC.encode(values[i].to_mark(places[i])) for i in range(60))
    floats = np.concatenate([getattr(mark.outputs, f) for f in (*_FLOATS, *_RATES)])
    unsigned = floats[np.signbit(floats) & (floats > -1e-8) & (floats < 0)]
    assert len(unsigned) and b'"reason":"bounds"' in text and b'"reason":"index"' in text
    assert b"null" in text and len(max(text.split(b'"'), key=len)) > 300


def test_a_broken_template_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison fails on a template that writes a minus zero (the guard is not vacuous)."""
    monkeypatch.setattr(markjson, "_unsign_zeros", lambda floats, places: None)
    with pytest.raises(AssertionError):
        for seed in range(6):
            test_marks_from_the_arrays_are_msgspecs_bytes(seed)


def test_hostile_marks_are_spliced_into_msgspecs_reports() -> None:
    """Through the hub's encoder: rounds whose marks are hostile values, on random markets,
    encode to exactly msgspec's bytes of `result.report(i)`, for every market or a subset."""
    rng = random.Random(11)
    core = Core(make_config())
    encoder = ReportEncoder()
    every = list(range(len(core.markets)))
    places = core.layout.decimals.tolist()
    for k in range(1, 31):
        if k % 3:
            feed(core, rng, T0 + 250 * k)
        result = core.run_round(T0 + 250 * k)
        markets = sorted(rng.sample(every, rng.randint(0, len(every))))
        hostile = dataclasses.replace(result, mark=_round(rng, markets, places))
        indices = every if k % 2 else rng.sample(every, rng.randint(1, len(every)))
        assert encoder.encode(hostile, indices) == reference(hostile, indices)
