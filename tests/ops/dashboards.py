"""The Grafana dashboards of grafana/dashboards as data: panels' queries and template variables."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from catalogue import ROOT

DASHBOARDS = ROOT / "grafana" / "dashboards"
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[a-zA-Z_]\w*)\)$")
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_REGEX_SPECIALS = set(".+*?()[]{}|^$\\")
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_METRIC = re.compile(r"\b((?:oracled|process)_[a-z0-9_]+)\b")


@dataclass(frozen=True)
class Target:
    dashboard: str
    panel: str
    expr: str
    legend: str  # legendFormat: `{{label}}` names a label of the query's series


@dataclass(frozen=True)
class Variable:
    dashboard: str
    name: str
    kind: str
    query: str
    multi: bool

    def label_values(self) -> tuple[str, str]:
        """(selector, label) of a `label_values(selector, label)` query; fails on other forms."""
        match = _LABEL_VALUES.match(self.query)
        assert match, f"{self.dashboard}: ${self.name} is not label_values(...): {self.query}"
        return match["selector"], match["label"]


def load() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def every_panel(dash: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Each panel of a dashboard, those of its rows too."""
    return _panels(dash["panels"])


def targets(name: str, dash: Mapping[str, Any]) -> list[Target]:
    return [
        Target(name, panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in every_panel(dash)
        for target in panel.get("targets", [])
    ]


def variables(name: str, dash: Mapping[str, Any]) -> list[Variable]:
    out = []
    for var in dash["templating"]["list"]:
        query = var.get("query", "")
        if isinstance(query, dict):
            query = query["query"]
        multi = bool(var.get("multi") or var.get("includeAll"))
        out.append(Variable(name, var["name"], var["type"], query, multi))
    return out


def regex_alternation(values: list[str]) -> str:
    """Values as one regex for `=~`, escaped for a PromQL double-quoted string (as Grafana does)."""
    return "|".join("".join("\\\\" + c if c in _REGEX_SPECIALS else c for c in v) for v in values)


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace `$name` and `${name}` by their values; a variable without a value fails."""

    def one(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in values, f"no value for ${name} in {expr}"
        return values[name]

    return _VARIABLE.sub(one, expr)


def label_uses(expr: str) -> tuple[dict[str, set[str]], set[str], set[str]]:
    """What a PromQL expression asks of the series: (labels each metric's selector matches on,
    labels it aggregates or joins by, the oracled and process metrics it names)."""
    matched: dict[str, set[str]] = {}
    for metric, body in _SELECTOR.findall(expr):
        matched.setdefault(metric, set()).update(_MATCHER.findall(body))
    grouped = {
        label.strip() for labels in _GROUPING.findall(expr) for label in labels.split(",")
    } - {""}
    return matched, grouped, set(_METRIC.findall(expr))
