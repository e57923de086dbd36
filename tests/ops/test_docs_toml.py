"""The TOML examples of the docs against the models that read them: the daemon's config, and
docs/margin.md's accounts file."""

from __future__ import annotations

import re
import tomllib

from catalogue import ROOT
from pydantic import BaseModel, TypeAdapter, ValidationError

from oracled.config import Config
from oracled.margin.config import AccountsFile

DOCS = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted(ROOT.glob("docs/*.md"))]
#: An address left for the reader to fill in (`address = "0x..."`): any address stands for it.
_ADDRESS = ('"0x..."', '"0x' + "11" * 20 + '"')


def _blocks() -> list[tuple[str, str]]:
    """(where, text) of every ```toml block, a list item's (indented) too."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in re.finditer(r"^([ \t]*)```toml\n(.*?)^[ \t]*```", text, re.S | re.M):
            where = f"{doc.relative_to(ROOT)}:{text.count(chr(10), 0, block.start()) + 1}"
            body = re.sub(rf"^{block[1]}", "", block[2], flags=re.M)
            found.append((where, body))
    return found


def _problems(where: str, table: str, value: object, model: type[BaseModel]) -> list[str]:
    """What `model` refuses in one top-level table of an example, but keys it leaves out: an
    example shows the keys its text is about, and the rest of the file is the reader's."""
    field = model.model_fields.get(table)
    if field is None:
        return [f"{where}: [{table}] is no table of {model.__name__}"]
    try:
        TypeAdapter(field.annotation).validate_python(value)
    except ValidationError as exc:
        return [
            f"{where}: {table}.{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in exc.errors()
            if e["type"] != "missing"
        ]
    return []


def test_every_toml_example_is_read_by_its_model() -> None:
    """A table a reader pastes (`[signing]`, `[nats]`, a chain, a market's `mark`, margin.md's
    `[policy]` and `[signed]`) parses as TOML and has only keys and values the model takes: a key
    renamed in code and not in an example would have the reader's file refused (the models
    forbid unknown keys), or, in a table the model left open, ignored. docs/margin.md's are
    accounts files; the others are the daemon's config."""
    blocks = _blocks()
    assert len(blocks) >= 8, blocks  # the scan finds the examples at all
    problems = []
    for where, body in blocks:
        model: type[BaseModel] = AccountsFile if where.startswith("docs/margin.md") else Config
        try:
            document = tomllib.loads(body.replace(*_ADDRESS))
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"{where}: {exc}")
            continue
        for table, value in document.items():
            problems += _problems(where, table, value, model)
    assert problems == []
