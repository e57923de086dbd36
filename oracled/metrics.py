"""Every Prometheus metric of oracled, in one place.

Per-message counts are plain integers kept by their owners (SourceStats, Book.drops, Hub) and read
by `_StateCollector` at scrape time, so the hot path pays nothing for metrics. Only rare events
(rounds, gate transitions) use prometheus-client objects directly. `render()` is meant to run in an
executor thread: rendering thousands of series must not stall the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
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

from oracled import __version__
from oracled.core import USED
from oracled.model import Status
from oracled.sources.stats import LATENCY_BOUNDS_MS, ConnState, SourceStats

if TYPE_CHECKING:
    from oracled.core import Core, RoundResult

__all__ = ["Metrics", "MetricsInputs"]

_ROUND_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True, slots=True)
class MetricsInputs:
    """Where the collector reads live state from at scrape time."""

    core: Core
    latest: Callable[[], RoundResult | None]
    source_stats: Mapping[str, SourceStats]
    now_ms: Callable[[], int]
    stream_subscribers: Callable[[], int]
    stream_dropped: Callable[[], Mapping[str, int]]


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
        self.registry.register(_StateCollector(inputs))

    def render(self) -> tuple[bytes, str]:
        """Exposition text and its content type; call from an executor thread."""
        for _ in range(3):
            try:
                return generate_latest(self.registry), CONTENT_TYPE_LATEST
            except RuntimeError:  # a dict changed size while the loop thread wrote to it; retry
                continue
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


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
            "oracled_stream_subscribers", "Open WebSocket stream subscriptions."
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
        yield from (info, interval, sources)

    def _markets(self) -> Iterator[Metric]:
        result = self._in.latest()
        core = self._in.core
        rounds = CounterMetricFamily("oracled_rounds", "Rounds computed since start.")
        rounds.add_metric([], core.rounds)
        yield rounds
        if result is None:
            return
        markets = result.layout.markets
        price = GaugeMetricFamily(
            "oracled_market_price", "Published price (NaN while not live).", labels=["market"]
        )
        conf = GaugeMetricFamily(
            "oracled_market_confidence", "Half-width of the confidence band.", labels=["market"]
        )
        used = GaugeMetricFamily(
            "oracled_market_sources_used", "Sources used in the latest round.", labels=["market"]
        )
        status = GaugeMetricFamily(
            "oracled_market_status",
            "1 for the market's current status, 0 for the others.",
            labels=["market", "status"],
        )
        last_good_age = GaugeMetricFamily(
            "oracled_market_last_good_age_seconds",
            "Seconds since the market last had a live price.",
            labels=["market"],
        )
        min_sources = GaugeMetricFamily(
            "oracled_market_min_sources",
            "Configured quorum: fewer used sources than this pauses the market.",
            labels=["market"],
        )
        slot_value = GaugeMetricFamily(
            "oracled_market_source_value",
            "Each source's value for the market after conversion (NaN without a quote).",
            labels=["market", "source"],
        )
        slot_used = GaugeMetricFamily(
            "oracled_market_source_used",
            "1 if the source's value took part in the market's latest price, else 0.",
            labels=["market", "source"],
        )
        labels = [s.label for s in Status]
        lay = result.layout
        values, codes = result.value.tolist(), result.slot_reason.tolist()
        for i, (market, quorum) in enumerate(zip(markets, lay.min_sources.tolist(), strict=True)):
            min_sources.add_metric([market], quorum)
            row_values, row_codes = values[i], codes[i]
            for j, sid in enumerate(lay.slot_ids[i]):
                slot_value.add_metric([market, sid], row_values[j])
                slot_used.add_metric([market, sid], 1.0 if row_codes[j] == USED else 0.0)
            live = result.status[i] <= Status.DEGRADED
            price.add_metric([market], float(result.price[i]) if live else float("nan"))
            conf.add_metric([market], float(result.confidence[i]) if live else float("nan"))
            used.add_metric([market], int(result.used[i]))
            for code, label in enumerate(labels):
                status.add_metric([market, label], 1.0 if result.status[i] == code else 0.0)
            ts = int(result.last_good_ts[i])
            age = (result.ts - ts) / 1000.0 if ts >= 0 else float("nan")
            last_good_age.add_metric([market], age)
        yield from (price, conf, used, status, last_good_age, min_sources, slot_value, slot_used)

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
        for sid, st in sorted(self._in.source_stats.items()):
            families["frames"].add_metric([sid], st.frames)
            families["malformed"].add_metric([sid], st.malformed)
            families["quotes"].add_metric([sid], st.quotes)
            families["reconnects"].add_metric([sid], st.reconnects)
            families["ahead"].add_metric([sid], st.latency_ahead)
            last = st.last_quote_ms
            age.add_metric([sid], (now - last) / 1000.0 if last is not None else float("nan"))
            up.add_metric(
                [sid], 1.0 if st.state in (ConnState.STREAMING, ConnState.POLLING) else 0.0
            )
            for s in ConnState:
                state.add_metric([sid, s.value], 1.0 if st.state is s else 0.0)
            failed.add_metric([sid], len(st.failed_instruments))
        yield from families.values()
        yield from (age, up, state, failed)
        yield self._latency()
        dropped = CounterMetricFamily(
            "oracled_quotes_dropped",
            "Quotes dropped before aggregation, by source and reason.",
            labels=["source", "reason"],
        )
        merged: dict[tuple[str, str], int] = {}
        for (sid, reason), count in list(self._in.core.book.drops.items()):
            merged[(sid, str(reason))] = merged.get((sid, str(reason)), 0) + count
        for sid, st in list(self._in.source_stats.items()):
            for reason, count in list(st.dropped.items()):
                merged[(sid, reason)] = merged.get((sid, reason), 0) + count
        for (sid, reason), count in sorted(merged.items()):
            dropped.add_metric([sid, reason], count)
        yield dropped
