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
import hashlib
import json
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import aiohttp
from children import stop
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
#: A block to read state at: a tag or number ("latest", "0x21"), or `{"blockHash": ...}`
#: (EIP-1898), which names one block's state whatever is mined meanwhile.
Block = str | dict[str, str]


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
        stop(self.proc, term_s=5)


def artifacts_hash() -> str:
    """The hash `scripts/chain-setup.sh` keeps beside the artifacts, of the inputs as they are
    now (the same bytes in the same order: the lock file, the compile script, then every .sol
    file under contracts/ and the unpacked Chainlink sources, by path in C order)."""
    sources = [p for d in ("contracts", "build/chain/chainlink") for p in (ROOT / d).rglob("*.sol")]
    sources.sort(key=lambda p: str(p.relative_to(ROOT)))
    digest = hashlib.sha256()
    for path in (ROOT / "package-lock.json", ROOT / "scripts" / "compile-contracts.mjs", *sources):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def start_anvil(log_path: Path, *extra: str) -> Anvil:
    """Start anvil on 127.0.0.1:0 and wait for its `Listening on` line (a few tens of ms).

    Refused while the artifacts were compiled from other contracts than the tree's (a checkout
    that changed a .sol since its last set-up): the tests would deploy the old contract."""
    if not ANVIL.exists() or not ARTIFACTS.exists():
        raise RuntimeError(f"local chain not installed: {_SETUP_HINT}")
    kept = ARTIFACTS.with_name("artifacts.hash")
    if not kept.exists() or kept.read_text().strip() != artifacts_hash():
        raise RuntimeError(f"contracts changed since they were compiled: {_SETUP_HINT}")
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
    stop(proc)
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
        """Send a transaction (anvil's automine mines it, a moment after answering); return its
        receipt."""
        tx: dict[str, Any] = {"to": to, "data": "0x" + calldata(signature, *args).hex()}
        if value:
            tx["value"] = hex(value)
        return await self._send(tx)

    async def _send(self, tx: dict[str, Any]) -> Any:
        tx = {"from": self.account, "gas": hex(15_000_000), **tx}
        receipt = await self.mined(await self.rpc("eth_sendTransaction", [tx]))
        if receipt is None or int(receipt["status"], 16) != 1:
            raise RpcFailed(f"transaction failed: {receipt}")
        return receipt

    async def mined(self, tx_hash: str, within_s: float = 10.0) -> Any:
        """The receipt of `tx_hash` once it is mined (None if it is not within `within_s`):
        automine answers the hash first and mines a moment later, up to about 2 s later on a
        starved machine (a bound of 500 looks 2 ms apart ran out there). The bound only turns a
        transaction that is never mined into a failure."""
        receipt = None
        deadline = asyncio.get_running_loop().time() + within_s
        while receipt is None and asyncio.get_running_loop().time() < deadline:
            receipt = await self.rpc("eth_getTransactionReceipt", [tx_hash])
            if receipt is None:
                await asyncio.sleep(0.002)
        return receipt

    async def call(
        self,
        to: str,
        signature: str,
        *args: Any,
        returns: Sequence[str] = (),
        block: Block = "latest",
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

    async def reorg(self, depth: int) -> None:
        """Replace the last `depth` blocks with as many empty ones (anvil_reorg): the head keeps
        its height under a new hash, and the transactions of the old blocks are gone."""
        await self.rpc("anvil_reorg", [depth, []])

    async def rollback(self, depth: int) -> None:
        """Drop the last `depth` blocks (anvil_rollback): the head goes back."""
        await self.rpc("anvil_rollback", [depth])


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


# -- Uniswap v3: real v3-core pools, the project's own tokens and pool operator ----------------

FEE = 3000  # 0.3 %, tick spacing 60
FULL_RANGE = (-887220, 887220)  # the widest ticks on a spacing of 60
MINTED = 10**40  # of every token, held by the operator that pays the pool


@dataclass(frozen=True)
class Tokens:
    """The factory, the pool operator and the test tokens; `usd_below`/`usd_above` sort below
    and above both WETH and WBTC, so each can be a pool's token0 or its token1."""

    factory: str
    operator: str
    weth: str
    wbtc: str
    usd_below: str
    usd_above: str

    def decimals(self, token: str) -> int:
        return {self.weth: 18, self.wbtc: 8}.get(token, 6)


@dataclass(frozen=True)
class Pool:
    address: str
    token0: str
    token1: str
    decimals0: int
    decimals1: int


async def new_token(chain: Chain, operator: str, symbol: str, decimals: int) -> str:
    token = await chain.deploy(
        "TestToken", ["string", "string", "uint8"], [f"Test {symbol}", symbol, decimals]
    )
    await chain.transact(token, "mint(address,uint256)", operator, MINTED)
    return token


async def deploy_tokens(chain: Chain, *, both_sides: bool = True) -> Tokens:
    """Uniswap's v3 factory, the pool operator, WETH (18), WBTC (8) and two USD tokens (6);
    without `both_sides`, one USD token wherever it sorts (both fields name it)."""
    factory = await chain.deploy("UniswapV3Factory")
    operator = await chain.deploy("TestPoolOperator")
    weth = await new_token(chain, operator, "WETH", 18)
    wbtc = await new_token(chain, operator, "WBTC", 8)
    if not both_sides:
        usd = await new_token(chain, operator, "USD", 6)
        return Tokens(factory, operator, weth, wbtc, usd, usd)
    low, high = sorted((int(weth, 16), int(wbtc, 16)))
    below = above = None
    for _ in range(64):  # addresses follow the deployer's nonce; a few tries find both sides
        usd = await new_token(chain, operator, "USD", 6)
        if int(usd, 16) < low and below is None:
            below = usd
        elif int(usd, 16) > high and above is None:
            above = usd
        if below and above:
            return Tokens(factory, operator, weth, wbtc, below, above)
    raise RuntimeError("no USD token address on both sides of WETH and WBTC")


def sqrt_price_x96(price0_in_1: Decimal, decimals0: int, decimals1: int) -> int:
    """slot0's root of the raw price for a human price of token0 in token1."""
    with localcontext() as ctx:
        ctx.prec = 80
        raw = price0_in_1 * Decimal(10) ** (decimals1 - decimals0)
        return int(raw.sqrt() * (1 << 96))


async def make_pool(
    chain: Chain,
    tokens: Tokens,
    base: str,
    quote: str,
    price: str,
    *,
    liquidity: int,
    cardinality: int = 100,
) -> Pool:
    """A pool of base/quote at `price` (quote per base), with full-range liquidity."""
    await chain.transact(tokens.factory, "createPool(address,address,uint24)", base, quote, FEE)
    (address,) = await chain.call(
        tokens.factory, "getPool(address,address,uint24)", base, quote, FEE, returns=["address"]
    )
    token0, token1 = sorted((base, quote), key=lambda a: int(a, 16))
    d0, d1 = tokens.decimals(token0), tokens.decimals(token1)
    with localcontext() as ctx:
        ctx.prec = 80
        human = Decimal(price) if token0 == base else 1 / Decimal(price)
    await chain.transact(address, "initialize(uint160)", sqrt_price_x96(human, d0, d1))
    if cardinality > 1:
        await chain.transact(address, "increaseObservationCardinalityNext(uint16)", cardinality)
    if liquidity:
        await mint(chain, tokens, address, liquidity)
    return Pool(to_checksum_address(address), token0, token1, d0, d1)


async def mint(chain: Chain, tokens: Tokens, pool: str, liquidity: int) -> None:
    await chain.transact(
        tokens.operator, "mint(address,int24,int24,uint128)", pool, *FULL_RANGE, liquidity
    )


async def burn(chain: Chain, tokens: Tokens, pool: str, liquidity: int) -> None:
    await chain.transact(
        tokens.operator, "burn(address,int24,int24,uint128)", pool, *FULL_RANGE, liquidity
    )


async def swap(chain: Chain, tokens: Tokens, pool: str, zero_for_one: bool, amount: int) -> int:
    """Sell `amount` of token0 (zero_for_one) or token1; return the swap's block timestamp."""
    receipt = await chain.transact(
        tokens.operator, "swapExactIn(address,bool,uint256)", pool, zero_for_one, amount
    )
    block = await chain.block(receipt["blockNumber"])
    return int(block["timestamp"], 16)


async def slot0_tick(chain: Chain, pool: str) -> int:
    answer = await chain.call(
        pool,
        "slot0()",
        returns=["uint160", "int24", "uint16", "uint16", "uint16", "uint8", "bool"],
    )
    return int(answer[1])
