"""Time a Prometheus scrape of a large daemon, and what it does to the event loop.

Builds the core of `bench_round.py` (markets x sources, a quarter of the slots converted through
USDT/USD), fills it and runs rounds, gives every source its counters, latency histogram and drops,
then:

- times `Metrics.render()` (the whole exposition, as `GET /metrics` serves it), and the render
  followed by its gzip compression (what a scrape by Prometheus, which asks for gzip, costs the
  worker thread);
- runs an asyncio loop with a 1 ms ticker and measures the longest gap between its wake-ups, idle,
  while scrapes run the way the API runs them (render and gzip in `run_in_executor`, a worker
  thread), and while the same render runs inline on the loop (what the executor avoids).

The render holds the GIL, so a worker thread does not make it free for the loop: the interpreter
switches threads every `sys.getswitchinterval()` (5 ms by default), which bounds the stall instead
of letting one scrape block the loop for the whole render.

    python benchmarks/bench_scrape.py --markets 1000 --sources 10

See benchmarks/README.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass

from bench_round import ROUND_MS, START_MS, build_config, build_quotes
from prometheus_client.parser import text_string_to_metric_families

from oracled.api.encoding import gzip_bytes
from oracled.core import Core, RoundResult
from oracled.metrics import Metrics, MetricsInputs
from oracled.sources.stats import ConnState, SourceStats

TICK_S = 0.001


@dataclass(frozen=True)
class Result:
    """Figures of one case; times in milliseconds."""

    markets: int
    sources: int
    series: int
    bytes: int
    gzip_bytes: int
    render_median_ms: float
    render_p99_ms: float
    render_gzip_median_ms: float
    render_gzip_p99_ms: float
    idle_max_gap_ms: float
    executor_max_gap_ms: float
    executor_p99_gap_ms: float
    inline_max_gap_ms: float
    switch_interval_ms: float


def build(markets: int, sources: int) -> Metrics:
    """A core after a few rounds and sources with every counter family populated."""
    cfg = build_config(markets, sources)
    core = Core(cfg)
    for quote in build_quotes(cfg, START_MS, seed=1):
        core.ingest(quote)
    latest: list[RoundResult] = []
    now = START_MS
    for _ in range(6):
        now += ROUND_MS
        latest = [core.run_round(now)]
    stats = {sid: SourceStats(source=sid) for sid in cfg.sources}
    for n, st in enumerate(stats.values()):
        st.state = ConnState.STREAMING
        st.frames, st.quotes, st.malformed, st.reconnects = 10_000 + n, 9_000 + n, n, 1
        st.last_quote_ms = now
        st.dropped["out_of_order"] = n
        for latency in (3, 40, 120, 900, 20_000):
            st.observe_latency(latency)
    metrics = Metrics(
        MetricsInputs(
            core=core,
            latest=lambda: latest[0],
            source_stats=stats,
            now_ms=lambda: now,
            stream_subscribers=lambda: 3,
            stream_dropped=lambda: {"slow_consumer": 1, "shutdown": 0},
        )
    )
    metrics.round_duration.observe(0.002)
    metrics.round_lag.observe(0.001)
    for market in list(cfg.markets)[:10]:
        metrics.transitions.labels(market.symbol, "active").inc()
    return metrics


async def _max_gaps(duration_s: float, work: asyncio.Future[None] | None) -> list[float]:
    """Gaps (ms) between wake-ups of a 1 ms ticker until `work` is done or the time is up."""
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    last = loop.time()
    end = last + duration_s
    while (work is None and loop.time() < end) or (work is not None and not work.done()):
        await asyncio.sleep(TICK_S)
        now = loop.time()
        gaps.append((now - last) * 1000.0)
        last = now
    return gaps


async def _stalls(metrics: Metrics, scrapes: int) -> tuple[list[float], list[float], list[float]]:
    loop = asyncio.get_running_loop()
    idle = await _max_gaps(0.5, None)

    async def in_executor() -> None:
        for _ in range(scrapes):
            await loop.run_in_executor(None, _render_gzip, metrics)

    task = asyncio.ensure_future(in_executor())
    executor = await _max_gaps(0.0, task)
    await task

    async def inline() -> None:
        for _ in range(scrapes):
            metrics.render()
            await asyncio.sleep(0)

    task = asyncio.ensure_future(inline())
    blocked = await _max_gaps(0.0, task)
    await task
    return idle, executor, blocked


def _render_gzip(metrics: Metrics) -> bytes:
    """A scrape as Prometheus gets it: the render, then gzip, in one worker thread."""
    return gzip_bytes(metrics.render()[0])


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(0.99 * len(ordered)) - 1)]


def run_case(markets: int, sources: int, renders: int, scrapes: int) -> Result:
    metrics = build(markets, sources)
    body, _ = metrics.render()
    series = sum(len(f.samples) for f in text_string_to_metric_families(body.decode()))
    times, packed = [], []
    for _ in range(renders):
        start = time.perf_counter()
        metrics.render()
        times.append((time.perf_counter() - start) * 1000.0)
        start = time.perf_counter()
        _render_gzip(metrics)
        packed.append((time.perf_counter() - start) * 1000.0)
    idle, executor, inline = asyncio.run(_stalls(metrics, scrapes))
    return Result(
        markets=markets,
        sources=sources,
        series=series,
        bytes=len(body),
        gzip_bytes=len(gzip_bytes(body)),
        render_median_ms=statistics.median(times),
        render_p99_ms=_p99(times),
        render_gzip_median_ms=statistics.median(packed),
        render_gzip_p99_ms=_p99(packed),
        idle_max_gap_ms=max(idle),
        executor_max_gap_ms=max(executor),
        executor_p99_gap_ms=_p99(executor),
        inline_max_gap_ms=max(inline),
        switch_interval_ms=sys.getswitchinterval() * 1000.0,
    )


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", type=_ints, default=[1000])
    parser.add_argument("--sources", type=_ints, default=[10])
    parser.add_argument("--renders", type=int, default=30, help="timed renders per case")
    parser.add_argument("--scrapes", type=int, default=10, help="scrapes during the loop probe")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    results = [
        run_case(m, s, args.renders, args.scrapes) for m in args.markets for s in args.sources
    ]
    header = (
        f"{'markets':>7} {'sources':>7} {'series':>7} {'bytes':>9} {'gzipped':>8} "
        f"{'render p50':>11} {'render p99':>11} {'+gzip p50':>10} {'+gzip p99':>10} "
        f"{'idle gap':>9} {'exec gap':>9} {'exec p99':>9} {'inline gap':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.markets:>7} {r.sources:>7} {r.series:>7} {r.bytes:>9} {r.gzip_bytes:>8} "
            f"{r.render_median_ms:>9.1f}ms {r.render_p99_ms:>9.1f}ms "
            f"{r.render_gzip_median_ms:>8.1f}ms {r.render_gzip_p99_ms:>8.1f}ms "
            f"{r.idle_max_gap_ms:>7.1f}ms "
            f"{r.executor_max_gap_ms:>7.1f}ms {r.executor_p99_gap_ms:>7.1f}ms "
            f"{r.inline_max_gap_ms:>9.1f}ms"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "python": platform.python_version(),
                    "machine": platform.machine(),
                    "results": [asdict(r) for r in results],
                },
                fh,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
