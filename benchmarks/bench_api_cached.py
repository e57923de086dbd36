"""What a cached `GET /v1/prices` costs: one round's body served again from the API's cache.

Builds the core of `bench_round.py` (markets x sources) and its hub, serves the API as the
daemon does (AppRunner on a GuardedSite, loopback) and asks the same round, over one keep-alive
connection, for the whole array and for a selection of `MAX_LIST` markets, plain and gzipped.
The first request of each makes the body (and its gzip); the rest are served from the round's
cache. Prints the median and best microseconds per cached request of `--requests`, best of
`--repeat` runs:

    python benchmarks/bench_api_cached.py --markets 1000 --sources 5

See benchmarks/README.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from concurrent.futures import Future

import aiohttp
from aiohttp import web
from bench_round import warm_hub

from oracled.api import ApiContext, build_app
from oracled.api.limits import GuardedSite
from oracled.api.params import MAX_LIST
from oracled.clock import SystemClock


def _context(markets: int, sources: int) -> ApiContext:
    cfg, core, hub = warm_hub(markets, sources)
    clock = SystemClock()

    def no_manual(market: str, paused: bool, actor: str) -> Future[str | None] | None:
        return None

    return ApiContext(
        hub=hub,
        core=core,
        config=cfg,
        source_stats={},
        clock=clock,
        render_metrics=lambda: (b"", "text/plain"),
        on_manual=no_manual,
        version="bench",
        round_at=clock.monotonic,  # always a fresh round: never `stalled`
    )


async def _run(args: argparse.Namespace) -> dict[str, object]:
    ctx = _context(args.markets, args.sources)
    selection = ",".join(m.replace("/", "-") for m in ctx.hub.markets[:MAX_LIST])
    runner = web.AppRunner(build_app(ctx), handle_signals=False, access_log=None)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0)
    await site.start()
    out: dict[str, object] = {"markets": args.markets, "requests": args.requests}
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{site.port}/v1/prices"
            for name, url in (("all", base), ("selection", f"{base}?markets={selection}")):
                for coding in ("identity", "gzip"):
                    headers = {"Accept-Encoding": coding}
                    runs: list[list[float]] = []
                    for _ in range(args.repeat):
                        times = []
                        for _ in range(args.requests + 1):  # the first one fills the cache
                            t = time.perf_counter()
                            async with session.get(
                                url, headers=headers, auto_decompress=False
                            ) as resp:
                                await resp.read()
                            times.append(time.perf_counter() - t)
                        runs.append(times[1:])
                    best = min(runs, key=statistics.median)
                    out[f"{name}_{coding}_median_us"] = round(statistics.median(best) * 1e6, 1)
                    out[f"{name}_{coding}_best_us"] = round(min(best) * 1e6, 1)
    finally:
        await runner.cleanup()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markets", type=int, default=1000)
    parser.add_argument("--sources", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_run(args))))


if __name__ == "__main__":
    main()
