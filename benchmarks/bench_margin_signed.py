"""What `oracled margin` in signed mode spends per daemon round completed and per tick.

Drives `SignedMarginService` (oracled/margin/signed.py) in process, without sockets: N markets,
K daemons each signing every round of every market with a real `RoundSigner` (the stream's
`signed` frames, one per market), quorum K // 2 + 1, and a few accounts with positions across
the markets. Each daemon's frames are handed to the service as its connection would hand them
(`_frame`); the clock is a manual one, so that nothing ages out unless the run says so.
Orders of the frames:

- `bursts`: each daemon's round arrives whole, one daemon after another;
- `interleaved`: the daemons' frames alternate one by one, so that when one daemon's round
  completes the others' are half in (their markets are read up to their last complete round).

Per order it reports, per daemon round completed: the CPU of the engine's refresh (the quorum
views read and handed to the engine), the quorum views read (`OracleClient.price` calls), and
the CPU of the whole round's frames (verification, refresh, the engine's step); the CPU of
`OracleClient.feed` a frame (verification, the median over the rounds); and per tick
(no new frame, the service's steady `_decide`): the CPU and views read when nothing aged out
(the usual tick: rounds come every 250 ms, reports count for 5 s), and when every report held
has aged out (after a round of every daemon, five times: every market lapses and freezes).

`--memory R` measures instead what a bare `OracleClient` keeps: R rounds of every daemon's
markets fed to it, the growth of the process's RSS and (in a second run, under tracemalloc) of
the Python heap every few rounds. The client remembers the last 64 round times of each
signer and market, so the heap grows for 64 rounds and then stays.

    python benchmarks/bench_margin_signed.py --markets 1000 --daemons 3 --rounds 12
    python benchmarks/bench_margin_signed.py --markets 100,1000 --json out.json
    python benchmarks/bench_margin_signed.py --markets 1000 --daemons 3 --memory 80

See benchmarks/README.md for the figures.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from oracled.client import MarketView, OracleClient
from oracled.margin import MarginEngine, parse_accounts
from oracled.margin.signed import SignedMarginService
from oracled.model import Status
from oracled.publish.signer import MARK_MODE_CODES, Leaf, RoundSigner, SignedPrice, SigningKey

T0 = 1_700_000_000_000
ROUND_MS = 250
AGE_MS = 5_000  # the policy's max_report_age_ms (its default)
ORDERS = ("bursts", "interleaved")


def market_names(n: int) -> list[str]:
    return [f"M{i:04d}/USD" for i in range(n)]


def engine_for(markets: list[str], keys: list[SigningKey], accounts: int) -> MarginEngine:
    """An engine on `markets` (one perpetual each) with `accounts` accounts of four positions."""
    tiers = [{"initial": 0.02, "maintenance": 0.01}]
    instruments = {f"{m[:-4]}-PERP": {"market": m, "tiers": tiers} for m in markets}
    names = list(instruments)
    accts = [
        {
            "id": f"a{i}",
            "collateral": {"USD": 100_000},
            "positions": [
                {"instrument": names[(i * 7 + j * 13) % len(names)], "qty": 1, "entry": 100.0}
                for j in range(min(4, len(names)))
            ],
        }
        for i in range(accounts)
    ]
    data: dict[str, Any] = {
        "policy": {"liquidation_fee": 0.0, "max_report_age_ms": AGE_MS},
        "assets": {"USD": {}},
        "instruments": instruments,
        "accounts": accts,
        "signed": {
            "deployment": "bench",
            "signers": {f"daemon-{k}": key.address for k, key in enumerate(keys)},
            "quorum": len(keys) // 2 + 1,
        },
    }
    return MarginEngine(parse_accounts(data))


def signed_frames(signer: RoundSigner, ts: int, number: int, markets: list[str]) -> list[str]:
    """One round of every market, active at a price that moves a little with the round."""
    perps = MARK_MODE_CODES["perps"]
    leaves = tuple(
        Leaf(m, ts, Status.ACTIVE, 10_000 + i + number, 1, -2, 10_010 + i + number, perps)
        for i, m in enumerate(markets)
    )
    signed = signer.sign_leaves(ts, number, leaves)
    return [
        '{"type":"signed","data":' + signed.envelope(i).decode() + "}" for i in range(len(leaves))
    ]


class Counted:
    """Wraps the service's refresh and its client's `price` and `feed` to count CPU and views
    read."""

    def __init__(self, service: SignedMarginService) -> None:
        self.refresh_ns = 0
        self.refreshes = 0
        self.reads = 0
        self.feed_ns = 0
        self.fed = 0
        client = service.client
        price: Callable[..., MarketView] = client.price
        feed: Callable[[bytes | str], SignedPrice] = client.feed
        refresh = service._refresh

        def counted_price(market: str, *, upto: Mapping[str, int] | None = None) -> MarketView:
            self.reads += 1
            return price(market, upto=upto)

        def counted_refresh() -> None:
            start = time.process_time_ns()
            refresh()
            self.refresh_ns += time.process_time_ns() - start
            self.refreshes += 1

        def counted_feed(data: bytes | str) -> SignedPrice:
            start = time.process_time_ns()
            try:
                return feed(data)
            finally:
                self.feed_ns += time.process_time_ns() - start
                self.fed += 1

        client.price = counted_price  # type: ignore[method-assign]
        client.feed = counted_feed  # type: ignore[method-assign]
        service._refresh = counted_refresh  # type: ignore[method-assign]

    def reset(self) -> None:
        self.refresh_ns = self.refreshes = self.reads = self.feed_ns = self.fed = 0


def run_case(n: int, k: int, rounds: int, order: str, accounts: int) -> dict[str, Any]:
    markets = market_names(n)
    keys = [SigningKey.from_hex("0x" + f"{0x41 + i:02x}" * 32) for i in range(k)]
    signers = [RoundSigner(key, "bench") for key in keys]
    engine = engine_for(markets, keys, accounts)
    assert engine.spec.signed is not None
    clock = [T0]
    urls = [f"ws://daemon-{i}.invalid/v1/stream" for i in range(k)]
    service = SignedMarginService(
        engine, urls, io.BytesIO(), engine.spec.signed, clock=lambda: clock[0]
    )
    counted = Counted(service)
    frames = {
        (r, d): signed_frames(signers[d], T0 + r * ROUND_MS, r, markets)
        for r in range(1, rounds + 1)
        for d in range(k)
    }

    def feed(r: int) -> None:
        if order == "bursts":
            for d in range(k):
                for text in frames[r, d]:
                    service._frame(text, urls[d])
        else:
            for i in range(n):
                for d in range(k):
                    service._frame(frames[r, d][i], urls[d])

    warm = 2  # the first rounds make the views and the engine's first decisions
    per_round: list[float] = []
    refresh_per: list[float] = []
    reads_per: list[float] = []
    feed_per: list[float] = []
    for r in range(1, rounds + 1):
        clock[0] = T0 + r * ROUND_MS
        counted.reset()
        start = time.process_time_ns()
        feed(r)
        spent = time.process_time_ns() - start
        if r > warm and counted.refreshes:
            per_round.append(spent / counted.refreshes)
            refresh_per.append(counted.refresh_ns / counted.refreshes)
            reads_per.append(counted.reads / counted.refreshes)
            feed_per.append(counted.feed_ns / counted.fed)
    live = sum(1 for m in markets if engine.book.latest.get(m) is not None)
    ticks: list[float] = []
    tick_reads: list[int] = []
    for _ in range(20):  # quiet ticks: nothing ages out within a round interval
        counted.reset()
        start = time.process_time_ns()
        service._decide()
        ticks.append(time.process_time_ns() - start)
        tick_reads.append(counted.reads)
    aged: list[float] = []
    aged_reads: list[int] = []
    for r in range(rounds + 1, rounds + 6):  # a round of every daemon, then all of it ages out
        clock[0] = max(clock[0], T0 + r * ROUND_MS)
        for d in range(k):
            for text in signed_frames(signers[d], clock[0], r, markets):
                service._frame(text, urls[d])
        clock[0] += AGE_MS + 1
        counted.reset()
        start = time.process_time_ns()
        service._decide()
        aged.append(time.process_time_ns() - start)
        aged_reads.append(counted.reads)
    return {
        "markets": n,
        "daemons": k,
        "order": order,
        "rounds": rounds,
        "live_markets": live,
        "round_completed_refresh_ms": statistics.median(refresh_per) / 1e6,
        "round_completed_reads": statistics.median(reads_per),
        "round_completed_total_ms": statistics.median(per_round) / 1e6,
        "feed_us": statistics.median(feed_per) / 1e3,
        "tick_ms": statistics.median(ticks) / 1e6,
        "tick_reads": statistics.median(tick_reads),
        "aged_tick_ms": statistics.median(aged) / 1e6,
        "aged_tick_reads": statistics.median(aged_reads),
    }


def client_memory(n: int, k: int, rounds: int, every: int) -> dict[str, Any]:
    """What an `OracleClient` keeps after each `every` rounds of `k` daemons' `n` markets: the
    growth of the process's RSS (one run) and of the traced Python heap (a second run under
    tracemalloc, whose own overhead would swell the RSS), each round's frames freed first."""
    rss = _fed(n, k, rounds, every, traced=False)
    heap = _fed(n, k, rounds, every, traced=True)
    points = [{"rounds": r, "rss_mb": rss[r], "heap_mb": heap[r]} for r in sorted(rss) if r in heap]
    return {"markets": n, "daemons": k, "rounds": rounds, "points": points}


def _fed(n: int, k: int, rounds: int, every: int, *, traced: bool) -> dict[int, float]:
    """Rounds fed -> MB grown since before the first frame (RSS, or the traced heap)."""
    markets = market_names(n)
    keys = [SigningKey.from_hex("0x" + f"{0x41 + i:02x}" * 32) for i in range(k)]
    signers = [RoundSigner(key, "bench") for key in keys]
    clock = [T0]
    client = OracleClient(
        {f"daemon-{i}": key.address for i, key in enumerate(keys)},
        deployment="bench",
        quorum=k // 2 + 1,
        now_ms=lambda: clock[0],
    )

    def now_mb() -> float:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] / 1e6 if traced else _rss_mb()

    if traced:
        tracemalloc.start()
    before = now_mb()
    out: dict[int, float] = {}
    for r in range(1, rounds + 1):
        clock[0] = T0 + r * ROUND_MS
        for d in range(k):
            for text in signed_frames(signers[d], clock[0], r, markets):
                client.feed(text)
        if r % every == 0 or r == rounds:
            out[r] = now_mb() - before
    if traced:
        tracemalloc.stop()
    assert client.accepted == n * k * rounds
    return out


def _rss_mb() -> float:
    """The process's resident set now (Linux), else its peak, MB."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1e6 if sys.platform == "darwin" else peak / 1e3


def memory_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'markets':>7} {'K':>2} {'rounds':>6} | {'RSS grown':>10} {'heap kept':>10}"]
    lines.append("-" * len(lines[0]))
    lines.extend(
        f"{r['markets']:>7} {r['daemons']:>2} {p['rounds']:>6} | "
        f"{p['rss_mb']:>7.1f} MB {p['heap_mb']:>7.1f} MB"
        for r in rows
        for p in r["points"]
    )
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'markets':>7} {'K':>2} {'order':>11} | {'refresh/round':>13} {'reads':>6} "
        f"{'all/round':>9} {'feed':>8} | {'tick':>8} {'reads':>5} | {'aged tick':>9} {'reads':>5}"
    )
    lines = [head, "-" * len(head)]
    lines.extend(
        f"{r['markets']:>7} {r['daemons']:>2} {r['order']:>11} | "
        f"{r['round_completed_refresh_ms']:>10.2f} ms {r['round_completed_reads']:>6.0f} "
        f"{r['round_completed_total_ms']:>6.1f} ms {r['feed_us']:>5.1f} µs | "
        f"{r['tick_ms']:>5.2f} ms "
        f"{r['tick_reads']:>5.0f} | {r['aged_tick_ms']:>6.2f} ms {r['aged_tick_reads']:>5.0f}"
        for r in rows
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", default="1000", help="comma-separated market counts")
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=12, help="rounds of every daemon")
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--orders", default=",".join(ORDERS))
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--memory", type=int, metavar="R", help="measure what the client keeps over R rounds"
    )
    parser.add_argument("--every", type=int, default=16, help="--memory: rounds between points")
    args = parser.parse_args()
    # The runs freeze every market at the end (`no_quorum`, a warning per market): not shown.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    if args.memory:
        rows = [
            client_memory(int(n), args.daemons, args.memory, args.every)
            for n in args.markets.split(",")
        ]
        print(memory_table(rows))
    else:
        rows = [
            run_case(int(n), args.daemons, args.rounds, order, args.accounts)
            for n in args.markets.split(",")
            for order in args.orders.split(",")
        ]
        print(table(rows))
    if args.json:
        out: dict[str, Any] = {
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "args": vars(args),
            "cases": rows,
        }
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
