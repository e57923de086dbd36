"""After the round loop fell behind, the round it publishes is the present one, never a past one.

A blocked loop (a stopped process, a starved CPU, a slow round) computes the rounds it missed,
unpublished, then publishes the present round. The catch-up takes time too: at 1,000 markets
its 2,400 rounds hold the loop about 3.5 s, and the present round, chosen before it ran, went
out as old as the catch-up took, served by the API with 200 as the current price. Here the cost
of a round is put on an injected clock that moves only when told, so the ages are exact.
With signing on, the round signed after the stall is that present one too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from one_venue import (
    bus_messages,
    reading,
    service_running,
    signing_table,
    stalling_config,
    stalls,
)

from oracled.clock import ManualClock
from oracled.config import Config
from oracled.service import Service
from oracled.sim import BinanceSim

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "publish"))
from publish_rig import NatsServer  # the publishing tests' real nats-server

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


@contextlib.asynccontextmanager
async def _past_round_one(
    clock: ManualClock, stall_limit_s: float | None = None, record: Path | None = None
) -> AsyncIterator[_Costly]:
    """A `_Costly` daemon on `clock` (at T0) quoting from a Binance simulator, its stall limit
    (`ready_min_s`) `stall_limit_s` if given, recording to `record` if given, running for the
    block, which starts once it has published round 1 at its tick."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        service = _Costly(stalling_config(sim), clock, record=record)
        if stall_limit_s is not None:
            service.ready_min_s = stall_limit_s
        async with service_running(service):
            await service.started.wait()
            clock.advance(1)  # past the first tick: round 1 runs
            await _published(service, 1)
            yield service


async def test_the_round_published_after_a_catch_up_is_the_present_one() -> None:
    """The loop blocked for 40 intervals, its rounds taking 10 ms each: the 39 rounds missed
    take 390 ms to catch up, in which the clock passes 7 more round times, and so on. Every
    round time is computed once, in order (the round numbers go on as a replay's), and the
    round published is the latest whose time has passed when it goes out: it was the one
    chosen before the catch-up, 390 ms (8 intervals) old."""
    clock = ManualClock(T0)
    async with _past_round_one(clock) as service:
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
    clock = ManualClock(T0)
    # the stall limit: 0.5 s at 50 ms rounds
    async with (
        _past_round_one(clock, stall_limit_s=0.5) as service,
        aiohttp.ClientSession() as http,
    ):
        base = f"http://127.0.0.1:{service.bound_port}"
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
    clock = ManualClock(T0)
    # the stall limit: 0.5 s at 50 ms rounds
    async with _past_round_one(clock, stall_limit_s=0.5, record=tape) as service:
        service.cost_ms = 75
        clock.advance(INTERVAL)  # from here the loop falls behind
        await _until(lambda: clock.now_ms() >= T0 + 3_000)
        last = service.published[-1][0]  # none after it: the rounds are past the limit
        await _until(lambda: _latest_on_tape(tape) > last + 1_000)
        published = len(service.published)
        service.cost_ms = 0
    assert service.tape_error is None
    assert service.published[published - 1][0] == last


class _SteppedBack(ManualClock):
    """A `ManualClock` whose wall time the test can step back (`back_ms`); its monotonic time
    goes on."""

    def __init__(self, start_ms: int) -> None:
        super().__init__(start_ms)
        self.back_ms = 0

    def now_ms(self) -> int:
        return super().now_ms() - self.back_ms


async def test_a_round_published_late_is_as_old_as_its_time_says_to_the_stall_rule() -> None:
    """Rounds that take exactly an interval each keep a loop that woke 8 intervals late that
    far behind for good: every round it publishes is 411 ms past its time, within the stall
    limit (0.5 s here) by more than an interval. Then the wall clock steps back and the loop
    waits for it, its latest round 100 ms after its publication: 511 ms old. The price
    endpoints answer 503 `stalled`. The stall rule counted from the publication alone, 100 ms,
    and served the round with 200."""
    clock = _SteppedBack(T0)
    async with (
        _past_round_one(clock, stall_limit_s=0.5) as service,
        aiohttp.ClientSession() as http,
    ):
        base = f"http://127.0.0.1:{service.bound_port}"
        computed = service._log_transitions

        def stepped(result: Any, log: Any) -> None:
            computed(result, log)  # the round's cost
            if len(service.published) == 4 and not clock.back_ms:
                clock.back_ms = 10_000  # the wall clock steps back: the loop waits for it
                clock.advance(INTERVAL)  # while the monotonic clock goes on

        service._log_transitions = stepped  # type: ignore[method-assign]
        service.cost_ms = INTERVAL
        clock.advance(9 * INTERVAL + 10)  # woken 8 intervals and 11 ms late
        await _until(lambda: clock.back_ms > 0)
        async with http.get(base + "/v1/prices/BTC-USDT") as resp:
            answer = resp.status, await resp.json()
        async with http.get(base + "/readyz") as resp:
            ready = resp.status, await resp.json()
    assert [at - ts for ts, at in service.published[1:]] == [411, 411, 411]
    assert answer[0] == 503 and answer[1]["error"]["code"] == "stalled", answer
    assert "the latest round is 0.5 s old (limit 0.5 s)" in answer[1]["error"]["message"]
    assert ready[0] == 503 and ready[1]["round_age_s"] == 0.1, ready  # since its publication


def _prices(frames: list[dict[str, Any]]) -> list[int]:
    """The round times of the prices a stream subscriber got (snapshots and rounds)."""
    got = [f["data"]["ts"] for f in frames if f["type"] == "report"]
    return got + [f["round_ts"] for f in frames if f["type"] == "reports"]


async def test_a_loop_held_near_the_stall_limit_does_not_flap_between_prices_and_stalled() -> None:
    """Rounds that take exactly an interval each hold a loop that woke 9 intervals late at 461
    ms past their time (92 % of the 0.5 s stall limit) for good. Each such round, published,
    was stale within an interval: a stream subscriber got its price, then a `stalled` frame
    (and NATS a stall notice), round after round. Rounds that would pass the limit before the
    next one is due are not published: the subscriber is told of the stall once, and gets no
    price of the stalled loop."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        clock = ManualClock(T0)
        service = _Costly(stalling_config(sim), clock)
        service.ready_min_s = 0.5
        async with service_running(service), aiohttp.ClientSession() as http:
            await service.started.wait()
            base = f"http://127.0.0.1:{service.bound_port}"
            request = {"op": "subscribe", "markets": ["BTC/USDT"]}
            async with reading(http, base, request) as ws:
                await _until(lambda: bool(ws))
                clock.advance(1)
                await _published(service, 1)
                await _until(lambda: bool(_prices(ws)))
                service.cost_ms = INTERVAL
                clock.advance(10 * INTERVAL + 10)  # woken 9 intervals and 11 ms late
                await _until(lambda: clock.now_ms() >= T0 + 3_000)  # 50 round times later
                await _until(lambda: bool(stalls(ws)))
                async with http.get(base + "/v1/prices/BTC-USDT") as resp:
                    answer = resp.status, await resp.json()
    assert [ts for ts, _ in service.published] == [T0], service.published
    prices = _prices(ws)
    assert len(stalls(ws)) == 1, (len(stalls(ws)), prices)
    assert prices == [T0], prices
    assert answer[0] == 503 and answer[1]["error"]["code"] == "stalled", answer


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


class _Stalling(_Costly):
    """A signing `_Costly` whose loop stalls for `STALL_MS` of its clock at the round numbered
    `stall_at`, once that round is handed to the signer; the loop stays blocked, in the first
    round of the catch-up, until the signer thread has signed that round: its signature is
    ready, and the blocked loop has not handed it on."""

    STALL_MS = 40 * INTERVAL

    def __init__(self, cfg: Config, clock: ManualClock) -> None:
        super().__init__(cfg, clock)
        self.stall_at: int | None = None
        self.signed_before = 0  # the signer's count before the stalled round
        self._blocking = False

    def _log_transitions(self, result: Any, log: Any) -> None:
        super()._log_transitions(result, log)
        assert self.signer is not None
        if result.round == self.stall_at and self.hub.latest_result is result:
            self.manual.advance(self.STALL_MS)
            self._blocking = True
        elif self._blocking:  # the catch-up's first round: the loop is blocked
            self._blocking = False
            deadline = time.monotonic() + 10.0  # a guard against hangs only
            while self.signer.stats.signed <= self.signed_before:
                assert time.monotonic() < deadline, "the stalled round was never signed"
                time.sleep(0.001)


@contextlib.asynccontextmanager
async def _events(http: aiohttp.ClientSession, url: str) -> AsyncIterator[list[dict[str, Any]]]:
    """An event stream at `url`: every `data:` event's JSON, while the block runs."""
    got: list[dict[str, Any]] = []
    async with http.get(url) as resp:
        assert resp.status == 200

        async def read() -> None:
            while line := await resp.content.readline():
                if line.startswith(b"data: "):
                    got.append(json.loads(line[6:]))

        reader = asyncio.create_task(read(), name="test-events-reader")
        try:
            yield got
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def test_the_round_signed_after_a_stall_is_the_one_published_not_the_one_before(
    tmp_path: Path,
) -> None:
    """Signing on: a round is handed to the signer, then the loop stalls 40 intervals, and the
    signature finishes while it is blocked. The round published after the catch-up is the one
    signed: the signed WebSocket and SSE streams and the bus's round subject go from the rounds
    before the stall straight to it, and the pre-stall round's signature never goes out
    (counted `stale`). Before, the blocked loop had not handed that signature on, so the round
    after the stall was skipped as `busy` and the pre-stall round went out signed after it, the
    newest signed price for a round older than the one just published."""
    server = NatsServer(tmp_path / "nats", jetstream=False)
    await server.start()
    _, signing = signing_table(tmp_path, tmp_path / "signing-lease.json")
    try:
        async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
            bus_table = {"enabled": True, "servers": [server.url]}
            clock = ManualClock(T0)
            service = _Stalling(stalling_config(sim, signing=signing, nats=bus_table), clock)
            assert service.signer is not None
            stats = service.signer.stats
            bus, rounds = await bus_messages(server.url, "oracled.rounds")
            async with (
                service_running(service),
                aiohttp.ClientSession() as http,
                asyncio.timeout(20),
            ):
                await service.started.wait()
                base = f"http://127.0.0.1:{service.bound_port}"
                request = {"op": "subscribe", "markets": ["BTC/USDT"], "signed": True}
                query = "/v1/events?markets=BTC-USDT&signed=true"
                async with reading(http, base, request) as ws, _events(http, base + query) as sse:
                    await _until(
                        lambda: (
                            bool(ws) and service.nats is not None and service.nats.ready.is_set()
                        )
                    )
                    clock.advance(1)
                    for n in range(1, 4):  # three rounds signed on every outlet
                        await _until(lambda n=n: len(rounds) >= n and stats.signed >= n)
                        clock.advance(INTERVAL)
                    await _until(lambda: len(rounds) >= 4)
                    service.signed_before = stats.signed
                    service.stall_at = len(service.published) + 1
                    clock.advance(INTERVAL)  # the round that stalls, then the one after it
                    await _published(service, service.stall_at + 1)
                    stalled_ts = service.published[-2][0]
                    after_ts = service.published[-1][0]
                    clock.advance(INTERVAL)
                    last = after_ts + INTERVAL  # the round after: on every outlet, then read

                    def signed() -> tuple[list[int], list[int], list[int]]:
                        on_bus = [json.loads(r)["ts"] for r in rounds]
                        on_ws = [f["data"]["ts"] for f in ws if f["type"] == "signed"]
                        on_sse = [e["data"]["ts"] for e in sse if e["type"] == "signed"]
                        return on_bus, on_ws, on_sse

                    await _until(lambda: all(last in outlet for outlet in signed()))
                    outlets = signed()
            await bus.close()
    finally:
        server.stop()
    assert after_ts == stalled_ts + _Stalling.STALL_MS
    for outlet in outlets:
        assert stalled_ts not in outlet, (stalled_ts, outlet)
        after = [ts for ts in outlet if ts > stalled_ts - INTERVAL]
        assert after[:2] == [after_ts, after_ts + INTERVAL], (after_ts, outlet)
        assert outlet == sorted(outlet)
    assert stats.errors["stale"] == 1 and stats.errors["busy"] == 0, stats.errors
