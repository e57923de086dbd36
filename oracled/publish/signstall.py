"""No round signed for longer than the stall limit, the round loop running: told as a stall.

With signing on, the signed consumers (the NATS subjects, the streams' `signed` frames) get nothing
newer than the last signed round while the signer leaves rounds unsigned (its worker hands each one
to `on_unsigned` with the reason: `busy`, `floor`, `lease`, `error`, `stale`). A consumer that
trusts a signed report for longer than the daemon's stall limit would keep that frozen price as
current. `SignedStall` is the one rule that says when to tell them and in which words, and keeps the
notice while the stall lasts; `stall_notice` writes it (a `StallNotice`: the streams' `stalled`
error frame, the round it names, and the key's signature over them). The service owns the one
`SignedStall` and hands its notice to every outlet (the hub, the NATS sink), so that the bus and the
streams get the same bytes, decided once per round.

Nothing here does I/O or reads a clock: the times are handed in, the monotonic clock's (as the
API's stall watch reads it), not the rounds' own, so that a wall clock stepped forward, whose
next round time is that far ahead, is no time without a signed round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from oracled.publish.signer import RoundSigner

__all__ = ["SignedStall", "StallNotice", "Unsigned", "stall_notice"]

_ENCODER = msgspec.json.Encoder()


class StallNotice(msgspec.Struct):
    """The stream's `stalled` error frame (`type`, `code`, `message`), plus the round that is no
    current price (`ts`, `round`) and the key that signed the rounds (`signer`, `deployment`;
    null when signing is off), since a bus carries many daemons; and that key's signature over
    `OracleStall(ts, round, message)` (`signature`, 0x and 130 hex; null without a signer),
    last, so that a reader of the keys before it reads on."""

    type: str
    code: str
    message: str
    ts: int
    round: int
    signer: str | None
    deployment: str | None
    signature: str | None = None


def stall_notice(
    message: str,
    ts: int,
    round_no: int,
    signer: RoundSigner | None,
    signed_by: tuple[str | None, str | None] = (None, None),
) -> bytes:
    """The JSON of a StallNotice of round (`ts`, `round_no`), signed by `signer` when given
    (else naming `signed_by`, the signer and deployment of the rounds, unsigned)."""
    address, deployment = signed_by
    signature = None
    if signer is not None:
        address, deployment = signer.address, signer.deployment
        signature = "0x" + signer.sign_stall(ts, round_no, message).hex()
    notice = StallNotice("error", "stalled", message, ts, round_no, address, deployment, signature)
    return _ENCODER.encode(notice)


@dataclass(frozen=True, slots=True)
class Unsigned:
    """No round signed since round `round` (time `ts`; round 0: none since the start, `ts` the
    key's floor) for longer than the limit: `message` says so and why (`reason`, the signer's
    for the round that passed the limit); `notice`, the signed StallNotice's JSON that every
    outlet sends."""

    ts: int
    round: int
    reason: str
    message: str
    notice: bytes


class SignedStall:
    """The newest signed round, whether an unsigned round is past the stall limit after it, and
    the notice that says so, made once per stall (until the next signed round).

    `stall_limit_ms` is the API's (3 round intervals, 5 s at least; the daemon hands in its
    own), read at each round: a reload that changes the round interval changes it. Times (`at`,
    `signing`) are milliseconds of the monotonic clock. A round still being signed (`signing`:
    when it was handed to the signer) counts as signed: the round after it is skipped as `busy`
    while it is on its way, which is no sign that signing stopped; a signing that never ends is
    told once its round is past the limit too.

    Before this run's first signed round (a restart held at its floor after a crash or with the
    clock behind, a lease that cannot be written at start), the consumers still hold the run
    before's signed reports, as current as ever to one that trusts them longer than the limit:
    told the same way once the limit has passed since the first round came back unsigned,
    naming `floor` with round 0 (rounds are numbered from 1: none of this run). The floor is
    the newest round time the key may have signed, so the notice is not older than any report
    a consumer holds of it (one older is old news to a consumer), and every round signed after
    it is newer. Without a floor (the key's first start) nothing is told: no consumer holds its
    reports.
    """

    __slots__ = ("_first", "_last", "_limit_ms", "_signer", "floor", "notice")

    def __init__(self, stall_limit_ms: Callable[[], float], signer: RoundSigner) -> None:
        self._limit_ms = stall_limit_ms
        self._signer = signer  # signs the notice, as it signs the rounds
        #: (ts, round, when it was signed) of the newest signed round
        self._last: tuple[int, int, float] | None = None
        self._first: float | None = None  # when this run's first round came back unsigned
        #: The newest round time the key may have signed before this run (the signer's floor
        #: once the lease is taken), or None: what a notice names before the first signed round.
        self.floor: int | None = None
        #: The notice of the stall going on (kept: an outlet that lost it sends it again), or None.
        self.notice: bytes | None = None

    @property
    def unsigned_floor(self) -> int | None:
        """`floor` while this run has signed no round, else None: what a signed notice of a
        stalled round loop names then (round 0), since the latest round, unsigned, may be older
        than the reports consumers hold (a restart with the clock behind)."""
        return self.floor if self._last is None else None

    def signed(self, ts: int, round_no: int, at: float) -> bool:
        """A round was signed (at `at`): the signed consumers have it, and a stall is over (True
        if one had been told)."""
        self._last = (ts, round_no, at)
        told, self.notice = self.notice is not None, None
        return told

    def unsigned(self, reason: str, at: float, signing: float | None = None) -> Unsigned | None:
        """A round was left unsigned (`reason`) at `at`: the stall to tell, when no round has
        been signed for longer than the limit by then and it is not told yet, else None
        (`notice` holds a stall told already, until the next signed round)."""
        last = self._last
        if self.notice is not None:
            return None  # told already
        if last is None:
            return self._unsigned_since_start(reason, at, signing)
        since = last[2] if signing is None else max(last[2], signing)
        if at - since <= self._limit_ms():
            return None
        signed_ts, round_no, signed_at = last
        message = (
            f"no round signed since round {round_no} for {(at - signed_at) / 1000:.1f} s (the "
            f"round loop runs; the signer skips its rounds: {reason}), so its signed reports "
            "are not current; signed reports follow with the next signed round"
        )
        self.notice = stall_notice(message, signed_ts, round_no, self._signer)
        return Unsigned(signed_ts, round_no, reason, message, self.notice)

    def _unsigned_since_start(
        self, reason: str, at: float, signing: float | None
    ) -> Unsigned | None:
        """`unsigned` before this run's first signed round: measured from its first round."""
        if self._first is None:
            self._first = at
        floor = self.floor
        since = self._first if signing is None else max(self._first, signing)
        if floor is None or at - since <= self._limit_ms():
            return None
        message = (
            f"no round signed since the start, for {(at - self._first) / 1000:.1f} s (the round "
            f"loop runs; the signer skips its rounds: {reason}), so this key's signed reports, "
            f"up to round time {floor}, are not current; signed reports follow with the next "
            "signed round"
        )
        self.notice = stall_notice(message, floor, 0, self._signer)
        return Unsigned(floor, 0, reason, message, self.notice)
