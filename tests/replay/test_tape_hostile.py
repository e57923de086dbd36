"""A recorded tape damaged anywhere after its header (a line cut short, a byte changed, bytes
put in, two lines swapped, a line repeated): the replay reads it to the end, or stops with the
tape's own error at a gap, and every line is accounted for, a quote or a skipped line that is
reported; the reports it prints are whole JSON."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from oracled.aggregate.book import NAMED_OTHER_SOURCES, OTHER_SOURCES
from oracled.config import load_config
from oracled.replay import ReplayStats, replay
from oracled.stress.policies import QuoteWatch
from oracled.tape import TapeGapError, TapeLineError, tape_lines

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tapes"
CFG = load_config(FIXTURES / "config.toml")
#: The fixture's header and its readable lines (its bad ones are tested elsewhere).
HEADER, *LINES = [
    line
    for line in (FIXTURES / "small.jsonl").read_bytes().splitlines(keepends=True)
    if line.startswith((b'{"format"', b'{"ts": 17'))
]


@st.composite
def damaged(draw: st.DrawFn) -> list[bytes]:
    """The fixture's quote lines with one to three of them damaged."""
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(0, len(lines) - 1))
        line = lines[k]
        if not line:  # cut to nothing by an earlier damage
            continue
        how = draw(st.sampled_from(["cut", "byte", "insert", "swap", "repeat"]))
        if how == "cut":  # a torn write: the rest of the line is gone, the newline too
            lines[k] = line[: draw(st.integers(0, len(line) - 1))]
        elif how == "byte":
            at = draw(st.integers(0, len(line) - 1))
            lines[k] = line[:at] + bytes([draw(st.integers(0, 255))]) + line[at + 1 :]
        elif how == "insert":
            at = draw(st.integers(0, len(line) - 1))
            lines[k] = line[:at] + draw(st.binary(min_size=1, max_size=8)) + line[at:]
        elif how == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[k], lines[j] = lines[j], line
        else:
            lines.insert(k, line)
    return lines


@settings(max_examples=150, deadline=None, derandomize=True)
@given(lines=damaged())
def test_every_line_of_a_damaged_tape_is_a_quote_or_a_reported_skip(lines: list[bytes]) -> None:
    """Quotes read plus lines skipped is the number of lines that are not blank, counted on
    the bytes as the reader splits them (a line cut without its newline joins the next one);
    every skipped line is reported with its number, and every report printed decodes."""
    data = HEADER + b"".join(lines)
    out = io.BytesIO()
    skipped: list[TapeLineError] = []
    try:
        stats = replay(CFG, tape_lines(io.BytesIO(data)), out, on_error=skipped.append)
    except TapeGapError:  # a damaged ts that still reads as a time a day away: the tape's stop
        return
    split = data.split(b"\n")[1:]  # as the reader splits: at newlines only
    assert stats.quotes + stats.malformed == sum(1 for line in split if line.strip())
    assert stats.malformed == len(skipped)
    assert all(2 <= error.line <= len(split) + 1 for error in skipped), skipped
    reports = out.getvalue().splitlines()
    assert len(reports) == stats.reports
    for line in reports:
        msgspec.json.decode(line)


def _foreign(n: int) -> Iterator[bytes]:
    """A tape of `n` quotes, each from a source and of a pair named nowhere else."""
    yield HEADER
    for i in range(n):
        yield b'{"ts": %d, "source": "v%d", "pair": "X%d/USD", "price": "1.5"}\n' % (
            1_700_000_000_500 + i,
            i,
            i,
        )


def _replayed(n: int) -> tuple[ReplayStats, QuoteWatch, int]:
    """`_foreign(n)` replayed as `oracled stress` does (its quote watch beside the core): the
    stats, the watch, and the peak of the memory traced meanwhile."""
    watch = QuoteWatch(CFG)
    tracemalloc.start()
    try:
        stats = replay(CFG, _foreign(n), io.BytesIO(), on_quote=watch.on_quote)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return stats, watch, peak


def test_a_tape_naming_a_new_source_on_every_line_grows_no_count_and_no_table() -> None:
    """A tape whose every quote names a source and pair no other line names (garbage, or made
    to hurt): each quote is dropped as `unknown_symbol`, as before, but the drop counts name
    only the first NAMED_OTHER_SOURCES such sources and count the rest under OTHER_SOURCES; the
    core's own counts and the stress watch keep nothing per source either. Before, each of
    these took a key per source, for the whole replay (and `oracled replay` printed them all
    on one line): 20,000 such lines peaked at about 11 MB traced, 2,000 at about 1 MB."""
    small, _, small_peak = _replayed(2_000)
    stats, watch, peak = _replayed(20_000)
    assert stats.quotes == stats.dropped == 20_000 and stats.malformed == 0
    named = [f"v{i}" for i in range(NAMED_OTHER_SOURCES)]
    assert stats.drops == {
        **{(source, "unknown_symbol"): 1 for source in named},
        (OTHER_SOURCES, "unknown_symbol"): 20_000 - NAMED_OTHER_SOURCES,
    }
    assert small.drops[(OTHER_SOURCES, "unknown_symbol")] == 2_000 - NAMED_OTHER_SOURCES
    assert watch.latest == {} and watch.perps == {}
    # Ten times the lines: the peak grows by what a line costs while it is read, not per line.
    assert peak - small_peak < 256 * 1024, (small_peak, peak)
