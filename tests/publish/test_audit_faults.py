"""The determinism promise under faults, on a real daemon: what `oracled record` published and
stored in its audit trail is what a replay of its recorded quotes gives, byte for byte, `round`
included (docs/ARCHITECTURE.md, *Determinism*; docs/publishing.md, `--tape`).

Five venues of five types on loopback simulators (oracled/sim/venues.py): three spot venues
quoting BTC/USD and USDT/USD, a spot venue quoting BTC/USDT (priced through the USDT/USD leg),
and a perpetual venue quoting BTC-USDT-SWAP (so the reports carry the mark). The faults come
from the simulators' own controls, in an order and on venues drawn from a seed: garbage frames,
a dropped connection, a stall with the socket open, one venue's spike, stale frames sent again,
the daemon itself stopped for a moment (SIGSTOP), the trail held by another writer (its queue
fills: rounds are dropped from it, their quotes kept for the next), two of a burst, a frozen
book, refused handshakes (the source polls REST) and a muted instrument, and a quorum loss that
pauses BTC/USD until it resumes with hysteresis. Both tapes (the trail's `--tape` and the
recorder's) are replayed with the daemon's config and every stored report compared, and so is
every report the WS stream sent (plain and batch frames).
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import re
import shlex
import signal
import sqlite3
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import tomli_w

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from audit_rig import SPOT_USD, daemon_config
from daemon import ADMIN_TOKEN, Daemon

from oracled.cli import main
from oracled.config import Config, load_config
from oracled.publish.audit import AuditReader, iso_time
from oracled.replay import replay
from oracled.sim import VenueSim
from oracled.sim.venues import SimulatedVenue, simulate

pytestmark = pytest.mark.integration
LIVENESS = {"liveness_timeout_s": 1.0, "rest_poll_interval_s": 0.5, "reconnect_max_s": 0.5}
_ROUND = re.compile(rb'"round":(\d+),')
_LIVE = ("active", "degraded")
_END = 1 << 62


_HEAD, _BATCH_HEAD = b'{"type":"report","data":', re.compile(rb'^\{"type":"reports","round":\d+,')


class _Stream:
    """A `WS /v1/stream` subscriber of every market, plain (`report` frames) or `batch`: the
    reports it was sent, as the bytes the daemon encoded them in."""

    def __init__(self, base: str, *, batch: bool) -> None:
        self.base, self.batch = base, batch
        self.reports: list[bytes] = []
        self.ready = asyncio.Event()

    async def run(self) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                self.base.replace("http", "ws", 1) + "/v1/stream", max_msg_size=0
            ) as ws,
        ):
            await ws.send_str(
                msgspec.json.encode({"op": "subscribe", "batch": self.batch}).decode()
            )
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = msg.data.encode()
                if frame.startswith(_HEAD):
                    self.reports.append(frame[len(_HEAD) : -1] + b"\n")
                elif _BATCH_HEAD.match(frame):
                    data = frame[frame.index(b'"data":[') + 8 : -2]
                    self.reports.extend(x + b"\n" for x in _split(data))
                else:
                    assert b'"subscribed"' in frame, frame
                    self.ready.set()


def _split(data: bytes) -> list[bytes]:
    """The reports of a batch frame's `data` array, as their bytes: split where a report ends
    (`}` at depth 0), never inside a string (market names and reasons hold no quote)."""
    out, depth, start, in_string = [], 0, 0, False
    for i, byte in enumerate(data):
        if byte == 0x22:
            in_string = not in_string
        elif not in_string and byte in b"{[":
            depth += 1
        elif not in_string and byte in b"}]":
            depth -= 1
            if depth == 0:
                out.append(data[start : i + 1])
                start = i + 2  # past the comma
    return out


class _Run:
    """A recording daemon on simulated venues; `venue(sid)` is a venue's simulator."""

    def __init__(self, daemon: Daemon, venues: list[SimulatedVenue], tape: Path) -> None:
        self.daemon, self.venues, self.tape = daemon, venues, tape
        self.streams = [_Stream(daemon.base, batch=False), _Stream(daemon.base, batch=True)]
        self._tasks: list[asyncio.Task[None]] = []

    async def subscribe(self) -> None:
        self._tasks = [asyncio.create_task(s.run()) for s in self.streams]
        for stream in self.streams:
            await asyncio.wait_for(stream.ready.wait(), 10.0)

    async def unsubscribed(self) -> None:
        """The streams' tasks, ended by the daemon's stop (they raise what went wrong)."""
        await asyncio.wait_for(asyncio.gather(*self._tasks), 10.0)

    def venue(self, sid: str) -> SimulatedVenue:
        return next(v for v in self.venues if v.source == sid)

    async def btc(self, statuses: set[str], limit_s: float = 10.0) -> dict[str, Any]:
        return await self.daemon.wait_status("BTC/USD", statuses, limit_s=limit_s)

    async def rounds(self, n: int) -> None:
        """Until the daemon has published `n` more rounds."""
        start = int((await self.daemon.report("BTC/USD"))["round"])

        async def later() -> bool:
            return int((await self.daemon.report("BTC/USD"))["round"]) >= start + n

        await self.daemon.wait_for(later, 10.0, f"{n} more rounds")


async def _started(tmp_path: Path) -> _Run:
    cfg, venues = await simulate(
        daemon_config(tmp_path / "audit.sqlite3"), rate_hz=10.0, liveness=LIVENESS
    )
    dump = cfg.model_dump(by_alias=True, exclude={"admin_token"}, exclude_none=True)
    daemon = Daemon(tomli_w.dumps(dump), tmp_path)
    daemon.argv[1] = "record"
    tape = tmp_path / "recorded.jsonl"
    run = _Run(daemon, venues, tape)
    await daemon.start("--out", str(tape))
    await run.subscribe()
    return run


async def _stop(run: _Run) -> None:
    try:
        if run.daemon.proc is not None and run.daemon.proc.poll() is None:
            assert await asyncio.to_thread(run.daemon.terminate) == 0, run.daemon.logs()[-3000:]
        await run.unsubscribed()
    finally:
        await run.daemon.close()
        for venue in run.venues:
            await venue.sim.stop()


def _number(line: bytes) -> int:
    """The round number of a report line."""
    return int(_ROUND.search(line)[1])  # type: ignore[index]


def _ts(line: bytes) -> int:
    """The round time of a report line."""
    return int(msgspec.json.decode(line)["ts"])


def _by_round(lines: Iterable[bytes]) -> dict[int, list[bytes]]:
    """Report lines grouped by their round number, in their order."""
    out: dict[int, list[bytes]] = {}
    for line in lines:
        out.setdefault(_number(line), []).append(line)
    return out


def _replayed(cfg: Config, tape: bytes) -> dict[int, list[bytes]]:
    out = io.BytesIO()
    stats = replay(cfg, io.BytesIO(tape), out)
    assert stats.errors == [], stats.errors[:3]
    return _by_round(out.getvalue().splitlines(keepends=True))


def _mismatches(
    stored: dict[int, list[bytes]], replayed: dict[int, list[bytes]]
) -> list[tuple[int, list[bytes], list[bytes] | None]]:
    """Every stored round whose reports the replay does not give byte for byte (but those
    after the replay's last round, the first at or after the last quote: the daemon ran on
    without quotes until its stop)."""
    last = max(replayed)
    return [
        (number, lines, replayed.get(number))
        for number, lines in sorted(stored.items())
        if number <= last and replayed.get(number) != lines
    ]


async def _faults(run: _Run, rng: random.Random) -> None:
    """Single-venue faults in a seeded order on seeded venues, the daemon's own stop among
    them, then a quorum loss of BTC/USD (from live: a fault above may hold it) and its
    recovery."""
    await run.btc(set(_LIVE), limit_s=20.0)
    steps = ["garbage", "disconnect", "stall", "spike", "daemon", "duplicates", "trail"]
    steps += rng.sample(["refused", "frozen", "burst", "muted"], 2)
    rng.shuffle(steps)
    for step in steps:
        sid = rng.choice([*SPOT_USD, "binance", "okx"])
        sim = run.venue(sid).sim

        def subscribed(sim: VenueSim = sim) -> bool:  # a fault on a venue with no one to hit
            return any(client.streams for client in sim.clients)

        await run.daemon.wait_for(subscribed, 10.0, f"{sid} connected and subscribed")
        if step == "garbage":
            assert sim.garbage(rng.randint(3, 12)) > 0
        elif step == "disconnect":
            assert sim.disconnect() > 0
        elif step == "stall":
            sim.silence(rng.uniform(1.2, 2.0))  # past the source's 1 s liveness limit
        elif step == "duplicates":  # the venue's last frames again, out of order
            assert sim.replay_stale(rng.randint(2, 20)) >= 0
        elif step == "burst":
            assert sim.burst(rng.randint(2, 10)) > 0
        elif step == "frozen":  # books held, times the venue's own held with them
            sim.freeze(rng.uniform(1.0, 2.0))
        elif step == "refused":  # handshakes refused: the source polls REST meanwhile
            sim.ws_enabled = False
            assert sim.disconnect() > 0
            await asyncio.sleep(rng.uniform(1.0, 2.0))
            sim.ws_enabled = True
        elif step == "muted":  # one instrument silent on a healthy connection
            key = rng.choice(sorted(run.venue(sid).keys.values()))
            sim.mute(key)
            await run.rounds(rng.randint(3, 10))
            sim.unmute(key)
        elif step == "trail":  # another writer holds the trail: its queue fills, rounds drop
            db = sqlite3.connect(run.daemon.config.parent / "audit.sqlite3", timeout=10.0)
            db.execute("BEGIN IMMEDIATE")
            await asyncio.sleep(rng.uniform(1.0, 2.0))  # under SQLite's 5 s busy timeout
            db.rollback()
            db.close()
        elif step == "daemon":  # the daemon itself stopped: its round loop catches up after
            assert run.daemon.proc is not None
            os.kill(run.daemon.proc.pid, signal.SIGSTOP)
            await asyncio.sleep(rng.uniform(0.3, 0.8))
            os.kill(run.daemon.proc.pid, signal.SIGCONT)
        else:
            spiked = rng.choice(SPOT_USD)
            key = run.venue(spiked).keys[("BTC/USD", "spot")]
            run.venue(spiked).sim.spike(key, rng.choice((1.3, 0.7)), rng.uniform(1.0, 2.0))
        await run.rounds(rng.randint(2, 4))
    await run.btc(set(_LIVE), limit_s=15.0)  # live again after the faults above
    lost = rng.sample(SPOT_USD, 2)  # 2 of 4 BTC/USD sources left, and USDT/USD's leg on 1
    for sid in lost:
        run.venue(sid).sim.rest_enabled = False
        run.venue(sid).sim.silence(None)

    async def quorum_lost() -> bool:
        return "quorum" in (await run.daemon.report("BTC/USD"))["reasons"]

    await run.daemon.wait_for(quorum_lost, 15.0, "BTC/USD paused for its quorum")
    await run.rounds(rng.randint(1, 5))
    for sid in lost:
        run.venue(sid).sim.rest_enabled = True
        run.venue(sid).sim.reset()
    await run.btc(set(_LIVE), limit_s=15.0)
    await run.rounds(3)


def _stored(cfg: Config) -> tuple[dict[int, list[bytes]], bytes]:
    """The trail's reports by round, from the round of its first quote on (the daemon's
    first rounds, before any venue answered, are stored and not replayed), and its tape."""
    reader = AuditReader(cfg.audit.path)
    try:
        stored = _by_round(reader.report_lines(0, _END))
        tape = io.BytesIO()
        reader.tape(tape, 0, _END)
    finally:
        reader.close()
    first = msgspec.json.decode(tape.getvalue().split(b"\n", 2)[1])["ts"]
    return {n: lines for n, lines in stored.items() if _ts(lines[0]) >= first}, tape.getvalue()


def _tape_warning(cfg: Config, capsys: pytest.CaptureFixture[str]) -> str:
    """What `oracled audit --tape` of the whole trail says on stderr but the quote count."""
    capsys.readouterr()
    tape = Path(cfg.audit.path).with_suffix(".jsonl")
    assert main(["audit", "--db", str(cfg.audit.path), "--tape", str(tape)]) == 0
    return capsys.readouterr().err.split("\n", 1)[1]


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_daemon_under_venue_faults_replays_to_every_stored_report(
    tmp_path: Path, seed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under a seeded schedule of venue faults, the replay of the trail's tape and of
    `record`'s tape, each with the daemon's config, give every report the trail stored, byte
    for byte, `round` included; the trail shows the faults took effect (an outlier, a quorum
    pause, the `resuming` hold before BTC/USD was live again) and the mark in every BTC/USD
    report."""
    run = await _started(tmp_path)
    try:
        await _faults(run, random.Random(seed))
    finally:
        await _stop(run)
    cfg = load_config(run.daemon.config)
    stored, trail_tape = _stored(cfg)
    reports = [msgspec.json.decode(line) for lines in stored.values() for line in lines]
    btc = [r for r in reports if r["market"] == "BTC/USD"]
    assert any("quorum" in r["reasons"] for r in btc)
    assert any("resuming" in r["reasons"] for r in btc)
    assert any(s["reason"] == "outlier" for r in btc for s in r["sources"])
    assert any(r["status"] in _LIVE and r["mark"]["price"] is not None for r in btc)
    assert any(s.get("via") == "USDT/USD" and s["used"] for r in btc for s in r["sources"])
    quoted = min(stored)
    assert len(stored) >= 40
    assert run.daemon.events("audit queue full: rounds are dropped from the trail")
    assert _tape_warning(cfg, capsys) == ""  # nothing but quotes moved the reports
    for tape in (trail_tape, run.tape.read_bytes()):
        replayed = _replayed(cfg, tape)
        assert _mismatches(stored, replayed) == []
    # What the streams sent is the replay's too, report for report.
    lines = {line for lines in replayed.values() for line in lines}
    for stream in run.streams:
        sent = [r for r in stream.reports if quoted <= _number(r) <= max(replayed)]
        assert len(sent) >= 80
        assert [r for r in sent if r not in lines] == []


async def test_a_manual_pause_and_resume_replay_to_every_stored_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manual pause and a later resume of BTC/USD through the admin API mid-run: the trail
    holds both actions (actor, market, time) with the round each first applied to; both tapes
    (the trail's `--tape` and the recorder's) carry them as manual commands for those rounds,
    and their replays give every stored report byte for byte, `round` included, the paused
    rounds, the `resuming` hold and every round after it too. `oracled audit --tape` has
    nothing to warn of. (Before tape version 2 a tape held quotes only, and the replay
    differed from the pause on.)"""
    run = await _started(tmp_path)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        await run.btc(set(_LIVE), limit_s=20.0)
        await run.rounds(3)
        status, body = await run.daemon.post("/v1/admin/markets/BTC-USD/pause", headers=auth)
        assert status == 200, body
        assert (await run.btc({"paused"}))["reasons"] == ["manual"]
        await run.rounds(3)
        status, body = await run.daemon.post("/v1/admin/markets/BTC-USD/resume", headers=auth)
        assert status == 200, body
        await run.btc(set(_LIVE))
        await run.rounds(5)
    finally:
        await _stop(run)
    cfg = load_config(run.daemon.config)
    stored, trail_tape = _stored(cfg)
    reader = AuditReader(cfg.audit.path)
    try:
        actions = reader.actions("BTC/USD", 0, _END)
    finally:
        reader.close()
    assert [a.action for a in actions] == ["pause", "resume"]
    btc = {_number(lines[1]): msgspec.json.decode(lines[1]) for lines in stored.values()}
    for action in actions:  # the round each first applied to is the first that shows it
        assert action.round is not None and action.round_ts is not None
        assert btc[action.round]["ts"] == action.round_ts and action.ts <= action.round_ts
        before, then = btc[action.round - 1]["reasons"], btc[action.round]["reasons"]
        if action.action == "pause":
            assert "manual" not in before and then == ["manual"]
        else:
            assert before == ["manual"] and "manual" not in then
    assert any(r["reasons"] == ["resuming"] for r in btc.values())
    assert _tape_warning(cfg, capsys) == ""  # the tape holds what moved the reports
    commands = [
        (a.round_ts, "pause" if a.action == "pause" else "resume", a.round) for a in actions
    ]
    for tape in (trail_tape, run.tape.read_bytes()):
        lines = [msgspec.json.decode(line) for line in tape.splitlines()[1:]]
        on_tape = [(x["ts"], x["manual"], x["round"]) for x in lines if "manual" in x]
        assert on_tape == commands
        replayed = _replayed(cfg, tape)
        assert _mismatches(stored, replayed) == []
        after = [n for n in stored if n > (actions[-1].round or 0) and n <= max(replayed)]
        assert len(after) >= 3  # rounds after the resume are compared too


async def test_a_pricing_reload_is_in_the_trail_and_a_replay_matches_up_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two reloads mid-run: one of a venue's poll interval (the source restarts, no pricing
    setting moves), then one of how BTC/USD is priced (its price exponent). The trail holds
    both (`configs`: start, reload, reload) and `oracled audit --tape` warns from the first.
    A tape holds no reload (docs/contracts.md), so a replay with the config the daemon
    started with gives every stored report byte for byte up to the pricing reload (the first
    reload moved nothing) and differs after it; `oracled replay` of `record`'s tape with the
    reloaded file says that the tape was recorded with another pricing config."""
    run = await _started(tmp_path)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    started = load_config(run.daemon.config)
    try:
        await run.btc(set(_LIVE), limit_s=20.0)
        await run.rounds(3)
        dump = tomllib.loads(run.daemon.config.read_text())
        dump["sources"]["kraken"]["rest_poll_interval_s"] = 0.7  # no price moves: kraken restarts
        run.daemon.config.write_text(tomli_w.dumps(dump))
        status, body = await run.daemon.post("/v1/admin/reload", headers=auth)
        assert status == 200 and body["sources_restarted"] == ["kraken"], body
        await run.rounds(5)
        dump["markets"][1]["price_exponent"] = -1
        run.daemon.config.write_text(tomli_w.dumps(dump))
        status, body = await run.daemon.post("/v1/admin/reload", headers=auth)
        assert status == 200 and body["markets_changed"] == ["BTC/USD"], body
        await run.rounds(5)
    finally:
        await _stop(run)
    stored, trail_tape = _stored(started)
    reader = AuditReader(started.audit.path)
    try:
        loads = reader.configs(0, _END)
    finally:
        reader.close()
    assert [c.event for c in loads] == ["start", "reload", "reload"]
    warning = _tape_warning(started, capsys)
    assert f"from {iso_time(loads[1].ts)} on: config reload by api" in warning, warning
    for tape in (trail_tape, run.tape.read_bytes()):
        bad = _mismatches(stored, _replayed(started, tape))
        assert bad and all(_ts(lines[0]) > loads[2].ts for _, lines, _ in bad)
    capsys.readouterr()
    args = ["replay", "--config", str(run.daemon.config), str(run.tape), "--out", "/dev/null"]
    assert main(args) == 0
    assert "warning: recorded with another pricing config" in capsys.readouterr().err


async def test_a_daemon_killed_and_started_again_replays_from_its_restart_as_the_warning_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recording daemon killed (SIGKILL) mid-run and started again on the same trail and,
    with `record --append`, the same tape, 2.5 s later: its rounds are numbered from 1 again,
    gates afresh, which no replay of the whole tape gives. `oracled audit --tape` of the whole
    trail warns from the restart, and the export from it (`--from` the second start) replays
    to every report the second run stored, byte for byte, `round` included; the first run's
    reports replay from the whole trail's tape. `oracled replay --max-gap 2` of the appended
    tape stops at the restart with the first run's reports (but the round the kill cut short)
    and names the split by lines (docs/runbook.md), whose part replays to the second run's
    reports, numbered from 1 at its first quote: lower by the rounds the second run had
    published before a venue answered, and otherwise byte for byte."""
    run = await _started(tmp_path)
    first_run = run.daemon
    try:
        await run.btc(set(_LIVE), limit_s=20.0)
        await run.rounds(4)
        assert first_run.proc is not None
        first_run.proc.kill()
        await asyncio.to_thread(first_run.proc.wait)
        await run.unsubscribed()
        await asyncio.sleep(2.5)  # a gap in the tape past the replay's --max-gap below
        again = Daemon(first_run.config.read_text(), tmp_path)
        again.argv[1] = "record"
        run.daemon = again
        await again.start("--out", str(run.tape), "--append")
        await run.btc(set(_LIVE), limit_s=20.0)
        await run.rounds(4)
    finally:
        await first_run.close()
        run.streams = []
        await _stop(run)
    cfg = load_config(run.daemon.config)
    reader = AuditReader(cfg.audit.path)
    try:
        restarted = reader.configs(0, _END)[1].ts
        second = _by_round(reader.report_lines(restarted, _END))  # numbered from 1 again
    finally:
        reader.close()
    warning = _tape_warning(cfg, capsys)
    assert f"from {iso_time(restarted)} on: config start by start" in warning, warning
    part = tmp_path / "part.jsonl"
    args = ["audit", "--db", str(cfg.audit.path), "--tape", str(part)]
    assert main([*args, "--from", iso_time(restarted)]) == 0
    assert "warning" not in capsys.readouterr().err
    first_quote = msgspec.json.decode(part.read_bytes().split(b"\n", 2)[1])["ts"]
    assert min(second) <= 5  # from 1 again (a round or two may be dropped at a busy start)
    second = {n: lines for n, lines in second.items() if _ts(lines[0]) >= first_quote}
    assert len(second) >= 5
    assert _mismatches(second, _replayed(cfg, part.read_bytes())) == []
    stored, whole = _stored(cfg)  # the first run's rounds, and the second's under their numbers
    first = {n: [x for x in lines if _ts(x) < restarted] for n, lines in stored.items()}
    first = {n: lines for n, lines in first.items() if lines}
    assert len(first) >= 5
    assert _mismatches(first, _replayed(cfg, whole)) == []

    out = tmp_path / "until-the-gap.jsonl"
    replay_args = ["replay", "--config", str(run.daemon.config), str(run.tape)]
    assert main([*replay_args, "--out", str(out), "--max-gap", "2"]) == 4
    err = capsys.readouterr().err
    killed = _by_round(out.read_bytes().splitlines(keepends=True))
    del killed[max(killed)]  # cut short: the recorder hands its lines over every 4 rounds
    assert len(killed) >= 3 and _mismatches(first, killed) == []
    assert "oracled audit" not in err
    split = re.search(rf"\(echo (.+); tail -n \+(\d+) {run.tape}\) \| oracled replay", err)
    assert split is not None, err
    (echoed,) = shlex.split(split[1])
    lines = run.tape.read_bytes().splitlines(keepends=True)
    after = _replayed(cfg, echoed.encode() + b"\n" + b"".join(lines[int(split[2]) - 1 :]))
    by_ts = {_ts(lines[0]): lines for lines in after.values()}
    shift = min(second) - 1  # the rounds the second run published before its first quote
    compared = 0
    for number, lines in second.items():
        if _ts(lines[0]) <= max(by_ts):
            renumbered = [
                x.replace(b'"round":%d,' % number, b'"round":%d,' % (number - shift)) for x in lines
            ]
            assert by_ts.get(_ts(lines[0])) == renumbered, number
            compared += 1
    assert compared >= 5
