"""docs/config.md and docs/mark.md against the config models: every key, and every default."""

from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path

from pydantic import BaseModel

from oracled import config as c

DOCS = Path(__file__).resolve().parents[2] / "docs"

# The tables of docs/config.md by their heading, and the models they describe.
SECTIONS: dict[str, type[BaseModel]] = {
    "[oracle]": c.OracleConfig,
    "[api]": c.ApiConfig,
    "[log]": c.LogConfig,
    "[sources.<id>]": c.SourceConfig,
    "[chains.<id>]": c.ChainConfig,
    "[[markets]]": c.MarketConfig,
    "[signing]": c.SigningConfig,
    "[nats]": c.NatsConfig,
    "[push]": c.PushConfig,
    "[audit]": c.AuditConfig,
}
_NUMBER = re.compile(r"-?[0-9][0-9_]*(\.[0-9]+)?(e-?[0-9]+)?")


def _models(model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """`model` and every model nested in its fields, with the key path that leads there."""
    found = [("", model)]
    for name, field in model.model_fields.items():
        args = typing.get_args(field.annotation)
        for arg in (field.annotation, *args, *(a for x in args for a in typing.get_args(x))):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                found += [(f"{name}.{path}", m) for path, m in _models(arg)]
    return found


def _rows(text: str, heading: str) -> dict[str, str]:
    """Key -> default column of the table rows under the `## ` heading `heading`."""
    rows: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            match = re.match(r"## `([^`]+)`", line)
            current = match.group(1) if match else line[3:].strip()
        elif current == heading and line.startswith("| `"):
            cells = [cell.strip() for cell in line.split("|")[1:-1]]
            keys = re.findall(r"`([a-z_0-9]+)`", cells[0])
            # `min_price`, `max_price` | 1e-12, 1e12: one default each; else one for all.
            defaults = cells[1].split(", ")
            if len(defaults) != len(keys):
                defaults = [cells[1]] * len(keys)
            rows.update(zip(keys, defaults, strict=True))
    return rows


def _literal(default: str) -> object:
    """The value a default cell spells out, or NotImplemented for prose (`the venue's`)."""
    if _NUMBER.fullmatch(default):
        return float(default.replace("_", ""))
    if default in ("true", "false"):
        return default == "true"
    if default.endswith(" GiB") and _NUMBER.fullmatch(default[:-4]):
        return float(default[:-4]) * 1024**3
    if default.startswith("`") and default.endswith("`"):
        inner = default.strip("`")
        if not inner.startswith(("[", "{")):
            return inner  # a bare string: `oracled`, `127.0.0.1:8480`, an address
        value = tomllib.loads(f"v = {inner}")["v"]  # as in a file: `[]`, `["nats://..."]`
        return tuple(value) if isinstance(value, list) else value
    return NotImplemented


def test_every_key_of_the_config_models_is_named_in_the_reference() -> None:
    """A key the code takes but docs/config.md never names is a setting nobody can find."""
    text = (DOCS / "config.md").read_text()
    named = {
        word for quoted in re.findall(r"`([^`]+)`", text) for word in re.findall(r"\w+", quoted)
    }
    missing = [
        f"{path}{field.alias or name}"
        for path, model in _models(c.Config)
        for name, field in model.model_fields.items()
        if not field.exclude
        and name != "admin_token"  # from the environment, refused in a file
        and (field.alias or name) not in named
    ]
    assert not missing


def test_the_reference_tables_name_only_keys_that_exist_with_their_real_defaults() -> None:
    """Each row of a docs/config.md table is a key of its model, and a default written as a
    value (a number, true/false, a quoted string, an empty list) is the code's default."""
    text = (DOCS / "config.md").read_text()
    checked = 0
    for heading, model in SECTIONS.items():
        rows = _rows(text, heading)
        assert rows, heading
        for key, default in rows.items():
            if key in ("chainlink", "pyth_evm", "uniswap_v3"):
                continue  # the feed-spec and age-limit tables under the same headings
            assert key in model.model_fields, f"{heading} {key}: no such key"
            expected = _literal(default)
            if expected is NotImplemented or (
                isinstance(expected, str) and expected in model.model_fields
            ):
                continue  # prose, or another key's value (`max_deviation`)
            actual = model.model_fields[key].get_default(call_default_factory=True)
            assert actual == expected, f"{heading} {key}: docs say {default}, code has {actual!r}"
            checked += 1
    assert checked > 50  # the parser still reads the tables


def test_the_mark_table_lists_every_mark_setting_with_its_default() -> None:
    """docs/mark.md, which docs/config.md points to for them, gives every `mark` key's default."""
    rows = _rows((DOCS / "mark.md").read_text(), "Config")
    fields = c.MarkConfig.model_fields
    assert set(rows) == set(fields)
    for key, default in rows.items():
        assert float(default) == fields[key].default, key


def test_every_source_type_is_in_the_reference_and_its_venue_table() -> None:
    """The `type` row of docs/config.md names every adapter, and each has its section: a venue
    type a row of docs/sources.md's table, an on-chain type its mention in docs/onchain.md."""
    text = (DOCS / "config.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `type` | required |"))
    assert set(re.findall(r"`([a-z_0-9]+)`", row)) >= set(c.SOURCE_TYPES)
    venues = set(re.findall(r"^\| `([a-z_0-9]+)`", (DOCS / "sources.md").read_text(), re.M))
    assert venues == set(c.SOURCE_TYPES) - c.CHAIN_SOURCE_TYPES
    onchain = (DOCS / "onchain.md").read_text()
    assert all(f"`{name}`" in onchain for name in c.CHAIN_SOURCE_TYPES)


def test_the_warnings_table_lists_exactly_the_warnings_the_warn_files_give() -> None:
    """docs/config.md's Warnings table names each kind of `config warning` (key paths with
    `[i]`, `[j]`, `<id>`, `<pair>` for the indices and names), and each has a file under
    tests/config/warn/ that gives it: a new warning is documented and tested, or this fails."""
    produced: set[str] = set()
    for path in sorted((Path(__file__).parent / "warn").glob("*.toml")):
        for warning in c.config_warnings(c.load_config(path, env={})):
            key = warning.split(": ", 1)[0]
            key = re.sub(r"^markets\[\d+\]", "markets[i]", key)
            key = re.sub(r"(sources|perp_sources)\[\d+\]", r"\1[j]", key)
            key = re.sub(r"\.feeds\.[^.]+\.", ".feeds.<pair>.", key)
            produced.add(re.sub(r"^(sources|chains)\.[^.]+(\.|$)", r"\1.<id>\2", key))
    section = (DOCS / "config.md").read_text().split("\n## Warnings\n", 1)[1].split("\n## ", 1)[0]
    table = {
        key
        for line in section.splitlines()
        if line.startswith("| `")
        for key in re.findall(r"`([^`]+)`", line.split("|")[1])
    }
    assert produced == table
