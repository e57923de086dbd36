"""Files and folders of the repository that the docs name (`oracled/jsonrpc.py`,
`scripts/pytest-shards.sh`, `deploy/kubernetes/`) exist."""

from __future__ import annotations

import re

from catalogue import ROOT

DOCS = [
    ROOT / "README.md",
    ROOT / "deploy" / "README.md",
    *sorted(ROOT.glob("docs/*.md")),
    ROOT / "benchmarks" / "README.md",
]
_PATH = re.compile(
    r"(?<![\w./-])((?:oracled|tests|scripts|deploy|benchmarks|config|contracts|grafana|docs)"
    r"/[\w./<>{}*-]*[\w>}*/])"
)
#: deploy/README.md names its own files from deploy/ (`systemd/oracled.service`).
_DEPLOY_PATH = re.compile(
    r"`((?:systemd|kubernetes|prometheus)/[\w./-]+|compose\.yaml|Dockerfile)`"
)
#: Paths the docs name that are made, not shipped: `make bench`'s output, the compose stack's
#: secrets file (git ignores it).
_MADE = {"benchmarks/results", "deploy/oracled.env"}


def test_every_repository_path_the_docs_name_exists() -> None:
    """A path a reader is sent to is one the repository has: a module moved or a script
    renamed leaves the docs pointing at nothing. Templates (`tests/fixtures/<venue>/`,
    `oracled/sources/{venue}.py`) name a folder that exists; ARCHITECTURE.md's modules have
    their own, stricter test (tests/test_layers.py)."""
    checked, missing = 0, []
    for doc in DOCS:
        text = doc.read_text()
        shown = [(p, ROOT) for p in _PATH.findall(text)]
        if doc.parent.name == "deploy":
            shown += [(p, doc.parent) for p in _DEPLOY_PATH.findall(text)]
        for path, base in shown:
            path = path.rstrip("/.")
            if path in _MADE:
                continue
            if re.search(r"[<{*]", path):  # a template: its folder
                path = re.split(r"/[^/]*[<{*]", path, maxsplit=1)[0]
            checked += 1
            if not (base / path).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert checked > 100, checked  # the scan finds the docs' paths at all
    assert sorted(set(missing)) == []
