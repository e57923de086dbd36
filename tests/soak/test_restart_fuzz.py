"""Restart safety at seeded-random moments: `oracled record` with the audit trail, signing and
kept manual pauses on, killed with SIGKILL again and again (somewhere in its start, at once
after its API answers, or some rounds in, right after a manual pause or resume, a reload by
SIGHUP, a SIGTERM whose stop it may not finish, or nothing), and started again on the same files
each time, its signing lease window drawn too (one the restart waits out, or not).

After each kill: the trail opens with whole rounds only and `oracled audit --verify` proves it,
and each run replays from its stored quotes and operator actions to its stored reports, byte for
byte, across a pause or resume and a pause restored at its start too (a pause answered with no
round after it before the kill applies to no stored round: the trail has no action for it, and
the next run restores it from the pauses file); the
signing lease left on disk reaches every round time the killed daemon signed, and the next
daemon signs only after it (after a completed stop: from its first round); the pauses file holds
the pauses answered before the kill, and the next daemon holds them from its first round; every
market of the next daemon is live only after `resume_rounds` rounds with a quorum; the tape ends
in whole lines, or in a torn one that the next `--append` ends and names, which a replay then
reports as unreadable (or says is whole, when the kill left only its newline unwritten). A
failure names the kill points drawn so far; another SEED (or more KILLS) explores other moments.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import re
import signal
import sqlite3
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from daemon import ADMIN_TOKEN, Daemon, sim_config
from restart_rig import first_live, reports_after, whole_rounds
from venue_sims import BinanceVenues

from oracled.cli import main
from oracled.config import load_config
from oracled.publish.audit import AuditReader
from oracled.publish.signer import SigningKey
from oracled.replay import replay
from oracled.tape import ManualCommand, TapeHeader, TapeLineError, read_tape, tape_lines

pytestmark = pytest.mark.integration

SEED = 52
KILLS = 5
MARKETS = ("BTC/USD", "ETH/USD", "USDT/USD")
PAUSABLE = ("BTC/USD", "ETH/USD")
QUORUM = 3  # sim_config's min_sources: every one of the three venues
RESUME_ROUNDS = 5  # sim_config's
KEY = SigningKey.from_hex("0x" + "5a" * 32)
#: Each run's `lease_window_ms`, drawn: a short one is passed before the next run signs, a long
#: one holds the next run at its floor for seconds.
WINDOWS_MS = (1_000, 10_000)
FLOOR_EVENT = "round not signed: this key signed up to a later round time before"
_MARKET_ROUND = re.compile(rb'^\{"market":"([^"]+)","ts":(\d+),"round":(\d+),')
TORN = (
    "tape: its last line was torn (a stop mid-write): ended it, and appending after it;"
    " a replay reports that line as unreadable"
)
#: The same, for a last line the kill left whole but for its newline: a replay reads it.
UNENDED = (
    "tape: its last line lacked its newline (a stop mid-write): ended it, and appending after"
    " it; the line is whole, and a replay reads it"
)


@dataclass(slots=True)
class State:
    """The files every run shares, and what the runs so far left in them."""

    root: Path
    urls: list[tuple[str, str]]
    poll_s: float = 0.5  # v1's rest_poll_interval_s: a reload toggles it
    window_ms: int = WINDOWS_MS[0]  # signing.lease_window_ms of the run
    paused: set[str] = field(default_factory=set)  # pauses answered 200, not resumed since
    lease: int | None = None  # the lease on disk after the last kill
    signed: set[int] = field(default_factory=set)  # every round time signed so far
    boundary: int = 0  # the highest round id after the last kill
    #: the last run stopped on its own (SIGTERM before the kill)
    clean: bool = False
    #: ... and wrote its lease down to the last round time it signed: a run that signed none
    #: puts back the floor it found (a killed run's window, maybe still ahead), and one whose
    #: last signature was not ready at the stop leaves it where it was (docs/publishing.md)
    written_down: bool = False
    torn: dict[int, bytes] = field(default_factory=dict)  # torn tape lines: number -> bytes
    replayed: int = 0  # stored reports a replay gave byte for byte, all runs

    @property
    def audit(self) -> Path:
        return self.root / "audit.sqlite3"

    @property
    def tape(self) -> Path:
        return self.root / "tape.jsonl"

    def config(self) -> str:
        """The run's config: `sim_config`'s venues and markets, with the audit trail, signing
        (KEY, its lease) and the pauses file on the shared files."""
        key = self.root / "signing.key"
        if not key.exists():
            key.write_text(KEY.hex() + "\n")
            key.chmod(0o600)
        text = sim_config(self.urls).replace(
            "[oracle]\n", f'[oracle]\nmanual_pauses_file = "{self.root / "pauses.json"}"\n', 1
        )
        text = text.replace(
            "rest_poll_interval_s = 0.5", f"rest_poll_interval_s = {self.poll_s}", 1
        )
        return (
            f'{text}\n[audit]\nenabled = true\npath = "{self.audit}"\n'
            f'[signing]\nenabled = true\ndeployment = "test"\nkey_file = "{key}"\n'
            f'lease_file = "{self.root / "signing-lease.json"}"\n'
            f"lease_window_ms = {self.window_ms}\n"
        )

    def lease_on_disk(self) -> int | None:
        """KEY's lease in the file; None without one (a first start not begun, or stopped
        before its first round: its lease taken out again)."""
        path = self.root / "signing-lease.json"
        if not path.exists():
            return None
        lease = json.loads(path.read_text())["leases"].get(KEY.address)
        return None if lease is None else int(lease)


async def _signed_frames(daemon: Daemon, out: list[dict[str, Any]]) -> None:
    """Every signed frame the daemon streams, from its API's first answer to its end."""
    assert daemon.session is not None
    url = daemon.base.replace("http", "ws", 1) + "/v1/stream"
    try:
        async with daemon.session.ws_connect(url) as ws:
            await ws.send_json({"op": "subscribe", "signed": True})
            async for msg in ws:
                frame = json.loads(msg.data)
                if frame.get("type") == "signed":
                    out.append(frame["data"])
    except aiohttp.ClientError:
        return  # killed


@dataclass(frozen=True, slots=True)
class KillPoint:
    """Where one run is killed: `start_s` after it was spawned, wherever its start is then;
    else once it published `rounds` rounds (0: as soon as its API answers), `delay_s` after
    `action` (pause or resume `market`, reload on SIGHUP, stop on SIGTERM, none)."""

    start_s: float | None
    rounds: int
    action: str
    market: str
    delay_s: float
    window_ms: int

    @classmethod
    def draw(cls, rng: random.Random, paused: set[str]) -> KillPoint:
        start_s = rng.uniform(0.2, 3.0) if rng.random() < 0.2 else None
        rounds = rng.choice((0, rng.randint(3, 30)))
        action = rng.choice(("pause", "resume", "reload", "stop", "none"))
        market = rng.choice(PAUSABLE)
        if action == "resume":  # of a market paused, if there is one
            action, market = ("resume", rng.choice(sorted(paused))) if paused else ("pause", market)
        return cls(start_s, rounds, action, market, rng.uniform(0.0, 0.3), rng.choice(WINDOWS_MS))

    def __str__(self) -> str:
        window = f"lease window {self.window_ms} ms"
        if self.start_s is not None:
            return f"{window}, {self.start_s:.3f} s after the spawn"
        return f"{window}, {self.rounds} rounds, {self.action} {self.market}, {self.delay_s:.3f} s"


@asynccontextmanager
async def _running(state: State, run: int, start_s: float | None) -> Any:
    """`oracled record --append` on the shared files, started (or killed `start_s` after its
    spawn, whether its start ended or not), and the signed frames it streamed."""
    workdir = state.root / f"run{run}"
    workdir.mkdir()
    daemon = Daemon(state.config(), workdir)
    daemon.argv[1] = "record"
    signed: list[dict[str, Any]] = []
    reader: asyncio.Task[None] | None = None
    try:
        starting = asyncio.create_task(daemon.start("--out", str(state.tape), "--append"))
        if start_s is None:
            await starting
        else:
            await asyncio.wait([starting], timeout=start_s)
            await _kill(daemon)
            await asyncio.gather(starting, return_exceptions=True)  # it saw the kill, or ended
        reader = asyncio.create_task(_signed_frames(daemon, signed), name="signed-frames")
        yield daemon, signed
    finally:
        if reader is not None:
            if daemon.proc is not None and daemon.proc.poll() is None:
                reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await daemon.close()


async def _kill(daemon: Daemon) -> None:
    assert daemon.proc is not None
    if daemon.proc.poll() is None:
        os.kill(daemon.proc.pid, signal.SIGKILL)
    await asyncio.to_thread(daemon.proc.wait, 10)


async def _round(daemon: Daemon, at_least: int) -> None:
    async def reached() -> bool:
        status, body = await daemon.get("/v1/prices/USDT-USD")
        return status == 200 and int(body["round"]) >= at_least

    await daemon.wait_for(reached, 20.0, f"round {at_least}")


async def _manual(daemon: Daemon, market: str, action: str) -> None:
    status, body = await daemon.post(
        f"/v1/admin/markets/{market.replace('/', '-')}/{action}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"actor": "fuzz"},
    )
    assert status == 200, body


async def _kill_at(state: State, daemon: Daemon, point: KillPoint) -> None:
    """Run the daemon to `point` and SIGKILL it there."""
    if point.start_s is not None:
        return  # killed already
    assert daemon.proc is not None
    if point.rounds:
        await _round(daemon, point.rounds)
    if point.action in ("pause", "resume"):
        await _manual(daemon, point.market, point.action)
        if point.action == "pause":
            state.paused.add(point.market)
        else:
            state.paused.discard(point.market)
    elif point.action == "reload":
        state.poll_s = 0.6 if state.poll_s == 0.5 else 0.5
        daemon.config.write_text(state.config())
        daemon.proc.send_signal(signal.SIGHUP)
    elif point.action == "stop":  # a supervisor that does not wait out the stop
        daemon.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(point.delay_s)
    await _kill(daemon)


def _signed_in_trail(path: Path, after: int, upto: int) -> set[int]:
    reader = AuditReader(path)
    try:
        return {
            r.ts
            for r in reader.rounds(0, 2**62)
            if after < r.id <= upto
            and r.signature is not None
            and (r.signer or "").lower() == KEY.address.lower()
        }
    finally:
        reader.close()


def _by_market(path: Path, after: int, upto: int) -> dict[str, list[tuple[int, Any]]]:
    rows: dict[str, list[tuple[int, Any]]] = {m: [] for m in MARKETS}
    for round_id, report in reports_after(path, after, MARKETS, upto):
        rows[report.market].append((round_id, report))
    return rows


def _check_run(state: State, daemon: Daemon, signed: list[dict[str, Any]], held: set[str]) -> None:
    """What a run left, once it ended (killed or stopped): whole rounds, proven by --verify; its
    signed round times all past the lease it started on and within the lease it left; every
    market started safe, the pauses it started with (`held`) in force in each of its rounds; its
    stored quotes and actions replay to its reports."""
    if not state.audit.exists():  # killed before its trail was made: nothing signed either
        assert not signed and state.lease_on_disk() is None
        return
    if not _has_rounds_table(state.audit):  # killed after its start opened the trail's file
        # (and maybe took its lease, last in the start), before the trail's writer made its
        # tables: the next daemon makes them (a file without tables is a new trail)
        mine = {int(s["ts"]) for s in signed}
        lease = state.lease_on_disk()
        if mine:
            assert lease is not None and lease >= max(mine), (lease, max(mine))
            assert not state.signed or min(mine) > max(state.signed), "a round time signed again"
        state.lease, state.signed = lease, state.signed | mine
        state.clean = state.written_down = False
        return
    rounds, last = whole_rounds(state.audit, len(MARKETS))
    told = io.StringIO()
    with contextlib.redirect_stdout(told):  # in this process: a second's start saved a check
        audit = ["audit", "--db", str(state.audit), "--config", str(daemon.config)]
        code = main([*audit, "--verify", "--signer", KEY.address])
    assert code == (0 if rounds else 1), told.getvalue()

    mine = {int(s["ts"]) for s in signed} | _signed_in_trail(state.audit, state.boundary, last)
    assert all(s["signer"] == KEY.address for s in signed)
    if state.signed:
        assert not mine or min(mine) > max(state.signed), "a round time signed again"
    if state.lease is not None:
        assert not mine or min(mine) > state.lease  # the floor it started on
    lease = state.lease_on_disk()
    if mine:
        assert lease is not None and lease >= max(mine), (lease, max(mine))
    if state.written_down and last > state.boundary:  # the stop before wrote its lease down
        assert not daemon.events(FLOOR_EVENT), "a clean restart waited for its floor"
    state.clean = daemon.proc is not None and daemon.proc.returncode == 0
    late = daemon.events("the last round's signature was not ready at the stop")
    state.written_down = state.clean and bool(mine) and not late
    if state.written_down:  # written down to the last round it signed
        assert lease == max(mine), (lease, max(mine))
    state.lease, state.signed = lease, state.signed | mine

    for market, rows in _by_market(state.audit, state.boundary, last).items():
        if rows:
            first_live(rows, QUORUM, RESUME_ROUNDS)
        if market in held and market in state.paused:  # held from start to end of the run
            assert all("manual" in r.reasons for _, r in rows), market
            assert all(r.status not in ("active", "degraded") for _, r in rows), market
    _replays_as_stored(state, daemon.config, last)
    state.boundary = last

    pauses = state.root / "pauses.json"
    kept = json.loads(pauses.read_text())["paused"] if pauses.exists() else {}
    assert set(kept) == state.paused


def _has_rounds_table(path: Path) -> bool:
    """Whether the trail's file has its tables yet."""
    db = sqlite3.connect(path)
    try:
        found = db.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'rounds'")
        return found.fetchone() is not None
    finally:
        db.close()


def _market_round(line: bytes) -> tuple[bytes, bytes]:
    """A report line's market and round number, the two that name it within a run."""
    found = _MARKET_ROUND.match(line)
    assert found is not None, line[:80]
    return found[1], found[3]


def _round_ts(line: bytes) -> int:
    """A report line's round time."""
    found = _MARKET_ROUND.match(line)
    assert found is not None, line[:80]
    return int(found[2])


def _replays_as_stored(state: State, config: Path, last: int) -> None:
    """The run's stored quotes and operator actions (`oracled audit --tape` from its first round
    to its last with quotes), replayed with its config, give each report it stored byte for byte
    (docs/publishing.md): a kill cuts a run's rounds, never a stored round from its inputs.

    The window opens at the run's first round, not its first with quotes: a pause restored at
    the start, or one answered before the venues did, first applied to a round without quotes,
    and the replay applies it before its first round (docs/contracts.md). Each action stamped
    with a round of the window is applied; one whose round the kill left unstored is outside it,
    as is its round's report."""
    reader = AuditReader(state.audit)
    try:
        rounds = [r for r in reader.rounds(0, 2**62) if state.boundary < r.id <= last]
        quoted = [r.ts for r in rounds if r.quotes]
        if not quoted:
            return
        window = (min(r.ts for r in rounds), max(quoted))
        stored = {_market_round(line): line for line in reader.report_lines(*window)}
        actions = [
            a
            for a in reader.actions(None, 0, 2**62)
            if a.round_ts is not None and window[0] <= a.round_ts <= window[1]
        ]
        tape = io.BytesIO()
        reader.tape(tape, *window)
    finally:
        reader.close()
    out = io.BytesIO()
    stats = replay(load_config(config), io.BytesIO(tape.getvalue()), out)
    assert stats.errors == []
    assert stats.commands == len(actions), actions
    lines = out.getvalue().splitlines(keepends=True)
    assert lines  # the tape holds quotes: the replay ran a round
    replayed: set[tuple[bytes, bytes]] = set()
    for line in lines:
        key = _market_round(line)
        kept = stored.get(key)
        if kept is not None:
            assert line == kept
            replayed.add(key)
    # Every stored report of a round within the replay's span is replayed. A stored round past
    # its last round had no quote of its own: its quotes were those of the rounds a blocked loop
    # computed late, which the trail has no report of (docs/publishing.md), and a replay runs no
    # round past the last quote's. A run killed right after it has no stored round to compare.
    span = (_round_ts(lines[0]), _round_ts(lines[-1]))
    assert {k for k, line in stored.items() if span[0] <= _round_ts(line) <= span[1]} <= replayed
    state.replayed += len(replayed)


def _tape_after_kill(state: State) -> int | None:
    """The number of the tape's torn last line (a kill mid-write), None if it ends whole."""
    data = state.tape.read_bytes() if state.tape.exists() else b""
    if not data or data.endswith(b"\n"):
        return None
    lines = list(tape_lines(io.BytesIO(data)))
    state.torn[len(lines)] = lines[-1]
    return len(lines)


def _read(data: bytes) -> tuple[list[TapeHeader], int, list[TapeLineError]]:
    """The tape's headers, its quotes counted, and the lines it could not read; its manual
    commands (the pauses and resumes, and each start's restored pauses) are read, not errors."""
    headers: list[TapeHeader] = []
    errors: list[TapeLineError] = []
    commands: list[ManualCommand] = []
    lines = read_tape(
        io.BytesIO(data), errors, on_header=headers.append, on_command=commands.append
    )
    quotes = sum(1 for _ in lines)
    return headers, quotes, errors


def _told(plan: list[KillPoint]) -> str:
    """The kill points drawn so far, for a failure's message."""
    return "\n".join(f"kill {k + 1}: {point}" for k, point in enumerate(plan))


async def test_kill_9_at_random_moments_keeps_trail_lease_pauses_gates_and_tape_true(
    tmp_path: Path, binance_venues: BinanceVenues
) -> None:
    """KILLS runs killed at moments drawn from SEED, and one more stopped cleanly; each run
    checked as the module docstring says, the tape of all of them read at the end."""
    venues = await binance_venues(
        {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "USDTUSD": 1.0}, 3, market_seed=7
    )
    state = State(tmp_path, [(v.ws_url, v.rest_url) for v in venues])
    rng = random.Random(SEED)
    plan: list[KillPoint] = []
    torn: int | None = None
    for run in range(KILLS + 1):
        held = set(state.paused)
        point = KillPoint.draw(rng, state.paused) if run < KILLS else None
        state.window_ms = WINDOWS_MS[0] if point is None else point.window_ms
        async with _running(state, run, point and point.start_s) as (daemon, signed):
            if torn is not None and (point is None or point.start_s is None):
                told = UNENDED if state.torn[torn].rstrip().endswith(b"}") else TORN
                (event,) = await daemon.wait_for(partial(daemon.events, told), 5.0, told)
                assert event["line"] == torn, _told(plan)
            if point is not None:
                plan.append(point)
                await _kill_at(state, daemon, point)
            else:  # the last one: its pauses over the API, then a clean stop
                await _round(daemon, RESUME_ROUNDS + 5)
                for market in PAUSABLE:
                    report = await daemon.report(market)
                    assert ("manual" in report["reasons"]) == (market in state.paused), market
                assert await asyncio.to_thread(daemon.terminate) == 0
        _check_run(state, daemon, signed, held)
        torn = _tape_after_kill(state)
    assert torn is None  # the clean stop ended the tape whole
    assert state.replayed > 0
    headers, quotes, errors = _read(state.tape.read_bytes())
    assert len(headers) == 1 and quotes > 100
    unreadable = {n for n, line in state.torn.items() if not line.rstrip().endswith(b"}")}
    assert unreadable <= {e.line for e in errors} <= set(state.torn), _told(plan)
