"""Time the pure core: one round, quote ingestion and report materialization.

Builds a synthetic config (markets x sources, a quarter of the slots quoted in USDT and converted
through the USDT/USD market), fills the book with quotes of which some are stale, some are
outliers and some are missing, then times `Core.run_round` over many rounds. Nothing here touches
the network or the disk except the optional JSON output.

    python benchmarks/bench_round.py --markets 100,1000,5000 --sources 8,16 --rounds 200
    python benchmarks/bench_round.py --markets 1000 --sources 16 --perps 1000 --perp-venues 3
    python benchmarks/bench_round.py --markets 1000 --sources 16 --perps 1000 --moving

See benchmarks/README.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import msgspec
import numpy as np

from oracled.config import Config, parse_config
from oracled.core import Core
from oracled.model import Quote
from oracled.publish import Hub
from oracled.publish.encode import ReportEncoder

START_MS = 1_700_000_000_000
ROUND_MS = 250
# Long enough that the fresh quotes stay fresh for every timed round; stale ones are far older.
MAX_AGE_MS = 3_600_000
STALE_AGE_MS = 2 * MAX_AGE_MS
# Fresh but older than the markets' lag_ms (2 s by default): what `--old` stamps.
OLD_AGE_MS = 3_000
PERP_SOURCE = "perp"  # the perpetual venue of `build_config(perps=...)`; more are "perp2", ...


@dataclass(frozen=True)
class Result:
    """The figures of one (markets, sources) case; times in microseconds."""

    markets: int
    sources: int
    slots: int
    quotes: int
    rounds: int
    round_median_us: float
    round_p99_us: float
    ingest_per_quote_us: float
    reports_all_us: float
    encode_all_us: float
    direct_all_us: float
    live_markets: int
    perps: int = 0  # perpetual markets (markets 1 to `perps`), each with `perp_venues` venues
    perp_venues: int = 1
    moving: bool = False  # every quote replaced before each round (`moved`)


def build_config(markets: int, sources: int, perps: int = 0, perp_venues: int = 1) -> Config:
    """Market 0 is USDT/USD (direct USD quotes only); every fourth slot elsewhere quotes USDT.
    Markets 1 to `perps` are perpetual markets too: `perp_venues` perpetual venues each
    (`PERP_SOURCE` first)."""
    source_ids = [f"s{j:02d}" for j in range(sources)]
    perp_ids = [PERP_SOURCE, *(f"{PERP_SOURCE}{k}" for k in range(2, perp_venues + 1))]
    market_tables: list[dict[str, Any]] = [
        {
            "symbol": "USDT/USD",
            "price_exponent": -6,
            "min_sources": min(3, sources),
            "max_age_ms": MAX_AGE_MS,
            "sources": [{"source": s, "pair": "USDT/USD"} for s in source_ids],
        }
    ]
    for i in range(1, markets):
        base = f"C{i:05d}"
        market_tables.append(
            {
                "symbol": f"{base}/USD",
                "price_exponent": -4,
                "min_sources": min(3, sources),
                "max_age_ms": MAX_AGE_MS,
                "sources": [
                    {
                        "source": s,
                        "pair": f"{base}/USDT" if j % 4 == 3 else f"{base}/USD",
                        "weight": 1.0 + (j % 3) * 0.5,
                    }
                    for j, s in enumerate(source_ids)
                ],
            }
        )
        if i <= perps:
            market_tables[-1]["perp_sources"] = [
                {"source": p, "pair": f"{base}/USD"} for p in perp_ids
            ]
    venues = {s: {"type": "binance"} for s in source_ids}
    if perps:
        venues.update({p: {"type": "okx"} for p in perp_ids})
    return parse_config(
        {
            "sources": venues,
            "markets": market_tables,
            "routes": [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
        },
        env={},
    )


def build_quotes(cfg: Config, now_ms: int, seed: int, old: float = 0.0) -> list[Quote]:
    """One quote per slot except ~5 % missing; ~5 % stale by venue time, ~3 % outliers; of
    the rest, a share `old` older than the markets' `lag_ms` (judged against the young ones)."""
    rng = random.Random(seed)
    quotes: list[Quote] = []
    for i, market in enumerate(cfg.markets):
        fair = 1.0 if i == 0 else 10.0 + i
        # perpetuals trading a little above the spot price, a venue apart from the next
        for k, ps in enumerate(market.perp_sources):
            price = fair * (1.0005 + 0.0001 * k)
            quotes.append(
                Quote(
                    ps.source, ps.pair, now_ms, bid=price * 0.9999, ask=price * 1.0001, kind="perp"
                )
            )
        for ms in market.sources:
            roll = rng.random()
            if roll < 0.05:
                continue
            price = fair * (1.0 + rng.uniform(-0.001, 0.001))
            if roll < 0.08:
                price *= 1.5
            venue_ts = now_ms - STALE_AGE_MS if roll > 0.95 else now_ms - rng.randrange(0, 500)
            # `old and`: no draw without old quotes, so --old 0 gives the quotes of the script
            # before the option, and its figures compare with those runs
            if old and roll <= 0.95 and rng.random() < old:
                venue_ts = now_ms - OLD_AGE_MS
            bid, ask = price * 0.9999, price * 1.0001
            quotes.append(
                Quote(
                    source=ms.source,
                    pair=ms.pair,
                    recv_ts=now_ms,
                    bid=bid,
                    ask=ask,
                    venue_ts=venue_ts,
                )
            )
    rng.shuffle(quotes)
    return quotes


def warm_hub(markets: int, sources: int) -> tuple[Config, Core, Hub]:
    """A config and core past the resume streak (eight rounds on one set of `build_quotes`) and
    the hub that published those rounds: live markets with prices, as the API and the sinks
    serve them."""
    cfg = build_config(markets, sources)
    core = Core(cfg)
    for q in build_quotes(cfg, START_MS, seed=1):
        core.ingest(q)
    hub = Hub()
    for k in range(8):
        hub.publish(core.run_round(START_MS + k * ROUND_MS))
    return cfg, core, hub


def moved(quotes: list[Quote], k: int) -> list[Quote]:
    """`quotes` as the venues would send them again `k` rounds later: every stamp `k` rounds on
    (the same ages at round `k`), every price moved by a few millionths (a new value, so that no
    quote equals the one it replaces), each a new object."""
    shift = k * ROUND_MS
    factor = 1.0 + 1e-6 * (k % 7 + 1)
    return [
        msgspec.structs.replace(
            q,
            recv_ts=q.recv_ts + shift,
            venue_ts=None if q.venue_ts is None else q.venue_ts + shift,
            bid=None if q.bid is None else q.bid * factor,
            ask=None if q.ask is None else q.ask * factor,
        )
        for q in quotes
    ]


def _time_ns(fn: Callable[[], object]) -> int:
    start = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - start


def run_case(
    markets: int,
    sources: int,
    rounds: int,
    seed: int,
    old: float = 0.0,
    perps: int = 0,
    perp_venues: int = 1,
    moving: bool = False,
) -> Result:
    cfg = build_config(markets, sources, min(perps, markets - 1), perp_venues)
    core = Core(cfg)
    quotes = build_quotes(cfg, START_MS, seed, old)

    # Ingest: every quote once into a fresh book (a second pass would be refused as out of order).
    ingest_ns = _time_ns(lambda: [core.ingest(q) for q in quotes])

    # Warm up past the resume streak so that the timed rounds run the steady state. Every
    # round runs at the same time: the quotes keep their ages (young ones stay younger than
    # lag_ms), as the venues' streams keep them in the daemon. With `moving`, each round runs
    # a round interval after the last, every quote replaced before it (untimed) by `moved`:
    # the same ages, new objects and values, new venue times, as a busy stream gives them.
    now = START_MS
    k = 0

    def next_round() -> int:
        nonlocal k
        if not moving:
            return now
        k += 1
        for q in moved(quotes, k):
            core.ingest(q)
        return now + k * ROUND_MS

    for _ in range(5):
        core.run_round(next_round())

    round_ns: list[int] = []
    for _ in range(rounds):
        at = next_round()
        start = time.perf_counter_ns()
        result = core.run_round(at)
        round_ns.append(time.perf_counter_ns() - start)
    now = at if rounds else now

    reports_ns = min(_time_ns(result.reports) for _ in range(3))
    reports = result.reports()
    encoder = msgspec.json.Encoder()
    encode_ns = min(_time_ns(lambda: [encoder.encode(r) for r in reports]) for _ in range(3))
    # The hub's encoder over every market of a fresh round (a round's marks are made when first
    # read, so each timing needs a round of its own), its templates made by a first round.
    direct = ReportEncoder()
    every = list(range(markets))
    direct.encode(core.run_round(now), every)
    direct_ns = []
    for _ in range(9):
        fresh = core.run_round(now)
        direct_ns.append(_time_ns(partial(direct.encode, fresh, every)))

    ordered = sorted(round_ns)
    p99 = ordered[min(len(ordered) - 1, int(np.ceil(0.99 * len(ordered))) - 1)]
    return Result(
        markets=markets,
        sources=sources,
        slots=int(core.layout.configured.sum()),
        quotes=len(quotes),
        rounds=rounds,
        round_median_us=statistics.median(round_ns) / 1e3,
        round_p99_us=p99 / 1e3,
        ingest_per_quote_us=ingest_ns / len(quotes) / 1e3,
        reports_all_us=reports_ns / 1e3,
        encode_all_us=encode_ns / 1e3,
        direct_all_us=statistics.median(direct_ns) / 1e3,
        live_markets=int((result.status <= 1).sum()),
        perps=min(perps, markets - 1),
        perp_venues=perp_venues,
        moving=moving,
    )


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", type=_ints, default=[100, 1000, 5000])
    parser.add_argument("--sources", type=_ints, default=[8, 16])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--old",
        type=float,
        default=0.0,
        help="share of the fresh quotes older than lag_ms (on-chain feeds, quiet books)",
    )
    parser.add_argument(
        "--perps",
        type=int,
        default=0,
        help="markets 1 to N are perpetual markets too: the round runs the mark step",
    )
    parser.add_argument(
        "--perp-venues", type=int, default=1, help="perpetual venues of each perpetual market"
    )
    parser.add_argument(
        "--moving",
        action="store_true",
        help="rounds a round interval apart, every quote replaced by a newer one before each",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    results = [
        run_case(m, s, args.rounds, args.seed, args.old, args.perps, args.perp_venues, args.moving)
        for m in args.markets
        for s in args.sources
    ]
    header = (
        f"{'markets':>7} {'sources':>7} {'slots':>7} {'round p50':>10} {'round p99':>10} "
        f"{'ns/slot':>8} {'ingest/q':>9} {'reports':>10} {'encode':>10} {'direct':>10} "
        f"{'live':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        # ns/slot: how the round grows; flat when the cost is per slot, high when fixed costs
        # (one numpy call per step and layer) dominate small configs.
        print(
            f"{r.markets:>7} {r.sources:>7} {r.slots:>7} {r.round_median_us / 1e3:>8.3f}ms "
            f"{r.round_p99_us / 1e3:>8.3f}ms {r.round_median_us * 1e3 / r.slots:>8.0f} "
            f"{r.ingest_per_quote_us:>7.2f}us "
            f"{r.reports_all_us / 1e3:>8.2f}ms {r.encode_all_us / 1e3:>8.2f}ms "
            f"{r.direct_all_us / 1e3:>8.2f}ms {r.live_markets:>6}"
        )
    if args.perps:
        print(
            f"\nperpetual markets: 1 to {args.perps} (all but USDT/USD at most), "
            f"{args.perp_venues} venue(s) each"
        )
    budget = [r for r in results if (r.markets, r.sources) == (1000, 16)]
    if budget:
        b = budget[0]
        print(
            f"\nbudget: one round over 1,000 x 16 under 2 ms: "
            f"p50 {b.round_median_us / 1e3:.2f} ms, p99 {b.round_p99_us / 1e3:.2f} ms"
        )
    if args.json:
        doc = {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "machine": platform.machine(),
            "results": [asdict(r) for r in results],
        }
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
