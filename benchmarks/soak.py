"""Soak: the daemon against every simulated venue for a long time, with faults on a schedule.

The daemon runs as `oracled run` in a subprocess, on the shipped `config/default.toml` with every
source pointed at its loopback simulator (timings shortened so that a fault shows within seconds)
and the audit trail on. This process runs the simulators, a stream subscriber that checks every
published report, and a fault script that cycles through spikes, stalls, disconnects, garbage,
bursts of duplicates, REST failures, a quorum loss, a silent majority (a weight majority of one
market's venues silent behind open sockets while that market moves) and silent perpetuals (two of
one market's three perpetual venues silent the same way while it moves), waiting after each for
every market and source to be live again. At the end of each cycle it samples the daemon's resident
memory, file descriptors, sockets and asyncio tasks. The first cycle is the warm-up; later samples
are compared with the sample at its end.

    python benchmarks/soak.py --duration 3600 --json soak.json

What is checked (see benchmarks/README.md, "soak.py"): no bad price (a live report's price within
the simulators' true price band, a paused or unknown report's price null; during a silent majority,
within the market's max_deviation of the venues still quoting), no bad mark (a live report's mark
within the band of the honest perpetual mids and the index, a paused or unknown one's null; during
silent perpetuals, within the market's max_deviation of the contract quoting and the index, the
silent ones not counted once the index has left them), every fault recovered, resident memory
within a few percent of the warm-up, no growth of tasks, descriptors or sockets, no source task
crashed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w

from oracled.aggregate.book import Layout
from oracled.config import Config, MarketSource, load_config
from oracled.model import Kind
from oracled.sim.paths import PricePath
from oracled.sim.venues import SIMULATORS, SimulatedVenue, simulate

__all__ = [
    "FAULTS",
    "LagWatch",
    "PerpWatch",
    "SoakOptions",
    "SoakResult",
    "main",
    "run_soak",
    "silent_majority",
    "silent_majority_markets",
    "silent_perps_markets",
    "soak_config",
]

ROOT = Path(__file__).resolve().parents[1]
STABLE = frozenset({"USD", "USDT", "USDC"})
#: The fault script, in cycle order. A cycle ends with the faults that use no REST, so that
#: the client's idle keep-alive connections to the venues have closed when it is sampled.
FAULTS = (
    "rest_fail",
    "disconnect",
    "stall",
    "quorum_loss",
    "silent_majority",
    "silent_perps",
    "spike",
    "burst_replay",
    "garbage",
)
#: During a silent majority, a live price is compared with what the venues still quoting printed
#: from this long before its round to `LAG_AHEAD_MS` after: a quote is up to a tick old (250 ms at
#: 4 Hz) when the round takes it, and the truth is sampled every 100 ms, so the mid a venue
#: printed just before a round may first be seen in a sample after it.
LAG_LOOKBACK_MS = 500
LAG_AHEAD_MS = 250
#: The true bands of a round reach this far past it (`Truth.band`): a print seen in a round may
#: have been sampled just after it.
TRUTH_AHEAD_MS = 1_000
_STATE_LINE = re.compile(r'^oracled_source_state\{source="([^"]+)",state="([^"]+)"\} (\S+)$')
_VALUE_LINE = re.compile(
    r"^(oracled_asyncio_tasks|oracled_source_restarts_total)(?:\{[^}]*\})? (\S+)$"
)
_MALFORMED_LINE = re.compile(r'^oracled_source_malformed_frames_total\{source="([^"]+)"\} (\S+)$')


@dataclass(frozen=True, slots=True)
class SoakOptions:
    """One soak run. `cycles` bounds the run by fault cycles, `duration_s` by time (both: first)."""

    duration_s: float = 3600.0
    cycles: int | None = None
    window_s: float = 8.0  # how long each fault lasts
    quorum_window_s: float = 8.0  # the quorum loss lasts at least max_age + liveness to show
    recovery_limit_s: float = 60.0  # a fault not recovered within this counts as unrecovered
    settle_s: float = 20.0  # calm before the end-of-cycle sample (idle keep-alives expire: 15 s)
    warmup_cycles: int = 1
    seed: int = 1
    rate_hz: float = 4.0
    max_age_ms: int = 2500
    lag_ms: int | None = 1000  # every market's lag_ms (None: the config's own)
    # The silent majority's market keeps its quotes fresh this long, so that the silent venues'
    # quotes are still young when they lag: with 2.5 s they would age out as they start to lag.
    lag_max_age_ms: int = 10_000
    lag_market: str | None = None  # None: drawn by the seed from `silent_majority_markets`
    lag_quiet_s: float = 1.5  # its majority silent this long before it moves (above lag_ms)
    lag_move: float = 0.03  # the market moves this fraction while its majority is silent...
    lag_ramp_s: float = 2.0  # ...over this long (slow enough that the quoting venues agree)
    lag_hold_s: float = 1.0  # and stays there this long before the venues quote again
    # Silent perpetuals: their market (None: drawn by the seed from `silent_perps_markets`; it
    # keeps `lag_max_age_ms` too) moves as the silent majority's does. A live mark may stray this
    # much beyond the market's max_deviation from the quoting contract and the index (`PerpWatch`)
    perp_market: str | None = None
    perp_slack: float = 0.0025
    audit: bool = True
    band_tolerance: float = 0.005  # a live price may be this fraction outside the true band
    # and a live mark this fraction outside the honest perpetual mids and the index (`judge_mark`)
    mark_tolerance: float = 0.0025
    rss_growth_limit: float = 0.05
    task_slack: int = 2
    fd_slack: int = 4
    keep_logs: Path | None = None  # copy the daemon's log here at the end


@dataclass(slots=True)
class Sample:
    """The daemon's resources at one moment."""

    t_s: float
    cycle: int
    rss_kb: int
    fds: int
    sockets: int
    tasks: int


@dataclass(slots=True)
class FaultRecord:
    cycle: int
    fault: str
    target: str
    started_s: float
    window_s: float
    recovered_s: float | None  # seconds from the fault's end until everything was live again
    effect_seen: bool  # the daemon showed the fault (an exclusion, a pause, malformed frames...)


@dataclass(slots=True)
class ReportCheck:
    """What the stream subscriber saw."""

    reports: int = 0
    live: int = 0
    not_live: int = 0
    unbanded: int = 0  # live reports with no truth sample to compare with (the first second)
    bad: int = 0
    examples: list[str] = field(default_factory=list)
    by_status: dict[str, int] = field(default_factory=dict)
    outliers_seen: set[tuple[str, str]] = field(default_factory=set)  # (market, source)
    lag_live: int = 0  # live reports of a silent majority's market checked against its quoting
    lag_max_error: float = 0.0  # venues, and the furthest one of them was from their band
    marks: int = 0  # live marks checked against the honest perpetual mids and the index,
    mark_max_error: float = 0.0  # and the furthest one of them was from that band
    bad_marks: int = 0  # of `bad`, the reports whose mark was wrong
    perp_lag_live: int = 0  # live marks of silent perpetuals' market checked against the
    perp_lag_max_error: float = 0.0  # contract still quoting and the index, and the furthest

    def violation(self, text: str, *, mark: bool = False) -> None:
        self.bad += 1
        self.bad_marks += mark
        if len(self.examples) < 20:
            self.examples.append(text)


@dataclass(slots=True)
class SoakResult:
    options: dict[str, Any]
    markets: int
    sources: int
    elapsed_s: float
    cycles: int
    faults: list[FaultRecord]
    samples: list[Sample]
    reports: ReportCheck
    source_restarts: int
    daemon_exit: int | None
    problems: list[str]
    figures: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        reports = asdict(self.reports)
        reports["outliers_seen"] = sorted("|".join(p) for p in self.reports.outliers_seen)
        return {
            "options": self.options,
            "markets": self.markets,
            "sources": self.sources,
            "elapsed_s": round(self.elapsed_s, 1),
            "cycles": self.cycles,
            "figures": self.figures,
            "problems": self.problems,
            "reports": reports,
            "source_restarts": self.source_restarts,
            "daemon_exit": self.daemon_exit,
            "faults": [asdict(f) for f in self.faults],
            "samples": [asdict(s) for s in self.samples],
        }

    def table(self) -> str:
        f = self.figures
        rows = [
            ("markets x sources", f"{self.markets} x {self.sources}"),
            ("elapsed", f"{self.elapsed_s / 60:.1f} min, {self.cycles} cycles"),
            ("faults injected", f"{len(self.faults)}"),
            ("faults recovered", f"{f['faults_recovered']:.0f} / {len(self.faults)}"),
            ("recovery p50 / max", f"{f['recovery_p50_s']:.1f} s / {f['recovery_max_s']:.1f} s"),
            ("reports checked", f"{self.reports.reports} ({self.reports.live} live)"),
            ("not live, price null", f"{self.reports.not_live}"),
            ("bad prices", f"{self.reports.bad - self.reports.bad_marks}"),
            ("marks checked, worst", f"{self.reports.marks} live, "
             f"{100 * self.reports.mark_max_error:.2f} % from the perpetuals and the index"),
            ("bad marks", f"{self.reports.bad_marks}"),
            ("silent perpetuals: live, worst", f"{self.reports.perp_lag_live} marks, "
             f"{100 * self.reports.perp_lag_max_error:.2f} % from the contract quoting"),
            ("silent majority: live, worst", f"{self.reports.lag_live} reports, "
             f"{100 * self.reports.lag_max_error:.2f} % from the venues quoting"),
            ("RSS warm-up -> end", f"{f['rss_base_mb']:.1f} -> {f['rss_end_mb']:.1f} MB "
             f"({f['rss_growth_pct']:+.2f} %)"),
            ("RSS slope after warm-up", f"{f['rss_mb_per_hour']:+.2f} MB/h"),
            ("tasks warm-up -> end", f"{f['tasks_base']:.0f} -> {f['tasks_end']:.0f}"),
            ("fds warm-up -> end", f"{f['fds_base']:.0f} -> {f['fds_end']:.0f}"),
            ("sockets warm-up -> end", f"{f['sockets_base']:.0f} -> {f['sockets_end']:.0f}"),
            ("source task restarts", f"{self.source_restarts}"),
            ("verdict", "ok" if not self.problems else "; ".join(self.problems)),
        ]  # fmt: skip
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# -- the world ---------------------------------------------------------------------------------


def soak_config(
    base: Config,
    *,
    max_age_ms: int,
    audit_path: Path | None,
    lag_ms: int | None = None,
    lag_market: str | None = None,
    lag_max_age_ms: int = 10_000,
    perp_market: str | None = None,
) -> Config:
    """The shipped config with every market's `max_age_ms` shortened (but `lag_market`'s and
    `perp_market`'s, set to `lag_max_age_ms`), its `lag_ms` set (None: kept), and the audit
    trail set."""
    data = base.model_dump(by_alias=True, exclude={"admin_token"})
    long = {lag_market, perp_market}
    for market in data["markets"]:
        market["max_age_ms"] = lag_max_age_ms if market["symbol"] in long else max_age_ms
        if lag_ms is not None:
            market["lag_ms"] = lag_ms
    data["api"]["admin_token_env"] = "ORACLED_SOAK_ADMIN_TOKEN"
    data["log"]["format"] = "json"
    if audit_path is None:
        data["audit"]["enabled"] = False  # the shipped config turns it on, in the working dir
    else:
        data["audit"].update(
            enabled=True, path=str(audit_path), max_bytes=64 * 1024**2, retention_days=1.0
        )
    return Config.model_validate(data)


def _toml(cfg: Config) -> str:
    return tomli_w.dumps(cfg.model_dump(by_alias=True, exclude={"admin_token"}, exclude_none=True))


def _sim_key(venue: SimulatedVenue, pair: str, kind: Kind = "spot") -> str | None:
    """The simulator's own name of a pair's path (some simulators name their paths by pair)."""
    key = venue.keys.get((pair, kind))
    if key is None:
        return None
    return key if key in venue.sim.paths else pair if pair in venue.sim.paths else None


def _slot_path(venue: SimulatedVenue | None, pair: str, kind: Kind) -> PricePath | None:
    """The path a venue walks for one of its pairs, None for a source without a simulator."""
    key = None if venue is None else _sim_key(venue, pair, kind)
    return None if venue is None or key is None else venue.sim.paths[key]


def _majority(weights: dict[str, float], order: Sequence[str]) -> list[str]:
    """The fewest sources, heaviest first (ties in `order`), that hold more than half the weight."""
    total, held, chosen = sum(weights.values()), 0.0, []
    for sid in sorted(order, key=lambda s: -weights[s]):  # stable: ties keep `order`
        if held > total / 2:
            break
        chosen.append(sid)
        held += weights[sid]
    return chosen


def _simulated_sources(cfg: Config, symbol: str) -> dict[str, float]:
    """The voting sources of a market that run on a simulator, with their weights."""
    market = cfg.market(symbol)
    assert market is not None
    return {
        ms.source: ms.weight
        for ms in market.sources
        if cfg.sources[ms.source].enabled and cfg.sources[ms.source].type in SIMULATORS
    }


def _legs(cfg: Config, symbol: str) -> dict[str, str | None]:
    """Each source of a market with the conversion leg it quotes through (None: direct)."""
    layout = Layout.from_config(cfg)
    market = cfg.market(symbol)
    assert market is not None
    row = layout.slot_via[layout.markets.index(symbol)]
    return {ms.source: via for ms, via in zip(market.sources, row, strict=False)}


def _judged(
    weights: dict[str, float], silent: Sequence[str], legs: dict[str, str | None], quorum: int
) -> bool:
    """Whether the venues left quoting make the market's quorum (two at least) and the lag
    rule can make every silent venue's quote stale: each is judged by the direct venues left
    quoting and, routed, those through its own leg; two of them are needed (docs/pricing.md
    section 2)."""
    left = weights.keys() - set(silent)

    def judges(venue: str) -> int:
        return sum(legs[v] is None or legs[v] == legs[venue] for v in left)

    return len(left) >= max(quorum, 2) and all(judges(v) >= 2 for v in silent)


def silent_majority(
    cfg: Config, symbol: str, rng: random.Random
) -> tuple[dict[str, float], list[str]]:
    """The simulated voting sources of a market with their weights, and a weight majority of
    them drawn to fall silent, among those the lag rule judges (`_judged`): where the venues
    left quoting are all routed but one, silent direct venues vote until their quotes age out
    (docs/pricing.md section 2), and the check would take that price for the rule failing.
    Drawn among the orders of equal weights; the routed venues silenced first when a hundred
    draws found none (`silent_majority_markets` lists only markets where that one is)."""
    market = cfg.market(symbol)
    assert market is not None
    weights = _simulated_sources(cfg, symbol)
    legs = _legs(cfg, symbol)
    for _ in range(100):
        silent = _majority(weights, rng.sample(list(weights), len(weights)))
        if _judged(weights, silent, legs, market.min_sources):
            return weights, silent
    return weights, _majority(weights, sorted(weights, key=lambda s: legs[s] is None))


def silent_majority_markets(cfg: Config) -> list[str]:
    """The markets a silent majority can be played on: not a stablecoin, and the venues left
    quoting when a weight majority is silent are a quorum of their own (`min_sources`, two at
    least), so that the market stays live and its prices can be held to theirs. With fewer,
    the market pauses short of its quorum once the silent quotes lag (docs/pricing.md section
    2), which has no price to check: BTC/USD's five silent venues of nine are such a case.
    Two of them direct where direct ones are silent, with the routed venues silenced first
    (`silent_majority`)."""
    found = []
    for market in cfg.markets:
        if market.symbol.split("/")[0] in STABLE:
            continue
        weights = _simulated_sources(cfg, market.symbol)
        legs = _legs(cfg, market.symbol)
        silent = _majority(weights, sorted(weights, key=lambda s: legs[s] is None))
        if _judged(weights, silent, legs, market.min_sources):
            found.append(market.symbol)
    return found


#: Silent perpetuals mute this many of a market's perpetual venues, one fewer than it lists.
SILENT_PERPS = 2


def _simulated_perps(cfg: Config, symbol: str) -> list[str]:
    """The perpetual venues of a market that run on a simulator."""
    market = cfg.market(symbol)
    assert market is not None
    return [
        ps.source
        for ps in market.perp_sources
        if cfg.sources[ps.source].enabled and cfg.sources[ps.source].type in SIMULATORS
    ]


def silent_perps_markets(cfg: Config) -> list[str]:
    """The markets silent perpetuals can be played on: not a stablecoin, three perpetual venues
    listed and simulated, so that two fall silent and one keeps quoting (the shipped config:
    every perpetual market but SHIB/USD, which lists one; with `min_perp_sources = 2` the mark
    falls back once the silent two are left behind)."""
    return [
        m.symbol
        for m in cfg.markets
        if m.symbol.split("/")[0] not in STABLE
        and len(m.perp_sources) == SILENT_PERPS + 1
        and len(_simulated_perps(cfg, m.symbol)) == SILENT_PERPS + 1
    ]


class Truth:
    """The band every venue's honest mid spans, per market, over the last half minute, and the
    band its perpetual venues' honest mids span (`perps`).

    The simulated venues of one asset walk one common path (each with a small basis), perpetual
    contracts too; stablecoins are held at 1.0, so a pair quoted in USDT or USDC has the same
    truth as its USD pair. A spike changes what one venue prints, never its mid, so the band is
    what an honest oracle can print.
    """

    def __init__(self, cfg: Config, venues: Sequence[SimulatedVenue]) -> None:
        by_id = {v.source: v for v in venues}
        self.paths: dict[str, list[PricePath]] = {}
        self.perp_paths: dict[str, list[PricePath]] = {}
        self.max_age_ms = {m.symbol: m.max_age_ms for m in cfg.markets}
        for market in cfg.markets:
            kinds = ((market.sources, self.paths), (market.perp_sources, self.perp_paths))
            for slots, found in kinds:
                paths = [
                    path
                    for ms in slots
                    if ms.pair.split("/")[1] in STABLE
                    and (path := _slot_path(by_id.get(ms.source), ms.pair, ms.kind)) is not None
                ]
                if paths:
                    found[market.symbol] = paths
        Snap = dict[str, tuple[float, float]]
        self.history: deque[tuple[int, Snap, Snap]] = deque()

    def sample(self) -> None:
        now_ms = int(time.time() * 1000)
        spot, perps = (
            {m: (min(p.mid for p in ps), max(p.mid for p in ps)) for m, ps in paths.items()}
            for paths in (self.paths, self.perp_paths)
        )
        self.history.append((now_ms, spot, perps))
        while self.history and self.history[0][0] < now_ms - 30_000:
            self.history.popleft()

    def band(self, market: str, ts: int, *, perps: bool = False) -> tuple[float, float] | None:
        """(low, high) of the market's honest mids (`perps`: its perpetual venues') from
        `max_age_ms` before `ts` to just after: a quote, spot or perpetual, counts until then."""
        start, end = ts - self.max_age_ms.get(market, 0) - 1_000, ts + TRUTH_AHEAD_MS
        lo, hi = math.inf, -math.inf
        for at, spot, perp in self.history:
            snap = perp if perps else spot
            if start <= at <= end and market in snap:
                low, high = snap[market]
                lo, hi = min(lo, low), max(hi, high)
        return None if lo is math.inf else (lo, hi)

    @property
    def latest_ms(self) -> int:
        """When the latest sample was taken (0 before the first)."""
        return self.history[-1][0] if self.history else 0


@dataclass(slots=True)
class LagWatch:
    """One silent majority as the subscriber checks it: from `start_ms` (the silence) to `end_ms`
    (the venues quote again), every live report of `market` carries a price within `tolerance`
    of what the venues still quoting printed around its round (`band`), and the fault took
    effect once a live report had every silent venue `stale` while younger than its age limit
    (outvoted by the others, not aged out)."""

    market: str
    silent: tuple[str, ...]
    quoting: tuple[PricePath, ...]  # the quoting venues' paths of the market's pairs
    max_age_ms: int
    tolerance: float  # the market's max_deviation plus the soak's band tolerance
    start_ms: int
    end_ms: int | None = None
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (ms, low, high)
    outvoted: bool = False
    back: set[str] = field(default_factory=set)  # silent venues used again after the end

    def sample(self, now_ms: int) -> None:
        if self.end_ms is None:
            mids = [p.mid for p in self.quoting]
            self.history.append((now_ms, min(mids), max(mids)))

    def band(self, ts: int) -> tuple[float, float] | None:
        """(low, high) of the quoting venues' mids around `ts` (`quoting_band`)."""
        return quoting_band(self.history, ts)

    def inspect(self, report: dict[str, Any], check: ReportCheck) -> None:
        if report["market"] != self.market or report["ts"] < self.start_ms:
            return
        sources = {s["id"]: s for s in report.get("sources", ())}
        if self.end_ms is not None and report["ts"] > self.end_ms:
            self.back.update(s for s in self.silent if sources.get(s, {}).get("used"))
            return
        price = report["price"]
        if report["status"] not in ("active", "degraded") or price is None:
            return  # a paused market is right; a live one without a price, the main check's
        if all(
            sources.get(s, {}).get("reason") == "stale"
            and (sources[s].get("age_ms") or 0) < self.max_age_ms
            for s in self.silent
        ):
            self.outvoted = True
        band = self.band(report["ts"])
        if band is None:
            return
        check.lag_live += 1
        lo, hi = band
        value = float(price)
        error = outside(value, lo, hi)  # as far as the check measures
        check.lag_max_error = max(check.lag_max_error, error)
        if not lo * (1 - self.tolerance) <= value <= hi * (1 + self.tolerance):
            check.violation(
                f"{self.market} {report['status']} at {report['ts']} with "
                f"{','.join(self.silent)} silent: {price} outside the venues still quoting, "
                f"[{lo:.8g}, {hi:.8g}] +- {100 * self.tolerance:.2f} %"
            )


@dataclass(slots=True)
class PerpWatch:
    """Silent perpetuals as the subscriber checks them: from `start_ms` (the silence) to `end_ms`
    (the contracts quote again), every live mark of `market` lies within `tolerance` of the band
    the contracts still quoting printed around its round (`band`) and the index; and once the
    index has moved more than `tolerance` from its level at the silence (past the rule's
    `max_deviation`), no silent contract counts: `perps_used` is at most the quoting ones. The
    fault took effect once the daemon listed every silent contract `stale` while younger than its
    age limit (left behind, not aged out; `Soak.probe_perps` reads it)."""

    market: str
    silent: tuple[str, ...]  # the perpetual venues muted
    quoting: tuple[PricePath, ...]  # the paths of the market's contracts still quoting
    max_age_ms: int
    lag_ms: int
    tolerance: float  # the market's max_deviation plus the soak's perp slack
    start_ms: int
    end_ms: int | None = None
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (ms, low, high)
    level: float | None = None  # the index of the market's first live report in the silence
    left_behind: bool = False
    back: bool = False  # every contract used again after the end

    def sample(self, now_ms: int) -> None:
        if self.end_ms is None:
            mids = [p.mid for p in self.quoting]
            self.history.append((now_ms, min(mids), max(mids)))

    def inspect(self, report: dict[str, Any], check: ReportCheck) -> None:
        if report["market"] != self.market or report["ts"] < self.start_ms:
            return
        mark, ts = report.get("mark") or {}, report["ts"]
        used = mark.get("perps_used", 0)
        if self.end_ms is not None and ts > self.end_ms:
            self.back = self.back or used == len(self.silent) + len(self.quoting)
            return
        price, value = report["price"], mark.get("price")
        if report["status"] not in ("active", "degraded") or price is None or value is None:
            return  # the main checks'
        x = float(price)
        if self.level is None:
            self.level = x
        silent = ",".join(self.silent)
        moved = abs(x / self.level - 1)
        if ts - self.start_ms > self.lag_ms and moved > self.tolerance and used > len(self.quoting):
            check.violation(
                f"{self.market} at {ts} with {silent} silent: {used} perpetuals used, the index "
                f"{100 * moved:.2f} % from {self.level:.8g}",
                mark=True,
            )
        band = quoting_band(self.history, ts)
        if band is None:
            return
        check.perp_lag_live += 1
        lo, hi = min(band[0], x), max(band[1], x)
        error = outside(float(value), lo, hi)
        check.perp_lag_max_error = max(check.perp_lag_max_error, error)
        if error > self.tolerance:
            check.violation(
                f"{self.market} at {ts} with {silent} silent: mark {value} outside the "
                f"contracts quoting and the index, [{lo:.8g}, {hi:.8g}] +- "
                f"{100 * self.tolerance:.2f} %",
                mark=True,
            )


def quoting_band(
    history: Sequence[tuple[int, float, float]], ts: int
) -> tuple[float, float] | None:
    """(low, high) of the quoting venues' mids sampled from `LAG_LOOKBACK_MS` before `ts` to
    `LAG_AHEAD_MS` after, or None without a sample there."""
    inside = [(lo, hi) for at, lo, hi in history
              if ts - LAG_LOOKBACK_MS <= at <= ts + LAG_AHEAD_MS]  # fmt: skip
    if not inside:
        return None
    return min(lo for lo, _ in inside), max(hi for _, hi in inside)


def hold_stablecoins(venues: Sequence[SimulatedVenue]) -> None:
    """Stablecoin paths keep their basis but stop walking: a USDT that drifts by a percent over
    an hour of soak would make every USDT-quoted source an outlier against the USD-quoted ones."""
    for venue in venues:
        for (pair, _), key in venue.keys.items():
            if pair.split("/")[0] in STABLE:
                path = venue.sim.paths.get(key) or venue.sim.paths.get(pair)
                if path is not None:
                    path.volatility = 0.0


# -- the daemon --------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port for the daemon, kept from other programs' port-0 binds until the daemon
    binds it (the tests' helper: the short soak runs beside other tests that start servers)."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    from ports import free_port as held

    return held()


class DaemonProcess:
    """`oracled run` as a subprocess on loopback, its log in a file."""

    def __init__(self, config_text: str, workdir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "oracled.toml"
        self.config.write_text(config_text)
        self.log_path = workdir / "oracled.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "oracled.cli", "run", "--config", str(self.config.resolve()),
                 "--listen", f"127.0.0.1:{self.port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.config.parent,  # relative paths of the config land in the work dir
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit code, or None if it had to be killed."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def proc_resources(pid: int) -> tuple[int, int, int]:
    """(resident kB, open descriptors, of which sockets) of a Linux process."""
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        fds += 1
        with contextlib.suppress(OSError):
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return rss, fds, sockets


# -- the harness -------------------------------------------------------------------------------


class Soak:
    def __init__(
        self,
        opts: SoakOptions,
        cfg: Config,
        venues: list[SimulatedVenue],
        daemon: DaemonProcess,
        session: aiohttp.ClientSession,
        log: Callable[[str], None],
        lag_market: str | None = None,
        perp_market: str | None = None,
    ) -> None:
        self.opts = opts
        self.cfg = cfg
        self.venues = venues
        self.daemon = daemon
        self.session = session
        self.log = log
        self.rng = random.Random(opts.seed)
        self.truth = Truth(cfg, venues)
        self.check = ReportCheck()
        self.markets = [m.symbol for m in cfg.markets]
        self.quoting = [v for v in venues if any(kind == "spot" for _, kind in v.keys)]
        self.baseline_live: set[str] = set()
        self.baseline_streaming: set[str] = set()
        self.faults: list[FaultRecord] = []
        self.samples: list[Sample] = []
        self.t0 = time.monotonic()
        self._paused_seen = 0
        self.malformed: dict[str, int] = {}  # per source, as of the latest scrape
        # The silent majority: its market (None: the config has none, the fault is left out),
        # its own draws (the other faults draw as before), the one in progress or last ended,
        # and the market's level at the first one (each move heads back towards it).
        self.lag_market = lag_market
        self.lag_rng = random.Random(f"{opts.seed}:silent_majority")
        self.watch: LagWatch | None = None
        self._levels: dict[str, float] = {}
        # Silent perpetuals, alike: their market (None: left out), draws, the one in progress.
        self.perp_market = perp_market
        self.perp_rng = random.Random(f"{opts.seed}:silent_perps")
        self.perp_watch: PerpWatch | None = None
        drawn = {"silent_majority": lag_market, "silent_perps": perp_market}
        self.fault_names = tuple(f for f in FAULTS if f not in drawn or drawn[f])
        self.marks_due: deque[dict[str, Any]] = deque()  # reports whose mark awaits its truth

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # -- probes ------------------------------------------------------------------------------
    async def statuses(self) -> dict[str, str]:
        async with self.session.get(self.daemon.base + "/v1/prices") as resp:
            if resp.status != 200:  # 503 before the first round
                return {}
            body = await resp.json()
        return {r["market"]: r["status"] for r in body}

    async def scrape(self) -> tuple[dict[str, str], int, int]:
        """(state of each source, asyncio tasks, source task restarts) from /metrics."""
        async with self.session.get(self.daemon.base + "/metrics") as resp:
            text = await resp.text()
        states: dict[str, str] = {}
        tasks = restarts = 0
        for line in text.splitlines():
            bad = _MALFORMED_LINE.match(line)
            if bad is not None:
                self.malformed[bad.group(1)] = int(float(bad.group(2)))
                continue
            m = _STATE_LINE.match(line)
            if m is not None and float(m.group(3)) == 1.0:
                states[m.group(1)] = m.group(2)
                continue
            v = _VALUE_LINE.match(line)
            if v is not None:
                if v.group(1) == "oracled_asyncio_tasks":
                    tasks = int(float(v.group(2)))
                else:
                    restarts += int(float(v.group(2)))
        return states, tasks, restarts

    async def lagging(self) -> list[str]:
        """Markets not active and sources not streaming that were so before the faults."""
        statuses = await self.statuses()
        states, _, _ = await self.scrape()
        markets = [
            f"{m}:{statuses.get(m)}" for m in self.baseline_live if statuses.get(m) != "active"
        ]
        sources = [
            f"{s}:{states.get(s)}" for s in self.baseline_streaming if states.get(s) != "streaming"
        ]
        return sorted(markets) + sorted(sources)

    async def sample(self, cycle: int) -> Sample:
        _, tasks, _ = await self.scrape()
        rss, fds, sockets = proc_resources(self.daemon.pid)
        s = Sample(round(self.elapsed(), 1), cycle, rss, fds, sockets, tasks)
        self.samples.append(s)
        return s

    # -- background --------------------------------------------------------------------------
    async def sample_truth(self) -> None:
        while True:
            self.truth.sample()
            self.judge_marks()
            now_ms = int(time.time() * 1000)
            if self.watch is not None:
                self.watch.sample(now_ms)
            if self.perp_watch is not None:
                self.perp_watch.sample(now_ms)
            await asyncio.sleep(0.1)

    async def subscribe(self) -> None:
        """Check every report the stream publishes, for the whole run."""
        url = self.daemon.base.replace("http", "ws", 1) + "/v1/stream"
        async with self.session.ws_connect(url, max_msg_size=0) as ws:
            await ws.send_json({"op": "subscribe"})
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                if frame.get("type") == "report":
                    self.inspect(frame["data"])
        raise RuntimeError("the daemon closed the stream")

    def inspect(self, report: dict[str, Any]) -> None:
        c = self.check
        c.reports += 1
        market, status = report["market"], report["status"]
        c.by_status[status] = c.by_status.get(status, 0) + 1
        for src in report.get("sources", ()):
            if src.get("reason") == "outlier":
                c.outliers_seen.add((market, src["id"]))
        live = status in ("active", "degraded")
        c.live += live
        c.not_live += not live
        self._paused_seen += status == "paused"
        band = self.truth.band(market, report["ts"]) if live else None
        c.unbanded += live and band is None
        problem = judge(report, band, self.opts.band_tolerance)
        if problem is not None:
            c.violation(problem)
        if report.get("mark") is not None:
            self.marks_due.append(report)
        if self.watch is not None:
            self.watch.inspect(report, c)
        if self.perp_watch is not None:
            self.perp_watch.inspect(report, c)

    def judge_marks(self, *, final: bool = False) -> None:
        """Judge the marks whose truth is sampled to a second past their round (`final`: all).

        Not on arrival: a contract's print can be newer than the truth's latest sample, taken
        every 100 ms on a busy loop, and in the 1.5 % a second of a silent majority's move that
        put the perp median up to 0.4 % past the band of mids sampled by then."""
        c, latest = self.check, self.truth.latest_ms
        while self.marks_due and (final or self.marks_due[0]["ts"] + TRUTH_AHEAD_MS <= latest):
            report = self.marks_due.popleft()
            mark, price = report["mark"], report["price"]
            live = report["status"] in ("active", "degraded")
            perps = self.truth.band(report["market"], report["ts"], perps=True) if live else None
            if perps is not None and mark["price"] is not None and price is not None:
                c.marks += 1
                value, x = float(mark["price"]), float(price)
                error = outside(value, min(perps[0], x), max(perps[1], x))
                c.mark_max_error = max(c.mark_max_error, error)
            problem = judge_mark(report, perps, self.opts.mark_tolerance)
            if problem is not None:
                c.violation(problem, mark=True)

    # -- faults ------------------------------------------------------------------------------
    def _pick(self) -> SimulatedVenue:
        return self.rng.choice(self.quoting)

    def inject(self, fault: str, cycle: int) -> tuple[str, Callable[[], Any]]:
        """Start a fault; return its target and a probe of whether its effect showed."""
        if fault == "spike":
            venue = self._pick()
            (pair, _), key = self.rng.choice([k for k in venue.keys.items() if k[0][1] == "spot"])
            factor = self.rng.choice((1.08, 0.92))
            venue.sim.spike(key if key in venue.sim.paths else pair, factor, None)
            markets = {
                m.symbol
                for m in self.cfg.markets
                if any(s.source == venue.source and s.pair == pair for s in m.sources)
            }
            return f"{venue.source} {pair} x{factor}", lambda: any(
                (m, venue.source) in self.check.outliers_seen for m in markets
            )
        if fault == "stall":
            venue = self._pick()
            venue.sim.silence(None)  # REST still answers: the source falls back to polling
            before = venue.sim.stats.rest_requests
            return venue.source, lambda: venue.sim.stats.rest_requests > before
        if fault == "disconnect":
            venue = self._pick()
            venue.sim.ws_enabled = False
            before = venue.sim.stats.connections
            dropped = venue.sim.disconnect()
            return (
                f"{venue.source} ({dropped} dropped)",
                lambda: (
                    dropped > 0
                    or (venue.sim.stats.refused > 0 and venue.sim.stats.connections == before)
                ),
            )
        if fault == "garbage":
            venue = self._pick()
            before = self.malformed.get(venue.source, 0)
            venue.sim.garbage(40)
            return venue.source, lambda: self.malformed.get(venue.source, 0) > before
        if fault == "burst_replay":
            venue = self._pick()
            queued = venue.sim.burst(10) + venue.sim.replay_stale(200)
            return venue.source, lambda: queued > 0
        if fault == "rest_fail":
            venue = self._pick()
            venue.sim.silence(None)
            venue.sim.rest_status = self.rng.choice((429, 500, 503))
            venue.sim.rest_delay_s = self.rng.choice((0.0, 2.0))
            before = venue.sim.stats.rest_requests
            return (
                f"{venue.source} {venue.sim.rest_status} delay {venue.sim.rest_delay_s}s",
                lambda: venue.sim.stats.rest_requests > before,
            )
        if fault == "silent_majority":
            watch = self._silence_majority()
            return f"{watch.market} {','.join(watch.silent)}", lambda: watch.outvoted
        if fault == "silent_perps":
            perps = self._silence_perps()
            return f"{perps.market} {','.join(perps.silent)} perps", lambda: perps.left_behind
        if fault == "quorum_loss":
            silent = self.rng.sample(self.quoting, len(self.quoting) // 2 + 2)
            for venue in silent:
                venue.sim.silence(None)
                venue.sim.rest_enabled = False
            before = self._paused_seen
            return ",".join(sorted(v.source for v in silent)), lambda: self._paused_seen > before
        raise ValueError(f"unknown fault {fault!r}")

    def _silence_majority(self) -> LagWatch:
        """Mute the lag market's pair on a weight majority of its venues (drawn), each socket
        kept open and every other symbol flowing; the watch of the venues left quoting."""
        assert self.lag_market is not None
        market = self.cfg.market(self.lag_market)
        assert market is not None
        _, silent = silent_majority(self.cfg, market.symbol, self.lag_rng)
        self.watch = LagWatch(
            market=market.symbol,
            silent=tuple(sorted(silent)),
            quoting=self._mute(market.sources, silent),
            max_age_ms=market.max_age_ms,
            tolerance=market.max_deviation + self.opts.band_tolerance,
            start_ms=int(time.time() * 1000),
        )
        return self.watch

    def _silence_perps(self) -> PerpWatch:
        """Mute the perp market's contract on two of its three perpetual venues (drawn), each
        socket kept open and every other symbol flowing (okx's spot pair too); the watch of the
        one left quoting."""
        assert self.perp_market is not None
        market = self.cfg.market(self.perp_market)
        assert market is not None
        silent = self.perp_rng.sample(_simulated_perps(self.cfg, market.symbol), SILENT_PERPS)
        self.perp_watch = PerpWatch(
            market=market.symbol,
            silent=tuple(sorted(silent)),
            quoting=self._mute(market.perp_sources, silent),
            max_age_ms=market.max_age_ms,
            lag_ms=market.lag_ms,
            tolerance=market.max_deviation + self.opts.perp_slack,
            start_ms=int(time.time() * 1000),
        )
        return self.perp_watch

    def _mute(
        self, slots: Sequence[MarketSource], silent: Collection[str]
    ) -> tuple[PricePath, ...]:
        """Mute the slots of the `silent` venues, each socket kept open and every other symbol
        flowing; the paths of the simulated slots left quoting (both silent faults)."""
        by_id = {v.source: v for v in self.venues}
        quoting: list[PricePath] = []
        for slot in slots:
            venue = by_id.get(slot.source)
            key = None if venue is None else _sim_key(venue, slot.pair, slot.kind)
            if venue is None or key is None:
                continue
            if slot.source in silent:
                venue.sim.mute(key)
            else:
                quoting.append(venue.sim.paths[key])
        return tuple(quoting)

    async def probe_perps(self, watch: PerpWatch) -> None:
        """Until cancelled, read how the daemon last judged the market's perpetuals: the fault
        took effect once every silent one is `stale` while younger than its age limit."""
        url = f"{self.daemon.base}/v1/markets/{watch.market.replace('/', '-')}/sources"
        while not watch.left_behind:
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(url) as resp:
                    body = await resp.json() if resp.status == 200 else {}
                rows = {r["source"]: r for r in body.get("perp_sources", ())}
                watch.left_behind = all(
                    rows.get(s, {}).get("reason") == "stale"
                    and (rows[s].get("age_ms") or 0) < watch.max_age_ms
                    for s in watch.silent
                )
            await asyncio.sleep(0.2)

    async def _move_market(self, market: str, quoting: Sequence[PricePath]) -> None:
        """While some of its venues are silent, move the market by `lag_move` once the silent
        quotes are older than `lag_ms`, every venue's path of its base asset together, spot and
        perpetual (the silent venues' too: the market moves, they just do not say so), then
        hold it there."""
        await asyncio.sleep(self.opts.lag_quiet_s)
        level = sum(p.mid for p in quoting) / len(quoting)
        start = self._levels.setdefault(market, level)
        move = self.opts.lag_move
        factor = 1 - move if level >= start else 1 + move  # back towards the start
        base = market.split("/")[0]
        for venue in self.venues:
            for pair, kind in venue.keys:
                key = _sim_key(venue, pair, kind)
                if key is not None and pair.split("/")[0] == base:
                    venue.sim.ramp(key, venue.sim.paths[key].mid * factor, self.opts.lag_ramp_s)
        await asyncio.sleep(self.opts.lag_ramp_s + self.opts.lag_hold_s)

    def _window(self, fault: str) -> float:
        if fault == "quorum_loss":
            return self.opts.quorum_window_s
        if fault in ("silent_majority", "silent_perps"):
            return self.opts.lag_quiet_s + self.opts.lag_ramp_s + self.opts.lag_hold_s
        return self.opts.window_s

    def _unrecovered(self, fault: str) -> list[str]:
        """What the fault's own recovery still waits for: the silent venues used again."""
        watch, perps = self.watch, self.perp_watch
        if fault == "silent_majority" and watch is not None:
            return [f"{watch.market}:{s}:unused" for s in watch.silent if s not in watch.back]
        if fault == "silent_perps" and perps is not None and not perps.back:
            return [f"{perps.market}:perps:unused"]
        return []

    async def run_fault(self, fault: str, cycle: int) -> FaultRecord:
        window = self._window(fault)
        started = self.elapsed()
        target, effect = self.inject(fault, cycle)
        if fault == "silent_majority":
            assert self.watch is not None
            await self._move_market(self.watch.market, self.watch.quoting)
            self.watch.end_ms = int(time.time() * 1000)
        elif fault == "silent_perps":
            assert self.perp_watch is not None
            probe = asyncio.create_task(self.probe_perps(self.perp_watch))
            await self._move_market(self.perp_watch.market, self.perp_watch.quoting)
            self.perp_watch.end_ms = int(time.time() * 1000)
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        else:
            await asyncio.sleep(window)
        seen = bool(effect())
        for venue in self.venues:
            venue.sim.reset()
        cleared = time.monotonic()
        recovered: float | None = None
        deadline = cleared + self.opts.recovery_limit_s
        lagging = ["no answer"]
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                lagging = await self.lagging() + self._unrecovered(fault)
                if not lagging:
                    recovered = round(time.monotonic() - cleared, 2)
                    break
            await asyncio.sleep(0.25)
        seen = seen or bool(effect())
        record = FaultRecord(cycle, fault, target, round(started, 1), window, recovered, seen)
        self.log(
            f"cycle {cycle} {fault:<12} {target:<40} "
            + (
                f"recovered in {recovered:.1f} s"
                if recovered is not None
                else f"NOT RECOVERED: {' '.join(lagging[:8])}"
            )
        )
        return record

    async def settle(self) -> None:
        """Wait until every market is active and every source streaming (the baseline)."""
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                statuses = await self.statuses()
                states, _, _ = await self.scrape()
                simulated = {v.source for v in self.venues}  # on-chain sources have no chain
                if (
                    statuses
                    and all(s == "active" for s in statuses.values())
                    and all(states.get(sid) == "streaming" for sid in simulated)
                ):
                    self.baseline_live = set(statuses)
                    self.baseline_streaming = simulated
                    return
            await asyncio.sleep(0.5)
        statuses = await self.statuses()
        states, _, _ = await self.scrape()
        raise RuntimeError(f"the daemon never went all live: {statuses} {states}")

    async def run(self) -> int:
        """The fault cycles; returns how many ran."""
        await self.settle()
        self.log(f"all {len(self.baseline_live)} markets active, "
                 f"{len(self.baseline_streaming)} sources streaming")  # fmt: skip
        cycle = 0
        while True:
            for fault in self.fault_names:
                self.faults.append(await self.run_fault(fault, cycle))
            await asyncio.sleep(self.opts.settle_s)
            s = await self.sample(cycle)
            self.log(f"cycle {cycle} done at {s.t_s:.0f} s: rss {s.rss_kb / 1024:.1f} MB, "
                     f"fds {s.fds}, sockets {s.sockets}, tasks {s.tasks}")  # fmt: skip
            cycle += 1
            if self.opts.cycles is not None and cycle >= self.opts.cycles:
                return cycle
            if self.opts.cycles is None and self.elapsed() >= self.opts.duration_s:
                return cycle


def judge(report: dict[str, Any], band: tuple[float, float] | None, tolerance: float) -> str | None:
    """What is wrong with one published report, or None: a live report carries a price within
    the true band (widened by `tolerance`, a fraction); a paused or unknown one carries none."""
    market, status, price, ts = report["market"], report["status"], report["price"], report["ts"]
    if status not in ("active", "degraded"):
        return None if price is None else f"{market} {status} at {ts} with price {price}"
    if price is None:
        return f"{market} {status} at {ts} without a price"
    if band is not None:
        lo, hi = band
        if not lo * (1 - tolerance) <= float(price) <= hi * (1 + tolerance):
            return f"{market} {status} at {ts}: {price} outside [{lo:.8g}, {hi:.8g}]"
    return None


def judge_mark(
    report: dict[str, Any], perps: tuple[float, float] | None, tolerance: float
) -> str | None:
    """What is wrong with one report's mark, or None. A paused or unknown report carries no mark
    price (the mark never outlives the index), a live one a mark price unless it left the
    market's band (reason `bounds`), within `tolerance` (a fraction) of the band the honest
    perpetual mids (`perps`, in the market's units) and the index span: the mark is the mean of
    the perp median and the index times one plus the basis EMA, or the index times one plus the
    decayed EMA (docs/mark.md), and every term lies in that band but the EMA, a time average of
    the few basis points the simulated contracts show over the index."""
    mark = report.get("mark")
    if mark is None:
        return None
    market, status, ts, value = report["market"], report["status"], report["ts"], mark["price"]
    if status not in ("active", "degraded") or report["price"] is None:
        return None if value is None else f"{market} {status} at {ts} with mark {value}"
    if value is None:
        why = mark.get("reason")
        return None if why == "bounds" else f"{market} {status} at {ts} without a mark ({why})"
    if perps is not None:
        x = float(report["price"])
        lo, hi = min(perps[0], x), max(perps[1], x)
        if outside(float(value), lo, hi) > tolerance:
            return (
                f"{market} {status} at {ts}: mark {value} outside the perpetuals and the index "
                f"[{lo:.8g}, {hi:.8g}] +- {100 * tolerance:.2f} %"
            )
    return None


def outside(value: float, lo: float, hi: float) -> float:
    """How far `value` lies outside [lo, hi], as a fraction of the nearer end (0 inside)."""
    return max(1 - value / lo, value / hi - 1, 0.0)


def _slope_per_hour(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mx) * (v - my) for t, v in points) / den * 3600.0


def evaluate(opts: SoakOptions, soak: Soak, restarts: int, exit_code: int | None) -> SoakResult:
    """Figures and the list of broken properties (empty: the soak passed)."""
    problems: list[str] = []
    after = [s for s in soak.samples if s.cycle >= opts.warmup_cycles - 1]
    if len(after) < 2:
        problems.append("too few cycles after the warm-up to compare resources")
    base, end = (after[0], after[-1]) if after else (None, None)
    recovered = [f.recovered_s for f in soak.faults if f.recovered_s is not None]
    figures: dict[str, float] = {
        "faults_recovered": float(len(recovered)),
        "recovery_p50_s": sorted(recovered)[len(recovered) // 2] if recovered else math.nan,
        "recovery_max_s": max(recovered) if recovered else math.nan,
        "rss_base_mb": base.rss_kb / 1024 if base else math.nan,
        "rss_end_mb": end.rss_kb / 1024 if end else math.nan,
        "rss_growth_pct": 100.0 * (end.rss_kb / base.rss_kb - 1) if base and end else math.nan,
        "rss_mb_per_hour": _slope_per_hour([(s.t_s, s.rss_kb / 1024) for s in after[1:]]),
        "tasks_base": base.tasks if base else math.nan,
        "tasks_end": end.tasks if end else math.nan,
        "fds_base": base.fds if base else math.nan,
        "fds_end": end.fds if end else math.nan,
        "sockets_base": base.sockets if base else math.nan,
        "sockets_end": end.sockets if end else math.nan,
    }
    check = soak.check
    if check.bad > check.bad_marks:
        problems.append(f"{check.bad - check.bad_marks} bad prices published")
    if check.bad_marks:
        problems.append(f"{check.bad_marks} bad marks published")
    lost = [f"{f.fault}@{f.cycle}" for f in soak.faults if f.recovered_s is None]
    if lost:
        problems.append(f"not recovered: {', '.join(lost)}")
    unseen = [f"{f.fault}@{f.cycle}" for f in soak.faults if not f.effect_seen]
    if unseen:
        problems.append(f"fault without effect: {', '.join(unseen)}")
    if base and end:
        if end.rss_kb > base.rss_kb * (1 + opts.rss_growth_limit):
            problems.append(f"RSS grew {figures['rss_growth_pct']:.1f} % after the warm-up")
        if end.tasks > base.tasks + opts.task_slack:
            problems.append(f"asyncio tasks grew from {base.tasks} to {end.tasks}")
        if end.fds > base.fds + opts.fd_slack:
            problems.append(f"file descriptors grew from {base.fds} to {end.fds}")
        if end.sockets > base.sockets + opts.fd_slack:
            problems.append(f"sockets grew from {base.sockets} to {end.sockets}")
    if restarts:
        problems.append(f"{restarts} source task restarts (crashes)")
    if exit_code not in (0, None) or exit_code is None:
        problems.append(f"daemon did not stop cleanly on SIGTERM (exit {exit_code})")
    return SoakResult(
        options={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        markets=len(soak.markets),
        sources=len(soak.venues),
        elapsed_s=soak.elapsed(),
        cycles=len({s.cycle for s in soak.samples}),
        faults=soak.faults,
        samples=soak.samples,
        reports=soak.check,
        source_restarts=restarts,
        daemon_exit=exit_code,
        problems=problems,
        figures=figures,
    )


def _fault_market(chosen: str | None, candidates: list[str], seed: str, what: str) -> str | None:
    """The market a silent fault plays on: `chosen` if it can be played there, else one drawn
    by the seed from `candidates` (None when no market can play it)."""
    if chosen is None:
        return random.Random(seed).choice(candidates) if candidates else None
    if chosen not in candidates:
        raise ValueError(f"no silent {what} can be played on {chosen!r}; on one of {candidates}")
    return chosen


async def run_soak(
    opts: SoakOptions,
    workdir: Path,
    *,
    config: Path = ROOT / "config" / "default.toml",
    log: Callable[[str], None] = print,
) -> SoakResult:
    """Run one soak in `workdir` (config, daemon log, audit database) and evaluate it."""
    base = load_config(config, env={})
    audit = workdir / "audit.sqlite3" if opts.audit else None
    lag_market = _fault_market(
        opts.lag_market, silent_majority_markets(base), f"{opts.seed}:lag_market", "majority"
    )
    perp_market = _fault_market(
        opts.perp_market, silent_perps_markets(base), f"{opts.seed}:perp_market", "perpetuals"
    )
    cfg, venues = await simulate(
        soak_config(
            base,
            max_age_ms=opts.max_age_ms,
            audit_path=audit,
            lag_ms=opts.lag_ms,
            lag_market=lag_market,
            lag_max_age_ms=opts.lag_max_age_ms,
            perp_market=perp_market,
        ),
        seed=opts.seed,
        rate_hz=opts.rate_hz,
        liveness={"liveness_timeout_s": 1.5, "rest_poll_interval_s": 0.5, "reconnect_max_s": 2.0},
    )
    hold_stablecoins(venues)
    daemon = DaemonProcess(_toml(cfg), workdir)
    exit_code: int | None = None
    restarts = 0
    background: list[asyncio.Task[None]] = []
    try:
        daemon.start()
        async with aiohttp.ClientSession() as session:
            await _wait_healthy(daemon, session)
            soak = Soak(opts, cfg, venues, daemon, session, log, lag_market, perp_market)
            background = [
                asyncio.create_task(soak.sample_truth(), name="soak:truth"),
                asyncio.create_task(soak.subscribe(), name="soak:subscriber"),
            ]
            runner = asyncio.create_task(soak.run(), name="soak:faults")
            done, _ = await asyncio.wait([runner, *background], return_when=asyncio.FIRST_COMPLETED)
            if runner not in done:
                runner.cancel()
                for task in done:
                    task.result()  # the subscriber or sampler failed: raise its error
            runner.result()
            soak.judge_marks(final=True)
            _, _, restarts = await soak.scrape()
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        exit_code = daemon.stop()
        if opts.keep_logs is not None:
            opts.keep_logs.write_text(daemon.logs())
        for venue in venues:
            await venue.sim.stop()
    return evaluate(opts, soak, restarts, exit_code)


async def _wait_healthy(daemon: DaemonProcess, session: aiohttp.ClientSession) -> None:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if not daemon.alive():
            raise RuntimeError(f"the daemon exited:\n{daemon.logs()[-4000:]}")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(daemon.base + "/healthz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the daemon never answered /healthz:\n{daemon.logs()[-4000:]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds (default 1 h)")
    parser.add_argument("--cycles", type=int, default=None, help="stop after this many cycles")
    parser.add_argument("--window", type=float, default=8.0, help="seconds each fault lasts")
    parser.add_argument("--settle", type=float, default=20.0, help="calm before each sample")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "default.toml")
    parser.add_argument("--no-audit", action="store_true", help="run without the audit trail")
    parser.add_argument(
        "--lag-ms",
        type=int,
        default=1000,
        help="every market's lag_ms (above 10000, the silent majority's age limit: no lag rule)",
    )
    parser.add_argument("--lag-market", default=None, help="the silent majority's market")
    parser.add_argument("--perp-market", default=None, help="the silent perpetuals' market")
    parser.add_argument("--rss-limit", type=float, default=0.05, help="allowed RSS growth")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep config, log, audit here")
    args = parser.parse_args(argv)
    if args.lag_market is not None:
        candidates = silent_majority_markets(load_config(args.config, env={}))
        if args.lag_market not in candidates:
            parser.error(f"--lag-market: one of {', '.join(candidates) or 'none in this config'}")
    if args.perp_market is not None:
        candidates = silent_perps_markets(load_config(args.config, env={}))
        if args.perp_market not in candidates:
            parser.error(f"--perp-market: one of {', '.join(candidates) or 'none in this config'}")
    opts = SoakOptions(
        duration_s=args.duration,
        cycles=args.cycles,
        window_s=args.window,
        quorum_window_s=max(args.window, 8.0),
        settle_s=args.settle,
        seed=args.seed,
        audit=not args.no_audit,
        rss_growth_limit=args.rss_limit,
        lag_ms=args.lag_ms,
        lag_market=args.lag_market,
        perp_market=args.perp_market,
    )

    def stamp(text: str) -> None:
        print(time.strftime("%H:%M:%S"), text, flush=True)

    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(run_soak(opts, workdir, config=args.config, log=stamp))
    print(result.table())
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return 0 if not result.problems else 1


if __name__ == "__main__":
    sys.exit(main())
