"""`oracled run` whose wall clock reads START_MS when the daemon is made (and runs on from there),
or the system clock with `now`: a daemon started again on a host whose clock is behind, whatever
its start-up took. test_sign_lease_daemon.py runs it as a process of
its own and kills it. As `oracled run`, it takes SIGTERM and SIGHUP from its first line on and
refuses a config problem (the signing lease held by another process) with exit code 2.
SIGUSR1 steps its wall clock STEP_MS back, SIGUSR2 STEP_MS forward, as an NTP step would;
SIGHUP reloads CONFIG.

    python lease_daemon.py CONFIG LISTEN START_MS|now
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from oracled.cli import EXIT_CONFIG, _Hangups, _latched, _Stops  # first: the signals

STOPS, HANGUPS = _Stops(), _Hangups()
STEP_MS = 2_000

from oracled.clock import SystemClock  # noqa: E402 - after the signals are taken
from oracled.config import load_config  # noqa: E402
from oracled.errors import ConfigError  # noqa: E402
from oracled.logs import setup_logging  # noqa: E402
from oracled.service import Service, run_service  # noqa: E402


class ShiftedClock(SystemClock):
    """The system clock, `offset_ms` off; the monotonic clock (intervals, timeouts) is not."""

    __slots__ = ("offset_ms",)

    def __init__(self, offset_ms: int) -> None:
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return super().now_ms() + self.offset_ms

    def step(self, by_ms: int) -> None:
        self.offset_ms += by_ms


def main(config: str, listen: str, start: str) -> int:
    try:
        cfg = load_config(config)
        setup_logging(cfg.log.level, cfg.log.format)
        offset_ms = 0 if start == "now" else int(start) - SystemClock().now_ms()
        clock = ShiftedClock(offset_ms)
        signal.signal(signal.SIGUSR1, lambda _s, _f: clock.step(-STEP_MS))
        signal.signal(signal.SIGUSR2, lambda _s, _f: clock.step(STEP_MS))
        service = Service(cfg, clock=clock, listen=listen, config_path=Path(config))
        _latched(HANGUPS, STOPS)(service)
        run_service(service, None)
    except ConfigError as exc:  # as oracled.cli says it
        print(f"oracled: refusing to start: {len(exc.problems)} config problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    return 1 if service.failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
