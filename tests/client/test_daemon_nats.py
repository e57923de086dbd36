"""`oracled run` with signing and a NATS sink whose server is down at first, then comes up.

The daemon must go live and serve its API while NATS is unreachable, count what it could not
publish, connect once a server listens, and from then on feed a verifying client over NATS.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon import Daemon, sim_config
from publish_rig import NatsServer
from venue_sims import BinanceVenues

from oracled.client import OracleClient
from oracled.publish.signer import SigningKey
from oracled.sim import BinanceSim

pytestmark = pytest.mark.integration
PRICES = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "USDTUSD": 1.0}
SAFETY_S = 30.0


@pytest.fixture
async def sims(binance_venues: BinanceVenues) -> list[BinanceSim]:
    return await binance_venues(PRICES, 3, market_seed=3)


async def wait_for(predicate: Callable[[], object], what: str) -> None:
    """Poll state other tasks or processes change; `what` names it if it hangs."""
    async with asyncio.timeout(SAFETY_S):
        while not predicate():  # noqa: ASYNC110 - polling state owned by others
            await asyncio.sleep(0.05)


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found is not None, name
    return float(found.group(1))


async def test_daemon_serves_while_nats_is_down_then_publishes_signed_rounds(
    sims: list[BinanceSim], tmp_path: Path
) -> None:
    """NATS absent: prices live, rounds counted unpublished, attempts counted unreachable;
    NATS up: a client verifies them."""
    server = NatsServer(tmp_path / "nats")  # its port is chosen, nothing listens yet
    key = SigningKey.generate()
    config = sim_config([(s.ws_url, s.rest_url) for s in sims])
    key_file = tmp_path / "signing.key"
    key_file.write_text(key.hex())
    key_file.chmod(0o400)
    config += (
        f'\n[signing]\nenabled = true\ndeployment = "test"\nkey_file = "{key_file}"\n'
        f'lease_file = "{tmp_path / "signing-lease.json"}"\n'
        f'\n[nats]\nenabled = true\nservers = ["{server.url}"]\n'
    )
    daemon = Daemon(config, tmp_path)
    await daemon.start()
    try:
        await daemon.wait_status("BTC/USD", {"active", "degraded"})
        status, info = await daemon.get("/v1/info")
        assert status == 200 and info["signer"] == key.address
        assert key.hex()[2:] not in daemon.logs()  # the key never reaches a log line

        async def unpublished() -> float:
            _, text = await daemon.get("/metrics")
            return metric(text, 'oracled_nats_unpublished_total{reason="disconnected"}')

        first = await unpublished()
        await daemon.wait_for(lambda: _grew(unpublished, first), 10, "unpublished rounds counted")
        _, text = await daemon.get("/metrics")
        assert metric(text, "oracled_nats_connected") == 0.0
        assert metric(text, "oracled_signed_rounds_total") > 0
        failures = 'oracled_nats_connect_failures_total{reason="%s"}'
        assert metric(text, failures % "unreachable") > 0  # nothing listens: not a refusal
        assert metric(text, failures % "credentials") == metric(text, failures % "tls") == 0

        await server.start()
        client = OracleClient({key.address}, deployment="test", max_age_ms=2_000)
        watcher = asyncio.create_task(client.watch_nats(server.url, ["BTC/USD"]))
        try:
            live = {"active", "degraded"}  # three venues at min_sources 3: degraded (thin)
            await wait_for(lambda: client.price("BTC/USD").status in live, "NATS prices")
            price = client.price("BTC/USD").price
            assert price is not None and 55_000 < price < 65_000
            _, text = await daemon.get("/metrics")
            assert metric(text, "oracled_nats_connected") == 1.0
            assert metric(text, "oracled_nats_published_total") > 0
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        assert daemon.terminate() == 0
    finally:
        await daemon.close()
        server.stop()


async def _grew(read: Callable[[], object], before: float) -> bool:
    value = await read()  # type: ignore[misc]
    return bool(value > before)
