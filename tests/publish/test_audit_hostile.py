"""Every `oracled audit` question on a signed trail one of whose cells anyone who can write the
file has changed (SQLite keeps any value in any column): no traceback, whatever the value, and
`--verify` never exits 0 once a cell that a signature stands for holds something else."""

from __future__ import annotations

import contextlib
import io
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from audit_rig import Feed, trail
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from publish_rig import T0, make_config

from oracled.cli import main
from oracled.publish.signer import RoundSigner, SigningKey

KEY = SigningKey.from_hex("0x" + "5a" * 32)

#: The cells a signed round's check rests on: the round row's time, number, market count, root,
#: signature, signer and format, and each report row's body, dictionary, market, time and
#: round. (A signature set to NULL makes the round unsigned, which --verify counts and
#: exits 0 on, as docs/publishing.md says; a report's `pos` moved keeping the order changes
#: nothing signed.)
SIGNED = {
    "rounds": ("ts", "round", "markets", "root", "signature", "signer", "format", "id"),
    "reports": ("body", "dict", "market", "ts", "round_id"),
}
#: Every other column, whose change must only never end in a traceback.
UNSIGNED = {
    "rounds": ("quotes",),
    "reports": ("pos", "status"),
    "tapes": ("round_id", "lines"),
    "transitions": ("round_id", "ts", "market", "old", "new", "reasons"),
    "actions": ("ts", "actor", "action", "market"),
    "configs": ("ts", "event", "actor", "path", "sha256", "changes"),
    "dictionaries": ("id", "ts", "markets", "priced", "data"),
    "meta": ("value",),
}

VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, -1, 3, T0 + 750, 2**62 + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["BTC/USD", "ETH/USD", "active", "0x" + "00" * 20, "1700000000750"]),
    st.binary(max_size=40),
)

QUESTIONS = (
    [],
    ["--market", "BTC/USD"],
    ["--market", "BTC/USD", "--at", str(T0 + 4 * 250)],
    ["--market", "ETH/USD", "--csv", "{dir}/out.csv"],
    ["--tape", "{dir}/out.jsonl"],
    ["--verify", "--deployment", "test"],
    ["--verify", "--deployment", "test", "--market", "BTC/USD"],
)


@pytest.fixture(scope="module")
def signed_trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five signed rounds of three markets, an operator action and a config load."""
    path = tmp_path_factory.mktemp("trail") / "audit.sqlite3"
    feed = Feed(make_config(), trail(path))
    feed.audit.record_config(T0, "start", "daemon", "oracled.toml", "ab" * 32, "")
    feed.audit.record_action(T0 + 1, "ops", "pause", "BTC/USD")
    signer = RoundSigner(KEY, "test")
    for _ in range(5):
        feed.round(signer)
    assert feed.audit.close()
    return path


def _change(path: Path, table: str, column: str, row: int, value: object) -> bool:
    """Set one cell (the `row`-th of the table, in its storage order) to `value`; False if
    SQLite refuses it (a NOT NULL or a key taken) or the cell held that value already."""
    db = sqlite3.connect(path)
    try:
        key = "rowid" if table != "reports" else "round_id * 1000 + pos"
        rows = db.execute(f"SELECT {key}, {column} FROM {table} ORDER BY {key}").fetchall()
        if not rows:
            return False
        where, before = rows[row % len(rows)]
        if type(before) is type(value) and before == value:
            return False
        db.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (value, where))
        db.commit()
    except sqlite3.IntegrityError:
        return False
    finally:
        db.close()
    return True


def _ask(path: Path, question: list[str]) -> int:
    """One `oracled audit` question, its output swallowed; an exception fails the test."""
    argv = [part.replace("{dir}", str(path.parent)) for part in question]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(["audit", "--db", str(path), *argv])


def _fresh_copy(trail: Path, folder: Path) -> Path:
    """`trail` copied into `folder` as audit.sqlite3, over whatever an earlier example of the
    same test left there (hypothesis runs every example in one tmp_path)."""
    path = folder / "audit.sqlite3"
    for stale in folder.glob("audit.sqlite3*"):
        stale.unlink()
    shutil.copy(trail, path)
    return path


def _columns(tables: dict[str, tuple[str, ...]]) -> st.SearchStrategy[tuple[str, str]]:
    return st.sampled_from([(t, c) for t, cs in tables.items() for c in cs])


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cell=_columns(SIGNED), row=st.integers(0, 20), value=VALUES)
def test_a_changed_cell_of_a_signed_round_never_verifies(
    signed_trail: Path, tmp_path: Path, cell: tuple[str, str], row: int, value: object
) -> None:
    """Whatever value a signed round's cell is given, `--verify` exits non-zero (a mismatch, a
    round not checked, or the row named as changed) and no question ends in a traceback."""
    assume(cell != ("rounds", "signature") or value is not None)  # unsigned: exit 0, as said
    path = _fresh_copy(signed_trail, tmp_path)
    if not _change(path, *cell, row, value):
        return
    codes = [_ask(path, question) for question in QUESTIONS]
    assert codes[5] != 0, (cell, value)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cell=_columns(UNSIGNED), row=st.integers(0, 20), value=VALUES)
def test_any_other_changed_cell_is_answered_without_a_traceback(
    signed_trail: Path, tmp_path: Path, cell: tuple[str, str], row: int, value: object
) -> None:
    """A changed cell no signature covers (the stored quotes, transitions, operator actions,
    config loads, dictionaries, the schema version): every question answers with an exit
    code, never a traceback."""
    path = _fresh_copy(signed_trail, tmp_path)
    if _change(path, *cell, row, value):
        for question in QUESTIONS:
            assert _ask(path, question) in (0, 1, 2, 3, 4), question


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cell=_columns({**SIGNED, **UNSIGNED}), row=st.integers(0, 20), value=VALUES)
def test_a_daemon_started_on_a_trail_with_a_changed_cell_goes_on_writing_it(
    signed_trail: Path, tmp_path: Path, cell: tuple[str, str], row: int, value: object
) -> None:
    """The writer of a restarted daemon opens the trail as it finds it (its dictionary, its
    round times for retention): whatever one cell holds, its thread never dies with an
    exception, and the new rounds are written or, where SQLite refuses the file, each failure
    is counted."""
    path = _fresh_copy(signed_trail, tmp_path)
    if not _change(path, *cell, row, value):
        return
    died: list[BaseException | None] = []
    hook, threading.excepthook = threading.excepthook, lambda args: died.append(args.exc_value)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            feed = Feed(make_config(), trail(path, retention_days=30))
            for _ in range(2):
                feed.round()
            assert feed.audit.close()
    finally:
        threading.excepthook = hook
    assert died == [], (cell, value)
    stats = feed.audit.stats
    assert stats.rounds + stats.write_errors == 2, (cell, value, stats)
