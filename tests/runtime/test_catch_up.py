"""After the round loop fell behind, the round it publishes is the present one, never a past one.

A blocked loop (a stopped process, a starved CPU, a slow round) computes the rounds it missed,
unpublished, then publishes the present round. The catch-up takes time too: at 1,000 markets
its 2,400 rounds hold the loop about 3.5 s, and the present round, chosen before it ran, went
out as old as the catch-up took, served by the API with 200 as the current price. Here the cost
of a round is put on an injected clock that moves only when told, so the ages are exact.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from one_venue import service_running, stalling_config

from oracled.clock import ManualClock
from oracled.config import Config
from oracled.service import Service
from oracled.sim import BinanceSim

INTERVAL = 50  # stalling_config's round interval, ms
T0 = 1_800_000_000_000  # a multiple of INTERVAL: the first round's tick


class _Costly(Service):
    """A daemon whose rounds each take `cost_ms` of its clock, as a core of many markets does:
    the clock moves while the loop computes, through a catch-up too. `published` holds each
    published round's time and the clock's when it went out."""

    def __init__(self, cfg: Config, clock: ManualClock, record: Path | None = None) -> None:
        super().__init__(cfg, clock=clock, record=record)
        self.manual = clock
        self.cost_ms = 0
        self.published: list[tuple[int, int]] = []

    def _log_transitions(self, result: Any, log: Any) -> None:
        super()._log_transitions(result, log)  # every round computed, published or not
        if self.hub.latest_result is result:
            self.published.append((result.ts, self.manual.now_ms()))
        self.manual.advance(self.cost_ms)


async def _until(done: Callable[[], bool]) -> None:
    """Until `done()` (bounded: a failure, not a hang)."""
    async with asyncio.timeout(10):
        while True:
            if done():
                return
            await asyncio.sleep(0.005)


async def _published(service: _Costly, count: int) -> None:
    """Until `count` rounds have been published."""
    await _until(lambda: len(service.published) >= count)


async def test_the_round_published_after_a_catch_up_is_the_present_one() -> None:
    """The loop blocked for 40 intervals, its rounds taking 10 ms each: the 39 rounds missed
    take 390 ms to catch up, in which the clock passes 7 more round times, and so on. Every
    round time is computed once, in order (the round numbers go on as a replay's), and the
    round published is the latest whose time has passed when it goes out: it was the one
    chosen before the catch-up, 390 ms (8 intervals) old."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        clock = ManualClock(T0)
        service = _Costly(stalling_config(sim), clock)
        async with service_running(service):
            await service.started.wait()
            clock.advance(1)  # past the first tick: round 1 runs
            await _published(service, 1)
            service.cost_ms = 10
            clock.advance(40 * INTERVAL)  # the loop wakes 40 intervals late
            await _published(service, 2)
            latest = service.hub.latest_result
    assert service.published[0] == (T0, T0 + 1)
    ts, at = service.published[1]
    assert 0 <= at - ts <= INTERVAL, (at - ts, service.published)
    assert latest is not None and latest.ts == ts
    assert latest.round == 1 + (ts - T0) // INTERVAL  # every round time computed once
    assert service.rounds_caught_up == latest.round - 2


async def test_a_core_slower_than_its_clock_publishes_no_round_past_the_stall_limit() -> None:
    """Rounds taking 1.5 intervals each never catch up: the loop falls further behind every
    round. It publishes while its rounds are within the stall limit (0.5 s here), then computes
    them unpublished, and the price endpoints answer 503 `stalled`, as for a loop that publishes
    nothing. Before, each catch-up published its present round, older every time (seconds,
    then minutes), and the API served it with 200. Once rounds are cheap again it catches up
    and publishes the present round."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        clock = ManualClock(T0)
        service = _Costly(stalling_config(sim), clock)
        service.ready_min_s = 0.5  # the stall limit: 0.5 s at 50 ms rounds
        async with service_running(service), aiohttp.ClientSession() as http:
            await service.started.wait()
            base = f"http://127.0.0.1:{service.bound_port}"
            clock.advance(1)
            await _published(service, 1)
            service.cost_ms = 75
            clock.advance(INTERVAL)  # round 2's time: from here the loop falls behind
            await _until(lambda: clock.now_ms() >= T0 + 3_000)  # 60 round times later
            async with http.get(base + "/v1/prices") as resp:
                stalled = resp.status, await resp.json()
            behind = len(service.published)
            service.cost_ms = 0
            await _published(service, behind + 1)
            async with http.get(base + "/v1/prices") as resp:
                back = resp.status
    ages = [at - ts for ts, at in service.published]
    assert max(ages) <= 500, ages
    assert stalled[0] == 503 and stalled[1]["error"]["code"] == "stalled", stalled
    assert ages[-1] <= INTERVAL, ages
    assert back == 200


def _latest_on_tape(tape: Path) -> int:
    """The latest quote time in the tape file as written so far (0: none yet)."""
    lines = tape.read_bytes().splitlines()[1:] if tape.exists() else []
    return max((json.loads(line)["ts"] for line in lines if b'"ts"' in line), default=0)


async def test_a_core_slower_than_its_clock_keeps_writing_its_tape(tmp_path: Path) -> None:
    """`record` under a core slower than its clock: while the loop publishes nothing (its
    rounds past the stall limit), the quotes it takes still reach the tape file, handed to the
    writer every 4 rounds computed. Before, only a published round numbered a multiple of 4
    handed them over: nothing reached the file while the loop was behind, and the lines piled
    up in memory until the 64 MiB backlog stopped the recording for good."""
    tape = tmp_path / "tape.jsonl"
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        clock = ManualClock(T0)
        service = _Costly(stalling_config(sim), clock, record=tape)
        service.ready_min_s = 0.5  # the stall limit: 0.5 s at 50 ms rounds
        async with service_running(service):
            await service.started.wait()
            clock.advance(1)
            await _published(service, 1)
            service.cost_ms = 75
            clock.advance(INTERVAL)  # from here the loop falls behind
            await _until(lambda: clock.now_ms() >= T0 + 3_000)
            last = service.published[-1][0]  # none after it: the rounds are past the limit
            await _until(lambda: _latest_on_tape(tape) > last + 1_000)
            published = len(service.published)
            service.cost_ms = 0
    assert service.tape_error is None
    assert service.published[published - 1][0] == last


async def test_a_round_published_late_is_as_old_as_its_time_says_to_the_stall_rule() -> None:
    """Rounds that take exactly an interval each keep a loop that woke 9 intervals late that
    far behind for good: every round it publishes is 461 ms past its time, within the stall
    limit (0.5 s here), and the API, answering between two rounds, finds the latest 50 ms after
    its publication: 511 ms old. The price endpoints answer 503 `stalled`. The stall rule
    counted from the publication alone, 50 ms, and served the round with 200."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        clock = ManualClock(T0)
        service = _Costly(stalling_config(sim), clock)
        service.ready_min_s = 0.5
        async with service_running(service), aiohttp.ClientSession() as http:
            await service.started.wait()
            base = f"http://127.0.0.1:{service.bound_port}"
            clock.advance(1)
            await _published(service, 1)
            service.cost_ms = INTERVAL
            clock.advance(10 * INTERVAL + 10)  # woken 9 intervals and 11 ms late
            await _published(service, 3)
            async with http.get(base + "/v1/prices/BTC-USDT") as resp:
                answer = resp.status, await resp.json()
            async with http.get(base + "/readyz") as resp:
                ready = resp.status, await resp.json()
    assert [at - ts for ts, at in service.published[1:]][:3] == [461, 461, 461]
    assert answer[0] == 503 and answer[1]["error"]["code"] == "stalled", answer
    assert "the latest round is 0.5 s old (limit 0.5 s)" in answer[1]["error"]["message"]
    assert ready[0] == 503 and ready[1]["round_age_s"] == 0.05, ready  # since its publication


async def test_the_event_loop_runs_between_the_passes_of_a_catch_up() -> None:
    """Rounds taking 0.9 interval each catch up with their clock, slowly: each pass covers the
    round times the one before took, nine tenths as many. Between two passes the event loop runs
    its other tasks (the sources' sockets, the API): the longest run of rounds computed without
    it is the rounds the stall missed, as before the catch-up went on past them. Done in one go,
    the passes held the loop about ten times as long (a hundred times at 0.99), every socket
    unread meanwhile. Counted in rounds, on a task that only counts its turns."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        clock = ManualClock(T0)
        service = _Costly(stalling_config(sim), clock)
        turns = 0  # the counting task's turns on the event loop
        turn_of_round: list[int] = []  # each round computed: the turns counted by then

        async def count_turns() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        computed = service._log_transitions

        def noted(result: Any, log: Any) -> None:
            turn_of_round.append(turns)
            computed(result, log)

        service._log_transitions = noted  # type: ignore[method-assign]
        async with service_running(service):
            counter = asyncio.create_task(count_turns())
            try:
                await service.started.wait()
                clock.advance(1)
                await _published(service, 1)
                service.cost_ms = 45
                clock.advance(40 * INTERVAL)  # the loop wakes 40 intervals late
                await _published(service, 2)
            finally:
                counter.cancel()
    assert service.rounds_caught_up > 100  # passes after the first ran: 39, 35, 31, ...
    runs = [len(list(group)) for _, group in itertools.groupby(turn_of_round)]
    assert max(runs) <= 40, runs
