"""The PromQL the docs give an operator to run (the runbook's *Confirm* blocks) parses."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from catalogue import ROOT
from test_alert_rules import promtool

#: A line that goes on the query above it: indented, or opening with a bracket or an operator.
_GOES_ON = re.compile(r"\s|\)|/|\*|\+|-|and\b|or\b|unless\b|>|<|==|!=")


def _queries() -> list[tuple[str, str]]:
    """(where, query) of every query in a ```promql block of README.md, deploy/ or docs/: one a
    line, continued over the lines that go on it."""
    found: list[tuple[str, str]] = []
    for path in [ROOT / "README.md", ROOT / "deploy" / "README.md", *ROOT.glob("docs/*.md")]:
        text = path.read_text()
        for block in re.finditer(r"^```promql\n(.*?)^```", text, re.S | re.M):
            first = text.count("\n", 0, block.start()) + 2
            queries: list[tuple[str, str]] = []
            for number, line in enumerate(block[1].splitlines(), first):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if queries and _GOES_ON.match(line):
                    where, query = queries.pop()
                    queries.append((where, f"{query} {line.strip()}"))
                else:
                    queries.append((f"{path.relative_to(ROOT)}:{number}", line.strip()))
            found += queries
    return found


def test_every_query_the_docs_show_parses(tmp_path: Path) -> None:
    """A query an operator pastes into Prometheus during an incident must run: promtool parses
    each, as the expression of a recording rule (its names and labels are checked against the
    catalogue by test_metrics_catalogue.py and test_label_matchers.py)."""
    queries = _queries()
    rules = [{"record": f"docs:query_{n}", "expr": query} for n, (_, query) in enumerate(queries)]
    path = tmp_path / "docs_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "docs", "rules": rules}]}, width=10_000))
    result = promtool("check", "rules", str(path))
    failed = [
        f"{queries[int(n)][0]}: {why}"
        for n, why in re.findall(r'"docs:query_(\d+)": (.*)', result.stdout + result.stderr)
    ]
    assert len(queries) > 50, len(queries)  # the runbook's blocks are read at all
    assert result.returncode == 0 and failed == [], failed or result.stdout + result.stderr
