"""README.md's API table against the OpenAPI document: the same routes, with the same methods."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_routes() -> set[tuple[str, str]]:
    """(method, path) of every route README.md's `## API` table names; `.../resume` after
    `.../{market}/pause` is read as the sibling path."""
    section = README.read_text().split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    routes: set[tuple[str, str]] = set()
    method, last = "", ""
    for named, path in re.findall(r"`(?:(GET|POST|WS) )?(/[^`\s?]*|\.\.\./[^`\s?]*)", section):
        if path.startswith(".../"):
            path = last.rsplit("/", 1)[0] + path[3:]
        else:
            method = "GET" if named == "WS" else named
        if method:
            routes.add((method, path))
        last = path
    return routes


def test_the_readme_lists_exactly_the_documented_routes() -> None:
    """Every route of /openapi.json is in the README's table and the table names no other, so
    a reader of the README neither misses an endpoint nor calls one that is not there."""
    doc = json.loads(resources.files("oracled.api").joinpath("openapi.json").read_text())
    served = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "post")
    }
    assert _readme_routes() == served
