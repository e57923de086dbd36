"""`oracled record` and the file it writes: an existing tape is never emptied, one tape has one
writer, `--append` continues a tape without losing a byte, and a FIFO nobody reads holds no stop."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from daemon import Daemon, free_port, sim_config
from venue_sims import BinanceVenues

from oracled.config import load_config
from oracled.model import Quote
from oracled.publish.signer import SigningKey
from oracled.sim import BinanceSim
from oracled.tape import (
    TapeHeader,
    TapeLineError,
    header_line,
    pricing_digest,
    quote_to_line,
    read_tape,
)

PRICES = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "USDTUSD": 1.0}
pytestmark = pytest.mark.integration


@pytest.fixture
async def venues(binance_venues: BinanceVenues) -> list[BinanceSim]:
    return await binance_venues(PRICES, 3, market_seed=42)


def _recorder(venues: list[BinanceSim], tmp_path: Path) -> Daemon:
    d = Daemon(sim_config([(s.ws_url, s.rest_url) for s in venues]), tmp_path)
    d.argv[1] = "record"
    return d


def _record(
    config: Path, *args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A second `oracled record` in the foreground, on a free port."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "oracled.cli", "record", "--config", str(config)),
            *("--listen", f"127.0.0.1:{free_port()}", *args),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=env,
    )


def _read(data: bytes) -> tuple[list[TapeHeader], list[Quote], list[TapeLineError]]:
    headers: list[TapeHeader] = []
    errors: list[TapeLineError] = []
    quotes = list(read_tape(io.BytesIO(data), errors, on_header=headers.append))
    return headers, quotes, errors


async def _rounds(d: Daemon, n: int) -> None:
    async def past() -> bool:
        status, body = await d.get("/v1/prices/BTC-USD")
        return status == 200 and int(body["round"]) >= n

    await d.wait_for(past, 20, f"round {n}")


def test_an_existing_tape_is_refused_and_left_whole(tmp_path: Path) -> None:
    """`record --out t.jsonl` opened the tape for writing before it bound its port: run again
    (a restart after a crash, a mistyped command) it emptied the tape, even when it then failed
    to start. It now refuses a tape that holds anything (exit 2, a line that says what to do)
    and leaves it byte for byte; an empty file is written as before."""
    config = tmp_path / "oracled.toml"
    config.write_text(sim_config([("ws://127.0.0.1:9/ws", "http://127.0.0.1:9")] * 3))
    tape = tmp_path / "t.jsonl"
    kept = header_line() + quote_to_line(Quote("v1", "BTC/USDT", 1_700_000_000_000, 60_000.5))
    tape.write_bytes(kept)
    proc = _record(config, "--out", str(tape))
    assert proc.returncode == 2, proc.stderr
    assert "already holds a tape" in proc.stderr and "--append" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert tape.read_bytes() == kept


def test_append_to_a_tape_recorded_with_a_chains_rpc_urls_env_set_names_the_variable(
    tmp_path: Path,
) -> None:
    """A chain whose `rpc_urls_env` is unset has its on-chain sources taken out of the markets
    at load: a tape the shipped config recorded with $ORACLED_ETH_RPC_URLS set was refused by
    `--append` where it is unset as "recorded with another pricing config", without a word of
    the environment. The refusal names the variable now, as `oracled replay` does; a digest
    that setting it does not explain says the environment may be the cause."""
    shipped = Path(__file__).parents[2] / "config" / "default.toml"
    lit = {"ORACLED_ETH_RPC_URLS": "http://127.0.0.1:8545"}
    tape, other = tmp_path / "t.jsonl", tmp_path / "other.jsonl"
    tape.write_bytes(header_line(pricing_digest(load_config(shipped, env=lit))))
    other.write_bytes(header_line("ab" * 32))
    env = {k: v for k, v in os.environ.items() if k != "ORACLED_ETH_RPC_URLS"}
    proc = _record(shipped, "--out", str(tape), "--append", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "another pricing config" in proc.stderr
    assert (
        "; it was recorded with $ORACLED_ETH_RPC_URLS (chains.ethereum.rpc_urls_env) set, unset"
        " here, so the markets here lack the on-chain sources of that chain: set it to continue"
        " the tape"
    ) in proc.stderr
    proc = _record(shipped, "--out", str(other), "--append", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "ORACLED_ETH_RPC_URLS" not in proc.stderr
    assert "or an environment variable it names (a chain's rpc_urls_env)" in proc.stderr
    assert tape.read_bytes() == header_line(pricing_digest(load_config(shipped, env=lit)))


def test_a_tape_path_that_cannot_be_written_is_refused_before_the_start(tmp_path: Path) -> None:
    """`--out` naming a directory started the daemon, which priced without a tape and said so
    only at its first write (exit 1 at the stop); one in a directory that does not exist ended
    in a `fatal` line naming the lock file. Both are refused at once, naming the tape (exit 2).
    So is a path with no name (`/`, `.`), which ended in a traceback: no lock file can be named
    beside it."""
    config = tmp_path / "oracled.toml"
    config.write_text(sim_config([("ws://127.0.0.1:9/ws", "http://127.0.0.1:9")] * 3))
    for out, why in (
        (tmp_path, "is a directory"),
        (Path("/"), "is a directory: --out names the tape file"),
        (tmp_path / "no" / "t.jsonl", "cannot write"),
    ):
        proc = _record(config, "--out", str(out))
        assert proc.returncode == 2, proc.stderr
        assert f"oracled record: {out}" in proc.stderr and why in proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_tape_naming_a_state_file_of_the_daemon_is_refused_naming_the_clash(
    tmp_path: Path,
) -> None:
    """`--out` naming the manual pauses file was refused as written by another recorder (the
    daemon held its lock); naming the audit trail, the tape and the trail wrote one file;
    naming the signing lease (not there yet), the tape's header went into it before the lease
    was refused as held by another process. Each is refused before any state file is opened
    (exit 2), the message naming the setting, and the files are left as they were."""
    key = tmp_path / "signing.key"
    key.write_text(SigningKey.from_hex("0x" + "5a" * 32).hex() + "\n")
    key.chmod(0o600)
    pauses, audit, lease = (tmp_path / n for n in ("pauses.json", "audit.db", "lease.json"))
    pauses.write_text(
        '{"format":"oracled-manual-pauses","version":1,'
        '"paused":{"BTC/USD":{"actor":"ops","ts":1700000000000}}}\n'
    )
    kept = pauses.read_bytes()
    (tmp_path / "tape-link").symlink_to(pauses)
    text = sim_config([("ws://127.0.0.1:9/ws", "http://127.0.0.1:9")] * 3).replace(
        "[oracle]\n", f'[oracle]\nmanual_pauses_file = "{pauses}"\n', 1
    )
    config = tmp_path / "oracled.toml"
    config.write_text(
        f'{text}\n[audit]\nenabled = true\npath = "{audit}"\n'
        f'[signing]\nenabled = true\ndeployment = "test"\nkey_file = "{key}"\n'
        f'lease_file = "{lease}"\n'
    )
    in_pauses = f"is the manual pauses file (oracle.manual_pauses_file), {pauses}"
    wal = tmp_path / "audit.db-wal"
    for out, told in (
        (pauses, in_pauses),
        (tmp_path / "tape-link", in_pauses),
        (audit, f"is the audit trail (audit.path), {audit}"),
        (lease, f"is the signing lease (signing.lease_file), {lease}"),
        (wal, f"is {wal}, kept beside the audit trail (audit.path), {audit}"),
    ):
        proc = _record(config, "--out", str(out))
        assert proc.returncode == 2, proc.stderr
        assert f"oracled record: --out {out} {told}: record to another --out" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert pauses.read_bytes() == kept
        assert not audit.exists() and not lease.exists()
        assert not wal.exists()


async def test_a_second_recorder_cannot_write_the_tape_the_first_is_writing(
    venues: list[BinanceSim], tmp_path: Path
) -> None:
    """Two recorders on one path both wrote into it, interleaving their lines. The first holds
    a lock beside the tape (`<tape>.lock`, as the audit trail does); the second, even with
    --append, is refused with exit 2, and the first one's tape stays clean."""
    d = _recorder(venues, tmp_path)
    tape = tmp_path / "t.jsonl"
    try:
        await d.start("--out", str(tape))
        await _rounds(d, 10)
        proc = await asyncio.to_thread(_record, d.config, "--out", str(tape), "--append")
        assert proc.returncode == 2, proc.stderr
        assert "written by another `oracled record`" in proc.stderr
        await _rounds(d, 20)
        assert await asyncio.to_thread(d.terminate) == 0
    finally:
        await d.close()
    headers, quotes, errors = _read(tape.read_bytes())
    assert len(headers) == 1 and errors == [] and len(quotes) > 50


TAPE_RELOADED = (
    "tape: a reload changed the pricing config; a replay of the tape may differ from this round on"
)


async def test_a_reload_that_changes_the_pricing_is_told_in_the_recorders_log(
    venues: list[BinanceSim], tmp_path: Path
) -> None:
    """No tape line carries a reload, and the header names the config the recording began
    with: a SIGHUP that changed a market's thresholds under `oracled record` left no trace in
    the tape or the log, and a replay of it with its own config differed from the live reports
    from the next round on, with nothing to say why. Such a reload is logged with the round
    from which the replay may differ and the new config's digest; one that changes no pricing
    (an API setting) is not."""
    d = _recorder(venues, tmp_path)
    tape = tmp_path / "t.jsonl"
    text = d.config.read_text()

    async def reloaded(n: int) -> None:
        await d.wait_for(lambda: len(d.events("config reloaded")) >= n, 20, f"reload {n}")

    try:
        await d.start("--out", str(tape))
        await _rounds(d, 5)
        assert d.proc is not None
        d.config.write_text(
            text.replace(
                '"ORACLED_TEST_ADMIN_TOKEN"',
                '"ORACLED_TEST_ADMIN_TOKEN"\ncors_origins = ["https://example.org"]',
            )
        )
        d.proc.send_signal(signal.SIGHUP)
        await reloaded(1)
        d.config.write_text(text.replace("max_deviation = 0.01", "max_deviation = 0.02"))
        d.proc.send_signal(signal.SIGHUP)
        await reloaded(2)
        await _rounds(d, 15)
        assert await asyncio.to_thread(d.terminate) == 0
    finally:
        await d.close()
    first, second = d.events("config reloaded")
    assert first["settings_changed"] == ["api.cors_origins"]
    assert "markets.BTC/USD.max_deviation" in second["settings_changed"]
    (told,) = d.events(TAPE_RELOADED)
    assert told["config_sha256"] == pricing_digest(load_config(d.config))
    assert told["round"] > 5


@pytest.mark.parametrize("lost", ["lock file removed", "directory made again"])
async def test_a_recorder_whose_lock_file_is_gone_writes_no_more(
    venues: list[BinanceSim], tmp_path: Path, lost: str
) -> None:
    """The tape's lock file removed under a running `oracled record` (a clean-up of `.lock`
    files), or its directory removed and made again, let a second recorder lock a new one and
    write the same tape: the first went on writing at its own offset, over the second's lines.
    The first now finds its lock gone at its next flush and stops recording for good (one error
    naming the lock, exit 1) while it goes on pricing; the second's tape stays whole."""
    state = tmp_path / "state"
    state.mkdir()
    tape = state / "t.jsonl"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _recorder(venues, tmp_path / "a"), _recorder(venues, tmp_path / "b")
    try:
        await first.start("--out", str(tape))
        await _rounds(first, 10)
        if lost == "lock file removed":
            tape.with_name(tape.name + ".lock").unlink()
        else:
            shutil.rmtree(state)
            state.mkdir()
        await second.start("--out", str(tape), "--append")
        await _rounds(second, 20)
        _, body = await first.get("/v1/prices/BTC-USD")
        await _rounds(first, int(body["round"]) + 20)
        assert await asyncio.to_thread(second.terminate) == 0
        assert await asyncio.to_thread(first.terminate) == 1
    finally:
        await first.close()
        await second.close()
    (event,) = first.events("tape not written: recording stopped; prices go on")
    assert f"its lock file {tape}.lock is gone" in event["error"]
    assert event["level"] == "error"
    headers, quotes, errors = _read(tape.read_bytes())
    assert len(headers) == 1 and errors == [] and len(quotes) > 50


async def test_append_continues_the_tape_and_ends_a_torn_last_line(
    venues: list[BinanceSim], tmp_path: Path
) -> None:
    """A recorder killed mid-write leaves a last line without its newline; `--append` ends that
    line (its bytes stay: a replay reports it as unreadable) and adds the new quotes after the
    old ones under the one header; a tape recorded with another pricing config is refused."""
    d = _recorder(venues, tmp_path)
    digest = pricing_digest(load_config(d.config))
    old = [Quote("v1", "BTC/USDT", 1_700_000_000_000 + k, 60_000.5) for k in range(3)]
    before = header_line(digest) + b"".join(quote_to_line(q) for q in old)
    tape = tmp_path / "t.jsonl"
    tape.write_bytes(before + b'{"ts":17000000')  # torn by a crash: line 5
    other = tmp_path / "other.jsonl"
    other.write_bytes(header_line("0" * 64) + quote_to_line(old[0]))
    proc = await asyncio.to_thread(_record, d.config, "--out", str(other), "--append")
    assert proc.returncode == 2, proc.stderr
    assert "another pricing config" in proc.stderr
    bare = tmp_path / "bare.jsonl"  # no digest (an older build, `audit --tape`): claims none
    bare.write_bytes(header_line() + quote_to_line(old[0]))
    size = bare.stat().st_size
    (tmp_path / "bare").mkdir()
    b = _recorder(venues, tmp_path / "bare")
    try:  # it records: quotes are appended, until it is stopped
        await b.start("--out", str(bare), "--append")
        await b.wait_for(lambda: bare.stat().st_size > size, 20, "quotes appended to a bare tape")
        assert await asyncio.to_thread(b.terminate) == 0
    finally:
        await b.close()
    try:
        await d.start("--out", str(tape), "--append")
        await _rounds(d, 10)
        assert await asyncio.to_thread(d.terminate) == 0
    finally:
        await d.close()
    (torn,) = d.events(
        "tape: its last line was torn (a stop mid-write): ended it, and appending after it;"
        " a replay reports that line as unreadable"
    )
    assert torn["line"] == 5
    data = tape.read_bytes()
    assert data.startswith(before + b'{"ts":17000000\n')
    headers, quotes, errors = _read(data)
    assert [h.config_sha256 for h in headers] == [digest]
    assert [e.line for e in errors] == [5]
    assert quotes[:3] == old and len(quotes) > 50


@pytest.mark.parametrize("quotes", [0, 2], ids=["header_only", "whole_quote"])
async def test_append_after_a_last_line_lacking_only_its_newline_says_the_replay_reads_it(
    venues: list[BinanceSim], tmp_path: Path, quotes: int
) -> None:
    """A stop between a line's bytes and its newline leaves a whole last line (or a tape of
    just its header) that a replay reads: `--append` ends it as it ends a torn one, and its
    warning said the replay reports the line as unreadable. It now says the line is whole."""
    d = _recorder(venues, tmp_path)
    digest = pricing_digest(load_config(d.config))
    old = [Quote("v1", "BTC/USDT", 1_700_000_000_000 + k, 60_000.5) for k in range(quotes)]
    before = header_line(digest) + b"".join(quote_to_line(q) for q in old)
    tape = tmp_path / "t.jsonl"
    tape.write_bytes(before[:-1])  # all but the newline
    try:
        await d.start("--out", str(tape), "--append")
        await _rounds(d, 5)
        assert await asyncio.to_thread(d.terminate) == 0
    finally:
        await d.close()
    message = (
        "tape: its header lacked its newline (a stop mid-write): ended it, and appending after"
        " it; it is whole"
        if quotes == 0
        else "tape: its last line lacked its newline (a stop mid-write): ended it, and appending"
        " after it; the line is whole, and a replay reads it"
    )
    (event,) = d.events(message)
    assert event["line"] == quotes + 1
    data = tape.read_bytes()
    assert data.startswith(before)
    headers, read, errors = _read(data)
    assert [h.config_sha256 for h in headers] == [digest]
    assert errors == [] and read[:quotes] == old and len(read) > quotes


async def test_a_fifo_nobody_reads_does_not_hold_the_start_or_the_stop(
    venues: list[BinanceSim], tmp_path: Path
) -> None:
    """`record --out FIFO` with no reader blocked in its open before the daemon started, where
    SIGTERM was only noted: the process ran on until a reader came or SIGKILL. The FIFO is now
    opened by the tape's writer thread: the daemon starts and prices, and a stop ends it with
    exit 1 and the reason (nothing was recorded)."""
    fifo = tmp_path / "tape.fifo"
    os.mkfifo(fifo)
    d = _recorder(venues, tmp_path)
    try:
        await d.start("--out", str(fifo))  # the API answers: the start did not wait
        await _rounds(d, 5)
        assert await asyncio.to_thread(d.terminate) == 1
    finally:
        await d.close()
    (event,) = d.events("tape not written: recording stopped; prices go on")
    assert "nobody opened" in event["error"]
