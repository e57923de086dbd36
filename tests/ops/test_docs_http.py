"""The `curl ... | jq '...'` look-ups the docs give an operator against a real daemon's answers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from catalogue import ROOT
from daemon import Daemon, sim_config

from oracled.sim import BinanceSim

# The tests only read the daemon (an admin path is posted without the token): they share one.
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

DOCS = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted(ROOT.glob("docs/*.md"))]
#: `curl -s $ORACLED/v1/markets/BTC-USD/sources | jq '.sources[] | {source, used}'`
_LOOKUP = re.compile(r"curl -s\w* \$ORACLED(/\S+) \| jq '([^']+)'")


def _lookups() -> list[tuple[str, str, str]]:
    """(doc, path, jq filter) of every look-up, in code blocks and in the prose alike."""
    found = []
    for doc in DOCS:
        text = re.sub(r"\s*\n\s*", " ", doc.read_text())
        found += [(doc.name, path, jq) for path, jq in _LOOKUP.findall(text)]
    return found


def _names(jq: str) -> set[str]:
    """The keys a filter reads: `.sources[]`, `.connection.state`, and the shorthand of an
    object construction (`{source, used, state: .connection.state}` reads `source` and `used`;
    `state` is a label of the output)."""
    names = set(re.findall(r"\.([A-Za-z_]\w*)", re.sub(r'"[^"]*"', "", jq)))
    for body in re.findall(r"\{([^{}]*)\}", jq):
        names |= {item.strip() for item in body.split(",") if re.fullmatch(r"\s*\w+\s*", item)}
    return names


def _keys(document: Any) -> set[str]:
    """Every key of a JSON document, at any depth."""
    if isinstance(document, dict):
        return set(document).union(*(_keys(v) for v in document.values()))
    if isinstance(document, list):
        return set().union(*(_keys(v) for v in document))
    return set()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(
    module_venues: list[BinanceSim], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Daemon]:
    """A daemon on the loopback venues, its markets live."""
    config = sim_config([(s.ws_url, s.rest_url) for s in module_venues])
    running = Daemon(config, tmp_path_factory.mktemp("daemon"))
    await running.start()
    try:
        await running.wait_status("ETH/USD", {"active", "degraded"}, limit_s=20)
        yield running
    finally:
        await running.close()


async def test_every_key_a_docs_look_up_reads_is_in_the_daemons_answer(daemon: Daemon) -> None:
    """jq reads a key that is not there as null, without a word: a field renamed in the API
    and not in the runbook (`age_ms`, `connection.state`, `instrument`) would have an operator
    read nulls in an incident and take them for the answer. Each look-up's path is asked of a
    daemon on loopback venues whose markets go through a route (so that `via` is there), and
    every key its filter names is one of the answer's keys."""
    lookups = _lookups()
    assert len(lookups) > 8, lookups  # the scan finds the runbook's look-ups at all
    missing = []
    for doc, path, jq in lookups:
        status, body = await daemon.get(path)
        assert status == 200, (doc, path, body)
        absent = _names(jq) - _keys(body)
        if absent:
            missing.append(f"{doc}: {path} | jq '{jq}': no {sorted(absent)}")
    assert missing == []


async def test_every_daemon_path_the_docs_name_is_served(daemon: Daemon) -> None:
    """Each `$ORACLED/...` path of the docs' commands is one the daemon serves: a GET of a read
    path answers 200; an admin path, posted without the token, is refused for want of it (401),
    not unknown (404)."""
    paths = {
        path.rstrip(".,;:")
        for doc in DOCS
        for path in re.findall(r"\$ORACLED(/[\w./-]+)", doc.read_text())
    }
    assert len(paths) > 5, paths  # the scan finds the runbook's paths at all
    wrong = []
    for path in sorted(paths):
        admin = path.startswith("/v1/admin/")
        status, _ = await (daemon.post(path) if admin else daemon.get(path))
        if status != (401 if admin else 200):
            wrong.append(f"{path}: {status}")
    assert wrong == []
