"""How long a round's fan-out holds the event loop: the hub's report and signed fan-outs, and
the snapshot a subscription of every market starts with.

Publishes rounds of `bench_round.py`'s synthetic world (1,000 markets x 8 sources by default)
into a `Hub` with one stream subscriber of every market, and times each fan-out from
`Hub.publish` / `Hub.publish_signed` until the subscriber has the round: the wall clock, the
thread's CPU time, the turns of the event loop it took, and the longest gap between two
wake-ups of a task that sleeps 0 in a loop meanwhile (what a venue read or a round waits at
worst while the round is published; the turn that publishes counts too). Each round is signed
afresh outside the timing, so that no envelope is encoded ahead. A snapshot case subscribes
after the round instead, with nobody else subscribed (so that nothing of it is encoded ahead),
and times `Hub.change` from no market to every market until the snapshot is buffered. Each case
starts a fresh hub, so its first round also pays for the encoder's set-up (as at daemon start and
after a reload): that round's CPU and longest gap are shown apart too. Once the rounds are built,
what the process holds is frozen out of the collector (`gcpause.freeze`, as `oracled run` does),
so that a full collection does not fall in whichever case happens to cross its threshold.

    python benchmarks/bench_fanout.py --markets 1000 --rounds 40 [--json out.json]

See benchmarks/README.md ("The signed fan-out in slices", "Filtered subscribers and snapshots
in slices") for what the figures mean.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench_publish import KEY, rounds

from oracled.core import RoundResult
from oracled.gcpause import freeze
from oracled.publish import Hub, Subscription
from oracled.publish.signer import RoundSigner

# (name, signed, filtered, snapshot): the filter is a heartbeat alone, which lets every market
# through each round: the most a filtered subscriber can cost.
CASES = [
    ("reports, unfiltered", False, False, False),
    ("reports, filtered (heartbeat)", False, True, False),
    ("signed, unfiltered", True, False, False),
    ("signed, filtered (heartbeat)", True, True, False),
    ("snapshot, reports", False, False, True),
    ("snapshot, signed", True, False, True),
]


async def one_case(
    results: list[RoundResult], signed: bool, filtered: bool, snapshot: bool
) -> dict[str, Any]:
    hub = Hub(queue_size=4 * len(results[0].layout.markets))
    hub.signer = KEY.address
    signer = RoundSigner(KEY, "bench")
    sub = hub.subscribe(frozenset() if snapshot else None)
    hub.configure(sub, signed=signed, heartbeat_ms=1 if filtered else None, snapshot=False)
    wall, cpu, gaps, turns = [], [], [], []
    for result in results:
        hub.publish(result)
        go: Callable[[], None] = lambda: None  # noqa: E731 - publish() above scheduled it
        if signed:
            ready = signer.sign(result)
            await settle(sub)  # the report fan-out (nothing for a signed subscriber) runs first
            go = partial(hub.publish_signed, ready)
        if snapshot:  # no market subscribed: nothing of the round is encoded until `change`
            go()
            await settle(sub)
            go = lambda: hub.change(sub, None)  # noqa: E731
        c0, w0 = time.thread_time(), time.perf_counter()
        go()
        # The turn that published (a snapshot encoded at once holds the loop in it).
        last = time.perf_counter()
        gap, n = last - w0, 0
        while sub.pending == 0:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gap, last, n = max(gap, now - last), now, n + 1
        wall.append(time.perf_counter() - w0)
        cpu.append(time.thread_time() - c0)
        gaps.append(gap)
        turns.append(n)
        while sub.get_nowait() is not None:
            pass
        if snapshot:
            hub.change(sub, frozenset())
    return {
        "wall": summary(wall),
        "cpu": summary(cpu),
        "longest_gap": summary(gaps),
        "turns": statistics.median(turns),
        # The first round pays for a fresh encoder's set-up (as at start and after a reload).
        "first_round": {"cpu_ms": round(cpu[0] * 1000, 2), "gap_ms": round(gaps[0] * 1000, 2)},
    }


async def settle(sub: Subscription) -> None:
    for _ in range(3):
        await asyncio.sleep(0)
    while sub.get_nowait() is not None:
        pass


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", type=int, default=1000)
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = rounds(args.markets, args.sources, args.rounds)
    # As `oracled run` does once it is up: what start-up made is frozen out of the collector's
    # full passes, which would otherwise fall in whichever case allocates past their threshold.
    freeze()
    out: dict[str, Any] = {"markets": args.markets, "python": platform.python_version()}
    print(
        f"{'case':<32} {'wall p50/max':>14} {'CPU p50/max':>14} {'gap p50/max':>14} turns"
        f" {'1st round CPU/gap':>18}"
    )
    for name, signed, filtered, snapshot in CASES:
        row = out[name] = asyncio.run(one_case(results, signed, filtered, snapshot))
        cells = [f"{row[k]['p50_ms']:.2f}/{row[k]['max_ms']:.2f}" for k in ("wall", "cpu")]
        cells.append(f"{row['longest_gap']['p50_ms']:.2f}/{row['longest_gap']['max_ms']:.2f}")
        cells.append(f"{row['first_round']['cpu_ms']:.2f}/{row['first_round']['gap_ms']:.2f}")
        print(f"{name:<32} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14} {row['turns']:>5}", end="")
        print(f" {cells[3]:>18}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
