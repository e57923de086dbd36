"""`api.max_connections_per_address`: one client address cannot take every place under the cap.

Against the API served as the daemon serves it (a GuardedSite on loopback); the clients connect
from distinct loopback addresses (127.0.0.2, 127.0.0.3: Linux routes all of 127/8 to lo).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from api_rig import Conn, ContractRecorder, Rig, make_config, raw_get, serve_guarded, until
from structlog.testing import capture_logs

from oracled.config import ApiConfig

GREEDY, OTHER, STREAMER = "127.0.0.2", "127.0.0.3", "127.0.0.4"


async def _connect(port: int, source: str) -> Conn:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


def test_the_default_is_a_quarter_of_the_default_cap() -> None:
    api = ApiConfig()
    assert api.max_connections_per_address * 4 == api.max_connections


async def test_one_address_holds_at_most_its_share_and_others_are_served(
    contract: ContractRecorder,
) -> None:
    """With `api.max_connections = 10` and `max_connections_per_address = 2`, an address holding
    two keep-alive connections gets a 429 `too_many_client_connections` on a third (with
    `Retry-After: 1`, closed), counted (`reason="client_connection_limit"`) and logged once a
    minute with its address; `/healthz` is still answered to it (then closed), another address
    is served, and once one of the two closes, the address is served again. Before, the one
    address took all ten places and every other client got the global 503."""
    rig = Rig(make_config(max_connections=10, max_connections_per_address=2))
    rig.step()
    async with serve_guarded(rig) as (port, limits):  # the 429 is any path's: body checked below
        first, second = await _connect(port, GREEDY), await _connect(port, GREEDY)
        for conn in (first, second, first):
            assert (await raw_get(conn, "/v1/info"))[0] == 200
        with capture_logs() as logs:
            third = await _connect(port, GREEDY)
            status, headers, body = await raw_get(third, "/v1/prices")
            again = await _connect(port, GREEDY)
            assert (await raw_get(again, "/v1/info"))[0] == 429  # counted, not logged again
        assert status == 429 and headers["connection"] == "close", (status, headers)
        assert headers["retry-after"] == "1" and headers["cache-control"] == "no-store"
        contract.validator("/components/schemas/Error").validate(json.loads(body))
        error = json.loads(body)["error"]
        assert error["code"] == "too_many_client_connections", error
        assert "api.max_connections_per_address" in error["message"]
        assert await third[0].read() == b"" and await again[0].read() == b""
        (line,) = [e for e in logs if e["event"] == "api_client_connection_limit"]
        assert line["remote"] == GREEDY and line["max_connections_per_address"] == 2
        assert line["closed"] == 1 and line["log_level"] == "warning"
        assert rig.hub.api_closed["client_connection_limit"] == 2
        assert rig.hub.api_closed["connection_limit"] == 0
        probe = await _connect(port, GREEDY)
        status, headers, _ = await raw_get(probe, "/healthz")
        assert status == 200 and headers["connection"] == "close"
        other = await _connect(port, OTHER)
        assert (await raw_get(other, "/v1/prices"))[0] == 200
        first[1].close()
        await until(lambda: limits.connections == 2, "the server saw the close")
        fourth = await _connect(port, GREEDY)
        assert (await raw_get(fourth, "/v1/info"))[0] == 200
        for _, writer in (second, third, again, probe, other, fourth):
            writer.close()


async def test_an_open_stream_holds_its_address_s_place() -> None:
    """A WebSocket stream is a connection like any other: with one place per address, an address
    whose stream is open is refused a second connection until the stream closes."""
    rig = Rig(make_config(max_connections=10, max_connections_per_address=1))
    rig.step()
    async with serve_guarded(rig) as (port, limits):
        connector = aiohttp.TCPConnector(local_addr=(STREAMER, 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.ws_connect(f"http://127.0.0.1:{port}/v1/stream") as ws:
                await ws.send_json({"op": "subscribe", "markets": ["BTC/USD"]})
                assert (await ws.receive_json())["type"] == "subscribed"
                second = await _connect(port, STREAMER)
                assert (await raw_get(second, "/v1/info"))[0] == 429
                second[1].close()
            await until(lambda: limits.connections == 0, "the stream's close")
            again = await _connect(port, STREAMER)
            assert (await raw_get(again, "/v1/info"))[0] == 200
            again[1].close()
