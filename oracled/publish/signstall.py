"""No round signed for longer than the stall limit, the round loop running: told as a stall.

With signing on, the signed consumers (the NATS subjects, the streams' `signed` frames) get
nothing newer than the last signed round while the signer leaves rounds unsigned (its worker
hands each one to `on_unsigned` with the reason: `busy`, `floor`, `lease`, `error`). A consumer
that trusts a signed report for longer than the daemon's stall limit would keep that frozen
price as current. `SignedStall` is the one rule that says when to tell them and in which words;
`stall_notice` writes the notice (a `StallNotice`: the streams' `stalled` error frame, the round
it names, and the key's signature over them), the same bytes on the bus and on the streams.

Nothing here does I/O or reads a clock: the time is the rounds' own.
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
    """No round signed since round `round` (time `ts`) for longer than the limit: `message`
    says so and why (`reason`, the signer's for the round that passed the limit)."""

    ts: int
    round: int
    reason: str
    message: str


class SignedStall:
    """The newest signed round, and whether an unsigned round is past the stall limit after it.

    `stall_limit_ms` is the API's (3 round intervals, 5 s at least; the daemon hands in its
    own), read at each round: a reload that changes the round interval changes it. A round still
    being signed (`signing`) counts as signed: the round after it is skipped as `busy` while it
    is on its way, which is no sign that signing stopped; a signing that never ends is told
    once its round is past the limit too. Before the first signed round nothing is told: there
    is no signed round to name (a daemon held at its floor after a restart), and the consumers'
    last one, of the run before, is older still.
    """

    __slots__ = ("_last", "_limit_ms")

    def __init__(self, stall_limit_ms: Callable[[], float]) -> None:
        self._limit_ms = stall_limit_ms
        self._last: tuple[int, int] | None = None  # (ts, round) of the newest signed round

    def signed(self, ts: int, round_no: int) -> None:
        """A round was signed: the signed consumers have it."""
        self._last = (ts, round_no)

    def unsigned(self, ts: int, reason: str, signing: int | None = None) -> Unsigned | None:
        """The round of time `ts` was left unsigned (`reason`): what to tell, when no round has
        been signed for longer than the limit by then, else None."""
        last = self._last
        if last is None or ts - max(last[0], signing or 0) <= self._limit_ms():
            return None
        signed_ts, round_no = last
        message = (
            f"no round signed since round {round_no} for {(ts - signed_ts) / 1000:.1f} s (the "
            f"round loop runs; the signer skips its rounds: {reason}), so its signed reports "
            "are not current; signed reports follow with the next signed round"
        )
        return Unsigned(signed_ts, round_no, reason, message)
