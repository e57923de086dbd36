"""docs/margin.md as a reader uses it: its accounts file loads through the library call shown."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from oracled.margin import RiskPolicy, load_accounts

DOC = Path(__file__).resolve().parents[2] / "docs" / "margin.md"


def test_the_documented_accounts_file_loads_from_a_path_given_as_text(tmp_path: Path) -> None:
    """The TOML example of docs/margin.md is a valid accounts file, and `load_accounts(path)` of
    the Library section takes the path as a string too. Found running that snippet: a str path
    failed with AttributeError ('str' object has no attribute 'read_bytes')."""
    match = re.search(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    assert match is not None
    path = tmp_path / "accounts.toml"
    path.write_text(match.group(1))
    spec = load_accounts(str(path))
    assert spec == load_accounts(path)
    assert [a.id for a in spec.accounts] == ["alice"]


def test_the_documented_policy_shows_every_key_at_its_default() -> None:
    """The `[policy]` table of docs/margin.md is read as the defaults: it lists every policy
    key, each at the value the code defaults to (only `insurance_fund` is an example amount).
    Found when `after_grace` became "freeze" by default while the page still showed
    "last_good"."""
    match = re.search(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    assert match is not None
    shown = tomllib.loads(match.group(1))["policy"]
    defaults = RiskPolicy().model_dump()
    assert set(shown) == set(defaults)
    assert {k: v for k, v in shown.items() if k != "insurance_fund"} == {
        k: v for k, v in defaults.items() if k != "insurance_fund"
    }


def test_the_documented_signed_section_loads_as_signed_mode(tmp_path: Path) -> None:
    """The `[signed]` example of docs/margin.md (Signed mode), added to the accounts example, is
    a valid signed section: its keys, quorum and identities are the ones the code reads, and a
    rotated identity's two addresses are one identity's."""
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 2 and blocks[1].startswith("[signed]")
    path = tmp_path / "accounts.toml"
    path.write_text(blocks[0] + "\n" + blocks[1])
    signed = load_accounts(path).signed
    assert signed is not None and signed.deployment == "production" and signed.quorum == 2
    assert [len(a) for a in signed.allowed().values()] == [1, 2, 1]


def test_the_decisions_table_names_every_kind_with_its_keys() -> None:
    """`oracled margin` prints decisions as JSON lines whose shape the page did not give: its
    Decisions table names each `kind` with exactly the keys the encoder writes (the common
    `kind`, `ts`, `account` and `scope` in the sentence above it), and a `shortfall`'s
    `deleveraged` entries with theirs."""
    from oracled.margin.decisions import Decision, Deleverage

    section = DOC.read_text().split("\n## Decisions\n", 1)[1].split("\n## ", 1)[0]
    common = {"kind", "ts", "account", "scope"}
    assert all(f"`{key}`" in section.split("\n|", 1)[0] for key in common)
    rows = re.findall(r"^\| `([a-z_]+)` \| [^|]* \| (.*) \|$", section, re.M)
    documented = {  # a key's explanation in parentheses names no key
        kind: set(re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", keys)))
        for kind, keys in rows
        if kind != "kind"  # the header
    }
    encoded = {
        cls.__struct_config__.tag: set(cls.__struct_fields__) - common for cls in Decision.__args__
    }
    assert documented == encoded
    entry = re.search(r"`deleveraged` \(each ([^)]*)\)", section)
    assert entry is not None
    assert set(re.findall(r"`([a-z_]+)`", entry.group(1))) == set(Deleverage.__struct_fields__)
