"""weighted_quantiles against a plain-Python reference, on many random rows."""

from __future__ import annotations

import math
import random
import statistics
from fractions import Fraction

import numpy as np
import pytest

from oracled.aggregate.robust import SortedRows, row_counts, row_order, weighted_quantiles

QS = (0.25, 0.5, 0.75)


def reference(values: list[float], weights: list[float], q: float) -> float:
    """The documented rule, by sorting in pure Python with exact arithmetic.

    The first value (ascending) whose cumulative weight reaches q*W; if the cumulative weight
    equals q*W exactly, the mean of that value and the next one.
    """
    pairs = sorted((v, Fraction(w)) for v, w in zip(values, weights, strict=True) if w > 0)
    if not pairs:
        return math.nan
    target = sum(w for _, w in pairs) * Fraction(q)
    cum = Fraction(0)
    for k, (value, weight) in enumerate(pairs):
        cum += weight
        if cum == target:
            return (value + pairs[k + 1][0]) * 0.5
        if cum > target:
            return value
    raise AssertionError("unreachable: q < 1")


def _matrix(rows: list[list[float]], width: int, fill: float = math.nan) -> np.ndarray:
    out = np.full((len(rows), width), fill)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_with_integer_weights(seed: int) -> None:
    """With exactly representable weights (ties on boundaries included) every quantile of every
    row equals the sorted-list reference, masked-out slots and padding ignored."""
    rng = random.Random(seed)
    width = 12
    rows_v, rows_w, rows_m = [], [], []
    for _ in range(300):
        n = rng.randrange(0, width + 1)
        # Few distinct values so that equal values and boundary ties are common.
        rows_v.append([float(rng.choice([1, 2, 3, 5, 8, 13, 21])) for _ in range(n)])
        rows_w.append([float(rng.randrange(1, 5)) for _ in range(n)])
        rows_m.append([rng.random() < 0.8 for _ in range(n)])
    values = _matrix(rows_v, width)
    weights = _matrix(rows_w, width, 0.0)
    mask = np.zeros((len(rows_v), width), dtype=bool)
    for i, row in enumerate(rows_m):
        mask[i, : len(row)] = row
    got = weighted_quantiles(values, weights, mask, QS)
    for i in range(len(rows_v)):
        kept_v = [v for v, m in zip(rows_v[i], rows_m[i], strict=True) if m]
        kept_w = [w for w, m in zip(rows_w[i], rows_m[i], strict=True) if m]
        for q, column in zip(QS, got, strict=True):
            expected = reference(kept_v, kept_w, q)
            if math.isnan(expected):
                assert math.isnan(column[i]), (i, q)
            else:
                assert column[i] == expected, (i, q, kept_v, kept_w)


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_with_float_weights(seed: int) -> None:
    """Arbitrary positive float weights and values: the result equals the reference."""
    rng = np.random.default_rng(seed)
    rows, width = 500, 16
    values = rng.lognormal(3.0, 1.0, (rows, width))
    weights = rng.uniform(0.01, 10.0, (rows, width))
    mask = rng.random((rows, width)) < 0.7
    got = weighted_quantiles(values, weights, mask, QS)
    for i in range(rows):
        kept_v = values[i][mask[i]].tolist()
        kept_w = weights[i][mask[i]].tolist()
        for q, column in zip(QS, got, strict=True):
            expected = reference(kept_v, kept_w, q)
            assert column[i] == expected or (math.isnan(expected) and math.isnan(column[i]))


def test_equal_weights_give_the_textbook_median() -> None:
    """With equal weights the 0.5 quantile is statistics.median, for odd and even counts."""
    rng = np.random.default_rng(7)
    for n in range(1, 17):
        values = rng.normal(100.0, 5.0, (50, n))
        (median,) = weighted_quantiles(
            values, np.ones_like(values), np.ones(values.shape, bool), (0.5,)
        )
        for i in range(50):
            assert median[i] == pytest.approx(statistics.median(values[i].tolist()), rel=1e-15)


def test_masked_nan_and_inf_never_enter_the_result() -> None:
    """NaN or inf under a false mask bit is ignored; a row whose mask is all false is NaN."""
    values = np.array(
        [
            [np.nan, 10.0, 11.0, np.inf],
            [np.nan, np.nan, np.nan, np.nan],
            [1.0, 2.0, 3.0, 4.0],
        ]
    )
    mask = np.array(
        [
            [False, True, True, False],
            [False, False, False, False],
            [False, False, False, False],
        ]
    )
    q25, median, q75 = weighted_quantiles(values, np.ones_like(values), mask, QS)
    assert median[0] == 10.5
    assert q25[0] == 10.0
    assert q75[0] == 11.0
    assert np.isnan(median[1]) and np.isnan(q25[1]) and np.isnan(q75[1])
    assert np.isnan(median[2])


def test_zero_total_weight_and_empty_matrix_are_nan() -> None:
    """Rows whose masked weights sum to zero give NaN; a matrix with no rows gives empty output."""
    values = np.array([[1.0, 2.0]])
    (median,) = weighted_quantiles(values, np.zeros_like(values), np.ones((1, 2), bool), (0.5,))
    assert np.isnan(median[0])
    empty = np.zeros((0, 4))
    (out,) = weighted_quantiles(empty, empty, np.zeros((0, 4), bool), (0.5,))
    assert out.shape == (0,)


def test_a_heavy_source_is_the_median() -> None:
    """A source holding more than half of the weight is the weighted median on its own."""
    values = np.array([[1.0, 2.0, 3.0, 100.0]])
    weights = np.array([[1.0, 1.0, 1.0, 3.5]])
    (median,) = weighted_quantiles(values, weights, np.ones((1, 4), bool), (0.5,))
    assert median[0] == 100.0


def test_weights_that_tie_in_exact_arithmetic_tie_in_floats() -> None:
    """0.1 + 0.2 is half of 0.6 in exact arithmetic but not in floats; the median still treats it
    as the boundary and averages the neighbours, as the reference with exact fractions does."""
    values = np.array([[1.0, 2.0, 3.0]])
    weights = np.array([[0.1, 0.2, 0.3]])
    (median,) = weighted_quantiles(values, weights, np.ones((1, 3), bool), (0.5,))
    assert median[0] == 2.5
    assert reference([1.0, 2.0, 3.0], [1, 2, 3], 0.5) == 2.5


@pytest.mark.parametrize("seed", range(3))
def test_an_order_sorted_over_a_superset_mask_gives_the_same_quantiles(seed: int) -> None:
    """The round sorts once over the usable slots and reuses that order for the survivors (a
    subset): every quantile is bit-identical to sorting over the subset itself, ties included."""
    rng = np.random.default_rng(seed)
    rows, width = 400, 16
    values = (
        rng.choice([1.0, 2.0, 3.0, 5.0, 8.0], (rows, width))
        * rng.choice([1.0, 1.001], rows)[:, None]
    )
    weights = rng.choice([0.5, 1.0, 1.5, 2.0, 0.1], (rows, width))
    usable = rng.random((rows, width)) < 0.8
    keep = usable & (rng.random((rows, width)) < 0.7)
    order = row_order(values, usable)
    for mask in (usable, keep):
        fresh = weighted_quantiles(values, weights, mask, QS)
        reused = weighted_quantiles(values, weights, mask, QS, order)
        for a, b in zip(fresh, reused, strict=True):
            assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("seed", range(3))
def test_one_sort_answers_several_masks_as_fresh_sorts_do(seed: int) -> None:
    """One `SortedRows` asked for several masks in turn (a subset of the usable slots, the
    usable ones, the survivors; the round asks for the last two): each answer is bit-identical
    to sorting over that mask alone, so no call leaves anything behind for the next."""
    rng = np.random.default_rng(seed)
    rows, width = 300, 16
    values = (
        rng.choice([1.0, 2.0, 3.0, 5.0], (rows, width)) * rng.choice([1.0, 1.01], rows)[:, None]
    )
    weights = rng.choice([0.5, 1.0, 1.5, 2.0, 0.1], (rows, width))
    usable = rng.random((rows, width)) < 0.8
    ranked = SortedRows(values, weights, row_order(values, usable))
    for mask in (usable & (rng.random((rows, width)) < 0.6), usable, usable & (values < 3.0)):
        for qs in ((0.5,), QS):
            got = ranked.quantiles(mask, qs)
            for a, b in zip(weighted_quantiles(values, weights, mask, qs), got, strict=True):
                assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("width", [255, 256, 300])
def test_rows_wider_than_a_byte_still_pick_their_rank(width: int) -> None:
    """Ranks are counted in bytes for rows up to 255 slots; wider rows (allowed, if never seen)
    count them in machine integers, so a quantile past rank 255 is the right value."""
    rng = np.random.default_rng(width)
    values = np.stack([rng.permutation(width).astype(float) for _ in range(4)])
    weights = rng.integers(1, 4, values.shape).astype(float)
    mask = np.ones(values.shape, bool)
    mask[1, : width // 3] = False
    mask[3] = False
    qs = (0.25, 0.5, 0.875, 0.984375)  # binary fractions: the reference takes q exactly
    got = weighted_quantiles(values, weights, mask, qs)
    for i in range(len(values)):
        kept_v, kept_w = values[i][mask[i]].tolist(), weights[i][mask[i]].tolist()
        for q, column in zip(qs, got, strict=True):
            expected = reference(kept_v, kept_w, q)
            assert column[i] == expected or (math.isnan(expected) and math.isnan(column[i]))


@pytest.mark.parametrize(
    "weights", [(0.1, 0.7, 0.8), (0.1, 1.3, 1.4)], ids=["sum_rounds_below", "sum_rounds_above"]
)
def test_a_median_boundary_lost_to_float_rounding_still_averages_the_neighbours(
    weights: tuple[float, float, float],
) -> None:
    """With weights a, b, a + b (exact in decimal) the median falls on the boundary after the
    second value, so it is the mean of 2 and 3. In floats the cumulative weight a + b lands just
    below half the total (0.1 + 0.7) or just above it (0.1 + 1.3); the median must still be 2.5,
    as the exact reference says, not 3 or 2."""
    values = np.array([[1.0, 2.0, 3.0]])
    (median,) = weighted_quantiles(values, np.array([weights]), np.ones((1, 3), bool), (0.5,))
    assert median[0] == 2.5
    assert reference([1.0, 2.0, 3.0], [Fraction(str(w)) for w in weights], 0.5) == 2.5


@pytest.mark.parametrize(("rows", "width"), [(50, 1), (50, 16), (300, 16), (300, 255), (300, 256)])
def test_row_counts_are_the_true_slots_of_each_row(rows: int, width: int) -> None:
    """Counts summed in bytes for masks of 4,096 slots and more up to 255 slots a row, in
    machine integers otherwise: a full row of 256 would wrap to 0 in a byte. Views and slices of
    rows count as well as whole arrays."""
    rng = np.random.default_rng(width)
    mask = rng.random((rows, width)) < 0.5
    mask[0] = True
    mask[1] = False
    got = row_counts(mask)
    assert got.dtype == np.int64
    assert got.tolist() == mask.sum(axis=1).tolist()
    assert got[0] == width
    assert row_counts(mask[10:20]).tolist() == got[10:20].tolist()
