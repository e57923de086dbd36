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
