"""What the API reads and calls, injected by the runtime (nothing here creates its own)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass

from oracled.clock import Clock
from oracled.config import Config
from oracled.core import Core
from oracled.publish.hub import Hub
from oracled.sources.stats import SourceStats

__all__ = ["ApiContext"]


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
    #: The floors of those limits in seconds, whatever the round interval (tests lower them).
    ready_min_s: float = 5.0
    alive_min_s: float = 60.0

    @property
    def current_config(self) -> Config:
        """The config in force now: the one the core runs on, which a reload replaces."""
        return self.core.config
