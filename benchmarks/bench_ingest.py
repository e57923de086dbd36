"""Ingest benchmark: venue frames through decode, normalize and book update, against bare orjson.

Frames come from two places, and each is timed on the same bytes in the same run:

- generated: every venue's simulator (the real wire shapes) for a set of symbols;
- recorded: the real frames kept in tests/fixtures/<venue>/ (real number formatting and the
  fields a venue really sends), only those the adapter turns into quotes; a frame sent once a
  subscription is fed as the message that follows it (`AS_ON_THE_WIRE`: Coinbase's snapshot
  sample as an `update`).

Per venue and for a mixed stream of every venue's generated frames interleaved:

- `floor`: `orjson.loads(frame)` alone, the cheapest possible look at each frame;
- `adapter`: `source.on_message(frame, recv_ts)`, decode + checks + the normalized `Quote`
  handed to an emit callback that only collects it;
- `ingest`: the same with `Core.ingest` as the emit callback, i.e. the daemon's whole per-frame
  path up to the book (everything except reading the socket).

The figure that matters is the floor's share of the ingest time (budget: ingest runs at 50 % or
more of the bare-decode rate, i.e. costs at most twice the bare decode). Absolute rates move with
the machine; the ratio much less.

`--instructions` counts instead of timing: the same passes, once each, under valgrind's callgrind
(which must be installed), in CPU instructions per frame. A count does not move with the load of
the machine, so two builds compare on a shared one where wall-clock runs spread by 2x; it is not
a time (cache misses, branches and SIMD width are not in it), so the budget is read from the
timed table.

    python benchmarks/bench_ingest.py [--frames 50000] [--venues binance,okx] [--json out.json]
    python benchmarks/bench_ingest.py --instructions --frames 2000 [--venues binance,okx]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from oracled.aggregate.book import Book
from oracled.clock import ManualClock
from oracled.config import SOURCE_TYPES, Config, SourceConfig, parse_config
from oracled.core import Core
from oracled.model import Kind, Quote
from oracled.sim.venues import SIMULATORS
from oracled.sources import build_source
from oracled.sources.stats import SourceStats

# A frame is "received" this long after its own venue time: a recorded venue time is years old,
# some simulators stamp times from their own start (the benchmark never starts them), and a
# latency past the histogram's last bound (or negative) would take the source's rare path.
RECEIVE_LAG_MS = 100
# Cycles of recorded frames whose adapters are built before one timed loop (see `_run_pass`):
# few enough that their state stays in the CPU caches, as one adapter's does in the daemon.
BATCH = 100
BASES = ("BTC", "ETH", "SOL", "XRP", "DOGE", "ADA", "AVAX", "LINK")
INDEX = "index"  # the silent spot source of a market that only perpetuals quote (`_core_config`)
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
# Under callgrind (`--instructions`) only what runs inside this C function is counted, and the
# counters are written out after each call: `sys.call_tracing(fn, args)` is `fn(*args)`, and
# nothing else in the process calls it.
MARKER = "sys_call_tracing"
# In the counting child: one (venue, origin, kind, frames) entry per counted call, in order.
_counted: list[tuple[str, str, str, int]] | None = None


def _clocked(label: tuple[str, str, str], frames: int, fn: Callable[..., None], *args: Any) -> int:
    """`fn(*args)`'s wall time in ns; in the counting child, a counted call (returns 0)."""
    if _counted is not None:
        _counted.append((*label, frames))
        sys.call_tracing(fn, args)
        return 0
    start = time.perf_counter_ns()
    fn(*args)
    return time.perf_counter_ns() - start


@dataclass(frozen=True)
class Venue:
    """How to benchmark one source type: the quote currency and kind of its pairs."""

    type: str
    quote: str
    kind: Kind = "spot"


VENUES: tuple[Venue, ...] = (
    Venue("binance", "USDT"),
    Venue("binance_usdm", "USDT", "perp"),
    Venue("bybit_spot", "USDT"),
    Venue("bybit_linear", "USDT", "perp"),
    Venue("coinbase", "USD"),
    Venue("kraken", "USD"),
    Venue("okx", "USDT"),
    Venue("bitstamp", "USD"),
    Venue("gemini", "USD"),
    Venue("gemini_ws", "USD"),
    Venue("kucoin", "USDT"),
    Venue("pyth_hermes", "USD"),
)

# Recorded frames per source type: fixture files (one frame a line for .jsonl, the whole file
# for .json) and the pairs those frames quote. Frames that quote nothing are left out.
RECORDED: dict[str, tuple[tuple[str, ...], tuple[tuple[str, Kind], ...]]] = {
    "binance": (
        ("binance/ws_bookTicker.jsonl",),
        (("NKN/USDT", "spot"), ("LRC/BTC", "spot"), ("BLZ/ETH", "spot")),
    ),
    "binance_usdm": (("binance_usdm/ws_bookTicker.json",), (("BNB/USDT", "perp"),)),
    "bybit_linear": (("bybit/ws_tickers_linear_snapshot.json",), (("BTC/USDT", "perp"),)),
    "coinbase": (("coinbase/ws_ticker.json",), (("BTC/USD", "spot"),)),
    "kraken": (
        ("kraken/ws_ticker_snapshot.json", "kraken/ws_v1_frames.jsonl"),
        (("BTC/USD", "spot"),),
    ),
    "okx": (("okx/ws_tickers.jsonl",), (("BTC/USDT", "spot"),)),
    "kucoin": (
        ("kucoin/ws_ticker.jsonl",),
        (("SNX/BTC", "spot"), ("ANKR/BTC", "spot"), ("BCHSV/USDT", "spot")),
    ),
    "gemini": (("gemini/ws_l2_updates.jsonl",), (("GRT/USD", "spot"), ("ETH/EUR", "spot"))),
    "bitstamp": (("bitstamp/ws_recorded.jsonl",), (("ETH/USD", "spot"),)),
}
# Recorded frames fed as the messages that follow them on the wire. Coinbase's only recorded
# ticker is the documentation's `snapshot` sample, sent once a subscription; the stream goes on
# with `update` events of the same fields, which are what a cycle of frames should time.
AS_ON_THE_WIRE: dict[str, tuple[bytes, bytes]] = {
    "coinbase": (b'"type": "snapshot"', b'"type": "update"'),
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _source_config(venue_type: str, pairs: Sequence[tuple[str, Kind]]) -> SourceConfig:
    # Pyth has no symbol rule: give every pair a (made-up) feed id.
    ids = {p: f"{i + 1:064x}" for i, (p, _) in enumerate(pairs)}
    return SourceConfig(type=venue_type, instruments=ids if venue_type == "pyth_hermes" else {})


def _core_config(sources: dict[str, tuple[str, Sequence[tuple[str, Kind]]]]) -> Config:
    """One market per pair of every source, each quoted by the sources that carry it; perpetuals
    are the market's `perp_sources` (mark price inputs), as in the shipped config, and a market
    quoted by perpetuals alone gets one silent spot source (`INDEX`) to be a market at all."""
    voting: dict[str, list[dict[str, Any]]] = {}
    perps: dict[str, list[dict[str, Any]]] = {}
    instruments: dict[str, dict[str, str]] = {}
    for sid, (venue_type, pairs) in sources.items():
        for i, (pair, kind) in enumerate(pairs):
            entry = {"source": sid, "pair": pair}
            (perps if kind == "perp" else voting).setdefault(pair, []).append(entry)
            voting.setdefault(pair, [])
            if venue_type == "pyth_hermes":
                instruments.setdefault(sid, {})[pair] = f"{i + 1:064x}"
    declared = {
        sid: {"type": t, "instruments": instruments.get(sid, {})} for sid, (t, _) in sources.items()
    }
    declared[INDEX] = {"type": "binance", "instruments": {}}
    return parse_config(
        {
            "sources": declared,
            "markets": [
                {
                    "symbol": pair,
                    "min_sources": 1,
                    "sources": entries or [{"source": INDEX, "pair": pair}],
                    "perp_sources": perps.get(pair, []),
                }
                for pair, entries in voting.items()
            ],
        },
        env={},
    )


@dataclass
class Case:
    """Frames of one venue (or the mixed stream) and how to build its adapters."""

    name: str
    origin: str  # "generated", "recorded" or "mixed"
    venues: dict[str, tuple[SourceConfig, list[tuple[str, Kind]]]]  # source id -> adapter set-up
    core_cfg: Config
    warm: list[tuple[str, bytes]] = field(default_factory=list)  # (source id, frame)
    frames: list[tuple[str, bytes]] = field(default_factory=list)
    # Receive time of each frame: just after the frame's own venue time, as the daemon sees it
    # (frames without one: the run's receive time). Filled by `_receive_times` if left empty.
    recv: list[int] = field(default_factory=list)


def _adapters(
    case: Case, session: aiohttp.ClientSession, emit: Callable[[Quote], Any]
) -> dict[str, Any]:
    return {
        sid: build_source(sid, cfg, pairs, emit, ManualClock(0), session, SourceStats(sid))
        for sid, (cfg, pairs) in case.venues.items()
    }


async def _generated(venue: Venue, count: int, session: aiohttp.ClientSession) -> Case | None:
    """Simulator frames for one venue, or None if its adapter or simulator is not there."""
    if venue.type not in SOURCE_TYPES or venue.type not in SIMULATORS:
        return None
    sim_path, key_of, extra = SIMULATORS[venue.type]
    sim_cls = _load(sim_path)
    pairs: list[tuple[str, Kind]] = [(f"{b}/{venue.quote}", venue.kind) for b in BASES]
    cfg = _source_config(venue.type, pairs)
    sid = venue.type
    case = Case(sid, "generated", {sid: (cfg, pairs)}, _core_config({sid: (venue.type, pairs)}))
    instruments = dict(_adapters(case, session, lambda q: None)[sid].instruments)
    price_keys = {
        sym: (pair if venue.type == "bitstamp" else sym) for sym, (pair, _) in instruments.items()
    }
    sim = sim_cls({price_keys[s]: 100.0 + i for i, s in enumerate(instruments)}, seed=1, **extra)
    keys = [key_of(sym, pair, kind) for sym, (pair, kind) in instruments.items()]
    frames: list[tuple[str, bytes]] = []
    now = 0.0
    while len(frames) < count + 1000:
        for key in keys:
            path = sim.paths[key]
            path.step(now)
            frames.append((sid, sim.data_frame(key, path, now).encode()))
        now += 0.01
        await asyncio.sleep(0.001)  # let the simulator's clock (and venue times) move on
    case.warm, case.frames = frames[:1000], frames[1000 : 1000 + count]
    return case


def _fixture_frames(files: Sequence[str]) -> list[bytes]:
    frames: list[bytes] = []
    for name in files:
        data = (FIXTURES / name).read_bytes()
        if name.endswith(".jsonl"):
            frames.extend(line for line in data.splitlines() if line.strip())
        else:
            frames.append(data)
    return frames


def _recorded(venue_type: str, session: aiohttp.ClientSession, recv_ts: int) -> Case | None:
    """The venue's recorded frames that yield at least one quote, or None if there are none, each
    with a receive time `RECEIVE_LAG_MS` after its newest venue time (`recv_ts` if it has none)."""
    if venue_type not in RECORDED or venue_type not in SOURCE_TYPES:
        return None
    files, pairs = RECORDED[venue_type]
    sid = venue_type
    case = Case(
        sid,
        "recorded",
        {sid: (_source_config(venue_type, pairs), list(pairs))},
        _core_config({sid: (venue_type, pairs)}),
    )
    edit = AS_ON_THE_WIRE.get(venue_type)
    for frame in _fixture_frames(files):
        if edit is not None:
            frame = frame.replace(*edit)
        sink: list[Quote] = []
        _adapters(case, session, sink.append)[sid].on_message(frame, recv_ts)
        if sink:
            case.frames.append((sid, frame))
            stamps = [q.venue_ts for q in sink if q.venue_ts is not None]
            case.recv.append(max(stamps) + RECEIVE_LAG_MS if stamps else recv_ts)
    return case if case.frames else None


def _receive_times(case: Case, session: aiohttp.ClientSession, recv_ts: int) -> list[int]:
    """Each frame's receive time, `RECEIVE_LAG_MS` after the newest venue time among the quotes
    it gives (`recv_ts` if none has one), from one untimed pass of the frames in order."""
    sink: list[Quote] = []
    adapters = _adapters(case, session, sink.append)
    for sid, frame in case.warm:
        adapters[sid].on_message(frame, recv_ts)
    times: list[int] = []
    for sid, frame in case.frames:
        sink.clear()
        adapters[sid].on_message(frame, recv_ts)
        stamps = [q.venue_ts for q in sink if q.venue_ts is not None]
        times.append(max(stamps) + RECEIVE_LAG_MS if stamps else recv_ts)
    return times


def _mixed(cases: Sequence[Case]) -> Case:
    """Every generated case's frames interleaved one by one into one stream and one core."""
    venues = {sid: v for c in cases for sid, v in c.venues.items()}
    core_cfg = _core_config({sid: (cfg.type, pairs) for sid, (cfg, pairs) in venues.items()})
    case = Case("mixed", "mixed", venues, core_cfg)
    n = min(len(c.frames) for c in cases)
    case.warm = [c.warm[i] for i in range(min(len(c.warm) for c in cases)) for c in cases]
    case.frames = [c.frames[i] for i in range(n) for c in cases]
    return case


@dataclass
class Timing:
    seconds: float = 0.0  # per frame, best pass
    quotes: int = 0
    drops: int = 0


def _feed(calls: list[tuple[Callable[[bytes, int], None], bytes, int]]) -> None:
    for on_message, frame, ts in calls:
        on_message(frame, ts)


def _run_pass(
    case: Case, session: aiohttp.ClientSession, recv_ts: int, with_core: bool, cycles: int
) -> Timing:
    """One timed pass over the frames (`cycles` times for the few recorded ones), fresh adapters
    and a fresh book each cycle so that no frame is refused as a repeat of an earlier one.

    The cycles' adapters and books are built before the clock starts, `BATCH` cycles at a time:
    built between two timed frames, they would leave each frame a cold adapter (evicted caches),
    which the daemon's one long-lived adapter per venue never is (a one-frame Coinbase cycle
    measured 4.1 us that way against 2.0 us warm, with the bare decode at 1.2 us).
    """
    core = Core(case.core_cfg)
    elapsed = quotes = drops = 0
    recvs = case.recv or [recv_ts] * len(case.frames)
    gc.collect()
    gc.disable()  # for the whole pass: a collection per cycle would cost more than the frames
    for first in range(0, cycles, BATCH):
        books: list[Book] = []
        sets: list[dict[str, Any]] = []
        for _ in range(min(BATCH, cycles - first)):
            core.book = book = Book(core.layout, case.core_cfg)
            sink: list[Quote] = []
            adapters = _adapters(case, session, core.ingest if with_core else sink.append)
            for sid, frame in case.warm:
                adapters[sid].on_message(frame, recv_ts)
            book.drops.clear()
            books.append(book)
            sets.append(adapters)
        calls = [
            (adapters[sid].on_message, frame, ts)
            for adapters in sets
            for (sid, frame), ts in zip(case.frames, recvs, strict=True)
        ]
        before = sum(a.stats.quotes for adapters in sets for a in adapters.values())
        label = (case.name, case.origin, "ingest" if with_core else "adapter")
        elapsed += _clocked(label, len(calls), _feed, calls)
        quotes += sum(a.stats.quotes for adapters in sets for a in adapters.values()) - before
        drops += sum(sum(book.drops.values()) for book in books)
    gc.enable()
    return Timing(elapsed / (len(case.frames) * cycles) / 1e9, quotes, drops)


def _time_pipeline(
    case: Case,
    session: aiohttp.ClientSession,
    recv_ts: int,
    repeat: int,
    with_core: bool,
    cycles: int,
) -> Timing:
    best = Timing(float("inf"))
    for _ in range(repeat):
        t = _run_pass(case, session, recv_ts, with_core, cycles)
        if t.seconds < best.seconds:
            best = t
    return best


def _decode(frames: list[tuple[str, bytes]], cycles: int) -> None:
    loads = orjson.loads
    for _ in range(cycles):
        for _sid, frame in frames:
            loads(frame)


def _time_floor(case: Case, repeat: int, cycles: int) -> float:
    best = float("inf")
    frames = case.frames
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        label = (case.name, case.origin, "floor")
        elapsed = _clocked(label, len(frames) * cycles, _decode, frames, cycles)
        gc.enable()
        best = min(best, elapsed / (len(frames) * cycles) / 1e9)
    return best


HEADER = (
    f"{'venue':<14}{'origin':<10}{'bytes':>6}{'floor us':>10}{'adapter us':>11}{'ingest us':>10}"
    f"{'ratio':>7}{'% floor':>8}{'ingest/s':>11}{'q/frame':>8}{'drops':>6}"
)


def _row(case: Case, floor: float, adapter: Timing, ingest: Timing, cycles: int) -> dict[str, Any]:
    frames = len(case.frames) * cycles
    row = {
        "venue": case.name,
        "origin": case.origin,
        "frames": frames,
        "frame_bytes": statistics.mean(len(f) for _, f in case.frames),
        "floor_us": floor * 1e6,
        "adapter_us": adapter.seconds * 1e6,
        "ingest_us": ingest.seconds * 1e6,
        "ratio": ingest.seconds / floor,  # budget: <= 2.0
        "floor_rate_pct": 100.0 * floor / ingest.seconds,  # budget: >= 50
        "ingest_per_s": 1.0 / ingest.seconds,
        "quotes_per_frame": ingest.quotes / frames,
        "core_drops": ingest.drops,
    }
    print(
        f"{case.name:<14}{case.origin:<10}{row['frame_bytes']:>6.0f}{row['floor_us']:>10.2f}"
        f"{row['adapter_us']:>11.2f}{row['ingest_us']:>10.2f}{row['ratio']:>7.2f}"
        f"{row['floor_rate_pct']:>7.0f}%{row['ingest_per_s']:>11,.0f}"
        f"{row['quotes_per_frame']:>8.2f}{ingest.drops:>6}",
        flush=True,
    )
    return row


def _measure(
    case: Case, session: aiohttp.ClientSession, args: argparse.Namespace, cycles: int
) -> dict[str, Any] | None:
    """The case's row; None in the counting child, where the passes only run to be counted."""
    recv_ts = int(time.time() * 1000) + 1000  # after every generated venue time
    if not case.recv:
        case.recv = _receive_times(case, session, recv_ts)
    floor = _time_floor(case, args.repeat, cycles)
    adapter = _time_pipeline(case, session, recv_ts, args.repeat, False, cycles)
    ingest = _time_pipeline(case, session, recv_ts, args.repeat, True, cycles)
    if _counted is not None:
        return None
    return _row(case, floor, adapter, ingest, cycles)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    wanted = set(args.venues.split(",")) if args.venues else None
    rows: list[dict[str, Any] | None] = []
    if _counted is None:
        print(HEADER)
        print("-" * len(HEADER))
    generated: list[Case] = []
    async with aiohttp.ClientSession() as session:
        for venue in VENUES:
            if wanted is not None and venue.type not in wanted:
                continue
            case = await _generated(venue, args.frames, session)
            if case is not None:
                generated.append(case)
                rows.append(_measure(case, session, args, 1))
            recorded = _recorded(venue.type, session, int(time.time() * 1000))
            if recorded is not None:
                cycles = max(1, args.recorded_frames // len(recorded.frames))
                rows.append(_measure(recorded, session, args, cycles))
        if len(generated) > 1:
            mixed = _mixed(generated)
            rows.append(_measure(mixed, session, args, 1))
    timed = [r for r in rows if r is not None]
    if timed:
        worst = max((r for r in timed if r["origin"] != "recorded"), key=lambda r: r["ratio"])
        print(
            f"\nbudget: ingest >= 50 % of the bare-decode rate (ratio <= 2.00); "
            f"slowest generated: {worst['venue']} at {worst['floor_rate_pct']:.0f} %"
        )
    return timed


COUNT_HEADER = (
    f"{'venue':<14}{'origin':<10}{'bytes':>6}{'floor ins':>11}{'adapter ins':>13}"
    f"{'ingest ins':>12}{'ratio':>7}{'% floor':>8}"
)


def _count(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run this benchmark again under callgrind, counting only the passes (`MARKER`), one pass
    each, and turn the counters it writes into instructions per frame."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("--instructions needs valgrind (its callgrind tool) on the PATH")
    with tempfile.TemporaryDirectory() as tmp:
        out, labels = Path(tmp) / "callgrind.out", Path(tmp) / "labels.json"
        command = [
            valgrind, "--tool=callgrind", "-q", "--collect-atstart=no",
            f"--toggle-collect={MARKER}", f"--dump-after={MARKER}", f"--callgrind-out-file={out}",
            sys.executable, __file__, "--count-into", str(labels), "--repeat", "1",
            "--frames", str(args.frames), "--recorded-frames", str(args.recorded_frames),
        ]  # fmt: skip
        if args.venues:
            command += ["--venues", args.venues]
        # A fixed string hash: dictionary probes then run the same from one run to the next.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if done.returncode != 0:
            sys.exit(f"callgrind run failed ({done.returncode}):\n{done.stderr.decode()[-4000:]}")
        calls = json.loads(labels.read_text())
        counts = [_dumped_total(Path(f"{out}.{i}")) for i in range(1, len(calls) + 1)]
    totals: dict[tuple[str, str], dict[str, list[int]]] = {}
    for (venue, origin, kind, frames), count in zip(calls, counts, strict=True):
        entry = totals.setdefault((venue, origin), {}).setdefault(kind, [0, 0])
        entry[0] += count
        entry[1] += frames
    print(COUNT_HEADER)
    print("-" * len(COUNT_HEADER))
    rows = []
    for (venue, origin), kinds in totals.items():
        floor, adapter, ingest = (kinds[k][0] / kinds[k][1] for k in ("floor", "adapter", "ingest"))
        row = {
            "venue": venue,
            "origin": origin,
            "frames": kinds["floor"][1],
            "floor_instructions": floor,
            "adapter_instructions": adapter,
            "ingest_instructions": ingest,
            "ratio": ingest / floor,
            "floor_rate_pct": 100.0 * floor / ingest,
        }
        rows.append(row)
        print(
            f"{venue:<14}{origin:<10}{'':>6}{floor:>11,.0f}{adapter:>13,.0f}{ingest:>12,.0f}"
            f"{row['ratio']:>7.2f}{row['floor_rate_pct']:>7.0f}%"
        )
    return rows


def _dumped_total(path: Path) -> int:
    """The instructions counted in one callgrind dump (its `totals:` line; Ir comes first)."""
    for line in path.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50_000, help="generated frames per venue")
    parser.add_argument(
        "--recorded-frames", type=int, default=5_000, help="recorded frames timed per venue"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--venues", help="comma-separated source types (default: all available)")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count CPU instructions per frame under callgrind instead of timing",
    )
    parser.add_argument("--count-into", help=argparse.SUPPRESS)  # the counting child's labels
    args = parser.parse_args()
    if args.count_into:
        global _counted
        _counted = []
        asyncio.run(run(args))
        Path(args.count_into).write_text(json.dumps(_counted))
        return
    rows = _count(args) if args.instructions else asyncio.run(run(args))
    if args.json_path:
        meta = {
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "measure": "instructions per frame" if args.instructions else "seconds per frame",
        }
        with open(args.json_path, "w") as out:
            json.dump({"meta": meta, "results": rows}, out, indent=2)


if __name__ == "__main__":
    main()
