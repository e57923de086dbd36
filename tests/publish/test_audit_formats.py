"""`oracled audit --verify` checks each stored round in the signed format that signed it.

The trail records the format (the EIP-712 domain version) with each signature from schema
version 4; a round stored before that is checked in format 1, the only one released before. The
trails in tests/fixtures/audit/ were written by the real code of the releases that signed in
format 1 (bffda9a) and format 2 (2f3191c): see tests/fixtures/README.md.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import msgspec
import pytest
from audit_rig import Feed, rewrite_report, sql, trail
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils.crypto import keccak
from publish_rig import T0, make_config

from oracled.cli import main
from oracled.model import Report
from oracled.publish.audit import AuditReader
from oracled.publish.signed_formats import FORMATS, format_digest
from oracled.publish.signer import SIGNED_FORMAT, RoundSigner, SigningKey, round_digest

FIXTURES = Path(__file__).parents[1] / "fixtures" / "audit"
KEY = SigningKey(bytes.fromhex("11" * 32))  # the fixtures' test key
ADDRESS = "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A"
END = 1 << 62


def fixture(name: str, tmp_path: Path) -> Path:
    """A copy of a fixture trail (reading or upgrading it must not touch the original)."""
    return Path(shutil.copy(FIXTURES / name, tmp_path / name))


def verify(db: Path, capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, str]:
    code = main(["audit", "--db", str(db), "--verify", *options])
    return code, capsys.readouterr().out


def change_mark(path: Path, round_id: int, market: str, price: str) -> None:
    """Rewrite one stored report's mark price."""

    def moved(report: Report) -> Report:
        assert report.mark is not None
        return msgspec.structs.replace(
            report, mark=msgspec.structs.replace(report.mark, price=price)
        )

    rewrite_report(path, round_id, market, moved)


def upgraded(db: Path, rounds: int) -> None:
    """The upgrade: this release's daemon starts a minute later on the same trail (its writer
    brings it to schema 5 in place) and signs `rounds` rounds for deployment "production"."""
    feed = Feed(make_config(perps=("BTC/USD",)), trail(db))
    feed.now = T0 + 60_000
    signer = RoundSigner(KEY, "production")
    for _ in range(rounds):
        feed.round(signer)
    assert feed.audit.close()


def test_the_last_releases_trail_verifies_in_format_1_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trail written by the release before formats were recorded (schema 3, format 1) verifies
    as it did with that release: 4 rounds matching the test key, 1 unsigned, exit 0, each in
    signed format 1; format 1 names no deployment, so none is needed and any given is ignored;
    `--at` says the format too. Before, it was 'not checked' without a deployment (exit 4) and
    4 mismatches with one (exit 3)."""
    db = fixture("trail_format1.sqlite3", tmp_path)
    reader = AuditReader(db)
    assert reader.version == 3
    assert [r.format for r in reader.rounds(0, END)] == [None] * 5
    reader.close()
    for options in ((), ("--deployment", "production"), ("--deployment", "staging")):
        code, out = verify(db, capsys, "--signer", ADDRESS, *options)
        assert code == 0, out
        assert (
            "5 round(s) checked" in out and "4 signed and matching, 1 unsigned, 0 mismatched" in out
        )
        assert f"signed by {ADDRESS}: 4 round(s)" in out
        assert "    verified in signed format 1: 4 round(s)\n" in out
    (ts,) = [r.ts for r in AuditReader(db).rounds(0, END) if r.round == 2]
    assert main(["audit", "--db", str(db), "--market", "BTC/USD", "--at", str(ts)]) == 0
    at = capsys.readouterr().out
    assert f"signed by {ADDRESS} (verified against the round)" in at
    assert "    verified in signed format 1\n" in at


def test_an_upgrade_keeps_the_rounds_before_it_provable_each_in_its_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The release of format 1's trail, then this release on it: the writer brings it to
    schema 7 in place (its rounds stay, their format unrecorded), records format 3 with every
    signature it adds, and one `--verify` over the whole window proves all 8 signed rounds, 4 in
    format 1 and 4 in format 3 (exit 0). The leaves follow the format: a perpetual's mark
    changed in a format 3 round is a mismatch, in a format 1 round (which did not sign it) not."""
    db = fixture("trail_format1.sqlite3", tmp_path)
    upgraded(db, 4)
    reader = AuditReader(db)
    stored = reader.rounds(0, END)
    reader.close()
    assert reader.version == 7
    assert [r.format for r in stored] == [None] * 5 + [SIGNED_FORMAT] * 4 == [None] * 5 + [3] * 4
    code, out = verify(db, capsys, "--deployment", "production", "--signer", ADDRESS)
    assert code == 0, out
    assert "9 round(s) checked" in out and "8 signed and matching, 1 unsigned, 0 mismatched" in out
    assert "    verified in signed format 1: 4 round(s)\n" in out
    assert "    verified in signed format 3: 4 round(s)\n" in out
    # without a deployment, format 3 rounds cannot be checked; format 1 rounds still are
    code, out = verify(db, capsys)
    assert code == 4 and "4 signed and matching, 1 unsigned, 0 mismatched, 4 not checked" in out
    assert "unchecked: round 1 at" in out and "give --deployment" in out

    old, new = stored[0], stored[5]
    change_mark(db, old.id, "BTC/USD", "1.00")
    code, out = verify(db, capsys, "--deployment", "production")
    assert code == 0 and "8 signed and matching" in out
    change_mark(db, new.id, "BTC/USD", "1.00")
    code, out = verify(db, capsys, "--deployment", "production")
    assert code == 3 and "7 signed and matching, 1 unsigned, 1 mismatched" in out
    assert "the stored reports do not give the signed root" in out
    assert "verified in signed format 1: 4 round(s)" in out


def test_a_format_2_round_verifies_in_format_2_once_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rounds signed in format 2 (by the code of 2f3191c, a trail without formats) are checked
    in format 1 and mismatch, saying so and, for the deployment that signed them, that they
    would verify in format 2 (a hint: still a mismatch, exit 3); once the trail records format
    2 for them (as a writer of schema 4 would have), they verify in format 2 for their
    deployment, mismatch for another, and are not checked without one."""
    db = fixture("trail_format2.sqlite3", tmp_path)
    code, out = verify(db, capsys, "--deployment", "production")
    assert code == 3 and "0 signed and matching, 1 unsigned, 4 mismatched" in out
    assert (
        "(checked in signed format 1: the trail did not record one; it would verify in signed "
        "format 2, which no release signed in without recording it)"
    ) in out
    code, out = verify(db, capsys, "--deployment", "staging")  # in no format: no hint
    assert code == 3 and "4 mismatched" in out
    assert "(checked in signed format 1: the trail did not record one)" in out
    audit = trail(db)  # this release's daemon starts on it: its config load is its first write,
    audit.record_config(T0 + 60_000, "start", "start", None, "0" * 64, "{}")
    assert audit.close()  # which brings the trail to schema 5 (and adds no round)
    sql(db, "UPDATE rounds SET format = 2 WHERE signature IS NOT NULL")
    code, out = verify(db, capsys, "--deployment", "production", "--signer", ADDRESS)
    assert code == 0, out
    assert "4 signed and matching, 1 unsigned, 0 mismatched" in out
    assert "    verified in signed format 2: 4 round(s)\n" in out
    code, out = verify(db, capsys, "--deployment", "staging")
    assert code == 3 and "4 mismatched" in out and "the trail did not record" not in out
    code, out = verify(db, capsys)
    assert code == 4 and "4 not checked" in out


def test_a_recorded_format_is_no_evidence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The format column only chooses where to check: a round recorded in another known format
    than the one that signed it is a mismatch (format 1 rounds called 3, format 3 rounds called
    1 or 2), a format that never existed (0) is a mismatch, and one newer than this release
    knows is not checked and says so (exit 4 when nothing mismatches)."""
    db = fixture("trail_format1.sqlite3", tmp_path)
    upgraded(db, 4)
    # rounds 1 to 5 are format 1 (the third unsigned), 6 to 9 format 3
    sql(db, "UPDATE rounds SET format = 3 WHERE id = 1")
    sql(db, "UPDATE rounds SET format = 1 WHERE id = 6")
    sql(db, "UPDATE rounds SET format = 2 WHERE id = 7")
    sql(db, "UPDATE rounds SET format = 0 WHERE id = 8")
    code, out = verify(db, capsys, "--deployment", "production")
    assert code == 3 and "4 signed and matching, 1 unsigned, 4 mismatched" in out
    assert "no signed format 0 exists" in out
    sql(db, f"UPDATE rounds SET format = {FORMATS[-1] + 1} WHERE id IN (1, 6, 7, 8)")
    code, out = verify(db, capsys, "--deployment", "production")
    assert code == 4 and "4 signed and matching, 1 unsigned, 0 mismatched, 4 not checked" in out
    assert f"signed format {FORMATS[-1] + 1} is newer than this oracled knows" in out


def _documented(fmt: int, ts: int, round_no: int, count: int, root: bytes) -> bytes:
    """The digest as each format's own docs build it with eth-account's EIP-712 encoder: format 1
    in the domain (name, version) = ("oracled", "1"), later ones with salt keccak256(deployment)."""
    domain_type = [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}]
    domain: dict[str, object] = {"name": "oracled", "version": str(fmt)}
    if fmt >= 2:
        domain_type.append({"name": "salt", "type": "bytes32"})
        domain["salt"] = keccak(b"production")
    message = {
        "types": {
            "EIP712Domain": domain_type,
            "OracleRound": [
                {"name": "ts", "type": "uint64"},
                {"name": "round", "type": "uint64"},
                {"name": "count", "type": "uint32"},
                {"name": "root", "type": "bytes32"},
            ],
        },
        "primaryType": "OracleRound",
        "domain": domain,
        "message": {"ts": ts, "round": round_no, "count": count, "root": root},
    }
    return bytes(_hash_eip191_message(encode_typed_data(full_message=message)))


def test_each_formats_digest_is_the_one_its_docs_describe() -> None:
    """format_digest equals eth-account's EIP-712 digest in each format's documented domain,
    format 3 equals what the signer signs today, and a signature of one format recovers
    another address in every other; format 1 needs no deployment, later ones one."""
    root = bytes(range(32))
    args = (1_700_000_000_250, 7, 3, root)
    digests = {fmt: format_digest(fmt, *args, "production") for fmt in FORMATS}
    assert FORMATS == (1, 2, 3)
    for fmt, digest in digests.items():
        assert digest == _documented(fmt, *args)
    assert digests[3] == round_digest(*args, "production")
    assert format_digest(1, *args, None) == digests[1] == format_digest(1, *args, "staging")
    assert len(set(digests.values())) == 3
    with pytest.raises(ValueError, match="needs a deployment"):
        format_digest(2, *args, None)
    with pytest.raises(ValueError, match="no signed format 4"):
        format_digest(4, *args, "production")
    signature = KEY.sign_digest(digests[1])
    assert Account._recover_hash(digests[1], signature=signature) == KEY.address
    assert Account._recover_hash(digests[2], signature=signature) != KEY.address


def test_the_fixture_trail_is_signed_as_format_1s_docs_say() -> None:
    """The format 1 fixture's first signed round recovers the test key through format 1's
    documented digest (a check independent of oracled's verifier: the fixture is what it
    claims)."""
    db = sqlite3.connect(
        f"{(FIXTURES / 'trail_format1.sqlite3').as_uri()}?mode=ro&immutable=1", uri=True
    )
    ts, round_no, count, root, signature = db.execute(
        "SELECT ts, round, markets, root, signature FROM rounds ORDER BY id LIMIT 1"
    ).fetchone()
    db.close()
    digest = _documented(1, ts, round_no, count, root)
    assert Account._recover_hash(digest, signature=signature) == ADDRESS
