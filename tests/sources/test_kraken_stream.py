"""The Kraken adapter on its loopback simulator: an unknown pair over REST. The faults all venues
share (first connection, heartbeats, REST fallback among them): test_stream_faults.py."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from venue_cases import CASE, Start, Wait

from oracled.config import SourceConfig
from oracled.sim.kraken import KrakenSim
from oracled.sources import ConnState

VENUE = CASE["kraken"]  # what `sim` and `start` build (conftest.py)


async def test_rest_unknown_pair_fails_only_that_symbol(
    sim: KrakenSim, start: Start, wait: Wait
) -> None:
    """Kraken's HTTP 200 'Unknown asset pair' spoils the batch; the retry isolates the bad one."""
    sim.ws_enabled = False
    run = await start(pairs=[*VENUE.pairs, VENUE.unknown_pair])
    await wait(lambda: "FOO/USD" in run.stats.failed_instruments)
    assert run.stats.failed_instruments["FOO/USD"] == "EQuery:Unknown asset pair"
    seen = len(run.quotes)
    await wait(lambda: run.pairs(seen) == {"BTC/USD", "ETH/USD"})
    assert run.stats.state is ConnState.POLLING


async def test_an_unreadable_rest_answer_is_counted_as_a_bad_body_not_a_failed_request(
    aiohttp_server: Any, start_config: Any, wait: Wait
) -> None:
    """An HTTP 200 whose body is not Kraken's JSON (a proxy's page, say) carries no error list
    to read: the poll counts the body as undecodable (decode), not as a refused request, and
    fails no symbol; no quote comes of it."""
    polls: list[str] = []

    async def ticker(request: web.Request) -> web.Response:
        polls.append(request.query["pair"])
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/0/public/Ticker", ticker)  # and no stream: the source polls
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    run = await start_config(
        SourceConfig(
            type="kraken",
            ws_url=base.replace("http://", "ws://"),
            rest_url=base,
            liveness_timeout_s=0.5,
            rest_poll_interval_s=0.05,
            reconnect_max_s=0.1,
        ),
        [("BTC/USD", "spot")],
    )
    await wait(lambda: run.stats.dropped["decode"] >= 2)
    assert polls[0] == "XBTUSD"
    assert run.stats.dropped["rest_error"] == 0
    assert run.stats.failed_instruments == {} and run.quotes == []
