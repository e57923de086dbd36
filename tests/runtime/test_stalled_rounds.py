"""A round loop that is stuck, not crashed, fails readiness and then liveness, and heals.

The stall is a real one: the wall clock steps back an hour (as NTP or an operator can step it),
and the round loop waits for it to pass the last round again rather than publish rounds that go
back in time. It used to stay ready for ever, serving its last round as the latest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from one_venue import SteppedClock, service_running, stalling_config
from structlog.testing import capture_logs

from oracled.service import Service
from oracled.sim import BinanceSim


async def _until(
    probe: Callable[[], Awaitable[tuple[int, Any]]], status: int, what: str
) -> dict[str, Any]:
    """Poll until `probe` answers `status` (bounded: a failure, not a hang); its body."""
    async with asyncio.timeout(10):
        while True:
            code, body = await probe()
            if code == status:
                return dict(body)
            await asyncio.sleep(0.05)
    raise AssertionError(what)  # pragma: no cover - the timeout raises first


async def test_a_stuck_round_loop_fails_readiness_then_liveness_and_recovers() -> None:
    """With the wall clock stepped back an hour the loop publishes nothing: /readyz turns 503
    (reason: rounds stalled) after its limit, /healthz 503 `stalled` after its longer one, the
    latest round number stays put, and the price endpoints refuse the last round with 503
    `stalled` rather than serve it as current, and a stream subscriber is told `stalled`; with
    the clock back, rounds resume, all answer 200 and the subscriber's reports come again."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        cfg = stalling_config(sim)
        clock = SteppedClock()
        service = Service(cfg, clock=clock)
        service.ready_min_s, service.alive_min_s = 0.4, 1.2  # the floors, shortened for the test
        async with service_running(service):
            await service.started.wait()
            base = f"http://127.0.0.1:{service.bound_port}"
            async with aiohttp.ClientSession() as http:

                def probe(path: str) -> Callable[[], Awaitable[tuple[int, Any]]]:
                    async def get() -> tuple[int, Any]:
                        async with http.get(base + path) as resp:
                            return resp.status, await resp.json()

                    return get

                await _until(probe("/readyz"), 200, "ready at first")
                ws = await http.ws_connect(base + "/v1/stream")
                await ws.send_json({"op": "subscribe", "markets": ["BTC/USDT"]})
                with capture_logs() as logs:
                    clock.back_ms = 3_600_000
                    # A subscriber is told: after the ack and the reports of the rounds before
                    # the stall, the `stalled` frame.
                    async with asyncio.timeout(10):
                        while (frame := await ws.receive_json())["type"] != "error":
                            assert frame["type"] in ("subscribed", "report"), frame
                    assert frame["code"] == "stalled", frame
                    stalled = await _until(probe("/readyz"), 503, "not ready once stalled")
                    assert stalled["reason"].endswith("(limit 0.4 s): rounds have stalled"), stalled
                    assert stalled["live"] == 1  # the last round said live: not enough
                    for path in ("/v1/prices", "/v1/prices/BTC-USDT"):
                        code, refused = await probe(path)()
                        assert code == 503 and refused["error"]["code"] == "stalled", refused
                        assert "rounds have stalled" in refused["error"]["message"]
                    code, health = await probe("/healthz")()
                    assert (code, health) == (200, {"status": "ok"})  # not dead yet
                    health = await _until(probe("/healthz"), 503, "not alive once stuck")
                    # round_age_s has 3 decimals: an age of 1.2004 s reads 1.2
                    assert health["status"] == "stalled" and health["round_age_s"] >= 1.2
                    assert health["round"] == stalled["round"]  # no round in between
                assert "wall clock went back: rounds wait for it" in [e["event"] for e in logs]
                clock.back_ms = 0
                await _until(probe("/healthz"), 200, "alive again")
                ready = await _until(probe("/readyz"), 200, "ready again")
                assert ready["round"] > stalled["round"] and ready["reason"] is None
                code, prices = await probe("/v1/prices")()
                assert code == 200 and prices[0]["price"] is not None
                async with asyncio.timeout(10):  # the subscriber's reports come again
                    while (frame := await ws.receive_json())["type"] != "report":
                        assert (frame["type"], frame["code"]) == ("error", "stalled"), frame
                assert frame["data"]["round"] > stalled["round"]
                await ws.close()
