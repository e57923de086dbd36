"""Label matchers of the queries (alerts, their unit tests, dashboards, the docs) against the
catalogue: a label the metric carries, a value the label takes."""

from __future__ import annotations

import re
from pathlib import Path

from catalogue import ROOT, Entry, catalogue, label_values

_SELECTOR = re.compile(r"\b((?:oracled|process)_[a-z0-9_]+)\{([^{}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
#: Labels Prometheus adds to every series it scrapes.
_TARGET = frozenset({"job", "instance"})
#: Labels whose values the config or the build gives: no fixed list to check against.
_OPEN = frozenset({"market", "source", "chain", "endpoint", "pair", "type", "venue", "version"})


def _files() -> list[Path]:
    """Where queries are written."""
    return [
        ROOT / "README.md",
        ROOT / "deploy" / "README.md",
        *sorted(ROOT.glob("docs/*.md")),
        ROOT / "deploy" / "prometheus" / "alerts.yml",
        ROOT / "deploy" / "prometheus" / "alerts_test.yml",
        *sorted(ROOT.glob("grafana/**/*.json")),
    ]


def _matchers() -> list[tuple[str, str, str, str, str]]:
    """(where, metric, label, operator, value) of every label matcher of a catalogued metric
    (a name the catalogue lacks fails test_metrics_catalogue.py, test_dashboards.py or
    test_alert_rules.py)."""
    listed, planned = catalogue()
    known = {**listed, **planned}
    found = []
    for path in _files():
        text = path.read_text()
        for selector in _SELECTOR.finditer(text):
            name = _family(selector[1], known)
            if name is None:
                continue
            where = f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, selector.start()) + 1}"
            for label, op, value in _MATCHER.findall(selector[2].replace('\\"', '"')):
                found.append((where, selector[1], label, op, value))
    return found


def _family(series: str, known: dict[str, Entry]) -> str | None:
    """The catalogued metric a series name belongs to (a histogram's `_bucket`, ...)."""
    if series in known:
        return series
    base = re.sub(r"_(bucket|count|sum)$", "", series)
    return base if known.get(base, ("",))[0] == "histogram" else None


def test_every_label_a_query_matches_is_a_label_of_its_metric() -> None:
    """`oracled_market_status{state="paused"}` matches nothing, for ever, without an error: an
    alert on it never fires, and a unit test whose input series carry the same misspelt label
    passes. Every matcher in the alert rules, their unit tests' series, the dashboards and the
    docs names a label the catalogue gives its metric (or `job`, `instance`, a bucket's `le`)."""
    listed, planned = catalogue()
    known = {**listed, **planned}
    matchers = _matchers()
    wrong = []
    for where, name, label, _, _ in matchers:
        allowed = (
            known[_family(name, known) or name][1]
            | _TARGET
            | ({"le"} if name.endswith("_bucket") else set())
        )
        if label not in allowed:
            wrong.append(f"{where}: {name}: no label {label!r} (it has {sorted(allowed)})")
    assert len(matchers) > 500, len(matchers)  # the scan finds the queries at all
    assert wrong == []


def test_every_value_a_query_matches_is_one_its_label_takes() -> None:
    """`reason="slow_consumers"` or `status=~"active|degradd"` matches nothing either: a value
    of a label fixed in code (statuses, states, reasons, kinds, results, ...) is one the
    catalogue lists for it. The excluded slots' `reason` also takes the flags the adapters set
    on quotes (`sequencer`, `liquidity`), and is checked against the core's reasons only by the
    catalogue itself."""
    values = label_values()
    checked, wrong = 0, []
    for where, name, label, op, value in _matchers():
        if label in _OPEN or label not in values or "$" in value:
            continue
        if name == "oracled_source_excluded_slots" and label == "reason":
            continue
        for one in value.split("|") if "~" in op else [value]:
            checked += 1
            if one not in values[label]:
                wrong.append(f"{where}: {name}{{{label}={one!r}}}: not a value of {label!r}")
    assert checked > 100, checked
    assert wrong == []
