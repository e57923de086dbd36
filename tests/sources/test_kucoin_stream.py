"""The KuCoin adapter on its loopback simulator: the bullet's ping interval and host. The faults
all venues share (first connection and its bullet, REST fallback among them) run from
test_stream_faults.py."""

from __future__ import annotations

import pytest
from venue_cases import CASE, Start, Wait

from oracled.sim.kucoin import KucoinSim

VENUE = CASE["kucoin"]  # what `sim` and `start` build (conftest.py)
PRICES = {"BTC-USDT": 67_000.0, "ETH-USDT": 3_500.0}  # what VENUE's simulator starts from
BOTH = {"BTC/USDT", "ETH/USDT"}


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


async def test_a_sequence_that_restarted_lower_is_followed_after_a_reconnect(
    sim: KucoinSim, start: Start, wait: Wait
) -> None:
    """Ticker sequences are compared within one connection only: once the venue's counter has
    restarted lower (an engine restart), the next connection prices again instead of dropping
    every ticker as out of order until the daemon restarts."""
    run = await start(liveness_timeout_s=2.0)
    await wait(lambda: run.pairs() == BOTH)
    sim.restart_sequence()
    assert sim.disconnect() == 1
    await wait(lambda: sim.stats.connections == 2)
    since = len(run.quotes)
    await wait(lambda: run.pairs(since) == BOTH)


async def test_a_sequence_that_restarted_lower_is_followed_on_the_same_connection(
    sim: KucoinSim, start: Start, wait: Wait
) -> None:
    """An engine restart that numbers tickers from 1 again on an open connection does not
    silence the pairs until the next reconnect: the first newer ticker far below the kept
    sequence resets it (counted), and both pairs price on without a reconnect."""
    run = await start(liveness_timeout_s=2.0)
    await wait(lambda: run.pairs() == BOTH)
    sim.restart_sequence()
    since = len(run.quotes)
    await wait(lambda: run.pairs(since) == BOTH and run.stats.sequence_resets == 2)
    assert sim.stats.connections == 1 and run.stats.reconnects == 0
