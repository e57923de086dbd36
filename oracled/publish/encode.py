"""A round's reports encoded to JSON straight from its arrays, without `Report` objects.

`RoundResult.report(i)` builds a `Report` and one `SourceValue` per slot, and msgspec then
encodes them: about 10 us per market at 8 sources, most of it Python objects made only to be
encoded. `ReportEncoder` writes the very same bytes from the arrays instead:

- per market, the JSON of a report is a bytes %-format template (the names, weights and reason
  strings as literals; `%s` for kept decimal strings, `%d` for ages and times). Which template
  a market needs follows from a few small integers per market (status, reasons, which values
  are null, the slot codes); those form a key, and templates are cached per market and key, so
  in a steady state every market reuses the template of the round before. A market's literal
  pieces and templates are made when it is first encoded, never for the whole layout at once:
  a call pays only for the markets it encodes, so the hub's slices spread a new layout's set-up
  (daemon start, a reload) over turns of the event loop;
- a decimal string (price, confidence, last good price, each slot's value) only changes when
  its float does: the encoder keeps each one's last float and string, and formats only those
  whose bits changed since (a slot without a new quote keeps its value; formatting was the
  largest part of the cost). When most of a call's floats changed since those markets were
  last encoded (every slot requoted every round), keeping strings costs more than it saves:
  that call formats the floats in the template (`%.Nf`) instead;
- each market's arguments come out of numpy as one row of an object matrix (strings and
  integers), and `template % tuple(row)` writes a whole report in one C call. A null consumes
  its argument with `%.0s` (given b"" in place of a number) so that every template takes the
  same row. Bytes, not str: bytes formatting finds each `%` with memchr where str formatting reads
  a template character by character, which halves the cost of the ~1 KB templates.

Python's `%.Nf` and `format(v, ".Nf")` are the same routine, and msgspec's own encoding is used
for every literal, so the output is byte-identical to `msgspec.json.encode(result.report(i))`
(tests/publish/test_encode.py compares them over runs of random rounds). A perpetual market's
`mark` object is written from the round's mark arrays the same way (`MarkWriter`) and spliced
in.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import msgspec
import numpy as np
import numpy.typing as npt

from oracled.aggregate.book import Layout
from oracled.core import NO_QUOTE, USED, RoundResult
from oracled.model import Status, reasons_from_bits
from oracled.publish.markjson import MarkWriter

__all__ = ["ReportEncoder"]

_ENC = msgspec.json.Encoder()
_NULL = b"null%.0s"  # consumes the argument, writes null
_SKIP = b"%.0s"  # consumes the argument, writes nothing
_DEC = b'"%s"'  # a decimal string, formatted ahead (see _Static.text)
_MAX_TEMPLATES = 8  # per market; more distinct shapes than this means churn, start over
_HEAD = 6  # leading columns of a row: ts, round, price, confidence, last good price and time
_LEAD = 3  # leading decimal columns: price, confidence, last good price; then the slots' values


def _lit(value: object) -> bytes:
    """msgspec's JSON of `value` as a template literal (a `%` in it escaped)."""
    return _ENC.encode(value).replace(b"%", b"%%")


@functools.lru_cache(maxsize=512)
def _status_lit(status: int, reasons: int) -> bytes:
    """A report's literal from its `status` value through the key of `price` (a few dozen of
    these occur in a process's life)."""
    label, names = _lit(Status(status).label), _lit(reasons_from_bits(reasons))
    return b'%s,"reasons":%s,"price":' % (label, names)


class _Static:
    """What one layout's reports share: the decimal strings of its numbers as last formatted,
    and the literal pieces of each market's reports, made for a market when its first template
    is (so that a call pays only for the markets it encodes: the hub encodes a round in slices,
    and a new layout must not hold the event loop for all of its markets at once). Kept with the
    layout: a new layout starts them over."""

    __slots__ = (
        "bits",
        "dec",
        "last",
        "layout",
        "lits",
        "markets",
        "present",
        "text",
        "weights",
        "width",
    )

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.width = layout.width
        self.dec = layout.decimals.astype(np.intp)
        # Which columns of the slot matrix are configured slots (a shorter market leaves some).
        self.present = layout.configured
        # Per market, the decimal columns (price, confidence, last good price, each slot's
        # value): the float's bits when last formatted and its string. NaN formats as "nan" at
        # every precision, so both start as NaN; a null never reads its string.
        shape = (len(layout.markets), _LEAD + self.width)
        self.bits = np.full(shape, np.nan).view(np.int64)
        self.text: npt.NDArray[np.object_] = np.full(shape, b"nan", dtype=object)
        self.last = self.bits.copy()  # the floats' bits when each market was last encoded
        self.markets: list[_Market | None] = [None] * len(layout.markets)
        # Source ids, pairs, legs and weights recur across markets: each literal is made once.
        self.lits: dict[str, bytes] = {}
        self.weights: dict[float, bytes] = {}  # exact: weights are > 0, no -0.0 meets a 0.0

    def market(self, i: int) -> _Market:
        """Market `i`'s literal pieces, made on first use."""
        market = self.markets[i]
        if market is None:
            market = self.markets[i] = _Market(self, i)
        return market

    def lit(self, text: str) -> bytes:
        """`_lit(text)`, made once per layout."""
        found = self.lits.get(text)
        if found is None:
            found = self.lits[text] = _lit(text)
        return found


class _Market:
    """The literal pieces of one market's reports."""

    __slots__ = ("head", "slots", "tails", "weights")

    def __init__(self, static: _Static, i: int) -> None:
        layout, lit = static.layout, static.lit
        self.head = b'{"market":%s,"ts":%%d,"round":%%d,"status":' % _lit(layout.markets[i])
        # Per configured slot: ',{"id":..,"pair":..,"value":' (the first without its comma),
        # ',"weight":..,"used":', and its closing literal (a routed slot names its leg: `via`).
        pairs = zip(layout.slot_ids[i], layout.slot_pairs[i], strict=True)
        self.slots = [
            b'%s{"id":%s,"pair":%s,"value":' % (b"," if k else b"", lit(sid), lit(pair))
            for k, (sid, pair) in enumerate(pairs)
        ]
        weights = static.weights
        self.weights: list[bytes] = []
        for w in layout.weight[i, : len(self.slots)].tolist():
            found = weights.get(w)
            if found is None:
                found = weights[w] = b',"weight":%s,"used":' % _lit(w)
            self.weights.append(found)
        self.tails = [
            b"}" if via is None else b',"via":%s}' % lit(via) for via in layout.slot_via[i]
        ]


class ReportEncoder:
    """Encodes reports of round results; keeps its templates and decimal strings from one round
    to the next.

    Not thread-safe: one encoder per consumer (the hub has its own).
    """

    __slots__ = ("_codes", "_marks", "_names", "_static", "_templates")

    def __init__(self) -> None:
        self._static: _Static | None = None
        self._names: tuple[str | None, ...] = ()
        self._templates: list[dict[bytes, list[bytes | None]]] = []
        # Per slot code: a slot's literal from its `used` value through the key of `age_ms`.
        self._codes: dict[int, bytes] = {}
        self._marks = MarkWriter()

    def warm(self, result: RoundResult, indices: Sequence[int]) -> bool:
        """Whether encoding `indices` of `result` makes no template (each has one of this
        layout already): a few us a market then, against 20 to 45 us for a market's first
        templates. The hub sizes its slices by it."""
        static = self._static
        if static is None or static.layout is not result.layout:
            return False
        if result.slot_names != self._names:
            return False
        templates = self._templates
        return all(templates[i] for i in indices)

    def _prepare(self, result: RoundResult) -> _Static:
        static = self._static
        if static is None or static.layout is not result.layout:
            static = self._static = _Static(result.layout)
            self._templates = [{} for _ in result.layout.markets]
            self._names, self._codes = result.slot_names, {}
        elif result.slot_names != self._names:
            # New source flags are appended, so old codes keep their names; start over anyway
            # rather than reason about it (this happens a few times in a process's life).
            self._templates = [{} for _ in result.layout.markets]
            self._names, self._codes = result.slot_names, {}
        return static

    @staticmethod
    def _decimals(
        static: _Static,
        idx: npt.NDArray[np.intp],
        values: npt.NDArray[np.float64],
        differs: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.object_]:
        """The decimal strings of `values` (rows of markets `idx`): formatted where a float's
        bits differ from those last formatted in its place (`differs`), else kept from then."""
        cols = values.shape[1]
        changed = np.flatnonzero(differs)
        if len(changed):
            rows = idx[changed // cols]
            where = rows * cols + changed % cols
            floats = values.ravel()[changed]
            decimals = static.dec[rows]
            lo, hi = int(decimals.min()), int(decimals.max())
            strings = np.empty(len(changed), dtype=object)
            # One pass per precision that occurs (usually a single one over everything).
            for d in range(lo, hi + 1):
                sel = np.flatnonzero(decimals == d) if lo < hi else slice(None)
                part = floats[sel].tolist()
                if part:
                    fmt = b"%%.%df" % d
                    strings[sel] = np.fromiter(map(fmt.__mod__, part), object, len(part))
            static.text.reshape(-1)[where] = strings
            static.bits.reshape(-1)[where] = values.view(np.int64).ravel()[changed]
        return static.text[idx]

    def encode(self, result: RoundResult, indices: Sequence[int]) -> list[bytes]:
        """The JSON of `result.report(i)` for each `i` in `indices`, in that order."""
        if not len(indices):
            return []
        static = self._prepare(result)
        idx = np.asarray(indices, dtype=np.intp)
        width = static.width
        value = result.value[idx]
        code = result.slot_reason[idx]
        last_good = result.last_good[idx]
        last_good_ts = result.last_good_ts[idx]
        valued = np.isfinite(value)
        good = np.isfinite(last_good)
        dated = (code != NO_QUOTE) & static.present[idx]
        undated = last_good_ts < 0

        keys = np.empty((len(idx), 3 + width), dtype=np.int16)
        keys[:, 0] = status = result.status[idx]
        keys[:, 1] = result.reasons[idx]
        keys[:, 2] = good * 4 + ~undated * 2
        keys[:, 3:] = code.astype(np.int16) * 2 + valued
        key_bytes = keys.tobytes()
        step = keys.itemsize * keys.shape[1]

        floats = np.empty((len(idx), _LEAD + width), dtype=np.float64)
        floats[:, 0] = result.price[idx]
        floats[:, 1] = result.confidence[idx]
        floats[:, 2] = last_good
        floats[:, _LEAD:] = value
        bits = floats.view(np.int64)
        # Where most numbers changed since these markets were last encoded (every slot requoted
        # each round), keeping their strings costs more than it saves: the floats go into the
        # templates' `%.Nf` directly, and the kept strings wait for quieter rounds.
        direct = 2 * int(np.count_nonzero(bits != static.last[idx])) > bits.size
        static.last[idx] = bits
        if direct:
            decimal = floats.astype(object)
            nulls = np.empty(floats.shape, dtype=np.bool_)  # what the template writes as null
            nulls[:, :2] = (status > Status.DEGRADED)[:, None]
            nulls[:, 2] = ~good
            nulls[:, _LEAD:] = ~(valued & static.present[idx])
            decimal[nulls] = b""
        else:
            decimal = self._decimals(static, idx, floats, bits != static.bits[idx])
        # Integers stay Python ints (exact at any size); where a null consumes one, b"".
        rows = np.empty((len(idx), _HEAD + 2 * width), dtype=object)
        rows[:, 0] = result.ts
        rows[:, 1] = result.round
        rows[:, 2:5] = decimal[:, :_LEAD]
        rows[:, 5] = last_good_ts
        rows[undated, 5] = b""
        rows[:, _HEAD::2] = decimal[:, _LEAD:]
        ages = rows[:, _HEAD + 1 :: 2]
        ages[...] = result.age[idx]
        ages[~dated] = b""
        args = rows.tolist()

        mark = result.mark
        marks = None if mark is None else self._marks.write(mark, idx, static.dec)
        templates = self._templates
        out: list[bytes] = []
        append = out.append
        for n, i in enumerate(indices):
            key = key_bytes[n * step : (n + 1) * step]
            cache = templates[i]
            pair = cache.get(key)
            if pair is None:
                if len(cache) >= _MAX_TEMPLATES:
                    cache.clear()
                pair = cache[key] = [None, None]
            template = pair[direct]
            if template is None:  # made when first needed: "%s" kept strings, or "%.Nf"
                dec = b'"%%.%df"' % static.dec[i] if direct else _DEC
                template = pair[direct] = self._template(static, i, keys[n], dec)
            data = template % tuple(args[n])
            written = None if marks is None else marks[n]
            if written is not None:
                data = b"".join((data[:-5], written, b"}"))  # "null}" -> mark
            append(data)
        return out

    def _template(self, static: _Static, i: int, key: npt.NDArray[np.int16], dec: bytes) -> bytes:
        """The format string of market `i`'s report in the state `key` describes, with `dec`
        for each decimal string (`"%s"` for kept strings, `"%.Nf"` for floats)."""
        market = static.market(i)
        status, reasons, flags, *states = key[: 3 + len(market.slots)].tolist()
        live = status <= Status.DEGRADED
        parts = [
            market.head,
            _status_lit(status, reasons),
            dec if live else _NULL,
            b',"confidence":',
            dec if live else _NULL,
            b',"last_good_price":',
            dec if flags & 4 else _NULL,
            b',"last_good_ts":',
            b"%d" if flags & 2 else _NULL,
            b',"sources":[',
        ]
        codes = self._codes
        for head, weight, tail, state in zip(
            market.slots, market.weights, market.tails, states, strict=True
        ):
            c = state >> 1
            used = codes.get(c)
            if used is None:
                used = codes[c] = self._used(c)
            parts += (head, dec if state & 1 else _NULL, weight, used, tail)
        parts.append(_SKIP * (2 * (static.width - len(market.slots))))  # slots it does not have
        parts.append(b'],"mark":null}')
        return b"".join(parts)

    def _used(self, c: int) -> bytes:
        """A slot's literal from its `used` value through the key of `age_ms`, for slot code
        `c` (the same for every market)."""
        reason = self._names[c]
        return b"".join(
            (
                b"true" if c == USED else b"false",
                b',"reason":',
                b"null" if reason is None else _lit(reason),
                b',"age_ms":',
                b"%d" if c != NO_QUOTE else _NULL,
            )
        )
