"""A round's reports encoded to JSON straight from its arrays, without `Report` objects.

`RoundResult.report(i)` builds a `Report` and one `SourceValue` per slot, and msgspec then
encodes them: about 10 us per market at 8 sources, most of it Python objects made only to be
encoded. `ReportEncoder` writes the very same bytes from the arrays instead:

- per market, the JSON of a report is a %-format template (the names, weights and reason
  strings as literals; `%.Nf` for the decimal strings, `%d` for ages and times). Which template
  a market needs follows from a few small integers per market (status, reasons, which values
  are null, the slot codes); those form a key, and templates are cached per market and key, so
  in a steady state every market reuses the template of the round before;
- the numbers of all the wanted markets come out of numpy as one float64 matrix, one row per
  market, and `template % tuple(row)` formats a whole report in one C call. A null consumes its
  argument with `%.0s` so that every template takes the same row.

Python's `%.Nf` and `format(v, ".Nf")` are the same routine, and msgspec's own encoding is used
for every literal, so the output is byte-identical to `msgspec.json.encode(result.report(i))`
(tests/publish/test_encode.py compares them over random rounds). What the template cannot hold
exactly falls back to that slow path: an age or time beyond 2**53 (not representable in the
float row); a perpetual market's `mark` object is encoded by msgspec and spliced in.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
import numpy.typing as npt

from oracled.aggregate.book import Layout
from oracled.core import NO_QUOTE, USED, RoundResult
from oracled.model import Status, reasons_from_bits

__all__ = ["ReportEncoder"]

_ENC = msgspec.json.Encoder()
_EXACT = float(2**53)  # integers up to here survive the trip through float64
_NULL = "null%.0s"  # consumes the argument, writes null
_SKIP = "%.0s"  # consumes the argument, writes nothing
_MAX_TEMPLATES = 8  # per market; more distinct shapes than this means churn, start over
_HEAD = 6  # leading columns of a row: ts, round, price, confidence, last good price and time


def _lit(value: object) -> str:
    """msgspec's JSON of `value` as a template literal (a `%` in it escaped)."""
    return _ENC.encode(value).decode().replace("%", "%%")


class _Static:
    """The literal pieces of one layout's reports, made once per layout."""

    __slots__ = ("decimals", "fmts", "heads", "layout", "slots", "width")

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.width = layout.width
        self.decimals: list[int] = layout.decimals.tolist()
        self.fmts = [f'"%.{d}f"' for d in self.decimals]
        self.heads = [f'{{"market":{_lit(m)},"ts":%d,"round":%d,"status":' for m in layout.markets]
        weights = layout.weight.tolist()
        # Per configured slot: ('{"id":..,"pair":..,"value":', ',"weight":..,"used":').
        self.slots: list[list[tuple[str, str]]] = [
            [
                (
                    f'{{"id":{_lit(sid)},"pair":{_lit(pair)},"value":',
                    f',"weight":{_lit(weights[i][k])},"used":',
                )
                for k, (sid, pair) in enumerate(zip(ids, pairs, strict=True))
            ]
            for i, (ids, pairs) in enumerate(zip(layout.slot_ids, layout.slot_pairs, strict=True))
        ]


class ReportEncoder:
    """Encodes reports of round results; keeps its templates from one round to the next.

    Not thread-safe: one encoder per consumer (the hub has its own).
    """

    __slots__ = ("_names", "_static", "_templates")

    def __init__(self) -> None:
        self._static: _Static | None = None
        self._names: tuple[str | None, ...] = ()
        self._templates: list[dict[bytes, str]] = []

    def _prepare(self, result: RoundResult) -> _Static:
        static = self._static
        if static is None or static.layout is not result.layout:
            static = self._static = _Static(result.layout)
            self._templates = [{} for _ in result.layout.markets]
            self._names = result.slot_names
        elif result.slot_names != self._names:
            # New source flags are appended, so old codes keep their names; start over anyway
            # rather than reason about it (this happens a few times in a process's life).
            self._templates = [{} for _ in result.layout.markets]
            self._names = result.slot_names
        return static

    def encode(self, result: RoundResult, indices: Sequence[int]) -> list[bytes]:
        """The JSON of `result.report(i)` for each `i` in `indices`, in that order."""
        if not len(indices):
            return []
        static = self._prepare(result)
        idx = np.asarray(indices, dtype=np.intp)
        width = static.width
        value = result.value[idx]
        age = result.age[idx]
        code = result.slot_reason[idx]
        status = result.status[idx]
        last_good = result.last_good[idx]
        last_good_ts = result.last_good_ts[idx]

        finite = np.isfinite(value)
        dated = code != NO_QUOTE
        lg_ok = np.isfinite(last_good)
        lgts_ok = last_good_ts >= 0
        exact = ~((dated & (np.abs(age) >= _EXACT)).any(axis=1)) & (
            ~lgts_ok | (last_good_ts < _EXACT)
        )
        keys = np.empty((len(idx), 3 + width), dtype=np.int16)
        keys[:, 0] = status
        keys[:, 1] = result.reasons[idx]
        keys[:, 2] = lg_ok * 4 + lgts_ok * 2 + exact
        keys[:, 3:] = code.astype(np.int16) * 2 + finite
        key_bytes = keys.tobytes()
        step = keys.itemsize * keys.shape[1]

        rows = np.empty((len(idx), _HEAD + 2 * width), dtype=np.float64)
        rows[:, 0] = result.ts
        rows[:, 1] = result.round
        rows[:, 2] = result.price[idx]
        rows[:, 3] = result.confidence[idx]
        rows[:, 4] = last_good
        rows[:, 5] = np.where(lgts_ok & exact, last_good_ts, 0)
        rows[:, _HEAD::2] = value
        rows[:, _HEAD + 1 :: 2] = np.where(dated & exact[:, None], age, 0)
        numbers = rows.tolist()

        mark = result.mark
        templates = self._templates
        out: list[bytes] = []
        append = out.append
        for n, i in enumerate(indices):
            key = key_bytes[n * step : (n + 1) * step]
            cache = templates[i]
            template = cache.get(key)
            if template is None:
                if not exact[n]:
                    append(_ENC.encode(result.report(i)))
                    continue
                if len(cache) >= _MAX_TEMPLATES:
                    cache.clear()
                template = cache[key] = self._template(static, i, keys[n])
            text = template % tuple(numbers[n])
            if mark is None or i not in mark.values:
                append(text.encode())
            else:
                tail = _ENC.encode(mark.mark(i, static.decimals[i]))
                append(b"".join((text[:-5].encode(), tail, b"}")))  # "null}" -> mark
        return out

    def _template(self, static: _Static, i: int, key: npt.NDArray[np.int16]) -> str:
        """The format string of market `i`'s report in the state `key` describes."""
        status, reasons, flags = int(key[0]), int(key[1]), int(key[2])
        fmt = static.fmts[i]
        live = status <= Status.DEGRADED
        names = self._names
        parts = [
            static.heads[i],
            _lit(Status(status).label),
            ',"reasons":',
            _lit(reasons_from_bits(reasons)),
            ',"price":',
            fmt if live else _NULL,
            ',"confidence":',
            fmt if live else _NULL,
            ',"last_good_price":',
            fmt if flags & 4 else _NULL,
            ',"last_good_ts":',
            "%d" if flags & 2 else _NULL,
            ',"sources":[',
        ]
        slots = static.slots[i]
        for k in range(static.width):
            if k >= len(slots):
                parts.append(_SKIP + _SKIP)  # a slot this market does not have
                continue
            state = int(key[3 + k])
            c, has_value = state >> 1, state & 1
            reason = names[c]
            head, weight = slots[k]
            parts += (
                "," if k else "",
                head,
                fmt if has_value else _NULL,
                weight,
                "true" if c == USED else "false",
                ',"reason":',
                "null" if reason is None else _lit(reason),
                ',"age_ms":',
                "%d" if c != NO_QUOTE else _NULL,
                "}",
            )
        parts.append('],"mark":null}')
        return "".join(parts)
