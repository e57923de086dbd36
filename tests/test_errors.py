"""oracled.errors: how an error and a value given from outside are put in an operator's words."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from oracled.errors import SHOWN_CHARS, TapeError, described, shown


def test_an_os_error_is_its_file_and_the_systems_reason_without_errno_or_quotes(
    tmp_path: Path,
) -> None:
    """A real failed open and a failed rename: the file(s) then the reason, where Python
    prints `[Errno 2] No such file or directory: '...'` around a repr of the path."""
    missing = tmp_path / "it's here?"
    with pytest.raises(OSError) as opened:
        missing.open()
    assert described(opened.value) == f"{missing}: No such file or directory"
    with pytest.raises(OSError) as renamed:
        missing.rename(tmp_path / "b")
    assert described(renamed.value) == f"{missing} -> {tmp_path / 'b'}: No such file or directory"
    assert described(OSError(28, "No space left on device")) == "No space left on device"


def test_a_message_of_our_own_is_kept_and_another_error_is_named_by_its_type(
    tmp_path: Path,
) -> None:
    """An OracledError, or an OSError made with a message in words (the API's listen failure),
    is that message; a library's error is its type and message, never its repr
    (`DatabaseError('file is not a database')`)."""
    assert described(TapeError("line 1: not a tape")) == "line 1: not a tape"
    said = "--listen: cannot listen on 127.0.0.1:1 (address already in use)"
    assert described(OSError(said)) == said
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite" * 100)
    with pytest.raises(sqlite3.DatabaseError) as caught:
        sqlite3.connect(junk).execute("SELECT * FROM sqlite_master")
    assert described(caught.value) == "DatabaseError: file is not a database"
    assert described(KeyError("BTC/USD")) == "KeyError: 'BTC/USD'"
    assert described(RuntimeError()) == "RuntimeError"


def test_a_value_is_quoted_escaped_and_cut_with_its_length() -> None:
    """Short values are quoted whole (a control character escaped); a long one is cut after
    SHOWN_CHARS characters and says how long it was."""
    assert shown("BTC USD") == "'BTC USD'"
    assert shown("a\nb") == "'a\\nb'"
    long = "x" * (SHOWN_CHARS + 40)
    assert shown(long) == f"'{'x' * SHOWN_CHARS}'... ({SHOWN_CHARS + 40} characters)"


def test_a_value_that_is_no_string_is_its_repr_cut_the_same_way() -> None:
    """A node's JSON answer where a string was expected (a null, a list, an object): its repr,
    whole when short, else its first SHOWN_CHARS characters and the repr's length."""
    assert shown(None) == "None"
    assert shown({"status": "0x1"}) == "{'status': '0x1'}"
    answer = list(range(100))
    text = repr(answer)
    assert shown(answer) == f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"
