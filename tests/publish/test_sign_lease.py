"""The signing lease (oracled/publish/sign_lease.py) beside a real signer and a real core: a
round is signed only inside the lease on disk, the lease is extended ahead of the rounds in its
own thread, a stop writes it back down, and each key keeps its own lease in the file."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml
from publish_rig import INTERVAL, T0, Rounds, make_config, one_venue_config
from structlog.testing import capture_logs

from oracled.config import LEASE_FILE_REQUIRED, SigningConfig
from oracled.errors import ConfigError
from oracled.publish.sign_lease import FORMAT, SignLease, check_sign_lease, open_sign_lease
from oracled.publish.signer import RoundSigner, SignedRound, SignerWorker, SigningKey
from oracled.service import Service

KEY = SigningKey.from_hex("0x" + "55" * 32)
OTHER = SigningKey.from_hex("0x" + "66" * 32)
WINDOW = 10_000


def _on_disk(path: Path) -> dict[str, int]:
    data = json.loads(path.read_text())
    assert (data["format"], data["version"]) == (FORMAT, 1)
    return dict(data["leases"])


async def _settled(lease: SignLease) -> None:
    """Until the lease thread has written what it was asked to (a round later, in a daemon)."""
    async with asyncio.timeout(10):
        while lease._writing:  # noqa: ASYNC110 - a flag of the lease thread
            await asyncio.sleep(0.001)


class Signing:
    """A core's rounds handed to a SignerWorker for KEY (or `key`) with a lease at `path`."""

    def __init__(self, path: Path, key: SigningKey = KEY, floor: int | None = None) -> None:
        self.rounds = Rounds(make_config())
        self.lease = SignLease.open(path, key.address, WINDOW, self.rounds.now)
        self.signer = RoundSigner(key, "test")
        self.signed: list[SignedRound] = []
        self.worker = SignerWorker(self.signer, self.signed.append, floor, self.lease)

    async def step(self, settle: bool = True) -> None:
        """One round, handed over; then until it is signed and any lease write is done."""
        self.worker.submit(self.rounds.step())
        assert await self.worker.drain(10)
        if settle:
            await _settled(self.lease)


async def test_rounds_are_signed_inside_the_lease_with_one_write_per_half_window(
    tmp_path: Path,
) -> None:
    """A first start (no file): the lease is written a window ahead before any round; 100 rounds
    of 250 ms (25 s) are all signed, the lease always ahead of them, extended each time less than
    half a window is left (at 5.25, 10.5, 15.75 and 21 s: 5 writes in all), never counted as
    `lease`."""
    path = tmp_path / "lease.json"
    with capture_logs() as logs:
        run = Signing(path)
    assert [e["event"] for e in logs] == ["no signing lease file yet: a first start"]
    assert run.lease.floor is None and run.worker.floor is None
    assert _on_disk(path) == {KEY.address: T0 + WINDOW}
    for _ in range(100):
        await run.step()
        assert run.lease.granted is not None and run.lease.granted >= run.rounds.now
    assert len(run.signed) == 100 and run.signer.stats.errors["lease"] == 0
    assert run.lease.stats.writes == 5 and run.lease.stats.failures == 0
    assert _on_disk(path) == {KEY.address: run.lease.granted}
    run.worker.close()


async def test_a_round_past_the_lease_is_left_unsigned_and_the_next_one_signed(
    tmp_path: Path,
) -> None:
    """The clock jumps three windows ahead: that round is past the lease on disk, so it is left
    unsigned and counted (`lease`, logged once) and `submit` returns at once, the extension
    queued for the lease thread; once it is on disk the next round is signed (logged once)."""
    run = Signing(tmp_path / "lease.json")
    await run.step()
    run.rounds.now += 3 * WINDOW
    with capture_logs() as logs:
        run.worker.submit(run.rounds.step())  # returns before the lease is written
        assert run.signer.stats.errors["lease"] == 1
        assert await run.worker.drain(10)
        await _settled(run.lease)
        assert run.lease.granted == run.rounds.now + WINDOW
        await run.step()
    assert [s.ts for s in run.signed] == [T0 + INTERVAL, run.rounds.now]
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("warning", "round not signed: the signing lease on disk does not reach its time"),
        ("info", "signing resumed: the lease covers the rounds again"),
    ]
    assert logs[0]["lease"] == T0 + WINDOW and logs[0]["ts"] == run.rounds.now - INTERVAL
    run.worker.close()


async def test_a_stop_writes_the_lease_down_so_a_restart_signs_its_next_round(
    tmp_path: Path,
) -> None:
    """A stop writes the lease down to the last round handed to the signer: the next start
    reads that as its floor and signs its very first round (the next round time), where a lease
    left a window ahead would have held it back for 10 s. A start with the clock behind is
    held at the floor: its rounds up to it are counted `floor` and not signed."""
    path = tmp_path / "lease.json"
    run = Signing(path)
    for _ in range(5):
        await run.step()
    run.worker.close()
    last = run.signed[-1].ts
    assert _on_disk(path) == {KEY.address: last}

    again = Signing(path)
    assert again.worker.floor == again.lease.floor == last
    again.rounds.now = last
    await again.step()
    assert [s.ts for s in again.signed] == [last + INTERVAL]
    again.worker.close()

    behind = Signing(path)
    behind.rounds.now = last - 4 * INTERVAL
    for _ in range(6):
        await behind.step()
    assert behind.signer.stats.errors["floor"] == 5
    assert [s.ts for s in behind.signed] == [last + 2 * INTERVAL]
    behind.worker.close()


async def test_a_lease_file_that_is_a_symbolic_link_is_written_where_it_points(
    tmp_path: Path,
) -> None:
    """`signing.lease_file` a symbolic link to a file on a volume that outlives the process:
    it was read through the link, but each rewrite renamed a new file over the link itself, so
    the file it pointed at kept the lease the daemon started with. A start whose link was made
    again (a new container over the same volume) read that stale lease, a floor below the round
    times the key had signed since. The rewrites go where the link points, the lock is taken
    beside the file written; the link stays."""
    volume = tmp_path / "volume"
    volume.mkdir()
    path = tmp_path / "lease.json"
    path.symlink_to(volume / "lease.json")
    run = Signing(path)
    for _ in range(5):
        await run.step()
    run.worker.close()
    last = run.signed[-1].ts
    assert path.is_symlink()
    assert _on_disk(volume / "lease.json") == {KEY.address: last}
    # no temporary file left; the lock beside the file written, none beside the link
    assert sorted(p.name for p in volume.iterdir()) == ["lease.json", "lease.json.lock"]
    assert not (tmp_path / "lease.json.lock").exists()


async def test_each_key_keeps_its_own_lease_in_the_file(tmp_path: Path) -> None:
    """A rotation to another key starts that key's own lease (no floor from the first key's)
    and keeps the first key's in the file, so a rotation back finds its floor again."""
    path = tmp_path / "lease.json"
    first = Signing(path)
    await first.step()
    first.worker.close()
    rotated = Signing(path, OTHER)
    assert rotated.lease.floor is None and rotated.worker.floor is None
    await rotated.step()
    rotated.worker.close()
    assert _on_disk(path) == {KEY.address: T0 + INTERVAL, OTHER.address: T0 + INTERVAL}
    back = Signing(path)
    assert back.lease.floor == T0 + INTERVAL
    back.worker.close()


async def test_rounds_further_apart_than_the_window_are_signed(tmp_path: Path) -> None:
    """Rounds every 15 s with the default 10 s window: the lease is raised to two intervals
    (logged), so the lease written at one round reaches the next and every round is signed.
    With the window as set, a lease extended at round `t` reached `t + 10 s`, short of the next
    round at `t + 15 s`: not one round was signed, each counted `lease` (found in review)."""
    path = tmp_path / "lease.json"
    interval = 15_000
    rounds = Rounds(make_config())
    with capture_logs() as logs:
        lease = open_sign_lease(str(path), KEY.address, WINDOW, rounds.now, interval)
    assert lease is not None and lease.window_ms == 2 * interval
    assert [e for e in logs if e["event"].startswith("signing lease window")] == [
        {
            "event": "signing lease window raised to two round intervals",
            "log_level": "warning",
            "component": "signer",
            "lease_window_ms": WINDOW,
            "used_ms": 2 * interval,
        }
    ]
    signer = RoundSigner(KEY, "test")
    signed: list[SignedRound] = []
    worker = SignerWorker(signer, signed.append, None, lease)
    for _ in range(6):
        rounds.now += interval - INTERVAL  # step() adds INTERVAL
        worker.submit(rounds.step())
        assert await worker.drain(10)
        await _settled(lease)
    assert len(signed) == 6 and signer.stats.errors["lease"] == 0
    worker.close()


async def test_the_service_gives_the_lease_its_round_interval(tmp_path: Path) -> None:
    """The daemon takes the lease with its round interval (at the end of its start), so a window
    shorter than two of them is raised there too (rounds every 800 ms, a 1 s window: 1.6 s)."""
    key_file = tmp_path / "signing.key"
    key_file.write_text(KEY.hex() + "\n")
    key_file.chmod(0o600)
    cfg = one_venue_config(
        "ws://127.0.0.1:9/ws",
        "http://127.0.0.1:9",
        tmp_path / "audit.sqlite3",
        oracle={"round_interval_ms": 800, "resume_rounds": 1},
        signing={
            "enabled": True,
            "key_file": str(key_file),
            "deployment": "test",
            "lease_file": str(tmp_path / "lease.json"),
            "lease_window_ms": 1_000,
        },
    )
    service = Service(cfg)
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(10):
            await service.started.wait()
        worker = service._signer_worker
        assert worker is not None and worker._lease is not None
        assert worker._lease.window_ms == 1_600
    finally:
        service.stop()
        await task


def test_a_lease_entry_spelled_otherwise_is_still_the_keys_floor(tmp_path: Path) -> None:
    """An entry for this key written by hand in lower case, or without `0x`, is its lease: the
    highest spelling is the floor and the first write replaces them all with the EIP-55 entry
    (others' entries kept). Before, only the exact EIP-55 spelling counted: such a file gave no
    floor, and a start with the clock behind signed round times again (found in review)."""
    path = tmp_path / "lease.json"
    leases = {
        KEY.address.lower(): T0 + 5_000,
        KEY.address.removeprefix("0x"): T0 + 7_000,
        OTHER.address: T0 + 1,
    }
    path.write_text(json.dumps({"format": FORMAT, "version": 1, "leases": leases}))
    lease = SignLease.open(path, KEY.address, WINDOW, T0)
    assert lease.floor == T0 + 7_000
    assert _on_disk(path) == {OTHER.address: T0 + 1, KEY.address: T0 + WINDOW}
    worker = SignerWorker(RoundSigner(KEY, "test"), lambda _: None, None, lease)
    assert worker.floor == T0 + 7_000
    worker.close()


def test_the_floor_is_the_newer_of_the_audit_trails_and_the_leases(tmp_path: Path) -> None:
    """The signer's floor at start is the higher of the two: the audit trail's newest signed
    round time and the lease found in the file."""
    path = tmp_path / "lease.json"
    path.write_text(json.dumps({"format": FORMAT, "version": 1, "leases": {KEY.address: T0}}))
    for audit, expected in ((None, T0), (T0 - 1, T0), (T0 + 1, T0 + 1)):
        lease = SignLease.open(path, KEY.address, WINDOW, T0)
        worker = SignerWorker(RoundSigner(KEY, "test"), lambda _: None, audit, lease)
        assert worker.floor == expected
        worker.close()


def test_a_lease_written_twice_for_one_key_is_refused_not_read_as_the_last(
    tmp_path: Path,
) -> None:
    """A file merged or edited by hand holds this key's lease twice, the higher first: the
    decoder kept the last, so the floor was the lower one and a start with its clock behind
    signed round times the first entry says were signed (a key signing one round time twice
    is equivocation). `leases` written twice did the same. Either is now a config error naming
    the key, as any file that is no lease: restore it before the start."""
    path = tmp_path / "lease.json"
    entry = f'"{KEY.address}"'
    for leases in (
        f"{{{entry}: {T0 + 7_000}, {entry}: {T0}}}",
        f'{{{entry}: {T0 + 7_000}}}, "leases": {{{entry}: {T0}}}',
    ):
        path.write_text(f'{{"format": "{FORMAT}", "version": 1, "leases": {leases}}}')
        with pytest.raises(ConfigError) as caught:
            SignLease.open(path, KEY.address, WINDOW, T0)
        (text,) = caught.value.problems
        assert text.startswith(f"signing.lease_file: {path} (signer {KEY.address}): "), text
        assert text.endswith("appears twice)"), text
        assert _on_disk(path) == {KEY.address: T0}  # not rewritten (the decoder's view)
        path.write_text(f'{{"format": "{FORMAT}", "version": 1, "leases": {{{entry}: {T0}}}}}')
        SignLease.open(path, KEY.address, WINDOW, T0).close(None)  # its lock was let go


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("[]", "not a signing lease"),
        ('{"format": "oracled-manual-pauses", "version": 1, "leases": {}}', "version 1, not"),
        ('{"format": "oracled-signing-lease", "version": 2, "leases": {}}', "version 2, not"),
        ('{"format": "oracled-signing-lease", "version": 1, "leases": {"me": 5}}', "entry 'me'"),
        (  # past 2**62, no round time: as the floor, the key never signed again
            '{"format": "oracled-signing-lease", "version": 1, "leases": '
            f'{{"{KEY.address}": 18446744073709551615}}}}',
            "18446744073709551615",
        ),
    ],
)
def test_a_file_that_is_not_a_lease_is_a_config_error_naming_it_and_the_key(
    tmp_path: Path, body: str, problem: str
) -> None:
    """Anything but this format's lease stops the start with `signing.lease_file`, the path and
    the signer's address: a floor silently dropped could sign a round time again."""
    path = tmp_path / "lease.json"
    path.write_text(body)
    with pytest.raises(ConfigError) as caught:
        SignLease.open(path, KEY.address, WINDOW, T0)
    (text,) = caught.value.problems
    assert text.startswith(f"signing.lease_file: {path} (signer {KEY.address}): ")
    assert problem in text
    assert path.read_text() == body
    path.unlink()  # moved aside: the refused start let its lock go, so this one may start
    SignLease.open(path, KEY.address, WINDOW, T0).close(None)


@pytest.mark.parametrize(
    ("mine", "other"),
    [
        (1, None),  # a placeholder: below every round time
        (0, None),
        (T0 // 1000, None),  # a script's time.time(), in seconds
        (10**12 - 1, None),  # 2001-09-09, less a millisecond
        (T0 * 1000, None),  # in microseconds: the key would not sign for 50,000 years
        (10**13, None),
        (T0, T0 // 1000),  # another key's lease in seconds: its floor when it starts here
    ],
)
def test_a_lease_in_another_unit_is_a_config_error_naming_the_value(
    tmp_path: Path, mine: int, other: int | None
) -> None:
    """A lease is a round time in milliseconds. One written in seconds (an operator's script,
    a placeholder 1) was read as a floor below every round time: the start after it signed,
    with its clock behind, round times the last run signed, as with no lease at all. Now any
    lease outside 13 digits (2001 to 2286) stops the start, and `check-config --as-daemon`,
    naming the file, the key, the value and what to write, and the file stays as it was: a
    guess at its unit could lower the floor (or, in microseconds, never let the key sign)."""
    path = tmp_path / "lease.json"
    leases = {KEY.address: mine} if other is None else {KEY.address: mine, OTHER.address: other}
    body = json.dumps({"format": FORMAT, "version": 1, "leases": leases})
    path.write_text(body)
    wrong = OTHER.address if other is not None else KEY.address
    for refuse in (
        lambda: SignLease.open(path, KEY.address, WINDOW, T0),
        lambda: check_sign_lease(str(path), KEY.address),
    ):
        with pytest.raises(ConfigError) as caught:
            refuse()
        (text,) = caught.value.problems
        assert text.startswith(f"signing.lease_file: {path} (signer {KEY.address}): "), text
        assert f"lease {other if other is not None else mine} of '{wrong}'" in text, text
        assert "milliseconds" in text and "lease_window_ms" in text, text
        assert path.read_text() == body
    leases[wrong] = T0  # written in milliseconds, as the message says: the start takes it
    path.write_text(json.dumps({"format": FORMAT, "version": 1, "leases": leases}))
    lease = SignLease.open(path, KEY.address, WINDOW, T0 - 5_000)
    assert lease.floor == T0
    lease.close(None)


@pytest.mark.parametrize("found", [10**12, 10**13 - 1])
def test_the_first_and_last_millisecond_leases_are_floors(tmp_path: Path, found: int) -> None:
    """The bounds of the 13 digits are leases like any other: read as the floor, put back as
    found by a stop before any round."""
    path = tmp_path / "lease.json"
    path.write_text(json.dumps({"format": FORMAT, "version": 1, "leases": {KEY.address: found}}))
    lease = SignLease.open(path, KEY.address, WINDOW, T0)
    assert lease.floor == found
    assert lease.close(None)
    assert _on_disk(path) == {KEY.address: found}


def test_a_missing_directory_or_a_second_writer_is_a_config_error(tmp_path: Path) -> None:
    """A lease file in a directory that does not exist, or one another daemon holds (its lock
    beside it), is refused at start rather than signing without a lease."""
    missing = tmp_path / "no" / "lease.json"
    with pytest.raises(ConfigError, match=r"directory .* does not exist"):
        SignLease.open(missing, KEY.address, WINDOW, T0)
    path = tmp_path / "lease.json"
    held = SignLease.open(path, KEY.address, WINDOW, T0)
    with pytest.raises(ConfigError, match=r"held by another process .*lease\.json\.lock"):
        SignLease.open(path, OTHER.address, WINDOW, T0)
    assert held.close(None)
    SignLease.open(path, OTHER.address, WINDOW, T0).close(None)


def test_the_lock_is_taken_before_the_file_is_read(tmp_path: Path) -> None:
    """A start finds the file held before it reads it: what it would read is the holder's,
    which may still extend it and sign up to the new lease before it lets go, so a floor read
    first and locked after could be short of what the holder signed. Here the holder's file is
    not even a lease yet (as mid-way through a hand edit): the start is refused as held, not as
    a bad file. Before, it read first and named the file's content (found in review)."""
    path = tmp_path / "lease.json"
    held = SignLease.open(path, KEY.address, WINDOW, T0)
    path.write_text("[]")
    with pytest.raises(ConfigError, match=r"held by another process"):
        SignLease.open(path, KEY.address, WINDOW, T0)
    assert held.close(None)


@pytest.mark.parametrize("lost", ["lock file removed", "directory made again"])
async def test_a_holder_whose_lock_file_is_gone_signs_and_writes_no_more(
    tmp_path: Path, lost: str
) -> None:
    """The lock file removed under a running holder (a clean-up of `.lock` files), or the
    lease's directory removed and made again: a second daemon then locks a new lock file and
    signs from its own start, so the holder, which no longer excludes anyone, signs no further
    round (counted `lease`, logged once as an error) and writes the lease no more, neither ahead
    nor down at its stop: it would overwrite the second daemon's lease with its own. Before,
    both signed the same round times with other round numbers (found by a fuzz of three daemons
    on one key and one lease file)."""
    state = tmp_path / "state"
    state.mkdir()
    path = state / "lease.json"
    run = Signing(path)
    await run.step()
    if lost == "lock file removed":
        path.with_name(path.name + ".lock").unlink()
    else:
        shutil.rmtree(state)
        state.mkdir()
    second = SignLease.open(path, KEY.address, WINDOW, run.rounds.now)  # not refused as held
    written = _on_disk(path)
    with capture_logs() as logs:
        for _ in range(30):  # past half a window: the holder would extend its lease
            await run.step()
    assert [s.ts for s in run.signed] == [T0 + INTERVAL]
    assert run.signer.stats.errors["lease"] == 30
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("error", "signing lease lock lost: no round is signed until a restart"),
    ]
    assert run.worker.close()
    assert _on_disk(path) == written == {KEY.address: second.granted}
    assert second.close(None)


async def test_a_lock_file_moved_away_with_its_directory_holds_rounds_back_until_it_is_back(
    tmp_path: Path,
) -> None:
    """The lease's directory moved away for a while (a volume gone, a rename) takes the very
    lock file with it: no second daemon can lock it meanwhile, so the rounds are held back
    (counted `lease`, said once as an error) and signed again once it is back (said once).
    94b11df took any absence for a lock lost for good, and a daemon never signed again after a
    moved directory came back (tests/runtime/test_stalled_signed_stream.py)."""
    state, away = tmp_path / "state", tmp_path / "away"
    state.mkdir()
    path = state / "lease.json"
    run = Signing(path)
    await run.step()
    with capture_logs() as logs:
        state.rename(away)
        for _ in range(3):
            await run.step()
        away.rename(state)
        await run.step()
    assert len(run.signed) == 2 and run.signer.stats.errors["lease"] == 3
    assert [(e["log_level"], e["event"]) for e in logs if "lock" in e["event"]] == [
        ("error", "signing lease lock file missing: no round is signed until it is back"),
        ("info", "signing lease lock file back: rounds are signed again"),
    ]
    assert run.worker.close()


async def test_a_lock_file_removed_is_lost_for_good_even_before_another_is_made(
    tmp_path: Path,
) -> None:
    """A removed lock file never comes back (the next one made there is another file, which a
    second daemon may lock, and which can even get the removed file's inode number): the lease
    is lost at once, with nothing at the path yet."""
    path = tmp_path / "lease.json"
    run = Signing(path)
    await run.step()
    path.with_name(path.name + ".lock").unlink()
    with capture_logs() as logs:
        await run.step()
        path.with_name(path.name + ".lock").touch()  # whatever its inode number
        await run.step()
    assert len(run.signed) == 1 and run.signer.stats.errors["lease"] == 2
    assert [e["event"] for e in logs if "lock" in e["event"]] == [
        "signing lease lock lost: no round is signed until a restart"
    ]
    assert run.worker.close()


def test_signing_without_a_lease_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    """[signing] enabled without `lease_file` is a config problem naming the key and why (no
    default: only the operator knows what storage outlives the daemon), as a missing deployment
    name is; and a config built without that validation (signing on, no file) stops the
    service's start with the same problem, before any round or lease is written, rather than
    signing without a floor after a crash."""
    key = tmp_path / "signing.key"
    key.write_text(KEY.hex() + "\n")
    key.chmod(0o600)
    table = {"enabled": True, "deployment": "test", "key_file": str(key)}
    with pytest.raises(ConfigError) as caught:
        make_config(signing=table)
    assert caught.value.problems == [LEASE_FILE_REQUIRED]
    assert LEASE_FILE_REQUIRED.startswith(
        "signing.lease_file: required when signing is enabled: a file on storage that outlives "
        "the daemon"
    )
    lease = tmp_path / "lease.json"
    cfg = make_config(signing={**table, "lease_file": str(lease)})
    unchecked = cfg.model_copy(
        update={"signing": cfg.signing.model_copy(update={"lease_file": None})}
    )
    with pytest.raises(ConfigError) as caught:
        Service(unchecked)
    assert caught.value.problems == [LEASE_FILE_REQUIRED]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.key"]


ROOT = Path(__file__).resolve().parents[2]


def _signing_example(text: str) -> SigningConfig:
    """The commented `[signing]` table of a shipped config, uncommented as an operator does."""
    block = re.search(r"^ *# \[signing\]\n(?: *# .*\n)+", text, re.MULTILINE)
    assert block, "the shipped config lost its commented [signing] table"
    lines = [line.strip().removeprefix("# ") for line in block[0].splitlines()]
    return _valid_only_with_its_lease(tomllib.loads("\n".join(lines))["signing"])


def _documented_signing_examples() -> dict[str, SigningConfig]:
    """Each ```toml block of the README, docs/ and deploy/README.md that holds a [signing]
    table, by file: what an operator copies to turn signing on."""
    found: dict[str, SigningConfig] = {}
    for path in (ROOT / "README.md", ROOT / "deploy" / "README.md", *(ROOT / "docs").glob("*.md")):
        text = path.read_text()
        for block in re.finditer(r"^( *)```toml\n(.*?)^ *```", text, re.MULTILINE | re.DOTALL):
            body = textwrap.dedent(block[2])
            if "[signing]" in body:
                table = tomllib.loads(body)["signing"]
                found[str(path.relative_to(ROOT))] = _valid_only_with_its_lease(table)
    return found


def _valid_only_with_its_lease(table: dict[str, object]) -> SigningConfig:
    """`table` as a config's [signing]: valid, and refused for want of a lease without its
    `lease_file` line (so the example is what names it, not a default)."""
    unleased = {k: v for k, v in table.items() if k != "lease_file"}
    with pytest.raises(ConfigError) as caught:
        make_config(signing=unleased)
    assert caught.value.problems == [LEASE_FILE_REQUIRED]
    return make_config(signing=table).signing


def test_every_shipped_signing_example_keeps_its_lease_in_the_working_directory() -> None:
    """The `[signing]` tables the shipped configs offer (config/default.toml, which the image,
    the systemd unit and compose run, and the Kubernetes ConfigMap) and the ones the docs show
    (docs/publishing.md, deploy/README.md) each name a lease file, required, with a relative
    path: it lands in the working directory, which each deployment keeps on persistent storage
    (the next test)."""
    configmap = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "configmap.yaml").read_text())
    shipped = {
        "config/default.toml": _signing_example((ROOT / "config" / "default.toml").read_text()),
        "deploy/kubernetes/configmap.yaml": _signing_example(configmap["data"]["oracled.toml"]),
    }
    documented = _documented_signing_examples()
    assert {"docs/publishing.md", "deploy/README.md"} <= documented.keys()
    for where, signing in {**shipped, **documented}.items():
        assert signing.enabled, where
        assert signing.lease_file == "oracled-signing-lease.json", where


def test_each_deployments_working_directory_outlives_its_process() -> None:
    """Where a relative lease lands, the working directory, is persistent storage in every
    shipped deployment: the image's WORKDIR is its VOLUME, compose mounts a named volume there,
    each pod mounts its own claim there (a volumeClaimTemplate, not an emptyDir) and the
    systemd unit runs in its StateDirectory. A lease lost with its container lets the next
    start, with the clock behind, sign round times again (test_sign_lease_daemon.py)."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    runtime = dockerfile[dockerfile.rindex("\nFROM ") :]
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", runtime, re.MULTILINE)
    assert f'VOLUME ["{workdir}"]' in runtime
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    oracled = compose["services"]["oracled"]
    assert oracled.get("working_dir", workdir) == workdir
    (volume,) = [v.split(":")[0] for v in oracled["volumes"] if v.split(":")[1] == workdir]
    assert volume in compose["volumes"], "a named volume, kept across `docker compose down`"
    statefulset = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "statefulset.yaml").read_text())[
        "spec"
    ]
    (container,) = statefulset["template"]["spec"]["containers"]
    assert container.get("workingDir", workdir) == workdir
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == workdir]
    claims = {c["metadata"]["name"] for c in statefulset["volumeClaimTemplates"]}
    assert mount["name"] in claims and not mount.get("readOnly", False)
    unit = (ROOT / "deploy" / "systemd" / "oracled.service").read_text()
    (state,) = re.findall(r"^StateDirectory=(\S+)$", unit, re.MULTILINE)
    assert re.findall(r"^WorkingDirectory=(\S+)$", unit, re.MULTILINE) == [f"/var/lib/{state}"]


_KILLED_MID_WRITE = """
import resource, signal, sys
from pathlib import Path
from oracled.publish.sign_lease import SignLease
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it: a write past the limit kills
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
SignLease.open(Path(sys.argv[1]), sys.argv[2], 10_000, 1_700_000_000_000)
"""


def test_a_start_removes_the_temporary_file_a_writer_killed_mid_write_left(
    tmp_path: Path,
) -> None:
    """A process killed while it writes the lease (here by the kernel, at the first byte past a
    file-size limit of 0: after its temporary file exists, before the rename) leaves that
    temporary file beside the lease, and nothing removed it: one more after each such death.
    The next start removes it, holding the lock, and logs it; files that only look alike (not
    `replace_durably`'s names for this file: another file's, another length, the lock) stay."""
    path = tmp_path / "lease.json"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_WRITE, str(path), KEY.address],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr
    (left,) = [p.name for p in tmp_path.iterdir() if p.name.startswith(".lease.json.")]
    assert re.fullmatch(r"\.lease\.json\.[a-z0-9_]{8}", left)
    assert not path.exists()  # it died before the rename
    alike = [".lease.json.short", ".lease.json.abcdefghi", ".other.json.abcdefgh", "lease.jsonx"]
    for name in alike:
        (tmp_path / name).write_text("not ours")
    with capture_logs() as logs:
        lease = SignLease.open(path, KEY.address, WINDOW, T0)
    assert lease.close(None)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*alike, "lease.json", "lease.json.lock"]
    )
    (removed,) = [e for e in logs if e["event"].startswith("signing lease: removed")]
    assert removed["files"] == [left]
    assert removed["log_level"] == "warning"


def test_a_lease_file_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    """A FIFO nobody writes at the lease's path: the start's read waited for ever, holding the
    lock (and the daemon's start) with it; it is a config error naming what the path is, and
    the lock is let go."""
    fifo = tmp_path / "lease.json"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as caught:
        SignLease.open(fifo, KEY.address, WINDOW, T0)
    assert caught.value.problems == [
        f"signing.lease_file: {fifo} (signer {KEY.address}): cannot read it (a FIFO, not a "
        "regular file)"
    ]
    fifo.unlink()
    SignLease.open(fifo, KEY.address, WINDOW, T0).close(None)  # the refused start let go
