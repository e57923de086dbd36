"""`oracled audit --verify` and `--at` prove a stored round from its signature, not from the
columns that claim it: a trail written by the real writer thread from real signed rounds, then
changed in SQLite the way anyone who can write the file could change it."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import msgspec
import pytest
from audit_rig import Feed, rewrite_body, rewrite_report, sql, trail
from publish_rig import T0, make_config

from oracled.cli import main
from oracled.config import read_config
from oracled.model import Report
from oracled.publish.audit import AuditReader
from oracled.publish.signer import RoundSigner, SigningKey

KEY = SigningKey.from_hex("0x" + "5a" * 32)
OTHER = "0x0000000000000000000000000000000000000001"


def written(
    path: Path,
    rounds: int = 6,
    *,
    markets: dict[str, float] | None = None,
    config: Path | None = None,
    perps: tuple[str, ...] = (),
) -> None:
    """A trail of `rounds` signed rounds of a daemon-like feed (BTC, ETH at -2, SOL at -3);
    `config`: a file recorded as the config the daemon loaded, as the service records it;
    `perps`: perpetual markets, whose leaves carry their mark."""
    feed = Feed(make_config(markets, perps=perps), trail(path), start=config is None)
    if config is not None:
        feed.audit.record_config(T0, "start", "daemon", str(config), read_config(config)[1], "")
    signer = RoundSigner(KEY, "test")
    for _ in range(rounds):
        feed.round(signer)
    assert feed.audit.close()


def change_report(path: Path, round_no: int, market: str, **fields: object) -> None:
    """Rewrite one stored report body with `fields` changed."""
    db = sqlite3.connect(path)
    (round_id,) = db.execute("SELECT id FROM rounds WHERE round = ?", (round_no,)).fetchone()
    db.close()
    rewrite_report(path, round_id, market, lambda report: msgspec.structs.replace(report, **fields))


def test_an_untouched_trail_verifies_and_names_the_key_that_signed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every signed round rebuilds to its stored root and recovers the daemon's address: exit 0,
    the count and the signer in the summary; `--signer` with that address passes too."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    assert main(["audit", "--db", str(db), "--verify", "--deployment", "test"]) == 0
    out = capsys.readouterr().out
    assert "6 round(s) checked" in out and "6 signed and matching, 0 unsigned, 0 mismatched" in out
    assert f"signed by {KEY.address}: 6 round(s)" in out
    assert (
        main(
            [
                "audit",
                "--db",
                str(db),
                "--verify",
                "--deployment",
                "test",
                "--signer",
                KEY.address.lower(),
            ]
        )
        == 0
    )


def test_a_signer_column_changed_to_another_address_is_a_mismatch_for_verify_and_at(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bug: `--at` printed `signed by <the signer column>` unchecked, so an address written
    there was shown as the round's signer. Now `--at` recovers the signer from the signature and
    says the column disagrees (exit 3), and `--verify` counts the round as mismatched."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    sql(db, f"UPDATE rounds SET signer = '{OTHER}' WHERE round = 4")
    at = ["audit", "--db", str(db), "--deployment", "test", "--market", "BTC/USD", "--at"]
    assert main([*at, str(T0 + 4 * 250)]) == 3
    out = capsys.readouterr().out
    assert f"signed by {OTHER}" not in out
    assert (
        f"SIGNATURE MISMATCH: signer column says {OTHER}, the signature is by {KEY.address}" in out
    )
    assert main([*at, str(T0 + 3 * 250)]) == 0
    assert f"signed by {KEY.address} (verified against the round)" in capsys.readouterr().out
    assert main(["audit", "--db", str(db), "--verify", "--deployment", "test"]) == 3
    out = capsys.readouterr().out
    assert "5 signed and matching, 0 unsigned, 1 mismatched" in out
    assert f"mismatch: round 4 at 2023-11-14T22:13:21.000Z: signer column says {OTHER}" in out


def test_a_stored_price_or_status_changed_no_longer_gives_the_signed_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A price moved by one cent in one report, or a market made to look active, leaves the
    signature recovering the daemon's key over the stored root, but the reports rebuild another
    root: a mismatch naming the round, exit 3."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    change_report(db, 2, "ETH/USD", price="3100.51")
    change_report(db, 5, "SOL/USD", status="degraded")
    assert main(["audit", "--db", str(db), "--verify", "--deployment", "test"]) == 3
    out = capsys.readouterr().out
    assert "4 signed and matching, 0 unsigned, 2 mismatched" in out
    changed = "the stored reports do not give the signed root: a status or price was changed"
    assert f"mismatch: round 2 at 2023-11-14T22:13:20.500Z: {changed}" in out
    assert f"mismatch: round 5 at 2023-11-14T22:13:21.250Z: {changed}" in out
    assert (
        main(
            [
                "audit",
                "--db",
                str(db),
                "--deployment",
                "test",
                "--market",
                "ETH/USD",
                "--at",
                str(T0 + 500),
            ]
        )
        == 3
    )
    assert "SIGNATURE MISMATCH: the stored reports do not give" in capsys.readouterr().out


def test_unsigned_rounds_are_counted_and_listed_but_are_no_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A round without a signature (signing off, or skipped as busy) proves nothing either way:
    counted and listed as the trail's word only, exit 0 when every signed one matches."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    sql(db, "UPDATE rounds SET signature = NULL, signer = NULL, root = NULL WHERE round = 3")
    assert (
        main(
            ["audit", "--db", str(db), "--verify", "--deployment", "test", "--from", str(T0 + 500)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "5 round(s) checked" in out and "4 signed and matching, 1 unsigned, 0 mismatched" in out
    assert "unsigned: round 3 at 2023-11-14T22:13:20.750Z: no signature stored" in out


def test_a_market_that_never_had_a_price_needs_the_config_for_its_exponent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A market no source ever quoted has no decimal string in its reports, yet its exponent is
    in its signed leaf: without `--config` its rounds are not checked (exit 4, saying so), with
    the daemon's config they all match; a config without the market says so (exit 4), and one
    giving another exponent makes them mismatch."""
    db = tmp_path / "audit.sqlite3"
    markets = {"BTC/USD": 1.0, "ETH/USD": 1.0, "SOL/USD": 1.0, "DOGE/USD": 1.0}
    written(db, 3, markets=markets)  # the feed quotes BTC, ETH and SOL only
    assert main(["audit", "--db", str(db), "--verify", "--deployment", "test"]) == 4
    out = capsys.readouterr().out
    assert "0 signed and matching, 0 unsigned, 0 mismatched, 3 not checked" in out
    assert "no exponent for DOGE/USD (no decimal in its report): give --config" in out
    config = tmp_path / "oracled.toml"
    table = "\n".join(
        f'[[markets]]\nsymbol = "{m}"\nprice_exponent = {-3 if m.startswith("SOL") else -2}\n'
        f'min_sources = 1\nsources = [{{ source = "alpha", pair = "{m}" }}]\n'
        for m in markets
    )
    config.write_text('[sources.alpha]\ntype = "binance"\n' + table)
    assert (
        main(
            ["audit", "--db", str(db), "--verify", "--deployment", "test", "--config", str(config)]
        )
        == 0
    )
    assert "3 signed and matching" in capsys.readouterr().out
    config.write_text(config.read_text().replace("DOGE/USD", "XRP/USD"))
    assert (
        main(
            ["audit", "--db", str(db), "--verify", "--deployment", "test", "--config", str(config)]
        )
        == 4
    )
    assert "no exponent for DOGE/USD (no decimal in its report): not a market of --config" in (
        capsys.readouterr().out
    )
    config.write_text(config.read_text().replace("XRP/USD", "DOGE/USD"))
    config.write_text(config.read_text().replace("price_exponent = -2", "price_exponent = -4"))
    assert (
        main(
            ["audit", "--db", str(db), "--verify", "--deployment", "test", "--config", str(config)]
        )
        == 3
    )


def test_a_key_not_given_with_signer_is_a_mismatch_and_bad_requests_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rewritten reports signed again with another key are consistent in themselves: `--signer`
    with the addresses the auditor trusts turns them into mismatches. Options that would be
    ignored, an unreadable config and nothing in range are refused or said."""
    db = tmp_path / "audit.sqlite3"
    written(db, 2)
    assert (
        main(["audit", "--db", str(db), "--verify", "--deployment", "test", "--signer", OTHER]) == 3
    )
    assert f"signed by {KEY.address}, not by a --signer" in capsys.readouterr().out
    assert (
        main(
            [
                "audit",
                "--db",
                str(db),
                "--verify",
                "--deployment",
                "test",
                "--tape",
                str(tmp_path / "t"),
            ]
        )
        == 2
    )
    with pytest.raises(SystemExit) as refused:  # argparse's exit for a bad value
        main(
            [
                "audit",
                "--db",
                str(db),
                "--verify",
                "--deployment",
                "test",
                "--signer",
                KEY.address[:-1],
            ]
        )
    assert refused.value.code == 2
    assert "is not an address" in capsys.readouterr().err
    assert main(["audit", "--db", str(db), "--config", str(db)]) == 2
    missing = str(tmp_path / "none.toml")
    assert (
        main(["audit", "--db", str(db), "--verify", "--deployment", "test", "--config", missing])
        == 2
    )
    assert "--config" in capsys.readouterr().err
    assert (
        main(["audit", "--db", str(db), "--verify", "--deployment", "test", "--from", str(T0 * 2)])
        == 1
    )
    assert "no round stored in this window" in capsys.readouterr().out
    assert (
        main(["audit", "--db", str(db), "--verify", "--deployment", "test", "--market", "XRP/USD"])
        == 1
    )
    assert "XRP/USD: no round that holds it is stored" in capsys.readouterr().out
    assert (
        main(["audit", "--db", str(db), "--verify", "--deployment", "test", "--market", "eth-usd"])
        == 0
    )
    assert "2 round(s) checked" in capsys.readouterr().out


def test_a_config_the_trail_never_recorded_is_pointed_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trail that recorded the configs the daemon loaded (their sha256) and a `--config` that
    is none of them: a note says its exponents may not be the signed ones; the daemon's own file
    gives no note."""
    db, config = tmp_path / "audit.sqlite3", tmp_path / "oracled.toml"
    config.write_text(
        '[sources.alpha]\ntype = "binance"\n'
        + "".join(
            f'[[markets]]\nsymbol = "{m}"\nprice_exponent = {-3 if m.startswith("SOL") else -2}\n'
            f'min_sources = 1\nsources = [{{ source = "alpha", pair = "{m}" }}]\n'
            for m in ("BTC/USD", "ETH/USD", "SOL/USD")
        )
    )
    written(db, 2, config=config)
    assert (
        main(
            ["audit", "--db", str(db), "--verify", "--deployment", "test", "--config", str(config)]
        )
        == 0
    )
    assert "note:" not in capsys.readouterr().out
    config.write_text(config.read_text() + "# edited since\n")
    assert (
        main(
            ["audit", "--db", str(db), "--verify", "--deployment", "test", "--config", str(config)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"note: --config {config} (sha256 " in out
    assert "is none of the 1 config(s) this trail recorded the daemon loading" in out


def test_signatures_are_checked_in_the_deployment_the_auditor_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trail is signed for deployment "test". Without a deployment its signed rounds are not
    checked (exit 4, saying what to give); named "staging" (the same key's other deployment)
    they mismatch, the signature recovering another address than the signer column; the
    daemon's config with `signing.deployment = "test"` proves them, and `--deployment` wins over
    the config's; `--deployment` without `--verify` or `--at` is refused (exit 2)."""
    db = tmp_path / "audit.sqlite3"
    written(db, 3)
    assert main(["audit", "--db", str(db), "--verify"]) == 4
    out = capsys.readouterr().out
    assert "3 not checked" in out and "give --deployment (or a --config with" in out
    assert main(["audit", "--db", str(db), "--verify", "--deployment", "staging"]) == 3
    out = capsys.readouterr().out
    assert "3 mismatched" in out and f"signer column says {KEY.address}" in out
    config = tmp_path / "oracled.toml"
    config.write_text(
        '[signing]\nenabled = true\nkey_env = "K"\ndeployment = "test"\n'
        'lease_file = "oracled-signing-lease.json"\n\n'
        '[sources.alpha]\ntype = "binance"\n\n'
        '[[markets]]\nsymbol = "BTC/USD"\nmin_sources = 1\n'
        'sources = [{ source = "alpha", pair = "BTC/USD" }]\n'
    )
    assert main(["audit", "--db", str(db), "--verify", "--config", str(config)]) == 0
    assert "3 signed and matching" in capsys.readouterr().out
    with_config = ["audit", "--db", str(db), "--verify", "--config", str(config)]
    assert main([*with_config, "--deployment", "staging"]) == 3
    assert main(["audit", "--db", str(db), "--deployment", "test"]) == 2


def test_a_deployment_under_which_no_round_matches_is_pointed_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Walking `--verify` with a mistyped `--deployment` gave every round a mismatch, each
    signature recovering some other address, and nothing but "treat it as tampered" to go on.
    When no round matches and every mismatch is such a recovery, a note says a deployment other
    than the daemon's does exactly that; a changed price (the right key over another root) or
    one changed signer column among matching rounds gets no note."""
    db = tmp_path / "audit.sqlite3"
    written(db, 3)
    assert main(["audit", "--db", str(db), "--verify", "--deployment", "stagign"]) == 3
    out = capsys.readouterr().out
    assert "3 mismatched" in out
    assert "note: no signed round matched, and every signature recovers another address" in out
    assert "deployment 'stagign'" in out and "signing.deployment (GET /v1/info" in out
    assert main(["audit", "--db", str(db), "--verify", "--deployment", "test"]) == 0
    assert "note:" not in capsys.readouterr().out
    sql(db, f"UPDATE rounds SET signer = '{OTHER}' WHERE round = 2")
    assert main(["audit", "--db", str(db), "--verify", "--deployment", "test"]) == 3
    assert "note:" not in capsys.readouterr().out  # two rounds match
    changed = tmp_path / "changed.sqlite3"
    written(changed, 1)
    change_report(changed, 1, "ETH/USD", price="3100.51")
    assert main(["audit", "--db", str(changed), "--verify", "--deployment", "test"]) == 3
    out = capsys.readouterr().out
    assert "1 mismatched" in out and "note:" not in out  # its key, over another root


def test_a_perpetual_markets_stored_mark_is_proved_and_a_changed_one_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BTC/USD is perpetual, so its signed leaf covers its mark: the untouched trail verifies,
    and a stored mark price changed afterwards (what a margin engine would have liquidated on)
    no longer gives the signed root, for --verify (exit 3) and --at alike."""
    db = tmp_path / "audit.sqlite3"
    written(db, 4, perps=("BTC/USD",))
    assert main(["audit", "--db", str(db), "--verify", "--deployment", "test"]) == 0
    assert "4 signed and matching" in capsys.readouterr().out
    db_conn = sqlite3.connect(db)
    (round_id,) = db_conn.execute("SELECT id FROM rounds WHERE round = 3").fetchone()
    dict_id, body = db_conn.execute(
        "SELECT dict, body FROM reports WHERE round_id = ? AND market = 'BTC/USD'", (round_id,)
    ).fetchone()
    (zdict,) = db_conn.execute("SELECT data FROM dictionaries WHERE id = ?", (dict_id,)).fetchone()
    db_conn.close()
    report = msgspec.msgpack.decode(
        zlib.decompressobj(-15, zdict=zdict).decompress(body), type=Report
    )
    assert report.mark is not None and report.mark.price is not None
    moved = msgspec.structs.replace(report.mark, price=f"{float(report.mark.price) * 0.9:.2f}")
    change_report(db, 3, "BTC/USD", mark=moved)
    assert main(["audit", "--db", str(db), "--verify", "--deployment", "test"]) == 3
    assert "mismatch: round 3" in capsys.readouterr().out
    at = ["audit", "--db", str(db), "--deployment", "test", "--market", "BTC/USD", "--at"]
    assert main([*at, str(T0 + 3 * 250)]) == 3


def test_a_stored_row_that_is_garbage_is_named_with_exit_2_and_verify_counts_it_a_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bug: a report body or a tape block that is not what the writer deflated (bytes
    overwritten, a dictionary id changed) ended `oracled audit` in a zlib or KeyError traceback.
    Now the questions that read it answer exit 2 naming the round and market; `--verify` goes
    on and counts that round as a mismatch, since its reports are no longer what was signed."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    sql(db, "UPDATE reports SET body = x'deadbeef' WHERE round_id = 3 AND market = 'BTC/USD'")
    sql(db, "UPDATE reports SET dict = 99 WHERE round_id = 5 AND market = 'ETH/USD'")
    sql(db, "UPDATE tapes SET lines = x'deadbeef' WHERE round_id = 4")
    capsys.readouterr()
    base = ["audit", "--db", str(db)]
    for question in (
        ["--market", "BTC/USD"],
        ["--market", "BTC/USD", "--at", str(T0 + 3 * 250)],
        ["--market", "BTC/USD", "--csv", str(tmp_path / "out.csv")],
    ):
        assert main([*base, *question]) == 2, question
        err = capsys.readouterr().err
        assert err.startswith(f"oracled audit: {db}: round 3 at 2023-11-14T22:13:20.750Z:"), err
        assert "BTC/USD: its stored report cannot be read" in err, err
    assert main([*base, "--tape", str(tmp_path / "tape.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"oracled audit: {db}: round 4 at 2023-11-14T22:13:21.000Z:"), err
    assert "its stored quotes cannot be read" in err, err
    assert main([*base, "--verify", "--deployment", "test"]) == 3
    out = capsys.readouterr().out
    assert "4 signed and matching, 0 unsigned, 2 mismatched" in out
    assert "mismatch: round 3 at 2023-11-14T22:13:20.750Z: BTC/USD: its stored report" in out
    assert "mismatch: round 5 at 2023-11-14T22:13:21.250Z: ETH/USD: its stored report" in out
    assert "dictionary 99" in out


def test_a_report_row_relabelled_as_another_market_or_time_is_found_not_shown_as_verified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bug: the reader finds a market's reports by the row's `market` and `ts` columns and
    showed the body it found, which those columns do not sign. Swapping the two columns of
    BTC/USD's and ETH/USD's rows of round 3 made `--at` print ETH/USD's price as BTC/USD's,
    'verified against the round', and `--verify` pass (the bodies, in tree order, are untouched);
    moving a row's `ts` showed round 2's report as round 3's. Now a row whose body is another
    market's, round's or time's is named with exit 2, and `--verify` counts its round a
    mismatch."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    sql(db, "UPDATE reports SET market = 'X' WHERE round_id = 3 AND market = 'BTC/USD'")
    sql(db, "UPDATE reports SET market = 'BTC/USD' WHERE round_id = 3 AND market = 'ETH/USD'")
    sql(db, "UPDATE reports SET market = 'ETH/USD' WHERE round_id = 3 AND market = 'X'")
    sql(db, "UPDATE reports SET ts = ts - 250 WHERE round_id = 5 AND market = 'SOL/USD'")
    capsys.readouterr()
    base = ["audit", "--db", str(db), "--deployment", "test"]
    assert main([*base, "--market", "BTC/USD", "--at", str(T0 + 3 * 250)]) == 2
    captured = capsys.readouterr()
    assert "3100.31" not in captured.out and "verified" not in captured.out
    assert captured.err.startswith(
        f"oracled audit: {db}: round 3 at 2023-11-14T22:13:20.750Z: BTC/USD: the row holds"
        " ETH/USD's report"
    ), captured.err
    assert main([*base, "--market", "SOL/USD", "--at", str(T0 + 4 * 250)]) == 2
    assert "SOL/USD: the row holds SOL/USD's report of round 5 at 2023-11-14T22:13:21.250Z" in (
        capsys.readouterr().err
    )
    assert main([*base, "--verify"]) == 3
    out = capsys.readouterr().out
    assert "4 signed and matching, 0 unsigned, 2 mismatched" in out
    assert "mismatch: round 3 at 2023-11-14T22:13:20.750Z: ETH/USD: the row holds BTC/USD's" in out
    assert "mismatch: round 5 at 2023-11-14T22:13:21.250Z: SOL/USD: the row holds" in out


def _swap_rounds(path: Path, a: int, b: int) -> None:
    """Store round `a` where round `b` was and back (their rows and everything that names them)."""
    for table, column in (("rounds", "id"), ("reports", "round_id"), ("tapes", "round_id")):
        sql(path, f"UPDATE {table} SET {column} = -1 WHERE {column} = {a}")
        sql(path, f"UPDATE {table} SET {column} = {a} WHERE {column} = {b}")
        sql(path, f"UPDATE {table} SET {column} = {b} WHERE {column} = -1")


def _copy_round(path: Path, source: Path, round_id: int) -> None:
    """Append round row `round_id` of the trail `source` to the trail at `path` with its reports
    (bodies deflated against dictionary 1 in both: the writer made it from the same round)."""
    db = sqlite3.connect(path)
    db.execute("ATTACH ? AS other", (str(source),))
    db.execute(
        "INSERT INTO rounds (ts, round, markets, quotes, root, signature, signer, format) "
        "SELECT ts, round, markets, quotes, root, signature, signer, format FROM other.rounds "
        "WHERE id = ?",
        (round_id,),
    )
    db.execute(
        "INSERT INTO reports SELECT (SELECT max(id) FROM rounds), pos, ts, market, status, dict,"
        " body FROM other.reports WHERE round_id = ?",
        (round_id,),
    )
    db.commit()
    db.close()


def test_a_signed_round_stored_twice_or_out_of_order_is_a_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bug: each round was checked on its own, so a signed round copied in again (from this
    trail, or spliced in from another trail of the same key) or two rounds stored in each
    other's place verified as 7 and 6 matching rounds, exit 0. A key signs each round time once
    and in time order (its signing floor), so in the order the trail stores them, the rounds one
    key signed have growing times: a row that breaks that is a copy or was moved."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    other = tmp_path / "other.sqlite3"
    written(other)  # the same key over the same times: another trail of the same daemon
    _copy_round(db, other, 3)
    verify = ["audit", "--db", str(db), "--verify", "--deployment", "test"]
    assert main(verify) == 3
    out = capsys.readouterr().out
    assert "7 round(s) checked" in out and "6 signed and matching, 0 unsigned, 1 mismatched" in out
    assert (
        "mismatch: round 3 at 2023-11-14T22:13:20.750Z: stored after round 6 at"
        " 2023-11-14T22:13:21.500Z, which the same key signed: a key signs each round time once"
        " and in time order, so this row is a copy or was moved"
    ) in out
    moved = tmp_path / "moved.sqlite3"
    written(moved)
    _swap_rounds(moved, 3, 4)
    assert main(["audit", "--db", str(moved), "--verify", "--deployment", "test"]) == 3
    out = capsys.readouterr().out
    assert "5 signed and matching, 0 unsigned, 1 mismatched" in out
    assert "mismatch: round 3 at 2023-11-14T22:13:20.750Z: stored after round 4 at" in out


def test_rounds_absent_from_the_middle_of_a_run_are_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bug: a round deleted with its reports (or never written) left no trace in `--verify`:
    5 rounds matching, nothing said. A round's number is signed with it, so the rounds missing
    between two stored ones of one run are known; the trail cannot tell a round dropped from a
    full queue or computed late by a blocked loop from one deleted, so they are listed, not
    counted as a mismatch, with the metrics that count the rounds the daemon left out."""
    db = tmp_path / "audit.sqlite3"
    written(db, 8)
    sql(db, "DELETE FROM reports WHERE round_id IN (3, 6, 7)")
    sql(db, "DELETE FROM rounds WHERE id IN (3, 6, 7)")
    assert main(["audit", "--db", str(db), "--verify", "--deployment", "test"]) == 0
    out = capsys.readouterr().out
    assert "5 signed and matching, 0 unsigned, 0 mismatched" in out
    assert "absent: 3 round(s) in 2 gap(s) of a run" in out
    assert (
        "absent: round 3 (1 round) between round 2 at 2023-11-14T22:13:20.500Z and round 4 at"
        " 2023-11-14T22:13:21.000Z"
    ) in out
    assert "absent: round 6 to 7 (2 rounds) between round 5 at" in out
    whole = tmp_path / "whole.sqlite3"
    written(whole)
    assert main(["audit", "--db", str(whole), "--verify", "--deployment", "test"]) == 0
    assert "absent:" not in capsys.readouterr().out


def test_a_trail_cut_short_is_named_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trail whose file lost its tail (a copy cut short, a truncated backup) cannot be opened:
    every question answers exit 2 naming the file; before, the line said SQLite's verdict
    without the file it was about (`oracled audit: database disk image is malformed`)."""
    db = tmp_path / "audit.sqlite3"
    written(db, 40)
    with db.open("r+b") as handle:
        handle.truncate(db.stat().st_size // 2 + 100)
    capsys.readouterr()
    for question in (["--verify", "--deployment", "test"], ["--market", "BTC/USD"], []):
        assert main(["audit", "--db", str(db), *question]) == 2
        assert capsys.readouterr().err == (
            f"oracled audit: {db}: database disk image is malformed\n"
        ), question


def test_at_says_which_parts_of_the_report_its_signature_proves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The signed leaf holds a report's status, price and confidence (and a perpetual's mark),
    not its reasons, its sources or its last good price. A source's value and the reasons
    rewritten in a stored report still verify, so `--at`, which prints them above 'verified
    against the round', says that those are the trail's word: before, nothing told an auditor
    that the sources listed were not what the signature proved."""
    db = tmp_path / "audit.sqlite3"
    written(db)

    def change(report: Report) -> Report:
        first = msgspec.structs.replace(report.sources[0], value="3333.33")
        return msgspec.structs.replace(
            report, reasons=["outlier"], sources=[first, *report.sources[1:]]
        )

    rewrite_report(db, 4, "ETH/USD", change)
    capsys.readouterr()
    at = ["audit", "--db", str(db), "--deployment", "test", "--market", "ETH/USD", "--at"]
    assert main([*at, str(T0 + 4 * 250)]) == 0
    out = capsys.readouterr().out
    assert "3333.33" in out and "[outlier]" in out
    assert (
        "    the signature proves its status, price and confidence; its reasons, sources and last"
        " good price are the trail's word\n"
        f"    signed by {KEY.address} (verified against the round)"
    ) in out
    assert main(["audit", "--db", str(db), "--deployment", "test", "--verify"]) == 0


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("signature", "'abc'"),
        ("root", "'abcdefghijabcdefghijabcdefghij12'"),
        ("format", "'x'"),
        ("round", "'r'"),
        ("markets", "'m'"),
    ],
)
def test_a_round_row_holding_a_value_of_another_type_is_named_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str, value: str
) -> None:
    """SQLite keeps what it is given in any column: a round's signature or root written as
    text, its signed format, number or market count as a word, ended `--verify` and `--at` in
    an AttributeError or TypeError traceback. Now the row is named, exit 2."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    sql(db, f"UPDATE rounds SET {column} = {value} WHERE id = 3")
    capsys.readouterr()
    base = ["audit", "--db", str(db), "--deployment", "test"]
    for question in (["--verify"], ["--market", "BTC/USD", "--at", str(T0 + 3 * 250)]):
        assert main([*base, *question]) == 2, question
        err = capsys.readouterr().err
        assert err.startswith(f"oracled audit: {db}: rounds row 3: {column} holds "), err
        assert err.endswith(": changed after it was written\n"), err


def test_a_round_time_that_is_no_integer_is_named_and_never_the_signing_floor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A round time written as text sorts above every number in SQLite: the summary of the
    trail ended in a ValueError traceback, and the daemon's start, which reads its signing floor
    from the newest signed round time, raised it too (a trail that crashed the daemon). The
    summary now names the row, exit 2; the floor is the newest signed time that is one."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    sql(db, "UPDATE rounds SET ts = 'soon' WHERE id = 6")
    capsys.readouterr()
    assert main(["audit", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"oracled audit: {db}: rounds: a round time 'soon' is no integer: changed after it was"
        " written\n"
    )
    reader = AuditReader(db)
    assert reader.last_signed_ts(KEY.address) == T0 + 5 * 250
    reader.close()


def test_a_round_time_past_2_62_is_never_the_signing_floor(tmp_path: Path) -> None:
    """The daemon's start takes the newest round time its key signed as the floor under which
    it signs nothing. The newest signed round's time changed in the file to 2**63 - 1 (an
    integer, so the check for text let it through) made that the floor: the key signed no
    round again, each skipped as under the floor. No round time is past 2**62: the floor is
    the newest signed time that is one."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    sql(db, "UPDATE rounds SET ts = 9223372036854775807 WHERE id = 6")
    reader = AuditReader(db)
    try:
        assert reader.last_signed_ts(KEY.address) == T0 + 5 * 250
    finally:
        reader.close()


def test_a_stored_time_past_the_calendar_or_no_number_is_shown_as_stored_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A round time changed to 2**63 - 1 (an integer, so no type check stops it) lies past year
    9999: the summary of the trail, and the message naming the changed row, ended in a
    ValueError traceback when they wrote it as a date; a report's time changed to text made
    `--verify` end in a TypeError writing the message that named that row. The time is now
    shown as stored, the row named, with the usual exit codes."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    sql(db, "UPDATE rounds SET ts = 9223372036854775807 WHERE id = 6")
    sql(db, "UPDATE reports SET ts = 'soon' WHERE round_id = 3 AND market = 'BTC/USD'")
    capsys.readouterr()
    assert main(["audit", "--db", str(db)]) == 0
    assert capsys.readouterr().out.endswith(" to 9223372036854775807 (no time)\n")
    assert main(["audit", "--db", str(db), "--market", "ETH/USD"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"oracled audit: {db}: round 6 at 9223372036854775807 (no time): "), err
    sql(db, f"UPDATE rounds SET ts = {T0 + 6 * 250} WHERE id = 6")  # verify names it first
    assert main(["audit", "--db", str(db), "--deployment", "test", "--verify"]) == 3
    out = capsys.readouterr().out
    assert "round 3 at 2023-11-14T22:13:20.750Z: BTC/USD: the row holds" in out, out
    assert "found as BTC/USD's at 'soon' (no time) in this round: changed after it" in out, out


@pytest.mark.parametrize("value", ["-1", "9223372036854775807", "'soon'", "x'00'"])
def test_a_signed_round_moved_out_of_every_window_is_named_not_left_unchecked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """`--verify` checks the rounds whose time is in its window, 0 to 2**62 by default: a round
    time changed to a negative number, to one past that, or to text or bytes (which SQLite
    sorts above every number) took the round out of every window, and `--verify` said of the
    other five "5 signed and matching", exit 0, with the changed round checked nowhere. The
    row is now named, exit 2, as for a round row holding a value of another type."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    sql(db, f"UPDATE rounds SET ts = {value} WHERE id = 2")
    capsys.readouterr()
    for window in ([], ["--from", str(T0), "--to", str(T0 + 10_000)]):
        assert main(["audit", "--db", str(db), "--deployment", "test", "--verify", *window]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"oracled audit: {db}: rounds row 2: ts holds "), err
        assert err.endswith(", no round time (no window holds it): changed after it was written\n")


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE reports SET round_id = 99 WHERE round_id = 3 AND market = 'BTC/USD'",
        "DELETE FROM reports WHERE round_id = 3 AND market = 'BTC/USD'",
        "UPDATE rounds SET id = 99 WHERE id = 3",
    ],
)
def test_a_round_whose_report_of_the_market_was_taken_away_is_checked_with_market(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str
) -> None:
    """`--verify --market BTC/USD` checks the rounds that hold the market. A round whose
    BTC/USD report was moved to another round id, deleted, or left behind by a change of the
    round's own id no longer held it, so it was passed over: "5 signed and matching", exit 0,
    where `--verify` without `--market` finds the round short of a report. A round that holds
    fewer reports than its market count may have held the market: it is checked, a mismatch."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    sql(db, change)
    capsys.readouterr()
    base = ["audit", "--db", str(db), "--deployment", "test", "--verify"]
    assert main([*base, "--market", "BTC/USD"]) == 3
    out = capsys.readouterr().out
    assert "mismatch: round 3 at 2023-11-14T22:13:20.750Z: " in out, out
    assert " report(s) stored for a round of 3" in out, out
    assert main([*base, "--market", "ETH/USD"]) == 3  # the round is short for every market


def test_a_round_whose_report_of_the_market_was_taken_away_with_its_count_is_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The round's market count is a column like any other: one lowered with the BTC/USD
    report deleted made the round hold all its reports and not the market, so `--verify
    --market BTC/USD` passed it over ("5 signed and matching", exit 0), though its signature
    covers a round of 3 and BTC/USD's leaf. A signed round without the market is passed over
    only once it checks out."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    sql(db, "DELETE FROM reports WHERE round_id = 3 AND market = 'BTC/USD'")
    sql(db, "UPDATE rounds SET markets = 2 WHERE id = 3")
    capsys.readouterr()
    base = ["audit", "--db", str(db), "--deployment", "test", "--verify"]
    assert main([*base, "--market", "BTC/USD"]) == 3
    out = capsys.readouterr().out
    assert "mismatch: round 3 at 2023-11-14T22:13:20.750Z: " in out, out
    assert main(base) == 3  # as without --market


def test_a_stored_report_nested_past_the_decoders_depth_is_named_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A report body deflated with its dictionary as the writer does, but holding a key this
    build does not know whose value is 200 000 nested arrays: msgspec raises RecursionError
    skipping it, which the reader did not catch, so the timeline and `--verify` ended in a
    traceback. It is a row that does not read back: exit 2 naming it, a mismatch for
    `--verify`."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    deep = b"\x91" * 200_000 + b"\xc0"  # msgpack: an array of one array of one ... of nil

    def nested(body: bytes) -> bytes:
        fields = msgspec.msgpack.decode(body)
        fields["zz"] = 0
        body = msgspec.msgpack.encode(fields)
        assert body.endswith(b"\xa2zz\x00")
        return body[:-1] + deep

    rewrite_body(db, 3, "ETH/USD", nested)
    capsys.readouterr()
    assert main(["audit", "--db", str(db), "--market", "ETH/USD"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"oracled audit: {db}: round 3 at 2023-11-14T22:13:20.750Z: ETH/USD:")
    assert "its stored report cannot be read (maximum recursion depth" in err, err
    assert main(["audit", "--db", str(db), "--deployment", "test", "--verify"]) == 3
    assert "5 signed and matching, 0 unsigned, 1 mismatched" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["-1", "9223372036854775807", "'soon'"])
def test_a_report_or_round_moved_out_of_every_window_is_named_by_the_timeline_csv_at_and_tape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """The timeline, `--at` and `--csv` find a market's reports by the report row's time, and
    `--tape` the rounds by theirs: a time changed to a negative number, past 2**62 or to text
    left that report or round out of every window, and the CSV said "5 round(s) of BTC/USD"
    (exit 0) with round 3 missing, the tape held five rounds' quotes of six. The row is now
    named, exit 2."""
    db = tmp_path / "audit.sqlite3"
    written(db)
    sql(db, f"UPDATE reports SET ts = {value} WHERE round_id = 3 AND market = 'BTC/USD'")
    capsys.readouterr()
    base = ["audit", "--db", str(db), "--market", "BTC/USD"]
    for question in ([], ["--at", str(T0 + 6 * 250)], ["--csv", str(tmp_path / "out.csv")]):
        assert main([*base, *question]) == 2, question
        err = capsys.readouterr().err
        assert err.startswith(
            f"oracled audit: {db}: BTC/USD: its report row in rounds row 3: ts holds "
        ), err
        assert err.endswith(", no round time (no window holds it): changed after it was written\n")
    assert main(["audit", "--db", str(db), "--market", "ETH/USD"]) == 0  # its rows are whole
    capsys.readouterr()
    sql(db, f"UPDATE rounds SET ts = {value} WHERE id = 3")
    assert main(["audit", "--db", str(db), "--tape", str(tmp_path / "tape.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"oracled audit: {db}: rounds row 3: ts holds "), err
    assert err.endswith(": changed after it was written\n"), err  # OUT holds nothing
    assert not (tmp_path / "tape.jsonl").exists()
