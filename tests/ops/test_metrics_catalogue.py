"""docs/metrics.md against the exposition of a real registry: same names, types and labels."""

from __future__ import annotations

import re

from catalogue import CATALOGUE, ROOT, Entry, catalogue, unknown_metrics
from prometheus_client.parser import text_string_to_metric_families

from oracled.aggregate.book import DropReason
from oracled.config import parse_config
from oracled.core import Core, RoundResult
from oracled.jsonrpc import EndpointStats
from oracled.manual import PauseStats
from oracled.metrics import Metrics, MetricsInputs
from oracled.model import Quote
from oracled.publish.chain_push import PushStats
from oracled.publish.hub import Hub
from oracled.sources.evm.chain import ChainStats
from oracled.sources.stats import ConnState, SourceStats

T0 = 1_700_000_000_000


def populated_metrics() -> Metrics:
    """A registry over a real core and real source counters with every family holding samples."""
    cfg = parse_config(
        {
            "oracle": {"resume_rounds": 1},
            "sources": {
                s: {"type": t}
                for s, t in (("a", "binance"), ("b", "kraken"), ("p", "bybit_linear"))
            },
            "markets": [
                {
                    "symbol": "BTC/USD",
                    "min_sources": 2,
                    "sources": [{"source": s, "pair": "BTC/USD"} for s in ("a", "b")],
                    "perp_sources": [{"source": "p", "pair": "BTC/USD"}],  # the mark families
                }
            ],
        },
        env={},
    )
    core = Core(cfg)
    stats = {s: SourceStats(source=s) for s in ("a", "b")}
    results: list[RoundResult] = []
    metrics = Metrics(
        MetricsInputs(
            core=core,
            latest=lambda: results[-1] if results else None,
            source_stats=stats,
            now_ms=lambda: T0 + 2_000,
            stream_subscribers=lambda: 1,
            stream_dropped=lambda: {"slow_consumer": 1, "shutdown": 0},
            api_closed=lambda: {"send_timeout": 1, "connection_limit": 0},
            admin_refused=lambda: {"wrong": 1, "missing": 0},
            chains=lambda: [chain_stats()],
            # push on: oracled_push_up exists only then; its endpoint: the RPC families' pusher
            push=PushStats(
                up=True, chain="base", endpoints=[EndpointStats("https://rpc.example", requests=2)]
            ),
            manual=PauseStats(failures=1, kept=False),  # a pauses file: its gauge exists then
        )
    )
    for sid, px in (("a", 100.0), ("b", 100.1)):
        core.ingest(Quote(sid, "BTC/USD", T0, price=px))
        st = stats[sid]
        st.state, st.frames, st.quotes, st.last_quote_ms = ConnState.STREAMING, 3, 1, T0
        st.malformed, st.reconnects, st.dropped["out_of_order"] = 1, 1, 1
        st.failed_instruments["XYZUSD"] = "unknown symbol"
        st.observe_latency(40)
        st.observe_latency(-5)
    core.ingest(Quote("a", "BTC/USD", T0, price=float("nan")))  # a drop counted by the book
    results.append(core.run_round(T0 + 1_000))
    for t in results[-1].transitions:
        metrics.transitions.labels(t.market, t.new).inc()
    metrics.round_duration.observe(0.001)
    metrics.round_lag.observe(0.0001)
    metrics.manual_actions.labels("BTC/USD", "pause").inc()
    metrics.source_restarts.labels("a").inc()
    return metrics


def chain_stats() -> ChainStats:
    """One L2 chain reader's counters, with a failing second endpoint and its sequencer up."""
    second = EndpointStats("https://rpc.example", requests=4, failures=1, timeouts=1, failovers=1)
    second.by_kind.update(transport=1, timeout=1)
    return ChainStats(
        chain="base",
        mode="newHeads",
        blocks=10,
        round_trips=11,
        reads_failed=1,
        reorgs=1,
        backwards=1,
        old_blocks=1,
        unknown=1,
        disagreements=1,
        sequencer_up=True,
        spot_gaps={("uni", "ETH/USDC"): 2},
        last_block=1_234,
        last_block_ts=T0 // 1000,
        endpoints=[EndpointStats("http://127.0.0.1:8545", requests=8), second],
    )


def exposition() -> dict[str, Entry]:
    """Every family the registry exposes, named as Prometheus stores it (counters with _total)."""
    body, _ = populated_metrics().render()
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        assert family.samples, f"{family.name} has no samples: the fixture does not populate it"
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = frozenset(k for s in family.samples for k in s.labels if k != "le")
        found[name] = (family.type, labels)
    created = {n for n in found if n.endswith("_created")}
    # prometheus-client's companion series of its own counters and histograms (see the catalogue).
    bases = {n.removesuffix("_created") for n in created}
    assert all(b + "_total" in found or b in found for b in bases), created
    return {n: (*v, "") for n, v in found.items() if n not in created}


def test_every_exposed_metric_is_catalogued_and_every_catalogued_metric_is_exposed() -> None:
    """A metric added to the code without docs, or documented but gone, fails here."""
    listed, _ = catalogue()
    exposed = exposition()
    assert sorted(set(exposed) - set(listed)) == [], "exposed but not in docs/metrics.md"
    assert sorted(set(listed) - set(exposed)) == [], "in docs/metrics.md but not exposed"


def test_catalogued_types_and_labels_match_the_exposition() -> None:
    """The type and label set written in the catalogue are the ones the exposition carries."""
    listed, _ = catalogue()
    exposed = exposition()
    wrong = {
        name: (listed[name][:2], exposed[name][:2])
        for name in set(listed) & set(exposed)
        if listed[name][:2] != exposed[name][:2]
    }
    assert wrong == {}


def test_planned_metrics_are_not_exposed_yet() -> None:
    """A planned metric that lands must move to its real table (with its real labels)."""
    _, planned = catalogue()
    assert sorted(set(planned) & set(exposition())) == []


def test_names_follow_prometheus_conventions() -> None:
    """Prefix, _total on counters only, base units in the name, info metrics are gauges."""
    listed, planned = catalogue()
    problems = []
    for name, (kind, _, unit) in {**listed, **planned}.items():
        if not name.startswith(("oracled_", "process_")):
            problems.append(f"{name}: no oracled_ prefix")
        if (kind == "counter") != name.endswith("_total"):
            problems.append(f"{name}: _total is for counters only, and every counter has it")
        base = name.removesuffix("_total")
        if unit in {"seconds", "bytes"} and not base.endswith("_" + unit):
            problems.append(f"{name}: in {unit} but not named so")
        if name.endswith("_info") and kind != "gauge":
            problems.append(f"{name}: an info metric is a gauge")
        if kind not in {"counter", "gauge", "histogram"}:
            problems.append(f"{name}: unknown type {kind}")
    assert problems == []


_COUNTED = re.compile(r"dropped\[([^\]]+)\]|_bad\(([^)]*)\)")
_DROP_ROW = re.compile(r"^\| `([a-z_]+)` \(")


def _code_drop_reasons() -> set[str]:
    """The literal reasons the venue adapters and the chain reader count, and the book's."""
    found = {str(reason) for reason in DropReason}
    for path in sorted((ROOT / "oracled" / "sources").rglob("*.py")):
        for match in _COUNTED.finditer(path.read_text()):
            found.update(re.findall(r'"(\w+)"', match.group(1) or match.group(2)))
    return found


def test_every_drop_reason_counted_in_the_code_is_documented() -> None:
    """Each `reason` value the venue adapters, the chain reader and the book can give
    oracled_quotes_dropped_total has its row under Drop reasons in docs/metrics.md (an operator
    who sees `resync` or `unsolicited` finds what it means). Reasons that reach the counter
    through a variable (Gemini's level check, the on-chain feeds' answers) are not seen here."""
    text = CATALOGUE.read_text()
    section = text[text.index("## Drop reasons") : text.index("## Planned")]
    documented = {m.group(1) for line in section.splitlines() if (m := _DROP_ROW.match(line))}
    code = _code_drop_reasons()
    assert len(code) > 20, code  # the scan finds the counted reasons at all
    assert sorted(code - documented) == []


_BOUND_ROW = re.compile(r"^\| `(\w+)` \(([^)]+)\) \| (.+) \| (\d+) \|$")
#: Rows of *Labels and their bounds* whose values are fixed in code: the family that carries them.
_FIXED_LABELS = {
    ("reason", "signer"): "oracled_signer_errors",
    ("reason", "NATS"): "oracled_nats_unpublished",
    ("reason", "NATS connects"): "oracled_nats_connect_failures",
    ("reason", "push"): "oracled_push_skipped_markets",
    ("result", "push"): "oracled_push_transactions",
    ("kind", "RPC errors"): "oracled_chain_rpc_errors",
    ("client", "RPC clients"): "oracled_chain_rpc_requests",
    ("reason", "chain blocks"): "oracled_chain_blocks_refused",
    ("mode", "chain readers"): "oracled_chain_mode",
    ("mode", "marks"): "oracled_mark_mode",
    ("reason", "newHeads left"): "oracled_chain_new_heads_left",
    ("subject", "NATS permissions"): "oracled_nats_permission_denied",
}


def _bounds_table() -> dict[tuple[str, str], tuple[list[str], int]]:
    """(label, what) -> (the values listed in backticks, the bound) from the labels table."""
    text = CATALOGUE.read_text()
    section = text[text.index("## Labels and their bounds") :]
    rows: dict[tuple[str, str], tuple[list[str], int]] = {}
    for line in section.splitlines():
        if match := _BOUND_ROW.match(line):
            label, what, values, bound = match.groups()
            rows[(label, what)] = (re.findall(r"`([a-z_]+)`", values), int(bound))
    return rows


def test_the_labels_table_lists_the_values_the_code_gives_and_counts_them() -> None:
    """Each label whose values are fixed in code (the signer's, NATS's, the push's, the chain
    reader's reasons and kinds, the RPC clients, NATS's refused subjects, the API's and the
    streams' close reasons, the admin API's refusals) lists in *Labels and their bounds*
    exactly the values the exposition and the hub carry, and its bound is their number: a
    reason added in code (e.g. an RPC error kind) without its row updated fails here."""
    rows = _bounds_table()
    body, _ = populated_metrics().render()
    values: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for (label, _), name in _FIXED_LABELS.items():
            if family.name == name:
                values.setdefault(name, set()).update(s.labels[label] for s in family.samples)
    hub = Hub()
    code = {key: sorted(values[name]) for key, name in _FIXED_LABELS.items()}
    code[("reason", "API connections")] = sorted(hub.api_closed)
    code[("reason", "admin")] = sorted(hub.admin_refused)
    code[("reason", "stream")] = sorted(hub.dropped_subscribers)
    wrong = {}
    for key, expected in code.items():
        listed, bound = rows[key]
        if sorted(listed) != expected or bound != len(expected):
            wrong[key] = (listed, bound, expected)
    assert wrong == {}


def test_the_drop_reasons_bound_counts_the_table_and_the_on_chain_list() -> None:
    """The `reason` (drops) row of *Labels and their bounds* says how many values the label
    takes: the rows of *Drop reasons*, and the on-chain feeds' reasons listed under it that are
    not rows already. It said 26 with 27 venue and book rows and two on-chain rows: a reason
    added to either list without the bound fails here."""
    text = CATALOGUE.read_text()
    section = text[text.index("## Drop reasons") : text.index("## Planned")]
    rows = {m.group(1) for line in section.splitlines() if (m := _DROP_ROW.match(line))}
    prose = re.sub(r"\s+", " ", section[section.index("On-chain feeds also drop") :])
    on_chain = set(re.findall(r"`([a-z_]+)`", prose[: prose.index(". Every one")]))
    bound = re.search(
        r"\| (\d+), fixed in code \(the table's rows\), and (\d+) more for on-chain", text
    )
    assert bound is not None
    assert (int(bound.group(1)), int(bound.group(2))) == (len(rows), len(on_chain - rows))


def test_every_metric_the_docs_name_is_catalogued() -> None:
    """A metric named anywhere in the READMEs or docs/ (the runbook's queries, the prose of
    onchain.md or publishing.md) is one the catalogue lists, so one the daemon exposes (the test
    above): a name misspelt or renamed in prose fails here. A family named by its prefix
    (`oracled_source_*`) is not a name."""
    docs = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted(ROOT.glob("docs/*.md"))]
    missing = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in docs
        for name in unknown_metrics(path.read_text())
        if not name.endswith("_")
    }
    assert sorted(missing) == []
