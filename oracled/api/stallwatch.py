"""The `stalled` notice of the streams: no round of a stalled round loop passes for current.

While the round loop is stalled (`ApiContext.stalled`: no round for 3 intervals and at least
5 s), its latest round is no current price. The streams send no snapshot of it: a request that
would have had one gets the `stalled` error frame instead. And a subscriber already streaming
learns of a stall from nothing but silence, which is also what a `deviation` filter sends for a
price that does not move: it would keep the last price it got as current for as long as the loop
stays stuck. So every subscription of a market is told once per stalled round: by a task that
looks at the round's age every `period_s` (a tenth of the limit, a second at most), or first by
a request that meets the stall. Whichever comes first tells them all; a request that comes after
gets the frame for itself alone.

A client that verifies every price must not let a frame anyone on the way could write freeze a
signer, so the `signed` subscriptions get the stall as a signed notice instead
(`oracled.publish.signstall.StallNotice`: the same words, the round that is no current price,
and the rounds' key's signature over them), made once per stalled round and sent as it is to
the signed subscribers and to a late one while the stall lasts. The same moment hands that very
notice to `ApiContext.on_stalled`, so that the NATS sink tells the bus's subscribers too
(silence there looks like a quiet market as well): one detector and one notice for every way
out. (Rounds that run but go unsigned freeze the signed streams alone; that is told to them by
the daemon as it is to NATS, oracled/publish/signstall.py and `Hub.signed_stalled`, not here.)

A daemon whose key has signed no round since its start (a restart held at its floor, or stuck
before its first round) is told too: its subscribers may hold the run before's reports, newer
than any round of this run, so its notice names the key's floor (round 0) instead of the latest
round, which a consumer would take for old news; and a loop stuck before its first round is
told, where there is such a floor (`_stall`).
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from oracled.api.context import READY_ROUNDS, ApiContext
from oracled.api.errors import encode_json
from oracled.core import RoundResult
from oracled.publish.hub import Subscription
from oracled.publish.signstall import stall_notice

__all__ = ["MAX_PERIOD_S", "STALLED", "StallWatch"]

#: Error frame code, answering no request: the round loop is stalled, so its latest round is no
#: current price (the price endpoints answer 503 `stalled`); reports follow with the next round.
STALLED = "stalled"
MAX_PERIOD_S = 1.0


class _NoRound:
    """The stalled round of a loop stuck before its first round."""


_NO_ROUND = _NoRound()


class StallWatch:
    """One per application: `start` on startup, `stop` on cleanup; the stream handlers ask it."""

    __slots__ = ("_ctx", "_notice", "_task", "_told")

    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx
        self._task: asyncio.Task[None] | None = None
        # the round whose stall every subscriber heard of (_NO_ROUND: a stall before the first)
        self._told: RoundResult | _NoRound | None = None
        self._notice = b""  # and the signed subscribers' notice of it

    @property
    def period_s(self) -> float:
        ctx = self._ctx
        return min(MAX_PERIOD_S, ctx.round_limit_s(READY_ROUNDS, ctx.ready_min_s) / 10)

    def _stall(self) -> tuple[str, int, int] | None:
        """While the loop is stalled: the `stalled` frame's message and the round (`ts`,
        `round`) its signed notice names; else None.

        That round is the latest, unless the key has signed none in this run: then its floor,
        round 0 (`ApiContext.signed_floor`), since the latest round may be older than the
        reports of the run before that consumers hold, and a notice older than those is old
        news to them. So a loop stuck before its first round is told too, where there is a
        floor; without one (no signer, a key's first start) nobody holds a report of the key,
        and before the first round there is no round to take for current."""
        ctx = self._ctx
        stalled = ctx.stalled()
        if stalled is None:
            return None
        latest, floor = ctx.hub.latest_result, ctx.signed_floor()
        if latest is None:
            if floor is None:
                return None
            age = ctx.round_age_s() or 0.0
            limit = ctx.round_limit_s(READY_ROUNDS, ctx.ready_min_s)
            message = (
                f"no round since the round loop started {age:.1f} s ago (limit {limit:g} s): "
                f"rounds have stalled, so this key's reports, up to round time {floor}, are not "
                "current; reports follow with the next round"
            )
            return message, floor, 0
        message = f"{stalled}, so its reports are not current; reports follow with the next round"
        return (message, latest.ts, latest.round) if floor is None else (message, floor, 0)

    def message(self) -> str | None:
        """The `stalled` frame's message while the loop is stalled, else None."""
        stall = self._stall()
        return None if stall is None else stall[0]

    def frame(self) -> bytes | None:
        """The `stalled` frame while the loop is stalled, else None."""
        message = self.message()
        if message is None:
            return None
        return encode_json({"type": "error", "code": STALLED, "message": message})

    def tell(self, sub: Subscription | None = None) -> bytes | None:
        """While stalled: tell every subscriber of a market, once per stalled round (`sub`, a
        subscription that just met the stall, among them); or, when they were told already,
        return the frame for `sub` alone (the stall's signed notice for a signed one). None
        when there is nothing (more) to send."""
        stall = self._stall()
        if stall is None:
            return None
        message, ts, round_no = stall
        latest = self._ctx.hub.latest_result
        stalled_round = _NO_ROUND if latest is None else latest
        if stalled_round is self._told:
            if sub is None:
                return None
            if sub.signed:  # signed once per stall: a client cannot make it sign again
                return self._notice
            return encode_json({"type": "error", "code": STALLED, "message": message})
        self._told = stalled_round
        self._notice = stall_notice(message, ts, round_no, self._ctx.signer)
        frame = encode_json({"type": "error", "code": STALLED, "message": message})
        self._ctx.hub.tell(frame, self._notice)
        if self._ctx.on_stalled is not None:
            self._ctx.on_stalled(self._notice)
        return None

    async def start(self, app: web.Application) -> None:
        self._task = asyncio.create_task(self._watch(), name="api-stall-watch")

    async def stop(self, app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            self.tell()
