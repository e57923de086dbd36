"""A key never signs two rounds for one round time, across a restart with the clock behind: the
signer's floor is the newest round time the audit trail holds signed by that key."""

from __future__ import annotations

from pathlib import Path

from audit_rig import Feed, recorded, trail
from publish_rig import INTERVAL, T0, make_config
from structlog.testing import capture_logs

from oracled.client import OracleClient, Rejection
from oracled.publish.audit import AuditReader
from oracled.publish.signer import RoundSigner, SignedRound, SignerWorker, SigningKey
from oracled.service import Service

KEY = SigningKey.from_hex("0x" + "22" * 32)
ROUNDS = 10
BEHIND_MS = 1_000  # the second start's clock: four rounds of 250 ms behind the first's


def _first_run(path: Path) -> tuple[Feed, list[SignedRound]]:
    """Ten rounds made by a core, signed with KEY and stored signed in a real audit trail."""
    feed = Feed(make_config(), trail(path))
    signed: list[SignedRound] = []
    signer = RoundSigner(KEY, "test")
    for _ in range(ROUNDS):
        feed.round()
        signed.append(signer.sign(feed.kept[-1][0]))
        feed.audit.submit_signed(signed[-1])
    assert feed.audit.close(5)
    return feed, signed


async def _second_run(
    path: Path, first: Feed, floor: int | None
) -> tuple[list[SignedRound], RoundSigner]:
    """A new core on the same key, its clock BEHIND_MS behind the first run's last round, its
    rounds handed to a SignerWorker with `floor` and stored in the same trail."""
    feed = Feed(make_config(), trail(path))
    feed.now = first.now - BEHIND_MS
    signer = RoundSigner(KEY, "test")
    signed: list[SignedRound] = []

    def on_signed(round_: SignedRound) -> None:
        signed.append(round_)
        feed.audit.submit_signed(round_)

    worker = SignerWorker(signer, on_signed, floor)
    for _ in range(ROUNDS):
        feed.round()
        worker.submit(feed.kept[-1][0])
        assert await worker.drain(10)  # one at a time: no round is skipped as busy
    worker.close()
    assert feed.audit.close(5)
    return signed, signer


def _equivocations(runs: list[list[SignedRound]]) -> int:
    """Every market of every signed round, in the order sent, to one client: its conflicts."""
    now = 0
    client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: now)
    for run in runs:
        for round_ in run:
            now = round_.ts
            for i in range(round_.count):
                try:
                    client.feed(round_.envelope(i))
                except Rejection as exc:
                    assert exc.reason == "equivocation", exc
    return sum(client.equivocated.values())


async def test_a_restart_with_the_clock_behind_signs_nothing_at_or_before_the_floor(
    tmp_path: Path,
) -> None:
    """The daemon's start reads the newest round time KEY signed from the trail; the second run,
    1,000 ms behind, leaves its four rounds at or before it unsigned (counted `floor`, logged
    once with the floor and the wait), signs the six after it, stores no second signed round
    for any time, and a client fed both runs sees no equivocation."""
    path = tmp_path / "audit.sqlite3"
    first, signed_first = _first_run(path)
    key_file = tmp_path / "signing.key"
    key_file.write_text(KEY.hex() + "\n")
    key_file.chmod(0o600)
    cfg = make_config(
        audit={"enabled": True, "path": str(path)},
        signing={
            "enabled": True,
            "key_file": str(key_file),
            "deployment": "test",
            "lease_file": str(tmp_path / "signing-lease.json"),
        },
    )
    service = Service(cfg)  # the start: the floor is read before the writer thread runs
    assert service._signer_worker is not None
    floor = service._signer_worker.floor
    service._signer_worker.close()
    assert floor == first.now == signed_first[-1].ts == T0 + ROUNDS * INTERVAL

    with capture_logs() as logs:
        signed_second, signer = await _second_run(path, first, floor)
    skipped = BEHIND_MS // INTERVAL
    assert signer.stats.errors["floor"] == skipped and signer.stats.errors["busy"] == 0
    assert [s.ts for s in signed_second] == [
        floor + k * INTERVAL for k in range(1, ROUNDS - skipped + 1)
    ]
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["floor"] == floor
    assert warnings[0]["resumes_in_ms"] == BEHIND_MS - INTERVAL + 1  # from the first skipped
    said = [e["event"] for e in logs if e["log_level"] == "info" and "audit" not in e["event"]]
    assert said == ["signing resumed past the floor"]

    reader = AuditReader(path)
    try:
        stored = reader.rounds(0, 2**62)
        assert reader.last_signed_ts(KEY.address.lower()) == signed_second[-1].ts
    finally:
        reader.close()
    signed_times = [r.ts for r in stored if r.signature is not None]
    assert len(stored) == 2 * ROUNDS and len(signed_times) == 2 * ROUNDS - skipped
    assert len(set(signed_times)) == len(signed_times)  # one signed round per time
    assert _equivocations([signed_first, signed_second]) == 0


async def test_without_the_floor_the_same_restart_equivocates(tmp_path: Path) -> None:
    """The same restart with no floor (no audit trail) signs the four times again with other
    rounds, which the client reports as equivocation at each: what the floor prevents."""
    path = tmp_path / "audit.sqlite3"
    first, signed_first = _first_run(path)
    signed_second, signer = await _second_run(path, first, None)
    assert len(signed_second) == ROUNDS and signer.stats.errors["floor"] == 0
    assert _equivocations([signed_first, signed_second]) == BEHIND_MS // INTERVAL


def test_the_floor_is_this_keys_newest_signed_round_only(tmp_path: Path) -> None:
    """Rounds signed by another key, and rounds stored unsigned, set no floor for KEY; a trail
    that does not exist yet (the first start) gives none either."""
    path = tmp_path / "audit.sqlite3"
    other = RoundSigner(SigningKey.generate(), "test")
    feed = recorded(path, 3)  # unsigned rounds
    again = Feed(make_config(), trail(path))
    again.now = feed.now
    again.round(other)
    assert again.audit.close(5)
    reader = AuditReader(path)
    try:
        assert reader.last_signed_ts(KEY.address) is None
        assert reader.last_signed_ts(other.address) == again.now
    finally:
        reader.close()
    cfg = make_config(audit={"enabled": True, "path": str(tmp_path / "none.sqlite3")})
    assert Service._signing_floor(cfg, RoundSigner(KEY, "test")) is None


def test_a_trail_that_cannot_be_read_is_no_floor_and_said_in_words(tmp_path: Path) -> None:
    """A file at the trail's path that is no database: no floor, and one error line whose
    `error` is the reason in words. It was the exception's repr,
    `DatabaseError('file is not a database')`."""
    junk = tmp_path / "audit.sqlite3"
    junk.write_bytes(b"not a database" * 100)
    cfg = make_config(audit={"enabled": True, "path": str(junk)})
    with capture_logs() as logs:
        assert Service._signing_floor(cfg, RoundSigner(KEY, "test")) is None
    assert [(e["event"], e["error"]) for e in logs] == [
        ("signing floor not read: no floor", "DatabaseError: file is not a database")
    ]
