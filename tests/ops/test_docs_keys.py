"""Config keys the prose of the docs names as `section.key` exist in the config models."""

from __future__ import annotations

import re

from catalogue import ROOT
from pydantic import BaseModel

from oracled.config import Config

_DOTTED = re.compile(r"`([a-z_]+)\.([a-z_]+)[`\s=]")


def _docs() -> list[str]:
    """The operator-facing prose: the READMEs and every page of docs/."""
    paths = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted(ROOT.glob("docs/*.md"))]
    return [p.read_text() for p in paths]


def test_every_section_key_the_docs_name_is_a_key_of_its_table() -> None:
    """A docs mention such as `audit.reserve_bytes` or `signing.lease_file` (alone or with a
    value, `lease_file = ...` after the dot) names a key of that top-level table's model: a key
    renamed or misspelt in prose (the runbook telling an operator to raise a key that does not
    exist) fails here. Tables that are lists or maps of their own (`sources`, `markets`) and
    dotted names of other things (`client.unavailable`) are not checked."""
    tables = {
        name: field.annotation
        for name, field in Config.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }
    checked, missing = 0, set()
    for text in _docs():
        for table, key in _DOTTED.findall(text):
            if table in tables:
                checked += 1
                if key not in tables[table].model_fields:
                    missing.add(f"{table}.{key}")
    assert checked > 40, checked  # the scan finds the docs' key mentions at all
    assert sorted(missing) == []
