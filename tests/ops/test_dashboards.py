"""Static checks of the Grafana dashboards and their provisioning (the live check is in
test_prometheus.py)."""

from __future__ import annotations

import re
from typing import Any

import yaml
from catalogue import ROOT, catalogue, label_values, unknown_metrics
from dashboards import DASHBOARDS, every_panel, load, targets, variables

PROVISIONING = ROOT / "grafana" / "provisioning"
EXPECTED = {
    "oracled-overview.json",
    "oracled-market.json",
    "oracled-sources.json",
    "oracled-publishing.json",
    "oracled-chains.json",
}


def test_the_five_dashboards_exist_with_unique_uids_and_titles() -> None:
    """Overview, market drill-down, source health, publishing and on-chain; uids are stable
    links."""
    dashes = load()
    assert set(dashes) == EXPECTED
    uids = [d["uid"] for d in dashes.values()]
    titles = [d["title"] for d in dashes.values()]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)
    assert all(uid == name.removesuffix(".json") for name, uid in zip(dashes, uids, strict=True))


def test_every_panel_uses_the_datasource_variable_and_has_a_unique_id() -> None:
    """Imported anywhere, the dashboards follow the chosen Prometheus, not a fixed uid."""
    for name, dash in load().items():
        ids = []
        for panel in every_panel(dash):
            ids.append(panel["id"])
            if panel["type"] in {"row", "text"}:
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", name
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        kinds = {v.name: v.kind for v in variables(name, dash)}
        assert kinds.get("datasource") == "datasource", name


def test_queries_use_only_catalogued_metrics() -> None:
    """A renamed metric cannot leave a panel silently empty."""
    unknown = {
        (t.dashboard, t.panel): unknown_metrics(t.expr)
        for name, dash in load().items()
        for t in targets(name, dash)
    }
    assert {k: v for k, v in unknown.items() if v} == {}


def test_provisioning_points_at_the_dashboards_and_a_prometheus_datasource() -> None:
    """The provider loads files of type `file`; the data source is Prometheus and the default."""
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "oracled.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].endswith("/dashboards/oracled")
    assert DASHBOARDS.is_dir()


def _series_names(legend: str) -> re.Pattern[str]:
    """The display names a legend template gives its series: `{{label}}` is any value."""
    parts = re.split(r"\{\{\s*\w+\s*\}\}", legend)
    return re.compile(".+".join(re.escape(p) for p in parts))


def _sample_names(legend: str) -> set[str]:
    """Display names a legend template gives its series: each `{{label}}` filled with every
    value the catalogue's labels table lists for it, an address for `instance`, `x` for a
    label of open values."""
    values = {**label_values(), "instance": {"10.0.0.1:8480"}}
    names = {""}
    for part in re.split(r"(\{\{\s*\w+\s*\}\})", legend):
        label = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", part)
        options = sorted(values.get(label[1], {"x"})) if label else [part]
        names = {name + option for name in names for option in options}
    return names


def _regexp_matches(pattern: str, name: str) -> bool:
    """Whether Grafana's `byRegexp` matcher takes a display name: a pattern between slashes is
    a regular expression searched for, anything else one the whole name must match."""
    slashed = re.fullmatch(r"/(.*)/([gimsy]*)", pattern)
    if slashed:
        return re.search(slashed[1], name, re.I if "i" in slashed[2] else 0) is not None
    return re.fullmatch(pattern, name) is not None


def test_every_override_by_name_matches_a_series_of_its_panel() -> None:
    """A `byName` override applies to the series whose display name is its name, which for a
    Prometheus query is its legend. The gate transitions panels (overview and market) coloured
    `active`, `degraded`, `paused` and `unknown` while their series are named `to active`, ...:
    no override ever applied, and the transitions came in the palette's colours, a transition to
    paused in green as likely as not. Each override's name must be one a legend of the panel
    makes, and a `byRegexp` override's pattern must match a name a legend makes with the values
    its labels take (`to paused .+` for `to {{status}} {{instance}}`)."""
    dead = []
    checked = 0
    for name, dash in load().items():
        for panel in every_panel(dash):
            legends = [t.get("legendFormat", "") for t in panel.get("targets", [])]
            for override in panel.get("fieldConfig", {}).get("overrides", []):
                kind, wanted = override["matcher"]["id"], override["matcher"]["options"]
                if kind not in ("byName", "byRegexp"):
                    continue
                checked += 1
                assert all(legends) and "__auto" not in legends, (name, panel["title"])
                if kind == "byName":
                    found = any(_series_names(legend).fullmatch(wanted) for legend in legends)
                else:
                    found = any(
                        _regexp_matches(wanted, shown)
                        for legend in legends
                        for shown in _sample_names(legend)
                    )
                if not found:
                    dead.append(f"{name} / {panel['title']}: {wanted!r} not in {legends}")
    assert dead == []
    assert checked >= 20


def _units(expr: str) -> list[str]:
    """The catalogue's unit of each metric an expression names, in order."""
    listed, planned = catalogue()
    known = {**listed, **planned}
    units = []
    for name in re.findall(r"\b(oracled_[a-z0-9_]+)\b", expr):
        stem = re.sub(r"_(bucket|count|sum)$", "", name)
        units.append(known[stem if known.get(stem, ("",))[0] == "histogram" else name][2])
    return units


def _override_properties(panel: dict[str, Any], legend: str) -> dict[str, Any]:
    """The properties a panel's overrides give the series of a legend: a `byName` override
    naming the legend, a `byRegexp` one matching every name it makes (`price .+` for
    `price {{instance}}`)."""
    props: dict[str, Any] = {}
    for override in panel["fieldConfig"]["overrides"]:
        kind, wanted = override["matcher"]["id"], override["matcher"]["options"]
        names = _sample_names(legend)
        if (kind == "byName" and wanted == legend) or (
            kind == "byRegexp" and all(_regexp_matches(wanted, n) for n in names)
        ):
            props |= {p["id"]: p["value"] for p in override["properties"]}
    return props


def test_a_ratio_drawn_beside_values_has_its_own_unit_and_axis() -> None:
    """The market drill-down's Confidence panel drew the band's half-width (in the quote
    currency, ~10 for BTC/USD) and the same divided by the price (~0.0001) on one axis with no
    unit: the relative series lay flat on zero for every market priced above a few units, and
    the half-width did for the cheapest ones. A series that divides a metric by another of the
    same unit (a ratio) in a panel with series of a unit now has a unit and an axis of its own."""
    checked = 0
    for name, dash in load().items():
        for panel in every_panel(dash):
            ratios, values = [], []
            for target in panel.get("targets", []):
                units = _units(target["expr"])
                is_ratio = "/" in target["expr"] and len(units) == 2 and units[0] == units[1]
                (ratios if is_ratio else values).append(target.get("legendFormat", ""))
            if not (ratios and values):
                continue
            for legend in ratios:
                checked += 1
                props = _override_properties(panel, legend)
                assert props.get("unit") == "percentunit", (name, panel["title"], legend)
                assert props.get("custom.axisPlacement") == "right", (name, panel["title"], legend)
    assert checked >= 1


_PANEL_MENTION = re.compile(r"dashboard's \*([^*]+)\*(?: and \*([^*]+)\*)?|\*([^*]+)\* panels?\b")


def test_every_panel_the_docs_name_is_a_panel_of_a_dashboard() -> None:
    """The runbook's *History* lines send an operator to a panel by its title (`the publishing
    dashboard's *NATS connect failures per second*`, `the *Push transactions* panel`): each
    title named so is the title of a panel or row of a dashboard, so a panel renamed, or named
    from memory in the docs, fails here instead of sending someone to look for it."""
    titles = {p["title"] for dash in load().values() for p in every_panel(dash) if "title" in p}
    docs = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted(ROOT.glob("docs/*.md"))]
    named = set()
    for path in docs:
        text = re.sub(r"\s*\n\s*", " ", path.read_text())  # a title may wrap
        named |= {n for m in _PANEL_MENTION.finditer(text) for n in m.groups() if n}
    assert len(named) > 8, named  # the scan finds the docs' panel mentions at all
    assert sorted(named - titles) == []


# PromQL's aggregation operators, with `by` or `without` before the operand (or after it:
# `_CLAUSE_AFTER`); `max_over_time(` and the like are no aggregation across series.
_AGGREGATION = re.compile(
    r"\b(sum|count|max|min|avg|group|stddev|stdvar|topk|bottomk|quantile|count_values)\s*"
    r"(?:(by|without)\s*\(([^)]*)\)\s*)?\("
)
_CLAUSE_AFTER = re.compile(r"\s*(by|without)\s*\(([^)]*)\)")
_SERIES_SUFFIXES = ("_bucket", "_count", "_sum")  # a histogram's series


def _aggregated(expr: str) -> list[tuple[set[str], str]]:
    """(the labels kept, what is aggregated) of each `sum`, `count`, ... of an expression. A
    `without` keeps the labels of the series aggregated (the catalogue's, `job`, `instance`
    and a bucket's `le`) but those it names."""
    listed, _ = catalogue()
    found = []
    for match in _AGGREGATION.finditer(expr):
        end, depth = match.end(), 1
        while depth:
            depth += {"(": 1, ")": -1}.get(expr[end], 0)
            end += 1
        inner = expr[match.end() : end - 1]
        clause, labels = match[2], match[3]
        after = _CLAUSE_AFTER.match(expr, end)
        if clause is None and after is not None:
            clause, labels = after[1], after[2]
        named = {label.strip() for label in (labels or "").split(",")} - {""}
        if clause == "without":
            present = {"job", "instance", "le"}
            for metric in re.findall(r"\b(oracled_[a-z0-9_]+)\b", inner):
                for name in (metric, *(metric.removesuffix(s) for s in _SERIES_SUFFIXES)):
                    present |= listed.get(name, ("", frozenset(), ""))[1]
            named = present - named
        found.append((named, inner))
    return found


def test_every_form_of_an_aggregation_is_read_with_the_labels_it_keeps() -> None:
    """`by` before or after the operand, `without`, and the operators beyond sum and max: a
    panel written `sum(...) by (source)` or `sum without (instance) (...)` merges the replicas
    as surely as `sum by (source) (...)`, and the two tests below must see it."""
    frames = 'rate(oracled_source_frames_total{job="$job"}[5m])'
    assert _aggregated(f"sum by (source) ({frames})") == [({"source"}, frames)]
    assert _aggregated(f"sum({frames}) by (instance, source)") == [({"instance", "source"}, frames)]
    [(kept, _)] = _aggregated(f"sum without (instance) ({frames})")
    assert "instance" not in kept and "source" in kept
    [(kept, _)] = _aggregated(f"sum without (source) ({frames})")
    assert {"instance", "job"} <= kept and "source" not in kept
    assert [k for k, _ in _aggregated(f"topk(3, {frames})")] == [set()]
    assert [k for k, _ in _aggregated(f"quantile by (instance) (0.9, {frames})")] == [{"instance"}]
    assert _aggregated(f"max_over_time({frames}[1h:])") == []


def test_a_panel_that_counts_markets_or_sources_counts_them_per_instance() -> None:
    """The overview summed every instance the `instance` variable selects, All by default: with
    the two replicas of the shipped StatefulSet, each pricing every market, it read 46 active
    markets of 23, twice the sources up, and every gate transition and manual action twice. A
    panel that aggregates across markets or sources a per-market metric, or a per-source state
    (a gauge of unit 1, `_info` joins aside), keeps `instance`, one series a replica, as the
    Version stat shows one version a replica. A per-source rate summed by source (frames,
    drops) or a latency merged across sources is no count:
    `test_no_panel_merges_the_instances` keeps those apart per instance."""
    listed, _ = catalogue()
    checked, summed = 0, []
    for name, dash in load().items():
        for target in targets(name, dash):
            for kept, inner in _aggregated(target.expr):
                for metric in set(re.findall(r"\b(oracled_[a-z0-9_]+)\b", inner)):
                    _, labels, unit = listed.get(metric, ("", frozenset(), ""))
                    own = labels & {"market", "source"}
                    counted = "market" in labels or (unit == "1" and not metric.endswith("_info"))
                    if not own or own <= kept or not counted:
                        continue
                    checked += 1
                    if "instance" not in kept or "{{instance}}" not in target.legend:
                        summed.append(f"{name} / {target.panel}: {target.expr}")
    assert checked >= 12, checked  # the overview's counts, the transitions, the venues
    assert summed == []


_THINGS = {"source", "venue", "market", "chain", "endpoint", "pair"}


def test_a_series_of_a_source_market_or_chain_drawn_as_it_is_names_its_instance() -> None:
    """A per-source, per-market or per-chain series drawn without aggregation keeps its
    instance, but a legend without `{{instance}}` gave the replicas' series one name: two
    `binance` quote ages, two `price` lines on the market drill-down, and no telling which
    daemon's was which. Each such legend names the instance (a table shows every label)."""
    listed, _ = catalogue()
    checked, unnamed = 0, []
    for name, dash in load().items():
        for panel in every_panel(dash):
            if panel["type"] == "table":
                continue
            for target in panel.get("targets", []):
                expr, legend = target["expr"], target.get("legendFormat", "")
                metrics = set(re.findall(r"\b(oracled_[a-z0-9_]+)\b", expr))
                if _aggregated(expr) or not any(listed[m][1] & _THINGS for m in metrics):
                    continue
                checked += 1
                if "{{instance}}" not in legend:
                    unnamed.append(f"{name} / {panel['title']}: {legend!r}")
    assert checked >= 20, checked  # the market drill-down, the quote ages, the head ages
    assert unnamed == [], "\n".join(unnamed)


def test_no_panel_merges_the_instances() -> None:
    """The source health panels summed by source across the instances the `instance` variable
    selects, All by default: with two replicas each venue's frames, quotes, malformed frames,
    reconnects and restarts were the sum of both daemons, so a venue whose frames halved on one
    replica looked healthy and one replica's reconnect storm read as a few on each. The on-chain
    panels did the same per chain and endpoint, and took the max of the sequencer's and the
    sources' states, which hid one replica seeing them down. The overview and publishing panels
    drawn by reason, result or histogram bucket merged the replicas too: a failed config
    reload, NATS credentials refused, rounds left unsigned or subscribers dropped on one replica
    read as the fleet's, a slow replica's round duration and
    publish lag blended into the other's, and the garbage collector's time paused (s/s), a share
    of one process's time, added up past 1 with a few replicas. Every aggregation of every
    dashboard keeps `instance`, and its legend names it: a fleet total is the sum of the lines."""
    checked, per_thing, merged = 0, 0, []
    for name, dash in load().items():
        for target in targets(name, dash):
            for kept, _ in _aggregated(target.expr):
                checked += 1
                per_thing += bool(kept & _THINGS)
                if "instance" not in kept or "{{instance}}" not in target.legend:
                    merged.append(f"{name} / {target.panel}: {target.expr} ({target.legend})")
    assert checked >= 60 and per_thing >= 30, (checked, per_thing)  # sources, chains, markets
    assert merged == [], "\n".join(merged)
