"""A real local Ethereum node (anvil) for the on-chain tests, and small helpers to drive it.

anvil comes from the pinned npm package installed by `scripts/chain-setup.sh`; the contracts are
compiled by the same script into `build/chain/artifacts.json`. The binary is started directly
(not through npm's Node wrapper), on 127.0.0.1 with an OS-chosen port that is read back from its
log file: stdout goes to a file because anvil logs every request, and an undrained pipe would
stall it.

Transactions are sent from anvil's unlocked dev account with `eth_sendTransaction`; calldata is
encoded with eth_abi from a plain signature such as ``"updateAnswer(int256)"``.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from eth_abi.abi import decode, encode
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address

ROOT = Path(__file__).resolve().parents[2]
ANVIL = ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
ARTIFACTS = ROOT / "build" / "chain" / "artifacts.json"
UNISWAP_ARTIFACTS = ROOT / "node_modules" / "@uniswap" / "v3-core" / "artifacts" / "contracts"
MULTICALL3 = "0xcA11bde05977b3631167028862bE2a173976CA11"
CHAIN_ID = 31337
_SETUP_HINT = "run scripts/chain-setup.sh (or make install-test) to install the local chain"


def _types(signature: str) -> list[str]:
    """Argument types of ``name(t1,t2)``; tuples are not needed by these tests."""
    inner = signature[signature.index("(") + 1 : signature.rindex(")")]
    return [t for t in inner.split(",") if t]


def calldata(signature: str, *args: Any) -> bytes:
    """Selector + ABI-encoded arguments."""
    return function_signature_to_4byte_selector(signature) + encode(_types(signature), list(args))


class RpcFailed(Exception):
    """The node answered a test's request with a JSON-RPC error."""


@dataclass
class Anvil:
    """A running anvil process."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_anvil(log_path: Path, *extra: str) -> Anvil:
    """Start anvil on 127.0.0.1:0 and wait for its `Listening on` line (a few tens of ms)."""
    if not ANVIL.exists() or not ARTIFACTS.exists():
        raise RuntimeError(f"local chain not installed: {_SETUP_HINT}")
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            str(ANVIL),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--chain-id",
            str(CHAIN_ID),
            "--accounts",
            "3",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        found = re.search(rb"Listening on 127\.0\.0\.1:(\d+)", log_path.read_bytes())
        if found:
            return Anvil(proc, int(found.group(1)), log_path)
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"anvil did not start: {log_path.read_text(errors='replace')[-2000:]}")


class Chain:
    """JSON-RPC helpers over one aiohttp session: deploy, transact, call, time travel."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session
        self.artifacts: dict[str, Any] = json.loads(ARTIFACTS.read_text())
        self.account = ""
        self._id = 0

    async def rpc(self, method: str, params: Sequence[Any] = ()) -> Any:
        self._id += 1
        body = {"jsonrpc": "2.0", "id": self._id, "method": method, "params": list(params)}
        async with self.session.post(self.url, json=body) as resp:
            answer = await resp.json(content_type=None)
        if "error" in answer:
            raise RpcFailed(f"{method}: {answer['error']}")
        return answer["result"]

    async def start(self) -> None:
        self.account = (await self.rpc("eth_accounts"))[0]

    def bytecode(self, name: str) -> str:
        """Creation code of a compiled contract (build/chain/artifacts.json) or a Uniswap one."""
        if name in self.artifacts:
            return str(self.artifacts[name]["bytecode"])
        found = sorted(UNISWAP_ARTIFACTS.rglob(f"{name}.json"))
        if not found:
            raise KeyError(f"no artifact named {name}")
        return str(json.loads(found[0].read_text())["bytecode"])

    async def deploy(self, name: str, types: Sequence[str] = (), args: Sequence[Any] = ()) -> str:
        """Deploy a contract; return its checksummed address."""
        data = self.bytecode(name) + encode(list(types), list(args)).hex()
        receipt = await self._send({"data": data})
        return to_checksum_address(receipt["contractAddress"])

    async def transact(self, to: str, signature: str, *args: Any, value: int = 0) -> Any:
        """Send a transaction (mined at once by anvil's automine); return its receipt."""
        tx: dict[str, Any] = {"to": to, "data": "0x" + calldata(signature, *args).hex()}
        if value:
            tx["value"] = hex(value)
        return await self._send(tx)

    async def _send(self, tx: dict[str, Any]) -> Any:
        tx = {"from": self.account, "gas": hex(15_000_000), **tx}
        tx_hash = await self.rpc("eth_sendTransaction", [tx])
        receipt = None
        for _ in range(500):  # automine answers the hash first and mines a moment later
            receipt = await self.rpc("eth_getTransactionReceipt", [tx_hash])
            if receipt is not None:
                break
            await asyncio.sleep(0.002)
        if receipt is None or int(receipt["status"], 16) != 1:
            raise RpcFailed(f"transaction failed: {receipt}")
        return receipt

    async def call(
        self,
        to: str,
        signature: str,
        *args: Any,
        returns: Sequence[str] = (),
        block: str = "latest",
    ) -> tuple[Any, ...]:
        data = "0x" + calldata(signature, *args).hex()
        raw = await self.rpc("eth_call", [{"to": to, "data": data}, block])
        return tuple(decode(list(returns), bytes.fromhex(raw[2:])))

    async def install_multicall3(self) -> str:
        """Put the project's own aggregate3 contract at the canonical Multicall3 address."""
        temp = await self.deploy("Multicall3")
        code = await self.rpc("eth_getCode", [temp, "latest"])
        await self.rpc("anvil_setCode", [MULTICALL3, code])
        return MULTICALL3

    async def block(self, tag: str = "latest") -> dict[str, Any]:
        result: dict[str, Any] = await self.rpc("eth_getBlockByNumber", [tag, False])
        return result

    async def timestamp(self) -> int:
        return int((await self.block())["timestamp"], 16)

    async def block_number(self) -> int:
        return int(await self.rpc("eth_blockNumber"), 16)

    async def mine(self, blocks: int = 1) -> None:
        await self.rpc("anvil_mine", [hex(blocks)])

    async def warp(self, seconds: int) -> None:
        """Move chain time forward and mine one block at the new time."""
        await self.rpc("evm_increaseTime", [seconds])
        await self.rpc("evm_mine")

    async def snapshot(self) -> str:
        return str(await self.rpc("evm_snapshot"))

    async def revert(self, snapshot_id: str) -> None:
        if not await self.rpc("evm_revert", [snapshot_id]):
            raise RpcFailed(f"evm_revert {snapshot_id} refused")


#: Pyth price ids used by the tests (any 32 bytes do for MockPyth).
PYTH_ETH_ID = bytes.fromhex("ff61491a931112ddf1bd8147cd1b641375f79f5825126d665480874634fd0ace")
PYTH_BTC_ID = bytes.fromhex("e62df6c8b4a85fe1a67db44dc12de5db330f7ac66b72dc658afedf0f4a415b43")


@dataclass(frozen=True)
class Deployed:
    """The contract set every test starts from (addresses are checksummed)."""

    multicall: str
    eth_aggregator: str  # Chainlink's MockV3Aggregator, 8 decimals, 3000.00
    eth_proxy: str  # TestAggregatorProxy over eth_aggregator
    btc_aggregator: str  # TestAggregator with minAnswer 1000.00 / maxAnswer 1,000,000.00
    btc_proxy: str
    sequencer: str  # MockV3Aggregator used as an L2 sequencer uptime feed (0 = up)
    pyth: str  # Pyth's MockPyth, valid time period 60 s, fee 1 wei


async def pyth_update(chain: Chain, pyth: str, feed_id: bytes, price: int, conf: int,
                      expo: int, publish_time: int) -> None:  # fmt: skip
    """Publish one Pyth price through MockPyth's own update-data builder."""
    (data,) = await chain.call(
        pyth,
        "createPriceFeedUpdateData(bytes32,int64,uint64,int32,int64,uint64,uint64,uint64)",
        feed_id, price, conf, expo, price, conf, publish_time, max(publish_time - 1, 0),
        returns=["bytes"],
    )  # fmt: skip
    await chain.transact(pyth, "updatePriceFeeds(bytes[])", [data], value=1)
