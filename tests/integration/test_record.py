"""`oracled record` when its tape cannot be written, or only slowly: prices go on, the tape
stays a clean prefix of the quotes, and a failure is loud."""

from __future__ import annotations

import asyncio
import io
import os
import threading
import tracemalloc
from pathlib import Path

import pytest
from daemon import Daemon, sim_config
from oracled_cli import run_oracled
from structlog.testing import capture_logs
from venue_sims import BinanceVenues

from oracled import __version__
from oracled.core import PRICING_REVISION
from oracled.errors import TapeError
from oracled.model import Quote
from oracled.recorder import TapeRecorder
from oracled.sim import BinanceSim
from oracled.tape import TapeLineError, header_line, quote_to_line, read_header, read_tape

PRICES = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "USDTUSD": 1.0}
pytestmark = pytest.mark.integration


@pytest.fixture
async def venues(binance_venues: BinanceVenues) -> list[BinanceSim]:
    return await binance_venues(PRICES, 3, market_seed=42)


async def test_a_tape_that_cannot_be_written_stops_the_tape_not_the_rounds(
    venues: list[BinanceSim], tmp_path: Path
) -> None:
    """A full disk under the tape (/dev/full: every write fails with ENOSPC) is logged once with
    the path and the error, and the rounds go on publishing; recording stops there, so the
    tape stays a clean prefix, and `record` exits 1 because its tape is incomplete. Before, the
    write error killed the round loop at its first flush: the API served round 4 for ever,
    /healthz said ok, and nothing was logged until the shutdown."""
    d = Daemon(sim_config([(s.ws_url, s.rest_url) for s in venues]), tmp_path)
    d.argv[1] = "record"
    await d.start("--out", "/dev/full")
    try:

        async def rounds_go_on() -> bool:
            status, body = await d.get("/v1/prices/BTC-USD")
            return status == 200 and int(body["round"]) >= 40

        await d.wait_for(rounds_go_on, 15, "rounds past the tape's first failed write")
        failures = d.events("tape not written: recording stopped; prices go on")
        assert len(failures) == 1, d.logs()[-3000:]
        assert failures[0]["path"] == "/dev/full"
        assert failures[0]["error"] == "No space left on device"  # not "[Errno 28] ..."
        assert await asyncio.to_thread(d.terminate) == 1
        assert "fatal" not in d.logs()
    finally:
        await d.close()


class StalledReader:
    """The reading end of a FIFO that takes nothing until `go` is set, then everything: a
    reader (`--out >(gzip > tape.gz)`) or a disk that stops for a while."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.go = threading.Event()
        self.data = b""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self.path.open("rb") as fifo:  # blocks until the writer opens it
            self.go.wait()
            self.data = fifo.read()

    def finish(self) -> bytes:
        self.go.set()
        self._thread.join(10)
        assert not self._thread.is_alive()
        return self.data


def _clean_tape(data: bytes) -> list[Quote]:
    errors: list[TapeLineError] = []
    quotes = list(read_tape(io.BytesIO(data), errors))
    assert errors == []
    assert data.endswith(b"\n")
    return quotes


async def test_a_tape_written_slowly_never_holds_the_rounds(
    venues: list[BinanceSim], tmp_path: Path
) -> None:
    """The round loop awaited each tape write: once the FIFO's reader stopped taking (its
    64 KiB filled in a few seconds), no round ran and the API served the same round until the
    reader went on. Now the lines wait in memory while a write is in flight, the rounds go on,
    and the tape the reader gets in the end is whole and in order."""
    reader = StalledReader(tmp_path / "tape.fifo")
    d = Daemon(sim_config([(s.ws_url, s.rest_url) for s in venues]), tmp_path)
    d.argv[1] = "record"
    try:
        await d.start("--out", str(reader.path))

        async def rounds_go_on() -> bool:
            status, body = await d.get("/v1/prices/BTC-USD")
            return status == 200 and int(body["round"]) >= 100

        await d.wait_for(rounds_go_on, 20, "rounds while the tape's reader takes nothing")
        assert d.events("tape not written: recording stopped; prices go on") == []
        reader.go.set()  # the writes blocked so far go through, then the rest
        assert await asyncio.to_thread(d.terminate) == 0
        assert len(_clean_tape(await asyncio.to_thread(reader.finish))) > 1_000
    finally:
        reader.go.set()
        await d.close()


async def test_a_fifo_without_a_reader_is_said_then_its_reader_too(tmp_path: Path) -> None:
    """`record --out FIFO` with nobody reading yet waited in silence: the recorder now says
    "tape: waiting for a reader" (info, with the path) while its open blocks, and says so again
    once a reader came; then the tape is written as usual."""
    path = tmp_path / "tape.fifo"
    os.mkfifo(path)
    with capture_logs() as logs:
        recorder = TapeRecorder(path)
        for _ in range(500):  # the writer thread's open, 5 s at most
            if any(e["event"] == "tape: waiting for a reader" for e in logs):
                break
            await asyncio.sleep(0.01)
        waiting = [e for e in logs if e["event"] == "tape: waiting for a reader"]
        assert [(e["log_level"], e["path"]) for e in waiting] == [("info", str(path))]
        assert not any(e["event"] == "tape: reader connected" for e in logs)
        reading = asyncio.create_task(asyncio.to_thread(path.read_bytes))
        await recorder.drain(5.0)
        (came,) = [e for e in logs if e["event"] == "tape: reader connected"]
        assert (came["log_level"], came["path"]) == ("info", str(path))
        recorder.add(Quote("a", "BTC/USD", 1_700_000_000_000, 64_000.5))
        recorder.flush()
        await recorder.drain(5.0)
        assert recorder.close() is None
    assert [q.price for q in _clean_tape(await reading)] == [64_000.5]


async def test_a_backlog_past_its_limit_stops_the_recording_at_a_clean_prefix(
    tmp_path: Path,
) -> None:
    """A sink that stays stopped must not grow the daemon's memory without end: past the
    backlog limit the recording stops with an error said once, the lines already handed to
    the writer are written whole, and nothing after them."""
    reader = StalledReader(tmp_path / "tape.fifo")
    recorder = TapeRecorder(reader.path, 200_000)
    await recorder.drain(5.0)  # a FIFO is opened by the writer thread, once a reader comes

    def quotes(first: int, n: int) -> list[Quote]:
        return [
            Quote("a", "BTC/USD", 1_700_000_000_000 + k, 64_000.5) for k in range(first, first + n)
        ]

    for quote in quotes(0, 1_000):  # ~80 kB: more than the FIFO holds, so the write blocks
        recorder.add(quote)
    recorder.flush()
    assert recorder.take_error() is None
    for quote in quotes(1_000, 3_000):  # ~240 kB waiting behind the blocked write
        recorder.add(quote)
    recorder.flush()
    error = recorder.take_error()
    assert error is not None and "behind" in error
    assert recorder.take_error() is None  # said once
    reader.go.set()
    await recorder.drain(5.0)  # the blocked write goes through
    assert recorder.close() is None
    data = await asyncio.to_thread(reader.finish)
    assert [q.recv_ts for q in _clean_tape(data)] == [q.recv_ts for q in quotes(0, 1_000)]
    assert len(quote_to_line(quotes(0, 1)[0])) * 1_000 > 65_536


async def test_a_stop_does_not_wait_for_a_tape_write_that_never_returns(
    venues: list[BinanceSim], tmp_path: Path
) -> None:
    """SIGTERM stops the daemon within its budget even with a write stuck for good (a reader
    that never takes another byte, a hung mount): the stop waited for the write, so the
    process ran on until the reader went away. It now gives the write 1 s, says the tape's
    last lines are missing, and exits 1."""
    reader = StalledReader(tmp_path / "tape.fifo")
    d = Daemon(sim_config([(s.ws_url, s.rest_url) for s in venues]), tmp_path)
    d.argv[1] = "record"
    try:
        await d.start("--out", str(reader.path))

        async def pipe_full() -> bool:  # well past the rounds that fill the FIFO's 64 KiB
            status, body = await d.get("/v1/prices/BTC-USD")
            return status == 200 and int(body["round"]) >= 60

        await d.wait_for(pipe_full, 20, "rounds past a full FIFO")
        assert await asyncio.to_thread(d.terminate) == 1  # waits 10 s at most
        (event,) = d.events("tape not written: recording stopped; prices go on")
        assert "did not finish" in event["error"]
    finally:
        reader.go.set()
        await d.close()


def test_append_to_a_file_without_newlines_is_refused_at_its_first_mib(tmp_path: Path) -> None:
    """`record --out FILE --append` read FILE's first line whole to check its header: a large
    file without a newline (a binary, a disk image named by mistake) went into memory whole.
    Line 1 is now read up to MAX_LINE_BYTES + 1 bytes and refused as no header (the most
    memory Python held meanwhile is the measure)."""
    path = tmp_path / "image.bin"
    path.write_bytes(b"\0" * (16 * 2**20))
    tracemalloc.start()
    try:
        with pytest.raises(TapeError) as caught:
            TapeRecorder(path, append=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value) == (
        f"{path}: line 1: not an oracled-tape header (longer than 1 MiB: no tape line is this long)"
    )
    assert peak < 8 * 2**20, peak  # about 5 MB; reading the line whole, about 50 MB


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\x00\xff garbage", "not an oracled-tape header (JSON is malformed: invalid character"),
        (b'{"format": "oracled-ta', "not an oracled-tape header (Input data was truncated)"),
        (b'{"format": "oracled-tape", "version": 3}\n', "unsupported tape 'oracled-tape'"),
    ],
)
def test_append_to_a_file_that_is_no_tape_names_it_and_lets_its_lock_go(
    tmp_path: Path, body: bytes, why: str
) -> None:
    """`record --out FILE --append` on binary garbage, a header torn mid-write or a tape of
    another version: the refusal said `line 1: ...` without naming FILE (the one line the
    operator reads, `oracled record: line 1: ...`), and the recorder kept FILE's lock, so a
    second try in the same process, with the file put right, was refused as "written by
    another `oracled record`". Now the message names the file and the lock goes with the
    refusal, as it does at a stop."""
    path = tmp_path / "tape.jsonl"
    path.write_bytes(body)
    with pytest.raises(TapeError) as caught:
        TapeRecorder(path, append=True)
    assert str(caught.value).startswith(f"{path}: line 1: {why}"), caught.value
    assert path.read_bytes() == body  # left as found
    path.write_bytes(b'{"format": "oracled-tape", "version": 1}\n')
    recorder = TapeRecorder(path, append=True)
    assert recorder.close() is None
    path.write_bytes(body)
    config = Path(__file__).parent.parent / "fixtures" / "tapes" / "config.toml"
    done = run_oracled(["record", "--config", str(config), "--out", str(path), "--append"])
    assert done.returncode == 2, done.stderr
    assert f"oracled record: {path}: line 1: {why}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_new_tape_names_the_pricing_revision_and_append_keeps_to_it(tmp_path: Path) -> None:
    """A new tape's header names the pricing revision its reports are computed under and the
    oracled that wrote it; `--append` continues a tape of this revision or of none (an older
    build's, which claims none), and refuses one of another, whose header would name the wrong
    revision for the lines added, leaving it as found."""
    path = tmp_path / "new.jsonl"
    recorder = TapeRecorder(path, config_sha256="ab" * 32)
    recorder.number(7, 1_700_000_000_000)
    recorder.add(Quote("a", "BTC/USD", 1_700_000_000_100, 60_000.5))
    assert recorder.close() is None
    header = read_header(path.read_bytes().split(b"\n", 1)[0])
    assert (header.pricing_revision, header.software_version) == (PRICING_REVISION, __version__)
    assert (header.config_sha256, header.first_round) == ("ab" * 32, 7)
    for revision in (None, PRICING_REVISION):
        kept = tmp_path / f"kept-{revision}.jsonl"
        kept.write_bytes(header_line(pricing_revision=revision))
        assert TapeRecorder(kept, append=True).close() is None
    other = tmp_path / "other.jsonl"
    body = header_line(pricing_revision=PRICING_REVISION - 1, software_version="0.0.9")
    other.write_bytes(body)
    with pytest.raises(TapeError) as caught:
        TapeRecorder(other, append=True)
    assert f"recorded under pricing revision {PRICING_REVISION - 1}" in str(caught.value)
    assert other.read_bytes() == body
