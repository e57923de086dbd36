"""The config texts of the audit trail (schema version 7) and what `oracled audit --replay`
does with them and without them: a redacted text replays as the file would, a text is kept
once per sha256, no text is kept that would hold a secret, and a load no replay can know
(from no file, no text kept) is said (docs/publishing.md). The trails are written the way
the daemon writes them (`audit_rig.Feed`, its config's load first)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from audit_rig import Feed, sql, trail, write_config
from publish_rig import SOURCES, T0, make_config
from structlog.testing import capture_logs

from oracled.cli import main
from oracled.config import read_config_text
from oracled.publish.audit import AuditReader, iso_time

_END = 1 << 62
#: Each a secret the way a config file could hold one: in a URL (a user and password before
#: the host, an API key in the path or the query).
_SECRETS = ("s3cret-user:hunter2", "KEY-path-0123", "KEY-query-4567")


def _replay(capsys: pytest.CaptureFixture[str], db: Path, *args: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = main(["audit", "--db", str(db), "--replay", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _kept_no_text(tmp_path: Path, path: Path, cfg: Any, raw: bytes) -> tuple[bytes, str]:
    """The start's config `path` (loaded as `cfg` from `raw`) recorded by a trail that must
    keep no text of it: the trail's bytes, and why its writer's line says it kept none."""
    db = tmp_path / "audit.sqlite3"
    audit = trail(db)
    digest = hashlib.sha256(raw).hexdigest()
    with capture_logs() as logs:
        audit.record_config(T0, "start", "start", str(path), digest, "{}", text=raw, loaded=cfg)
        assert audit.close()
    reader = AuditReader(db)
    try:
        assert [c.sha256 for c in reader.configs(0, _END)] == [digest]
        assert reader.config_text(digest) is None
    finally:
        reader.close()
    (line,) = [e for e in logs if e["event"].startswith("audit: a config's text is not kept")]
    return db.read_bytes(), str(line["why"])


def _with_secrets() -> dict[str, Any]:
    """Sources whose URLs carry the secrets, and a NATS server (off) with a user in its URL."""
    url = f"wss://{_SECRETS[0]}@stream.example.com:9443/ws/{_SECRETS[1]}"
    return {
        "sources": {
            name: {
                "type": "binance",
                "ws_url": url,
                "rest_url": f"https://api.example.com/v3?k={k}",
            }
            for name, k in zip(SOURCES, (_SECRETS[2], "other", "third"), strict=True)
        },
        "nats": {"servers": [f"nats://{_SECRETS[0]}@nats.example.com:4222"]},
    }


def test_a_config_with_secrets_in_its_urls_is_kept_redacted_and_replays_equal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config whose URLs hold a user, a password and API keys: the trail keeps its text with
    each URL's user part, path and query replaced (no secret in the file), the count of URLs
    redacted and its pricing digest; its file gone, the replay takes that text and every
    report is equal. The redacted text changed in a way that prices otherwise (a market's
    exponent) is exit 4, the line naming the start, its sha256 and the two digests."""
    db, config = tmp_path / "audit.sqlite3", tmp_path / "oracled.toml"
    feed = Feed(make_config(**_with_secrets()), trail(db), config_file=config)
    for _ in range(6):
        feed.round()
    assert feed.audit.close()
    raw = config.read_bytes()
    assert all(secret.encode() in raw for secret in _SECRETS)
    config.unlink()
    for secret in _SECRETS:
        assert secret.encode() not in db.read_bytes()
    reader = AuditReader(db)
    try:
        (start,) = reader.configs(0, _END)
        kept = reader.config_text(start.sha256)
    finally:
        reader.close()
    assert start.sha256 == hashlib.sha256(raw).hexdigest() and kept is not None
    assert kept.redacted == 5  # the ws URL, three REST URLs, the NATS server
    assert b'ws_url = "wss://redacted-2@stream.example.com:9443/redacted-2"' in kept.text
    assert b'"nats://redacted-1@nats.example.com:4222"' in kept.text
    code, result = _replay(capsys, db)
    assert code == 0, result
    assert result["rounds"] == 6 and result["equal"] == result["reports"] == 18
    assert "from the trail's stored text)" in result["starts"][0]

    sql(
        db,
        "UPDATE configs SET text = CAST(replace(CAST(text AS TEXT), 'price_exponent = -3',"
        " 'price_exponent = -4') AS BLOB)",
    )
    code, result = _replay(capsys, db)
    assert code == 4, result
    assert result["problems"][0].startswith(
        f"the config of the start at {iso_time(start.ts)} (by start, sha256 {start.sha256[:12]}):"
        " its redacted text stored in the trail is not the one the daemon loaded: it prices"
        f" otherwise here (pricing digest "
    )
    assert f"the daemon's {kept.pricing[:12]})" in result["problems"][0]
    assert result["unreproducible_rounds"] == 6 and result["reports"] == 0


def test_a_reload_back_to_an_earlier_config_keeps_no_text_again(tmp_path: Path) -> None:
    """Loads of configs A, B, then A again (a reload back), as the service records them: three
    config rows, two texts, and the third load reads A's text back by its sha256."""
    db = tmp_path / "audit.sqlite3"
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    feed = Feed(make_config(), trail(db), config_file=first)
    feed.round()
    write_config(second, make_config(oracle={"round_interval_ms": 250, "resume_rounds": 4}))
    for path, ts in ((second, feed.now + 1), (first, feed.now + 2)):
        cfg, raw = read_config_text(path, env={})
        digest = hashlib.sha256(raw).hexdigest()
        feed.audit.record_config(ts, "reload", "api", str(path), digest, "{}", text=raw, loaded=cfg)
    assert feed.audit.close()
    reader = AuditReader(db)
    try:
        loads = reader.configs(0, _END)
        texts = [reader.config_text(load.sha256) for load in loads]
    finally:
        reader.close()
    assert [load.event for load in loads] == ["start", "reload", "reload"]
    assert loads[0].sha256 == loads[2].sha256 != loads[1].sha256
    got = [t.text if t is not None else None for t in texts]
    assert got == [first.read_bytes(), second.read_bytes(), first.read_bytes()]
    with sqlite3.connect(db) as con:
        (stored,) = con.execute("SELECT count(text) FROM configs").fetchone()
    con.close()
    assert stored == 2


def test_a_load_without_a_file_path_is_named_unless_its_text_is_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon given its config in process (no file: the trail keeps the sha256 of its
    settings, no path, no text) cannot be replayed, and the line says so (exit 4); a load
    stored without a path but with its text replays from that text, every report equal."""
    db = tmp_path / "bare.sqlite3"
    feed = Feed(make_config(), trail(db))
    for _ in range(4):
        feed.round()
    assert feed.audit.close()
    reader = AuditReader(db)
    try:
        (start,) = reader.configs(0, _END)
    finally:
        reader.close()
    assert start.path is None
    code, result = _replay(capsys, db)
    assert code == 4, result
    assert result["problems"][0] == (
        f"the config of the start at {iso_time(start.ts)} (by start, sha256"
        f" {start.sha256[:12]}) is stored without a file path or its text (a daemon given its"
        " config in process, not from a file: its sha256 is of the settings, which no file"
        " has)"
    )
    assert result["unreproducible_rounds"] == 4

    cfg, raw = write_config(tmp_path / "kept.toml", make_config())
    db = tmp_path / "text.sqlite3"
    audit = trail(db)
    digest = hashlib.sha256(raw).hexdigest()
    audit.record_config(start.ts, "start", "start", None, digest, "{}", text=raw, loaded=cfg)
    again = Feed(cfg, audit, start=False)
    for _ in range(4):
        again.round()
    assert audit.close()
    code, result = _replay(capsys, db)
    assert code == 0, result
    assert result["equal"] == result["reports"] == 12


def test_a_url_written_with_escapes_keeps_no_text_and_says_so(tmp_path: Path) -> None:
    """The one URL of a config with its `@` written as an escape (`\\u0040`): in the text it
    reads as no user part, so nothing would be redacted, while its value holds the password;
    the trail keeps the load without text (no secret in the file) and the writer's line says
    why."""
    servers = [f"nats://{_SECRETS[0]}@nats.example.com:4222"]
    _, plain = write_config(tmp_path / "plain.toml", make_config(nats={"servers": servers}))
    path = tmp_path / "escaped.toml"
    path.write_bytes(plain.replace(f"{_SECRETS[0]}@".encode(), f"{_SECRETS[0]}\\u0040".encode()))
    cfg, raw = read_config_text(path, env={})
    assert raw != plain and cfg.nats.servers == tuple(servers)
    stored, why = _kept_no_text(tmp_path, path, cfg, raw)
    assert b"hunter2" not in stored
    assert why == "a URL in it is written with escapes: its redacted text is not its value"


@pytest.mark.parametrize(
    ("quote", "password"),
    [
        ('"', "hun'ter2"),  # a basic string
        ("'", 'hun"ter2'),  # a literal string
        ("'", "hun\\ter2"),  # a literal string keeps its backslash
    ],
)
def test_a_url_whose_password_holds_a_quote_or_backslash_keeps_no_text(
    tmp_path: Path, quote: str, password: str
) -> None:
    """A password holding a quote of the other kind than its string's, or a backslash in a
    literal string, is the URL's value as written (nats-py reads the user and password of
    such a URL), but the redaction, which reads URLs in the text up to a quote or a backslash,
    saw only `nats://s3cret-user:hun`: no user part, nothing redacted, and the trail kept the
    file's bytes, password and all. No text is kept now; the writer's line says why."""
    _, plain = write_config(
        tmp_path / "plain.toml",
        make_config(nats={"servers": ["nats://nats.example.com:4222"]}),
    )
    url = f"nats://s3cret-user:{password}@nats.example.com:4222"
    path = tmp_path / "quoted.toml"
    path.write_bytes(
        plain.replace(b'"nats://nats.example.com:4222"', f"{quote}{url}{quote}".encode())
    )
    cfg, raw = read_config_text(path, env={})
    assert cfg.nats.servers == (url,)
    stored, why = _kept_no_text(tmp_path, path, cfg, raw)
    assert b"ter2" not in stored
    assert why.startswith("a URL in it holds a quote or a backslash")
