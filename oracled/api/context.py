"""What the API reads and calls, injected by the runtime (nothing here creates its own)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass

from oracled.clock import Clock
from oracled.config import Config
from oracled.core import Core
from oracled.publish.hub import Hub
from oracled.publish.signer import RoundSigner
from oracled.sources.stats import SourceStats

__all__ = ["ALIVE_ROUNDS", "READY_ROUNDS", "ApiContext", "round_limit_s"]

#: No round published for this many round intervals (at least `ApiContext.ready_min_s`, 5 s):
#: not ready, whatever the latest round said, and the price endpoints answer 503 `stalled`. A
#: loop that is stuck but not crashed (waiting for a wall clock stepped back, say) served one
#: old round as the latest, as live prices, and stayed ready for ever.
READY_ROUNDS = 3
#: ... for this many (at least `alive_min_s`, 60 s): not alive either, so that a supervisor
#: restarts a loop that does not recover; a start (no round yet) counts from the loop's start.
ALIVE_ROUNDS = 10


def round_limit_s(round_interval_ms: int, rounds: int, floor_s: float) -> float:
    """`rounds` round intervals, `floor_s` at least: the one rule of the API's limits (stalled,
    alive), which the service's notice of rounds left unsigned shares."""
    return max(rounds * round_interval_ms / 1000.0, floor_s)


@dataclass(frozen=True, slots=True)
class ApiContext:
    """The API's window on the running daemon.

    `render_metrics` may block (it walks every collector), so the API calls it in an executor.
    `on_manual(market, paused, actor)` hands an operator pause/resume to the runtime, which
    applies it to the core between rounds, logs it and counts it; with a pauses file it returns
    the file's save, whose result is why it could not be written (None: on disk).
    """

    hub: Hub
    core: Core
    config: Config
    source_stats: Mapping[str, SourceStats]
    clock: Clock
    render_metrics: Callable[[], tuple[bytes, str]]
    on_manual: Callable[[str, bool, str], Future[str | None] | None]
    version: str
    #: Reload the config file without a restart; returns what changed, raises ConfigError.
    on_reload: Callable[[str], Awaitable[Mapping[str, object]]] | None = None
    #: Why there is no `on_reload`: the 409's message (`oracled demo` says it never reloads).
    reload_unavailable: str = "this daemon was not started from a config file"
    #: When (`clock.monotonic()`) the round loop last published a round, or started; None
    #: before it starts. /readyz and /healthz fail when it is too long ago (oracled/api/ops.py).
    round_at: Callable[[], float | None] = lambda: None
    #: How long after its time (s) the latest round was published: a round published late (a
    #: core slower than its clock) is that much older than its publication says, and `stalled`
    #: counts it. Read on the wall clock once, at the publication: a clock stepped later moves
    #: nothing.
    round_late_s: Callable[[], float] = lambda: 0.0
    #: The rounds' key, when they are signed: the stall watch signs its notice with it, so that
    #: the signed subscribers and NATS get a notice a client can verify.
    signer: RoundSigner | None = None
    #: Called once per stalled round, when the streams' subscribers are told (`StallWatch`),
    #: with the notice the signed subscribers got (`oracled.publish.signstall.StallNotice`,
    #: signed by `signer` if any): the NATS sink publishes the same bytes.
    on_stalled: Callable[[bytes], None] | None = None
    #: While the rounds' key has signed no round in this run, its floor (the newest round time
    #: it may have signed before: `SignedStall.unsigned_floor`), else None. The stall watch's
    #: notice names it then (round 0), and tells a loop stuck before its first round: consumers
    #: may hold the run before's reports, newer than this run's unsigned rounds.
    signed_floor: Callable[[], int | None] = lambda: None
    #: The host the API listens on (`api.listen`, or `--listen` over it): a `Host` naming it is
    #: the API's own, whatever `api.allowed_hosts` lists (oracled/api/hosts.py).
    listen_host: str | None = None
    #: The floors of those limits in seconds, whatever the round interval (tests lower them).
    ready_min_s: float = 5.0
    alive_min_s: float = 60.0

    @property
    def current_config(self) -> Config:
        """The config in force now: the one the core runs on, which a reload replaces."""
        return self.core.config

    def round_age_s(self) -> float | None:
        """Seconds since the round loop last published (or started), None before it runs."""
        at = self.round_at()
        return None if at is None else max(0.0, self.clock.monotonic() - at)

    def round_limit_s(self, rounds: int, floor_s: float) -> float:
        """`rounds` round intervals of the config in force, `floor_s` at least."""
        return round_limit_s(self.current_config.oracle.round_interval_ms, rounds, floor_s)

    def stalled(self) -> str | None:
        """Why the latest round is not served as current, or None while rounds come: it is
        older than `READY_ROUNDS` intervals (`ready_min_s` at least), its age being how late it
        was published plus the time since (the round loop has published none for that long, or
        published it late), so it would be read as live prices. Every answer built from it says
        so (code `stalled`): the price endpoints, the streams' snapshots, /readyz."""
        since = self.round_age_s()
        if since is None:
            return None
        age = since + self.round_late_s()
        limit = self.round_limit_s(READY_ROUNDS, self.ready_min_s)
        if age <= limit:
            return None
        return f"the latest round is {age:.1f} s old (limit {limit:g} s): rounds have stalled"
