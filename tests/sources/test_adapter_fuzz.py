"""Every venue adapter fed hostile frames, built by hypothesis from real ones.

The seeds are each venue's recorded frames and REST answers (tests/fixtures/<venue>/, through
`parse_cases`), its simulator's garbage catalogue and the data frames its simulator builds
(`oracled.sim`, the real wire shapes). A frame is a seed as it is, or one changed: a value
replaced by another JSON type or by an extreme number (``1e400``, ``-0``, ``NaN``, integers past
64 bits, non-ASCII digits, empty text), a key deleted or written twice, the frame nested in
another, truncated, its bytes flipped, repeated; or bytes and text from nowhere. A few of them,
in any order, go to one adapter, and after each:

- `on_message` and `on_rest` did not raise (an escaping exception ends the read loop and
  restarts the source, so a venue sending it could keep the source down), but what the base's
  read loops count as `decode` (`UNDECODABLE`: nesting past the decoder's depth, bytes that are
  not UTF-8 inside a string), and then nothing was quoted;
- each quote names a configured instrument, has a finite positive bid not above a finite ask
  (and a finite positive last price, if any), and a venue time that is None or an int, not
  before 1970 and no further ahead of the receive time than the clock-skew bound;
- every quote was counted, and a frame that quoted nothing left a trace: a counted drop, a
  settled or refused request, a rotation, or it is a frame the venue sends for life alone (a
  heartbeat, a pong), which `_LIFE` names per venue.

Bounded and reproducible: `derandomize=True` (the examples follow from the test's source, no
example database), deadline off, a fixed number of examples per venue: about 25 s for the whole
file on a shared 2-vCPU machine (shard 1 of scripts/pytest-shards.sh, with tests/sources). The
seeds' venue times are those of the recordings and, for the simulators' frames, of the wall
clock, with the receive time after the newest: a change that matters reproduces from its draws.

A third test cuts any bytes fed to Pyth's Server-Sent Events parser (the transport in front
of its `on_message`) anywhere: the same events, whatever the cuts.

A fourth sends each venue's frames and REST answers of an instrument 520 times, each time
naming a symbol never seen before, and holds every container of the adapter and its stats to
its size after the first 20: no per-symbol table keeps what a venue makes up.

Found with it (each fixed, with a plain regression test in the venue's or the shared parse
file): bytes that are not UTF-8 inside a string raised UnicodeDecodeError out of every adapter;
venue times before 1970 were quoted; Pyth's `"parsed":[]` vanished without a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parse_cases import CASES, FIXTURES, ParseCase, make_source

from oracled.model import Quote
from oracled.sim.venues import SIMULATORS
from oracled.sources import Source
from oracled.sources._base import UNDECODABLE
from oracled.sources.pyth_hermes import _SseLines

EXAMPLES = 120  # per venue: about 2 s each on a shared 2-vCPU machine


class Raw:
    """A JSON token written as it is: numbers JSON or msgspec reads past a float, and text that
    is no JSON at all."""

    def __init__(self, text: str) -> None:
        self.text = text


class Pairs:
    """An object written from key-value pairs, so that a key can appear twice."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


def dump(node: Any) -> str:
    """`node` as JSON text, `Raw` and `Pairs` included."""
    if isinstance(node, Raw):
        return node.text
    if isinstance(node, Pairs):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in node.pairs) + "}"
    if isinstance(node, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in node.items()) + "}"
    if isinstance(node, list):
        return "[" + ",".join(dump(v) for v in node) + "]"
    return json.dumps(node, ensure_ascii=False)


RAW_NUMBERS = (
    "1e400", "-1e400", "-0", "-0.0", "NaN", "Infinity", "-Infinity", "1e-400", "4.9e-324",
    "1.7976931348623157e308", "0", "-1", "1", "1e3", "123456789012345678901234567890",
    "-123456789012345678901234567890", "9223372036854775808", "-9223372036854775809",
    "18446744073709551616", "01", "١٢٣",
)  # fmt: skip
TEXTS = (
    "1e400", "-0", "nan", "NaN", "inf", "-inf", "", " ", "١٢٣", "１２", "1_000", "+5", ".5",
    "0x10", "-1", "0", "abc", "\u0000", "9" * 40, "-" + "9" * 40, "1e3", "-1e30",
    "2023-06-23T20:31:26.123Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59.999999999-23:59", "1970-01-01T00:00:00",
    "snapshot", "update", "delta", "message", "data", "error", "subscribe", "ticker", "tickers",
    "l2_updates", "buy", "sell", "heartbeat", "pong", "welcome", "ack",
)  # fmt: skip
OTHERS: tuple[Any, ...] = (None, True, False, [], {}, [[]], {"a": {}}, 0, -1, 1.5, 2**64, -(2**70))
# What a change does to the value at a place, numbers most often (where the bugs were).
OPS = (
    *("raw",) * 4, *("text",) * 2, *("other",) * 2, "symbol", "retype", "wrap", "delete",
    "twice", "deep", "empty",
)  # fmt: skip


def _paths(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a decoded frame, the root included."""
    yield at
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*at, i))


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


def _set(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    """`node` with the value at `path` replaced (the root too)."""
    if not path:
        return value
    parent = _get(node, path[:-1])
    parent[path[-1]] = value
    return node


def _mutate_json(data: st.DataObject, tree: Any, symbols: tuple[str, ...]) -> str:
    """One to three changes to a decoded frame, written back as text."""
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        paths = list(_paths(tree))
        path = data.draw(st.sampled_from(paths), label="path")
        old = _get(tree, path)
        op = data.draw(st.sampled_from(OPS), label="op")
        if op == "raw":
            tree = _set(tree, path, Raw(data.draw(st.sampled_from(RAW_NUMBERS))))
        elif op == "text":
            text = data.draw(st.one_of(st.sampled_from(TEXTS), st.text(max_size=12)))
            tree = _set(tree, path, text)
        elif op == "other":
            # A copy: a later change of this example must not change the constant.
            tree = _set(tree, path, copy.deepcopy(data.draw(st.sampled_from(OTHERS))))
        elif op == "symbol" and symbols:
            tree = _set(tree, path, data.draw(st.sampled_from(symbols)))
        elif op == "retype":  # a number as text, text as a bare number, anything as its text
            if isinstance(old, str):
                new: Any = Raw(old) if old[:1].isdigit() or old[:1] == "-" else [old]
            else:
                new = dump(old)
            tree = _set(tree, path, new)
        elif op == "wrap":
            wrapper = data.draw(st.sampled_from(("list", "object")))
            tree = _set(tree, path, [old] if wrapper == "list" else {"data": old})
        elif op == "delete" and path:
            parent = _get(tree, path[:-1])
            del parent[path[-1]]
        elif op == "twice" and path and isinstance(_get(tree, path[:-1]), dict):
            parent = _get(tree, path[:-1])
            other = data.draw(st.sampled_from((*RAW_NUMBERS[:4], '"x"', "null", "{}")))
            pairs = list(parent.items())
            key = path[-1]
            first = data.draw(st.booleans(), label="duplicate first")
            extra = (key, Raw(other))
            pairs.insert(0 if first else len(pairs), extra)
            tree = _set(tree, path[:-1], Pairs(pairs))
            break  # a Pairs object has no paths to walk into
        elif op == "empty" and isinstance(old, (dict, list)):
            tree = _set(tree, path, type(old)())
        elif op == "deep":
            depth = data.draw(st.sampled_from((64, 600, 5000)))
            tree = _set(tree, path, Raw("[" * depth + "1" + "]" * depth))
            break
    return dump(tree)


def _mutate_bytes(data: st.DataObject, frame: bytes) -> bytes:
    """A byte-level change: truncated, a byte flipped, bytes put in or cut out, repeated."""
    op = data.draw(st.sampled_from(("truncate", "flip", "insert", "cut", "repeat")), label="bytes")
    n = len(frame)
    at = data.draw(st.integers(0, max(n - 1, 0)), label="at")
    if op == "truncate":
        return frame[:at]
    if op == "flip" and n:
        bit = data.draw(st.integers(1, 255), label="xor")
        return frame[:at] + bytes([frame[at] ^ bit]) + frame[at + 1 :]
    if op == "insert":
        return frame[:at] + data.draw(st.binary(min_size=1, max_size=8)) + frame[at:]
    if op == "cut":
        return frame[:at] + frame[at + data.draw(st.integers(1, 16)) :]
    return frame + data.draw(st.sampled_from((b"", b"\n", b" ", b","))) + frame


def hostile_frame(
    data: st.DataObject, seeds: tuple[str, ...], symbols: tuple[str, ...]
) -> str | bytes:
    """A seed as it is, changed, or something from nowhere; as text or bytes, as on the wire."""
    kind = data.draw(st.sampled_from(("seed", "json", "json", "json", "bytes", "noise")))
    if kind == "noise":
        return data.draw(st.one_of(st.binary(max_size=64), st.text(max_size=64)), label="noise")
    seed = data.draw(st.sampled_from(seeds), label="seed")
    frame: str | bytes = seed
    if kind == "json":
        try:
            tree = json.loads(seed)
        except ValueError:
            tree = None
        if tree is not None:
            frame = _mutate_json(data, tree, symbols)
    elif kind == "bytes":
        frame = _mutate_bytes(data, seed.encode())
    if data.draw(st.booleans(), label="as bytes") and isinstance(frame, str):
        return frame.encode()
    return frame


# Frames a venue sends for life alone (or an answer already settled), which may leave no trace.
def _obj(frame: str | bytes) -> Any:
    try:
        return json.loads(frame)
    except (ValueError, RecursionError):
        return None


def _field(frame: str | bytes, key: str) -> Any:
    obj = _obj(frame)
    return obj.get(key) if isinstance(obj, dict) else None


_LIFE: dict[str, Callable[[str | bytes], bool]] = {
    "bitstamp": lambda f: _field(f, "event") in ("bts:heartbeat", "bts:unsubscription_succeeded"),
    "bybit_spot": lambda f: _field(f, "op") in ("ping", "pong", "unsubscribe"),
    "bybit_linear": lambda f: _field(f, "op") in ("ping", "pong", "unsubscribe"),
    "coinbase": lambda f: _field(f, "channel") == "heartbeats",
    "gemini": lambda f: _field(f, "type") in ("heartbeat", "trade"),
    "gemini_ws": lambda f: _field(f, "id") == "ping",
    "kraken": lambda f: (
        _field(f, "channel") in ("heartbeat", "status") or _field(f, "method") == "pong"
    ),
    "kucoin": lambda f: _field(f, "type") in ("welcome", "pong"),
    "okx": lambda f: (
        f in ("pong", b"pong") or _field(f, "event") in ("channel-conn-count", "unsubscribe")
    ),
}


@dataclass(frozen=True)
class Seeds:
    """What one venue's fuzz starts from."""

    stream: tuple[str, ...]
    rest: tuple[str, ...]
    recv_ts: int  # at or after every seed's venue time


def _fixture_texts(venue: str, prefix: str) -> list[str]:
    """The venue's recorded files starting with `prefix`: one frame a line (.jsonl) or whole."""
    texts: list[str] = []
    directory = FIXTURES / venue
    for path in sorted(directory.glob(f"{prefix}*")) if directory.is_dir() else ():
        text = path.read_text()
        texts.extend(text.splitlines() if path.suffix == ".jsonl" else [text])
    return [t for t in texts if t.strip()]


_FIXTURE_DIR = {"bybit_spot": "bybit", "bybit_linear": "bybit", "gemini_ws": ""}


async def _simulated(case: ParseCase[Any], source: Source, count: int = 12) -> list[str]:
    """Data frames of the case's simulator for its instruments, as it sends them."""
    sim_path, key_of, extra = SIMULATORS[case.id]
    module, _, name = sim_path.partition(":")
    sim_cls = getattr(__import__(module, fromlist=[name]), name)
    instruments = dict(source.instruments)
    prices = {
        (pair if case.id == "bitstamp" else symbol): 100.0 + i
        for i, (symbol, (pair, _)) in enumerate(instruments.items())
    }
    sim = sim_cls(prices, seed=1, **extra)
    keys = [key_of(symbol, pair, kind) for symbol, (pair, kind) in instruments.items()]
    frames: list[str] = []
    now = asyncio.get_running_loop().time()
    for step in range(count):
        key = keys[step % len(keys)]
        path = sim.paths[key]
        path.step(now + step * 0.01)
        frames.append(sim.data_frame(key, path, now + step * 0.01))
    return frames


async def seeds_of(case: ParseCase[Any], source: Source) -> Seeds:
    stream = list(case.garbage)
    stream += [f if isinstance(f, str) else f.decode(errors="replace") for f, _ in case.other]
    stream += [*case.unsolicited, *(case.order or ())]
    stream += [f for f in (case.split, case.locked) if f is not None]
    if case.refusal is not None:
        stream += [case.refusal.refusal, case.refusal.ack]
    if case.echo is not None:
        stream.append(case.echo.replace("{id}", "1"))
    for numbers in (case.stream_numbers, case.counters):
        if numbers is not None:
            stream.append(numbers.body)
    venue = _FIXTURE_DIR.get(case.id, case.id)
    if venue:
        stream += _fixture_texts(venue, "ws_")
    stream += await _simulated(case, source)
    rest = [case.rest_numbers.body] if case.rest_numbers is not None else []
    if venue:
        rest += _fixture_texts(venue, "rest_")
    if case.id == "pyth_hermes":  # REST answers take the stream's decoder
        rest += _fixture_texts(venue, "v2_")
    stamps = [case.recv_ts] + [
        n.recv_ts for n in (case.stream_numbers, case.counters, case.rest_numbers) if n is not None
    ]
    wall = int(time.time() * 1000)  # the simulators stamp their frames with the wall clock
    return Seeds(tuple(dict.fromkeys(stream)), tuple(dict.fromkeys(rest)), max(*stamps, wall))


def _footprint(source: Source, rotations: list[str]) -> tuple[Any, ...]:
    """Everything a frame can move that says it was seen: counts, requests, rotations."""
    stats = source.stats
    return (
        stats.quotes,
        sum(stats.dropped.values()),
        stats.malformed,
        dict(stats.failed_instruments),
        dict(source._pending),
        source._outbox.qsize(),
        stats.sequence_resets,
        len(rotations),
    )


def check_quote(q: Quote, case: ParseCase[Any], source: Source, recv_ts: int) -> None:
    """One emitted quote against the invariants of the module docstring."""
    assert q.source == case.name
    assert (q.pair, q.kind) in source.stats.symbol_of, q
    assert q.recv_ts == recv_ts
    if q.bid is not None or q.ask is not None:
        assert q.bid is not None and q.ask is not None, q
        assert 0.0 < q.bid <= q.ask < math.inf, q
    else:
        assert q.price is not None
    if q.price is not None:
        assert 0.0 < q.price < math.inf, q
    if q.venue_ts is not None:
        assert type(q.venue_ts) is int, q
        assert 0 <= q.venue_ts <= recv_ts + source.max_clock_skew_ms, q


def feed(
    case: ParseCase[Any],
    source: Source,
    quotes: list[Quote],
    rotations: list[str],
    frame: str | bytes,
    recv_ts: int,
    rest: bool,
) -> None:
    """Hand one frame to the adapter and check what it did."""
    before = _footprint(source, rotations)
    count = len(quotes)
    try:
        if rest:
            source.on_rest(frame if isinstance(frame, bytes) else frame.encode(), recv_ts)
        else:
            source.on_message(frame, recv_ts)
    except UNDECODABLE:  # the read loops count it as `decode`: no quote may have left
        assert len(quotes) == count, frame
        return
    new = quotes[count:]
    for q in new:
        check_quote(q, case, source, recv_ts)
    assert source.stats.quotes - before[0] == len(new), "quotes counted and emitted differ"
    if not rest and not new and _footprint(source, rotations) == before:
        life = _LIFE.get(case.id)
        assert life is not None and life(frame), f"left no trace: {frame!r:.300}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_hostile_frames_never_raise_and_never_quote_badly(case: ParseCase[Any]) -> None:
    """Any sequence of hostile frames (module docstring): nothing raised, every quote sane and
    counted, every frame accounted."""
    async with aiohttp.ClientSession() as http:
        seeds = await seeds_of(case, make_source(case, http, []))
        symbols = tuple(make_source(case, http, []).instruments)

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=st.data())
        def run(data: st.DataObject) -> None:
            quotes: list[Quote] = []
            source = make_source(case, http, quotes)
            rotations: list[str] = []
            rotate = source._rotate
            source._rotate = lambda why: (rotations.append(why), rotate(why))[1]  # type: ignore[method-assign]
            recv_ts = seeds.recv_ts
            for _ in range(data.draw(st.integers(1, 6), label="frames")):
                recv_ts += data.draw(st.integers(0, 2_000), label="later")
                rest = bool(seeds.rest) and data.draw(st.integers(0, 4)) == 0
                if rest:
                    symbol = data.draw(st.sampled_from(symbols), label="asked")
                    source.rest_request(
                        [symbol] if data.draw(st.booleans(), label="one") else list(symbols)
                    )
                frame = hostile_frame(data, seeds.rest if rest else seeds.stream, symbols)
                feed(case, source, quotes, rotations, frame, recv_ts, rest)

        run()


def _inflated(tree: Any, size: int) -> Any | None:
    """`tree` with its longest list made `size` long by repeating its first item; None if it
    holds no list."""
    lists = [p for p in _paths(tree) if isinstance(_get(tree, p), list) and _get(tree, p)]
    if not lists:
        return None
    path = max(lists, key=lambda p: len(_get(tree, p)))
    items = _get(tree, path)
    return _set(tree, path, items + [items[0]] * (size - len(items)))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_a_huge_frame_of_a_real_shape_is_read_or_dropped_whole(case: ParseCase[Any]) -> None:
    """Each data frame whose shape holds a list, that list grown to 10,000 items (a frame of about a
    megabyte: a book of every level, a push of every instrument), as a stream frame and as a
    REST answer: nothing raised, every quote sane and counted."""
    async with aiohttp.ClientSession() as http:
        seeds = await seeds_of(case, make_source(case, http, []))
        data = [f for f in (*(case.order or ()), case.locked) if f is not None]
        if case.stream_numbers is not None:
            data.append(case.stream_numbers.body)
        data.append(seeds.stream[-1])  # a simulator's frame
        for rest, texts in ((False, tuple(dict.fromkeys(data))), (True, seeds.rest)):
            for seed in texts:
                huge = _inflated(_obj(seed), 10_000)
                if huge is None:
                    continue
                quotes: list[Quote] = []
                source = make_source(case, http, quotes)
                source.rest_request(list(source.instruments))
                feed(case, source, quotes, [], json.dumps(huge), seeds.recv_ts, rest)


_SSE_PIECES = (
    b"data:", b"data: ", b"event:", b"event:error", b"id:7", b"retry:1", b":", b"\n", b"\r\n",
    b"\r", b"\n\n", b'{"parsed":[]}', "é".encode(), b"\xe9", b"\xff", b"x",
)  # fmt: skip


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    wire=st.lists(st.one_of(st.sampled_from(_SSE_PIECES), st.binary(max_size=6)), max_size=30).map(
        b"".join
    ),
    cuts=st.lists(st.integers(0, 200), max_size=8),
)
def test_the_sse_parser_reads_any_bytes_the_same_however_they_are_cut(
    wire: bytes, cuts: list[int]
) -> None:
    """Pyth's Server-Sent Events parser takes any bytes without raising (a line that is not
    UTF-8 is read with replacement characters), and what it gives does not depend on where
    the transport cut the stream into chunks."""
    whole = _SseLines()
    expected = whole.feed(wire)
    chunked = _SseLines()
    got: list[tuple[str | None, str]] = []
    at = 0
    for cut in sorted({min(c, len(wire)) for c in cuts} | {len(wire)}):
        got += chunked.feed(wire[at:cut])
        at = cut
    assert got == expected
    assert (chunked.pending, chunked.pending_event) == (whole.pending, whole.pending_event)


def _made_up(frame: str, symbols: tuple[str, ...], n: int) -> str:
    """`frame` with each configured symbol in it (as the venue spells it, or lower case) replaced
    by one no other frame names: a Pyth feed id by another 64 hex digits, others suffixed."""
    for symbol in symbols:
        if len(symbol) == 64:  # Pyth: the id's shape is checked before its lookup
            frame = frame.replace(symbol, f"{n:064x}")
            continue
        for spelled in dict.fromkeys((symbol, symbol.lower())):
            frame = frame.replace(spelled, f"{spelled}{n}")
    return frame


def _held(source: Source) -> dict[str, int]:
    """The size of every container the adapter (and its stats) holds, and of the containers
    inside those (a book's levels per symbol): what a venue's frames could grow."""
    sizes: dict[str, int] = {}

    def count(name: str, value: Any, depth: int) -> None:
        if isinstance(value, dict | set | frozenset | list | tuple | deque):
            sizes[name] = len(value)
            if depth:
                inner = value.values() if isinstance(value, dict) else value
                for k, item in enumerate(list(inner)[:64]):
                    count(f"{name}[{k}]", item, depth - 1)
        elif depth and hasattr(value, "__slots__") and not isinstance(value, Source):
            for slot in getattr(value, "__slots__", ()):
                count(f"{name}.{slot}", getattr(value, slot, None), depth - 1)

    for owner, obj in (("source", source), ("stats", source.stats)):
        names = [*getattr(obj, "__dict__", ())]
        names += [n for cls in type(obj).__mro__ for n in getattr(cls, "__slots__", ())]
        for name in dict.fromkeys(names):
            count(f"{owner}.{name}", getattr(obj, name, None), 2)
    return sizes


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_frames_of_ever_new_symbols_grow_no_container_of_the_adapter(
    case: ParseCase[Any],
) -> None:
    """Every frame a venue sends of an instrument (its recordings, its simulator's), sent again
    and again naming a new symbol each time, as a venue listing ever new instruments, or one
    sending garbage, would: each is counted, and after a warm-up no dict, set, list or deque of
    the adapter or its stats holds one entry more, however many follow (the symbol maps, the
    per-symbol sequence and time bars, the books, the requests, the drop counts). The same of
    its REST answers."""
    async with aiohttp.ClientSession() as http:
        quotes: list[Quote] = []
        source = make_source(case, http, quotes)
        seeds = await seeds_of(case, source)
        symbols = tuple(source.instruments)

        def naming(frames: tuple[str, ...]) -> list[str]:
            return [f for f in frames if any(s in f or s.lower() in f for s in symbols)]

        named, answers = naming(seeds.stream), naming(seeds.rest)
        assert named, "no seed frame names an instrument"
        recv_ts = seeds.recv_ts

        def send(rounds: range) -> None:
            for n in rounds:
                for frame in named:
                    with contextlib.suppress(*UNDECODABLE):
                        source.on_message(_made_up(frame, symbols, n), recv_ts + n)
                for answer in answers:  # a REST answer to a request for every instrument
                    source.rest_request(list(symbols))
                    source.on_rest(_made_up(answer, symbols, n).encode(), recv_ts + n)

        send(range(1, 21))
        warm = _held(source)
        traces = sum(source.stats.dropped.values()) + source.stats.malformed
        send(range(21, 521))
        grown = {k: (warm.get(k), v) for k, v in _held(source).items() if v > warm.get(k, 0)}
        assert grown == {}, f"{case.id}: containers grew with new symbols: {grown}"
        # (a REST answer that names no symbol, Coinbase's, is the asked instrument's: quoted)
        assert all(q.pair in dict(case.pairs) for q in quotes)
        assert sum(source.stats.dropped.values()) + source.stats.malformed >= traces + 500
