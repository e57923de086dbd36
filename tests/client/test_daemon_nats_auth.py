"""`oracled run` publishing to a NATS server that refuses its credentials.

A wrong credential is an operator's mistake that does not pass by itself, not a reason to stop
pricing: the daemon must stay live and serve its prices, keep retrying the server, count the
rounds it could not publish (what the OracledNatsNotPublishing alert reads) and say at error
level why, without writing the secret anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import nkeys
import pytest
from daemon import Daemon, sim_config
from publish_rig import NatsServer
from venue_sims import BinanceVenues

from oracled.sim import BinanceSim

pytestmark = pytest.mark.integration
PRICES = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "USDTUSD": 1.0}


@pytest.fixture
async def sims(binance_venues: BinanceVenues) -> list[BinanceSim]:
    return await binance_venues(PRICES, 3, market_seed=3)


def user_seed() -> tuple[str, str]:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed.decode(), nkeys.from_seed(bytearray(seed)).public_key.decode()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_a_refused_credential_is_logged_counted_and_retried_while_prices_flow(
    sims: list[BinanceSim], tmp_path: Path
) -> None:
    """An NKey the server does not know: prices stay live, the rounds count as unpublished
    (disconnected) and keep counting, the sink keeps connecting (the server sees attempt after
    attempt, each counted as a refused credential, none as an unreachable server), the refusal
    is logged at error level, and the seed appears in no log line."""
    _, known = user_seed()
    wrong, _ = user_seed()
    server = NatsServer(
        tmp_path / "nats",
        jetstream=False,
        settings=f"authorization {{ users = [ {{ nkey: {known} }} ] }}",
    )
    await server.start()
    seed_file = tmp_path / "oracled.nk"
    seed_file.write_text(wrong + "\n")
    seed_file.chmod(0o600)
    config = sim_config([(s.ws_url, s.rest_url) for s in sims])
    config += (
        f'\n[nats]\nenabled = true\nservers = ["{server.url}"]\nnkey_seed_file = "{seed_file}"\n'
    )
    daemon = Daemon(config, tmp_path)
    try:
        await daemon.start()
        await daemon.wait_status("BTC/USD", {"active", "degraded"})

        async def unpublished() -> float:
            _, text = await daemon.get("/metrics")
            assert metric(text, "oracled_nats_connected") == 0.0
            return metric(text, 'oracled_nats_unpublished_total{reason="disconnected"}')

        first = await unpublished()

        async def counting() -> bool:
            return await unpublished() > first

        await daemon.wait_for(counting, 10.0, "unpublished rounds counted")

        def attempts() -> int:
            return server.log.read_text().count("authentication error")

        async def retried() -> bool:
            return attempts() >= 3

        await daemon.wait_for(retried, 10.0, "three refused attempts")
        _, text = await daemon.get("/metrics")  # what OracledNatsRefused reads
        failures = 'oracled_nats_connect_failures_total{reason="%s"}'
        assert metric(text, failures % "credentials") >= 3
        assert metric(text, failures % "unreachable") == metric(text, failures % "tls") == 0
        refused = daemon.events("nats credentials refused; retrying")
        assert refused and refused[0]["level"] == "error" and refused[0]["auth"] == "nkey"
        assert len(refused) == 1  # once a minute, not at every attempt
        await daemon.wait_status("BTC/USD", {"active", "degraded"})  # still pricing
        assert wrong not in daemon.logs() and wrong not in server.log.read_text()
        assert daemon.terminate() == 0
    finally:
        await daemon.close()
        server.stop()
