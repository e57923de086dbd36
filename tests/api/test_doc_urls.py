"""The API calls the docs show (`curl $ORACLED/...`, `GET /v1/...`) against the OpenAPI
document and the shipped config: a route that exists, a market that does."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from urllib.parse import unquote

from oracled.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# A concrete path after the daemon's base URL or an HTTP method; `{market}` templates (the
# route tables) and `...` elisions are not calls.
_CALL = re.compile(
    r"(?:\$ORACLED|https?://127\.0\.0\.1:8480|\b(?:GET|POST) )"
    r"(/(?:v1/|healthz|readyz|metrics|openapi)[^\s`'\"|),;]*)"
)


def _calls() -> list[tuple[str, str]]:
    """(where, path without its query) of every concrete call the docs show."""
    out = []
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for path in _CALL.findall(line):
                path = path.split("?", 1)[0].rstrip(".:")
                if "{" not in path and "..." not in path and "…" not in path:
                    out.append((f"{doc.relative_to(ROOT)}:{number}", path))
    return out


def test_every_api_call_in_the_docs_is_a_route_and_names_a_shipped_market() -> None:
    """A call a reader copies from the docs reaches a route of /openapi.json, and a market in
    its path is one of the shipped config's: the runbook asked for `/v1/markets/BTC-USDT/sources`
    (a source's pair, no market: 404 `unknown_market`), where `BTC-USD` was meant."""
    doc = json.loads(resources.files("oracled.api").joinpath("openapi.json").read_text())
    routes = [
        re.compile("^" + re.sub(r"\\\{market\\\}", "(?P<market>[^/]+)", re.escape(p)) + "$")
        for p in doc["paths"]
    ]
    markets = {m.symbol for m in load_config(ROOT / "config" / "default.toml", env={}).markets}
    calls = _calls()
    problems = []
    for where, path in calls:
        match = next((m for r in routes if (m := r.match(path))), None)
        if match is None:
            problems.append(f"{where}: {path}: no such route")
        elif "market" in match.groupdict():
            symbol = unquote(match["market"]).upper().replace("-", "/")
            if symbol not in markets:
                problems.append(f"{where}: {path}: {symbol} is no market of config/default.toml")
    assert len(calls) >= 15, calls
    assert problems == [], "\n".join(problems)
