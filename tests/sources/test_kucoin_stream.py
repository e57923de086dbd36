"""The KuCoin adapter on its loopback simulator: the bullet token, its ping interval and host,
REST failures. The faults all venues share run from test_stream_faults.py."""

from __future__ import annotations

import asyncio

import pytest
from venue_cases import CASE, Start, Wait

from oracled.sim.kucoin import KucoinSim
from oracled.sources import ConnState

VENUE = CASE["kucoin"]  # what `sim` and `start` build (conftest.py)
PRICES = {"BTC-USDT": 67_000.0, "ETH-USDT": 3_500.0}  # what VENUE's simulator starts from
BOTH = {"BTC/USDT", "ETH/USDT"}


async def test_token_welcome_subscribe_then_quotes(
    sim: KucoinSim, start: Start, wait: Wait
) -> None:
    """Bullet token, welcome, one acked subscribe; quotes flow with the venue's event time."""
    run = await start()
    await wait(lambda: run.pairs() == BOTH)
    assert run.state() is ConnState.STREAMING
    assert sim.bullets == 1 and sim.stats.connections == 1
    assert run.source._pending == {}
    assert run.stats.failed_instruments == {}
    assert run.source.stream_url().startswith(f"{sim.ws_url}/endpoint?token=")
    for q in run.quotes:
        assert q.source == "kucoin" and q.venue_ts is not None
        assert q.bid is not None and q.ask is not None and 0 < q.bid <= q.ask


async def test_pings_at_the_interval_the_bullet_gave(
    sim: KucoinSim, start: Start, wait: Wait
) -> None:
    """The client pings every pingInterval from the bullet (0.2 s), so the venue never drops it."""
    run = await start(liveness_timeout_s=2.0)
    await wait(lambda: sim.pings_received >= 5)
    assert run.source.app_ping_interval_s == pytest.approx(0.2)
    assert sim.stats.pong_timeouts == 0 and sim.stats.rate_limited == 0
    assert sim.stats.connections == 1 and run.stats.reconnects == 0
    assert run.stats.malformed == 0


async def test_configured_ws_url_replaces_the_endpoint_host(
    sim: KucoinSim, start: Start, wait: Wait
) -> None:
    """With ws_url set, the socket goes to that host (a second simulator sharing the first one's
    tokens) while the token still comes from the configured REST host's bullet call."""
    other = KucoinSim(PRICES, rate_hz=40.0, ping_interval_s=0.2, ping_timeout_s=0.2)
    other.tokens = sim.tokens
    async with other:
        run = await start(ws_url=other.ws_url)
        await wait(lambda: run.pairs() == BOTH)
        assert run.source.stream_url().startswith(f"{other.ws_url}/endpoint?token=")
        assert sim.bullets >= 1 and other.bullets == 0
        assert sim.stats.connections == 0 and other.stats.connections == 1


async def test_rest_failures_are_counted_and_polling_recovers(
    sim: KucoinSim, start: Start, wait: Wait
) -> None:
    """With the stream refused, 429, 500 and slow REST answers are counted, state stays down,
    polling keeps its interval, and quotes resume when REST answers again."""
    sim.ws_enabled = False
    sim.rest_status = 429
    run = await start()
    await wait(lambda: run.stats.dropped["rest_error"] >= 3)
    assert run.state() is ConnState.DOWN and run.quotes == []
    sim.rest_status = 500
    calls = sim.stats.rest_requests
    await asyncio.sleep(0.55)
    assert 4 <= sim.stats.rest_requests - calls <= 14  # two symbols per 0.1 s poll
    sim.rest_status = None
    sim.rest_delay_s = 0.3
    await wait(lambda: run.state() is ConnState.POLLING)
    await wait(lambda: run.pairs() == BOTH)
    sim.rest_delay_s = 0.0
    sim.ws_enabled = True
    await wait(lambda: run.state() is ConnState.STREAMING)
