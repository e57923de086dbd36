"""A local chain (anvil) for the operations stack, so the on-chain panels have data.

The shipped config's `ethereum` chain is pointed at the node with a Chainlink-style feed for
BTC/USD (the project's test proxy over Chainlink's `MockV3Aggregator`), a sequencer uptime feed
(answer 0: up) and the on-chain pusher writing to the project's `OracledFeed`. The node mines a
block a second, as a chain does. Pyth on chain (`pyth_eth`) is left out: it is another feed
kind of the same reader, and its panels are the chain's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from chain_rig import Anvil, Chain, start_anvil

from oracled.publish.signer import SigningKey

CHAIN = "ethereum"  # the shipped config's chain, re-pointed at the node
BTC_ANSWER = 60_000_00000000  # 8 decimals; far from the simulated venues: an outlier, excluded


@dataclass(frozen=True)
class LocalChain:
    node: Anvil
    btc_aggregator: str
    btc_feed: str  # the proxy the chainlink source reads
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
        for market in data["markets"]:
            if market["symbol"] == "BTC/USD":
                market["sources"] = [*market["sources"], {"source": "chainlink", "pair": "BTC/USD"}]
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
    node = start_anvil(workdir / "anvil.log")
    try:
        async with aiohttp.ClientSession() as http:
            chain = Chain(node.url, http)
            await chain.start()
            await chain.install_multicall3()
            agg = await chain.deploy("MockV3Aggregator", ["uint8", "int256"], [8, BTC_ANSWER])
            proxy = await chain.deploy("TestAggregatorProxy", ["address"], [agg])
            sequencer = await chain.deploy("MockV3Aggregator", ["uint8", "int256"], [0, 0])
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
    return LocalChain(node, agg, proxy, sequencer, feed, key_file)
