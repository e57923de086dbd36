"""What an auditor's tape may hold that `record` never writes: each such line is named and
skipped, or read as the contract says; none stops the replay or enters a price unread."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from oracled.config import load_config
from oracled.errors import TapeError
from oracled.model import Quote
from oracled.replay import replay
from oracled.tape import MAX_LINE_BYTES, TapeLineError, quote_to_line, read_tape, tape_lines

CONFIG = Path(__file__).parent.parent / "fixtures" / "tapes" / "config.toml"
HEADER = b'{"format": "oracled-tape", "version": 1}\n'
GOOD = b'{"ts": 1700000000500, "source": "a", "pair": "USDT/USD", "price": "1.0001"}\n'


def _read(tape: bytes) -> tuple[list[Quote], list[TapeLineError]]:
    errors: list[TapeLineError] = []
    quotes = list(read_tape(io.BytesIO(tape), errors))
    return quotes, errors


def _price_line(price: str) -> bytes:
    return b'{"ts": 1700000000600, "source": "b", "pair": "USDT/USD", "price": "%s"}\n' % (
        price.encode()
    )


@pytest.mark.parametrize(
    "price",
    ["1_000", " 1.0", "1.0 ", r"1.0\n", "\u0661\u0662\u0663", "\uff11", "+1", "0x1p0", "1,5", "."],
)
def test_a_price_that_is_no_plain_decimal_string_is_reported_and_skipped(price: str) -> None:
    """Python's float() reads '1_000' as 1000, Arabic-Indic or full-width digits as numbers, and
    takes signs and spaces: such a string is no decimal string, so the line is named and skipped
    (the line after it still counts), as the contract says of every line that cannot be read."""
    quotes, errors = _read(HEADER + _price_line(price) + GOOD)
    assert [(e.line, "not a decimal string" in e.message) for e in errors] == [(2, True)]
    assert [q.price for q in quotes] == [1.0001]


@pytest.mark.parametrize(
    ("text", "value"),
    [("64000.5", 64000.5), ("1e-05", 1e-05), ("1.5E+22", 1.5e22), ("-2", -2.0), (".5", 0.5)],
)
def test_decimal_strings_with_an_exponent_or_a_minus_are_read(text: str, value: float) -> None:
    """An exponent is what `record` writes for very small or large values (repr); a minus is a
    bad value the core drops, not a line that cannot be read."""
    quotes, errors = _read(HEADER + _price_line(text))
    assert errors == []
    assert [q.price for q in quotes] == [value]


def test_every_value_record_writes_reads_back_the_same() -> None:
    """Whatever float a live source hands over, NaN and infinities included, its tape line is
    read back as the same value: the stricter reading refuses nothing `record` writes."""
    values = [64000.1, 1e-07, 1.5e22, 5e-324, 1.7976931348623157e308, -0.0, float("inf")]
    lines = [
        quote_to_line(Quote("a", "USDT/USD", 1700000000500 + i, price=v, bid=v, ask=v))
        for i, v in enumerate([*values, float("-inf")])
    ]
    nan = quote_to_line(Quote("a", "USDT/USD", 1700000000600, price=float("nan")))
    quotes, errors = _read(HEADER + b"".join(lines) + nan)
    assert errors == []
    assert [(q.price, q.bid, q.ask) for q in quotes[:-2]] == [(v, v, v) for v in values]
    assert quotes[-2].price == float("-inf")
    assert quotes[-1].price != quotes[-1].price  # NaN: read, then dropped by the core


def test_a_line_nested_too_deep_is_reported_and_the_replay_goes_on() -> None:
    """An unknown key holding JSON nested 100,000 deep made the decoder raise RecursionError,
    which stopped the replay with a traceback; it is a line that cannot be read."""
    deep = b'{"ts": 1700000000400, "source": "a", "pair": "USDT/USD", "price": "1", "x": '
    deep += b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    out = io.BytesIO()
    stats = replay(load_config(CONFIG), io.BytesIO(HEADER + deep + GOOD), out)
    assert [e.line for e in stats.errors] == [2]
    assert stats.quotes == 1
    assert out.getvalue().count(b"\n") == 2  # one round, both markets


@pytest.mark.parametrize(
    "header",
    [
        b'{"format": "oracled-tape\xff", "version": 1}\n',  # not UTF-8
        b'{"format": "oracled-tape", "version": 1, "x": ' + b"[" * 99_999 + b"]" * 99_999 + b"}\n",
    ],
)
def test_a_header_that_cannot_be_read_is_a_tape_error_not_a_traceback(header: bytes) -> None:
    """A header that is not UTF-8 raised UnicodeDecodeError, one nested too deep RecursionError:
    both ended `oracled replay` with a traceback instead of naming line 1."""
    with pytest.raises(TapeError, match="line 1: not an oracled-tape header"):
        _read(header + GOOD)


def test_a_byte_order_mark_before_the_header_is_allowed() -> None:
    """Editors on Windows start UTF-8 files with a byte order mark; JSON readers may ignore it
    (RFC 8259), and the tape's reader does: before, the tape was refused with 'invalid
    character (byte 0)'. A mark anywhere else is an unreadable line as before."""
    quotes, errors = _read(b"\xef\xbb\xbf" + HEADER + GOOD + b"\xef\xbb\xbf" + GOOD)
    assert [q.price for q in quotes] == [1.0001]
    assert [e.line for e in errors] == [3]
    quotes, errors = _read(("\ufeff" + HEADER.decode()).encode())
    assert (quotes, errors) == ([], [])


def test_an_empty_flag_is_a_line_that_cannot_be_read() -> None:
    """A flag names why a value is no price, and the report shows it as the source's reason: an
    empty one excluded the source with reason "" (false to a reader's `if reason`, though the
    source was not used). No source sets one, so the line is named and skipped."""
    flagged = (
        b'{"ts": 1700000000400, "source": "b", "pair": "USDT/USD", "price": "1", "flag": ""}\n'
    )
    quotes, errors = _read(HEADER + flagged + GOOD)
    assert [(e.line, "flag" in e.message) for e in errors] == [(2, True)]
    assert [q.source for q in quotes] == ["a"]


def test_with_an_error_hook_bad_lines_are_handed_over_as_met_not_kept() -> None:
    """`oracled replay` kept every malformed line in a list and printed them at the end: a
    long tape of unreadable lines (one in microseconds) held them all in memory (1M lines:
    280 MB where a good tape of any length takes 54 MB) and said nothing until it was done.
    With `on_error` each is handed over when it is met, before the rounds after it are
    written, and only counted (`malformed`)."""
    later = b'{"ts": 1700000005500, "source": "b", "pair": "USDT/USD", "price": "1.0002"}\n'
    late = b'{"ts": 1700000009500, "source": "b", "pair": "USDT/USD", "price": "x"}\n'
    tape = HEADER + b"oops\n" + GOOD + later + late
    out = io.BytesIO()
    seen: list[tuple[int, int]] = []  # (line, bytes written when it was reported)
    stats = replay(
        load_config(CONFIG),
        io.BytesIO(tape),
        out,
        on_error=lambda e: seen.append((e.line, len(out.getvalue()))),
    )
    assert [line for line, _ in seen] == [2, 5]
    assert seen[0][1] == 0 < seen[1][1]  # the first before any round, the second after some
    assert (stats.errors, stats.malformed, stats.quotes) == ([], 2, 2)
    # Without the hook the errors are kept, as the stress simulator reads them.
    kept = replay(load_config(CONFIG), io.BytesIO(tape), io.BytesIO())
    assert ([e.line for e in kept.errors], kept.malformed) == ([2, 5], 2)


@pytest.mark.parametrize(
    ("keys", "why"),
    [
        (b'"first_round": 5, "first_round_ts": 1700000001', "first_round_ts 1700000001 is not"),
        (b'"first_round": 5, "first_round_ts": -9223372036854775808', "first_round_ts -9"),
        (b'"first_round": 9007199254740992', "first_round 9007199254740992 is past"),
    ],
)
def test_a_header_whose_round_numbering_is_out_of_range_cannot_be_read(
    keys: bytes, why: str
) -> None:
    """The bug: a `first_round_ts` in seconds (or any integer) and a `first_round` of any size
    were taken, and the replay numbered its reports from them: round 36893494947419109 from a
    first_round_ts of -2**63, rounds past 2**53 that a JSON reader does not keep exact. A
    `first_round_ts` is a round time (milliseconds, 13 digits, as a quote's `ts`) and a round
    number stays below 2**53: else line 1 is a header that cannot be read."""
    with pytest.raises(TapeError, match=f"line 1: {why}"):
        _read(HEADER[:-2] + b", " + keys + b"}\n" + GOOD)


class _Counting(io.BytesIO):
    """A tape file that remembers the most bytes one read of it returned."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.largest = 0

    def readline(self, size: int | None = -1, /) -> bytes:
        line = super().readline(size)
        self.largest = max(self.largest, len(line))
        return line


def test_a_line_over_the_limit_is_skipped_without_being_held_whole() -> None:
    """A 3 MiB line (a binary file pasted in; /dev/zero has no newline at all) was read whole
    as one line before being judged: it is named and skipped, no read of it returns more than
    MAX_LINE_BYTES + 1 bytes, and the quotes on both sides of it are read. A line of exactly
    MAX_LINE_BYTES, its newline included, is judged by what it holds (a quote padded with
    JSON's spaces is one)."""
    padded = GOOD[:-1] + b" " * (MAX_LINE_BYTES - len(GOOD)) + b"\n"
    assert len(padded) == MAX_LINE_BYTES
    tape = _Counting(HEADER + GOOD + b"x" * (3 * 2**20) + b"\n" + padded + GOOD)
    errors: list[TapeLineError] = []
    quotes = list(read_tape(tape_lines(tape), errors))
    assert errors == [TapeLineError(3, "longer than 1 MiB: no tape line is this long")]
    assert len(quotes) == 3
    assert tape.largest == MAX_LINE_BYTES + 1


def test_a_header_over_the_limit_is_a_tape_error_read_no_further() -> None:
    """Line 1 over the limit is no header: refused once its first MAX_LINE_BYTES + 1 bytes are
    in, the rest never read (for /dev/zero as the tape, that rest has no end)."""
    tape = _Counting(b"\0" * (4 * 2**20))
    with pytest.raises(TapeError) as caught:
        list(read_tape(tape_lines(tape), []))
    assert str(caught.value) == (
        "line 1: not an oracled-tape header (longer than 1 MiB: no tape line is this long)"
    )
    assert tape.tell() == MAX_LINE_BYTES + 1


_START = b'{"ts": 1700000000400, "source": "b", "pair": "USDT/USD", '


@pytest.mark.parametrize(
    ("rest", "key"),
    [
        (b'"price": "1.0002", "price": "1"}', "price"),
        (b'"\\u0070rice": "1.0002", "price": "1"}', "price"),  # an escape spells the same key
        (b'"price": "1.0002", "pr\\u0069ce": "1"}', "price"),
        (b'"price": null, "price": "1"}', "price"),
        (b'"bid": "1", "ask": "1.1", "bid": "0.9", "price": "1"}', "bid"),
        (b'"price": "1", "ts": 1700000000300}', "ts"),
        (b'"price": "1", "source": "a"}', "source"),
        (b'"price": "1", "kind": "perp", "x": "y \\" z", "kind": "spot"}', "kind"),
        (b'"price":"1","price":"1"}', "price"),  # the same value twice is no better
    ],
)
def test_a_line_that_names_a_key_twice_is_reported_and_skipped(rest: bytes, key: str) -> None:
    """A quote line with a key twice is ambiguous: JSON readers differ on which value wins
    (ours took the last), so an auditor reading the tape with another tool could see another
    price. It is named with its line number and skipped, as a malformed line is, whether the
    key is spelled with JSON escapes or not; the line after it still counts."""
    quotes, errors = _read(HEADER + _START + rest + b"\n" + GOOD)
    assert [(e.line, f"key {key!r} appears twice" in e.message) for e in errors] == [(2, True)]
    assert [q.source for q in quotes] == ["a"]


@pytest.mark.parametrize(
    "rest",
    [
        b'"\\u0070rice": "1.0002"}',  # a key spelled with an escape, once
        b'"price": "1.0002", "x": {"y": 1, "y": 2}}',  # repeated in an unknown key's object
        b'"price": "1.0002", "x": "a \\"price\\": b", "note": null}',
        b'"price": "1.0002", "kind": "spot", "flag": "liquidity", "block": 7, "block_ts": 8}',
    ],
)
def test_a_line_with_each_key_once_is_read_whatever_else_it_holds(rest: bytes) -> None:
    """Keys once each are read as before: spelled with escapes, beside unknown keys (whose own
    objects may repeat theirs: they are not read), nulls and quotes inside strings."""
    quotes, errors = _read(HEADER + _START + rest + b"\n")
    assert errors == []
    assert [(q.source, q.price, q.kind) for q in quotes] == [("b", 1.0002, "spot")]


@pytest.mark.parametrize("kind", [b'"kind": null', b'"\\u006bind": null'])
def test_a_kind_given_as_null_is_reported_and_skipped(kind: bytes) -> None:
    """`kind` is a string when sent (docs/contracts.md): a null one is a line that cannot be
    read, as it always was, not a spot quote; the line after it still counts."""
    quotes, errors = _read(HEADER + _START + kind + b', "price": "1"}\n' + GOOD)
    assert [(e.line, "`kind` is null" in e.message) for e in errors] == [(2, True)]
    assert [q.source for q in quotes] == ["a"]


def test_a_header_that_names_a_key_twice_cannot_be_read() -> None:
    """Line 1 with `version` twice is refused as a header that cannot be read, not read as
    whichever value came last."""
    with pytest.raises(TapeError, match=r"line 1: .*key 'version' appears twice"):
        _read(b'{"format": "oracled-tape", "version": 1, "version": 1}\n' + GOOD)


def test_a_manual_command_that_names_a_key_twice_is_reported_and_never_applied() -> None:
    """A version 2 command line with `manual` twice (a pause or a resume?) is reported with
    its line number and not applied."""
    header = HEADER.replace(b'"version": 1', b'"version": 2')
    command = (
        b'{"ts": 1700000000450, "manual": "pause", "market": "USDT/USD", "actor": "a",'
        b' "round": 1, "manual": "resume"}\n'
    )
    errors: list[TapeLineError] = []
    applied: list[object] = []
    quotes = list(read_tape(io.BytesIO(header + command + GOOD), errors, on_command=applied.append))
    assert [(e.line, "key 'manual' appears twice" in e.message) for e in errors] == [(2, True)]
    assert applied == []
    assert [q.source for q in quotes] == ["a"]
