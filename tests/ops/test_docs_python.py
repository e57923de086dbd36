"""The Python the docs give a consumer (docs/publishing.md, docs/margin.md) run against real
signing daemons on loopback, as a reader would paste them."""

from __future__ import annotations

import asyncio
import json
import re
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from catalogue import ROOT
from daemon import Daemon, sim_config
from eth_account import Account

from oracled.sim import BinanceSim

# The tests only read the daemons (a signed frame, their streams, a report): they share them.
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

#: The public development mnemonic whose accounts 16 and 17 are two of the signers
#: docs/publishing.md's client example trusts: the daemons here sign with them, so that the
#: example runs with its own addresses.
_MNEMONIC = "test test test test test test test test test test test junk"
_DOC_SIGNERS = (16, 17)
#: The hosts of the client example, in place of which the daemons here are watched.
_DOC_HOSTS = '("http://10.0.0.1:8480", "http://10.0.0.2:8480", "http://10.0.0.3:8480")'


def _blocks(page: str, language: str) -> list[str]:
    """The ```<language> blocks of docs/<page>, in order."""
    text = (ROOT / "docs" / page).read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def _key(index: int) -> Any:
    """Account `index` of the development mnemonic (its key and address)."""
    Account.enable_unaudited_hdwallet_features()
    return Account.from_mnemonic(_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemons(
    module_venues: list[BinanceSim], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[list[Daemon]]:
    """Two daemons of the deployment `production` on the same venues, each with its own key."""
    venues = module_venues
    running: list[Daemon] = []
    try:
        for index in _DOC_SIGNERS:
            workdir = tmp_path_factory.mktemp(f"daemon-{index}")
            key = workdir / "signing.key"
            key.write_text("0x" + bytes(_key(index).key).hex() + "\n")
            key.chmod(0o600)
            config = sim_config([(s.ws_url, s.rest_url) for s in venues]) + (
                f'\n[signing]\nenabled = true\ndeployment = "production"\nkey_file = "{key}"\n'
                f'lease_file = "{workdir / "lease.json"}"\n'
            )
            daemon = Daemon(config, workdir)
            await daemon.start()
            running.append(daemon)
        for daemon in running:
            await daemon.wait_status("BTC/USD", {"active", "degraded"}, limit_s=20)
        yield running
    finally:
        for daemon in running:
            await daemon.close()


async def _signed_frame(daemon: Daemon, market: str) -> dict[str, Any]:
    """The data of the first `signed` frame of `market` the daemon streams."""
    assert daemon.session is not None
    url = daemon.base.replace("http", "ws", 1) + "/v1/stream"
    async with daemon.session.ws_connect(url) as ws:
        await ws.send_json({"op": "subscribe", "markets": [market], "signed": True})
        async for msg in ws:
            frame = json.loads(msg.data)
            if frame["type"] == "signed":
                return dict(frame["data"])
    raise AssertionError("the stream ended before a signed frame")


def _printer(into: list[tuple[Any, ...]], when: Callable[..., bool], done: asyncio.Event) -> Any:
    """A `print` for a block: keeps what it is given, sets `done` once `when` holds of it."""

    def printed(*args: Any) -> None:
        into.append(args)
        if when(*args):
            done.set()

    return printed


async def test_the_signature_check_of_publishing_recovers_the_signer(
    daemons: list[Daemon],
) -> None:
    """*Verifying, for consumers in any language*: its eth-account example, given a signed
    frame's `sp`, its `root` and `signature` as bytes, recovers the address the frame names
    and the daemon signs with (domain `oracled`, version 3, the deployment's salt)."""
    (block,) = _blocks("publishing.md", "python")[:1]
    sp = await _signed_frame(daemons[0], "BTC/USD")
    scope: dict[str, Any] = {
        "sp": sp,
        "root_bytes": bytes.fromhex(sp["root"][2:]),
        "sig_bytes": bytes.fromhex(sp["signature"][2:]),
    }
    exec(compile(block, "docs/publishing.md", "exec"), scope)
    assert scope["signer"] == sp["signer"] == _key(_DOC_SIGNERS[0]).address


async def test_the_client_example_of_publishing_prices_from_a_quorum(
    daemons: list[Daemon],
) -> None:
    """The `OracleClient` example (trusted addresses, deployment, quorum 2, `watch_ws` on every
    daemon, `client.price`) prints BTC/USD priced by both daemons' keys: its hosts are the only
    words changed."""
    block = _blocks("publishing.md", "python")[1]
    assert _DOC_HOSTS in block, "the example's hosts moved: update _DOC_HOSTS"
    hosts = "(" + "".join(f'"{d.base}", ' for d in daemons) + ")"
    seen: list[tuple[Any, ...]] = []
    priced = asyncio.Event()
    both = {_key(i).address for i in _DOC_SIGNERS}

    def quorate(status: str, price: object, signers: tuple[str, ...]) -> bool:
        return status in ("active", "degraded") and price is not None and set(signers) == both

    scope: dict[str, Any] = {"print": _printer(seen, quorate, priced)}
    exec(compile(block.replace(_DOC_HOSTS, hosts), "docs/publishing.md", "exec"), scope)
    task = asyncio.create_task(scope["main"]())
    waiter = asyncio.create_task(priced.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # the example ended: its error, not a wait to the end
        assert priced.is_set(), seen[-5:]
    finally:
        for running in (task, waiter):
            running.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)


async def test_the_library_example_of_margin_prints_decisions(
    daemons: list[Daemon], tmp_path: Path
) -> None:
    """*Library*: the engine on the accounts file of *Accounts* (its TOML example) and a report
    read from `GET /v1/prices/BTC-USD` prints its decisions as JSON: the example's short,
    isolated position (entered at 50,000, BTC near 60,000 here) is liquidated."""
    (accounts,) = _blocks("margin.md", "toml")[:1]
    tomllib.loads(accounts)  # the example is a whole file, as the block claims
    path = tmp_path / "accounts.toml"
    path.write_text(accounts)
    status, report = await daemons[0].get("/v1/prices/BTC-USD")
    assert status == 200, report
    (block,) = _blocks("margin.md", "python")
    seen: list[tuple[Any, ...]] = []
    scope = {
        "path": path,
        "report_json": json.dumps(report).encode(),
        "now_ms": report["ts"],
        "print": _printer(seen, lambda *_: False, asyncio.Event()),
    }
    exec(compile(block, "docs/margin.md", "exec"), scope)
    decisions = [json.loads(args[0]) for args in seen]
    liquidated = [(d["account"], d["scope"]) for d in decisions if d["kind"] == "liquidation"]
    assert liquidated == [("alice", "isolated:BTC-PERP")], decisions
