"""Perpetual markets' `mark` objects written as JSON straight from a round's mark arrays.

`MarkValues.to_mark` builds a `Mark` struct of eight decimal strings (and an estimators struct)
for msgspec to encode: about 40 us of the hub's encoder per perpetual market. `MarkWriter` writes
the very same bytes with a bytes %-format template per shape of the object (which fields are
null, the reason, the market's precision), shared by every market of that shape:

- a decimal is `"%.Nf"` in the template (`format(v, ".Nf")` is the same routine) and a null
  consumes its argument with `%.0s`, so every template takes the same row of arguments;
- `_dec`'s rule that a value rounding to zero has no minus sign is applied to the floats before
  formatting: a negative value that rounds to zero is written as 0.0 (only values within a unit
  of the last place are checked, a handful a round at most);
- NaN and infinities are null, as `_dec` makes them; integers stay Python ints.

tests/publish/test_mark_json.py compares the bytes with msgspec's over hostile values.
"""

from __future__ import annotations

import msgspec
import numpy as np
import numpy.typing as npt

from oracled.mark.engine import RATE_DECIMALS, REASON_BOUNDS, REASON_INDEX, MarkRound

__all__ = ["MarkWriter"]

_NULL = b"null%.0s"  # consumes the argument, writes null
_FLOATS = 8  # price, basis_ema, perp_median, fallback, basis, premium, estimate, last rate
_PRICES = 5  # of those, the leading ones at the market's precision; then the rates
_REASONS = (b"null", msgspec.json.encode(REASON_INDEX), msgspec.json.encode(REASON_BOUNDS))


def _template(decimals: int, nulls: int, dated: bool, reason: int) -> bytes:
    """The format string of a `mark` object at `decimals` places whose floats in `nulls` (a bit
    per float column) are null, with or without `last_funding_ts`, and with `reason`."""

    def dec(k: int) -> bytes:
        places = decimals if k < _PRICES else RATE_DECIMALS
        return _NULL if nulls >> k & 1 else b'"%%.%df"' % places

    return b"".join(
        (
            b'{"price":',
            dec(0),
            b',"reason":',
            _REASONS[reason],
            b',"estimators":{"basis_ema":',
            dec(1),
            b',"perp_median":',
            dec(2),
            b',"fallback":',
            dec(3),
            b'},"basis":',
            dec(4),
            b',"premium":',
            dec(5),
            b',"perps_used":%d,"funding_rate_estimate":',
            dec(6),
            b',"last_funding_rate":',
            dec(7),
            b',"last_funding_ts":',
            b"%d" if dated else _NULL,
            b',"next_funding_ts":%d}',
        )
    )


def _unsign_zeros(floats: npt.NDArray[np.float64], places: npt.NDArray[np.intp]) -> None:
    """Write as 0.0 each negative float that formats as zero at its `places` (`_dec` never
    writes "-0.00"): only those within two units of the last place need the check."""
    bound = -2.0 * np.power(10.0, -places.astype(np.float64))
    near = np.signbit(floats) & (floats > bound)
    for r, c in zip(*np.nonzero(near), strict=True):
        text = format(float(floats[r, c]), f".{places[r, c]}f")
        if not text.strip("-0."):
            floats[r, c] = 0.0


class MarkWriter:
    """Writes `mark` objects of a round's perpetual markets; keeps its templates for the life of
    the process (a few dozen shapes occur) and each round's row index while it is encoded.

    Not thread-safe: one per encoder.
    """

    __slots__ = ("_outputs", "_row_of", "_templates")

    def __init__(self) -> None:
        self._templates: dict[tuple[int, int, bool, int], bytes] = {}
        self._outputs: object = None
        self._row_of: npt.NDArray[np.intp] = np.empty(0, dtype=np.intp)

    def write(
        self, mark: MarkRound, idx: npt.NDArray[np.intp], decimals: npt.NDArray[np.intp]
    ) -> list[bytes | None]:
        """The JSON of `mark.mark(i, decimals[i])` for each market `i` in `idx` (None for a
        market without perpetuals)."""
        out = mark.outputs
        top = int(idx.max()) + 1
        if out is not self._outputs or len(self._row_of) < top:  # a new round: its rows
            row_of = np.full(max(top, max(out.markets, default=-1) + 1), -1, dtype=np.intp)
            row_of[out.markets] = np.arange(len(out.markets))
            self._row_of, self._outputs = row_of, out
        rows = self._row_of[idx]
        has = rows >= 0
        found: list[bytes | None] = [None] * len(idx)
        if not has.any():
            return found
        at = np.flatnonzero(has)
        r = rows[at]
        floats = np.empty((len(r), _FLOATS), dtype=np.float64)
        for k, column in enumerate(
            (
                out.price,
                out.basis_ema,
                out.perp_median,
                out.fallback,
                out.basis,
                out.premium,
                out.estimate,
                out.last_rate,
            )
        ):
            floats[:, k] = column[r]
        places = np.empty(floats.shape, dtype=np.intp)
        places[:, :_PRICES] = decimals[idx[at], None]
        places[:, _PRICES:] = RATE_DECIMALS
        _unsign_zeros(floats, places)
        finite = np.isfinite(floats)
        nulls = (~finite).astype(np.int64) @ (1 << np.arange(_FLOATS, dtype=np.int64))
        dated = out.last_on[r]
        reason = np.where(finite[:, 0], 0, np.where(out.out_of_bounds[r], 2, 1))

        args = np.empty((len(r), _FLOATS + 3), dtype=object)
        values = floats.astype(object)
        values[~finite] = b""
        args[:, :6] = values[:, :6]
        args[:, 6] = out.used[r]
        args[:, 7:9] = values[:, 6:]
        args[:, 9] = out.last_ts[r]
        args[:, 9][~dated] = b""
        args[:, 10] = out.next_ts[r]

        templates = self._templates
        keys = zip(
            decimals[idx[at]].tolist(),
            nulls.tolist(),
            dated.tolist(),
            reason.tolist(),
            strict=True,
        )
        for n, key, row in zip(at.tolist(), keys, args.tolist(), strict=True):
            template = templates.get(key)
            if template is None:
                template = templates[key] = _template(*key)
            found[n] = template % tuple(row)
        return found
