"""The runtime: wires sources, the core, the hub, the API and metrics into one asyncio process.

Each source runs in its own supervised task: a crash restarts it with backoff and never touches
another source or the round. The round loop ticks on multiples of the round interval of the
injected clock and is the only caller of `Core.run_round`. Publishing is a synchronous hand-off
to the hub (bounded queues per subscriber), so a slow consumer cannot stall a round. SIGTERM and
SIGINT stop everything within the shutdown budget.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import structlog
from aiohttp import web

from oracled import __version__, gcpause
from oracled.aggregate.book import Layout
from oracled.api import ApiContext, build_app
from oracled.api.context import READY_ROUNDS, round_limit_s
from oracled.api.limits import FD_RESERVE, GuardedSite, open_file_limit_short
from oracled.clock import FIRST_MS, Clock, SystemClock
from oracled.config import (
    Config,
    SourceConfig,
    log_config_warnings,
    parse_listen,
    read_config_text,
    slot_max_age_ms,
)
from oracled.core import Core, RoundResult
from oracled.errors import ConfigError, OracledError, ServiceStopping, TapeError, described
from oracled.files import NotRegularFileError
from oracled.logs import DRAIN_AT_EXIT_S
from oracled.manual import ManualPauses, Pause
from oracled.mark.engine import MODES
from oracled.metrics import Metrics, MetricsInputs
from oracled.model import Kind, Quote, market_name
from oracled.publish.audit import AuditReader, AuditTrail, check_audit_path
from oracled.publish.chain_push import ChainPusher, PushError, PushStats, load_push_key
from oracled.publish.hub import Hub
from oracled.publish.sign_lease import open_sign_lease, require_sign_lease
from oracled.publish.signer import RoundSigner, SignedRound, SignerWorker, load_signing_key
from oracled.publish.signstall import SignedStall
from oracled.recorder import TapeRecorder, state_file_clash
from oracled.reload import config_changes, running_config, source_pairs
from oracled.replay import chain_env_hint
from oracled.runloop import CLOSE_S, MIN_WAIT_S, run_to_end
from oracled.sources import Source, build_source
from oracled.sources.evm.runtime import ChainSet
from oracled.sources.hostrests import HostRests
from oracled.sources.stats import ConnState, SourceStats
from oracled.tape import command_to_line, pricing_digest

if TYPE_CHECKING:
    from oracled.publish.nats import NatsSink

__all__ = ["SHUTDOWN_BUDGET_S", "Service", "SourceFactory", "run_service", "silent_limits"]

#: Builds a source (the registry's `build_source`, or a test's own factory).
SourceFactory = Callable[
    [
        str,
        SourceConfig,
        list[tuple[str, Kind]],
        Callable[[Quote], None],
        Clock,
        aiohttp.ClientSession,
        SourceStats,
    ],
    Source,
]

SHUTDOWN_BUDGET_S = 5.0
#: What each part of a stop waits for at most once the tasks had their share of the budget
#: (all of it but a second): the API and the HTTP session (the API closes by the budget's
#: deadline, half a second at least), `record`'s tape, the round being signed, the audit
#: trail's queue, the pauses file.
API_CLOSE_MIN_S, SESSION_CLOSE_S, TAPE_DRAIN_S = 0.5, 0.5, 1.0
SIGNER_DRAIN_S, AUDIT_CLOSE_S, PAUSES_CLOSE_S = 0.5, 1.0, 0.5
#: The signing lease written down to the last round signed (`SignerWorker.close`).
LEASE_CLOSE_S = 0.5
#: The longest a stop can take, every part at its limit, with the event loop's close after it
#: (`runloop.run_to_end`) and the log lines still queued written at the interpreter's exit
#: (`logs.DRAIN_AT_EXIT_S`): what a supervisor must wait before SIGKILL (deploy/, with a margin
#: for the interpreter's own exit). 10.1 s; 9.1 s without `record`'s tape. A stop with nothing
#: stuck takes well under a second (benchmarks/bench_stop.py).
STOP_WORST_CASE_S = (
    SHUTDOWN_BUDGET_S
    - 1.0
    + API_CLOSE_MIN_S
    + SESSION_CLOSE_S
    + TAPE_DRAIN_S
    + SIGNER_DRAIN_S
    + LEASE_CLOSE_S
    + AUDIT_CLOSE_S
    + PAUSES_CLOSE_S
    + MIN_WAIT_S
    + 2 * CLOSE_S
    + DRAIN_AT_EXIT_S
)
NO_CONFIG_FILE = "this daemon was not started from a config file"
_RESTART_MAX_S = 30.0
#: The interpreter's default: deep enough for the daemon, shallow enough for the C stack.
RECURSION_LIMIT = 1000
#: Most rounds a blocked round loop computes afterwards in one pass (10 minutes at 250 ms, a few
#: seconds of CPU at 1,000 markets); a longer stall skips the rest, and says so.
MAX_CATCH_UP_ROUNDS = 2_400
#: How long a reload waits, at most, for a time the audit trail can part the quotes at
#: (`Service._parting_time`): on a wall clock that moves, a millisecond or two.
PARTING_WAIT_MS = 50
#: How long a reload blocks the event loop, at most, for the wall clock to turn to its next
#: millisecond (`Service._parting_time`): a millisecond on a clock that moves.
PARTING_SPIN_S = 0.01


def silent_limits(cfg: Config) -> dict[str, dict[tuple[str, Kind], int]]:
    """Per source, per (pair, kind) it quotes: the longest age any market allows that quote
    (`slot_max_age_ms`; a perpetual's is its market's max_age_ms)."""
    out: dict[str, dict[tuple[str, Kind], int]] = {}
    for market in cfg.markets:
        for ms in (*market.sources, *market.perp_sources):
            limits = out.setdefault(ms.source, {})
            key: tuple[str, Kind] = (ms.pair, ms.kind)
            limits[key] = max(limits.get(key, 0), slot_max_age_ms(cfg, market, ms))
    return out


@dataclass(frozen=True, slots=True)
class _Applied:
    """A manual pause or resume the core took, waiting for the round it first applies to."""

    ts: int  # when (the daemon's clock)
    actor: str
    action: str  # pause, resume, or restore (a pause of the pauses file put back at the start)
    market: str


async def _read_config(path: Path) -> tuple[Config, bytes]:
    """`read_config_text` (the config and its file's bytes) in a daemon thread of its own. A read
    that never returns (a hung network mount, a lease a file server does not give back; a FIFO
    is refused unread) must not hold the process: the loop's executor is joined on the way out
    (and its threads at interpreter exit), so a stop would log `stopped` and never end."""
    future: concurrent.futures.Future[tuple[Config, bytes]] = concurrent.futures.Future()

    def read() -> None:
        if not future.set_running_or_notify_cancel():  # the reload was cancelled first
            return
        try:
            future.set_result(read_config_text(path))
        except BaseException as exc:  # handed to the awaiting reload
            future.set_exception(exc)

    threading.Thread(target=read, name="config-read", daemon=True).start()
    return await asyncio.wrap_future(future)


class _Laps:
    """Seconds each part of a stop took, for the `stopped` line: the budget is only known to
    hold where it is measured (docs/runbook.md, *Signals*)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._start = self._mark = now()
        self.parts: dict[str, float] = {}

    def lap(self, part: str) -> None:
        now = self._now()
        self.parts[part] = round(now - self._mark, 3)
        self._mark = now

    def total(self) -> float:
        return round(self._now() - self._start, 3)


class Service:
    """One oracled process. `run()` returns when stopped (signal or `stop()`)."""

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Clock | None = None,
        listen: str | None = None,
        record: Path | None = None,
        record_append: bool = False,
        record_flag: str = "--out",
        source_factory: SourceFactory = build_source,
        restart_base_s: float = 1.0,
        config_path: Path | None = None,
        config_text: bytes | None = None,
        freeze_gc: bool = False,
    ) -> None:
        self.cfg = cfg
        if record is not None and (clash := state_file_clash(record, cfg, record_flag)):
            raise TapeError(clash)  # before any state file is opened: each is left as it is
        # `oracled run` freezes what start-up made (see oracled/gcpause.py); tests that run many
        # services in one process leave their collector alone.
        self._freeze_gc = freeze_gc
        self.config_path = config_path  # re-read on SIGHUP or POST /v1/admin/reload
        #: Why a reload is refused without a config file: SIGHUP's log line, the API's 409.
        self.no_reload = NO_CONFIG_FILE
        self._source_factory = source_factory
        self._restart_base_s = restart_base_s
        self.clock = clock or SystemClock()
        self.host, self.port = parse_listen(listen or cfg.api.listen)
        self._listen_key = "--listen" if listen else "api.listen"  # named if it cannot be bound
        self.core = Core(cfg)
        self.rounds_caught_up = 0  # rounds the round loop computed late, unpublished
        self.rounds_published = 0  # rounds the round loop computed on time and published
        self._caught_up_out = 0  # `rounds_caught_up` when a round last went to the signer
        self._behind_told = False  # that rounds go unpublished, older than the stall limit
        # Each perpetual market's last mark mode other than "none" (docs/mark.md), so that a
        # mark entering or leaving the fallback is logged once per change, not once per round.
        self._mark_modes: dict[str, str] = {}
        self._mark_layout: Layout | None = None  # the layout `_mark_modes` was pruned for
        self.hub = Hub(cfg.api.stream_queue)
        # Signing and the NATS sink (docs/publishing.md) take their settings at start-up only.
        self.signer = (
            RoundSigner(
                load_signing_key(cfg.signing.key_file, cfg.signing.key_env),
                cfg.signing.deployment or "",  # required when enabled (config validation)
            )
            if cfg.signing.enabled
            else None
        )
        self.hub.signer = self.signer.address if self.signer is not None else None
        if self.signer is not None:  # a bad lease file refuses the start now (ConfigError); the
            # lease itself is taken at the end of the start (`_take_lease`)
            require_sign_lease(cfg.signing.lease_file, self.signer.address)
        self.nats: NatsSink | None = None
        if cfg.nats.enabled:  # imported only then: the NATS client takes ~0.15 s to import
            from oracled.publish.nats import NatsSink

            self.nats = NatsSink(cfg.nats)
        # The audit trail and the on-chain pusher (docs/publishing.md), also start-up only.
        if cfg.audit.enabled:  # a directory there refuses the start (ConfigError)
            check_audit_path(Path(cfg.audit.path))
        self.audit = AuditTrail(cfg.audit) if cfg.audit.enabled else None
        self._started_ms = 0  # the start's time in the trail: no reload is stored before it
        if self.audit is not None:  # the config in force, first in the trail (docs/publishing.md)
            # the file `cfg` came from (`config_text`, its bytes), kept with its sha256
            path_text = None if config_path is None else str(config_path)
            self._started_ms = self.clock.now_ms()
            self.audit.record_start(self._started_ms, cfg, path_text, config_text)
        self._push_key = load_push_key(cfg.push) if cfg.push.enabled else None
        self.push_stats = PushStats() if cfg.push.enabled else None
        self.pusher: ChainPusher | None = None  # made in run(): it needs the HTTP session
        # No round signed past the stall limit: one rule decides, once per round, and its one
        # signed notice goes to every signed outlet (the streams, NATS).
        self._signed_stall = (
            SignedStall(self._stall_limit_ms, self.signer) if self.signer is not None else None
        )
        self._signing_at = 0.0  # when the round being signed was handed (`_monotonic_ms`)
        self._signer_worker = (
            SignerWorker(
                self.signer,
                self._on_signed,
                self._signing_floor(cfg, self.signer),
                on_unsigned=self._on_unsigned,
            )
            if self.signer is not None
            else None
        )
        self.log = structlog.get_logger("oracled").bind(component="service")
        #: Manual pauses and resumes the core took since its last round: the trail and the tape
        #: get them with the round they first apply to, the next one (`_applied_to`).
        self._unapplied: list[_Applied] = []
        # Operator pauses kept across restarts (oracled/manual.py): restored before any round.
        file = cfg.oracle.manual_pauses_file
        self.manual_pauses = ManualPauses(Path(file)) if file is not None else None
        self._paused: dict[str, Pause] = {}
        if self.manual_pauses is not None:
            kept = self.manual_pauses.load()
            self.manual_pauses.claim()  # another daemon on the file: logged, pauses not kept
            self._restore_pauses(kept)
        self.source_stats: dict[str, SourceStats] = {
            sid: SourceStats(source=sid) for sid, s in cfg.sources.items() if s.enabled
        }
        #: Until when each REST host rests for a limit on our IP (oracled/sources/hostrests.py):
        #: shared by every source this service builds, kept over their restarts and reloads.
        self.host_rests = HostRests()
        self.metrics = Metrics(
            MetricsInputs(
                core=self.core,
                latest=lambda: self.hub.latest_result,
                source_stats=self.source_stats,
                now_ms=self.clock.now_ms,
                stream_subscribers=lambda: self.hub.subscribers,
                stream_dropped=lambda: self.hub.dropped_subscribers,
                api_closed=lambda: self.hub.api_closed,
                admin_refused=lambda: self.hub.admin_refused,
                price_bodies_uncached=lambda: self.hub.price_bodies_uncached,
                bodies_gzipped=lambda: self.hub.bodies_gzipped,
                bodies_gzipped_off_loop=lambda: self.hub.bodies_gzipped_off_loop,
                metrics_gzipped=lambda: self.hub.metrics_gzipped,
                signer=self.signer.stats if self.signer is not None else None,
                nats=self.nats.stats if self.nats is not None else None,
                chains=lambda: self.chains.stats() if self.chains is not None else (),
                audit=self.audit.stats if self.audit is not None else None,
                push=self.push_stats,
                tasks=self._count_tasks,
                caught_up=lambda: self.rounds_caught_up,
                published=lambda: self.rounds_published,
                manual=self.manual_pauses.stats if self.manual_pauses is not None else None,
            )
        )
        # Before the port is bound: a tape that may not be written (one that exists, one that
        # another recorder writes) refuses the start (TapeError) and leaves the file untouched.
        self._recorder = (
            TapeRecorder(
                record,
                append=record_append,
                config_sha256=pricing_digest(cfg),
                flag=record_flag,
                config_hint=None
                if config_path is None
                else partial(chain_env_hint, config_path, cfg, fix="continue the tape"),
            )
            if record
            else None
        )
        if self._recorder is not None and (torn := self._recorder.torn_event()) is not None:
            self.log.warning(torn, path=str(record), line=self._recorder.torn_line)
        # The tick the round loop waits for, and the quotes stamped at or after it received
        # before its round ran (see on_quote); no tick before the loop starts.
        self._tick = 1 << 62
        self._held: list[Quote] = []
        self._tape_flush_at = 4  # the core's round count at which `record`'s lines go next
        self._stop = asyncio.Event()
        self.bound_port: int | None = None
        self.failed = False  # stopped by an error, not asked to: `oracled run` exits 1
        self.started = asyncio.Event()
        #: Time for tasks, the API and the sinks to stop (tests shorten it).
        self.shutdown_budget_s = SHUTDOWN_BUDGET_S
        self.stop_deadline: float | None = None  # the loop's time the stop must end by
        #: When (clock.monotonic()) the round loop last published, or started: /readyz, /healthz.
        self.round_at: float | None = None
        #: How long after its time the latest round was published, s (the API's stall rule).
        self.round_late_s = 0.0
        #: The floors of their round-age limits (oracled/api/ops.py; tests lower them).
        self.ready_min_s, self.alive_min_s = 5.0, 60.0
        self._source_tasks: dict[str, asyncio.Task[None]] = {}
        # The sources' silence limits, and the config they were computed from (`_silent_limits`).
        self._limits: tuple[Config, dict[str, dict[tuple[str, Kind], int]]] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.chains: ChainSet | None = None  # the chain readers, made in run()
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # set by run(); read by /metrics
        #: SIGHUPs the command line caught before run() handles them (oracled/cli.py).
        self.early_hangups: Callable[[], int] = lambda: 0
        #: The SIGTERM or SIGINT the command line caught before run() handles them, if any.
        self.early_stop: Callable[[], signal.Signals | None] = lambda: None

    # -- the quote path -------------------------------------------------------------------
    def on_quote(self, quote: Quote) -> None:
        """Every source's emit callback: record, then hand to the core (which counts drops).

        A quote received after the tick the round loop waits for, before that round ran (the
        loop wakes a little late), is held for the next round: a replay of the tape puts it
        there (a quote takes part in the rounds at or after its receive time), so the live
        round must too, or its price would differ from the replay's, with a negative `age_ms`.
        One stamped at the tick itself is held until right before that round: a reload applied
        while the loop is late is stored a millisecond before the tick (`_applied_at`), and a
        replay of the trail takes such a quote under it, so the core must too."""
        if self._recorder is not None:
            self._recorder.add(quote)
        if self.audit is not None:
            self.audit.add_quote(quote)
        if quote.recv_ts >= self._tick:
            self._held.append(quote)
        else:
            self.core.ingest(quote)

    def _release_held(self, upto: int) -> None:
        """Hand the core the held quotes whose time has come (`ts` at or before `upto`)."""
        held, self._held = self._held, []
        for quote in held:
            if quote.recv_ts <= upto:
                self.core.ingest(quote)
            else:
                self._held.append(quote)

    def on_manual(
        self, market: str, paused: bool, actor: str
    ) -> concurrent.futures.Future[str | None] | None:
        """Apply an operator pause or resume at once; the save of the pauses file, whose result
        is why it could not be written (None: on disk), or None without a file."""
        self.core.set_manual(market, paused)
        action = "pause" if paused else "resume"
        self.metrics.manual_actions.labels(market, action).inc()
        self.log.warning("manual gate", market=market, action=action, actor=actor)
        self._unapplied.append(_Applied(self.clock.now_ms(), actor, action, market))
        if paused:
            self._paused[market] = Pause(actor, self.clock.now_ms())
        else:
            self._paused.pop(market, None)
        return self._save_pauses()

    def _restore_pauses(self, kept: dict[str, Pause]) -> None:
        """Pause again what an operator paused before the restart; a market the config no
        longer has is dropped from the file, with a warning. A market named as the admin API
        takes it (`btc-usdt`: a file written by hand) is that market, kept under its name: it
        was dropped as unknown, and the market went live."""
        for key, pause in kept.items():
            market = market_name(key) or key
            if market in self.core.index:
                self.core.set_manual(market, True)
                self._paused[market] = pause
                self._unapplied.append(
                    _Applied(self.clock.now_ms(), pause.actor, "restore", market)
                )
                self.log.warning(
                    "manual pause restored", market=market, actor=pause.actor, since_ms=pause.ts
                )
            else:
                self.log.warning(
                    "manual pause of a market no longer configured dropped", market=key
                )
        if self._paused != kept:  # one dropped, or kept under its canonical name
            self._save_pauses()

    def _applied_to(self, tick: int) -> None:
        """Before the round at `tick` runs: the manual commands the core took since the last
        round first apply to it, so they go to the trail and the tape with its number and time
        (a replay applies each before exactly that round, docs/contracts.md)."""
        applied, self._unapplied = self._unapplied, []
        number = self.core.rounds + 1
        for cmd in applied:
            if self.audit is not None:
                self.audit.record_action(cmd.ts, cmd.actor, cmd.action, cmd.market, number, tick)
            if self._recorder is not None:
                paused = cmd.action != "resume"
                line = command_to_line(tick, number, cmd.market, paused, cmd.actor)
                if not self._recorder.commands:
                    self.log.warning(
                        "tape: a version 1 tape continued holds no manual command: a replay"
                        " differs from this round on",
                        market=cmd.market,
                        action=cmd.action,
                        round=number,
                    )
                self._recorder.add_command(line, tick)

    def _save_pauses(self) -> concurrent.futures.Future[str | None] | None:
        return None if self.manual_pauses is None else self.manual_pauses.save(self._paused)

    def stop(self) -> None:
        self._stop.set()

    def _count_tasks(self) -> int:
        """Tasks alive on the running loop; safe from the metrics executor thread (asyncio
        copies its task set before filtering it)."""
        loop = self._loop
        return 0 if loop is None or loop.is_closed() else len(asyncio.all_tasks(loop))

    # -- tasks ----------------------------------------------------------------------------
    def _pairs(self, sid: str) -> list[tuple[str, Kind]]:
        return source_pairs(self.cfg, sid)  # type: ignore[return-value]  # kinds come validated

    def _silent_limits(self, sid: str) -> Mapping[tuple[str, Kind], int]:
        """How long each instrument of `sid` may go without a quote on a streaming connection
        before the source lists it silent: the longest age any market allows it, after which
        it is of no use to any. Read at each of the source's scans, so it follows a reload
        (which restarts no source for a changed max_age_ms)."""
        if self._limits is None or self._limits[0] is not self.cfg:
            self._limits = (self.cfg, silent_limits(self.cfg))
        return self._limits[1].get(sid, {})

    def _start_source(self, sid: str) -> None:
        """Start the supervised task of one source, if it is enabled and used by a market.

        A source not started has no `oracled_source_*` series: one stuck at `up` 0 would fire
        OracledSourceDown for a source that is off on purpose."""
        if self._stop.is_set():  # a reload the stop overtook: run() no longer collects tasks
            return
        src = self.cfg.sources.get(sid)
        if src is None or not src.enabled:
            if src is not None:
                self.log.info("source disabled", source=sid)
            self._drop_source_series(sid)
            return
        if not self._pairs(sid):
            self.log.info("source unused by any market", source=sid)
            self._drop_source_series(sid)
            return
        if self.chains is not None and not self.chains.usable(src):
            chain = self.cfg.chains.get(src.chain or "")
            if chain is not None and chain.resolved_urls:  # a reload added it: not in the start
                self.log.warning(
                    "source not started: its chain is read from the next restart",
                    source=sid,
                    chain=src.chain,
                )
            else:
                self.log.info(
                    "source disabled: its chain has no RPC URL", source=sid, chain=src.chain
                )
            self._drop_source_series(sid)
            return
        if self.chains is not None and (reader := self.chains.read(src)) is not None:
            self._keep(reader)  # a reload started the first source of its chain
        assert self._session is not None
        self.source_stats.setdefault(sid, SourceStats(source=sid))
        self.metrics.source_restarts.labels(sid)  # exists at 0, as for the sources of the start
        self._source_tasks[sid] = asyncio.create_task(
            self._supervise(sid, self._session), name=f"source:{sid}"
        )

    def _drop_source_series(self, sid: str) -> None:
        self.source_stats.pop(sid, None)
        with contextlib.suppress(KeyError):
            self.metrics.source_restarts.remove(sid)

    async def _stop_sources(self, sids: Iterable[str]) -> None:
        """Cancel every one of `sids` at once, then wait for them all: none streams on while
        another closes its connection."""
        tasks = [task for sid in sids if (task := self._source_tasks.pop(sid, None)) is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- reload ---------------------------------------------------------------------------
    async def reload(self, actor: str = "signal") -> dict[str, object]:
        """Re-read the config file and apply it between rounds; ConfigError leaves all as it was.

        Markets and thresholds swap in the core (state kept where it still applies); exactly the
        sources whose settings or pairs changed are stopped, started or restarted. Settings only
        a restart applies (`reload.RESTART_ONLY`) keep their running values and are reported.
        """
        if self.config_path is None:
            raise ConfigError([self.no_reload])
        self._refuse_if_stopping(actor)
        async with self._reload_lock:
            self._refuse_if_stopping(actor)  # the stop began while an earlier reload ran
            try:
                new, text = await _read_config(self.config_path)
            except ConfigError as exc:
                self.metrics.reloads.labels("refused").inc()
                self.metrics.reload_ok.set(0)
                self.log.error("config reload refused", actor=actor, problems=exc.problems)
                raise
            self._refuse_if_stopping(actor)  # the stop began while the file was read
            loaded = new  # as the file parsed: the trail keeps its text and pricing digest
            new = new.model_copy(update={"admin_token": self.cfg.admin_token})
            changes = config_changes(self.cfg, new)
            new = running_config(self.cfg, new)  # restart-only settings keep running values
            # Stopped, all at once, before the swap: a source still running under the new
            # config would put its old feed's (or, disabled, any) quotes in the new book.
            await self._stop_sources(changes.sources_restarted)
            at = await self._parting_time(actor)
            self._refuse_if_stopping(actor)  # the stop began while the sources stopped
            self.core.reconfigure(new)
            old, self.cfg = self.cfg, new
            if self._recorder is not None:
                self._tape_reloaded(old, new)
            if self.pusher is not None:  # the two `[push]` keys a reload applies
                self.pusher.reconfigure(new.push)
            for sid in changes.sources_restarted:
                self._start_source(sid)
            self.hub.markets_removed(changes.markets_removed)
            for market in changes.markets_removed:  # its gauges went with the layout
                self.metrics.forget_market(market)
            gone = [m for m in self._paused if m not in self.core.index]
            for market in gone:  # a market the reload removed takes its pause with it
                del self._paused[market]
            if gone:
                self._save_pauses()
            self.metrics.reloads.labels("applied").inc()
            self.metrics.reload_ok.set(1)
            self.log.warning("config reloaded", actor=actor, **changes.as_dict())
            if self.audit is not None:
                self.audit.record_config(
                    at,
                    "reload",
                    actor,
                    str(self.config_path),
                    hashlib.sha256(text).hexdigest(),
                    json.dumps(changes.as_dict(), sort_keys=True, default=str),
                    text=text,
                    loaded=loaded,
                )
            log_config_warnings(new, self.log)  # valid, but maybe not what was meant
            self._check_open_file_limit()
            if self.chains is not None:  # after the starts: a restarted source keeps its reader
                await self.chains.release(self.cfg.sources[sid] for sid in self._source_tasks)
            return changes.as_dict()

    def _tape_reloaded(self, old: Config, new: Config) -> None:
        """Say when a reload changed what prices the rounds (`pricing_digest`) under `record`:
        the tape's header names the config the recording began with, true for every line of it
        until now, and no line carries a reload, so its replay may differ from the next round
        on (docs/contracts.md). Without this line a reload left no trace of it in the tape or
        the log, and the replay's difference looked like a fault of the daemon's."""
        digest = pricing_digest(new)
        if digest != pricing_digest(old):
            self.log.warning(
                "tape: a reload changed the pricing config; a replay of the tape may differ from"
                " this round on",
                round=self.core.rounds + 1,
                config_sha256=digest,
            )

    def _applied_at(self) -> tuple[int, bool]:
        """The time the trail gives a reload applied now, and whether it parts the quotes and
        rounds as the daemon took them: a replay applies a reload after every quote stamped at
        or before that time and before every later one, and before the first round after it.

        It is a millisecond before now: the quotes stamped now come after the reload, provided
        the core took none yet (`_parting_time` waits till then). When the round loop is late
        (the tick it waits for has passed, its round not run yet), a millisecond before that
        tick: that round is computed under the new config, and so are the quotes stamped at or
        after the tick, which the core takes right before it or after it (`on_quote`); so the
        trail's timeline (`config_at`, `audit --tape`'s warning, `audit --replay`) puts the
        reload before it, not after it. Nor before the round run last (after it), or the start:
        a wall clock stepped back puts now there, and the trail gave the rounds run under the
        old config the new one (before the start: none of them, the reload left out of its
        start); such a time parts nothing exactly."""
        now = self.clock.now_ms()
        at = min(now, self._tick) - 1
        floor = self._started_ms + 1
        if self._tick != 1 << 62:  # the loop has a tick: the round before it has run
            floor = max(floor, self._tick - self.cfg.oracle.round_interval_ms + 1)
        # The newest quote the core took: the audit trail's newest, which the core took unless
        # the loop is late (then at is before the tick, and the quotes stamped after it wait
        # for its round: nothing to part). Read here, not kept per quote on the hot path.
        taken = 0 if now >= self._tick or self.audit is None else self.audit.newest_quote_ms()
        return max(at, floor), floor <= at and taken <= at

    async def _parting_time(self, actor: str) -> int:
        """The time the trail gives the reload about to be applied: once it parts the quotes
        and rounds as the daemon takes them (`_applied_at`), the wall clock past the millisecond
        of the newest quote the core took and of the round run last, a millisecond or two at
        most. The first wait blocks the loop until the clock turns to its next millisecond:
        awaited, a busy loop has the sources take quotes stamped in the new millisecond before
        the reload looks again, and seldom leaves one without. A clock that stands still, or
        one stepped back, is waited for `PARTING_WAIT_MS` at most: the reload is applied then
        all the same, and logged, since a replay of the trail may take the quotes of its
        millisecond under the other config. Without a trail there is no wait: a tape of
        `record` holds no reload."""
        for k in range(PARTING_WAIT_MS if self.audit is not None else 0):
            at, parts = self._applied_at()
            if parts:
                return at
            if k == 0:
                self._next_millisecond()
                at, parts = self._applied_at()
                if parts:
                    return at
            await asyncio.sleep(0.001)
        at, parts = self._applied_at()
        if not parts and self.audit is not None:
            self.log.warning(
                "config reload applied with the wall clock standing still or stepped back: a"
                " replay of the audit trail may take the quotes of its millisecond under the"
                " other config",
                actor=actor,
                ts=at,
            )
        return at

    def _next_millisecond(self) -> None:
        """Block the event loop until the wall clock's millisecond turns, `PARTING_SPIN_S` at
        most: no source takes a quote meanwhile, so the quotes the core took are all stamped
        before the new millisecond when the reload looks right after."""
        now, until = self.clock.now_ms(), time.monotonic() + PARTING_SPIN_S
        while self.clock.now_ms() == now and time.monotonic() < until:
            pass

    def _refuse_if_stopping(self, actor: str) -> None:
        """A reload once the stop began (an admin request in the API's last moments, or one
        that was reading its file) would start sources that outlive run(): refuse it."""
        if self._stop.is_set():
            self.log.warning("config reload refused: the daemon is stopping", actor=actor)
            raise ServiceStopping("the daemon is stopping; the reload was not applied")

    def _on_hangup(self) -> None:
        if self._stop.is_set():  # a reload now would outlive run(): sources on a closed session
            self.log.warning("SIGHUP ignored: the daemon is stopping")
            return
        if self.config_path is None:  # `oracled demo`, or a service made without a file
            self.log.warning(f"SIGHUP ignored: {self.no_reload}")
            return
        self._keep(asyncio.get_running_loop().create_task(self._reload_quietly(), name="reload"))

    def _keep(self, task: asyncio.Task[None]) -> None:
        """Hold a task the stop cancels until it ends (a reload stops a chain's reader)."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reload_quietly(self) -> None:
        # A SIGHUP while starting reloads once the sources run: a reload applied before they
        # start would restart a source without the HTTP session (a stop cancels this wait).
        await self.started.wait()
        with contextlib.suppress(ConfigError, ServiceStopping):  # already logged
            await self.reload("SIGHUP")

    async def _supervise(self, sid: str, session: aiohttp.ClientSession) -> None:
        """Run one source forever; restart it with capped exponential backoff if it crashes."""
        stats = self.source_stats[sid]
        log = self.log.bind(source=sid)
        delay = self._restart_base_s
        try:
            while True:
                source = self._source_factory(
                    sid,
                    self.cfg.sources[sid],
                    self._pairs(sid),
                    self.on_quote,
                    self.clock,
                    session,
                    stats,
                )
                source.max_clock_skew_ms = self.cfg.oracle.max_clock_skew_ms
                source.host_rests = self.host_rests  # one IP: its limits rest every source
                source.silent_after_ms = lambda: self._silent_limits(sid)
                if self.chains is not None:
                    self.chains.attach(source)  # on-chain sources read through their chain
                started = time.monotonic()
                try:
                    await source.run()
                    log.error("source returned unexpectedly; restarting")
                except Exception:  # the supervisor's job: log, count, restart
                    log.exception("source crashed; restarting", delay_s=delay)
                stats.restarts += 1
                stats.state = ConnState.DOWN
                self.metrics.source_restarts.labels(sid).inc()
                if time.monotonic() - started > 60.0:
                    delay = self._restart_base_s
                await asyncio.sleep(delay)
                delay = min(delay * 2.0, _RESTART_MAX_S)
        finally:
            stats.state = ConnState.STOPPED

    async def _round_loop(self) -> None:
        interval = self.cfg.oracle.round_interval_ms
        log = self.log.bind(component="gates")
        last = -1  # the last round's time: each round is the one after it, none is left out
        waiting = False  # for a wall clock that went back to pass the last round again
        still = False  # for a wall clock that stopped (or lags the monotonic one) to move on
        self.round_at = self.clock.monotonic()  # /healthz counts a first round's wait from here
        mark = self.clock.now_ms(), self.round_at  # both clocks after the last round
        unset = False  # told that the wall clock was never set
        while True:
            now = self.clock.now_ms()
            if last < 0 and now < FIRST_MS:  # never set: no round, no signature, no lease at 1970
                if not unset:
                    log.error("wall clock is not set: rounds wait for it", now_ms=now)
                    unset = True
                await asyncio.sleep(interval / 1000.0)
                continue
            tick = last + interval if last >= 0 else -(-now // interval) * interval
            self._tick = tick  # the next round, also while a clock that went back is waited for
            if tick - now > interval:  # the wall clock went back: wait, looking every interval
                if not waiting:
                    log.warning("wall clock went back: rounds wait for it", by_ms=last - now)
                waiting = still = True  # told: not told again as a still clock
                await asyncio.sleep(interval / 1000.0)
                continue
            waiting = False
            self._release_held(tick - 1)  # those stamped at the tick: right before its round
            await asyncio.sleep((tick - now) / 1000.0)
            if self.clock.now_ms() <= tick:
                # A quote is stamped and handed over in one step, so once the clock has passed
                # the tick every quote stamped with it is in: one that came after the round,
                # still in its millisecond, would take part in the next round here and in this
                # one in a replay (a quote takes part in the rounds at or after its time). From
                # the top: a clock that went back meanwhile is waited for there, and logged.
                if last < 0:
                    last = tick - interval  # the first round keeps its time, not the next one
                wall_ms, mono_s = mark
                lag = (
                    round(1000 * (self.clock.monotonic() - mono_s)) + wall_ms - self.clock.now_ms()
                )
                if lag > 2 * interval and not still:  # said once, until a round runs
                    log.warning("wall clock stands still: rounds wait for it", behind_ms=lag)
                    still = True
                await asyncio.sleep(0.001)
                continue
            behind = self.clock.now_ms() - tick
            if behind > interval:  # the loop was late: the missed rounds, then the present
                missed = behind // interval
                # Late by the wall clock alone, not by the monotonic one: a step forward, not
                # a blocked loop (the rounds passed are computed late all the same, as a
                # replay of the tape runs them).
                wall_ms, mono_s = mark
                stepped = tick + behind - wall_ms - round(1000 * (self.clock.monotonic() - mono_s))
                if stepped > interval:
                    log.warning(
                        "wall clock went forward: its rounds are computed late",
                        by_ms=stepped,
                        rounds=missed,
                    )
                tick = await self._catch_up(tick, missed, interval, log)
            self._release_held(tick)
            self.metrics.round_lag.observe(max(0, self.clock.now_ms() - tick) / 1000.0)
            if self._unapplied:
                self._applied_to(tick)
            started = time.perf_counter()
            result = self.core.run_round(tick)
            late, limit = self.clock.now_ms() - tick, self._publish_limit_ms()
            if late > limit:  # it would be stale before the next round could replace it
                self._hold_back(result, late, limit, log)
                last = tick
                self._flush_tape()
                continue
            self._behind_told = False
            if self._recorder is not None and not self.rounds_published:
                self._recorder.number(result.round, result.ts)
            self.rounds_published += 1
            last = tick
            self.metrics.round_duration.observe(time.perf_counter() - started)
            self.hub.publish(result)
            self.round_at = self.clock.monotonic()
            self.round_late_s = max(0, self.clock.now_ms() - tick) / 1000.0
            mark, still = (self.clock.now_ms(), self.round_at), False
            self._publish_round(result)
            if self.audit is not None:
                self.audit.submit(result)  # a queue put: the disk is the worker thread's
            if self.pusher is not None:
                self.pusher.submit(result)  # replaces the latest: the chain never holds a round
            self._log_transitions(result, log)
            self._flush_tape()

    def _flush_tape(self) -> None:
        """Every 4 rounds computed, published or not, hand `record`'s lines to its writer
        (never waiting: the disk may be slow). Counted by published round numbers, a loop
        behind its clock flushed nothing while it published nothing (or only rounds numbered
        off the multiples of 4), and its lines piled up until the backlog stopped the tape.
        None before the first round is published: it numbers the tape's header."""
        if self._recorder is None or not self.rounds_published:
            return
        if self.core.rounds < self._tape_flush_at:
            return
        self._tape_flush_at = self.core.rounds + 4
        self._recorder.flush()
        error = self._recorder.take_error()
        if error is not None:
            self._tape_failed(error)

    @property
    def tape_error(self) -> str | None:
        """Why `record`'s tape stopped short (it is complete up to there), or None."""
        return None if self._recorder is None else self._recorder.error

    def _tape_failed(self, error: str) -> None:
        assert self._recorder is not None
        self.log.error(
            "tape not written: recording stopped; prices go on",
            path=str(self._recorder.path),
            error=error,
        )

    async def _catch_up(
        self, first: int, missed: int, interval: int, log: structlog.typing.FilteringBoundLogger
    ) -> int:
        """Compute the rounds a blocked loop missed, in order and unpublished (their time has
        passed), and return the time of the round to publish. A replay of the tape runs every
        round (docs/contracts.md), so the gates' streaks and the round numbers only match it if
        the daemon runs them too.

        The catch-up takes time as well (seconds at 1,000 markets), and the round after it, had
        it been chosen before, would have been published as old as the catch-up took: the
        rounds whose time passed meanwhile are caught up too, pass after pass, while each pass
        is shorter than the one before. A core slower than its clock never catches up: the
        round after its last pass is the one returned (published only if it stays within the
        stall limit until the next round is due, `_hold_back`).

        The loop's other tasks (the sources' sockets, the API) run between two passes: together
        the passes take up to 1 / (1 - r) times the first, r the share of an interval a round
        takes (ten times at 0.9), too long to leave every socket unread. What arrives meanwhile
        is held for the round of its time, as while the loop waits (`on_quote`)."""
        while True:
            # Counted, not logged: a loaded loop does it often.
            run = min(missed, MAX_CATCH_UP_ROUNDS)
            if run < missed:  # past the cap, the oldest are skipped: only those a replay runs
                log.warning(
                    "round loop blocked past the catch-up limit: a replay differs from here",
                    missed=missed,
                    skipped=missed - run,
                )
            for k in range(missed - run, missed):
                round_ts = first + k * interval
                self._release_held(round_ts)
                if self._unapplied:
                    self._applied_to(round_ts)
                self._log_transitions(self.core.run_round(round_ts), log)
            self.rounds_caught_up += run
            first += missed * interval
            behind = self.clock.now_ms() - first
            if behind <= interval or behind // interval >= run:  # caught up, or never will
                return first
            missed = behind // interval
            self._tick = first  # the next round to compute: a quote stamped later is held
            await asyncio.sleep(0)

    def _hold_back(
        self,
        result: RoundResult,
        late: int,
        limit: float,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        """Keep the round just computed, `late` ms past its time, unpublished, counted as
        caught up: it is past `limit` (`_publish_limit_ms`). A core slower than its clock gets
        here (`_catch_up`); its rounds would go out older every time, each served as current,
        or go stale before the next one came, so that the API and the streams flipped between
        prices and `stalled` every round: none goes out rather, so that the API says `stalled`
        after the limit, once, as for a loop that publishes nothing. Said once, until a round
        goes out."""
        if not self._behind_told:
            log.warning(
                "round loop behind its clock past the stall limit: rounds are computed, "
                "not published",
                behind_ms=late,
                limit_ms=round(limit),
            )
            self._behind_told = True
        self._log_transitions(result, log)
        self.rounds_caught_up += 1

    @staticmethod
    def _signing_floor(cfg: Config, signer: RoundSigner) -> int | None:
        """The newest round time this key signed, from the audit trail (read before its writer
        starts): a restart with the clock behind must not sign those times again, which every
        consumer would see as equivocation. None without a trail (docs/publishing.md says what
        that leaves unprotected)."""
        path = Path(cfg.audit.path)
        if not cfg.audit.enabled or not path.exists():
            return None
        log = structlog.get_logger("oracled").bind(component="signer")
        try:
            reader = AuditReader(path)
            try:
                floor = reader.last_signed_ts(signer.address)
            finally:
                reader.close()
        except (sqlite3.Error, OracledError, NotRegularFileError) as exc:
            log.error("signing floor not read: no floor", path=str(path), error=described(exc))
            return None
        if floor is not None:
            log.info("signing floor", floor=floor, signer=signer.address)
        return floor

    def _publish_round(self, result: RoundResult) -> None:
        """Hand a round to the signer (which publishes it once signed) or straight to NATS.
        The first round out after rounds went unpublished (a stall, `_catch_up`) is signed, and
        a signature of a round before the stall still on its way is not sent after it."""
        worker = self._signer_worker
        if worker is not None:
            resumed, self._caught_up_out = (
                self.rounds_caught_up != self._caught_up_out,
                self.rounds_caught_up,
            )
            worker.submit(result, resumed)
            if worker.signing == result.ts:  # being signed: when, for the stall rule
                self._signing_at = self._monotonic_ms()
        elif self.nats is not None:
            self.nats.submit(result)

    def _on_signed(self, signed: SignedRound) -> None:
        assert self._signed_stall is not None  # a signer's callback
        # A stall notice told: it ends.
        if self._signed_stall.signed(signed.ts, signed.round, self._monotonic_ms()):
            self.log.info(
                "signed rounds again",
                outlets=self._signed_outlets,
                ts=signed.ts,
                round=signed.round,
            )
        self.hub.publish_signed(signed)
        if self.nats is not None:
            self.nats.submit(signed)
        if self.audit is not None:
            self.audit.submit_signed(signed)

    def _monotonic_ms(self) -> float:
        """The stall rule's time: the monotonic clock's, as the API's stall watch reads it (a
        round's time is the wall clock's, which a step forward moves past the limit at once)."""
        return self.clock.monotonic() * 1000.0

    def _publish_limit_ms(self) -> float:
        """How late (ms) a round may go out: the stall limit less one interval, so that a round
        published stays within the limit until the next one is due. Published up to the limit
        itself, a round the API takes for stalled within an interval flipped the price
        endpoints to 503 and sent a `stalled` notice on every round."""
        return self._stall_limit_ms() - self.core.config.oracle.round_interval_ms

    def _stall_limit_ms(self) -> float:
        """The API's stall limit (`ApiContext.stalled`), for the notice of rounds that go
        unsigned (NATS, the signed streams): one limit for both ways a signed price stops
        coming."""
        interval_ms = self.core.config.oracle.round_interval_ms
        return 1000.0 * round_limit_s(interval_ms, READY_ROUNDS, self.ready_min_s)

    def _on_unsigned(self, result: RoundResult, reason: str) -> None:
        """A round the signer left unsigned (`reason`, as counted). Once no round has been signed
        for the stall limit (the one being signed, if any, counts as signed), the rule makes one
        signed notice, once per stall: the streams' signed subscribers get it as their
        `stalled` frame (docs/contracts.md), NATS the same bytes on its stall subject. NATS
        sends nothing of the round but counts it, learns that the round loop runs (a stall
        notice of the loop it holds is over) and keeps the signed notice while it lasts."""
        assert self._signer_worker is not None and self._signed_stall is not None  # its callback
        signing = None if self._signer_worker.signing is None else self._signing_at
        told = self._signed_stall.unsigned(reason, self._monotonic_ms(), signing)
        if told is not None:
            self.hub.signed_stalled(told.notice)
            self.log.warning(
                "stall notice: no round signed",
                outlets=self._signed_outlets,
                reason=reason,
                ts=told.ts,
                round=told.round,
                unsigned_ts=result.ts,
                unsigned_round=result.round,
            )
        if self.nats is not None:
            self.nats.unsigned(result, self._signed_stall.notice)

    @property
    def _signed_outlets(self) -> list[str]:
        """Where signed rounds and their stall notices go, for the log lines."""
        return ["streams", "nats"] if self.nats is not None else ["streams"]

    def _log_transitions(
        self, result: RoundResult, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        for t in result.transitions:
            self.metrics.transitions.labels(t.market, t.new).inc()
            level = log.info if t.new in ("active", "degraded") else log.warning
            level(
                "market status",
                market=t.market,
                old=t.old,
                new=t.new,
                reasons=list(t.reasons),
                round=result.round,
            )
        if result.layout is not self._mark_layout:  # a reload: a market no longer perpetual
            self._mark_layout = result.layout  # forgets its mode, so a later mark is a new one
            kept = () if result.mark is None else result.mark.markets
            perpetual = {result.layout.markets[i] for i in kept}
            self._mark_modes = {m: v for m, v in self._mark_modes.items() if m in perpetual}
        if result.mark is not None:
            self._log_mark_modes(result, log)

    def _log_mark_modes(
        self, result: RoundResult, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        """`mark fallback` when a market's mark enters the fallback (fewer perpetuals than
        `min_perp_sources` count), `mark from perpetuals` when it leaves it. A round without a
        live index ("none") changes nothing: the market's status line says why. From the
        round's arrays: its `values` would make every market's MarkValues each round."""
        mark = result.mark
        assert mark is not None
        markets, modes = result.layout.markets, self._mark_modes
        rows = zip(mark.markets, mark.modes.tolist(), mark.perps_used.tolist(), strict=True)
        for i, code, used in rows:
            mode = MODES[code]
            if mode == "none" or modes.get(markets[i]) == mode:
                continue
            was = modes.get(markets[i])
            modes[markets[i]] = mode
            if mode == "fallback":
                log.warning("mark fallback", market=markets[i], perps_used=used, round=result.round)
            elif was is not None:
                log.info(
                    "mark from perpetuals", market=markets[i], perps_used=used, round=result.round
                )

    async def _start_api(self) -> web.AppRunner:
        ctx = ApiContext(
            hub=self.hub,
            core=self.core,
            config=self.cfg,
            source_stats=self.source_stats,
            clock=self.clock,
            render_metrics=self.metrics.render,
            on_manual=self.on_manual,
            version=__version__,
            on_reload=self.reload if self.config_path is not None else None,
            reload_unavailable=self.no_reload,
            round_at=lambda: self.round_at,
            round_late_s=lambda: self.round_late_s,
            # A stalled loop: the stall watch signs one notice for the signed streams and NATS.
            signer=self.signer,
            on_stalled=self.nats.stalled if self.nats is not None else None,
            signed_floor=self._unsigned_floor,
            ready_min_s=self.ready_min_s,
            alive_min_s=self.alive_min_s,
            listen_host=self.host,
        )
        runner = web.AppRunner(
            build_app(ctx),
            handle_signals=False,
            access_log=None,
            keepalive_timeout=self.cfg.api.idle_timeout_s,
        )
        await runner.setup()
        site = GuardedSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            # Still an OSError (exit 1, restarted: a port may be released, a name resolve, an
            # address come up), but saying which setting asked for what: the resolver's bare
            # "Name or service not known" named neither. Made from the message alone, as an
            # OSError of two arguments would print "[Errno 98] " before the OS's reason, which
            # the message already gives in words; the code stays on it for a caller.
            why = (exc.strerror or str(exc)).rpartition(": ")[2]
            failed = OSError(
                f"{self._listen_key}: cannot listen on {self.host}:{self.port} ({why})"
            )
            failed.errno = exc.errno
            raise failed from exc
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        self.bound_port = int(sockets[0].getsockname()[1]) if sockets else self.port
        admin = "on" if self.cfg.admin_token else "off (no admin token configured)"
        self.log.info("api listening", host=self.host, port=self.bound_port, admin=admin)
        self._check_open_file_limit()
        return runner

    def _check_open_file_limit(self) -> None:
        """Say so when api.max_connections cannot be reached: the kernel's limit comes first."""
        cap = self.cfg.api.max_connections
        limit = open_file_limit_short(cap)
        if limit is not None:
            self.log.warning(
                "open-file limit below api.max_connections",
                limit=limit,
                max_connections=cap,
                reserve=FD_RESERVE,
                fix="raise the limit (LimitNOFILE, ulimit -n) or lower api.max_connections",
            )

    async def run(self) -> None:
        """Run until stopped; cancel everything and close within the shutdown budget.

        A stop asked for before or while it starts (`early_stop`, or a signal while the API
        starts) starts nothing more: no half-started daemon, and no `oracled started` line."""
        loop = self._loop = asyncio.get_running_loop()
        previous = self._handle_signals(loop)
        early = self.early_stop()
        if early is not None:  # asked to stop while the process was starting
            self._on_signal(early)
        elif self.early_hangups():  # a reload asked for while the process was starting
            self._on_hangup()
        runner: web.AppRunner | None = None
        session: aiohttp.ClientSession | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            if not self._stop.is_set():
                runner = await self._start_api()
            if not self._stop.is_set():  # from here on nothing awaits: it starts whole
                session = self._start(tasks)
            await self._stop.wait()
        finally:
            self.log.info("shutting down")
            self.stop_deadline = loop.time() + self.shutdown_budget_s
            laps = _Laps(loop.time)  # what each part of the stop took: the `stopped` line
            tasks += [*self._source_tasks.values(), *self._background]
            for task in tasks:
                task.cancel()
            deadline = loop.time() + self.shutdown_budget_s - 1.0
            if tasks:  # not gather: cancelled at the deadline, it waits for a task that ignores it
                done, _ = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
                for task in done:
                    if not task.cancelled():
                        task.exception()  # retrieved: a task that failed has logged it
            laps.lap("tasks")
            # A task that outlived the budget (a bug, a blocking library) must not leave the API
            # listening or the session's sockets open: they close whatever the tasks did, with
            # at least half a second each.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(max(deadline, loop.time() + API_CLOSE_MIN_S)):
                    await self.hub.close()
                    if runner is not None:
                        await runner.cleanup()
            laps.lap("api")
            session = session or self._session  # a start refused half-way made it already
            if session is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SESSION_CLOSE_S):
                        await session.close()
            laps.lap("session")
            if self._recorder is not None:
                await self._recorder.drain(TAPE_DRAIN_S)
                error = self._recorder.close()
                if error is not None:
                    self._tape_failed(error)
                laps.lap("tape")
            if self._signer_worker is not None:
                if not await self._signer_worker.drain(SIGNER_DRAIN_S):
                    self.log.warning("the last round's signature was not ready at the stop")
                if not self._signer_worker.close(LEASE_CLOSE_S):
                    self.log.warning(  # the lease on disk stays higher: a restart waits it out
                        "signing lease not written down within its 0.5 s: a restart waits for "
                        "the clock to pass it"
                    )
                laps.lap("signer")
            if self.audit is not None:
                for cmd in self._unapplied:  # taken after the last round: no round has them
                    self.audit.record_action(cmd.ts, cmd.actor, cmd.action, cmd.market)
                if not self.audit.close(AUDIT_CLOSE_S):
                    self.log.warning(  # its worker waits for the disk or the database's lock
                        "audit trail not finished within its 1 s: the last rounds may be missing",
                        path=str(self.audit.path),
                    )
                laps.lap("audit")
            if self.manual_pauses is not None:
                if not self.manual_pauses.close(PAUSES_CLOSE_S):
                    self.log.warning(  # its thread is left to the disk; it holds no exit
                        "manual pauses file not closed: a write is stuck",
                        path=str(self.manual_pauses.path),
                    )
                laps.lap("pauses")
            self._release_signals(loop, previous)
            self.log.info("stopped", took_s=laps.total(), parts_s=laps.parts)

    def _start(self, tasks: list[asyncio.Task[None]]) -> aiohttp.ClientSession:
        """Start the round loop, the sinks and the sources (the API runs already)."""
        self._session = session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        if self.audit is not None:
            self.audit.start()
            self.log.info("audit trail", path=str(self.audit.path))
        self._start_pusher(session)
        rounds = asyncio.create_task(self._round_loop(), name="round-loop")
        rounds.add_done_callback(self._on_round_loop_done)
        tasks.append(rounds)
        if self.nats is not None:
            self._background.add(asyncio.create_task(self.nats.run(), name="nats"))
            self.log.info("nats sink", **self.nats.describe())
        self.chains = ChainSet(self.cfg, session, self.clock)
        for reader in self.chains.start():
            self._keep(reader)
        for sid in self.cfg.sources:
            self._start_source(sid)
        self._take_lease()  # last: see there
        self.log.info(
            "oracled started",
            version=__version__,
            markets=len(self.cfg.markets),
            sources=len(self._source_tasks),
            round_interval_ms=self.cfg.oracle.round_interval_ms,
            reload="SIGHUP or POST /v1/admin/reload"
            if self.config_path
            else f"off: {self.no_reload}",
            signer=self.hub.signer,
            deployment=None if self.signer is None else self.signer.deployment,
        )
        if self._freeze_gc:
            self.log.info("start-up objects frozen", objects=gcpause.freeze())
        self._lower_recursion_limit()
        self.started.set()
        return session

    def _take_lease(self) -> None:
        """Take the signing lease (lock, read, first write: ConfigError if another process holds
        it), last in the start: everything that can refuse a start (the port, the sinks, the
        sources) has started, and no round has run, since nothing here awaits. Taken at
        construction, a start refused later had moved the lease a window ahead and held its
        lock, delaying the daemon that really signs with the key. The lease's few milliseconds of
        file I/O run on the loop, once, before the first round."""
        worker = self._signer_worker
        if worker is None:
            return
        cfg = self.cfg
        worker.take_lease(
            open_sign_lease(
                cfg.signing.lease_file,
                worker.signer.address,
                cfg.signing.lease_window_ms,
                self.clock.now_ms(),
                cfg.oracle.round_interval_ms,
            )
        )
        assert self._signed_stall is not None  # made with the signer worker
        self._signed_stall.floor = worker.floor  # named by a stall before the first signed round

    def _unsigned_floor(self) -> int | None:
        """The key's floor while this run has signed no round (`SignedStall.unsigned_floor`),
        for the API's stall watch; None without a signer."""
        stall = self._signed_stall
        return None if stall is None else stall.unsigned_floor

    def _lower_recursion_limit(self) -> None:
        """Put back the interpreter's recursion limit if something raised it: py_ecc (which
        eth-account and web3 import) raises it to 100,000 at import. The daemon imports those
        only where its configuration uses them, inside `eth.recursion_limit_kept`; this catches
        the rest. Under that limit an untyped JSON decode
        (msgspec's, json's in web3) recurses past the C stack on a frame of nested brackets (3 MB,
        within a venue's 4 MiB message limit, or an RPC answer) and the process dies of a
        segmentation fault; at the default it raises RecursionError, a malformed frame."""
        before = sys.getrecursionlimit()
        if before > RECURSION_LIMIT:
            sys.setrecursionlimit(RECURSION_LIMIT)
            self.log.info("recursion limit lowered", before=before, after=RECURSION_LIMIT)

    def _on_round_loop_done(self, task: asyncio.Task[None]) -> None:
        """The round loop ends only when cancelled. An error in a round would leave every price
        at its last round, served as live: stop, marked failed (the command exits 1, and a
        supervisor restarts it), with the traceback."""
        if task.cancelled() or task.exception() is None:
            return
        self.failed = True
        self.log.error(
            "round loop crashed: stopping, or prices would stay at the last round",
            exc_info=task.exception(),
        )
        self.stop()

    def _handle_signals(self, loop: asyncio.AbstractEventLoop) -> dict[signal.Signals, object]:
        """Take SIGTERM, SIGINT and SIGHUP on the loop; return the handlers they had."""
        previous: dict[signal.Signals, object] = {}
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            handler = signal.getsignal(sig)
            with contextlib.suppress(NotImplementedError, RuntimeError):
                if sig == signal.SIGHUP:
                    loop.add_signal_handler(sig, self._on_hangup)
                else:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                previous[sig] = handler
        return previous

    def _release_signals(
        self, loop: asyncio.AbstractEventLoop, previous: dict[signal.Signals, object]
    ) -> None:
        """Give the signals the handlers they had before run(): the loop's removal would leave
        the defaults, and a SIGTERM while the process exits would end it with 143."""
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if callable(handler) or handler in (signal.SIG_DFL, signal.SIG_IGN):
                signal.signal(sig, handler)  # type: ignore[arg-type]

    def _start_pusher(self, session: aiohttp.ClientSession) -> None:
        """Start the on-chain pusher's task if it is enabled and its chain has an RPC URL."""
        push = self.cfg.push
        if self._push_key is None or push.chain is None:
            return
        chain = self.cfg.chains[push.chain]
        if not chain.resolved_urls:
            self.log.warning("on-chain push off: its chain has no RPC URL", chain=push.chain)
            return
        self.pusher = ChainPusher(
            push, chain, self._push_key, session, self.clock, stats=self.push_stats
        )
        self.log.info("on-chain push", **self.pusher.describe())
        task = asyncio.create_task(self._run_pusher(self.pusher), name="push")
        self._background.add(task)

    async def _run_pusher(self, pusher: ChainPusher) -> None:
        """The pusher restarts itself after a crash; only a PushError ends it."""
        try:
            await pusher.run()
        except PushError as exc:  # wrong chain, no contract, another version: nothing to retry
            self.log.error(
                "on-chain push stopped",
                error=str(exc),
                chain=pusher.stats.chain,
                contract=pusher.contract,
            )

    def _on_signal(self, sig: signal.Signals) -> None:
        self.log.info("signal received", signal=sig.name)
        self.stop()


def run_service(
    service: Service, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> None:
    """Run a service to completion on a fresh event loop, the loop closed within the stop's
    budget (`runloop.run_to_end`)."""
    run_to_end(service.run(), loop_factory, lambda: service.stop_deadline, lambda: service.log)
