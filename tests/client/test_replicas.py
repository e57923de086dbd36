"""Three `oracled run` replicas with their own keys feed one client; one lies, then one stops.

Replicas A and B read the same five simulated venues; replica C reads five venues that agree with
each other on a BTC price 30 % too high, so C is live, validly signed, and wrong. The client takes
the median over a quorum of three signers: C cannot move it. When A stops, two fresh signers are
below the quorum and the market becomes `unknown`. A second client that allows only A and B
refuses C's frames as `unknown_signer`. Two replicas given one key sign conflicting rounds for
the same round times: a client refuses them as `equivocation`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path

import pytest
from daemon import Daemon, sim_config

from oracled.client import OracleClient
from oracled.publish.signer import SigningKey
from oracled.sim import BinanceSim

pytestmark = pytest.mark.integration
HONEST = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "USDTUSD": 1.0}
LYING = {**HONEST, "BTCUSDT": 78_000.0}
SAFETY_S = 30.0


async def venues(prices: dict[str, float], seed: int) -> list[BinanceSim]:
    sims = [BinanceSim(prices, seed=seed + i, rate_hz=20.0, market_seed=seed) for i in range(5)]
    for sim in sims:
        await sim.start()
    return sims


def signing_daemon(
    name: str, sims: list[BinanceSim], tmp_path: Path, key: SigningKey | None = None
) -> tuple[Daemon, str]:
    workdir = tmp_path / name
    workdir.mkdir()
    key = key or SigningKey.generate()
    key_file = workdir / "signing.key"
    key_file.write_text(key.hex() + "\n")
    key_file.chmod(0o600)
    config = sim_config([(s.ws_url, s.rest_url) for s in sims])
    config += f'\n[signing]\nenabled = true\ndeployment = "test"\nkey_file = "{key_file}"\n'
    config += f'lease_file = "{workdir / "signing-lease.json"}"\n'
    return Daemon(config, workdir), key.address


@pytest.fixture
async def replicas(
    tmp_path: Path,
) -> AsyncIterator[tuple[list[Daemon], list[str]]]:
    honest, lying = await venues(HONEST, 42), await venues(LYING, 7)
    made = [
        signing_daemon(name, sims, tmp_path)
        for name, sims in (("a", honest), ("b", honest), ("c", lying))
    ]
    daemons = [d for d, _ in made]
    try:
        await asyncio.gather(*(d.start() for d in daemons))
        yield daemons, [address for _, address in made]
    finally:
        for d in daemons:
            await d.close()
        for sim in (*honest, *lying):
            await sim.stop()


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Poll a condition on state other tasks change (no event to wait on); `what` names a hang."""
    async with asyncio.timeout(SAFETY_S):
        while not predicate():  # noqa: ASYNC110 - polling state owned by other tasks
            await asyncio.sleep(0.05)


async def test_median_of_three_signed_replicas_survives_a_liar_and_a_stop(
    replicas: tuple[list[Daemon], list[str]],
) -> None:
    """Quorum 3 of A, B, C: honest median despite C; A stopped: unknown; C unknown to a stricter
    client; every replica serves its own address and the deployment at /v1/info, and logs both
    at start-up (what a consumer must be given), never the key."""
    daemons, addresses = replicas
    for d, address in zip(daemons, addresses, strict=True):
        status, info = await d.get("/v1/info")
        assert status == 200 and (info["signer"], info["deployment"]) == (address, "test")
        (started,) = d.events("oracled started")
        assert (started["signer"], started["deployment"]) == (address, "test")
        key = (d.config.parent / "signing.key").read_text().strip()
        assert key[-64:] not in d.logs()
    quorum = OracleClient(addresses, deployment="test", quorum=3, max_age_ms=2_000)
    strict = OracleClient(addresses[:2], deployment="test", quorum=2, max_age_ms=2_000)
    watchers = [
        asyncio.create_task(c.watch_ws(d.base, ["BTC/USD"], reconnect_s=0.2))
        for c in (quorum, strict)
        for d in daemons
    ]
    try:
        await wait_for(lambda: quorum.price("BTC/USD").status == "active", "quorum of three")
        view = quorum.price("BTC/USD")
        assert len(view.signers) == 3 and view.price is not None
        assert Decimal("57000") < view.price < Decimal("63000")  # C says about 78,000
        liar = next(r for r in view.reports if r.signer == addresses[2])
        assert liar.price is not None and liar.price > Decimal("70000")

        await wait_for(lambda: strict.rejected["unknown_signer"] > 0, "C refused by strict")
        await wait_for(lambda: strict.price("BTC/USD").status == "active", "strict quorum")
        assert strict.price("BTC/USD").signers == tuple(sorted(addresses[:2]))

        assert daemons[0].terminate() == 0
        await wait_for(lambda: quorum.price("BTC/USD").status == "unknown", "below quorum")
        assert quorum.price("BTC/USD").price is None
        forged = {"forged", "bad_signature", "bad_proof", "truncated", "malformed"}
        assert all(quorum.rejected[r] == 0 for r in forged)  # the daemons' frames all verify
    finally:
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)


async def test_two_replicas_sharing_one_key_are_caught_equivocating(tmp_path: Path) -> None:
    """Two `oracled run` replicas given the same key (as pods reading it from one Secret), on
    venues whose prices differ: they sign different rounds for the same round times (each its
    own round count from its start, and its own prices), and a client hearing both refuses the
    key's reports as `equivocation`, with both messages kept."""
    key = SigningKey.generate()
    one, other = await venues(HONEST, 42), await venues(HONEST, 7)
    daemons = [
        signing_daemon(name, sims, tmp_path, key)[0] for name, sims in (("a", one), ("b", other))
    ]
    client = OracleClient([key.address], deployment="test", max_age_ms=2_000)
    watchers: list[asyncio.Task[None]] = []
    try:
        await asyncio.gather(*(d.start() for d in daemons))
        watchers = [
            asyncio.create_task(client.watch_ws(d.base, ["BTC/USD"], reconnect_s=0.2))
            for d in daemons
        ]
        await wait_for(lambda: client.equivocated[key.address] >= 3, "three conflicting rounds")
        evidence = client.equivocations[0]
        assert evidence.signer == key.address
        assert evidence.first.ts == evidence.second.ts == evidence.ts
        first, second = evidence.first, evidence.second
        assert (first.round, first.root) != (second.round, second.root)
        assert client.rejected["equivocation"] >= 3
    finally:
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        for d in daemons:
            await d.close()
        for sim in (*one, *other):
            await sim.stop()
