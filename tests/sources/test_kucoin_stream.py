"""The KuCoin adapter on its loopback simulator: the bullet's ping interval and host, the REST
rate limit's own header. The faults
all venues share (first connection and its bullet, REST fallback among them) run from
test_stream_faults.py."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs
from venue_cases import CASE, Start, Wait

from oracled.sim.kucoin import KucoinSim
from oracled.sources import ConnState

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


async def test_a_spent_rate_limit_pool_stops_polls_until_the_reset_it_names(
    sim: KucoinSim, start: Start, wait: Wait
) -> None:
    """KuCoin's 429 (code 429000) names the time until the Public pool's quota resets in
    gw-ratelimit-reset, in ms, and sends no Retry-After; the docs say to send nothing until
    then. Here it names 30 s: one poll, then none in six poll intervals. Before, the header was
    not read and polls went on every interval into the spent pool."""
    sim.rest_status, sim.rate_limit_reset_ms = 429, 30_000  # the bullet too: no stream, polls
    run = await start()
    await wait(lambda: sim.stats.rest_requests >= 1)
    await asyncio.sleep(0.6)  # six poll intervals
    assert sim.stats.rest_requests == 1
    assert run.stats.dropped["rest_error"] == 1 and run.stats.state is ConnState.DOWN


@pytest.mark.parametrize("text", ["30_000", "+30000", "٣٠٠٠٠", "1e9", "inf", "nan", "-5", "1.5"])
async def test_a_reset_that_is_no_count_of_milliseconds_names_no_wait(
    sim: KucoinSim, start: Start, wait: Wait, text: str
) -> None:
    """A gw-ratelimit-reset that is not ASCII digits names no wait: the 429 gets KuCoin's
    default (none: the next poll at its interval, so three polls come), no wait is recorded,
    and the text is logged once as `header refused`. Before, float() read "30_000", "+30000"
    and "٣٠٠٠٠" as 30 s, and "1e9" and "inf" as the pool's whole 30 s window."""
    sim.rest_status, sim.rate_limit_reset_text = 429, text  # the bullet too: no stream, polls
    with capture_logs() as logs:
        run = await start()
        await wait(lambda: sim.stats.rest_requests >= 3)
    assert run.source._retry_after_s == 0.0
    refused = {(e["header"], e["text"]) for e in logs if e["event"] == "header refused"}
    assert refused == {("gw-ratelimit-reset", repr(text))}


async def test_a_short_rate_limit_reset_lets_polls_go_on_after_it(
    sim: KucoinSim, start: Start, wait: Wait
) -> None:
    """The wait is the one the header names, not a fixed one: a reset 0.2 s away is waited out
    and polling goes on (and prices once the pool answers again)."""
    sim.ws_enabled = False  # handshakes refused: the stream stays down once the bullet works
    sim.rest_status, sim.rate_limit_reset_ms = 429, 200
    run = await start()
    await wait(lambda: sim.stats.rest_requests >= 3)
    sim.rest_status = None
    await wait(lambda: run.stats.state is ConnState.POLLING)
