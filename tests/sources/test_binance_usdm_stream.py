"""The Binance USD-M adapter on its loopback simulator: one connection, protocol pings answered.
The faults all venues share (first connection, reconnects, REST fallback among them) run from
test_stream_faults.py."""

from __future__ import annotations

from aiohttp import web
from structlog.testing import capture_logs
from venue_cases import CASE, RapidPingBinanceUsdm, Start, Wait

from oracled.sim.binance_usdm import BinanceUsdmSim
from oracled.sources import ConnState

VENUE = CASE["binance_usdm"]  # what `sim` and `start` build (conftest.py)
PRICES = {"BTCUSDT": 67_000.0, "ETHUSDT": 3_500.0}  # what VENUE's simulator starts from


class PathRecordingSim(BinanceUsdmSim):
    """The simulator, also answering every path it does not serve with 404 and recording it."""

    def __init__(self) -> None:
        super().__init__(PRICES, ping_interval_s=0.2, pong_timeout_s=0.5)
        self.other_paths: list[str] = []

    def routes(self, app: web.Application) -> None:
        super().routes(app)
        app.router.add_route("*", "/{tail:.*}", self._other)

    async def _other(self, request: web.Request) -> web.Response:
        self.other_paths.append(request.path)
        return web.Response(status=404)


async def test_opens_one_connection_and_answers_its_pings(start: Start, wait: Wait) -> None:
    """The source keeps a single WebSocket, to /public/stream: no second connection (the mark
    price stream it once opened on /market fed nothing) and no request to any other path. Server
    pings get pongs; nothing is timed out or rate limited."""
    async with PathRecordingSim() as venue:
        run = await start(venue)
        await wait(lambda: run.state() is ConnState.STREAMING and venue.stats.pongs_received >= 4)
        assert venue.stats.pong_timeouts == 0 and venue.stats.rate_limited == 0
        assert venue.stats.connections == 1 and venue.stats.active == 1
        assert [c.request.path for c in venue.clients] == ["/public/stream"]
        assert venue.other_paths == [] and run.stats.reconnects == 0


async def test_get_property_answers_are_life_not_strays(start: Start, wait: Wait) -> None:
    """The keep-alive (the venue pings only every 3 minutes, far past the liveness timeout) is
    the documented GET_PROPERTY of `combined`, id 0: each answer, `{"result":true,"id":0}`,
    shows the connection alive and is counted neither as a stray ack nor as a venue error, and
    the subscribe requests (ids from 1) are acked as before."""
    async with BinanceUsdmSim(PRICES, message_limit=30) as venue:
        run = await start(venue, cls=RapidPingBinanceUsdm)
        await wait(lambda: run.state() is ConnState.STREAMING and venue.pings_received >= 5)
        assert run.stats.dropped["unsolicited"] == 0 and run.stats.dropped["venue_error"] == 0
        assert run.stats.failed_instruments == {} and venue.stats.errors_sent == 0
        assert venue.stats.rate_limited == 0 and run.stats.reconnects == 0


async def test_a_refused_keep_alive_is_counted_and_logged_once_a_connection(
    start: Start, wait: Wait
) -> None:
    """A venue that answers the keep-alive with an error (``{"error":{..},"id":0}``) would say so
    at every keep-alive, every 10 s. The answer is still life (the market muted, the connection
    outlives the watchdog many times over), and it is counted `venue_error` and logged
    `keep-alive refused` once a connection: once on the first, once more on the next after a
    disconnect. Before, every refused keep-alive counted a `venue_error`, and the log said it
    again each minute."""
    async with BinanceUsdmSim(PRICES, message_limit=30) as venue:
        venue.property_error = "Service unavailable"
        with capture_logs() as logs:
            run = await start(venue, cls=RapidPingBinanceUsdm)
            await wait(lambda: run.state() is ConnState.STREAMING)
            for symbol in PRICES:
                venue.mute(symbol)
            await wait(lambda: venue.pings_received >= 20)  # 2 s, four liveness timeouts
            assert run.stats.reconnects == 0 and run.state() is ConnState.STREAMING
            assert run.stats.dropped["venue_error"] == 1
            for symbol in PRICES:
                venue.unmute(symbol)
            venue.disconnect()
            await wait(lambda: run.stats.reconnects == 1 and run.state() is ConnState.STREAMING)
            seen = venue.pings_received
            await wait(lambda: venue.pings_received >= seen + 10)
            assert run.stats.dropped["venue_error"] == 2
        assert run.stats.failed_instruments == {} and run.stats.dropped["unsolicited"] == 0
    refused = [e for e in logs if e["event"] == "keep-alive refused"]
    assert [e["message"] for e in refused] == ["0: Service unavailable"] * 2
