"""Vectorized weighted quantiles over a (markets x sources) matrix.

One sort per layer, then every requested quantile is read off cumulative weights in that order.
This is the "sort rows, missing values last, pick by cumulative weight" approach, several times
faster than `np.nanmedian` on this shape, and it handles weights, which numpy's quantile
functions do not.

The round asks twice per layer (the centre over the usable slots, then the quartiles over the
survivors, a subset of them), so the values and weights are gathered into sorted order once
(`SortedRows`) and each call only gathers its mask. The lag rule reads the same order
(`Core._left_behind`), by count.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["SortedRows", "row_counts", "row_order", "weighted_quantiles"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]

# Relative slack when comparing cumulative weights with a target, so that a target that falls
# exactly on a boundary (the even-count median) averages the two neighbours, like the plain median.
_EPS = 1e-12
# The largest rank a byte holds, looked up once: np.iinfo costs as much as a small numpy call.
_BYTE_MAX = int(np.iinfo(np.uint8).max)
# The mask size (slots) from which `row_counts` sums bytes.
_BYTE_SUM_FROM = 4096


def row_counts(mask: BoolArray) -> npt.NDArray[np.int64]:
    """The true slots of each row. Summing the booleans' own bytes is several times cheaper than
    `mask.sum(axis=1)`, which widens every one to int64 first; a byte holds the count of a row
    up to 255 slots wide. Below `_BYTE_SUM_FROM` slots einsum's own set-up costs more than it
    saves (measured in whole rounds: a one-market layer, 100 markets x 16)."""
    counts: npt.NDArray[np.int64]
    if mask.shape[1] > _BYTE_MAX or mask.size < _BYTE_SUM_FROM:
        counts = mask.sum(axis=1)
    else:
        counts = np.einsum("ij->i", mask.view(np.uint8)).astype(np.int64)
    return counts


def row_order(values: FloatArray, mask: BoolArray) -> IntArray:
    """Flat indices into `values` that sort each row ascending, slots outside `mask` last.

    Valid for `weighted_quantiles` with this mask or any subset of it: the slots of the subset
    keep their relative order, and the others only add zero weight between them.
    """
    rows, width = values.shape
    order = np.argsort(np.where(mask, values, np.inf), axis=1, kind="stable")
    # Flat indices: cheaper to gather with than take_along_axis's per-call index tuples.
    order += np.arange(0, rows * width, width, dtype=order.dtype)[:, None]
    return order


class SortedRows:
    """Values and weights gathered once in `row_order`, for the quantiles of several masks.

    Held transposed, one row per rank: the cumulative sums and the counts below run along the
    first axis, one numpy call per rank over every market, which is cheaper than along short rows.
    """

    __slots__ = ("_bytes", "_index", "_order", "_values", "_weights")

    def __init__(self, values: FloatArray, weights: FloatArray, order: IntArray) -> None:
        rows, width = values.shape
        # Contiguous: a gather's result takes its index's layout, and a transposed view would
        # leave every rank strided across the markets.
        self._order = np.ascontiguousarray(order.T)
        self._values = values.reshape(-1)[self._order]
        self._weights = weights.reshape(-1)[self._order]
        self._index = np.arange(rows)
        self._bytes = width <= _BYTE_MAX

    def _ranks(self, below: BoolArray) -> npt.NDArray[np.integer]:
        """The ranks per market where `below` is true, summed down the ranks. As bytes where the
        count fits: adding the booleans' own bytes is several times cheaper than widening each
        one to a machine integer first."""
        ranks: npt.NDArray[np.integer]
        if self._bytes:
            ranks = np.add.reduce(below.view(np.uint8), axis=0, dtype=np.uint8)
        else:
            ranks = np.add.reduce(below, axis=0, dtype=np.intp)
        return ranks

    def quantiles(self, mask: BoolArray, qs: tuple[float, ...]) -> list[FloatArray]:
        """`weighted_quantiles` over `mask`, a subset of the mask the order was sorted over."""
        width = self._order.shape[0]
        cum = np.where(mask.reshape(-1)[self._order], self._weights, 0.0)
        # Rank by rank: the same left-to-right sums as np.cumsum, much faster on this shape.
        for j in range(1, width):
            np.add(cum[j - 1], cum[j], out=cum[j])
        total = cum[-1]
        empty = total <= 0.0
        out: list[FloatArray] = []
        for q in qs:
            target = total * q
            # Cumulative weights never decrease along a row, so the first rank reaching a bound
            # is the count of ranks below it. Past the last rank (only in empty rows, whose
            # result is NaN anyway) the pick is clipped to the last one.
            lo = self._ranks(cum < target * (1.0 - _EPS))
            hi = self._ranks(cum <= target * (1.0 + _EPS))
            np.minimum(hi, width - 1, out=hi)
            with np.errstate(invalid="ignore"):
                result = (self._values[lo, self._index] + self._values[hi, self._index]) * 0.5
            result[empty] = np.nan
            out.append(result)
        return out


def weighted_quantiles(
    values: FloatArray,
    weights: FloatArray,
    mask: BoolArray,
    qs: tuple[float, ...],
    order: IntArray | None = None,
) -> list[FloatArray]:
    """Per-row weighted quantiles of `values` where `mask` is true.

    For a quantile q with total weight W, the result is the first value whose cumulative weight
    reaches q*W; when the cumulative weight equals q*W exactly, it is the mean of that value and
    the next one (so equal weights give the textbook median). Rows with no masked value give NaN.
    `order` is `row_order` of the same values over `mask` or a superset of it (quantiles q < 1).
    """
    if order is None:
        order = row_order(values, mask)
    return SortedRows(values, weights, order).quantiles(mask, qs)
