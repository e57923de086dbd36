"""The on-chain pusher against the project's OracledFeed on a real anvil node.

Each test gets its own anvil (it starts in well under a second) so that mining settings and
nonces never leak between tests. The pusher is driven step by step (`start`, `step`) with a
manual clock, so replacement timing is exact; rounds come from a real core.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from publish_rig import INTERVAL, SOURCES, Rounds, make_config

from oracled.clock import ManualClock
from oracled.config import ChainConfig, PushConfig
from oracled.core import RoundResult
from oracled.model import Quote
from oracled.publish.chain_push import ChainPusher, market_id
from oracled.publish.signer import SigningKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chain"))
from chain_rig import Anvil, Chain, RpcFailed, start_anvil

GWEI = 10**9


@pytest.fixture
def anvil(tmp_path: Path) -> Iterator[Anvil]:
    node = start_anvil(tmp_path / "anvil.log")
    yield node
    node.stop()


class Rig:
    """A chain with a deployed OracledFeed whose pusher is a fresh, funded key."""

    def __init__(self, chain: Chain, feed: str, key: SigningKey, url: str) -> None:
        self.chain, self.feed, self.key, self.url = chain, feed, key, url
        self.clock = ManualClock(0)

    def pusher(self, **overrides: Any) -> ChainPusher:
        settings: dict[str, Any] = {
            "enabled": True,
            "chain": "local",
            "contract": self.feed,
            "key_env": "UNUSED",
            "deviation": 0.01,
            "heartbeat_s": 60.0,
            "replace_after_s": 5.0,
            **overrides,
        }
        cfg = PushConfig.model_validate(settings)
        chain = ChainConfig(chain_id=31337, rpc_urls=(self.url,)).model_copy(
            update={"resolved_urls": (self.url,)}
        )
        return ChainPusher(cfg, chain, self.key, self.chain.session, self.clock)

    async def stored(self, market: str) -> tuple[int, int, int, int]:
        price, expo, round_no, ts = await self.chain.call(
            self.feed,
            "latest(bytes32)",
            market_id(market),
            returns=["int128", "int8", "uint64", "uint48"],
        )
        return price, expo, round_no, ts

    async def nonce(self, tag: str = "latest") -> int:
        return int(await self.chain.rpc("eth_getTransactionCount", [self.key.address, tag]), 16)


@pytest_asyncio.fixture
async def rig(anvil: Anvil) -> AsyncIterator[Rig]:
    async with aiohttp.ClientSession() as http:
        chain = Chain(anvil.url, http)
        await chain.start()
        key = SigningKey.generate()
        await chain.rpc("anvil_setBalance", [key.address, hex(10**20)])
        feed = await chain.deploy("OracledFeed", ["address"], [key.address])
        yield Rig(chain, feed, key, anvil.url)


async def settle(pusher: ChainPusher) -> None:
    """Step until the transaction in flight (if any) is confirmed (automine answers at once)."""
    for _ in range(50):
        await pusher.step()
        if not pusher.stats.pending:
            return
    raise AssertionError("the push never settled")


async def test_first_round_pushes_every_active_market_with_integer_prices(rig: Rig) -> None:
    """Nothing on chain yet: one batch carries every market, as mantissa and exponent."""
    rounds = Rounds(make_config())
    pusher = rig.pusher()
    rounds.step()
    pusher.submit(rounds.step())
    await pusher.start()
    await pusher.step()
    assert pusher.stats.transactions["sent"] == 1
    await settle(pusher)
    assert pusher.stats.transactions["confirmed"] == 1
    assert pusher.stats.updates == 3
    price, expo, round_no, ts = await rig.stored("BTC/USD")
    assert (price, expo, round_no, ts) == (6_400_012, -2, 2, rounds.now)
    assert (await rig.stored("SOL/USD"))[:2] == (150_125, -3)


async def test_a_move_beyond_the_deviation_threshold_is_pushed_and_a_small_one_is_not(
    rig: Rig,
) -> None:
    """0.5 % on BTC stays off chain (threshold 1 %); 2 % on ETH goes on, alone."""
    rounds = Rounds(make_config())
    pusher = rig.pusher()
    rounds.step()
    pusher.submit(rounds.step())
    await pusher.start()
    await settle(pusher)
    first_ts = rounds.now
    rounds.step(BTC_USD=1.005, ETH_USD=1.02)
    pusher.submit(rounds.step())
    await settle(pusher)
    assert pusher.stats.transactions["confirmed"] == 2
    assert pusher.stats.updates == 4  # three, then ETH alone
    assert (await rig.stored("BTC/USD"))[3] == first_ts
    eth_price, _, _, eth_ts = await rig.stored("ETH/USD")
    assert eth_ts == rounds.now
    assert eth_price == round(3_100.5 * 1.02 * 100)


async def test_a_per_market_threshold_overrides_the_global_one(rig: Rig) -> None:
    """BTC with its own 0.1 % threshold is pushed on a 0.5 % move; ETH at 1 % is not."""
    rounds = Rounds(make_config())
    pusher = rig.pusher(overrides={"BTC/USD": {"deviation": 0.001}})
    rounds.step()
    pusher.submit(rounds.step())
    await pusher.start()
    await settle(pusher)
    rounds.step(BTC_USD=1.005, ETH_USD=1.005)
    pusher.submit(rounds.step())
    await settle(pusher)
    assert (await rig.stored("BTC/USD"))[3] == rounds.now
    assert (await rig.stored("ETH/USD"))[3] != rounds.now


async def test_the_heartbeat_pushes_an_unchanged_price(rig: Rig) -> None:
    """No move at all: nothing is sent until the heartbeat (round time) has passed."""
    rounds = Rounds(make_config())
    pusher = rig.pusher(heartbeat_s=2.0)  # 8 rounds of 250 ms
    rounds.step()
    pusher.submit(rounds.step())
    await pusher.start()
    await settle(pusher)
    pushed_at = rounds.now
    for _ in range(7):
        pusher.submit(rounds.step())
        await pusher.step()
    assert pusher.stats.transactions["sent"] == 1
    assert rounds.now - pushed_at == 1_750
    pusher.submit(rounds.step())
    await settle(pusher)
    assert pusher.stats.transactions["sent"] == 2
    assert (await rig.stored("BTC/USD"))[3] == pushed_at + 2_000


def _btc_paused_round(rounds: Rounds) -> RoundResult:
    """The next round with BTC/USD paused by hand (and quoted 5 % higher, which must not go out)."""
    rounds.core.set_manual("BTC/USD", True)
    return rounds.step(BTC_USD=1.05)


def _btc_outlier_round(rounds: Rounds) -> RoundResult:
    """The next round with gamma's BTC/USD 20 % off the others: excluded, so BTC is degraded."""
    rounds.now += INTERVAL
    for market, price in rounds.prices.items():
        for k, source in enumerate(SOURCES):
            factor = 1.2 if (market, source) == ("BTC/USD", "gamma") else 1.0
            px = price * (1 + (k - 1) * 1e-5) * factor
            rounds.core.ingest(Quote(source, market, rounds.now - 10, price=px))
    return rounds.core.run_round(rounds.now)


@pytest.mark.parametrize(
    ("status", "next_round"), [("paused", _btc_paused_round), ("degraded", _btc_outlier_round)]
)
async def test_a_market_not_active_is_never_pushed_and_the_skip_is_counted(
    rig: Rig, status: str, next_round: Callable[[Rounds], RoundResult]
) -> None:
    """Only active prices go on chain: BTC paused by hand, or degraded (one source excluded as
    an outlier), stays as it was through heartbeats, each round counted under its status; the
    active markets go on."""
    rounds = Rounds(make_config())
    pusher = rig.pusher(heartbeat_s=1.0)
    rounds.step()
    pusher.submit(rounds.step())
    await pusher.start()
    await settle(pusher)
    before = await rig.stored("BTC/USD")
    for _ in range(8):
        result = next_round(rounds)
        pusher.submit(result)
        await settle(pusher)
    assert result.report(0).status == status
    assert await rig.stored("BTC/USD") == before
    assert (await rig.stored("ETH/USD"))[3] > before[3]
    assert pusher.stats.skipped[status] == 8
    assert pusher.stats.skipped["degraded" if status == "paused" else "paused"] == 0


async def test_a_stuck_transaction_is_replaced_with_the_same_nonce_and_a_higher_fee(
    rig: Rig,
) -> None:
    """Mining stopped: after replace_after_s the pusher re-sends nonce n at +12.5 %; once a
    block comes, only the replacement is mined and the push is confirmed."""
    rounds = Rounds(make_config())
    pusher = rig.pusher()
    rounds.step()
    pusher.submit(rounds.step())
    await pusher.start()
    await rig.chain.rpc("evm_setAutomine", [False])
    await pusher.step()
    first = pusher._inflight
    assert first is not None
    first_hash, first_fee = first.sent[0][0], first.max_fee
    rig.clock.advance(4_000)
    await pusher.step()
    assert pusher.stats.transactions["replaced"] == 0
    rig.clock.advance(1_000)
    await pusher.step()
    assert pusher.stats.transactions["replaced"] == 1
    second_hash = first.sent[-1][0]
    replacement = await rig.chain.rpc("eth_getTransactionByHash", [second_hash])
    assert int(replacement["nonce"], 16) == first.nonce == 0
    assert int(replacement["maxFeePerGas"], 16) >= first_fee * 9 // 8
    await rig.chain.rpc("evm_mine")
    await settle(pusher)
    assert pusher.stats.transactions["confirmed"] == 1
    assert await rig.chain.rpc("eth_getTransactionReceipt", [first_hash]) is None
    assert await rig.nonce() == 1
    assert (await rig.stored("BTC/USD"))[3] == rounds.now


async def test_the_gas_price_cap_holds_pushes_back_and_bounds_every_fee(rig: Rig) -> None:
    """A base fee above the cap: nothing is sent (counted gas_cap). Under it, the transaction's
    maxFeePerGas is at most the cap."""
    rounds = Rounds(make_config())
    pusher = rig.pusher(max_gas_price_gwei=5.0, priority_fee_gwei=1.0)
    rounds.step()
    pusher.submit(rounds.step())
    await pusher.start()
    await rig.chain.rpc("anvil_setNextBlockBaseFeePerGas", [hex(50 * GWEI)])
    await rig.chain.rpc("evm_mine")
    await pusher.step()
    await pusher.step()
    assert pusher.stats.transactions["gas_cap"] == 2
    assert pusher.stats.transactions["sent"] == 0
    assert await rig.nonce("pending") == 0
    await rig.chain.rpc("anvil_setNextBlockBaseFeePerGas", [hex(3 * GWEI)])
    await rig.chain.rpc("evm_mine")
    await pusher.step()
    assert pusher._inflight is not None
    tx = await rig.chain.rpc("eth_getTransactionByHash", [pusher._inflight.sent[0][0]])
    assert int(tx["maxFeePerGas"], 16) <= 5 * GWEI
    await settle(pusher)
    assert pusher.stats.transactions["confirmed"] == 1


async def test_a_stuck_transaction_is_not_replaced_above_the_cap(rig: Rig) -> None:
    """Already at the cap: the replacement would exceed it, so the pusher waits and says so."""
    rounds = Rounds(make_config())
    pusher = rig.pusher(max_gas_price_gwei=2.0, priority_fee_gwei=1.0)
    rounds.step()
    pusher.submit(rounds.step())
    await pusher.start()
    await rig.chain.rpc("evm_setAutomine", [False])
    await pusher.step()
    inflight = pusher._inflight
    assert inflight is not None
    assert inflight.max_fee == 2 * GWEI  # 2 x base + tip is above the cap: the cap it is
    rig.clock.advance(10_000)
    await pusher.step()
    await pusher.step()
    assert pusher.stats.transactions["replaced"] == 0
    assert pusher.stats.transactions["gas_cap"] == 1
    assert len(inflight.sent) == 1


async def test_a_restarted_pusher_continues_the_nonces_and_replaces_what_was_left_pending(
    rig: Rig,
) -> None:
    """Run one: two confirmed pushes (nonces 0, 1) and a third left pending when it stops.
    Run two starts from the mined count, outbids the pending one at nonce 2 and goes on at 3."""
    rounds = Rounds(make_config())
    first = rig.pusher(heartbeat_s=0.25)
    rounds.step()
    first.submit(rounds.step())
    await first.start()
    await settle(first)
    first.submit(rounds.step())
    await settle(first)
    assert await rig.nonce() == 2
    await rig.chain.rpc("evm_setAutomine", [False])
    first.submit(rounds.step())
    await first.step()
    assert first.stats.transactions["sent"] == 3
    assert await rig.nonce("pending") == 3  # stopped here, one transaction pending

    second = rig.pusher(heartbeat_s=0.25)
    second.submit(rounds.step())
    await second.start()
    assert second.stats.nonce == 2
    await second.step()  # same fee as the pending one: refused as underpriced
    await second.step()  # outbids it
    assert second.stats.transactions["sent"] == 1
    await rig.chain.rpc("evm_mine")
    await settle(second)
    await rig.chain.rpc("evm_setAutomine", [True])
    second.submit(rounds.step())
    await settle(second)
    assert await rig.nonce() == 4
    assert second.stats.transactions["confirmed"] == 2
    assert (await rig.stored("BTC/USD"))[3] == rounds.now


async def test_only_the_pusher_key_can_write_the_contract(rig: Rig) -> None:
    """Another account's update reverts with NotPusher; the stored price stays unset."""
    with pytest.raises(RpcFailed):
        await rig.chain.transact(
            rig.feed,
            "update(bytes32,int128,int8,uint64,uint48)",
            market_id("BTC/USD"),
            1,
            -2,
            1,
            1,
        )
    assert await rig.stored("BTC/USD") == (0, 0, 0, 0)


async def test_the_pusher_task_keeps_up_with_rounds_submitted_by_a_loop(rig: Rig) -> None:
    """`run()` as the service starts it: rounds submitted every 20 ms (only the latest is kept),
    each a 2 % move, are pushed batch after batch by the task on its own."""
    rounds = Rounds(make_config())
    pusher = rig.pusher(interval_s=0.02)
    rounds.step()
    pusher.submit(rounds.step())
    task = asyncio.create_task(pusher.run())
    try:
        async with asyncio.timeout(10):
            while pusher.stats.transactions["confirmed"] < 3:
                pusher.submit(rounds.step(BTC_USD=1.02))
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    price, _, round_no, _ = await rig.stored("BTC/USD")
    assert round_no > 2
    assert price > 6_400_012 * 1.02**2
