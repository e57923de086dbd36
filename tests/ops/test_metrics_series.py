"""The series count docs/metrics.md states (*Labels and their bounds*) against real expositions.

The formula's numbers are read from the doc, and registries of several config sizes are rendered
and counted, so a metric added or removed in the code, or a number edited in the doc, fails here.
"""

from __future__ import annotations

import re

import pytest
from catalogue import CATALOGUE
from prometheus_client.parser import text_string_to_metric_families

from oracled.config import parse_config
from oracled.core import Core
from oracled.jsonrpc import EndpointStats
from oracled.manual import PauseStats
from oracled.metrics import Metrics, MetricsInputs
from oracled.model import Status
from oracled.publish.audit import AuditStats
from oracled.publish.chain_push import PushStats
from oracled.publish.hub import Hub
from oracled.publish.nats import NatsStats
from oracled.publish.signer import SignerStats
from oracled.sources.stats import SourceStats

T0 = 1_700_000_000_000


def _paragraph() -> str:
    """The closing paragraph of *Labels and their bounds*, on one line."""
    text = CATALOGUE.read_text()
    section = text[text.index("## Labels and their bounds") :]
    return re.sub(r"\s+", " ", section[section.index("No label takes a value") :])


def _number(pattern: str) -> tuple[int, ...]:
    """The integers `pattern`'s groups match in the paragraph (thousands separators dropped)."""
    match = re.search(pattern, _paragraph())
    assert match is not None, f"docs/metrics.md no longer says {pattern!r}"
    return tuple(int(group.replace(",", "")) for group in match.groups())


def _formula() -> tuple[int, int, int, int]:
    """(per market, per slot, per source, fixed) of the documented formula."""
    m, k, s, fixed = _number(r"holds exactly (\d+) M \+ (\d+) K \+ (\d+) S \+ (\d+) series")
    return m, k, s, fixed


def _registry(
    markets: int,
    sources: int,
    per_market: int,
    *,
    push_urls: int = 1,
    manual: bool = True,
    publishing: bool = True,
    perps: bool = False,
) -> Metrics:
    """A registry after its first round: `markets` markets, each on `per_market` of `sources`
    venue sources (K = markets x per_market), the hub's counters, and the optional parts on as
    the doc's formula assumes (`push_urls` 0: no pusher). `perps`: every market is perpetual
    too, on one more source that feeds mark prices only. The count does not depend on values."""
    ids = [f"s{j}" for j in range(sources)]
    venues: dict[str, dict[str, str]] = {sid: {"type": "binance"} for sid in ids}
    if perps:
        venues["perp"] = {"type": "bybit_linear"}
    cfg = parse_config(
        {
            "sources": venues,
            "markets": [
                {
                    "symbol": f"C{i}/USD",
                    "min_sources": 1,
                    "sources": [
                        {"source": ids[(i + j) % sources], "pair": f"C{i}/USD"}
                        for j in range(per_market)
                    ],
                    "perp_sources": [{"source": "perp", "pair": f"C{i}/USD"}] if perps else [],
                }
                for i in range(markets)
            ],
        },
        env={},
    )
    core = Core(cfg)
    result = core.run_round(T0)
    hub = Hub()
    urls = [EndpointStats(f"https://rpc{n}.example") for n in range(push_urls)]
    return Metrics(
        MetricsInputs(
            core=core,
            latest=lambda: result,
            source_stats={sid: SourceStats(source=sid) for sid in venues},
            now_ms=lambda: T0,
            stream_subscribers=lambda: 0,
            stream_dropped=lambda: hub.dropped_subscribers,
            api_closed=lambda: hub.api_closed,
            admin_refused=lambda: hub.admin_refused,
            signer=SignerStats() if publishing else None,
            nats=NatsStats() if publishing else None,
            audit=AuditStats() if publishing else None,
            push=PushStats(up=True, chain="base", endpoints=urls) if push_urls else None,
            manual=PauseStats() if manual else None,
        )
    )


def _series(metrics: Metrics) -> int:
    """Samples of the exposition, without prometheus-client's `_created` series (not listed)."""
    body, _ = metrics.render()
    return sum(
        len(family.samples)
        for family in text_string_to_metric_families(body.decode())
        if not family.name.endswith("_created")
    )


@pytest.mark.parametrize(("markets", "sources", "per_market"), [(1, 1, 1), (12, 3, 2), (40, 7, 5)])
def test_the_documented_formula_counts_a_full_registry(
    markets: int, sources: int, per_market: int
) -> None:
    """With every optional part on, no chain, no perpetual market and no event yet, the
    exposition holds exactly the series the doc's `a M + b K + c S + d` gives, at sizes where
    markets, slots and sources vary apart (it said 35 S + 120 after families were added)."""
    m, k, s, fixed = _formula()
    expected = m * markets + k * markets * per_market + s * sources + fixed
    assert _series(_registry(markets, sources, per_market)) == expected


def test_the_worked_example_is_the_formula_at_1000_markets_by_10_sources() -> None:
    """The figure the doc gives for 1,000 markets x 10 sources is its formula's."""
    m, k, s, fixed = _formula()
    (example,) = _number(r"series: ([\d,]+) at 1,000 markets x 10 sources \(K = 10,000\)")
    assert example == m * 1_000 + k * 10_000 + s * 10 + fixed


def test_optional_parts_take_the_documented_series_with_them() -> None:
    """Off, the pusher and the pauses file remove the series the doc says, the signer, the NATS
    sink and the audit trail none (their families read 0), and a second push URL adds its own."""
    (push,) = _number(r"pusher off, (\d+) of the \d+ are absent")
    (pauses,) = _number(r"without a pauses file (\d+)")
    (per_url,) = _number(r"each further push URL (\d+)")
    full = _series(_registry(3, 2, 2))
    assert full - _series(_registry(3, 2, 2, push_urls=0)) == push
    assert full - _series(_registry(3, 2, 2, manual=False)) == pauses
    assert full - _series(_registry(3, 2, 2, publishing=False)) == 0
    assert _series(_registry(3, 2, 2, push_urls=2)) - full == per_url


def test_perpetual_markets_and_a_mark_only_source_add_what_the_doc_says() -> None:
    """Markets made perpetual on a source that feeds mark prices only: each adds the doc's mark
    series, and the source its own, fewer than a voting source's (no exclusions)."""
    (mark_only, voting) = _number(r"only feeds mark prices has (\d+) series, not (\d+)")
    (per_perp,) = _number(r"each perpetual market (\d+) \(P\)")
    assert voting == _formula()[2]
    markets = 3
    added = _series(_registry(markets, 2, 2, perps=True)) - _series(_registry(markets, 2, 2))
    assert added == per_perp * markets + mark_only


def test_events_add_at_most_the_documented_series_per_market() -> None:
    """Every market changed to every status and paused and resumed by hand: the counters that
    appear with events add the doc's bound per market, and no more."""
    events, transitions, actions = _number(
        r"Events add at most (\d+) M more \(gate transitions (\d+) M, admin actions (\d+) M\)"
    )
    assert events == transitions + actions
    markets = 5
    metrics = _registry(markets, 2, 2)
    before = _series(metrics)
    for i in range(markets):
        for status in Status:
            metrics.transitions.labels(f"C{i}/USD", status.label).inc()
        for action in ("pause", "resume"):
            metrics.manual_actions.labels(f"C{i}/USD", action).inc()
    assert _series(metrics) - before == events * markets


def test_the_drop_bound_is_the_labels_table_s_in_both_places() -> None:
    """The drops' bound per source in the paragraph and in the Sources table is the number of
    values the labels table gives the drops' `reason` (the table said S x 35 at 29 + 13)."""
    text = CATALOGUE.read_text()
    table = re.search(
        r"\| (\d+), fixed in code \(the table's rows\), and (\d+) more for on-chain", text
    )
    row = re.search(r"^\| `oracled_quotes_dropped_total` \|[^\n]*\| ≤ S x (\d+) \|", text, re.M)
    assert table is not None and row is not None
    (paragraph,) = _number(r"the drops, at most (\d+) S")
    reasons = int(table.group(1)) + int(table.group(2))
    assert (int(row.group(1)), paragraph) == (reasons, reasons)
