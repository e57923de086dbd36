"""A local chain (anvil) for the operations stack, so the on-chain panels have data.

The shipped config's `ethereum` chain is pointed at the node with a Chainlink-style feed for
BTC/USD (the project's test proxy over Chainlink's `MockV3Aggregator`), a Uniswap v3 WBTC/USD
pool read as a BTC/USD TWAP, a sequencer uptime feed (answer 0: up) and the on-chain pusher
writing to the project's `OracledFeed`. The node starts ten minutes in the past, so that the
pool has more than a TWAP window of history once its clock is set to now (as
tests/chain/test_daemon_chain.py does); then it mines a block a second, as a chain does. Pyth
on chain (`pyth_eth`) is left out: it is another feed kind of the same reader, and its panels
are the chain's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from chain_rig import Anvil, Chain, Pool, deploy_tokens, make_pool, start_anvil

from oracled.publish.signer import SigningKey

CHAIN = "ethereum"  # the shipped config's chain, re-pointed at the node
# 8 decimals; far from the simulated venues and ten minutes old: excluded as `stale` (the venues'
# younger quotes have left it behind, docs/pricing.md section 2).
BTC_ANSWER = 60_000_00000000
# USD per WBTC: the pool is excluded too, but read every block: an `outlier`, or `stale` while
# its last block is older than the market's `lag_ms`.
BTC_POOL_PRICE = "60000"
TWAP_WINDOW_S = 60


@dataclass(frozen=True)
class LocalChain:
    node: Anvil
    btc_aggregator: str
    btc_feed: str  # the proxy the chainlink source reads
    btc_pool: Pool  # WBTC (8 decimals) and a USD token (6), in whichever order they sort
    sequencer: str
    push_contract: str
    push_key_file: Path

    def configure(self, data: dict[str, Any]) -> None:
        """Point `data` (a config as a dict) at this node: the chain, its feeds and the push."""
        data["chains"] = {
            CHAIN: {
                "chain_id": 31337,
                "rpc_urls": [self.node.url],
                "poll_interval_s": 0.5,
                "sequencer": {"address": self.sequencer, "grace_period_s": 0},
            }
        }
        data["sources"].pop("pyth_eth")
        data["sources"]["chainlink"]["feeds"] = {
            "BTC/USD": {"address": self.btc_feed, "heartbeat_s": 3600}
        }
        # Loaded without RPC URLs, the config dropped the slots of its on-chain sources.
        pool = self.btc_pool
        data["sources"]["uniswap"] = {
            "type": "uniswap_v3",
            "chain": CHAIN,
            "instruments": {},  # as the dumped sources have it
            "feeds": {
                "BTC/USD": {
                    "address": pool.address,
                    "twap_window_s": TWAP_WINDOW_S,
                    "min_liquidity": 1e6,
                    "token0_decimals": pool.decimals0,
                    "token1_decimals": pool.decimals1,
                    "invert": pool.decimals1 == 8,  # token1 is WBTC: the pool prices USD in it
                    # WBTC is the 8-decimal side: named, so the set-up checks `invert` against it.
                    "base_token": pool.token0 if pool.decimals0 == 8 else pool.token1,
                }
            },
        }
        on_chain = [{"source": s, "pair": "BTC/USD"} for s in ("chainlink", "uniswap")]
        for market in data["markets"]:
            if market["symbol"] == "BTC/USD":
                market["sources"] = [*market["sources"], *on_chain]
        data["push"] = {
            "enabled": True,
            "chain": CHAIN,
            "contract": self.push_contract,
            "key_file": str(self.push_key_file),
            "interval_s": 0.5,
        }

    async def publish_btc(self, answer: int) -> None:
        """A new round of the BTC/USD aggregator (0 is a round the feed must not take)."""
        async with aiohttp.ClientSession() as http:
            chain = Chain(self.node.url, http)
            await chain.start()
            await chain.transact(self.btc_aggregator, "updateAnswer(int256)", answer)


async def start_local_chain(workdir: Path) -> LocalChain:
    node = start_anvil(workdir / "anvil.log", "--timestamp", str(int(time.time()) - 600))
    try:
        async with aiohttp.ClientSession() as http:
            chain = Chain(node.url, http)
            await chain.start()
            await chain.install_multicall3()
            agg = await chain.deploy("MockV3Aggregator", ["uint8", "int256"], [8, BTC_ANSWER])
            proxy = await chain.deploy("TestAggregatorProxy", ["address"], [agg])
            sequencer = await chain.deploy("MockV3Aggregator", ["uint8", "int256"], [0, 0])
            tokens = await deploy_tokens(chain, both_sides=False)
            pool = await make_pool(
                chain, tokens, tokens.wbtc, tokens.usd_above, BTC_POOL_PRICE, liquidity=10**12
            )
            # Back to the present: the pool now has ten minutes of history behind it.
            await chain.rpc("anvil_setTime", [int(time.time())])
            key = SigningKey.generate()
            await chain.rpc("anvil_setBalance", [key.address, hex(10**20)])
            feed = await chain.deploy("OracledFeed", ["address"], [key.address])
            await chain.rpc("evm_setIntervalMining", [1])
    except BaseException:
        node.stop()
        raise
    key_file = workdir / "push.key"
    key_file.write_text(key.hex())
    os.chmod(key_file, 0o600)
    return LocalChain(node, agg, proxy, pool, sequencer, feed, key_file)
