"""The Bybit spot and linear adapters on their loopback simulator: the acked subscribe, client
pings, an unknown symbol, REST failures. The faults all venues share: test_stream_faults.py."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest
from venue_cases import CASE, Case, Start, Wait

from oracled.model import Kind
from oracled.sim.bybit import BybitSim
from oracled.sources import ConnState
from oracled.sources.bybit import BybitLinearSource

PRICES = {"BTCUSDT": 67_000.0, "ETHUSDT": 3_500.0}  # what the cases' simulator starts from
BOTH = {"BTC/USDT", "ETH/USDT"}


@pytest.fixture(
    params=[CASE["bybit_spot"], CASE["bybit_linear"]], ids=["bybit_spot", "bybit_linear"]
)
def case(request: pytest.FixtureRequest) -> Case:
    """Each test runs once per category: `sim` and `start` build that category's adapter."""
    return request.param  # type: ignore[no-any-return]


def with_foo(case: Case) -> list[tuple[str, Kind]]:
    """The case's pairs and one the venue does not list, of the same kind."""
    return [*case.pairs, ("FOO/USDT", case.pairs[0][1])]


async def test_streams_quotes_after_one_acked_subscribe(
    sim: BybitSim, case: Case, start: Start, wait: Wait
) -> None:
    """One subscribe is acked, the snapshot then deltas give quotes with the venue's ts."""
    run = await start()
    await wait(lambda: run.pairs() == BOTH and len(run.quotes) > 10)
    assert run.stats.state is ConnState.STREAMING
    assert sim.stats.requests == 1 and run.source._pending == {}
    assert run.stats.malformed == 0 and run.stats.failed_instruments == {}
    for q in run.quotes:
        assert q.kind == case.pairs[0][1] and q.venue_ts is not None and q.venue_ts > 1e12
        assert q.bid is not None and q.ask is not None and 0 < q.bid <= q.ask


async def test_client_pings_keep_a_strict_venue_happy(start_config: Start, wait: Wait) -> None:
    """The adapter's JSON pings arrive on schedule: a venue that cuts non-pingers keeps it."""

    class QuickPings(BybitLinearSource):
        app_ping_interval_s: ClassVar[float | None] = 0.1

    async with BybitSim(PRICES, ping_timeout_s=0.4) as venue:
        cfg = CASE["bybit_linear"].make_config(venue, liveness_timeout_s=2.0)
        run = await start_config(cfg, [("BTC/USDT", "perp")], QuickPings)
        await wait(lambda: venue.pings_received >= 8)
        assert venue.stats.pong_timeouts == 0 and venue.stats.connections == 1
        assert run.stats.reconnects == 0 and run.stats.malformed == 0


@pytest.mark.parametrize("with_req_id", [True, False])
async def test_unknown_symbol_fails_alone_without_reconnects(
    sim: BybitSim, case: Case, start: Start, wait: Wait, with_req_id: bool
) -> None:
    """A refusal fails only the unknown symbol, with or without a req_id in the refusal."""
    sim.error_req_id = with_req_id
    run = await start(pairs=with_foo(case))
    await wait(lambda: "FOOUSDT" in run.stats.failed_instruments)
    assert "FOOUSDT" in run.stats.failed_instruments["FOOUSDT"]
    seen = len(run.quotes)
    await wait(lambda: run.pairs(seen) == BOTH)
    await asyncio.sleep(0.3)
    assert sim.stats.connections == 1 and run.stats.reconnects == 0
    assert sim.stats.requests == 4  # the batch, then one per symbol
    assert run.stats.dropped["venue_error"] == 0


async def test_rest_failures_are_counted_and_polling_recovers(
    sim: BybitSim, case: Case, start: Start, wait: Wait
) -> None:
    """With the stream refused, 429, 5xx and slow REST answers keep the source down and polling."""
    sim.ws_enabled = False
    sim.rest_status = 429
    run = await start()
    await wait(lambda: run.stats.dropped["rest_error"] >= 3)
    assert run.stats.state.value == "down" and run.quotes == []
    sim.rest_status = 502
    errors = run.stats.dropped["rest_error"]
    await wait(lambda: run.stats.dropped["rest_error"] >= errors + 3)
    sim.rest_status = None
    sim.rest_delay_s = 1.1  # longer than the request timeout (1 s)
    errors, polls = run.stats.dropped["rest_error"], sim.stats.rest_requests
    await wait(lambda: run.stats.dropped["rest_error"] > errors)
    assert sim.stats.rest_requests > polls and run.quotes == []
    sim.rest_delay_s = 0.0
    await wait(lambda: run.stats.state is ConnState.POLLING and run.pairs() == BOTH)
    sim.ws_enabled = True
    await wait(lambda: run.stats.state is ConnState.STREAMING)
