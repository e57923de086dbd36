"""`oracled run` whose wall clock reads START_MS when the daemon is made (and runs on from there),
or the system clock with `now`: a daemon started again on a host whose clock is behind, whatever
its start-up took. test_sign_lease_daemon.py runs it as a process of its own and kills it.

    python lease_daemon.py CONFIG LISTEN START_MS|now
"""

from __future__ import annotations

import sys

from oracled.clock import SystemClock
from oracled.config import load_config
from oracled.logs import setup_logging
from oracled.service import Service, run_service


class ShiftedClock(SystemClock):
    """The system clock, `offset_ms` off; the monotonic clock (intervals, timeouts) is not."""

    __slots__ = ("offset_ms",)

    def __init__(self, offset_ms: int) -> None:
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return super().now_ms() + self.offset_ms


def main(config: str, listen: str, start: str) -> None:
    cfg = load_config(config)
    setup_logging(cfg.log.level, cfg.log.format)
    offset_ms = 0 if start == "now" else int(start) - SystemClock().now_ms()
    run_service(Service(cfg, clock=ShiftedClock(offset_ms), listen=listen), None)


if __name__ == "__main__":
    main(*sys.argv[1:])
