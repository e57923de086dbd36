"""The docs' references to a section ("docs/runbook.md, *Signals*", "*Keys*, below") against
the headings and run-in bold heads of the page they point to."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from catalogue import ROOT

DOCS = [
    ROOT / "README.md",
    ROOT / "deploy" / "README.md",
    *sorted(ROOT.glob("docs/*.md")),
    ROOT / "benchmarks" / "README.md",
    ROOT / "tests" / "fixtures" / "README.md",
]
#: "docs/publishing.md, *A full disk*", "(docs/runbook.md, *Signals*)", "onchain.md *Endpoints*"
#: and lists of them ("*Keys* and *Restarts and the clock*").
_ELSEWHERE = re.compile(
    r"((?:docs/|deploy/)?[\w.-]+\.md)[,:]?\s+((?:\*[^*]+\*(?:,\s*|\s+and\s+|\s+or\s+)?)+)"
)
#: "(*Stream*, above)", "see *Keys*", "under *Volume*": a section of the same page.
_HERE = re.compile(
    r"\*([A-Z][^*]{2,80})\*,? (?:above|below)\b|(?:see|in|under) \*([A-Z][^*]{2,80})\*"
)


def _flat(text: str) -> str:
    """Line breaks inside a paragraph undone, so a reference split over two lines reads whole."""
    return re.sub(r"\s*\n\s*", " ", text)


def _name(text: str) -> str:
    """A section name as compared: no code quotes, one case, no closing stop."""
    return re.sub(r"\s+", " ", text.replace("`", "")).strip().rstrip(".:").lower()


@cache
def _sections(path: Path) -> frozenset[str]:
    """What a reference may name on a page: a heading (whole, or up to its colon or bracket,
    without its number: `## 5. Confidence`, `## Signals: stopping and reloading`) or a run-in
    bold head (`**A full disk.**`, `**Volume, and how to size it.**`)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    names = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        heading = re.sub(r"^\d+\.\s*", "", heading)
        names |= {_name(heading), _name(re.split(r"[:(]", heading)[0])}
    for head in re.findall(r"\*\*([^*]+)\*\*", _flat(text)):
        names |= {_name(head), _name(re.split(r"[,:(]", head)[0])}
    return frozenset(names)


def _page(named: str) -> Path | None:
    """The page a reference names, from the repository's root or docs/."""
    return next((p for p in (ROOT / named, ROOT / "docs" / named) if p.is_file()), None)


def test_every_section_a_doc_points_to_exists() -> None:
    """A reader sent to "docs/publishing.md, *Restarts and the clock*" finds that heading or
    bold head there: a section renamed or removed leaves every pointer to it leading nowhere,
    and nothing but this checks them (the alerts' runbook links have their own test)."""
    checked, missing = 0, []
    for doc in DOCS:
        text = _flat(doc.read_text())
        for match in _ELSEWHERE.finditer(text):
            page = _page(match[1])
            if page is None:
                missing.append(f"{doc.relative_to(ROOT)}: no page {match[1]}")
                continue
            for section in re.findall(r"\*([^*]+)\*", match[2]):
                checked += 1
                if _name(section) not in _sections(page):
                    missing.append(f"{doc.relative_to(ROOT)}: {match[1]}, *{section}*")
        for match in _HERE.finditer(text):
            checked += 1
            if _name(match[1] or match[2]) not in _sections(doc):
                missing.append(f"{doc.relative_to(ROOT)}: *{match[1] or match[2]}*")
    assert checked > 80, checked  # the scan finds the references at all
    assert missing == []
