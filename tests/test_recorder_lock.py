"""`oracled record`'s tape and its lock file (`<tape>.lock`) moved away with its directory and
back: the lines wait in memory meanwhile, within the recorder's backlog, and are written in
order once the very file is back; lost while away, the recording stops with the tape a clean
prefix (docs/contracts.md)."""

from __future__ import annotations

import io
from pathlib import Path

from structlog.testing import capture_logs

from oracled.model import Quote
from oracled.recorder import TapeRecorder
from oracled.tape import TapeLineError, read_tape

MISSING = "tape lock file missing: lines wait in memory until it is back"
BACK = "tape lock file back: lines are written again"


def _quotes(first: int, n: int) -> list[Quote]:
    return [Quote("a", "BTC/USD", 1_700_000_000_000 + k, 64_000.5) for k in range(first, first + n)]


async def _recorded(recorder: TapeRecorder, quotes: list[Quote]) -> None:
    """`quotes` handed to the writer thread, and its write (or hold) done."""
    for quote in quotes:
        recorder.add(quote)
    recorder.flush()
    await recorder.drain(10.0)


def _times(tape: Path) -> list[int]:
    """The receive times of the tape's quotes, in the order written; every line whole."""
    errors: list[TapeLineError] = []
    data = tape.read_bytes()
    quotes = list(read_tape(io.BytesIO(data), errors))
    assert errors == [] and data.endswith(b"\n")
    return [q.recv_ts for q in quotes]


def _moved_away(tmp_path: Path, **settings: int) -> tuple[Path, Path, TapeRecorder]:
    state, away = tmp_path / "state", tmp_path / "away"
    state.mkdir()
    recorder = TapeRecorder(state / "tape", **settings)
    return state, away, recorder


def _lock_events(logs: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(e["log_level"], e["event"]) for e in logs if "lock" in str(e["event"])]


async def test_lines_wait_while_the_lock_file_is_away_and_follow_in_order_once_it_is_back(
    tmp_path: Path,
) -> None:
    """Moved away, the lock file still excludes every other recorder: the lines flushed
    meanwhile are not appended through the open tape into the moved file (said once as an
    error), and once it is back they are written first, then the later ones, each once and
    in order (said once). Before, any lock file not at its path stopped the recording."""
    state, away, recorder = _moved_away(tmp_path)
    times = [q.recv_ts for q in _quotes(0, 40)]
    with capture_logs() as logs:
        await _recorded(recorder, _quotes(0, 10))
        state.rename(away)
        await _recorded(recorder, _quotes(10, 10))
        await _recorded(recorder, _quotes(20, 10))
        assert recorder.lock_away
        assert _times(away / "tape") == times[:10]
        away.rename(state)
        await _recorded(recorder, _quotes(30, 10))
        assert recorder.close() is None
    assert _times(state / "tape") == times
    assert _lock_events(logs) == [("error", MISSING), ("info", BACK)]


async def test_a_lock_lost_while_away_stops_the_recording_at_a_clean_prefix(
    tmp_path: Path,
) -> None:
    """Another directory made at the tape's path with a lock file of its own while the first
    is away: a second recorder may write there, so the recording stops for good, the lines
    held back are not written anywhere, and the moved tape ends with the lines before."""
    state, away, recorder = _moved_away(tmp_path)
    await _recorded(recorder, _quotes(0, 10))
    state.rename(away)
    await _recorded(recorder, _quotes(10, 10))
    state.mkdir()
    (state / "tape.lock").touch()
    await _recorded(recorder, _quotes(20, 10))
    error = recorder.close()
    assert error is not None and f"its lock file {state / 'tape.lock'} is gone" in error
    assert recorder.lock_lost
    assert _times(away / "tape") == [q.recv_ts for q in _quotes(0, 10)]
    assert sorted(p.name for p in state.iterdir()) == ["tape.lock"]


async def test_a_stop_while_the_lock_file_is_away_says_the_tape_lacks_its_last_lines(
    tmp_path: Path,
) -> None:
    """The stop does not wait for the directory to come back: the lines held back are not
    written (the stop's error says how many), and the moved tape stays the clean prefix it
    was, with nothing appended to it when it comes back."""
    state, away, recorder = _moved_away(tmp_path)
    await _recorded(recorder, _quotes(0, 10))
    state.rename(away)
    await _recorded(recorder, _quotes(10, 10))
    for quote in _quotes(20, 5):
        recorder.add(quote)
    error = recorder.close()
    assert error is not None and "was away" in error and "last 15 lines" in error
    away.rename(state)
    assert _times(state / "tape") == [q.recv_ts for q in _quotes(0, 10)]


async def test_lines_held_back_count_in_the_backlog_that_stops_the_recording(
    tmp_path: Path,
) -> None:
    """The lines held back while the lock file is away are bounded like any backlog: past
    `max_backlog` bytes the recording stops, saying the lock file was away, and the tape
    stays the clean prefix written before it went."""
    state, away, recorder = _moved_away(tmp_path, max_backlog=4_000)
    await _recorded(recorder, _quotes(0, 10))
    state.rename(away)
    for first in range(10, 200, 10):
        await _recorded(recorder, _quotes(first, 10))
    error = recorder.take_error()
    assert error is not None and "lock file" in error and "away" in error
    away.rename(state)
    await _recorded(recorder, _quotes(200, 10))
    assert recorder.close() is None  # said once, by take_error
    assert _times(state / "tape") == [q.recv_ts for q in _quotes(0, 10)]
