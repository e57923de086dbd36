"""The metrics exposition: names, labels and values read from live state at scrape time."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from oracled.config import OracleConfig, parse_config
from oracled.core import Core, RoundResult
from oracled.metrics import Metrics, MetricsInputs
from oracled.model import Quote
from oracled.sources.stats import ConnState, SourceStats

T0 = 1_700_000_000_000


def _setup() -> tuple[Core, Metrics, dict[str, SourceStats], list[RoundResult]]:
    cfg = parse_config(
        {
            "oracle": {"resume_rounds": 1},
            "sources": {s: {"type": "binance"} for s in ("a", "b", "c")},
            "markets": [
                {
                    "symbol": "BTC/USD",
                    "min_sources": 2,
                    "sources": [{"source": s, "pair": "BTC/USD"} for s in ("a", "b", "c")],
                },
                {
                    "symbol": "ETH/USD",
                    "min_sources": 2,
                    "sources": [{"source": s, "pair": "ETH/USD"} for s in ("a", "b")],
                },
            ],
        }
    )
    core = Core(cfg)
    stats = {s: SourceStats(source=s) for s in ("a", "b", "c")}
    results: list[RoundResult] = []
    metrics = Metrics(
        MetricsInputs(
            core=core,
            latest=lambda: results[-1] if results else None,
            source_stats=stats,
            now_ms=lambda: T0 + 3_000,
            stream_subscribers=lambda: 2,
            stream_dropped=lambda: {"slow_consumer": 1},
        )
    )
    return core, metrics, stats, results


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_market_and_source_series_follow_the_latest_round() -> None:
    """Price and status per market; per-source counters; drops by reason from the core."""
    core, metrics, stats, results = _setup()
    for s, px in (("a", 100.0), ("b", 100.2), ("c", 100.1)):
        core.ingest(Quote(s, "BTC/USD", T0, price=px))
    core.ingest(Quote("a", "ETH/USD", T0, price=float("nan")))  # dropped: not_finite
    core.ingest(Quote("a", "DOGE/USD", T0, price=1.0))  # dropped: unknown_symbol
    stats["a"].frames, stats["a"].quotes, stats["a"].state = 10, 7, ConnState.STREAMING
    stats["a"].last_quote_ms = T0
    results.append(core.run_round(T0 + 1_000))
    s = _samples(metrics)
    assert s[("oracled_market_price", (("market", "BTC/USD"),))] == 100.1
    assert s[("oracled_market_status", (("market", "BTC/USD"), ("status", "active")))] == 1.0
    assert s[("oracled_market_status", (("market", "ETH/USD"), ("status", "unknown")))] == 1.0
    assert math.isnan(s[("oracled_market_price", (("market", "ETH/USD"),))])
    assert s[("oracled_market_sources_used", (("market", "BTC/USD"),))] == 3
    for market in ("BTC/USD", "ETH/USD"):
        states = [
            v
            for (n, lbl), v in s.items()
            if n == "oracled_market_status" and ("market", market) in lbl
        ]
        assert sorted(states) == [0.0, 0.0, 0.0, 1.0]
    assert s[("oracled_source_frames_total", (("source", "a"),))] == 10
    assert s[("oracled_source_quotes_total", (("source", "a"),))] == 7
    assert s[("oracled_source_up", (("source", "a"),))] == 1.0
    assert s[("oracled_source_up", (("source", "b"),))] == 0.0
    assert s[("oracled_source_last_quote_age_seconds", (("source", "a"),))] == 3.0
    drops = (("reason", "not_finite"), ("source", "a"))
    assert s[("oracled_quotes_dropped_total", drops)] == 1
    assert s[("oracled_quotes_dropped_total", (("reason", "unknown_symbol"), ("source", "a")))] == 1
    assert s[("oracled_rounds_total", ())] == 1
    assert s[("oracled_stream_subscribers", ())] == 2
    assert s[("oracled_stream_dropped_subscribers_total", (("reason", "slow_consumer"),))] == 1


def test_round_histogram_and_transition_counter_are_exported() -> None:
    """Event-driven metrics appear once observed."""
    _, metrics, _, _ = _setup()
    metrics.round_duration.observe(0.002)
    metrics.transitions.labels("BTC/USD", "paused").inc()
    s = _samples(metrics)
    assert s[("oracled_round_duration_seconds_count", ())] == 1
    key = ("oracled_gate_transitions_total", (("market", "BTC/USD"), ("status", "paused")))
    assert s[key] == 1


def test_venue_latency_histogram_is_cumulative_per_source() -> None:
    """Latencies land in their buckets; a venue time ahead of ours counts as skew, at zero."""
    _, metrics, stats, _ = _setup()
    for latency in (3, 40, 40, 700, 60_000, -20):
        stats["b"].observe_latency(latency)
    s = _samples(metrics)
    bucket = "oracled_source_latency_seconds_bucket"
    assert s[(bucket, (("le", "0.005"), ("source", "b")))] == 2  # 3 ms and the clamped -20 ms
    assert s[(bucket, (("le", "0.05"), ("source", "b")))] == 4
    assert s[(bucket, (("le", "1.0"), ("source", "b")))] == 5
    assert s[(bucket, (("le", "+Inf"), ("source", "b")))] == 6
    assert s[("oracled_source_latency_seconds_count", (("source", "b"),))] == 6
    assert s[("oracled_source_latency_seconds_sum", (("source", "b"),))] == 60.783
    assert s[("oracled_source_venue_time_ahead_total", (("source", "b"),))] == 1


def test_round_histograms_reach_past_the_longest_round_interval() -> None:
    """The round duration and lag histograms have a finite bucket at or above the longest round
    interval the config takes: histogram_quantile never answers more than the last finite bound,
    so with buckets ending at 1 s the publish-lag alert (p99 lag over half the interval) could
    not fire at intervals of 2 s or more, nor the over-budget one past 4 s."""
    field = OracleConfig.model_fields["round_interval_ms"]
    (bound,) = [m.le for m in field.metadata if getattr(m, "le", None) is not None]
    _, metrics, _, _ = _setup()
    for name in ("oracled_round_duration_seconds", "oracled_round_lag_seconds"):
        (family,) = [
            f
            for f in text_string_to_metric_families(metrics.render()[0].decode())
            if f.name == name
        ]
        finite = [
            float(s.labels["le"]) for s in family.samples if s.labels.get("le", "+Inf") != "+Inf"
        ]
        assert max(finite) >= bound / 1000.0, name
        assert min(finite) <= 0.0005, name  # a small round still reads in sub-millisecond steps


def test_drops_of_a_source_no_longer_running_leave_the_exposition() -> None:
    """A source a reload stopped (its stats gone) has no `oracled_quotes_dropped_total` series
    left behind from the book's counts, like its other series; running sources keep theirs."""
    core, metrics, stats, _ = _setup()
    core.ingest(Quote("a", "BTC/USD", T0, price=float("nan")))  # a drop counted by the book
    core.ingest(Quote("b", "BTC/USD", T0, price=float("nan")))
    del stats["a"]  # as the runtime does for a source a reload stops
    s = _samples(metrics)
    dropped = {lbl for name, lbl in s if name == "oracled_quotes_dropped_total"}
    assert dropped == {(("reason", "not_finite"), ("source", "b"))}


def test_excluded_slots_are_counted_per_source_and_reason_flags_included() -> None:
    """`oracled_source_excluded_slots` counts each source's market slots left out of the latest
    price by reason: a source's flag under the flag's name (one named like a core reason, such
    as `stale`, adds to it), a missing quote as `no_quote`; every voting source has every
    reason the round can name, 0 included, and a used slot counts nowhere."""
    core, metrics, _, results = _setup()
    core.ingest(Quote("a", "BTC/USD", T0, price=100.0, flag="stale"))
    core.ingest(Quote("a", "ETH/USD", T0, price=2_000.0, flag="sequencer"))
    for s in ("b", "c"):
        core.ingest(Quote(s, "BTC/USD", T0, price=100.0))
    results.append(core.run_round(T0 + 1_000))  # ETH/USD: b has no quote
    s = _samples(metrics)
    excluded = {
        (dict(labels)["source"], dict(labels)["reason"]): value
        for (name, labels), value in s.items()
        if name == "oracled_source_excluded_slots"
    }
    reasons = {"no_quote", "stale", "route", "bounds", "outlier", "sequencer"}
    assert set(excluded) == {(src, r) for src in ("a", "b", "c") for r in reasons}
    nonzero = {k: v for k, v in excluded.items() if v}
    assert nonzero == {("a", "stale"): 1.0, ("a", "sequencer"): 1.0, ("b", "no_quote"): 1.0}
    assert s[("oracled_market_sources_used", (("market", "BTC/USD"),))] == 2
