"""The daemon runs under the interpreter's default recursion limit, whatever a dependency set."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from one_venue import one_venue_toml, service_running
from structlog.testing import capture_logs

from oracled.config import load_config
from oracled.service import RECURSION_LIMIT, Service
from oracled.sim import BinanceSim


@pytest.fixture
def raised_limit() -> Iterator[None]:
    """The limit as py_ecc leaves it on import (100,000), put back as it was afterwards."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


@pytest.mark.usefixtures("raised_limit")
async def test_a_started_daemon_lowers_the_recursion_limit_a_dependency_raised(
    tmp_path: Path,
) -> None:
    """py_ecc (imported through eth_keys) raises the process's recursion limit to 100,000 at
    import. Under it an untyped decode (msgspec's, as KuCoin's adapter does with an error
    frame's data; json's, as web3 does with an RPC answer) recurses past the C stack on 1.5
    million nested brackets (3 MB: within a venue's 4 MiB message limit) and the whole process
    dies of a segmentation fault (found decoding such a frame after importing oracled.service:
    exit 139; at the default limit, RecursionError). Once started, the daemon runs at the
    default limit, where the decoders raise RecursionError instead (a malformed frame or a
    failed RPC answer), and says so in its log."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(one_venue_toml(sim.ws_url, sim.rest_url))
        service = Service(load_config(path), config_path=path)
        with capture_logs() as logs:
            async with service_running(service):
                await service.started.wait()
                assert sys.getrecursionlimit() == RECURSION_LIMIT
    lowered = [e for e in logs if e["event"] == "recursion limit lowered"]
    assert [(e["before"], e["after"]) for e in lowered] == [(100_000, RECURSION_LIMIT)]
