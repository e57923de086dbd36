"""A real daemon under a wall clock that misbehaves, fuzzed, judged by what it publishes.

The daemon (`Service`, signing with a lease and keeping an audit trail) prices one market from
two loopback venues: Binance, whose frames carry no venue time, and OKX, whose frames carry the
venue's own (the real time). Its injected clock's wall time starts skewed from the real time
(so that OKX's frame times are ahead of or behind it by up to 3 s, past `max_clock_skew_ms`),
then follows a hypothesis-chosen schedule of steps: back by 1 ms .. 1 h, forward by 1 ms .. 1
day, or standing still while monotonic time runs. A step back is undone after a moment, or,
past the stall limit, once the stall has been told, as an operator or NTP puts a clock right.
A consumer sees the daemon through a plain and a signed stream subscription and the audit
trail, and checks what docs/ARCHITECTURE.md, docs/runbook.md (*Probes*), docs/pricing.md and
docs/publishing.md promise:

- per market, round numbers and round times only grow, times on the round grid, none twice;
  no round time is signed twice (the stream's signed frames, the trail's signed rounds);
- a live price uses no quote older than the market's `max_age_ms` by the round's own time, nor
  one more than `oracle.max_clock_skew_ms` ahead of it;
- the daemon keeps running, publishes and signs again once the clock is past its last round,
  and says `wall clock went back: rounds wait for it` for a step back it waited out, `wall
  clock went forward: its rounds are computed late` for a step forward of rounds, and `wall
  clock stands still: rounds wait for it` for a wall that stopped;
- the stall limits are measured on the monotonic clock: a stall is told (`stalled`) when a step
  back makes the rounds wait past the limit, and a step forward, a short step back or a short
  still wall tells none, on the plain streams nor on the signed ones.

A step forward is a round loop that was blocked, to the round loop: it computes the rounds of
the step late, up to `MAX_CATCH_UP_ROUNDS`, on the event loop (1 to 3 ms each here), so a long
step holds every signed round back for real and may be told as their stall; the steps forward
kept short of that are `SHORT_FORWARD_MS`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from one_venue import reading, serving_api, signing_table, stalling_config, stalls
from structlog.testing import capture_logs

from oracled.config import Config, parse_config
from oracled.publish.audit import AuditReader
from oracled.service import Service
from oracled.sim import BinanceSim
from oracled.sim.okx import OkxSim

MARKET = "BTC/USDT"
INTERVAL_MS = 50
MAX_AGE_MS = 1_000
SKEW_MS = 2_000  # oracle.max_clock_skew_ms, the default
STALL_S = 1.5  # the service's ready_min_s: the stall limit (3 rounds are 0.15 s)
HOLD_S = 0.25  # real time each step is held for
#: A step back at most this long is waited out by the rounds well within the stall limit.
SHORT_BACK_MS = 500
#: A step back at least this long is held until its stall is told, then undone.
LONG_BACK_MS = 3_000
#: A step forward at most this long is 200 rounds computed late: well within the limit.
SHORT_FORWARD_MS = 10_000
SAFETY_S = 45.0  # guards against hangs only
WENT_BACK = "wall clock went back: rounds wait for it"
WENT_FORWARD = "wall clock went forward: its rounds are computed late"
STANDS_STILL = "wall clock stands still: rounds wait for it"


class FuzzClock:
    """The real monotonic time; a wall time of the real one plus `offset_ms`, or held at
    `still_ms` (a wall clock standing still while monotonic time runs)."""

    def __init__(self, offset_ms: int) -> None:
        self.offset_ms = offset_ms
        self.still_ms: int | None = None

    def now_ms(self) -> int:
        if self.still_ms is not None:
            return self.still_ms
        return time.time_ns() // 1_000_000 + self.offset_ms

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(frozen=True)
class Step:
    kind: str  # back, forward, still
    ms: int  # how far (back, forward); 0 for still

    @property
    def stalls(self) -> bool | None:
        """Whether it makes the rounds wait past the stall limit (None: maybe, or the signed
        rounds only, held back by the rounds the step makes the loop compute late)."""
        if self.kind == "back":
            return True if self.ms >= LONG_BACK_MS else None if self.ms > SHORT_BACK_MS else False
        if self.kind == "forward" and self.ms > SHORT_FORWARD_MS:
            return None
        return False


_STEPS = st.one_of(
    st.builds(Step, st.just("back"), st.integers(1, 3_600_000)),
    st.builds(Step, st.just("forward"), st.integers(1, 86_400_000)),
    st.builds(Step, st.just("still"), st.just(0)),
)


def _config(binance: BinanceSim, okx: OkxSim, tmp_path: Path) -> Config:
    _, signing = signing_table(tmp_path, tmp_path / "signing-lease.json", lease_window_ms=1_000)
    return parse_config(
        {
            "oracle": {"round_interval_ms": INTERVAL_MS, "resume_rounds": 1},
            "api": {"listen": "127.0.0.1:0", "admin_token_env": None},
            "signing": signing,
            "audit": {
                "enabled": True,
                "path": str(tmp_path / "audit.sqlite3"),
                "reserve_bytes": 65_536,
            },
            "sources": {
                "bn": {"type": "binance", "ws_url": binance.ws_url, "rest_url": binance.rest_url},
                "ok": {"type": "okx", "ws_url": okx.ws_url, "rest_url": okx.rest_url},
            },
            "markets": [
                {
                    "symbol": MARKET,
                    "min_sources": 1,
                    "max_age_ms": MAX_AGE_MS,
                    "sources": [
                        {"source": "bn", "pair": MARKET},
                        {"source": "ok", "pair": MARKET},
                    ],
                }
            ],
        }
    )


def _data(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f["data"] for f in frames if f.get("type") == kind]


async def _until(check: Callable[[], object], what: str) -> None:
    """Poll `check`, state the daemon's tasks change, until it holds (bounded: a failure, not a
    hang)."""
    try:
        async with asyncio.timeout(10):
            while not check():  # noqa: ASYNC110 - polling state owned by other tasks
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def _check_rounds(reports: list[dict[str, Any]], where: object) -> None:
    """Round numbers and times only grow, times on the round grid: none twice."""
    rounds = [r["round"] for r in reports]
    times = [r["ts"] for r in reports]
    assert all(a < b for a, b in itertools.pairwise(rounds)), (where, rounds)
    assert all(a < b for a, b in itertools.pairwise(times)), (where, times)
    assert all(t % INTERVAL_MS == 0 for t in times), where


def _check_ages(reports: list[dict[str, Any]], where: object) -> None:
    """A live price uses no quote stale by its round's time, nor one from too far ahead."""
    for report in reports:
        if report["status"] not in ("active", "degraded"):
            continue
        used = [s for s in report["sources"] if s["used"]]
        assert used, (where, report)
        for source in used:
            assert -SKEW_MS <= source["age_ms"] <= MAX_AGE_MS, (where, report)


@settings(
    max_examples=6,
    derandomize=True,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each example runs a daemon
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(skew_ms=0, steps=[Step("forward", 5_000), Step("still", 0)])
@given(skew_ms=st.integers(-3_000, 3_000), steps=st.lists(_STEPS, min_size=1, max_size=4))
async def test_a_misbehaving_wall_clock_never_makes_the_daemon_publish_untruths(
    tmp_path: Path, skew_ms: int, steps: list[Step]
) -> None:
    """Whatever the wall clock does (see the module docstring): the rounds a consumer gets only
    go forward in number and time, no round time is signed twice, no live price stands on a
    stale or far-future quote, the daemon runs on and publishes and signs again once its clock
    is back, a stall is told to the streams when the clock made the rounds wait past the limit
    and never for a step that did not, and a step back that was waited out is logged."""
    run = tmp_path / f"run-{time.monotonic_ns()}"
    run.mkdir()
    async with (
        BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0, volatility=0.0) as binance,
        OkxSim({"BTC-USDT": 50_000.0}, rate_hz=20.0, volatility=0.0) as okx,
    ):
        clock = FuzzClock(skew_ms)
        service = Service(_config(binance, okx, run), clock=clock)
        service.ready_min_s, service.alive_min_s = STALL_S, 60.0
        signed_request = {"op": "subscribe", "markets": [MARKET], "signed": True}
        with capture_logs() as logs:
            async with (
                serving_api(service, SAFETY_S) as (http, base),
                reading(http, base, {"op": "subscribe", "markets": [MARKET]}) as plain,
                reading(http, base, signed_request) as signed,
            ):
                await _until(lambda: len(_data(signed, "signed")) >= 3, "first signed rounds")
                for step in steps:
                    where = (skew_ms, steps, step)
                    seen = len(_data(plain, "report")), len(_data(signed, "signed"))
                    told = len(stalls(plain)), len(stalls(signed))
                    went = sum(e["event"] == WENT_BACK for e in logs)
                    ahead = sum(e["event"] == WENT_FORWARD for e in logs)
                    still = sum(e["event"] == STANDS_STILL for e in logs)
                    high = clock.now_ms()  # the wall time the rounds reached
                    if step.kind == "back":
                        clock.offset_ms -= step.ms
                        if step.stalls:
                            await _until(
                                lambda told=told: len(stalls(plain)) > told[0], f"{where} told"
                            )
                        else:
                            await asyncio.sleep(HOLD_S)
                        if clock.now_ms() < high:  # put right: back to where it was
                            clock.offset_ms += high - clock.now_ms()
                    elif step.kind == "forward":
                        clock.offset_ms += step.ms
                        await asyncio.sleep(HOLD_S)
                    else:
                        clock.still_ms = clock.now_ms()
                        await asyncio.sleep(HOLD_S)
                        clock.still_ms = None
                    # The daemon runs on: rounds, and signed ones, come again.
                    await _until(
                        lambda seen=seen: (
                            len(_data(plain, "report")) >= seen[0] + 3
                            and len(_data(signed, "signed")) >= seen[1] + 3
                        ),
                        f"{where} rounds after it",
                    )
                    assert not service.failed, where
                    if step.kind == "forward" and step.ms > 2 * INTERVAL_MS:
                        assert sum(e["event"] == WENT_FORWARD for e in logs) > ahead, where
                    if step.kind == "still":
                        assert sum(e["event"] == STANDS_STILL for e in logs) > still, where
                    if step.stalls:
                        assert sum(e["event"] == WENT_BACK for e in logs) > went, where
                    elif step.stalls is False:  # no stall told, plain or signed
                        now_told = len(stalls(plain)), len(stalls(signed))
                        assert now_told == told, (where, stalls(plain), stalls(signed))
                    else:  # the plain rounds never stall for a step forward
                        assert step.kind == "back" or len(stalls(plain)) == told[0], where
                reports = _data(plain, "report")
                signed_rounds = _data(signed, "signed")
        where = (skew_ms, steps)
        _check_rounds(reports, where)
        _check_rounds(signed_rounds, where)  # so: no round time signed twice
        _check_ages(reports, where)
        reader = AuditReader(run / "audit.sqlite3")
        try:
            trail = reader.rounds(0, 1 << 62)
        finally:
            reader.close()
        times = [r.ts for r in trail]  # signed or not, each round time once
        assert all(a < b for a, b in itertools.pairwise(times)), where


async def test_a_wall_clock_standing_still_is_logged_once_and_the_rounds_go_on_after_it() -> None:
    """A wall clock that stops while monotonic time runs (a broken clock source) holds the
    rounds, whose times only grow: said once, `wall clock stands still: rounds wait for it`,
    with how far it lags the monotonic clock; once it moves again the rounds go on, without
    a line for a clock stepped back or forward. Before, rounds stopped without a word in the
    log (OracledRoundsStalled's runbook pointed at `wall clock went back` alone)."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        clock = FuzzClock(0)
        service = Service(stalling_config(sim), clock=clock)
        with capture_logs() as logs:
            async with (
                serving_api(service, SAFETY_S) as (http, base),
                reading(http, base, {"op": "subscribe", "markets": [MARKET]}) as plain,
            ):
                await _until(lambda: len(_data(plain, "report")) >= 3, "first rounds")
                clock.still_ms = clock.now_ms()
                await _until(
                    lambda: any(e["event"] == STANDS_STILL for e in logs), "the still clock told"
                )
                seen = len(_data(plain, "report"))
                await asyncio.sleep(HOLD_S)
                clock.still_ms = None
                await _until(lambda: len(_data(plain, "report")) >= seen + 3, "rounds again")
    told = [e for e in logs if e["event"] == STANDS_STILL]
    assert len(told) == 1 and told[0]["behind_ms"] > 2 * INTERVAL_MS, told
    assert not [e for e in logs if e["event"] in (WENT_BACK, WENT_FORWARD)]
