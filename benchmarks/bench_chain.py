"""On-chain reading benchmark: 100 feeds of one chain read every block from a local anvil.

Deploys N Chainlink-style feeds (Chainlink's MockV3Aggregator behind the project's test proxy),
U Uniswap v3 pools (Uniswap's own v3-core factory and pools, the project's test tokens, a
five-minute TWAP window) and M Pyth price ids on one MockPyth, registers them all with one
`ChainReader`, then for each measured block: changes every answer and swaps in every pool
(transactions, not measured), mines, and times the reader's `poll_once()`: HTTP round trips
(counted by the reader), wall time, and this process's CPU time (anvil runs in its own process
and is not counted). A second pass times blocks where nothing changed (every feed decodes; the
pools still emit, their TWAP moving with the block's time, the other feeds none).

A last figure reads the same block through web3 instead, for comparison: `AsyncWeb3.eth.call`
of the same aggregate3 calldata, web3 configured as well as it goes (shared keep-alive session,
chain id cached, no middleware), the answer decoded by the same code.

Needs the local chain: `scripts/chain-setup.sh` (run by `make install-test`).

    python benchmarks/bench_chain.py [--chainlink 60] [--uniswap 20] [--pyth 20] [--blocks 20]
                                     [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from eth_abi.abi import decode, encode
from eth_utils.abi import function_signature_to_4byte_selector

from oracled.clock import SystemClock
from oracled.config import ChainConfig, FeedSpec
from oracled.jsonrpc import RpcClient
from oracled.model import Quote
from oracled.sources.evm.chain import ChainReader
from oracled.sources.evm.chainlink import ChainlinkFeed
from oracled.sources.evm.feed import Feed
from oracled.sources.evm.multicall import decode_aggregate3
from oracled.sources.evm.pyth_evm import PythEvmFeed
from oracled.sources.evm.uniswap_v3 import UniswapV3Feed
from oracled.sources.stats import SourceStats

ROOT = Path(__file__).resolve().parents[1]
ANVIL = ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
ARTIFACTS = ROOT / "build" / "chain" / "artifacts.json"
UNISWAP = ROOT / "node_modules" / "@uniswap" / "v3-core" / "artifacts" / "contracts"
MULTICALL3 = "0xcA11bde05977b3631167028862bE2a173976CA11"
TWAP_WINDOW_S = 300
FULL_RANGE = (-887220, 887220)  # the widest ticks on the 0.3 % tier's spacing of 60
SQRT_PRICE_1 = 1 << 96  # a raw price of 1 (pools start there; only the cost is measured)


def _data(signature: str, types: list[str], args: list[Any]) -> str:
    return "0x" + (function_signature_to_4byte_selector(signature) + encode(types, args)).hex()


class Node:
    """Just enough JSON-RPC to deploy and drive the contracts."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url, self.http, self.n = url, http, 0
        self.art = json.loads(ARTIFACTS.read_text())
        self.account = ""

    async def rpc(self, method: str, params: list[Any]) -> Any:
        self.n += 1
        body = {"jsonrpc": "2.0", "id": self.n, "method": method, "params": params}
        async with self.http.post(self.url, json=body) as resp:
            answer = await resp.json(content_type=None)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    async def send(self, tx: dict[str, Any]) -> Any:
        tx = {"from": self.account, "gas": hex(10_000_000), **tx}
        h = await self.rpc("eth_sendTransaction", [tx])
        for _ in range(5000):  # automine answers the hash first and mines a moment later
            receipt = await self.rpc("eth_getTransactionReceipt", [h])
            if receipt is not None:
                return receipt
            await asyncio.sleep(0.001)
        raise RuntimeError("transaction not mined")

    async def deploy(self, name: str, types: list[str], args: list[Any]) -> str:
        if name in self.art:
            code = self.art[name]["bytecode"]
        else:  # Uniswap's own artifacts, as its npm package ships them
            code = json.loads(next(UNISWAP.rglob(f"{name}.json")).read_text())["bytecode"]
        code += encode(types, args).hex()
        return str((await self.send({"data": code}))["contractAddress"])

    async def transact(self, to: str, signature: str, types: list[str], args: list[Any]) -> None:
        receipt = await self.send({"to": to, "data": _data(signature, types, args)})
        if int(receipt["status"], 16) != 1:
            raise RuntimeError(f"{signature} failed")


class Pools:
    """Uniswap v3 pools of 18-decimal test tokens against one 6-decimal USD token."""

    def __init__(self, operator: str, pools: list[tuple[str, bool]]) -> None:
        self.operator = operator
        self.pools = pools  # (address, the base token is token0)

    @classmethod
    async def deploy(cls, node: Node, count: int) -> Pools:
        factory = await node.deploy("UniswapV3Factory", [], [])
        operator = await node.deploy("TestPoolOperator", [], [])
        usd = await cls._token(node, operator, "USD", 6)
        pools = []
        for i in range(count):
            base = await cls._token(node, operator, f"T{i}", 18)
            fee = ["address", "address", "uint24"]
            await node.transact(
                factory, "createPool(address,address,uint24)", fee, [base, usd, 3000]
            )
            answer = await node.rpc("eth_call", [{"to": factory, "data": _data(
                "getPool(address,address,uint24)", fee, [base, usd, 3000])}, "latest"])  # fmt: skip
            (pool,) = decode(["address"], bytes.fromhex(answer[2:]))
            await node.transact(pool, "initialize(uint160)", ["uint160"], [SQRT_PRICE_1])
            await node.transact(
                pool, "increaseObservationCardinalityNext(uint16)", ["uint16"], [64]
            )
            await node.transact(operator, "mint(address,int24,int24,uint128)",
                                ["address", "int24", "int24", "uint128"],
                                [pool, *FULL_RANGE, 10**20])  # fmt: skip
            pools.append((str(pool), int(base, 16) < int(usd, 16)))
        return cls(operator, pools)

    @staticmethod
    async def _token(node: Node, operator: str, symbol: str, decimals: int) -> str:
        token = await node.deploy("TestToken", ["string", "string", "uint8"],
                                  [symbol, symbol, decimals])  # fmt: skip
        await node.transact(token, "mint(address,uint256)", ["address", "uint256"],
                            [operator, 10**40])  # fmt: skip
        return token

    def feeds(self) -> list[Feed]:
        return [
            UniswapV3Feed(
                "uni",
                f"U{i}/USD",
                pool,
                invert=not base_first,
                token0_decimals=18 if base_first else 6,
                token1_decimals=6 if base_first else 18,
                min_liquidity=1,
                twap_window_s=TWAP_WINDOW_S,
            )
            for i, (pool, base_first) in enumerate(self.pools)
        ]

    def swaps(self, k: int) -> list[dict[str, Any]]:
        """One small swap per pool, alternating direction, so every pool's tick moves."""
        types = ["address", "bool", "uint256"]
        return [{"to": self.operator,
                 "data": _data("swapExactIn(address,bool,uint256)", types, [p, k % 2 == 0, 10**15])}
                for p, _ in self.pools]  # fmt: skip


async def _setup(node: Node, n_cl: int, n_py: int) -> tuple[list[str], list[str], str, list[bytes]]:
    node.account = (await node.rpc("eth_accounts", []))[0]
    temp = await node.deploy("Multicall3", [], [])
    await node.rpc("anvil_setCode", [MULTICALL3, await node.rpc("eth_getCode", [temp, "latest"])])
    aggs = [await node.deploy("MockV3Aggregator", ["uint8", "int256"], [8, (1000 + i) * 10**8])
            for i in range(n_cl)]  # fmt: skip
    proxies = [await node.deploy("TestAggregatorProxy", ["address"], [a]) for a in aggs]
    pyth = await node.deploy("MockPyth", ["uint256", "uint256"], [60, 1])
    ids = [i.to_bytes(32, "big") for i in range(1, n_py + 1)]
    return aggs, proxies, pyth, ids


async def _update_all(
    node: Node, aggs: list[str], pyth: str, ids: list[bytes], pools: Pools, k: int
) -> None:
    now = int((await node.rpc("eth_getBlockByNumber", ["latest", False]))["timestamp"], 16) + 1
    txs = [{"to": a, "data": _data("updateAnswer(int256)", ["int256"], [(2000 + k + i) * 10**8])}
           for i, a in enumerate(aggs)]  # fmt: skip
    for i, fid in enumerate(ids):
        blob = await node.rpc("eth_call", [{"to": pyth, "data": _data(
            "createPriceFeedUpdateData(bytes32,int64,uint64,int32,int64,uint64,uint64,uint64)",
            ["bytes32", "int64", "uint64", "int32", "int64", "uint64", "uint64", "uint64"],
            [fid, (100 + i + k) * 10**8, 10**6, -8, 10**10, 10**6, now + k, now + k - 1],
        )}, "latest"])  # fmt: skip
        (payload,) = decode(["bytes"], bytes.fromhex(blob[2:]))
        update = _data("updatePriceFeeds(bytes[])", ["bytes[]"], [[payload]])
        txs.append({"to": pyth, "value": "0x1", "data": update})
    txs += pools.swaps(k)
    await node.rpc("evm_setAutomine", [False])
    sender = {"from": node.account, "gas": hex(500_000)}
    hashes = [await node.rpc("eth_sendTransaction", [{**sender, **t}]) for t in txs]
    await node.rpc("evm_mine", [])
    await node.rpc("evm_setAutomine", [True])
    for h in hashes:
        receipt = await node.rpc("eth_getTransactionReceipt", [h])
        if receipt is None or int(receipt["status"], 16) != 1:
            raise RuntimeError("update transactions failed")


def _start_anvil() -> tuple[subprocess.Popen[bytes], str]:
    if not ANVIL.exists() or not ARTIFACTS.exists():
        sys.exit("run scripts/chain-setup.sh first (make install-test)")
    log = Path(tempfile.mkdtemp()) / "anvil.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(ANVIL), "--host", "127.0.0.1", "--port", "0", "--accounts", "2",
             "--gas-limit", "300000000"], stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    for _ in range(2000):
        m = re.search(rb"Listening on 127\.0\.0\.1:(\d+)", log.read_bytes())
        if m:
            return proc, f"http://127.0.0.1:{int(m.group(1))}"
        time.sleep(0.01)
    proc.kill()
    sys.exit("anvil did not start")


async def _run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        node = Node(url, http)
        aggs, proxies, pyth, ids = await _setup(node, args.chainlink, args.pyth)
        pools = await Pools.deploy(node, args.uniswap)
        await node.rpc("evm_increaseTime", [2 * TWAP_WINDOW_S])  # a window of pool history
        await node.rpc("evm_mine", [])
        cfg = ChainConfig(chain_id=31337, rpc_urls=(url,))
        reader = ChainReader("bench", cfg, RpcClient([url], http, clock=SystemClock()),
                             SystemClock(), http)  # fmt: skip
        emitted: list[Quote] = []
        stats = SourceStats("bench")
        for i, p in enumerate(proxies):
            spec = FeedSpec(address=p, heartbeat_s=86_400)
            reader.register(ChainlinkFeed("cl", f"F{i}/USD", spec), emitted.append, stats)
        for i, fid in enumerate(ids):
            spec = FeedSpec(feed_id="0x" + fid.hex(), max_age_s=86_400)
            reader.register(PythEvmFeed("py", f"P{i}/USD", pyth, spec), emitted.append, stats)
        for feed in pools.feeds():
            reader.register(feed, emitted.append, stats)
        await _update_all(node, aggs, pyth, ids, pools, 0)
        trips = reader.stats.round_trips
        await reader.poll_once()  # first block: the feeds' set-up reads, then the block's read
        first_block_trips = reader.stats.round_trips - trips
        if stats.dropped or stats.malformed:
            raise RuntimeError(f"feeds dropped reads: {dict(stats.dropped)}")
        changed: list[tuple[float, float, int, int]] = []
        for k in range(1, args.blocks + 1):
            await _update_all(node, aggs, pyth, ids, pools, k)
            changed.append(await _timed(reader, emitted))
        idle: list[tuple[float, float, int, int]] = []
        for _ in range(args.blocks):
            await node.rpc("evm_mine", [])
            idle.append(await _timed(reader, emitted))
        through_web3 = await _web3_read(url, http, reader, args.blocks)
    feeds = args.chainlink + args.uniswap + args.pyth
    return {
        "feeds": feeds,
        "mix": {"chainlink": args.chainlink, "uniswap_v3": args.uniswap, "pyth_evm": args.pyth},
        "calls_per_block": 1 + 5 * args.chainlink + 3 * args.uniswap + args.pyth,
        "python": platform.python_version(),
        "first_block_round_trips": first_block_trips,
        "changed": _summary(changed, feeds),
        "unchanged": _summary(idle, feeds),
        "one_eth_call": through_web3,
    }


async def _web3_read(
    url: str, http: aiohttp.ClientSession, reader: ChainReader, blocks: int
) -> dict[str, Any]:
    """The block's read alone (aggregate3 eth_call and its decode, no header, no feeds) through
    AsyncWeb3.eth.call and through the reader's own client."""
    from web3 import AsyncHTTPProvider, AsyncWeb3

    provider = AsyncHTTPProvider(url, cache_allowed_requests=True,
                                 request_cache_validation_threshold=None,
                                 exception_retry_configuration=None)  # fmt: skip
    await provider.cache_async_session(http)
    w3 = AsyncWeb3(provider, middleware=[])
    await w3.eth.chain_id  # cached from here on
    data = reader._layout()  # the reader's own calldata for this set of feeds
    tx: Any = {"to": MULTICALL3, "data": "0x" + data.hex()}
    count = len(decode_aggregate3(bytes.fromhex((await reader.rpc.call(
        "eth_call", [tx, "latest"]))[2:]), reader._total))  # fmt: skip
    timings: dict[str, tuple[list[float], list[float]]] = {"web3": ([], []), "plain": ([], [])}
    for _ in range(blocks):  # alternate the two paths so that noise hits both alike
        for path, (cpu, wall) in timings.items():
            c, w = time.process_time(), time.perf_counter()
            if path == "web3":
                raw = bytes(await w3.eth.call(tx, "latest"))
            else:
                raw = bytes.fromhex((await reader.rpc.call("eth_call", [tx, "latest"]))[2:])
            decode_aggregate3(raw, count)
            wall.append((time.perf_counter() - w) * 1000)
            cpu.append((time.process_time() - c) * 1000)
    return {
        path: {
            "reads": blocks,
            "cpu_ms_median": round(statistics.median(cpu), 2),
            "wall_ms_median": round(statistics.median(wall), 2),
        }
        for path, (cpu, wall) in timings.items()
    }


async def _timed(reader: ChainReader, emitted: list[Quote]) -> tuple[float, float, int, int]:
    trips, before = reader.stats.round_trips, len(emitted)
    cpu, wall = time.process_time(), time.perf_counter()
    if not await reader.poll_once():
        raise RuntimeError("block not published")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return cpu * 1000, wall * 1000, reader.stats.round_trips - trips, len(emitted) - before


def _summary(rows: list[tuple[float, float, int, int]], feeds: int) -> dict[str, Any]:
    cpu = sorted(r[0] for r in rows)
    wall = sorted(r[1] for r in rows)
    return {
        "blocks": len(rows),
        "round_trips_per_block": max(r[2] for r in rows),
        "quotes_per_block": statistics.mean(r[3] for r in rows),
        "cpu_ms_median": round(statistics.median(cpu), 2),
        "cpu_ms_max": round(cpu[-1], 2),
        "wall_ms_median": round(statistics.median(wall), 2),
        "feeds": feeds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chainlink", type=int, default=60)
    parser.add_argument("--uniswap", type=int, default=20)
    parser.add_argument("--pyth", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    proc, url = _start_anvil()
    try:
        result = asyncio.run(_run(args, url))
    finally:
        proc.terminate()
        proc.wait()
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
