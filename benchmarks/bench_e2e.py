"""End to end: simulated venues on loopback -> `oracled run` -> WebSocket subscribers.

Every source of a synthetic config (markets `Cnnnn/USDT`, each quoted by every source) is an OKX
simulator (`oracled.sim.venues.simulate`) in one of `--sim-procs` worker processes, publishing
every symbol `rate / (markets x sources)` times a second. The daemon is `python -m oracled.cli
run` as a subprocess; subscribers are this process. Per rate step the script measures:

- latency from a venue frame to the report reaching a subscriber (see `Watcher`);
- throughput: frames the simulators sent and the daemon received per second;
- the round loop: rounds computed against the schedule, and the round lag histogram;
- CPU of the daemon per 10,000 messages (from /proc/<pid>/stat) and its RSS;
- the frame ledger: every frame sent is a quote or a counted drop (simulator counts against the
  daemon's source metrics after the venues fall silent and the daemon has drained).

The simulators stagger their updates (`VenueSim(stagger=True)`: each symbol's frame is built and
stamped when it leaves, spread over the tick, as a real venue's are; `--no-stagger` sends each
venue's symbols in one burst per tick, stamped when the burst is built). `--pin` puts the daemon
on one CPU and the simulators and subscribers on the others ("on one core of the benchmark
machine").

`--memory 100,1000,5000` instead starts the daemon on configs of that many markets (simulated at
a low rate) and reports its RSS once every market is priced. `--encode` times the stream's
report encoder alone over rounds of the same synthetic world, and first what a fresh encoder's
first calls cost (its set-up, at start and after a reload).

    python benchmarks/bench_e2e.py --markets 1000 --sources 8 --rates 8000,32000 --json out.json
    python benchmarks/bench_e2e.py --markets 1000 --sources 8 --rates 32000 --pin --batch
    python benchmarks/bench_e2e.py --memory 100,1000,5000 --sources 8
    python benchmarks/bench_e2e.py --encode --markets 1000 --sources 8

See benchmarks/README.md for what the figures mean and the figures measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec

if TYPE_CHECKING:
    from oracled.config import Config
    from oracled.core import RoundResult

# OKX frames carry the venue's event time, which the reports hand back as age_ms (the latency
# method needs it); Binance spot subscribes 200 symbols a request (quicker at 5,000 markets).
VENUES = ("okx", "binance")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _symbol(i: int) -> str:
    return f"C{i:04d}/USDT"


def _source_ids(sources: int) -> list[str]:
    return [f"s{j:02d}" for j in range(sources)]


# ------------------------------------------------------------------ simulator worker process


async def _worker() -> None:
    """One simulator process: venues for the sources it was given; commands on stdin."""
    from oracled.config import parse_config
    from oracled.sim.venues import simulate

    spec = json.loads(await asyncio.to_thread(sys.stdin.readline))
    markets = [
        {
            "symbol": _symbol(i),
            "min_sources": 1,
            "sources": [{"source": s, "pair": _symbol(i)} for s in spec["sources"]],
        }
        for i in range(spec["markets"])
    ]
    cfg = parse_config(
        {"sources": {s: {"type": spec["venue"]} for s in spec["sources"]}, "markets": markets},
        env={},
    )
    pointed, venues = await simulate(
        cfg, seed=1, rate_hz=spec["rate_hz"], stagger=spec.get("stagger", False)
    )
    urls = {sid: [src.ws_url, src.rest_url] for sid, src in pointed.sources.items()}
    print(json.dumps(urls), flush=True)

    def stats() -> dict[str, Any]:
        return {
            "sent": {v.source: v.sim.stats.frames_sent for v in venues},
            "subscribed": {v.source: sum(len(c.streams) for c in v.sim.clients) for v in venues},
            "queued": sum(c.outbox.qsize() for v in venues for c in v.sim.clients),
            "cpu_s": time.process_time(),
        }

    while True:
        line = (await asyncio.to_thread(sys.stdin.readline)).strip()
        if line in ("", "stop"):
            break
        if line == "quiet":  # stop publishing, let the writers drain
            for v in venues:
                v.sim.silence(None)
            for _ in range(200):
                if stats()["queued"] == 0:
                    break
                await asyncio.sleep(0.05)
        print(json.dumps(stats()), flush=True)
    for v in venues:
        await v.sim.stop()


class Worker:
    """The parent's handle on one simulator process."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(
        cls, venue: str, sources: list[str], markets: int, rate_hz: float, stagger: bool
    ) -> tuple[Worker, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        worker = cls(proc)
        urls = await worker.ask(
            {
                "venue": venue,
                "sources": sources,
                "markets": markets,
                "rate_hz": rate_hz,
                "stagger": stagger,
            }
        )
        return worker, urls

    async def ask(self, command: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        text = command if isinstance(command, str) else json.dumps(command)
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if not line:
            raise RuntimeError("simulator worker exited")
        return json.loads(line)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"stop\n")
            await self.proc.stdin.drain()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def _start_workers(
    venue: str, sources: list[str], markets: int, rate_hz: float, procs: int, stagger: bool
) -> tuple[list[Worker], dict[str, list[str]]]:
    shares = [sources[k::procs] for k in range(procs)]
    started = await asyncio.gather(
        *(Worker.start(venue, share, markets, rate_hz, stagger) for share in shares if share)
    )
    urls: dict[str, list[str]] = {}
    for _, u in started:
        urls.update(u)
    return [w for w, _ in started], urls


async def _worker_stats(workers: list[Worker], command: str = "stats") -> dict[str, Any]:
    replies = await asyncio.gather(*(w.ask(command) for w in workers))
    merged: dict[str, Any] = {"sent": {}, "subscribed": {}, "queued": 0, "cpu_s": 0.0}
    for r in replies:
        merged["sent"].update(r["sent"])
        merged["subscribed"].update(r["subscribed"])
        merged["queued"] += r["queued"]
        merged["cpu_s"] += r["cpu_s"]
    return merged


# ------------------------------------------------------------------ the daemon


def _config_toml(
    venue: str, markets: int, urls: dict[str, list[str]], round_ms: int, min_sources: int
) -> str:
    out = [
        f"[oracle]\nround_interval_ms = {round_ms}\n",
        '[log]\nformat = "json"\nlevel = "warning"\n',
    ]
    for sid, (ws, rest) in urls.items():
        out.append(
            f'[sources.{sid}]\ntype = "{venue}"\nws_url = "{ws}"\nrest_url = "{rest}"\n'
            "liveness_timeout_s = 120.0\n"
        )
    for i in range(markets):
        entries = ", ".join(f'{{ source = "{s}", pair = "{_symbol(i)}" }}' for s in urls)
        out.append(
            f'[[markets]]\nsymbol = "{_symbol(i)}"\nmin_sources = {min_sources}\n'
            f"max_age_ms = 10000\nsources = [{entries}]\n"
        )
    return "\n".join(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ProcSample:
    at: float
    cpu_s: float
    rss_mb: float


class Daemon:
    """`oracled run` as a subprocess on a free loopback port."""

    def __init__(self, workdir: Path, config_text: str, cpus: list[int] | None = None) -> None:
        self.cpus = cpus  # CPUs the daemon may run on (None: wherever the OS puts it)
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "oracled.toml"
        self.config.write_text(config_text)
        self.log = workdir / "oracled.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "oracled.cli",
                "run",
                "--config",
                str(self.config),
                "--listen",
                f"127.0.0.1:{self.port}",
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        if self.cpus is not None:
            # Set before the interpreter has started a thread; later threads inherit it.
            os.sched_setaffinity(self.proc.pid, set(self.cpus))
        self.session = aiohttp.ClientSession()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"daemon exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(self.base + "/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError("daemon did not come up")

    def sample(self) -> ProcSample:
        """CPU seconds (user + system) and RSS of the daemon from /proc."""
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        rss = int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * PAGE / 2**20
        return ProcSample(time.monotonic(), cpu, rss)

    def peak_rss_mb(self) -> float | None:
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(hwm.group(1)) / 1024 if hwm else None

    async def metrics(self) -> dict[str, float]:
        """The /metrics exposition as {'name{labels}': value}, counters without `_total`."""
        assert self.session is not None
        async with self.session.get(self.base + "/metrics") as resp:
            text = await resp.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                name, brace, labels = key.partition("{")
                key = name.removesuffix("_total") + brace + labels
                with contextlib.suppress(ValueError):
                    out[key] = float(value)
        return out

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def _ledger(metrics: dict[str, float]) -> tuple[int, dict[str, float]]:
    """Quotes taken and frames dropped (by reason) as the daemon's metrics count them."""
    dropped: dict[str, float] = {}
    for key, v in metrics.items():
        if key.startswith("oracled_quotes_dropped{") and v:
            reason = re.search(r'reason="([^"]+)"', key)
            if reason:
                dropped[reason.group(1)] = dropped.get(reason.group(1), 0.0) + v
    return int(_sum(metrics, "oracled_source_quotes")), dropped


async def _drained_ledger(daemon: Daemon, sent: int) -> tuple[int, dict[str, float]]:
    """The ledger once the daemon has read what the quiet venues sent: every frame counted,
    or the counts unchanged from one read to the next a second later (what is missing then is
    lost, not late). A daemon seconds behind still holds frames in its sockets when the venues
    stop: reading the counters a fixed second after called those frames lost."""
    last: tuple[int, float] | None = None
    for _ in range(60):
        await asyncio.sleep(1.0)
        quotes, dropped = _ledger(await daemon.metrics())
        now = (quotes, sum(dropped.values()))
        if quotes + now[1] >= sent or now == last:
            break
        last = now
    return quotes, dropped


def _sum(metrics: dict[str, float], name: str, label: str | None = None) -> float:
    """Sum of a family's samples, optionally only those whose labels contain `label`."""
    prefix = name + "{"
    return sum(
        v
        for k, v in metrics.items()
        if (k == name or k.startswith(prefix)) and (label is None or label in k)
    )


def _by_source(metrics: dict[str, float], name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if k.startswith(name + "{"):
            m = re.search(r'source="([^"]+)"', k)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0.0) + v
    return out


def _histogram_quantile(
    before: dict[str, float], after: dict[str, float], name: str, q: float
) -> float | None:
    """Upper bound of the bucket holding quantile q of the observations between two scrapes."""
    buckets: list[tuple[float, float]] = []
    for k, v in after.items():
        m = re.fullmatch(name + r'_bucket\{le="([^"]+)"\}', k)
        if m:
            buckets.append((float(m.group(1)), v - before.get(k, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return None


# ------------------------------------------------------------------ subscribers


class _Source(msgspec.Struct):
    id: str
    age_ms: int | None = None


class _Report(msgspec.Struct):
    market: str
    ts: int
    sources: list[_Source]


class _Frame(msgspec.Struct):
    type: str
    data: _Report | list[_Report] | None = None  # a list in a batch ("reports") frame


_DECODE = msgspec.json.Decoder(_Frame)


@dataclass
class Watcher:
    """One stream subscriber. Receive times are taken as frames are read and decoded later.

    Latency method: the simulated OKX frames carry the venue's event time (`ts`, the simulator's
    wall clock in ms when it built the frame); the daemon keeps it as the quote's venue time and
    every report gives, per source, `age_ms = round ts - venue time`. So each source entry of a
    report names the frame it was computed from (`ts - age_ms`). A frame's latency is the receive
    time (wall clock, same host) of the first report that carries it, minus its venue time. The
    report of a later round carrying the same frame again is not a new sample; a frame replaced
    before any round used it (superseded) gives no sample. Resolution: 1 ms.
    """

    markets: list[str] | None  # None: every market
    batch: bool = False  # one frame per round ("batch": true) instead of one per report
    frames: list[tuple[float, bytes]] = field(default_factory=list)
    received: int = 0
    closed: str | None = None

    async def run(self, url: str, stop: asyncio.Event, ready: asyncio.Event) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(url, max_msg_size=0, autoping=True) as ws,
        ):
            request: dict[str, Any] = {"op": "subscribe"}
            if self.markets is not None:
                request["markets"] = self.markets
            if self.batch:
                request["batch"] = True
            await ws.send_str(json.dumps(request))
            ready.set()
            now = time.time
            keep = self.frames.append
            while not stop.is_set():
                try:
                    msg = await asyncio.wait_for(ws.receive(), 0.5)
                except TimeoutError:
                    continue
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    data = msg.data
                    keep((now() * 1000.0, data.encode() if isinstance(data, str) else data))
                    self.received += 1
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    self.closed = f"{ws.close_code} {msg.extra}"
                    return

    def analyse(self, start_ms: float, end_ms: float) -> Latency:
        """Latencies (ms) of the frames and rounds received within [start, end]."""
        last: dict[tuple[str, str], int] = {}
        out = Latency()
        for recv_ms, raw in self.frames:
            frame = _DECODE.decode(raw)
            if frame.type == "report" and isinstance(frame.data, _Report):
                reports = [frame.data]
            elif frame.type == "reports" and isinstance(frame.data, list):
                reports = frame.data
            else:
                continue
            counted = start_ms <= recv_ms <= end_ms
            for rep in reports:
                if counted:
                    out.round_to_sub.append(recv_ms - rep.ts)
                for src in rep.sources:
                    if src.age_ms is None:
                        continue
                    venue_ms = rep.ts - src.age_ms
                    key = (rep.market, src.id)
                    seen = last.get(key)
                    if seen is None or venue_ms > seen:
                        last[key] = venue_ms
                        if seen is not None and counted:
                            out.frame_to_sub.append(recv_ms - venue_ms)
                            out.frame_to_round.append(src.age_ms)
                            out.reported += 1
        return out


@dataclass
class Latency:
    """Samples of one subscriber, in ms.

    frame_to_sub: venue time of a frame -> receipt of the first report that carries it (the
    budgeted figure); frame_to_round: the same frame -> that report's round time (waiting for
    the next round, plus any queueing before the daemon ingested it, simulator's included);
    round_to_sub: a round's scheduled time -> receipt of each of its reports (round lag, the
    round, building, encoding and sending the reports, the subscriber's read).
    """

    frame_to_sub: list[float] = field(default_factory=list)
    frame_to_round: list[float] = field(default_factory=list)
    round_to_sub: list[float] = field(default_factory=list)
    reported: int = 0


async def _loop_lag(stop: asyncio.Event, out: list[tuple[float, float]]) -> None:
    """How late this process's event loop wakes from a 2 ms sleep: (wall ms, lateness ms).
    The subscribers read on this loop, so this is their share of round->subscriber."""
    clock = time.perf_counter
    while not stop.is_set():
        start = clock()
        await asyncio.sleep(0.002)
        out.append((time.time() * 1000.0, 1000.0 * (clock() - start) - 2.0))


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


# ------------------------------------------------------------------ one run


@dataclass
class Step:
    """The figures of one (markets, sources, rate) run."""

    markets: int
    sources: int
    round_ms: int
    target_rate: float
    sent_rate: float = 0.0
    received_rate: float = 0.0
    sim_cpu_pct: float = 0.0
    daemon_cpu_pct: float = 0.0
    cpu_ms_per_10k: float | None = None
    rss_mb: float = 0.0
    rounds_expected: float = 0.0
    rounds_done: float = 0.0
    round_lag_p99_ms: float | None = None
    round_duration_p99_ms: float | None = None
    latency_samples: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    frame_to_round_p50_ms: float | None = None
    frame_to_round_p99_ms: float | None = None
    round_to_sub_p50_ms: float | None = None
    round_to_sub_p99_ms: float | None = None
    round_to_sub_max_ms: float | None = None
    sub_lag_p99_ms: float | None = None  # the subscribers' own event loop: late wake-ups
    sub_lag_max_ms: float | None = None
    sim_queued: int = 0  # frames the simulators had built but not yet sent, at the window's end
    subscribers: int = 0
    watched_markets: int = 0
    batch: bool = False
    subscriber_frames: int = 0
    subscriber_closed: list[str] = field(default_factory=list)
    sent: int = 0
    quotes: int = 0
    dropped: dict[str, float] = field(default_factory=dict)
    unaccounted: int = 0
    window_quotes: int = 0
    window_reported: int = 0
    superseded_pct: float | None = None
    keeps_up: bool = False


async def _wait_subscribed(workers: list[Worker], markets: int, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        st = await _worker_stats(workers)
        if all(n >= markets for n in st["subscribed"].values()):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"venues not fully subscribed after {limit_s:.0f} s: {st['subscribed']}")


async def _wait_priced(daemon: Daemon, markets: int, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        m = await daemon.metrics()
        live = _sum(m, "oracled_market_status", 'status="active"') + _sum(
            m, "oracled_market_status", 'status="degraded"'
        )
        if live >= markets:
            return
        await asyncio.sleep(0.5)


async def run_step(args: argparse.Namespace, rate: float, workdir: Path) -> Step:
    markets, sources = args.markets, args.sources
    ids = _source_ids(sources)
    rate_hz = rate / (markets * sources)
    step = Step(markets, sources, args.round_ms, rate)
    workers, urls = await _start_workers(
        args.venue, ids, markets, rate_hz, args.sim_procs, args.stagger
    )
    daemon = Daemon(
        workdir,
        _config_toml(args.venue, markets, urls, args.round_ms, min(3, sources)),
        args.daemon_cpus,
    )
    stop = asyncio.Event()
    watchers: list[Watcher] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        await daemon.start()
        await _wait_subscribed(workers, markets, 30 + markets * sources / 400)
        await _wait_priced(daemon, markets, 30)
        watch = None if args.watch <= 0 else [_symbol(i) for i in range(min(args.watch, markets))]
        for k in range(args.subscribers):
            w = Watcher(watch, batch=args.batch)
            ready = asyncio.Event()
            watchers.append(w)
            url = f"ws://127.0.0.1:{daemon.port}/v1/stream"
            tasks.append(asyncio.create_task(w.run(url, stop, ready), name=f"sub{k}"))
            await asyncio.wait_for(ready.wait(), 10)
        lags: list[tuple[float, float]] = []
        tasks.append(asyncio.create_task(_loop_lag(stop, lags), name="loop-lag"))
        await asyncio.sleep(args.warmup)

        m0, p0, s0 = await daemon.metrics(), daemon.sample(), await _worker_stats(workers)
        # Parsing the scrape held this process's loop: frames that waited meanwhile are read
        # (late) before the window opens. At the end the window closes before the scrape.
        await asyncio.sleep(2 * args.round_ms / 1000.0)
        start_ms = time.time() * 1000.0
        await asyncio.sleep(args.duration)
        end_ms = time.time() * 1000.0
        m1, p1, s1 = await daemon.metrics(), daemon.sample(), await _worker_stats(workers)
        elapsed = p1.at - p0.at

        sent = sum(s1["sent"].values()) - sum(s0["sent"].values())
        received = _sum(m1, "oracled_source_frames") - _sum(m0, "oracled_source_frames")
        quotes_w = _sum(m1, "oracled_source_quotes") - _sum(m0, "oracled_source_quotes")
        step.sent_rate = sent / elapsed
        step.received_rate = received / elapsed
        step.sim_queued = s1["queued"]
        step.sim_cpu_pct = 100.0 * (s1["cpu_s"] - s0["cpu_s"]) / elapsed
        step.daemon_cpu_pct = 100.0 * (p1.cpu_s - p0.cpu_s) / elapsed
        step.cpu_ms_per_10k = (
            1000.0 * (p1.cpu_s - p0.cpu_s) / received * 10_000 if received else None
        )
        step.rss_mb = p1.rss_mb
        step.rounds_expected = elapsed * 1000.0 / args.round_ms
        step.rounds_done = _sum(m1, "oracled_rounds") - _sum(m0, "oracled_rounds")
        lag = _histogram_quantile(m0, m1, "oracled_round_lag_seconds", 0.99)
        dur = _histogram_quantile(m0, m1, "oracled_round_duration_seconds", 0.99)
        step.round_lag_p99_ms = None if lag is None else lag * 1000.0
        step.round_duration_p99_ms = None if dur is None else dur * 1000.0

        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        latencies: list[float] = []
        to_round: list[float] = []
        round_to_sub: list[float] = []
        reported = 0
        for w in watchers:
            lat = w.analyse(start_ms, end_ms)
            latencies.extend(lat.frame_to_sub)
            to_round.extend(lat.frame_to_round)
            round_to_sub.extend(lat.round_to_sub)
            reported += lat.reported
            step.subscriber_frames += w.received
            if w.closed:
                step.subscriber_closed.append(w.closed)
        step.subscribers = len(watchers)
        step.batch = args.batch
        step.watched_markets = markets if watch is None else len(watch)
        step.latency_samples = len(latencies)
        step.latency_p50_ms = _pct(latencies, 0.5)
        step.latency_p99_ms = _pct(latencies, 0.99)
        step.latency_max_ms = max(latencies) if latencies else None
        step.frame_to_round_p50_ms = _pct(to_round, 0.5)
        step.frame_to_round_p99_ms = _pct(to_round, 0.99)
        step.round_to_sub_p50_ms = _pct(round_to_sub, 0.5)
        step.round_to_sub_p99_ms = _pct(round_to_sub, 0.99)
        step.round_to_sub_max_ms = max(round_to_sub) if round_to_sub else None
        late = [lag for at, lag in lags if start_ms <= at <= end_ms]
        step.sub_lag_p99_ms = _pct(late, 0.99)
        step.sub_lag_max_ms = max(late) if late else None
        step.window_quotes = int(quotes_w)
        if watchers and watch is None:
            step.window_reported = reported // len(watchers)
            if quotes_w:
                step.superseded_pct = 100.0 * (1.0 - step.window_reported / quotes_w)

        # The ledger: venues fall silent, the daemon drains, then every frame sent is counted.
        final = await _worker_stats(workers, "quiet")
        step.sent = sum(final["sent"].values())
        step.quotes, step.dropped = await _drained_ledger(daemon, step.sent)
        step.unaccounted = int(step.sent - step.quotes - sum(step.dropped.values()))
        step.keeps_up = (
            step.received_rate >= 0.97 * step.sent_rate
            and step.rounds_done >= 0.95 * step.rounds_expected
            and (step.round_lag_p99_ms or 0.0) <= args.round_ms / 2
        )
        return step
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await daemon.stop()
        for worker in workers:
            await worker.stop()


async def memory_step(args: argparse.Namespace, markets: int, workdir: Path) -> dict[str, Any]:
    """RSS of the daemon carrying `markets` x `sources`, every market priced, after a settle."""
    ids = _source_ids(args.sources)
    workers, urls = await _start_workers(
        args.venue, ids, markets, args.memory_rate_hz, args.sim_procs, args.stagger
    )
    daemon = Daemon(
        workdir,
        _config_toml(args.venue, markets, urls, args.round_ms, min(3, args.sources)),
        args.daemon_cpus,
    )
    try:
        await daemon.start()
        started = daemon.sample()
        await _wait_subscribed(workers, markets, 30 + markets * args.sources / 400)
        await _wait_priced(daemon, markets, 60)
        await asyncio.sleep(args.warmup)
        m = await daemon.metrics()
        s = daemon.sample()
        live = _sum(m, "oracled_market_status", 'status="active"') + _sum(
            m, "oracled_market_status", 'status="degraded"'
        )
        hwm = daemon.peak_rss_mb()
        return {
            "markets": markets,
            "sources": args.sources,
            "rss_mb": s.rss_mb,
            "peak_rss_mb": hwm,
            "rss_at_start_mb": started.rss_mb,
            "live_markets": int(live),
        }
    finally:
        await daemon.stop()
        for w in workers:
            await w.stop()


# ------------------------------------------------------------------ the encoder alone


def _encode_config(args: argparse.Namespace) -> Config:
    """The e2e world for the encoder alone: every market quoted by every source."""
    from oracled.config import parse_config

    ids = _source_ids(args.sources)
    return parse_config(
        {
            "sources": {s: {"type": args.venue} for s in ids},
            "markets": [
                {
                    "symbol": _symbol(i),
                    "min_sources": min(3, args.sources),
                    "max_age_ms": 10_000,
                    "sources": [{"source": s, "pair": _symbol(i)} for s in ids],
                }
                for i in range(args.markets)
            ],
        },
        env={},
    )


def encode_setup_bench(args: argparse.Namespace) -> dict[str, Any]:
    """What a fresh encoder (daemon start, or a reload's new layout) costs before its steady
    state, in thread CPU ms over `--setup-runs` fresh encoders: the first call over every
    market, the second (the same floats again, so kept strings), and the first round as the hub
    encodes it, `SLICE` markets per call (the sum, and the largest slice: what one turn of the
    event loop holds)."""
    import random

    from oracled.core import Core
    from oracled.model import Quote
    from oracled.publish.encode import ReportEncoder
    from oracled.publish.hub import SLICE

    cfg = _encode_config(args)
    core = Core(cfg)
    rng = random.Random(1)
    now = 1_700_000_000_000
    results: list[RoundResult] = []
    for _ in range(2):  # every slot quoted, then a round with no new quote (the same floats)
        now += args.round_ms
        if not results:
            for i, m in enumerate(cfg.markets):
                for s in m.sources:
                    mid = (10.0 + i) * rng.uniform(0.999, 1.001)
                    core.ingest(Quote(s.source, s.pair, now, bid=mid * 0.9999, ask=mid * 1.0001))
        results.append(core.run_round(now))
    every = list(range(args.markets))
    samples: dict[str, list[float]] = {"first": [], "second": [], "sliced": [], "slice_max": []}
    for _ in range(args.setup_runs):
        encoder = ReportEncoder()
        start = time.thread_time()
        encoder.encode(results[0], every)
        mid = time.thread_time()
        encoder.encode(results[1], every)
        samples["first"].append(1000.0 * (mid - start))
        samples["second"].append(1000.0 * (time.thread_time() - mid))
        encoder, slices = ReportEncoder(), []
        for lo in range(0, args.markets, SLICE):
            start = time.thread_time()
            encoder.encode(results[0], every[lo : lo + SLICE])
            slices.append(1000.0 * (time.thread_time() - start))
        samples["sliced"].append(sum(slices))
        samples["slice_max"].append(max(slices))
    row: dict[str, Any] = {"markets": args.markets, "sources": args.sources, "slice": SLICE}
    print(f"set-up of a fresh encoder, thread CPU ms over {args.setup_runs} runs (best / median):")
    labels = {
        "first": "first call, every market",
        "second": "second call, every market",
        "sliced": f"first round in slices of {SLICE}",
        "slice_max": "  its largest slice",
    }
    for key, label in labels.items():
        best, median = min(samples[key]), statistics.median(samples[key])
        row[f"{key}_best_ms"], row[f"{key}_median_ms"] = round(best, 2), round(median, 2)
        print(f"  {label:<34} {best:>7.2f} / {median:>7.2f}", flush=True)
    return row


def encode_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    """`ReportEncoder.encode` of every market, per round, over rounds of the e2e world (every
    market quoted by every source) in which a given share of the slots got a new quote; the
    msgspec encoding of `RoundResult.report(i)` (the same bytes) for comparison."""
    import random

    from oracled.core import Core
    from oracled.model import Quote
    from oracled.publish.encode import ReportEncoder

    ids = _source_ids(args.sources)
    cfg = _encode_config(args)
    report_encoder = msgspec.json.Encoder()
    every = list(range(args.markets))
    rows: list[dict[str, Any]] = []
    print(f"{'requoted':>9} {'encode p50':>11} {'p99':>7} {'Report path p50':>16}  (ms)")
    for share in (0.0, 0.05, 0.25, 1.0):
        rng = random.Random(1)
        core, encoder = Core(cfg), ReportEncoder()
        slots = [(s, _symbol(i), 10.0 + i) for i in range(args.markets) for s in ids]
        now = 1_700_000_000_000
        times: list[float] = []
        reference: list[float] = []
        for n in range(args.rounds + 10):
            now += args.round_ms
            for source, pair, fair in slots:
                if n == 0 or rng.random() < share:
                    mid = fair * rng.uniform(0.999, 1.001)
                    core.ingest(
                        Quote(
                            source,
                            pair,
                            now,
                            bid=mid * 0.9999,
                            ask=mid * 1.0001,
                            venue_ts=now - rng.randrange(0, 200),
                        )
                    )
            result = core.run_round(now)
            start = time.perf_counter()
            encoder.encode(result, every)
            if n >= 10:
                times.append(1000.0 * (time.perf_counter() - start))
                if n % 20 == 0:
                    start = time.perf_counter()
                    [report_encoder.encode(result.report(i)) for i in every]
                    reference.append(1000.0 * (time.perf_counter() - start))
        row = {
            "markets": args.markets,
            "sources": args.sources,
            "requoted": share,
            "encode_p50_ms": _pct(times, 0.5),
            "encode_p99_ms": _pct(times, 0.99),
            "report_path_p50_ms": _pct(reference, 0.5),
        }
        rows.append(row)
        print(
            f"{share:>8.0%} {_fmt(row['encode_p50_ms'], '.2f'):>11} "
            f"{_fmt(row['encode_p99_ms'], '.2f'):>7} {_fmt(row['report_path_p50_ms'], '.2f'):>16}",
            flush=True,
        )
    return rows


# ------------------------------------------------------------------ output


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_steps(steps: list[Step]) -> None:
    header = (
        f"{'rate':>7} {'sent/s':>7} {'recv/s':>7} {'sim cpu':>7} {'queued':>6} {'d cpu':>6} "
        f"{'ms/10k':>7} {'rounds':>9} {'lag p99':>7} {'rss MB':>6} {'lost':>5} {'sup %':>5} ok"
    )
    print(header)
    print("-" * len(header))
    for s in steps:
        print(
            f"{s.target_rate:>7.0f} {s.sent_rate:>7.0f} {s.received_rate:>7.0f} "
            f"{s.sim_cpu_pct:>6.0f}% {s.sim_queued:>6} {s.daemon_cpu_pct:>5.0f}% "
            f"{_fmt(s.cpu_ms_per_10k):>7} {s.rounds_done:>4.0f}/{s.rounds_expected:<4.0f} "
            f"{_fmt(s.round_lag_p99_ms):>7} {s.rss_mb:>6.1f} {s.unaccounted:>5} "
            f"{_fmt(s.superseded_pct, '.0f'):>5} {'yes' if s.keeps_up else 'NO'}"
        )
        if s.dropped or s.subscriber_closed:
            print(f"        dropped={s.dropped} closed={s.subscriber_closed}")
    header = (
        f"{'rate':>7} {'watched':>9} | {'frame->subscriber p50/p99/max':>29} | "
        f"{'frame->round p50/p99':>20} | {'round->subscriber p50/p99/max':>29} | "
        f"{'sub lag p99/max':>15}  (ms)"
    )
    print(header)
    print("-" * len(header))
    for s in steps:
        print(
            f"{s.target_rate:>7.0f} {s.watched_markets:>5}{' bat' if s.batch else ' rep'} | "
            f"{_fmt(s.latency_p50_ms):>9} {_fmt(s.latency_p99_ms):>9} "
            f"{_fmt(s.latency_max_ms):>9} | {_fmt(s.frame_to_round_p50_ms):>10}"
            f"{_fmt(s.frame_to_round_p99_ms):>10} | {_fmt(s.round_to_sub_p50_ms):>9} "
            f"{_fmt(s.round_to_sub_p99_ms):>9} {_fmt(s.round_to_sub_max_ms):>9} | "
            f"{_fmt(s.sub_lag_p99_ms):>7} {_fmt(s.sub_lag_max_ms):>7}"
        )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "venue": args.venue,
        "args": {k: v for k, v in vars(args).items() if k != "json"},
    }
    if args.encode:
        doc["encode_setup"] = encode_setup_bench(args)
        doc["encode"] = encode_bench(args)
        return doc
    with tempfile.TemporaryDirectory(prefix="oracled-e2e-") as tmp:
        if args.memory:
            rows = []
            print(f"{'markets':>8} {'sources':>8} {'rss MB':>8} {'peak MB':>8} {'live':>6}")
            for markets in args.memory:
                row = await memory_step(args, markets, Path(tmp))
                rows.append(row)
                print(
                    f"{row['markets']:>8} {row['sources']:>8} {row['rss_mb']:>8.1f} "
                    f"{_fmt(row['peak_rss_mb']):>8} {row['live_markets']:>6}",
                    flush=True,
                )
            doc["memory"] = rows
            return doc
        print(
            f"{args.markets} markets x {args.sources} {args.venue} sources, "
            f"round {args.round_ms} ms, "
            f"{args.sim_procs} simulator processes "
            f"({'staggered updates' if args.stagger else 'a burst per tick'}), "
            f"{args.subscribers} subscriber(s) watching "
            f"{'every market' if args.watch <= 0 else f'{args.watch} markets'}"
            f"{' in batches' if args.batch else ', one frame per report'}; "
            + (
                f"daemon on CPU {args.daemon_cpus}, simulators and subscribers on CPU "
                f"{args.other_cpus}"
                if args.daemon_cpus
                else "not pinned"
            ),
            flush=True,
        )
        steps: list[Step] = []
        for rate in args.rates:
            step = await run_step(args, rate, Path(tmp))
            steps.append(step)
            print_steps([step])
        print()
        print_steps(steps)
        sustained = [s.sent_rate for s in steps if s.keeps_up]
        doc["steps"] = [asdict(s) for s in steps]
        doc["sustained_rate"] = max(sustained) if sustained else None
        lats = [s.latency_p99_ms for s in steps if s.keeps_up and s.latency_p99_ms is not None]
        print(
            f"\nsustained: {_fmt(doc['sustained_rate'], '.0f')} msg/s; budgets: frame-to-"
            f"subscriber p99 < {args.round_ms + 5} ms (round + 5 ms; worst sustained step: "
            f"{_fmt(max(lats) if lats else None)} ms), no loss (unaccounted frames: "
            f"{sum(s.unaccounted for s in steps)})"
        )
    return doc


def _ints(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        asyncio.run(_worker())
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markets", type=int, default=1000)
    parser.add_argument(
        "--venue",
        choices=VENUES,
        default="okx",
        help="simulated venue of every source (latency needs okx's venue times)",
    )
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument(
        "--rates", type=_ints, default=[8000, 32000], help="total messages/s, one run each"
    )
    parser.add_argument("--round-ms", type=int, default=250)
    parser.add_argument("--sim-procs", type=int, default=2, help="simulator processes")
    parser.add_argument("--subscribers", type=int, default=1)
    parser.add_argument(
        "--watch", type=int, default=0, help="markets per subscriber (0: every market)"
    )
    parser.add_argument(
        "--batch",
        action="store_true",
        help='subscribers ask for batches ("batch": true): one frame per round',
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument(
        "--memory", type=_ints, default=None, help="market counts: RSS runs instead of rates"
    )
    parser.add_argument("--memory-rate-hz", type=float, default=1.0)
    parser.add_argument(
        "--stagger",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="simulators spread each tick's updates over the tick (--no-stagger: one burst)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the daemon on the first allowed CPU, simulators and subscribers on the others",
    )
    parser.add_argument(
        "--encode", action="store_true", help="time the report encoder alone (no daemon)"
    )
    parser.add_argument("--rounds", type=int, default=200, help="rounds per --encode case")
    parser.add_argument(
        "--setup-runs", type=int, default=5, help="fresh encoders timed by --encode's set-up"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    args.daemon_cpus = args.other_cpus = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error("--pin needs at least two CPUs")
        args.daemon_cpus, args.other_cpus = cpus[:1], cpus[1:]
        os.sched_setaffinity(0, set(args.other_cpus))  # this process and the simulators
    doc = asyncio.run(main_async(args))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=2)
            out.write("\n")


if __name__ == "__main__":
    main()
