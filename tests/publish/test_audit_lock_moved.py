"""The audit trail's lock file (`<db>.lock`) moved away with its directory and back: the real
writer thread holds its rounds back in its queue meanwhile, and writes them, in order, once the
very file is back; lost while away, it stops for good (docs/publishing.md, *Audit trail*)."""

from __future__ import annotations

from pathlib import Path

from audit_rig import Feed, trail, wait_for
from prometheus_client.parser import text_string_to_metric_families
from publish_rig import T0, make_config
from structlog.testing import capture_logs

from oracled.metrics import Metrics, MetricsInputs
from oracled.publish.audit import AuditReader, AuditStats, AuditTrail
from oracled.publish.signer import RoundSigner, SigningKey

MISSING = "audit trail lock file missing: rounds wait in the queue until it is back"
BACK = "audit trail lock file back: rounds are written again"
LOST = "audit trail lock lost: no round is written until a restart"
STOPPED = "audit trail stopped with its lock file away: rounds held back are not written"


def _stored(db: Path) -> list[tuple[int, int]]:
    """(round, quotes) of each stored round, in the order written."""
    reader = AuditReader(db)
    try:
        return [(r.round, r.quotes) for r in reader.rounds(0, T0 * 2)]
    finally:
        reader.close()


def _lock_events(logs: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(e["log_level"], e["event"]) for e in logs if "lock" in str(e["event"])]


def _moved_away(tmp_path: Path, **settings: object) -> tuple[Path, Path, AuditTrail, Feed]:
    """A trail in `tmp_path/state` that stored rounds 1 to 3, its directory then moved to
    `tmp_path/away`, and round 4 found held back by the writer."""
    state, away = tmp_path / "state", tmp_path / "away"
    state.mkdir()
    audit = trail(state / "audit.sqlite3", **settings)
    audit._away_poll_s = 0.01  # looked at often: the test waits for what it sees
    feed = Feed(make_config(), audit)
    for _ in range(3):
        feed.round()
    wait_for(lambda: audit.stats.rounds == 3)
    state.rename(away)
    feed.round()
    wait_for(lambda: audit.lock_away)
    return state, away, audit, feed


def test_rounds_wait_while_the_lock_file_is_away_and_go_in_in_order_once_it_is_back(
    tmp_path: Path,
) -> None:
    """Moved away, the lock file still excludes everyone: the rounds wait (none goes into the
    moved database through the open connection; `oracled_audit_up` 0, said once as an error),
    and once it is back they are written first, then the rounds after them, each once and in
    order, with every quote. Before, any lock file not at its path was lost for good."""
    with capture_logs() as logs:
        state, away, audit, feed = _moved_away(tmp_path)
        feed.round()
        assert _stored(away / "audit.sqlite3") == [(1, 9), (2, 9), (3, 9)]
        assert not audit.stats.ok and audit.stats.rounds == 3
        away.rename(state)
        wait_for(lambda: audit.stats.rounds == 5)
        for _ in range(2):
            feed.round()
        assert audit.close()
    assert _stored(state / "audit.sqlite3") == [(n, 9) for n in range(1, 8)]
    assert audit.stats.ok and audit.stats.write_errors == 0
    assert audit.stats.dropped == {"writer_behind": 0, "lock_away": 0}
    assert _lock_events(logs) == [("error", MISSING), ("info", BACK)]


def test_rounds_past_the_queue_while_the_lock_file_is_away_are_dropped_counted_quotes_kept(
    tmp_path: Path,
) -> None:
    """The queue holds `audit.queue` rounds while the writer waits: past it rounds are dropped
    and counted (as `lock_away`, not as from a slow disk), their quotes carried into the next
    round queued once there is room, so the trail's tape still has every quote; the rounds kept
    go in in order."""
    state, away, audit, feed = _moved_away(tmp_path, queue=4)
    for _ in range(10):  # rounds 5 to 14: 5 to 8 queued behind round 4, 9 to 14 dropped
        feed.round()
    assert audit.stats.dropped == {"writer_behind": 0, "lock_away": 6}
    away.rename(state)
    wait_for(lambda: audit.stats.rounds == 8)
    for _ in range(2):
        feed.round()
    assert audit.close()
    stored = _stored(state / "audit.sqlite3")
    assert [n for n, _ in stored] == [*range(1, 9), 15, 16]
    assert [q for _, q in stored] == [9] * 8 + [9 * 7, 9]  # 9 to 14's quotes in with 15
    assert audit.stats.write_errors == 0


def _drop_series(stats: AuditStats, feed: Feed) -> dict[str, dict[str, float]]:
    """The audit trail's drop counters as /metrics shows them: {metric: {reason: value}}."""
    metrics = Metrics(
        MetricsInputs(
            core=feed.core,
            latest=lambda: None,
            source_stats={},
            now_ms=lambda: feed.now,
            stream_subscribers=lambda: 0,
            stream_dropped=dict,
            audit=stats,
        )
    )
    body, _ = metrics.render()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name.startswith("oracled_audit_dropped_") and sample.name.endswith("_total"):
                out.setdefault(sample.name, {})[sample.labels["reason"]] = sample.value
    return out


def test_what_a_full_queue_drops_while_the_lock_file_is_away_is_counted_as_lock_away(
    tmp_path: Path,
) -> None:
    """While the writer holds its rounds for its lock file, what the full queue drops is
    counted with `reason="lock_away"`, not as a writer behind a slow disk (`writer_behind`):
    the rounds, the signature of a round queued, an operator's pause, and the quotes carried
    past the cap. /metrics shows every reason of each drop counter from the start, those that
    counted nothing at 0; once the lock file is back the rounds held go in."""
    state, away, audit, feed = _moved_away(tmp_path, queue=4)
    audit.carry_max = 20  # quotes carried at most; a round brings 9
    before = _drop_series(audit.stats, feed)
    assert before == {
        "oracled_audit_dropped_rounds_total": {"writer_behind": 0.0, "lock_away": 0.0},
        "oracled_audit_dropped_quotes_total": {
            "writer_behind": 0.0,
            "lock_away": 0.0,
            "write_error": 0.0,
        },
        "oracled_audit_dropped_events_total": {"writer_behind": 0.0, "lock_away": 0.0},
        "oracled_audit_dropped_signatures_total": {"writer_behind": 0.0, "lock_away": 0.0},
    }
    signer = RoundSigner(SigningKey.generate(), "test")
    for _ in range(3):  # rounds 5 to 7 queued behind round 4, which the writer holds
        feed.round()
    feed.round(signer)  # round 8 fills the queue; its signature finds it full
    for _ in range(3):  # rounds 9 to 11 dropped: 9 quotes carried, 18, then 27 > 20 dropped
        feed.round()
    audit.record_action(feed.now + 1, "alice", "pause", "BTC/USD")
    assert audit.stats.dropped == {"writer_behind": 0, "lock_away": 3}
    assert audit.stats.signatures_dropped == {"writer_behind": 0, "lock_away": 1}
    assert audit.stats.dropped_events == {"writer_behind": 0, "lock_away": 1}
    assert audit.stats.dropped_quotes == {"writer_behind": 0, "lock_away": 27, "write_error": 0}
    assert _drop_series(audit.stats, feed) == {
        "oracled_audit_dropped_rounds_total": {"writer_behind": 0.0, "lock_away": 3.0},
        "oracled_audit_dropped_quotes_total": {
            "writer_behind": 0.0,
            "lock_away": 27.0,
            "write_error": 0.0,
        },
        "oracled_audit_dropped_events_total": {"writer_behind": 0.0, "lock_away": 1.0},
        "oracled_audit_dropped_signatures_total": {"writer_behind": 0.0, "lock_away": 1.0},
    }
    away.rename(state)
    wait_for(lambda: audit.stats.rounds == 8)
    assert audit.close()
    assert _stored(state / "audit.sqlite3") == [(n, 9) for n in range(1, 9)]


def test_a_lock_lost_while_away_stops_the_trail_for_good(tmp_path: Path) -> None:
    """While the directory is away another is made at its path with a lock file of its own (a
    second writer could lock it): the trail is lost for good, the round held back and every
    later one counted as not written, said once as an error; nothing goes into either
    database."""
    with capture_logs() as logs:
        state, away, audit, feed = _moved_away(tmp_path)
        state.mkdir()
        (state / "audit.sqlite3.lock").touch()
        wait_for(lambda: audit.lock_lost)
        for _ in range(2):
            feed.round()
        wait_for(lambda: audit.stats.write_errors == 3)
        assert audit.close()
    assert _stored(away / "audit.sqlite3") == [(1, 9), (2, 9), (3, 9)]
    assert sorted(p.name for p in state.iterdir()) == ["audit.sqlite3.lock"]
    assert _lock_events(logs) == [("error", MISSING), ("error", LOST)]


def test_a_stop_while_the_lock_file_is_away_ends_without_waiting_for_it(tmp_path: Path) -> None:
    """A stop while the lock file is away does not wait for it: the rounds held back are
    counted as not written (said once), the moved trail keeps what it had, and a writer started
    once it is back takes the lock and writes on."""
    with capture_logs() as logs:
        state, away, audit, feed = _moved_away(tmp_path)
        feed.round()
        assert audit.close()
    assert audit.stats.write_errors == 2 and audit.stats.rounds == 3
    assert _lock_events(logs) == [("error", MISSING), ("error", STOPPED)]
    away.rename(state)
    again = trail(state / "audit.sqlite3")
    later = Feed(make_config(), again)
    later.now = feed.now
    later.round()
    assert again.close()
    assert _stored(state / "audit.sqlite3") == [(1, 9), (2, 9), (3, 9), (1, 9)]
