"""The tape recorder of `oracled record` and `demo --record`: the quotes and manual commands of a
running daemon, written as a tape `oracled replay` reads (docs/contracts.md).

Kept apart from the service, which only hands it lines: what it owns is the file (its header,
with the pricing revision of the daemon's reports, the lock beside it, `--append` onto a tape of
the same config and revision, a torn last line ended) and a writer thread the round never waits
for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

import structlog

from oracled import __version__
from oracled.config import AUDIT_BESIDE, Config
from oracled.core import PRICING_REVISION
from oracled.errors import TapeError, described
from oracled.lockfile import (
    LockChange,
    LockHeldError,
    LockState,
    LockWatch,
    lock_beside,
    lock_path,
    lock_state,
)
from oracled.model import Quote
from oracled.tape import (
    MAX_LINE_BYTES,
    TapeLineError,
    header_line,
    line_ts,
    quote_to_line,
    read_header,
    read_tape,
    tape_lines,
)

__all__ = ["TAPE_BACKLOG_BYTES", "TapeRecorder"]

#: Bytes of tape lines that may wait while a write is in flight: a disk or a reader slower than
#: the quotes for that long (minutes at the shipped config's rate) stops the recording.
TAPE_BACKLOG_BYTES = 64 << 20


class TapeRecorder:
    """Buffers tape lines in memory and writes them from a thread every few rounds.

    The round never waits for the disk: while a batch is being written, new lines wait for the
    next flush. Writes are strictly in order: a batch starts only after the previous one
    finished, and closing waits for a write in flight (1 s at most: a write stuck for good
    leaves the tape without its last lines, said as an error), so the tape never has lines out
    of order. A write that fails (a full disk), or lines waiting past `max_backlog` bytes, stop the
    recording for good, never the rounds: the tape stays a prefix of the quotes, without a gap
    a replay could not see, and `error` says why.

    The lock beside the tape follows `lockfile`'s rule (`_lock_now`): a lock file only moved
    away (the tape's directory renamed) holds the lines back, within the same `max_backlog`,
    and they are written once the very file is back; one lost (removed, or its directory made
    again) stops the recording for good.
    """

    def __init__(
        self,
        path: Path,
        max_backlog: int = TAPE_BACKLOG_BYTES,
        *,
        append: bool = False,
        config_sha256: str | None = None,
        flag: str = "--out",
        config_hint: Callable[[str], str] | None = None,
    ) -> None:
        # `flag` is the option that named the tape, for the refusals to name: `record --out`
        # (which also takes --append) or `demo --record` (which does not). `config_hint` adds
        # to the refusal of a tape of another config digest what may explain it besides the
        # file (the service's `chain_env_hint`: a chain's rpc_urls_env set otherwise).
        self.path = path
        self._file: IO[bytes] | None = None
        self._lock_fd: int | None = None
        self._buffer: list[bytes] = []
        self._backlog = 0  # bytes in _buffer
        self._max_backlog = max_backlog
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future[None] | None = None
        self.error: str | None = None  # what stopped the recording
        self._lock_watch = LockWatch()  # what became of `<tape>.lock`, as `_lock_now` last saw
        self._held_back: list[bytes] = []  # lines the writer took while the lock file was away
        self._held_bytes = 0  # their bytes, part of the backlog `max_backlog` bounds
        self._log = structlog.get_logger("oracled").bind(component="tape", path=str(path))
        self._told = False
        self._digest = config_sha256
        self._config_hint = config_hint
        #: Line 1 of a new tape, written before its first line of quotes: `number` adds the
        #: daemon's first round to it (None: written, or a tape continued under its own).
        self._header: bytes | None = None
        #: The line number of a torn last line `append` found and ended (a crash mid-write),
        #: and whether a replay reads it all the same (it lacked only its newline).
        self.torn_line: int | None = None
        self.torn_readable = False
        #: Whether manual commands go on the tape: not on a version 1 tape continued.
        self.commands = True
        header = self._header_line()
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            mode = stat.S_IFREG
        if stat.S_ISDIR(mode):  # said before the start, not at the first write
            raise TapeError(_a_directory(path, flag))
        if not stat.S_ISREG(mode):  # a FIFO (`--out >(gzip > t.gz)`), /dev/stdout: the open
            self._header = header
            self._open_later()  # waits for a reader, which must not hold a stop
            return
        try:
            self._lock_fd = lock_beside(path)
        except LockHeldError as exc:
            raise TapeError(
                f"{path} is written by another `oracled record` or `demo --record` (it holds"
                f" {exc.lock})"
            ) from None
        except OSError as exc:  # no such directory, no permission: the tape could not be either
            raise TapeError(f"{path}: cannot write beside it ({exc.strerror or exc})") from None
        if path.exists() and path.stat().st_size > 0:
            try:
                if not append:
                    way = f"another {flag}"
                    if flag == "--out":  # `oracled record`, which can continue a tape
                        way = "--append to continue it, or " + way
                    raise TapeError(
                        f"{path} already holds a tape ({path.stat().st_size} bytes): refusing to"
                        f" overwrite it; give {way}"
                    )
                self._file = self._continue(config_sha256)
            except TapeError:  # refused: the lock goes with it, as at a stop
                os.close(self._lock_fd)
                self._lock_fd = None
                raise
        else:
            self._file = path.open("wb")
            self._header = header

    def _continue(self, config_sha256: str | None) -> IO[bytes]:
        """Open an existing tape for appending: its header must be one this build writes, with
        the same config digest if it has one (a tape has one header, true for every line of it;
        one without a digest, from an older build or `audit --tape`, claims none). A last line
        without its newline (the process died mid-write) is ended, not cut: the torn bytes stay
        as the evidence of the crash. Whether a replay reads that line (it may lack only its
        newline) is found as the replay finds it, by reading the tape (`torn_readable`)."""
        with self.path.open("rb") as tape:  # never a line held whole: --out may name any file
            first = tape.readline(MAX_LINE_BYTES + 1)
            tape.seek(-1, os.SEEK_END)
            torn = tape.read(1) != b"\n"
            lines = 0
            if torn:
                tape.seek(0)
                lines, readable = _last_line_read(tape)
        try:
            existing = read_header(first)
        except TapeError as exc:  # its message says which line, not which file
            raise TapeError(f"{self.path}: {exc}") from None
        if existing.config_sha256 not in (None, config_sha256):
            hint = "" if self._config_hint is None else self._config_hint(existing.config_sha256)
            raise TapeError(
                f"{self.path} was recorded with another pricing config (sha256"
                f" {existing.config_sha256}): --append continues a tape only with its own config;"
                f" record to another --out{hint}"
            )
        if existing.pricing_revision not in (None, PRICING_REVISION):
            raise TapeError(
                f"{self.path} was recorded under pricing revision {existing.pricing_revision},"
                f" this oracled prices under revision {PRICING_REVISION}: --append continues a"
                " tape only under its own revision (its header names one for every line);"
                " record to another --out"
            )
        self.commands = existing.version >= 2
        file = self.path.open("ab")
        if torn:
            file.write(b"\n")
            self.torn_line = lines
            self.torn_readable = readable
        return file

    def torn_event(self) -> str | None:
        """The log line for a last line `append` ended, true to what a replay makes of it: a
        torn quote is reported unreadable, a whole one that lacked only its newline (or a
        header with no line after it) is read as any other."""
        if self.torn_line is None:
            return None
        ended = "ended it, and appending after it"
        if self.torn_line == 1:
            return f"tape: its header lacked its newline (a stop mid-write): {ended}; it is whole"
        if self.torn_readable:
            return (
                f"tape: its last line lacked its newline (a stop mid-write): {ended}; the line is"
                " whole, and a replay reads it"
            )
        return (
            f"tape: its last line was torn (a stop mid-write): {ended}; a replay reports that"
            " line as unreadable"
        )

    def number(self, round_no: int, ts: int) -> None:
        """Name the daemon's first round (its number and time) in the header of a new tape, so
        that a replay numbers its rounds as the daemon did (`first_round`, `first_round_ts`):
        its first rounds often run before any venue answered, and a tape has no line for them.
        Called at the first round, before any flush; a continued tape keeps its header."""
        if self._header is not None:
            self._header = self._header_line(round_no, ts)

    def _header_line(self, round_no: int | None = None, ts: int | None = None) -> bytes:
        """Line 1 of a new tape: the config's digest, the pricing revision the daemon computes
        its reports under and its version, and (once known) its first round."""
        return header_line(
            self._digest,
            round_no,
            ts,
            pricing_revision=PRICING_REVISION,
            software_version=__version__,
        )

    def _open_later(self) -> None:
        """Open a path that is no regular file in a thread of its own, as the first write: the
        flushes wait for it like for any write, and a stop while nobody reads a FIFO ends the
        recording (`close`) instead of hanging the process before its loop ran."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def open_() -> None:
            with self._lock:
                try:
                    self._file = self._open_for_a_reader()
                except OSError as exc:
                    self.error = described(exc)
            done.set_result(None)

        threading.Thread(target=open_, name="tape-open", daemon=True).start()
        self._pending = done

    def _open_for_a_reader(self) -> IO[bytes]:
        """Open the path, saying so when that waits for a FIFO's reader: the daemon runs on
        meanwhile, and an operator must see why its tape stays empty."""
        try:  # a FIFO without a reader refuses a non-blocking open (ENXIO) instead of waiting
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        else:
            os.set_blocking(fd, True)
            return os.fdopen(fd, "wb")
        log = structlog.get_logger("oracled").bind(component="tape", path=str(self.path))
        log.info("tape: waiting for a reader")
        file = self.path.open("wb")
        log.info("tape: reader connected")
        return file

    def add(self, quote: Quote) -> None:
        if self.error is None:
            line = quote_to_line(quote)
            self._buffer.append(line)
            self._backlog += len(line)
            if self._backlog + self._held_bytes > self._max_backlog:
                why = "a disk or reader that fell behind"
                if self.lock_away:
                    why = f"its lock file {lock_path(self.path)} away, its directory moved"
                self.error = (
                    f"more than {self._max_backlog} bytes of quotes waited for the tape's writes"
                    f" ({why})"
                )
                self._buffer, self._backlog = [], 0

    def add_command(self, line: bytes, ts: int) -> None:
        """Put a manual command line, for the round at `ts`, before the lines waiting that are
        later than `ts`: quotes received after that round's tick, which go into a later round
        live, and which a replay must not read before it has applied the command (it runs a
        round when it reads a quote later than it). Lines already written are never later:
        the writes follow a round, and a round runs only once its tick has passed."""
        if self.error is not None or not self.commands:
            return
        at = len(self._buffer)
        while at and line_ts(self._buffer[at - 1]) > ts:
            at -= 1
        self._buffer.insert(at, line)
        self._backlog += len(line)

    def flush(self) -> None:
        """Hand the buffered lines to the writer thread, unless the last batch is still being
        written: then they wait for the next flush."""
        if self.error is not None or not self._buffer:
            return
        if self._pending is not None and not self._pending.done():
            return
        lines, self._buffer, self._backlog = self._buffer, [], 0
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def write() -> None:
            self._write(lines)
            done.set_result(None)

        # A daemon thread of its own, not the loop's executor: a write that never returns (a
        # reader that stopped for good, a hung mount) would hold the process at its exit.
        threading.Thread(target=write, name="tape-write", daemon=True).start()
        self._pending = done

    def take_error(self) -> str | None:
        """What stopped the recording, the first time it is asked after it happened."""
        if self.error is None or self._told:
            return None
        self._told = True
        return self.error

    async def drain(self, timeout_s: float) -> None:
        """Wait for a batch in flight, `timeout_s` at most (a stop stays within its budget)."""
        if self._pending is not None:
            await asyncio.wait([asyncio.wrap_future(self._pending)], timeout=timeout_s)

    @property
    def lock_lost(self) -> bool:
        """`<tape>.lock` is no longer the file locked: nothing more is written."""
        return self._lock_watch.lost

    @property
    def lock_away(self) -> bool:
        """`<tape>.lock` is not at its path (its directory moved away): lines wait till it is
        back."""
        return self._lock_watch.away

    def _lock_now(self) -> LockState:
        """Whether `<tape>.lock` is still the file this recorder locked (`lockfile.lock_state`;
        HELD when it holds none: a FIFO). A few system calls, asked in the writer thread before
        each batch and at the stop.

        LOST (removed, a clean-up of lock files; or the directory removed and made again): it
        excludes nobody, a second `oracled record` locks a new one and writes the same tape, its
        lines among this one's. So the recording stops for good, as after a failed write, and
        writes nothing more, not even at the stop.

        MOVED (the directory moved away with it): it still excludes everyone, and the lines
        wait in memory until the very file is back (said once each way). Appending through the
        open tape meanwhile would land in the right file, in its new place, where no other
        recorder can lock it; they wait all the same: a directory moved away (to copy or
        archive it, or on its way to being deleted) is expected to stay as it was moved, and
        a tape copied while it grows is torn at its end."""
        if self._lock_fd is None:
            return LockState.HELD
        state = lock_state(self.path, self._lock_fd)
        change = self._lock_watch.update(state)
        if change is LockChange.BACK:
            self._log.info(
                "tape lock file back: lines are written again", held_bytes=self._held_bytes
            )
        elif change is LockChange.AWAY:
            self._log.error(
                "tape lock file missing: lines wait in memory until it is back",
                lock=str(lock_path(self.path)),
                max_backlog=self._max_backlog,
            )
        elif change is LockChange.LOST:
            self.error = self.error or (
                f"its lock file {lock_path(self.path)} is gone (removed, or its directory made "
                "again): another recorder may write the tape now"
            )
        return state

    def _write(self, lines: list[bytes]) -> None:
        with self._lock:
            if self.error is not None or self._file is None:
                return
            state = self._lock_now()
            if state is LockState.MOVED:
                self._held_back += lines
                self._held_bytes += sum(len(line) for line in lines)
                return
            if state is LockState.LOST:
                return
            lines, self._held_back, self._held_bytes = self._held_back + lines, [], 0
            try:
                self._write_header(self._file)
                self._file.writelines(lines)
                self._file.flush()
            except OSError as exc:
                self.error = described(exc)

    def _write_header(self, file: IO[bytes]) -> None:
        """Line 1 before the first lines of quotes (with the first round once it has run)."""
        if self._header is not None:
            header, self._header = self._header, None
            file.write(header)

    def close(self) -> str | None:
        """Write what is left after any batch in flight, then close; return what stopped the
        recording if it was not told yet."""
        if not self._lock.acquire(blocking=False):  # a write still stuck after `drain`
            if self.error is None and self._file is None:
                self.error = f"nobody opened {self.path} for reading: nothing was recorded"
            elif self.error is None:
                self.error = "a write did not finish at the stop: the tape's last lines are missing"
            return self.take_error()
        file, lines, self._buffer = self._file, self._held_back + self._buffer, []
        self._held_back, self._held_bytes = [], 0
        try:
            if file is not None:
                state = self._lock_now()
                if state is LockState.HELD:  # lost: the tape may be another recorder's now
                    self._write_header(file)  # a tape stopped short still says what it is
                    if self.error is None:
                        file.writelines(lines)
                elif state is LockState.MOVED and lines and self.error is None:
                    self.error = (
                        f"the stop came while its lock file {lock_path(self.path)} was away (its "
                        f"directory moved): the last {len(lines)} lines are not on the tape"
                    )
                file.close()
        except OSError as exc:
            if file is not None:  # always: only its writes raise
                with contextlib.suppress(OSError):
                    file.close()  # a second try finds the buffer gone, and closes
            self.error = self.error or described(exc)
        finally:
            self._lock.release()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # the next recorder may continue the tape
                self._lock_fd = None
        return self.take_error()


def _last_line_read(tape: IO[bytes]) -> tuple[int, bool]:
    """How many lines the tape has, and whether the tape reader decodes the last one (line 1,
    the header, is decoded by `_continue`). Only that line is decoded, after the header that
    says what lines the tape holds: every line would take about 5 s a million, at the start."""
    count = 0
    first = last = b""
    for line in tape_lines(tape):
        count += 1
        if count == 1:
            first = line
        last = line
    if count < 2:
        return count, True
    errors: list[TapeLineError] = []
    try:  # manual commands are read, as a replay applies them
        for _ in read_tape((first, last), errors, on_command=lambda _command: None):
            pass
    except TapeError:  # a header this build does not read: `_continue` refuses it
        return count, False
    return count, not errors


def _a_directory(tape: Path, flag: str) -> str:
    """The refusal of a tape path that is a directory."""
    return f"{tape} is a directory: {flag} names the tape file"


def state_file_clash(tape: Path, cfg: Config, flag: str) -> str | None:
    """Why `tape` may not be recorded to: it is one of the files the daemon keeps its state in
    (the manual pauses file, the audit trail, the signing lease) or a file kept beside one
    (its lock, SQLite's), or its own lock file is. Said before any of them is opened: the
    recorder's own refusal named the wrong cause (a tape already there, a header unreadable),
    or the tape went over the state where that file did not exist yet. A path with no name
    (`/`, `.`) is a directory, said here: it has no name to put a lock file beside."""
    if not tape.name:
        return _a_directory(tape, flag)
    kept: list[tuple[str, str, tuple[str, ...]]] = []
    if cfg.oracle.manual_pauses_file is not None:
        pauses = cfg.oracle.manual_pauses_file
        kept.append(("the manual pauses file (oracle.manual_pauses_file)", pauses, ()))
    if cfg.audit.enabled:
        kept.append(("the audit trail (audit.path)", cfg.audit.path, tuple(AUDIT_BESIDE)))
    if cfg.signing.enabled and cfg.signing.lease_file is not None:
        kept.append(("the signing lease (signing.lease_file)", cfg.signing.lease_file, ()))
    ours, its_lock = tape.resolve(), lock_path(tape).resolve()
    for what, name, endings in kept:
        path = Path(name)
        files = [path, lock_path(path), *(path.with_name(path.name + e) for e in endings)]
        for file in files:
            told = what if file is path else f"{file}, kept beside {what}"
            same = file is path and tape.exists() and path.exists() and tape.samefile(path)
            if same or file.resolve() == ours:  # `same`: a hard link too
                return f"{flag} {tape} is {told}, {name}: record to another {flag}"
            if file.resolve() == its_lock:
                return (
                    f"{flag} {tape} would lock {lock_path(tape)}, which is {told}, {name}: record"
                    f" to another {flag}"
                )
    return None
