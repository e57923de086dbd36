"""The rule of rounds left unsigned (oracled/publish/signstall.py) before a run's first signed
round, fed times as the service feeds it (milliseconds of the monotonic clock: `AT` + ...):
pure, no daemon (the daemon's tests are tests/runtime/test_stalled_first_signed.py)."""

from __future__ import annotations

import msgspec
from publish_rig import T0, assert_stall_signed

from oracled.publish.signer import RoundSigner, SigningKey
from oracled.publish.signstall import SignedStall

KEY = SigningKey.from_hex("0x" + "44" * 32)
LIMIT_MS = 5_000
INTERVAL = 1_000
AT = 50_000.0  # the monotonic clock at the run's first round, in ms


def _rule(floor: int | None) -> SignedStall:
    rule = SignedStall(lambda: LIMIT_MS, RoundSigner(KEY, "test"))
    rule.floor = floor  # as the service sets it once the lease is taken
    return rule


def test_rounds_unsigned_since_the_start_are_told_past_the_limit_naming_the_floor() -> None:
    """Held at a floor an hour ahead of its rounds, a run leaves every round unsigned: nothing
    is told up to the limit counted from its first round, then once, naming the floor with
    round 0 (none of this run), signed by the key; `unsigned_floor` is the floor until the
    first signed round, which ends the stall. Before, nothing was ever told before it."""
    floor = T0 + 3_600_000
    rule = _rule(floor)
    assert rule.unsigned_floor == floor
    told = [rule.unsigned("floor", AT + k * INTERVAL) for k in range(12)]
    assert told[: LIMIT_MS // INTERVAL + 1] == [None] * (LIMIT_MS // INTERVAL + 1)
    first = told[LIMIT_MS // INTERVAL + 1]
    assert first is not None and not [t for t in told if t is not None and t is not first]
    assert (first.ts, first.round, first.reason) == (floor, 0, "floor")
    notice = msgspec.json.decode(first.notice)
    assert (notice["ts"], notice["round"], notice["message"]) == (floor, 0, first.message)
    assert first.message.startswith("no round signed since the start, for 6.0 s "), first.message
    assert f"up to round time {floor}, are not current" in first.message
    assert_stall_signed(notice, KEY.address)
    assert rule.notice == first.notice  # kept for the outlets that lose it
    assert rule.signed(floor + INTERVAL, 7, AT + 12 * INTERVAL)  # the stall told is over
    assert rule.notice is None and rule.unsigned_floor is None


def test_a_round_being_signed_counts_as_signed_before_the_first_too() -> None:
    """The first round of a run left unsigned, then one handed to the signer and still being
    signed (the rounds after it skipped as `busy`): no sign that signing stopped, so the limit
    counts from the round being signed, not from the first."""
    rule = _rule(T0 - INTERVAL)
    assert rule.unsigned("lease", AT) is None
    signing = AT + 3 * INTERVAL
    for k in range(4, 3 + LIMIT_MS // INTERVAL + 1):
        assert rule.unsigned("busy", AT + k * INTERVAL, signing) is None  # past the first's
    told = rule.unsigned("busy", signing + LIMIT_MS + 1, signing)
    assert told is not None and (told.ts, told.round) == (T0 - INTERVAL, 0)


def test_without_a_floor_nothing_is_told_before_the_first_signed_round() -> None:
    """A key's first start (no lease entry, no trail) has no round to name and no consumer
    holding its reports: rounds left unsigned since its start are told to no one, however
    long; once a round is signed, the rule is the usual one."""
    rule = _rule(None)
    assert all(rule.unsigned("lease", AT + k * INTERVAL) is None for k in range(60))
    assert rule.notice is None and rule.unsigned_floor is None
    rule.signed(T0 + 60 * INTERVAL, 61, AT + 60 * INTERVAL)
    told = rule.unsigned("lease", AT + 60 * INTERVAL + LIMIT_MS + 1)
    assert told is not None and (told.ts, told.round) == (T0 + 60 * INTERVAL, 61)
