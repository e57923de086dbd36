"""Every Prometheus metric of oracled, in one place.

Per-message counts are plain integers kept by their owners (SourceStats, Book.drops, Hub) and read
by `_StateCollector` at scrape time, so the hot path pays nothing for metrics. Only rare events
(rounds, gate transitions) use prometheus-client objects directly. `render()` is meant to run in an
executor thread: rendering thousands of series must not stall the event loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from oracled import __version__, gcpause
from oracled.core import USED
from oracled.logs import log_lines_dropped
from oracled.mark.engine import MODES
from oracled.model import Status
from oracled.publish.audit import DROP_REASONS as AUDIT_DROP_REASONS
from oracled.publish.audit import QUOTE_DROP_REASONS as AUDIT_QUOTE_DROP_REASONS
from oracled.publish.chain_push import SKIP_REASONS as PUSH_SKIP_REASONS
from oracled.publish.chain_push import TX_RESULTS as PUSH_TX_RESULTS
from oracled.publish.nats_reasons import (
    CONNECT_FAILURE_REASONS as NATS_CONNECT_FAILURES,
)
from oracled.publish.nats_reasons import DENIED_SUBJECTS as NATS_DENIED
from oracled.publish.nats_reasons import UNPUBLISHED_REASONS as NATS_UNPUBLISHED
from oracled.publish.signer import ERROR_REASONS as SIGNER_ERROR_REASONS
from oracled.sources.stats import LATENCY_BOUNDS_MS, ConnState, SourceStats

if TYPE_CHECKING:
    from oracled.aggregate.book import Layout
    from oracled.core import Core, RoundResult
    from oracled.jsonrpc import EndpointStats
    from oracled.manual import PauseStats
    from oracled.publish.audit import AuditStats
    from oracled.publish.chain_push import PushStats
    from oracled.publish.nats import NatsStats
    from oracled.publish.signer import SignerStats
    from oracled.sources.evm.chain import ChainStats

__all__ = ["Metrics", "MetricsInputs"]

# Up to the longest round interval the config takes (60 s): histogram_quantile never answers more
# than the last finite bound, and the alerts compare these with a share of the interval.
_ROUND_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MetricsInputs:
    """Where the collector reads live state from at scrape time."""

    core: Core
    latest: Callable[[], RoundResult | None]
    source_stats: Mapping[str, SourceStats]
    now_ms: Callable[[], int]
    stream_subscribers: Callable[[], int]
    stream_dropped: Callable[[], Mapping[str, int]]
    api_closed: Callable[[], Mapping[str, int]] = dict  # HTTP connections closed, by reason
    admin_refused: Callable[[], Mapping[str, int]] = dict  # admin API requests refused, by reason
    price_bodies_uncached: Callable[[], int] = int  # price bodies served past the round's bounds
    bodies_gzipped: Callable[[], int] = int  # read answers gzipped (once per body)
    bodies_gzipped_off_loop: Callable[[], int] = int  # of which in a worker thread
    metrics_gzipped: Callable[[], int] = int  # /metrics renders gzipped
    signer: SignerStats | None = None  # None: signing off (its families read zero)
    nats: NatsStats | None = None  # None: no NATS sink
    chains: Callable[[], Iterable[ChainStats]] = tuple  # the chain readers running now
    audit: AuditStats | None = None  # None: no audit trail
    push: PushStats | None = None  # None: no on-chain pusher
    tasks: Callable[[], int] | None = None  # asyncio tasks alive on the daemon's loop (soak)
    caught_up: Callable[[], int] = int  # rounds computed late, unpublished (the round loop's)
    # Rounds published on time, as the round loop counts them: one integer, so that a scrape in
    # the middle of a catch-up cannot count rounds that `caught_up` does not yet hold. None:
    # the core's rounds less `caught_up` (a registry without a round loop).
    published: Callable[[], int] | None = None
    manual: PauseStats | None = None  # None: no manual_pauses_file


class Metrics:
    """The registry plus the few event-driven metrics the runtime updates directly."""

    def __init__(self, inputs: MetricsInputs) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.round_duration = Histogram(
            "oracled_round_duration_seconds",
            "Time to compute one round (aggregation and gates) for all markets.",
            buckets=_ROUND_BUCKETS,
            registry=self.registry,
        )
        self.round_lag = Histogram(
            "oracled_round_lag_seconds",
            "How late a round started compared with its schedule.",
            buckets=_ROUND_BUCKETS,
            registry=self.registry,
        )
        self.transitions = Counter(
            "oracled_gate_transitions_total",
            "Market status changes, by market and new status.",
            ["market", "status"],
            registry=self.registry,
        )
        self.manual_actions = Counter(
            "oracled_admin_actions_total",
            "Manual pause and resume calls through the admin API.",
            ["market", "action"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "oracled_config_reloads",
            "Config reloads (SIGHUP or the admin endpoint), applied or refused.",
            ["result"],
            registry=self.registry,
        )
        for result in ("applied", "refused"):
            self.reloads.labels(result)
        # The state, not only the count: after a refused reload the daemon runs on a config that
        # is no longer the file's, and a restart would refuse the file (exit 2).
        self.reload_ok = Gauge(
            "oracled_config_last_reload_successful",
            "1 while the latest config reload was applied (or none was asked); 0 once refused.",
            registry=self.registry,
        )
        self.reload_ok.set(1)
        self.source_restarts = Counter(
            "oracled_source_restarts_total",
            "Source tasks restarted by the supervisor after a crash.",
            ["source"],
            registry=self.registry,
        )
        for sid in inputs.source_stats:  # a counter that exists at 0 makes rate() and alerts exact
            self.source_restarts.labels(sid)
        # process_start_time_seconds (restart alerts), CPU, memory, open fds; Linux only.
        ProcessCollector(registry=self.registry)
        gcpause.install()
        self.registry.register(gcpause.GcCollector())
        self.registry.register(_StateCollector(inputs))
        self._latest = inputs.latest
        self._source_stats = inputs.source_stats  # live: the sources running now
        self._market_text: _MarketText | None = None

    def forget_market(self, market: str) -> None:
        """Drop the counters of a market a reload removed, as its gauges are: the series stay
        bounded by the markets in force, however many reloads add and remove markets."""
        for status in _STATUS_LABELS:
            with contextlib.suppress(KeyError):  # a status the market never changed to
                self.transitions.remove(market, status)
        for action in ("pause", "resume"):
            with contextlib.suppress(KeyError):
                self.manual_actions.remove(market, action)

    def render(self) -> tuple[bytes, str]:
        """Exposition text and its content type; call from an executor thread."""
        markets = self._market_families()
        for _ in range(3):
            try:
                return generate_latest(self.registry) + markets, CONTENT_TYPE_LATEST
            except RuntimeError:  # a dict changed size while the loop thread wrote to it; retry
                continue
        return generate_latest(self.registry) + markets, CONTENT_TYPE_LATEST

    def _market_families(self) -> bytes:
        result = self._latest()
        if result is None:
            return b""
        text = self._market_text
        if text is None or text.layout is not result.layout:  # first round, or a config reload
            text = self._market_text = _MarketText(result.layout)
        return text.render(result, self._source_stats.keys()).encode()


def _latency_family(stats: list[tuple[str, SourceStats]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "oracled_source_latency_seconds",
        "Receive time minus the venue's event time, for quotes that carry one.",
        labels=["source"],
    )
    for sid, st in stats:
        running, buckets = 0, []
        for bound, count in zip((*LATENCY_BOUNDS_MS, None), st.latency_buckets, strict=True):
            running += count
            buckets.append(("+Inf" if bound is None else str(bound / 1000.0), running))
        family.add_metric([sid], buckets, st.latency_sum_ms / 1000.0)
    return family


def _labelled(
    name: str,
    text: str,
    label: str,
    values: Iterable[str],
    counts: Mapping[str, int] | None,
) -> CounterMetricFamily:
    """A counter with one series per fixed label value (bounded in code, every value shown from
    the start); `counts` None (the part is off) gives zeros."""
    family = CounterMetricFamily(name, text, labels=[label])
    for value in values:
        family.add_metric([value], counts.get(value, 0) if counts is not None else 0)
    return family


def _signer_families(stats: SignerStats | None) -> Iterator[Metric]:
    """Signing of rounds (docs/publishing.md); zeros when signing is off."""
    signed = CounterMetricFamily("oracled_signed_rounds", "Rounds hashed and signed.")
    signed.add_metric([], stats.signed if stats is not None else 0)
    errors = _labelled(
        "oracled_signer_errors",
        "Rounds left unsigned: busy (the previous round was still being signed), error, "
        "floor (its time is not after a round this key signed before), lease (the signing "
        "lease on disk does not reach its time yet), or stale (signed before a stall of the "
        "round loop, not sent: the round after the stall is signed instead).",
        "reason",
        SIGNER_ERROR_REASONS,
        stats.errors if stats is not None else None,
    )
    duration = GaugeMetricFamily(
        "oracled_signer_last_duration_seconds",
        "Time the latest signed round took to hash and sign, in the signer thread.",
    )
    duration.add_metric([], stats.last_seconds if stats is not None else 0.0)
    yield from (signed, errors, duration)


def _nats_families(stats: NatsStats | None) -> Iterator[Metric]:
    """The NATS sink; zeros when it is not configured."""
    connected = GaugeMetricFamily(
        "oracled_nats_connected", "1 while connected to a NATS server, else 0 (also when off)."
    )
    connected.add_metric([], 1.0 if stats is not None and stats.connected else 0.0)
    published = CounterMetricFamily(
        "oracled_nats_published", "Messages handed to the NATS connection."
    )
    published.add_metric([], stats.published if stats is not None else 0)
    lost = CounterMetricFamily(
        "oracled_nats_lost",
        "Messages handed to the NATS connection and still unsent when it was lost: thrown away.",
    )
    lost.add_metric([], stats.lost if stats is not None else 0)
    unpublished = _labelled(
        "oracled_nats_unpublished",
        "Messages not published, by reason: disconnected, queue_full, error, unsigned.",
        "reason",
        NATS_UNPUBLISHED,
        stats.unpublished if stats is not None else None,
    )
    reconnects = CounterMetricFamily("oracled_nats_reconnects", "Reconnects to a NATS server.")
    reconnects.add_metric([], stats.reconnects if stats is not None else 0)
    restarts = CounterMetricFamily(
        "oracled_nats_sink_restarts", "Starts of the NATS sink's task again after a crash (a bug)."
    )
    restarts.add_metric([], stats.restarts if stats is not None else 0)
    failures = _labelled(
        "oracled_nats_connect_failures",
        "Failed attempts to connect to a NATS server, by reason: credentials (refused by the "
        "server), tls (a certificate refused, or no TLS), unreachable (no server answered), "
        "server_error (a server took the connection and ended it: at its connection limit).",
        "reason",
        NATS_CONNECT_FAILURES,
        stats.connect_failures if stats is not None else None,
    )
    denied = _labelled(
        "oracled_nats_permission_denied",
        "Publishes and subscriptions the NATS server's permissions refused the sink's user, by "
        "subject: prices, rounds, stalled, jetstream_api, inbox (the reply subscription), other.",
        "subject",
        NATS_DENIED,
        stats.permission_denied if stats is not None else None,
    )
    announced = CounterMetricFamily(
        "oracled_nats_announced_servers_refused",
        "Servers a NATS cluster announced that the sink did not keep: past the bound of one "
        "announcement, or no server address.",
    )
    announced.add_metric([], stats.announced_refused if stats is not None else 0)
    yield from (connected, published, lost, unpublished, reconnects, restarts, failures, denied)
    yield announced


#: The audit trail's counters and gauges: (name, help, the AuditStats field it reads).
_AUDIT_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("oracled_audit_rounds", "Rounds written to the audit trail.", "rounds"),
    (
        "oracled_audit_write_errors",
        "Rounds the audit trail could not write (database error: full disk, read-only path).",
        "write_errors",
    ),
)
#: The audit trail's drop counters, by `reason`: (name, help, the AuditStats field, reasons).
#: The reasons are the trail's own tuples, which AuditStats counts under, so the two agree.
_AUDIT_DROPS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    (
        "oracled_audit_dropped_rounds",
        "Rounds left out of the audit trail because its queue was full, by reason: writer_behind"
        " (the database slower than the rounds) or lock_away (rounds held while its lock file"
        " was away).",
        "dropped",
        AUDIT_DROP_REASONS,
    ),
    (
        "oracled_audit_dropped_quotes",
        "Quotes of dropped rounds past the carry cap: the audit tape lacks them. By reason: the"
        " rounds' (writer_behind, lock_away), or write_error (rounds a failed write lost).",
        "dropped_quotes",
        AUDIT_QUOTE_DROP_REASONS,
    ),
    (
        "oracled_audit_dropped_events",
        "Operator actions and config loads left out of the audit trail: its queue was full"
        " (reason: writer_behind or lock_away).",
        "dropped_events",
        AUDIT_DROP_REASONS,
    ),
    (
        "oracled_audit_dropped_signatures",
        "Signatures left out of the audit trail (queue full): their rounds read as unsigned"
        " (reason: writer_behind or lock_away).",
        "signatures_dropped",
        AUDIT_DROP_REASONS,
    ),
)
_AUDIT_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("oracled_audit_queued_rounds", "Rounds waiting for the writer.", "queued"),
    (
        "oracled_audit_database_bytes",
        "Data in the audit database at the last retention check.",
        "bytes",
    ),
    (
        "oracled_audit_reserve_bytes",
        "Disk reserve held beside the audit database; 0 after a full disk made it give it up.",
        "reserve",
    ),
)


def _audit_families(stats: AuditStats | None) -> Iterator[Metric]:
    """The audit trail (docs/publishing.md); zeros when it is off."""
    up = GaugeMetricFamily(
        "oracled_audit_up", "1 while the audit database takes writes, else 0 (also when off)."
    )
    up.add_metric([], 1.0 if stats is not None and stats.ok else 0.0)
    yield up
    for name, text, field in _AUDIT_COUNTERS:
        counter = CounterMetricFamily(name, text)
        counter.add_metric([], getattr(stats, field) if stats is not None else 0)
        yield counter
    for name, text, field, reasons in _AUDIT_DROPS:
        yield _labelled(
            name, text, "reason", reasons, getattr(stats, field) if stats is not None else None
        )
    for name, text, field in _AUDIT_GAUGES:
        gauge = GaugeMetricFamily(name, text)
        gauge.add_metric([], getattr(stats, field) if stats is not None else 0)
        yield gauge


def _push_families(stats: PushStats | None) -> Iterator[Metric]:
    """The on-chain pusher; zeros when it is off."""
    txs = _labelled(
        "oracled_push_transactions",
        "Push transactions by result: sent, replaced, confirmed, reverted, error, gas_cap.",
        "result",
        PUSH_TX_RESULTS,
        stats.transactions if stats is not None else None,
    )
    skipped = _labelled(
        "oracled_push_skipped_markets",
        "Markets not pushed in a round: not active (by status), or a price past the "
        "contract's int128 (overflow).",
        "reason",
        PUSH_SKIP_REASONS,
        stats.skipped if stats is not None else None,
    )
    updates = CounterMetricFamily(
        "oracled_push_market_updates", "Market prices confirmed on chain by the pusher."
    )
    updates.add_metric([], stats.updates if stats is not None else 0)
    pauses = CounterMetricFamily(
        "oracled_push_market_pauses",
        "Pause entries confirmed on chain by the pusher (markets marked paused).",
    )
    pauses.add_metric([], stats.pauses if stats is not None else 0)
    pending = GaugeMetricFamily(
        "oracled_push_pending", "1 while a push transaction is waiting to be mined, else 0."
    )
    pending.add_metric([], 1.0 if stats is not None and stats.pending else 0.0)
    bad = CounterMetricFamily(
        "oracled_push_bad_answers",
        "Node answers the pusher could not read (not a hex quantity, a receipt without status).",
    )
    bad.add_metric([], stats.bad_answers if stats is not None else 0)
    refused = CounterMetricFamily(
        "oracled_push_refused_requests",
        "Pusher requests the node refused as their own fault, retried (a JSON-RPC error).",
    )
    refused.add_metric([], stats.refused if stats is not None else 0)
    restarts = CounterMetricFamily(
        "oracled_push_restarts", "Starts of the pusher's task again after a crash (a bug)."
    )
    restarts.add_metric([], stats.restarts if stats is not None else 0)
    yield from (txs, skipped, updates, pauses, pending, bad, refused, restarts)
    if stats is not None:  # absent when push is off: a 0 there would read as a stopped pusher
        up = GaugeMetricFamily(
            "oracled_push_up",
            "1 while the pusher task runs past its start-up checks, else 0 (absent when off).",
        )
        up.add_metric([], 1.0 if stats.up else 0.0)
        yield up


def _manual_families(stats: PauseStats | None) -> Iterator[Metric]:
    """The operator pauses file (oracled/manual.py); the failures read zero without one."""
    failures = CounterMetricFamily(
        "oracled_manual_pauses_save_failures",
        "Saves of the operator pauses file that failed (the pause held, not across a restart).",
    )
    failures.add_metric([], stats.failures if stats is not None else 0)
    yield failures
    if stats is not None:  # absent without a file: nothing is meant to be kept then
        kept = GaugeMetricFamily(
            "oracled_manual_pauses_kept",
            "1 while the pauses in force are on disk, 0 after a failed save (absent without a "
            "file).",
        )
        kept.add_metric([], 1.0 if stats.kept else 0.0)
        yield kept


_RPC_ERROR_KINDS = (
    "transport", "http", "timeout", "garbage", "node", "rate_limited", "behind", "wrong_chain",
    "outvoted",
)  # fmt: skip
_REFUSED_REASONS = (
    ("backwards", "backwards"),
    ("too_old", "old_blocks"),
    ("future", "future_blocks"),
    ("superseded", "superseded"),
    ("unknown", "unknown"),
)


#: `mode` of `oracled_chain_mode`: each of `ChainStats.mode`'s values and its label value.
_CHAIN_MODES = (("starting", "starting"), ("polling", "polling"), ("newHeads", "new_heads"))


#: `client` of the RPC families: which RPC client of the chain, each with its own endpoints'
#: state (a reader's and the pusher's count, rest and fail over apart, on the same URLs).
_READER, _PUSHER = "reader", "pusher"


def _chain_families(
    now_ms: int, chains: Iterable[ChainStats], push: PushStats | None = None
) -> Iterator[Metric]:
    """The on-chain readers (docs/onchain.md): one series per chain, and per RPC endpoint
    (its redacted host, unique within the chain) for requests and errors; the RPC families
    carry the pusher's endpoints too, told apart by `client` (absent while it has none)."""
    ch = ["chain"]
    head = GaugeMetricFamily(
        "oracled_chain_head_block", "Number of the newest block read and published.", labels=ch
    )
    age = GaugeMetricFamily(
        "oracled_chain_head_age_seconds",
        "Our clock minus the newest published block's timestamp (NaN before the first).",
        labels=ch,
    )
    mode = GaugeMetricFamily(
        "oracled_chain_mode",
        "1 for how the chain's reader follows blocks (starting, polling, new_heads), 0 for the "
        "others.",
        labels=["chain", "mode"],
    )
    limit = GaugeMetricFamily(
        "oracled_chain_max_block_age_seconds",
        "Configured max_block_age_s: a head older than this flags every feed chain_stale.",
        labels=ch,
    )
    counters = {
        key: CounterMetricFamily(f"oracled_chain_{name}", doc, labels=ch)
        for key, name, doc in (
            ("blocks", "blocks_read", "Blocks read and handed to the feeds."),
            ("round_trips", "round_trips", "HTTP requests made to read blocks."),
            ("reads_failed", "read_failures", "Block reads that failed on every endpoint."),
            ("reorgs", "reorgs", "Blocks at the head's height with a new hash (re-read)."),
            ("disagreements", "cross_check_disagreements",
             "Blocks withheld because two endpoints answered the same read differently."),
            ("slow_switches", "slow_switches",
             "Active RPC endpoints left for one that answered at least twice as fast."),
            ("restarts", "reader_restarts",
             "Reader restarts by its supervisor: a failed start, or a crash."),
        )
    }  # fmt: skip
    refused = CounterMetricFamily(
        "oracled_chain_blocks_refused",
        "Blocks not published: backwards (below the last one published), too_old, future "
        "(stamped ahead of our clock by more than max_clock_skew_ms), superseded, unknown (the "
        "node did not hold it at its read).",
        labels=["chain", "reason"],
    )
    left = CounterMetricFamily(
        "oracled_chain_new_heads_left",
        "newHeads sockets left for polling: failed (refused, ended, broken), or a poll found "
        "a block they had not delivered, silent (no notice) or refused (only refused heads, "
        "e.g. from the future).",
        labels=["chain", "reason"],
    )
    failovers = CounterMetricFamily(
        "oracled_chain_failovers",
        "Switches to the next RPC endpoint after a failure, by client (reader, pusher).",
        labels=["chain", "client"],
    )
    requests = CounterMetricFamily(
        "oracled_chain_rpc_requests",
        "HTTP requests to an RPC endpoint by client: reader (block reads, polls, checks), "
        "pusher (its reads, checks and transactions).",
        labels=["chain", "client", "endpoint"],
    )
    latency = GaugeMetricFamily(
        "oracled_chain_rpc_latency_seconds",
        "An RPC endpoint's answer time, a moving average of its answered requests (NaN before "
        "the first).",
        labels=["chain", "client", "endpoint"],
    )
    errors = CounterMetricFamily(
        "oracled_chain_rpc_errors",
        "Failed requests to an RPC endpoint by kind: transport, http, timeout, garbage, node, "
        "rate_limited, behind, wrong_chain, outvoted.",
        labels=["chain", "client", "endpoint", "kind"],
    )

    def rpc(chain: str, client: str, endpoints: Sequence[EndpointStats]) -> None:
        """One RPC client's endpoints into the four RPC families."""
        failovers.add_metric([chain, client], sum(e.failovers for e in endpoints))
        for ep in endpoints:
            requests.add_metric([chain, client, ep.name], ep.requests)
            seconds = ep.latency_s
            latency.add_metric(
                [chain, client, ep.name], seconds if seconds is not None else float("nan")
            )
            for kind in _RPC_ERROR_KINDS:
                errors.add_metric([chain, client, ep.name, kind], ep.by_kind.get(kind, 0))

    spot_gaps = CounterMetricFamily(
        "oracled_chain_spot_gaps",
        "Uniswap v3 reads whose slot0 spot was beyond max_spot_deviation from the TWAP.",
        labels=["chain", "source", "pair"],
    )
    sequencer = GaugeMetricFamily(
        "oracled_chain_sequencer_up",
        "L2 chains with a sequencer feed: 1 while up and past its grace period, else 0.",
        labels=ch,
    )
    for st in sorted(chains, key=lambda c: c.chain):
        name = [st.chain]
        head.add_metric(name, st.last_block if st.last_block is not None else float("nan"))
        ts = st.last_block_ts
        age.add_metric(name, now_ms / 1000.0 - ts if ts is not None else float("nan"))
        limit.add_metric(name, st.max_block_age_s)
        for held, label in _CHAIN_MODES:
            mode.add_metric([st.chain, label], 1.0 if st.mode == held else 0.0)
        for key, family in counters.items():
            family.add_metric(name, getattr(st, key))
        for reason, key in _REFUSED_REASONS:
            refused.add_metric([st.chain, reason], getattr(st, key))
        left.add_metric([st.chain, "silent"], st.silent_left)
        left.add_metric([st.chain, "refused"], st.refused_left)
        left.add_metric([st.chain, "failed"], st.failed_left)
        rpc(st.chain, _READER, st.endpoints)
        for (source, pair), gaps in sorted(st.spot_gaps.items()):
            spot_gaps.add_metric([st.chain, source, pair], gaps)
        if st.sequencer_up is not None:
            sequencer.add_metric(name, 1.0 if st.sequencer_up else 0.0)
    if push is not None and push.endpoints:
        rpc(push.chain, _PUSHER, push.endpoints)
    yield from (head, age, mode, limit, *counters.values(), refused, left, failovers, requests,
                latency, errors, spot_gaps, sequencer)  # fmt: skip


class _StateCollector:
    """Reads the latest round and the plain counters; yields gauge and counter families."""

    def __init__(self, inputs: MetricsInputs) -> None:
        self._in = inputs

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._process()
        yield from self._markets()
        yield from self._sources()
        stream = GaugeMetricFamily(
            "oracled_stream_subscribers", "Open stream subscriptions (WebSocket and SSE)."
        )
        stream.add_metric([], self._in.stream_subscribers())
        yield stream
        dropped = CounterMetricFamily(
            "oracled_stream_dropped_subscribers",
            "Stream subscribers disconnected by the server, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(self._in.stream_dropped().items()):
            dropped.add_metric([reason], count)
        yield dropped
        closed = CounterMetricFamily(
            "oracled_api_connections_closed",
            "HTTP connections the API closed: a late send, over the cap, no request in time,"
            " an expectation refused, a request unparsed, or a Host not the API's.",
            labels=["reason"],
        )
        for reason, count in sorted(self._in.api_closed().items()):
            closed.add_metric([reason], count)
        yield closed
        refused = CounterMetricFamily(
            "oracled_admin_requests_refused",
            "Admin API requests refused before they could act: no token configured, no"
            " Authorization header, not a bearer token, or a wrong token.",
            labels=["reason"],
        )
        for reason, count in sorted(self._in.admin_refused().items()):
            refused.add_metric([reason], count)
        yield refused
        uncached = CounterMetricFamily(
            "oracled_api_price_bodies_uncached",
            "Price bodies served without being kept for the round: past api.round_bodies or"
            " api.round_body_bytes, each made (and gzipped) for its request alone.",
        )
        uncached.add_metric([], self._in.price_bodies_uncached())
        yield uncached
        for name, doc, read in (
            (
                "oracled_api_bodies_gzipped",
                "Read answers (prices, selections, one market, markets, the OpenAPI document)"
                " gzipped for a client that takes gzip: once per body, however many clients"
                " ask.",
                self._in.bodies_gzipped,
            ),
            (
                "oracled_api_bodies_gzipped_off_loop",
                "Of the read answers gzipped, those of 64 KiB or more, gzipped in a worker"
                " thread off the event loop.",
                self._in.bodies_gzipped_off_loop,
            ),
            (
                "oracled_api_metrics_gzipped",
                "/metrics renders gzipped for a scraper that asked, in the render's thread:"
                " at most once per render, shared by the scrapes that joined it.",
                self._in.metrics_gzipped,
            ),
        ):
            gzipped = CounterMetricFamily(name, doc)
            gzipped.add_metric([], read())
            yield gzipped
        yield from _signer_families(self._in.signer)
        yield from _nats_families(self._in.nats)
        yield from _chain_families(self._in.now_ms(), self._in.chains(), self._in.push)
        yield from _audit_families(self._in.audit)
        yield from _push_families(self._in.push)
        yield from _manual_families(self._in.manual)
        tasks = GaugeMetricFamily(
            "oracled_asyncio_tasks",
            "Asyncio tasks not yet done on the daemon's event loop (a steady count: no task leak).",
        )
        tasks.add_metric([], self._in.tasks() if self._in.tasks is not None else 0)
        yield tasks

    def _process(self) -> Iterator[Metric]:
        cfg = self._in.core.config
        info = GaugeMetricFamily(
            "oracled_build_info", "Always 1; the running version as a label.", labels=["version"]
        )
        info.add_metric([__version__], 1.0)
        interval = GaugeMetricFamily(
            "oracled_round_interval_seconds", "Configured time between two rounds."
        )
        interval.add_metric([], cfg.oracle.round_interval_ms / 1000.0)
        sources = GaugeMetricFamily(
            "oracled_source_info",
            "Always 1; each source's adapter type and venue (the type up to its first '_').",
            labels=["source", "type", "venue"],
        )
        for sid in sorted(self._in.source_stats):
            src = cfg.sources.get(sid)
            if src is not None:
                sources.add_metric([sid, src.type, src.type.split("_", 1)[0]], 1.0)
        dropped = CounterMetricFamily(
            "oracled_log_lines_dropped",
            "Log lines that could not be written (the log's reader gone, a full disk); the "
            "daemon runs on without them.",
        )
        dropped.add_metric([], log_lines_dropped())
        yield from (info, interval, sources, dropped)

    def _markets(self) -> Iterator[Metric]:
        """Only the round counter: the per-market families are rendered by `_MarketText`."""
        caught_up = self._in.caught_up()
        published = self._in.published
        rounds = CounterMetricFamily(
            "oracled_rounds", "Rounds computed on time and published since start."
        )
        rounds.add_metric(
            [], published() if published is not None else self._in.core.rounds - caught_up
        )
        late = CounterMetricFamily(
            "oracled_rounds_caught_up",
            "Rounds a blocked round loop missed and computed afterwards, unpublished.",
        )
        late.add_metric([], caught_up)
        yield from (rounds, late)

    def _latency(self) -> Metric:
        return _latency_family(sorted(self._in.source_stats.items()))

    def _sources(self) -> Iterator[Metric]:
        now = self._in.now_ms()
        families = {
            "frames": CounterMetricFamily(
                "oracled_source_frames", "Frames and REST bodies received.", labels=["source"]
            ),
            "malformed": CounterMetricFamily(
                "oracled_source_malformed_frames",
                "Frames that could not be decoded or had an unexpected shape.",
                labels=["source"],
            ),
            "quotes": CounterMetricFamily(
                "oracled_source_quotes", "Normalized quotes handed to the core.", labels=["source"]
            ),
            "reconnects": CounterMetricFamily(
                "oracled_source_reconnects", "Stream reconnects.", labels=["source"]
            ),
            "sequence_resets": CounterMetricFamily(
                "oracled_source_sequence_resets",
                "Venue counter bars (update ids, sequences) judged bad and forgotten.",
                labels=["source"],
            ),
            "ahead": CounterMetricFamily(
                "oracled_source_venue_time_ahead",
                "Quotes whose venue time was ahead of our receive time (clock skew).",
                labels=["source"],
            ),
        }
        age = GaugeMetricFamily(
            "oracled_source_last_quote_age_seconds",
            "Seconds since the source's newest quote was received.",
            labels=["source"],
        )
        up = GaugeMetricFamily(
            "oracled_source_up", "1 while streaming or polling, else 0.", labels=["source"]
        )
        state = GaugeMetricFamily(
            "oracled_source_state",
            "1 for the source's connection state, 0 for the others.",
            labels=["source", "state"],
        )
        failed = GaugeMetricFamily(
            "oracled_source_failed_instruments",
            "Instruments the venue refused (unknown or delisted symbols).",
            labels=["source"],
        )
        silent = GaugeMetricFamily(
            "oracled_source_silent_instruments",
            "Subscribed instruments without a quote for longer than their markets' max_age_ms "
            "while the connection streams, or left out of REST answers while polling.",
            labels=["source"],
        )
        for sid, st in sorted(self._in.source_stats.items()):
            families["frames"].add_metric([sid], st.frames)
            families["malformed"].add_metric([sid], st.malformed)
            families["quotes"].add_metric([sid], st.quotes)
            families["reconnects"].add_metric([sid], st.reconnects)
            families["sequence_resets"].add_metric([sid], st.sequence_resets)
            families["ahead"].add_metric([sid], st.latency_ahead)
            last = st.last_quote_ms
            age.add_metric([sid], (now - last) / 1000.0 if last is not None else float("nan"))
            up.add_metric(
                [sid], 1.0 if st.state in (ConnState.STREAMING, ConnState.POLLING) else 0.0
            )
            for s in ConnState:
                state.add_metric([sid, s.value], 1.0 if st.state is s else 0.0)
            failed.add_metric([sid], len(st.failed_instruments))
            silent.add_metric([sid], len(st.silent_instruments))
        yield from families.values()
        yield from (age, up, state, failed, silent)
        yield self._latency()
        dropped = CounterMetricFamily(
            "oracled_quotes_dropped",
            "Quotes dropped before aggregation, by source and reason.",
            labels=["source", "reason"],
        )
        merged: dict[tuple[str, str], int] = {}
        running = dict(self._in.source_stats)  # the book keeps counts of sources since stopped
        for (sid, reason), count in list(self._in.core.book.drops.items()):
            if sid in running:
                merged[(sid, str(reason))] = merged.get((sid, str(reason)), 0) + count
        for sid, st in running.items():
            for reason, count in list(st.dropped.items()):
                merged[(sid, reason)] = merged.get((sid, reason), 0) + count
        for (sid, reason), count in sorted(merged.items()):
            dropped.add_metric([sid, reason], count)
        yield dropped


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (_INF, -_INF):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


_INF = float("inf")
_STATUS_LABELS = tuple(s.label for s in Status)
_MARKET_FAMILIES = (
    ("oracled_market_price", "Published price (NaN while not live)."),
    ("oracled_market_confidence", "Half-width of the confidence band (NaN while not live)."),
    ("oracled_market_sources_used", "Sources used in the latest round."),
    ("oracled_market_status", "1 for the market's current status, 0 for the others."),
    ("oracled_market_last_good_age_seconds", "Seconds since the market last had a live price."),
    (
        "oracled_market_min_sources",
        "Configured quorum: fewer used sources than this pauses the market.",
    ),
    (
        "oracled_market_source_value",
        "Each source's value for the market after conversion (NaN without a quote).",
    ),
    (
        "oracled_market_source_used",
        "1 if the source's value took part in the market's latest price, else 0.",
    ),
)


_MARK_FAMILIES = (
    ("oracled_mark_price", "Mark price of a perpetual market (NaN while its index is not live)."),
    ("oracled_mark_perps_used", "Perpetuals that counted in the market's latest mark."),
    (
        "oracled_mark_mode",
        "1 for what made the latest mark (perps, fallback, none), 0 for the others.",
    ),
)
_MARK_HEADS = [f"# HELP {name} {doc}\n# TYPE {name} gauge\n" for name, doc in _MARK_FAMILIES]


def _mark_lines(market: str) -> tuple[str, str, dict[str, str]]:
    """A perpetual market's label parts: price and perps-used prefixes, and its mode block per
    mode (built once per layout, like the market families)."""
    price, used, mode = (name for name, _ in _MARK_FAMILIES)
    blocks = {
        now: "".join(
            f'{mode}{{market="{market}",mode="{m}"}} {1.0 if m == now else 0.0}\n' for m in MODES
        )
        for now in MODES
    }
    return f'{price}{{market="{market}"}} ', f'{used}{{market="{market}"}} ', blocks


_EXCLUDED = "oracled_source_excluded_slots"
_EXCLUDED_HEAD = (
    f"# HELP {_EXCLUDED} Market slots of the source left out of the latest round's price, "
    f"by reason (the core's or the source's flag).\n# TYPE {_EXCLUDED} gauge\n"
)


class _MarketText:
    """The per-market and per-(market, source) gauges, written as exposition text by hand.

    They are most of the series (about 9 per market and 2 per slot: 29,000 at 1,000 markets x 10
    sources), and prometheus-client validates and escapes every label of every sample on every
    scrape, which took ~200 ms there while holding the GIL. The label part of each line depends
    only on the layout, so it is built once per layout and a scrape only formats the numbers.
    """

    __slots__ = (
        "_heads",
        "_marks",
        "_min_sources",
        "_prefixes",
        "_slot_source",
        "_slot_sources",
        "_slot_used",
        "_slot_value",
        "_status",
        "layout",
    )

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        names = [name for name, _ in _MARKET_FAMILIES]
        markets = [_escape(m) for m in layout.markets]
        self._heads = [
            f"# HELP {name} {doc}\n# TYPE {name} gauge\n" for name, doc in _MARKET_FAMILIES
        ]
        # price, confidence, sources used, last good age: one `name{market="..."} ` per market
        self._prefixes = [[f'{names[k]}{{market="{m}"}} ' for m in markets] for k in (0, 1, 2, 4)]
        status = names[3]
        self._status = [
            [
                "".join(
                    f'{status}{{market="{m}",status="{label}"}} {1.0 if k == code else 0.0}\n'
                    for k, label in enumerate(_STATUS_LABELS)
                )
                for code in range(len(_STATUS_LABELS))
            ]
            for m in markets
        ]
        self._min_sources = "".join(
            f'{names[5]}{{market="{m}"}} {q}\n'
            for m, q in zip(markets, layout.min_sources.tolist(), strict=True)
        )
        self._slot_value = [
            [f'{names[6]}{{market="{m}",source="{_escape(sid)}"}} ' for sid in ids]
            for m, ids in zip(markets, layout.slot_ids, strict=True)
        ]
        self._slot_used = [
            [
                (
                    f'{names[7]}{{market="{m}",source="{_escape(sid)}"}} 0.0\n',
                    f'{names[7]}{{market="{m}",source="{_escape(sid)}"}} 1.0\n',
                )
                for sid in ids
            ]
            for m, ids in zip(markets, layout.slot_ids, strict=True)
        ]
        # Each slot's source as an index (-1 where a market has fewer slots than the widest),
        # so that a scrape counts the exclusions per source and reason in one bincount.
        voting = sorted({sid for ids in layout.slot_ids for sid in ids})
        index = {sid: k for k, sid in enumerate(voting)}
        source = np.full(layout.weight.shape, -1, dtype=np.int64)
        for i, ids in enumerate(layout.slot_ids):
            source[i, : len(ids)] = [index[sid] for sid in ids]
        self._slot_source = source
        self._slot_sources = voting
        self._marks = [_mark_lines(m) for m in markets]

    def _mark(self, result: RoundResult) -> list[str]:
        """The perpetual markets' mark families (none without a perpetual market)."""
        mark = result.mark
        if mark is None or not mark.markets:
            return []
        # from the round's arrays, its rows by market index: `values` would make every
        # market's MarkValues at each scrape
        lines = [self._marks[i] for i in mark.markets]
        out = [_MARK_HEADS[0]]
        out += [f"{m[0]}{_num(p)}\n" for m, p in zip(lines, mark.price.tolist(), strict=True)]
        out.append(_MARK_HEADS[1])
        out += [f"{m[1]}{n}\n" for m, n in zip(lines, mark.perps_used.tolist(), strict=True)]
        out.append(_MARK_HEADS[2])
        out += [m[2][MODES[c]] for m, c in zip(lines, mark.modes.tolist(), strict=True)]
        return out

    def _excluded(self, result: RoundResult, running: Collection[str]) -> list[str]:
        """`oracled_source_excluded_slots`: every voting source that runs x every reason the
        round can name (the core's and the flags the book has seen), 0 included, so a series
        does not vanish when its last slot comes back. A source that does not run (disabled,
        or on a chain without an RPC URL) has no `oracled_source_*` series, as documented."""
        names = result.slot_names
        width = len(names)
        valid = self._slot_source >= 0
        keys = self._slot_source[valid] * width + result.slot_reason[valid].astype(np.int64)
        counts = np.bincount(keys, minlength=len(self._slot_sources) * width)
        rows = counts.reshape(len(self._slot_sources), width).tolist()
        out = [_EXCLUDED_HEAD]
        for sid, row in zip(self._slot_sources, rows, strict=True):
            if sid not in running:
                continue
            label = _escape(sid)
            merged: dict[str, int] = {}
            for code, name in enumerate(names):
                if code != USED and name is not None:  # a flag may share a core name (stale)
                    merged[name] = merged.get(name, 0) + row[code]
            out += [
                f'{_EXCLUDED}{{source="{label}",reason="{_escape(name)}"}} {float(n)}\n'
                for name, n in merged.items()
            ]
        return out

    def render(self, result: RoundResult, running: Collection[str]) -> str:
        """The per-market families and the exclusions of the sources in `running`."""
        status = result.status.tolist()
        live = [code <= Status.DEGRADED for code in status]
        price, conf = result.price.tolist(), result.confidence.tolist()
        used, good_ts = result.used.tolist(), result.last_good_ts.tolist()
        values, codes = result.value.tolist(), result.slot_reason.tolist()
        heads, ts = self._heads, result.ts
        price_at, conf_at, used_at, age_at = self._prefixes
        out = [heads[0]]
        out += [
            f"{at}{_num(p) if ok else 'NaN'}\n"
            for at, p, ok in zip(price_at, price, live, strict=True)
        ]
        out.append(heads[1])
        out += [
            f"{at}{_num(c) if ok else 'NaN'}\n"
            for at, c, ok in zip(conf_at, conf, live, strict=True)
        ]
        out.append(heads[2])
        out += [f"{at}{n}\n" for at, n in zip(used_at, used, strict=True)]
        out.append(heads[3])
        out += [block[code] for block, code in zip(self._status, status, strict=True)]
        out.append(heads[4])
        out += [
            f"{at}{_num((ts - t) / 1000.0) if t >= 0 else 'NaN'}\n"
            for at, t in zip(age_at, good_ts, strict=True)
        ]
        out += (heads[5], self._min_sources, heads[6])
        for prefixes, row in zip(self._slot_value, values, strict=True):
            out += [f"{at}{_num(v)}\n" for at, v in zip(prefixes, row, strict=False)]
        out.append(heads[7])
        for lines, row_codes in zip(self._slot_used, codes, strict=True):
            out += [line[c == USED] for line, c in zip(lines, row_codes, strict=False)]
        out += self._excluded(result, running)
        out += self._mark(result)
        return "".join(out)
