"""The metrics catalogue (docs/metrics.md) as data, for the tests that check names against it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = ROOT / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `([a-zA-Z_:][a-zA-Z0-9_:]*)` \|\s*(\w+)\s*\|([^|]*)\|([^|]*)\|")

Entry = tuple[str, frozenset[str], str]  # type, labels, unit


def catalogue() -> tuple[dict[str, Entry], dict[str, Entry]]:
    """(listed metrics, planned metrics) from the tables of docs/metrics.md."""
    listed: dict[str, Entry] = {}
    planned: dict[str, Entry] = {}
    target = listed
    for line in CATALOGUE.read_text().splitlines():
        if line.startswith("## "):
            target = planned if line.strip() == "## Planned" else listed
        match = _ROW.match(line)
        if match:
            name, kind, labels, unit = match.groups()
            assert name not in listed and name not in planned, f"{name} listed twice"
            label_set = frozenset(x.strip() for x in labels.split(",") if x.strip())
            target[name] = (kind, label_set, unit.strip())
    return listed, planned


_NAME = re.compile(r"\b((?:oracled|process)_[a-z0-9_]+)\b")
_HISTOGRAM_SERIES = ("_bucket", "_count", "_sum")


def unknown_metrics(expr: str) -> set[str]:
    """Metric names an expression uses that the catalogue neither lists nor plans."""
    listed, planned = catalogue()
    known = {**listed, **planned}
    missing = set()
    for name in _NAME.findall(expr):
        base = name
        for suffix in _HISTOGRAM_SERIES:
            if (
                name.endswith(suffix)
                and known.get(name.removesuffix(suffix), ("",))[0] == "histogram"
            ):
                base = name.removesuffix(suffix)
        if base not in known:
            missing.add(name)
    return missing


def label_values() -> dict[str, set[str]]:
    """Label -> the values *Labels and their bounds* lists for it (in backticks), the drop
    reasons' rows counted among `reason`'s."""
    text = CATALOGUE.read_text()
    values: dict[str, set[str]] = {}
    for line in text[text.index("## Labels and their bounds") :].splitlines():
        if row := re.match(r"^\| `(\w+)` (?:\([^)]*\) )?\| (.+?) \| \d+", line):
            values.setdefault(row[1], set()).update(re.findall(r"`([a-z0-9_]+)`", row[2]))
    drops = text[text.index("## Drop reasons") : text.index("## Planned")]
    values["reason"] |= set(re.findall(r"^\| `([a-z_]+)`", drops, re.M))
    return values
