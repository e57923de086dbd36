"""The Binance adapter on its loopback simulator: the acked subscribe, venue pings, a shutdown
notice, an unknown symbol over REST. The faults all venues share run from test_stream_faults.py."""

from __future__ import annotations

from venue_cases import CASE, Start, Wait

from oracled.clock import SystemClock
from oracled.sim import BinanceSim
from oracled.sources import ConnState

VENUE = CASE["binance"]  # what `sim` and `start` build (conftest.py)
PRICES = {"BTCUSDT": 67_000.0, "ETHUSDT": 3_500.0}  # what VENUE's simulator starts from
_DAY_MS = 86_400_000


class _WallAhead(SystemClock):
    """The real clock, whose wall time the test can step forward (monotonic time never is)."""

    __slots__ = ("ahead_ms",)

    def __init__(self) -> None:
        self.ahead_ms = 0

    def now_ms(self) -> int:
        return super().now_ms() + self.ahead_ms


async def test_answers_server_pings_and_keeps_the_connection(start: Start, wait: Wait) -> None:
    """Every venue ping gets a pong; the venue never times the client out or rate-limits it."""
    async with BinanceSim(PRICES, ping_interval_s=0.3, pong_timeout_s=0.5) as venue:
        run = await start(venue, liveness_timeout_s=2.0)
        await wait(lambda: venue.stats.pongs_received >= 3)
        assert venue.stats.pongs_received >= venue.stats.pings_sent - 1  # one may be in flight
        assert venue.stats.pong_timeouts == 0
        assert venue.stats.rate_limited == 0
        assert venue.stats.connections == 1
        assert run.stats.reconnects == 0


async def test_server_shutdown_notice_rotates_without_going_down(
    sim: BinanceSim, start: Start, wait: Wait
) -> None:
    """The venue's serverShutdown notice makes the client reconnect at once; the stream never
    counts as down and no REST poll is made (the simulator had no such notice before)."""
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING)
    sim.server_shutdown()
    await wait(lambda: sim.stats.connections >= 2 and run.stats.reconnects == 1)
    seen = len(run.quotes)
    await wait(lambda: run.pairs(seen) == {"BTC/USDT", "ETH/USDT"})
    assert sim.stats.rest_requests == 0 and run.stats.malformed == 0
    assert run.state() is ConnState.STREAMING


async def test_rest_batch_refusal_isolates_the_bad_symbol(
    sim: BinanceSim, start: Start, wait: Wait
) -> None:
    """A REST 400 for a batch is retried per symbol; only the invalid one is marked failed."""
    sim.ws_enabled = False
    run = await start(pairs=[*VENUE.pairs, VENUE.unknown_pair])
    await wait(lambda: "FOOUSDT" in run.stats.failed_instruments)
    assert "-1121" in run.stats.failed_instruments["FOOUSDT"]
    seen = len(run.quotes)
    await wait(lambda: run.pairs(seen) == {"BTC/USDT", "ETH/USDT"})
    assert run.stats.state is ConnState.POLLING


async def test_a_wall_clock_stepped_forward_lists_no_instrument_silent(
    start_config: Start, wait: Wait
) -> None:
    """The wall clock steps a day ahead (a time sync) while two symbols have gone quiet: the one
    whose limit has passed by the monotonic clock (400 ms) is listed silent, with its last
    quote's receive time, and the one given a minute is not, although its last quote is a day
    old by the wall clock. Measured on the wall clock, every symbol not quoted since the step
    was listed at the next scan (a false OracledSourceInstrumentsSilent)."""
    pairs = [*VENUE.pairs, ("SOL/USDT", "spot")]
    clock = _WallAhead()
    async with BinanceSim({**PRICES, "SOLUSDT": 150.0}, rate_hz=20.0) as venue:
        run = await start_config(VENUE.make_config(venue), pairs, clock=clock)
        limits = {
            ("BTC/USDT", "spot"): 400,
            ("ETH/USDT", "spot"): 400,
            ("SOL/USDT", "spot"): 60_000,
        }
        run.source.silent_after_ms = lambda: limits
        await wait(lambda: run.pairs() == {"BTC/USDT", "ETH/USDT", "SOL/USDT"})
        venue.mute("ETHUSDT")
        venue.mute("SOLUSDT")
        # Two more BTCUSDT quotes: the second was sent after the mute, so any ETH or SOL frame
        # sent before it has been read (one socket, in order) before the wall clock steps.
        seen = len(run.quotes)
        await wait(lambda: sum(q.pair == "BTC/USDT" for q in run.quotes[seen:]) >= 2)
        clock.ahead_ms = _DAY_MS
        await wait(lambda: bool(run.stats.silent_instruments))
        last_eth = max(q.recv_ts for q in run.quotes if q.pair == "ETH/USDT")
        assert run.stats.silent_instruments == {"ETHUSDT": last_eth}
        assert run.state() is ConnState.STREAMING and run.stats.reconnects == 0
