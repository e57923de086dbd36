"""The on-chain pusher against the project's OracledFeed on a real anvil node.

Each test gets its own anvil (it starts in well under a second) so that mining settings and
nonces never leak between tests. The pusher is driven step by step (`start`, `step`) with a
manual clock, so replacement timing is exact; rounds come from a real core.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import random
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from eth_abi.abi import decode
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from hexbytes import HexBytes
from prometheus_client.parser import text_string_to_metric_families
from publish_rig import BASE_PRICES, INTERVAL, SOURCES, Rounds, make_config
from structlog.testing import capture_logs

from oracled.clock import ManualClock
from oracled.config import ChainConfig, Config, PushConfig, load_config
from oracled.core import RoundResult
from oracled.errors import ConfigError
from oracled.eth import keccak, selector
from oracled.jsonrpc import EndpointStats, RpcError, RpcUnavailable, UnknownBlock
from oracled.metrics import Metrics, MetricsInputs
from oracled.model import Quote, Status
from oracled.publish.chain_push import (
    _HASHES_KEPT,
    ChainPusher,
    PushError,
    PushStats,
    _retry_delay_s,
    load_push_key,
    market_id,
)
from oracled.publish.feed_abi import decode_latest_many, encode_latest_many
from oracled.publish.signer import SigningKey, decimal_to_int
from oracled.service import Service
from oracled.sim import BinanceSim
from oracled.sources.evm.chain import ChainStats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chain"))
from chain_rig import Anvil, Block, Chain, RpcFailed, start_anvil
from rpc_proxy import MANGLED, RpcProxy

GWEI = 10**9
OTHER = "0x000000000000000000000000000000000000dEaD"
PRICE_UPDATED = "0x" + keccak(b"PriceUpdated(bytes32,int128,int8,uint64,uint48)").hex()
#: The defaults of `push.recheck_depth_blocks` and `push.grow_batch_after`, which the tests
#: below that do not set them run with.
_RECHECK_DEPTH = PushConfig().recheck_depth_blocks
_GROW_AFTER = PushConfig().grow_batch_after


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

    def pusher(
        self,
        *,
        urls: tuple[str, ...] = (),
        chain_id: int = 31337,
        timeout_s: float = 2.0,
        **overrides: Any,
    ) -> ChainPusher:
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
        urls = urls or (self.url,)
        chain = ChainConfig(chain_id=chain_id, rpc_urls=urls, timeout_s=timeout_s).model_copy(
            update={"resolved_urls": urls}
        )
        return ChainPusher(cfg, chain, self.key, self.chain.session, self.clock)

    async def stored(self, market: str, block: Block = "latest") -> tuple[int, int, int, int]:
        price, expo, round_no, ts = await self.chain.call(
            self.feed,
            "latest(bytes32)",
            market_id(market),
            returns=["int128", "int8", "uint64", "uint48"],
            block=block,
        )
        return price, expo, round_no, ts

    async def feed_of(
        self, market: str, block: Block = "latest"
    ) -> tuple[int, int, int, int, bool]:
        """Everything stored for `market`, paused or not (`latestFeed`)."""
        price, expo, round_no, ts, paused = await self.chain.call(
            self.feed,
            "latestFeed(bytes32)",
            market_id(market),
            returns=["int128", "int8", "uint64", "uint48", "bool"],
            block=block,
        )
        return price, expo, round_no, ts, paused

    async def refused(self, market: str, block: Block = "latest") -> int:
        """The pause ts that `latest(market)` names in its `FeedPaused` revert (fails if it
        answers a price)."""
        with pytest.raises(RpcFailed) as raised:
            await self.stored(market, block)
        error = selector("FeedPaused(bytes32,uint48)") + market_id(market)
        found = re.search("0x" + error.hex() + "([0-9a-f]{64})", str(raised.value))
        assert found is not None, str(raised.value)
        return int(found.group(1), 16)

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
    """Step until the transaction in flight (if any) is confirmed, looking again every 2 ms.

    automine answers `eth_sendRawTransaction` first and mines a moment later, and the
    pusher's clock does not move here, so a look before the block just looks again. The looks
    were 50 back to back: on a loaded machine the block came after all of them. The bound is
    a time, as in `mined`, and only turns a push that never settles into a failure."""
    try:
        async with asyncio.timeout(10):
            while True:
                await pusher.step()
                if not pusher.stats.pending:
                    return
                await asyncio.sleep(0.002)
    except TimeoutError:
        raise AssertionError("the push never settled") from None


async def first_push(rig: Rig, rounds: Rounds, **overrides: Any) -> ChainPusher:
    """A started pusher that has the first round in hand (nothing sent yet)."""
    pusher = rig.pusher(**overrides)
    rounds.step()
    pusher.submit(rounds.step())
    await pusher.start()
    return pusher


async def test_first_round_pushes_every_active_market_with_integer_prices(rig: Rig) -> None:
    """Nothing on chain yet: one batch carries every market, as mantissa and exponent."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds)
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
    pusher = await first_push(rig, rounds)
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
    pusher = await first_push(rig, rounds, overrides={"BTC/USD": {"deviation": 0.001}})
    await settle(pusher)
    rounds.step(BTC_USD=1.005, ETH_USD=1.005)
    pusher.submit(rounds.step())
    await settle(pusher)
    assert (await rig.stored("BTC/USD"))[3] == rounds.now
    assert (await rig.stored("ETH/USD"))[3] != rounds.now


@pytest.mark.parametrize("moved", [1001.0, 999.0])
async def test_a_move_of_exactly_the_threshold_is_pushed(rig: Rig, moved: float) -> None:
    """BTC at 1,000 with a 0.1 % threshold moves to exactly 1,001 (or 999): "moved by the
    threshold" includes it. Measured as |1001 / 1000 - 1|, the division rounded to
    0.00099999999999989, under the threshold, and the move waited for the heartbeat."""
    rounds = Rounds(make_config(), prices={**BASE_PRICES, "BTC/USD": 1_000.0})
    pusher = await first_push(rig, rounds, overrides={"BTC/USD": {"deviation": 0.001}})
    await settle(pusher)
    assert (await rig.stored("BTC/USD"))[:2] == (100_000, -2)
    rounds.prices["BTC/USD"] = moved
    pusher.submit(rounds.step())
    await settle(pusher)
    price, _, _, ts = await rig.stored("BTC/USD")
    assert (price, ts) == (round(moved * 100), rounds.now)


async def test_the_heartbeat_pushes_an_unchanged_price(rig: Rig) -> None:
    """No move at all: nothing is sent until the heartbeat (round time) has passed."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds, heartbeat_s=2.0)  # 8 rounds of 250 ms
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
    an outlier), keeps its price through heartbeats, each round counted under its status; the
    active markets go on. Paused, BTC gets one pause entry (its round the first paused one);
    degraded, none: it is live with a warning, and its price just ages (version 1 of the
    contract had no pause, and BTC paused read as before)."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds, heartbeat_s=1.0)
    await settle(pusher)
    before = await rig.stored("BTC/USD")
    first = None
    for _ in range(8):
        result = next_round(rounds)
        first = first or result
        pusher.submit(result)
        await settle(pusher)
    assert result.report(0).status == status
    if status == "paused":
        assert await rig.feed_of("BTC/USD") == (*before[:2], first.round, first.ts, True)
        assert await rig.refused("BTC/USD") == first.ts
    else:
        assert await rig.feed_of("BTC/USD") == (*before, False)
    assert pusher.stats.pauses == (status == "paused")
    assert (await rig.stored("ETH/USD"))[3] > before[3]
    assert pusher.stats.skipped[status] == 8
    assert pusher.stats.skipped["degraded" if status == "paused" else "paused"] == 0


def _btc_stopped_round(rounds: Rounds, status: str) -> RoundResult:
    """The next round with BTC/USD paused by hand, or unknown (as a conversion leg gone makes
    it: set in the round's result), its quotes unmoved."""
    if status == "paused":
        rounds.core.set_manual("BTC/USD", True)
        return rounds.step()
    result = rounds.step()
    stopped = result.status.copy()
    stopped[result.layout.markets.index("BTC/USD")] = Status.UNKNOWN
    return dataclasses.replace(result, status=stopped)


def _btc_resumed_round(rounds: Rounds) -> RoundResult:
    """The first round with BTC/USD active again after `_btc_stopped_round`."""
    rounds.core.set_manual("BTC/USD", False)
    for _ in range(5):
        result = rounds.step()
        if result.report(0).status == "active":
            return result
    raise AssertionError("BTC/USD never resumed")


def _pause_lines(logs: list[dict[str, Any]]) -> list[tuple[list[str], list[str]]]:
    return [
        (e["paused"], e["resumed"]) for e in logs if e["event"] == "on-chain pause state changed"
    ]


@pytest.mark.parametrize("status", ["paused", "unknown"])
async def test_a_market_stopped_is_paused_on_chain_at_the_next_look_and_its_next_price_resumes_it(
    rig: Rig, status: str
) -> None:
    """BTC paused (or unknown), quotes unmoved, heartbeat an hour off: the next look pushes its
    pause entry, after which `latest` refuses BTC with the pause's ts while ETH and SOL answer
    as before, and the full view holds BTC's last good price, paused. Later paused rounds push
    nothing more. Active again, BTC's price goes on at the next look (not at the heartbeat) and
    clears the pause. One log line a batch that changed it. Before, nothing was pushed for
    BTC and `latest` answered its frozen price as if live."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(pusher)
    before = {m: await rig.stored(m) for m in ("BTC/USD", "ETH/USD", "SOL/USD")}
    stopped = _btc_stopped_round(rounds, status)
    assert stopped.report(0).status == status
    pusher.submit(stopped)
    with capture_logs() as logs:
        await pusher.step()
        assert pusher._inflight is not None and pusher._inflight.batch.markets == []
        assert pusher._inflight.batch.paused == ["BTC/USD"]
        await settle(pusher)
    assert await rig.refused("BTC/USD") == stopped.ts
    assert await rig.feed_of("BTC/USD") == (*before["BTC/USD"][:2], stopped.round, stopped.ts, True)
    for market in ("ETH/USD", "SOL/USD"):
        assert await rig.stored(market) == before[market]
    assert pusher.stats.pauses == 1 and pusher.stats.updates == 3
    assert [
        s.value for s in exposed(pusher.stats) if s.name.startswith("oracled_push_market_p")
    ] == [1.0]
    assert _pause_lines(logs) == [(["BTC/USD"], [])]
    for _ in range(3):
        pusher.submit(_btc_stopped_round(rounds, status))
        await settle(pusher)
    assert pusher.stats.transactions["sent"] == 2 and pusher.stats.pauses == 1
    resumed = _btc_resumed_round(rounds)
    pusher.submit(resumed)
    with capture_logs() as logs:
        await settle(pusher)
    price, expo, round_no, ts = await rig.stored("BTC/USD")
    assert (price, expo, round_no, ts) == (before["BTC/USD"][0], -2, resumed.round, resumed.ts)
    assert (await rig.feed_of("BTC/USD"))[4] is False
    assert pusher.stats.updates == 4 and _pause_lines(logs) == [([], ["BTC/USD"])]


async def test_a_restarted_pusher_reads_a_pause_from_the_chain_and_does_not_push_it_again(
    rig: Rig,
) -> None:
    """Run one puts BTC's pause on chain and stops. Run two, BTC still paused, reads the pause
    with `latestMany` and sends nothing; once BTC is active it pushes BTC's price at the next
    look (unmoved, an hour before its heartbeat), which clears the pause. Before, a pusher had
    no pause to read: it sent none, and BTC's resumed price waited for the heartbeat."""
    rounds = Rounds(make_config())
    first = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(first)
    before = await rig.stored("BTC/USD")
    first.submit(_btc_stopped_round(rounds, "paused"))
    await settle(first)
    assert first.stats.pauses == 1
    second = rig.pusher(heartbeat_s=3600.0)
    second.submit(_btc_stopped_round(rounds, "paused"))
    await second.start()
    for _ in range(3):
        await second.step()
        second.submit(_btc_stopped_round(rounds, "paused"))
    assert second.stats.transactions["sent"] == 0 and second.stats.pauses == 0
    resumed = _btc_resumed_round(rounds)
    second.submit(resumed)
    await settle(second)
    assert second.stats.transactions["sent"] == 1 and second.stats.updates == 1
    assert await rig.stored("BTC/USD") == (before[0], before[1], resumed.round, resumed.ts)


async def test_a_restart_leaves_markets_still_unknown_unpaused_for_the_start_grace(
    rig: Rig,
) -> None:
    """Run one puts every market on chain and stops. Run two starts with BTC unknown (its
    gates still rebuilding quorum) and `start_grace_s` of one second: the looks within it send
    nothing for BTC, so a restart does not pause and resume every market on chain; past it,
    BTC still unknown, the next look pushes its pause entry. Before, run two paused BTC on
    chain at its first look."""
    rounds = Rounds(make_config())
    first = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(first)
    before = await rig.stored("BTC/USD")
    second = rig.pusher(heartbeat_s=3600.0, start_grace_s=1.0)  # 4 rounds of 250 ms
    start = _btc_stopped_round(rounds, "unknown")
    second.submit(start)
    await second.start()
    for _ in range(3):
        await second.step()
        second.submit(_btc_stopped_round(rounds, "unknown"))
    await second.step()
    assert rounds.now - start.ts == 750
    assert second.stats.transactions["sent"] == 0 and second.stats.pauses == 0
    assert await rig.feed_of("BTC/USD") == (*before, False)
    late = _btc_stopped_round(rounds, "unknown")
    second.submit(late)
    await settle(second)
    assert second.stats.transactions["sent"] == 1 and second.stats.pauses == 1
    assert await rig.feed_of("BTC/USD") == (*before[:2], late.round, late.ts, True)


def _big_rounds(big: float) -> Rounds:
    """Rounds of BTC/USD and BIG/USD (at two decimals, quoted `big`), under a price bound of
    1e40 that lets a BIG price past the contract's int128 (about 1.7e38 units, 1.7e36 at two
    decimals) through the core. `check-config` refuses such a bound for a pushed market; the
    pusher is held to it all the same, for the config it is handed."""
    oracle = {"round_interval_ms": INTERVAL, "resume_rounds": 1, "max_price": 1e40}
    prices = {"BTC/USD": 64_000.12, "BIG/USD": big}
    return Rounds(make_config(prices, oracle=oracle), prices)


def _overflow_lines(logs: list[dict[str, Any]]) -> list[str]:
    return [
        e["market"]
        for e in logs
        if e["event"] == "price does not fit the contract's int128; not pushed"
    ]


async def test_a_price_past_the_contracts_int128_is_skipped_counted_and_logged_once(
    rig: Rig,
) -> None:
    """BIG/USD active at 1e37 (1e39 units at two decimals, past int128): four looks push BTC
    (heartbeat half a second) and never BIG, whose chain entry stays unwritten; each round is
    counted `overflow` and the pusher logs it once, as an error. Before, the encoder raised at
    each look and the pusher crashed and restarted for ever, BTC never pushed."""
    rounds = _big_rounds(1e37)
    with capture_logs() as logs:
        pusher = await first_push(rig, rounds, heartbeat_s=0.5)
        await settle(pusher)
        for _ in range(3):
            rounds.step()
            pusher.submit(rounds.step())
            await settle(pusher)
    assert rounds.step().report(1).status == "active"
    assert pusher.stats.transactions["confirmed"] == 4 and pusher.stats.updates == 4
    assert (await rig.stored("BTC/USD"))[3] == rounds.now - INTERVAL
    assert await rig.feed_of("BIG/USD") == (0, 0, 0, 0, False)
    assert pusher.stats.skipped["overflow"] == 4
    assert _overflow_lines(logs) == ["BIG/USD"]
    (line,) = (e for e in logs if e["event"].startswith("price does not fit"))
    assert line["log_level"] == "error" and line["decimals"] == 2
    assert [
        (s.labels["reason"], s.value)
        for s in exposed(pusher.stats)
        if s.name == "oracled_push_skipped_markets_total"
    ] == [("paused", 0.0), ("unknown", 0.0), ("degraded", 0.0), ("overflow", 4.0)]


async def test_a_market_whose_price_grows_past_int128_is_paused_on_chain_until_it_fits_again(
    rig: Rig,
) -> None:
    """BIG/USD goes on chain at 1.6e36 (1.6e38 units, inside int128), then moves 8 % up, past
    it: the next look pushes BTC's move and BIG's pause entry, since the chain's BIG price is
    no longer its price; `latest` refuses BIG from then on. Back inside, BIG's price goes on
    and clears the pause, and a second excursion is logged again."""
    rounds = _big_rounds(1.6e36)
    pusher = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(pusher)
    assert 1.5e38 < (await rig.stored("BIG/USD"))[0] < 2**127
    with capture_logs() as logs:
        over = rounds.step(BIG_USD=1.08, BTC_USD=1.02)
        assert over.report(1).status == "active"
        pusher.submit(over)
        await pusher.step()
        assert pusher._inflight is not None
        assert pusher._inflight.batch.markets == ["BTC/USD"]
        assert pusher._inflight.batch.paused == ["BIG/USD"]
        await settle(pusher)
        assert await rig.refused("BIG/USD") == over.ts
        assert (await rig.stored("BTC/USD"))[3] == over.ts
        back = rounds.step(BIG_USD=1 / 1.08)
        assert back.report(1).status == "active"
        pusher.submit(back)
        await settle(pusher)
        price = decimal_to_int(back.report(1).price, 2)
        assert await rig.stored("BIG/USD") == (price, -2, back.round, back.ts)
        pusher.submit(rounds.step(BIG_USD=1.08))
        await settle(pusher)
    assert pusher.stats.skipped["overflow"] == 2 and pusher.stats.pauses == 2
    assert _overflow_lines(logs) == ["BIG/USD", "BIG/USD"]
    assert pusher.stats.restarts == 0


def _without_btc(rounds: Rounds) -> RoundResult:
    """A reload that removes BTC/USD, as the service applies it (`Core.reconfigure`), and the
    next round."""
    rounds.core.reconfigure(make_config({m: p for m, p in BASE_PRICES.items() if m != "BTC/USD"}))
    del rounds.prices["BTC/USD"]
    result = rounds.step()
    assert list(result.layout.markets) == ["ETH/USD", "SOL/USD"]
    return result


async def test_a_market_a_reload_removed_is_paused_on_chain_at_the_next_look(rig: Rig) -> None:
    """Every market on chain, heartbeat an hour off; a reload removes BTC/USD. The next look
    pushes BTC's pause entry (with a warning naming it), so `latest` refuses it from then on
    with the first round without it, its last price kept in the full view, ETH and SOL
    untouched; later looks send nothing more. Before, nothing would ever write BTC again, and
    `latest` answered its last price for ever as if maintained."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(pusher)
    before = {m: await rig.stored(m) for m in BASE_PRICES}
    reloaded = _without_btc(rounds)
    pusher.submit(reloaded)
    with capture_logs() as logs:
        await settle(pusher)
        for _ in range(3):
            pusher.submit(rounds.step())
            await settle(pusher)
    assert await rig.refused("BTC/USD") == reloaded.ts
    btc = before["BTC/USD"]
    assert await rig.feed_of("BTC/USD") == (*btc[:2], reloaded.round, reloaded.ts, True)
    for market in ("ETH/USD", "SOL/USD"):
        assert await rig.stored(market) == before[market]
    assert pusher.stats.transactions["sent"] == 2 and pusher.stats.pauses == 1
    assert [
        e["market"] for e in logs if e["event"].startswith("market no longer in the config")
    ] == ["BTC/USD"]
    assert _pause_lines(logs) == [(["BTC/USD"], [])]


async def test_a_pusher_that_crashed_after_a_reload_still_pauses_the_market_it_removed(
    rig: Rig,
) -> None:
    """A reload removes BTC/USD and the pusher crashes at that look (a round it cannot index),
    before BTC's pause went out. Started again, it reads the chain for every market this
    process knew, BTC included, and pauses it. Read for the current markets alone, the
    restarted pusher would never learn that BTC had a price on chain."""
    rounds = Rounds(make_config())
    pusher = rig.pusher(interval_s=0.02, heartbeat_s=3600.0)
    pusher.restart_base_s = 0.05
    rounds.step()
    pusher.submit(rounds.step())
    task = asyncio.create_task(pusher.run())
    try:
        await until(lambda: pusher.stats.transactions["confirmed"] == 1)
        reloaded = _without_btc(rounds)
        pusher.submit(dataclasses.replace(reloaded, status=reloaded.status[:1]))
        await until(lambda: task.done() or pusher.stats.restarts == 1)
        assert not task.done() and pusher.stats.pauses == 0
        good = rounds.step()
        pusher.submit(good)
        await until(lambda: pusher.stats.pauses == 1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await rig.refused("BTC/USD") == good.ts


def _restarted(rounds: Rounds, cfg: Config) -> Rounds:
    """A new daemon's rounds under `cfg`, their times after those of the run before."""
    again = Rounds(cfg)
    again.now = rounds.now
    again.step()
    return again


def _scan_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "on-chain scan done"]


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("left", ["removed from the config", "left out of push.markets"])
async def test_a_restart_with_the_scan_pauses_a_market_on_chain_this_config_does_not_push(
    rig: Rig, left: str, scan: bool
) -> None:
    """Run one pushes BTC, ETH and SOL. Run two starts without BTC in its config, or with BTC
    in it but not in `push.markets`. With `push.scan_from_block` set, its first look scans the
    contract's `PriceUpdated` logs, finds the three markets, reads their flags and pushes BTC's
    pause entry: `latest` refuses BTC with that round's ts and `latestFeed` keeps its last
    price, paused, while ETH and SOL answer as before; a warning names BTC (by its id when no
    config names it) and one line counts what the scan found. Without the scan BTC's price
    stays live on chain: the limitation the scan is for (a restart knows only its config)."""
    rounds = Rounds(make_config())
    first = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(first)
    before = {m: await rig.stored(m) for m in BASE_PRICES}
    settings: dict[str, Any] = {"heartbeat_s": 3600.0}
    if scan:
        settings["scan_from_block"] = 0
    if left == "removed from the config":
        again = _restarted(rounds, make_config({"ETH/USD": 3_100.5, "SOL/USD": 150.125}))
        name = "0x" + market_id("BTC/USD").hex()
    else:
        again = _restarted(rounds, make_config())
        settings["markets"] = ["ETH/USD", "SOL/USD"]
        name = "BTC/USD"
    second = rig.pusher(**settings)
    looked = again.step()
    second.submit(looked)
    await second.start()
    with capture_logs() as logs:
        await settle(second)
        for _ in range(3):
            second.submit(again.step())
            await settle(second)
    for market in ("ETH/USD", "SOL/USD"):
        assert await rig.stored(market) == before[market]
    btc = before["BTC/USD"]
    if not scan:
        assert await rig.feed_of("BTC/USD") == (*btc, False)
        assert second.stats.transactions["sent"] == 0 and not _scan_lines(logs)
        return
    assert await rig.refused("BTC/USD") == looked.ts
    assert await rig.feed_of("BTC/USD") == (*btc[:2], looked.round, looked.ts, True)
    assert second.stats.transactions["sent"] == 1 and second.stats.pauses == 1
    (done,) = _scan_lines(logs)
    assert (done["from_block"], done["markets"], done["requests"]) == (0, 3, 1)
    warned = [e for e in logs if e["event"].startswith("market on chain not pushed")]
    assert [e["market"] for e in warned] == [name]
    assert _pause_lines(logs) == [([name], [])]


async def test_a_market_the_scan_found_by_its_id_and_a_reload_adds_is_priced_under_its_name(
    rig: Rig,
) -> None:
    """Run two, without BTC and with the scan on, pauses BTC on chain by its id; a reload
    that adds BTC back (its gates active again) pushes BTC's price at the next look, which
    clears the pause: one line says BTC resumed, by its name, and the id is neither paused
    again nor named in any later line."""
    rounds = Rounds(make_config())
    first = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(first)
    btc = await rig.stored("BTC/USD")
    again = _restarted(rounds, make_config({"ETH/USD": 3_100.5, "SOL/USD": 150.125}))
    second = rig.pusher(heartbeat_s=3600.0, scan_from_block=0)
    second.submit(again.step())
    await second.start()
    await settle(second)
    assert (await rig.feed_of("BTC/USD"))[4] is True
    again.core.reconfigure(make_config())
    again.prices["BTC/USD"] = BASE_PRICES["BTC/USD"]
    with capture_logs() as logs:
        for _ in range(3):
            second.submit(again.step())
            await settle(second)
    assert (await rig.feed_of("BTC/USD"))[0] == btc[0]
    assert (await rig.feed_of("BTC/USD"))[4] is False
    assert _pause_lines(logs) == [([], ["BTC/USD"])]
    assert second.stats.pauses == 1 and second.stats.updates == 1
    assert not [key for key in second._known if key.startswith("0x")]  # BTC is BTC now


async def test_a_market_a_reload_removed_before_the_scan_ended_is_paused_once_by_its_name(
    rig: Rig,
) -> None:
    """Run two starts with the scan on and BTC in its config (read by name at the start); a
    reload removes BTC before the scan's look. The scan finds BTC's id, which a config of this
    process named: one pause entry, by name, counted once and warned of once. Named from the
    current layout alone, BTC was tracked twice (by name and by id): two pause entries for the
    one market in one batch, `pauses` counted 2, two warnings."""
    rounds = Rounds(make_config())
    first = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(first)
    again = _restarted(rounds, make_config())
    second = rig.pusher(heartbeat_s=3600.0, scan_from_block=0)
    second.submit(again.step())
    await second.start()  # reads BTC's entry under its name
    with capture_logs() as logs:
        second.submit(_without_btc(again))
        await settle(second)
        for _ in range(2):
            second.submit(again.step())
            await settle(second)
    assert (await rig.feed_of("BTC/USD"))[4] is True
    assert _pause_lines(logs) == [(["BTC/USD"], [])]
    assert second.stats.pauses == 1 and second.stats.transactions["sent"] == 1
    warned = [e["market"] for e in logs if e["event"].endswith("pausing its price on chain")]
    assert warned == ["BTC/USD"]
    assert not [key for key in second._known if key.startswith("0x")]


async def test_a_scan_from_a_block_past_the_head_says_it_scanned_nothing(rig: Rig) -> None:
    """`push.scan_from_block` past the chain's head (a deployment block of another chain, a
    digit too many) scans nothing: a warning says so, with the block and the head, and BTC,
    which run two's config lacks, keeps its live price. Before, the only line was `on-chain
    scan done` with 0 markets, which reads as a scan that found nothing to pause."""
    rounds = Rounds(make_config())
    first = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(first)
    head = await rig.chain.block_number()
    again = _restarted(rounds, make_config({"ETH/USD": 3_100.5, "SOL/USD": 150.125}))
    second = rig.pusher(heartbeat_s=3600.0, scan_from_block=head + 10_000_000)
    second.submit(again.step())
    await second.start()
    with capture_logs() as logs:
        await settle(second)
    (past,) = [e for e in logs if e["event"].startswith("push.scan_from_block is past")]
    assert (past["from_block"], past["head"], past["log_level"]) == (
        head + 10_000_000,
        head,
        "warning",
    )
    (done,) = _scan_lines(logs)
    assert (done["requests"], done["markets"]) == (0, 0)
    assert (await rig.feed_of("BTC/USD"))[4] is False


async def test_a_market_a_reload_adds_while_its_scan_pause_is_pending_is_priced_again(
    rig: Rig,
) -> None:
    """Run two, without BTC and with the scan on, sends BTC's pause by its id; before a block
    mines it, a reload adds BTC back, whose entry is read under its name (still a live price:
    the pause is pending). Once the pause is mined and BTC is active again, its price is pushed
    at the next look, which clears the pause. Before, the pause's confirmation went to the id's
    entry, forgotten at the rename, so the pusher took BTC for live on chain: paused there, and
    active here, until its heartbeat (an hour) or a move past its deviation."""
    rounds = Rounds(make_config())
    first = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(first)
    btc = await rig.stored("BTC/USD")
    again = _restarted(rounds, make_config({"ETH/USD": 3_100.5, "SOL/USD": 150.125}))
    second = rig.pusher(heartbeat_s=3600.0, scan_from_block=0)
    second.submit(again.step())
    await second.start()
    await rig.chain.rpc("evm_setAutomine", [False])
    await second.step()  # the scan ends: BTC's pause entry is sent, not mined
    assert second._inflight is not None and second._inflight.batch.paused
    again.core.reconfigure(make_config())
    again.prices["BTC/USD"] = BASE_PRICES["BTC/USD"]
    second.submit(again.step())
    await second.step()  # reads BTC under its name: a live price, its pause still pending
    await rig.chain.rpc("evm_mine")
    await rig.chain.rpc("evm_setAutomine", [True])
    await settle(second)
    assert (await rig.feed_of("BTC/USD"))[4] is True and second.stats.pauses == 1
    for _ in range(4):
        second.submit(again.step())
        await settle(second)
    assert (await rig.feed_of("BTC/USD"))[0] == btc[0]
    assert (await rig.feed_of("BTC/USD"))[4] is False


@pytest.mark.parametrize(
    "refusal",
    [
        {"code": -32614, "message": "eth_getLogs is limited to a 2 block range"},
        # Infura's caps on one query, under the code it also uses for its rate limits: no rest
        # cures them, a narrower range does
        {"code": -32005, "message": "query returned more than 10000 results"},
        {"code": -32005, "message": "query timeout exceeded"},
    ],
)
async def test_the_scan_halves_a_range_the_node_refuses_and_pushes_meanwhile(
    rig: Rig, refusal: dict[str, Any]
) -> None:
    """A node that refuses any `eth_getLogs` over 2 blocks (as public RPCs limit ranges) in
    front of a chain of some 70 blocks, `scan_max_blocks = 16`: the scan halves its range at
    each refusal (a warning each) down to 2 blocks, grows it back after 8 ranges answered and
    halves again, asks for every block from `scan_from_block` to the head once, each range
    within the limit, a few ranges a look, and then pauses BTC, which run two's config lacks.
    The looks before that push ETH's 2 % move: the scan holds no push back, and a refusal
    worded as a cap on the query is no rate limit (the endpoint is never rested)."""
    rounds = Rounds(make_config())
    first = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(first)
    await rig.chain.mine(64)
    head = await rig.chain.block_number()
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    answered: list[tuple[int, int]] = []

    def range_limit(sent: Any, reply: Any) -> Any:
        if not isinstance(sent, dict) or sent["method"] != "eth_getLogs":
            return reply
        query = sent["params"][0]
        low, high = int(query["fromBlock"], 16), int(query["toBlock"], 16)
        if high - low + 1 > 2:
            return {"jsonrpc": "2.0", "id": sent["id"], "error": refusal}
        answered.append((low, high))
        return reply

    proxy.rewrite = range_limit
    try:
        again = _restarted(rounds, make_config({"ETH/USD": 3_100.5, "SOL/USD": 150.125}))
        second = rig.pusher(
            urls=(proxy.url,), heartbeat_s=3600.0, scan_from_block=1, scan_max_blocks=16
        )
        moved = again.step(ETH_USD=1.02)
        second.submit(moved)
        await second.start()
        with capture_logs() as logs:
            await settle(second)
            assert (await rig.stored("ETH/USD"))[3] == moved.ts
            assert second._scan is not None  # the scan goes on at the next looks
            for _ in range(20):
                second.submit(again.step())
                await settle(second)
    finally:
        await proxy.stop()
    assert [e["blocks"] for e in logs if e["event"].startswith("eth_getLogs range refused")][
        :4
    ] == [8, 4, 2, 2]
    assert answered[0][0] == 1 and answered[-1][1] == head
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(answered))
    (done,) = _scan_lines(logs)
    assert (done["to_block"], done["markets"]) == (head, 3)
    assert (await rig.feed_of("BTC/USD"))[4] is True
    assert "rate_limited" not in second.rpc.stats[0].by_kind


@pytest.mark.parametrize(
    "logs",
    [
        "not a list",
        [{"address": OTHER, "topics": [PRICE_UPDATED, "0x" + "11" * 32]}],
        [{"topics": ["0x" + "22" * 32, "0x" + "11" * 32]}],
        [{"topics": [PRICE_UPDATED, "0x11"]}],
        # 66 characters that Python's int() reads as hex, but no 32 bytes: a digit separator,
        # Arabic-Indic digits (before, bytes.fromhex raised out of the look: a crash at every
        # start, and no push went out while the node answered so)
        [{"topics": [PRICE_UPDATED, "0x" + "11" * 31 + "_1"]}],
        [{"topics": [PRICE_UPDATED, "0x" + "\u0661" * 64]}],
    ],
)
async def test_a_scan_answer_that_is_no_list_of_the_contracts_price_logs_is_asked_again(
    rig: Rig, logs: Any
) -> None:
    """An `eth_getLogs` answer that is not a list, or holds a log of another address, of
    another event or with a market topic that is not 32 bytes, is a counted bad answer, logged
    as a failed scan, and the range is asked again at the next look (not skipped: its markets
    would be missed); the scan then pauses BTC, which run two's config lacks."""
    rounds = Rounds(make_config())
    first = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(first)
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    bad = [logs]

    def first_logs_bad(sent: Any, reply: Any) -> Any:
        if isinstance(sent, dict) and sent["method"] == "eth_getLogs" and bad:
            item = bad.pop()
            for entry in item if isinstance(item, list) else []:
                entry.setdefault("address", rig.feed)
            reply["result"] = item
        return reply

    proxy.rewrite = first_logs_bad
    try:
        again = _restarted(rounds, make_config({"ETH/USD": 3_100.5, "SOL/USD": 150.125}))
        second = rig.pusher(urls=(proxy.url,), heartbeat_s=3600.0, scan_from_block=0)
        second.submit(again.step())
        await second.start()
        with capture_logs() as logs_seen:
            for _ in range(3):
                second.submit(again.step())
                await settle(second)
    finally:
        await proxy.stop()
    failed = [e for e in logs_seen if e["event"].startswith("on-chain scan failed")]
    assert len(failed) == 1 and "eth_getLogs" in failed[0]["error"]
    assert second.stats.bad_answers == 1
    (done,) = _scan_lines(logs_seen)
    assert (done["requests"], done["markets"]) == (2, 3)
    assert (await rig.feed_of("BTC/USD"))[4] is True


async def test_a_pause_entry_a_reorganisation_took_off_the_chain_is_pushed_again(
    rig: Rig,
) -> None:
    """BTC's pause entry is confirmed, then a reorganisation replaces its block: the chain
    answers BTC's old price from `latest` again. Once that block is `_RECHECK_DEPTH` deep the
    pusher finds the receipt gone, reads the chain again and pushes the pause again, at the
    next look (a confirmed pause is held for the recheck as a confirmed price is)."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(pusher)
    before = await rig.stored("BTC/USD")
    pusher.submit(_btc_stopped_round(rounds, "paused"))
    await settle(pusher)
    assert pusher.stats.pauses == 1
    await rig.chain.reorg(1)
    assert await rig.stored("BTC/USD") == before  # the pause went with its block
    await rig.chain.rpc("anvil_mine", [hex(_RECHECK_DEPTH)])
    with capture_logs() as logs:
        for _ in range(3):
            stopped = _btc_stopped_round(rounds, "paused")
            pusher.submit(stopped)
            await settle(pusher)
    assert [e["nonce"] for e in logs if e["event"].startswith("a reorganisation took")] == [1]
    assert pusher.stats.pauses == 2
    assert (await rig.feed_of("BTC/USD"))[4] is True
    assert await rig.refused("BTC/USD") > before[3]


async def test_a_stuck_transaction_is_replaced_with_the_same_nonce_and_a_higher_fee(
    rig: Rig,
) -> None:
    """Mining stopped: after replace_after_s the pusher re-sends nonce n at +12.5 %; once a
    block comes, only the replacement is mined and the push is confirmed."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds)
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
    pusher = await first_push(rig, rounds, max_gas_price_gwei=5.0, priority_fee_gwei=1.0)
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
    pusher = await first_push(rig, rounds, max_gas_price_gwei=2.0, priority_fee_gwei=1.0)
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


async def test_a_stuck_push_is_not_replaced_while_the_base_fee_is_over_the_cap(rig: Rig) -> None:
    """The base fee jumps to 500 gwei (cap 10) while a push waits: no replacement is sent,
    which no block would take, as no new push is; the hold is counted `gas_cap` and nothing is
    refused. Once the base fee is back under the cap, the push goes through. Before, every
    look sent a replacement at the cap, refused by anvil as under the base fee: an `error` a
    look (so OracledPushFailing said the node refuses, not the cap) and four requests a look."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds, max_gas_price_gwei=10.0, priority_fee_gwei=1.0)
    await rig.chain.rpc("evm_setAutomine", [False])
    await pusher.step()
    assert pusher.stats.pending
    await rig.chain.rpc("anvil_setNextBlockBaseFeePerGas", [hex(500 * GWEI)])
    await rig.chain.rpc("evm_mine")
    with capture_logs() as logs:
        for _ in range(4):
            rig.clock.advance(5_000)
            await pusher.step()
    assert pusher.stats.transactions["error"] == 0
    assert pusher.stats.transactions["replaced"] == 0
    assert pusher.stats.transactions["gas_cap"] >= 1
    assert "push refused by the node" not in [e["event"] for e in logs]
    await rig.chain.rpc("anvil_setNextBlockBaseFeePerGas", [hex(GWEI)])
    await rig.chain.rpc("evm_mine")
    await rig.chain.rpc("evm_setAutomine", [True])
    for _ in range(5):
        rig.clock.advance(5_000)
        await settle(pusher)
        if pusher.stats.transactions["confirmed"]:
            break
    assert pusher.stats.transactions["confirmed"] == 1
    assert (await rig.stored("BTC/USD"))[3] == rounds.now


async def test_a_stuck_push_costs_one_request_a_look_however_often_it_was_replaced(
    rig: Rig,
) -> None:
    """Mining stopped, the push replaced three times and then held at the cap: a look that
    neither replaces nor finds the nonce mined asks the node one thing, its transaction count.
    It used to ask for the receipt of every hash sent for the nonce at every look, and, held
    at the cap, whether the node still knew each of them too: 2 + 2n requests a second for a
    push replaced n times (about 80 at a 100 gwei cap from 1 gwei), on an RPC quota the
    chain readers may share. The node is asked again once per `replace_after_s`."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        rounds = Rounds(make_config())
        pusher = await first_push(
            rig, rounds, urls=(proxy.url,), max_gas_price_gwei=4.5, priority_fee_gwei=1.0
        )
        await rig.chain.rpc("evm_setAutomine", [False])
        await pusher.step()
        inflight = pusher._inflight
        assert inflight is not None
        for replaced in (1, 2, 3):
            rig.clock.advance(5_000)
            await pusher.step()
            assert pusher.stats.transactions["replaced"] == replaced
        rig.clock.advance(5_000)
        await pusher.step()  # the next bump is over the cap: held, counted once
        assert pusher.stats.transactions["gas_cap"] == 1 and len(inflight.sent) == 4
        for _ in range(3):
            rig.clock.advance(1_000)
            proxy.methods.clear()
            await pusher.step()
            assert proxy.methods == ["eth_getTransactionCount"]
        rig.clock.advance(2_000)  # replace_after_s since the cap held it: the node asked again
        proxy.methods.clear()
        await pusher.step()
        assert proxy.methods.count("eth_getTransactionByHash") >= 1
        await rig.chain.rpc("evm_mine")
        await settle(pusher)
        assert pusher.stats.transactions["confirmed"] == 1
        assert (await rig.stored("BTC/USD"))[3] == rounds.now
    finally:
        await proxy.stop()


async def test_a_push_at_the_cap_that_the_node_dropped_is_sent_again(rig: Rig) -> None:
    """At the cap no replacement is possible; but when the node no longer has the transaction
    (evicted from its pool in a fee spike, or an RPC that took it and lost it) the nonce is free:
    the pusher sends it again at the current fees instead of waiting for it forever."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds, max_gas_price_gwei=2.0, priority_fee_gwei=1.0)
    await rig.chain.rpc("evm_setAutomine", [False])
    await pusher.step()
    inflight = pusher._inflight
    assert inflight is not None and inflight.max_fee == 2 * GWEI
    await rig.chain.rpc("anvil_dropTransaction", [inflight.sent[0][0]])
    rig.clock.advance(10_000)
    with capture_logs() as logs:
        await pusher.step()
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "push dropped by the node; sent again"
    ]
    assert len(inflight.sent) == 2 and pusher.stats.transactions["gas_cap"] == 0
    again = await rig.chain.rpc("eth_getTransactionByHash", [inflight.sent[-1][0]])
    assert int(again["nonce"], 16) == 0 and int(again["maxFeePerGas"], 16) <= 2 * GWEI
    await rig.chain.rpc("evm_mine")
    await settle(pusher)
    assert pusher.stats.transactions["confirmed"] == 1
    assert (await rig.stored("BTC/USD"))[3] == rounds.now


async def test_a_node_that_loses_every_push_sent_again_grows_no_list_of_hashes(
    rig: Rig,
) -> None:
    """A node (an RPC behind a balancer) that takes every transaction and loses it: at the cap,
    each look finds the nonce free and sends it again. 80 such looks keep the newest
    `_HASHES_KEPT` hashes, which is also all the node is asked about at a look; the next one
    the node keeps is mined and confirmed. Before, each hash was kept, and asked about at every
    look, for as long as the node went on (one more every `replace_after_s`)."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds, max_gas_price_gwei=2.0, priority_fee_gwei=1.0)
    await rig.chain.rpc("evm_setAutomine", [False])
    await pusher.step()
    inflight = pusher._inflight
    assert inflight is not None
    for _ in range(80):
        await rig.chain.rpc("anvil_dropTransaction", [inflight.sent[-1][0]])
        rig.clock.advance(10_000)
        await pusher.step()
    assert pusher._inflight is inflight and pusher.stats.transactions["replaced"] == 80
    assert len(inflight.sent) == _HASHES_KEPT
    await rig.chain.rpc("evm_mine")
    await settle(pusher)
    assert pusher.stats.transactions["confirmed"] == 1
    assert (await rig.stored("BTC/USD"))[3] == rounds.now


async def test_a_stuck_push_is_replaced_without_a_market_paused_since(rig: Rig) -> None:
    """A 2 % move of BTC is pushed and the transaction sticks; the next round pauses BTC (by
    hand) and nothing else is due. The replacement carries BTC's pause entry instead of its
    price, so its price sent before the pause never lands and the pause is on chain (before,
    it sent the stuck batch again, BTC's price and all, after the pause; then a batch with no
    market, and the chain showed the old price as if live)."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds)
    await settle(pusher)
    before = await rig.stored("BTC/USD")
    await rig.chain.rpc("evm_setAutomine", [False])
    rounds.step(BTC_USD=1.02)
    pusher.submit(rounds.step())
    await pusher.step()
    assert pusher._inflight is not None and pusher._inflight.batch.markets == ["BTC/USD"]
    paused = _btc_paused_round(rounds)
    pusher.submit(paused)
    rig.clock.advance(5_000)
    await pusher.step()
    assert pusher.stats.transactions["replaced"] == 1
    assert pusher._inflight is not None and pusher._inflight.batch.markets == []
    assert pusher._inflight.batch.paused == ["BTC/USD"]
    await rig.chain.rpc("evm_mine")
    await settle(pusher)
    assert pusher.stats.transactions["confirmed"] == 2
    # neither the paused price nor the one before the pause: the last good one, paused
    assert await rig.feed_of("BTC/USD") == (*before[:2], paused.round, paused.ts, True)
    assert await rig.nonce() == 2


async def test_a_push_in_flight_is_replaced_at_the_next_look_without_a_market_paused_since(
    rig: Rig,
) -> None:
    """Automine off: a 2 % move of BTC is pushed and waits for a block; the next round pauses
    BTC. At the next look, long before `replace_after_s`, the push is replaced by one with
    BTC's pause entry instead of its price, so the block that comes mines no price from before
    the pause and `latest` refuses BTC from that block on. Before, the push stayed as it was
    until `replace_after_s` (30 s by default), and any block in that time put BTC's pre-pause
    price on chain while oracled said paused; then the replacement carried no market, and the
    old price read as live."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds)
    await settle(pusher)
    before = await rig.stored("BTC/USD")
    await rig.chain.rpc("evm_setAutomine", [False])
    rounds.step(BTC_USD=1.02)
    pusher.submit(rounds.step())
    await pusher.step()
    assert pusher._inflight is not None and pusher._inflight.batch.markets == ["BTC/USD"]
    paused = _btc_paused_round(rounds)
    pusher.submit(paused)
    await pusher.step()  # the next look: no time has passed
    assert pusher.stats.transactions["replaced"] == 1
    assert pusher._inflight is not None and pusher._inflight.batch.markets == []
    assert pusher._inflight.batch.paused == ["BTC/USD"]
    await pusher.step()  # nothing more to take out: not replaced again
    assert pusher.stats.transactions["replaced"] == 1
    await rig.chain.rpc("evm_mine")
    await settle(pusher)
    assert await rig.feed_of("BTC/USD") == (*before[:2], paused.round, paused.ts, True)
    assert await rig.refused("BTC/USD") == paused.ts
    assert pusher.stats.pauses == 1 and await rig.nonce() == 2


async def test_a_restarted_pusher_continues_the_nonces_and_replaces_what_was_left_pending(
    rig: Rig,
) -> None:
    """Run one: two confirmed pushes (nonces 0, 1) and a third left pending when it stops.
    Run two starts from the mined count, outbids the pending one at nonce 2 and goes on at 3."""
    rounds = Rounds(make_config())
    first = await first_push(rig, rounds, heartbeat_s=0.25)
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


async def test_a_push_a_previous_run_left_pending_is_replaced_even_with_nothing_due(
    rig: Rig,
) -> None:
    """Run one leaves a 2 % move of BTC pending when it stops; run two starts with BTC paused
    and no price due. It replaces the pending push by one with BTC's pause entry alone
    (outbidding it after the node refuses the first as underpriced), so BTC's price from
    before the pause never lands. Before, a run with nothing due sent nothing, and the last
    run's push was mined whenever the fees let it: BTC's pre-pause price went on chain after
    the pause; then a push without markets took the nonce, and the old price read as live."""
    rounds = Rounds(make_config())
    first = await first_push(rig, rounds)
    await settle(first)
    before = await rig.stored("BTC/USD")
    await rig.chain.rpc("evm_setAutomine", [False])
    rounds.step(BTC_USD=1.02)
    first.submit(rounds.step())
    await first.step()
    assert first._inflight is not None and first._inflight.batch.markets == ["BTC/USD"]
    second = rig.pusher()
    second.submit(_btc_paused_round(rounds))
    await second.start()
    for _ in range(3):
        await second.step()
    assert second.stats.transactions["sent"] == 1
    assert second._inflight is not None and second._inflight.batch.markets == []
    assert second._inflight.batch.paused == ["BTC/USD"]
    await rig.chain.rpc("evm_mine")
    await settle(second)
    assert (await rig.feed_of("BTC/USD"))[:2] == before[:2]
    assert (await rig.feed_of("BTC/USD"))[4] is True
    assert await rig.nonce() == 2
    second.submit(_btc_paused_round(rounds))
    await second.step()  # the nonce of the last run is taken: nothing more is sent
    assert second.stats.transactions["sent"] == 1 and not second.stats.pending


async def test_a_push_sent_without_an_answer_is_replaced_even_with_nothing_due(
    rig: Rig,
) -> None:
    """A 2 % move of BTC is sent, and the node takes the transaction but its answer comes
    after the pusher's timeout, so the pusher does not know it was sent. BTC is paused the
    round after, and nothing else is due: the pusher takes that nonce with a transaction
    without markets (outbidding the unanswered one), so BTC's price from before the pause
    never lands. Before, nothing was due, nothing was sent, and the unanswered push was mined
    with the next block: BTC's pre-pause price went on chain after the pause. (Now BTC's pause
    entry is due, and it takes the nonce.)"""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        rounds = Rounds(make_config())
        pusher = await first_push(rig, rounds, urls=(proxy.url,), timeout_s=0.3)
        await settle(pusher)
        before = await rig.stored("BTC/USD")
        await rig.chain.rpc("evm_setAutomine", [False])
        rounds.step(BTC_USD=1.02)
        pusher.submit(rounds.step())
        proxy.delay_s = 0.6
        proxy.script = ["pass", "pass", "slow"]  # the base fee, the estimate, then the send
        with pytest.raises(RpcUnavailable, match="eth_sendRawTransaction"):
            await pusher.step()
        async with asyncio.timeout(10):
            while await rig.nonce("pending") < 2:  # noqa: ASYNC110 - the node, polled
                await asyncio.sleep(0.05)
        assert not pusher.stats.pending and pusher.stats.nonce == 1
        pusher.submit(_btc_paused_round(rounds))
        for _ in range(3):
            await pusher.step()
        await rig.chain.rpc("evm_mine")
        await settle(pusher)
        assert (await rig.feed_of("BTC/USD"))[:2] == before[:2]
        assert (await rig.feed_of("BTC/USD"))[4] is True
        assert await rig.nonce() == 2
        assert pusher.stats.transactions["confirmed"] == 2 and pusher.stats.updates == 3
        assert pusher.stats.pauses == 1
    finally:
        await proxy.stop()


async def test_a_fee_to_outbid_is_forgotten_once_the_transaction_it_was_for_is_mined(
    rig: Rig,
) -> None:
    """A restart while a push of the last run waits at the cap: the new run's first push, at
    the cap too, is refused as underpriced, and outbidding it would cross the cap (counted
    `gas_cap`). Once the old push is mined, the nonce holds nothing to outbid: the pusher
    pushes again at the next nonce. Before, the fee to beat stayed and every later push was
    held as over the cap, nothing pending, until the daemon was restarted."""
    rounds = Rounds(make_config())
    capped = {"max_gas_price_gwei": 2.0, "priority_fee_gwei": 1.0}
    first = await first_push(rig, rounds, **capped)
    await rig.chain.rpc("evm_setAutomine", [False])
    await first.step()
    assert first._inflight is not None and first._inflight.max_fee == 2 * GWEI  # at the cap
    second = rig.pusher(**capped)  # the restart: nonce 0 is the mined count
    second.submit(rounds.step(BTC_USD=1.02))
    await second.start()
    await second.step()  # the same fee as the pending one: refused as underpriced
    assert second.stats.transactions["error"] == 1
    await second.step()  # outbidding it would cross the cap
    assert second.stats.transactions["gas_cap"] == 1 and second.stats.transactions["sent"] == 0
    await rig.chain.rpc("evm_mine")  # the last run's push is mined
    await rig.chain.rpc("evm_setAutomine", [True])
    assert await rig.nonce() == 1
    await settle(second)
    await settle(second)
    assert second.stats.transactions["confirmed"] == 1
    assert second.stats.transactions["gas_cap"] == 1
    assert await rig.nonce() == 2
    assert (await rig.stored("BTC/USD"))[3] == rounds.now


async def test_a_fee_to_outbid_is_forgotten_once_the_transaction_it_was_for_left_the_pool(
    rig: Rig,
) -> None:
    """As above, but the last run's push at the cap is dropped from the node's pool instead of
    mined: nothing holds the nonce any more, so the pusher forgets the fee to beat and pushes
    at that nonce. Before, it only looked for the transaction being mined: held at the cap
    (`gas_cap` at every look) with nothing pending, for ever (found by a seeded fault
    schedule, `test_a_seeded_fault_schedule_...`, seed 2)."""
    rounds = Rounds(make_config())
    capped = {"max_gas_price_gwei": 2.0, "priority_fee_gwei": 1.0}
    first = await first_push(rig, rounds, **capped)
    await rig.chain.rpc("evm_setAutomine", [False])
    await first.step()
    assert first._inflight is not None and first._inflight.max_fee == 2 * GWEI  # at the cap
    second = rig.pusher(**capped)  # the restart: nonce 0 is the mined count
    second.submit(rounds.step(BTC_USD=1.02))
    await second.start()
    await second.step()  # the same fee as the pending one: refused as underpriced
    await second.step()  # outbidding it would cross the cap
    assert second.stats.transactions["gas_cap"] == 1 and second.stats.transactions["sent"] == 0
    await rig.chain.rpc("anvil_dropTransaction", [first._inflight.sent[0][0]])
    assert await rig.nonce("pending") == 0
    await second.step()
    assert second.stats.transactions["sent"] == 1 and second.stats.transactions["gas_cap"] == 1
    await rig.chain.rpc("evm_mine")
    await settle(second)
    assert second.stats.transactions["confirmed"] == 1
    assert (await rig.stored("BTC/USD"))[3] == rounds.now


async def test_a_batch_over_the_block_gas_limit_is_pushed_in_smaller_ones(rig: Rig) -> None:
    """Blocks that hold 2M gas and 100 markets due at once (the first push): the default
    `max_batch` of 100 needs at least 3.26M gas, which no node takes or mines. The pusher says
    so and pushes the most due markets in transactions that fit, until every market is on
    chain. Before, every look failed at the gas estimate, which the node refuses over the
    block's limit (taken for an unreachable node: `chain unreachable`, backing off), and nothing
    was ever pushed; so with `max_batch = 1000` on a 30M-gas chain (refused at the send there:
    `intrinsic gas too high`)."""
    assert await rig.chain.rpc("evm_setBlockGasLimit", [hex(2_000_000)])
    await rig.chain.rpc("evm_mine")  # the latest block says so
    markets = {f"C{i:03d}/USD": 10.0 + i for i in range(100)}
    rounds = Rounds(make_config(markets), markets)
    pusher = await first_push(rig, rounds)
    with capture_logs() as logs:
        for _ in range(10):
            await settle(pusher)
            if pusher.stats.updates == 100:
                break
    assert pusher.stats.updates == 100
    assert pusher.stats.transactions["error"] == 0
    assert "push batch over the block gas limit; fewer markets a transaction" in [
        e["event"] for e in logs if e["log_level"] == "warning"
    ]
    assert all(e["markets"] <= 60 for e in logs if e["event"] == "push sent")
    for market in ("C000/USD", "C099/USD"):
        assert (await rig.stored(market))[3] == rounds.now


async def test_a_batch_lowered_to_the_block_gas_limit_does_not_grow_past_it(rig: Rig) -> None:
    """Blocks of 2M gas hold at most 60 markets at the pusher's gas floor (60,000 + 32,000 a
    market), and 100 markets are due at every round (a 250 ms heartbeat). The first writes
    lower the batch to 60 (the floor), then to 59 (their estimate); after `_GROW_AFTER` pushes
    it grows back to 60 (updates cost less than first writes, and 60 go through), and no
    further: growing past the floor (to 73) would be lowered again, with a warning, every
    `_GROW_AFTER` pushes."""
    assert await rig.chain.rpc("evm_setBlockGasLimit", [hex(2_000_000)])
    await rig.chain.rpc("evm_mine")
    markets = {f"C{i:03d}/USD": 10.0 + i for i in range(100)}
    rounds = Rounds(make_config(markets), markets)
    pusher = await first_push(rig, rounds, heartbeat_s=0.25)
    with capture_logs() as logs:
        for _ in range(2 * _GROW_AFTER):
            pusher.submit(rounds.step())
            await settle(pusher)
    assert pusher.stats.transactions["confirmed"] >= _GROW_AFTER + 5
    assert [e["max_batch"] for e in logs if e["event"].startswith("push batch over")] == [60, 59]
    assert [e["max_batch"] for e in logs if e["event"].startswith("push batch grows")] == [60]
    # Grown after the 10th confirmed push (later if anvil was slow to show a receipt)
    sent = [e["markets"] for e in logs if e["event"] == "push sent"]
    assert sent[:_GROW_AFTER] == [59] * _GROW_AFTER
    assert sent == sorted(sent) and set(sent) == {59, 60} and sent[-1] == 60


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


async def test_the_contract_marks_a_market_paused_and_latest_refuses_its_price(rig: Rig) -> None:
    """A pause entry keeps the last good price, takes the pause's round and ts, and `latest`
    reverts for the market with `FeedPaused(market, ts)`, other markets unaffected; the full
    view and `latestMany` show the price with the flag. A price or a pause not newer than the
    pause is skipped (a late batch never clears it), and the next newer price does. Version 1
    had no pause: `latest` answered the frozen price as if it were live."""
    chain = rig.chain
    feed = await chain.deploy("OracledFeed", ["address"], [chain.account])
    btc, eth = market_id("BTC/USD"), market_id("ETH/USD")
    push = "pushBatch(uint64,uint48,bytes32[],int128[],int8[],bytes32[])"
    full = ["int128", "int8", "uint64", "uint48", "bool"]
    assert await chain.call(feed, "VERSION()", returns=["uint8"]) == (2,)
    await chain.transact(feed, push, 1, 1_000, [btc, eth], [100, 200], [-2, -2], [])
    receipt = await chain.transact(feed, push, 2, 2_000, [], [], [], [btc])
    assert len(receipt["logs"]) == 1  # MarketPaused
    with pytest.raises(RpcFailed) as refused:
        await chain.call(feed, "latest(bytes32)", btc, returns=["int128"])
    reason = selector("FeedPaused(bytes32,uint48)") + btc + (2_000).to_bytes(32, "big")
    assert "0x" + reason.hex() in str(refused.value)
    assert await chain.call(feed, "latestFeed(bytes32)", btc, returns=full) == (
        100, -2, 2, 2_000, True
    )  # fmt: skip
    eth_now = await chain.call(feed, "latest(bytes32)", eth, returns=full[:4])
    assert eth_now == (200, -2, 1, 1_000)
    for late in ((1, 1_500, [btc], [99], [-2], []), (2, 2_000, [], [], [], [btc])):
        receipt = await chain.transact(feed, push, *late)
        assert receipt["logs"] == []  # not newer than the pause: skipped, not reverted
    assert (await chain.call(feed, "latestFeed(bytes32)", btc, returns=full))[4] is True
    raw = await chain.rpc(
        "eth_call", [{"to": feed, "data": "0x" + encode_latest_many([btc, eth]).hex()}]
    )
    assert decode_latest_many(bytes.fromhex(raw[2:])).paused == [True, False]
    await chain.transact(feed, "update(bytes32,int128,int8,uint64,uint48)", btc, 101, -2, 3, 3_000)
    assert await chain.call(feed, "latestFeed(bytes32)", btc, returns=full) == (
        101, -2, 3, 3_000, False
    )  # fmt: skip
    assert await chain.call(feed, "latest(bytes32)", btc, returns=full[:4]) == (101, -2, 3, 3_000)
    # Priced and paused in one call: the price is stored, the pause (same ts) is not newer.
    receipt = await chain.transact(feed, push, 4, 4_000, [btc], [102], [-2], [btc])
    assert [log["topics"][0] for log in receipt["logs"]] == [PRICE_UPDATED]
    assert await chain.call(feed, "latestFeed(bytes32)", btc, returns=full) == (
        102, -2, 4, 4_000, False
    )  # fmt: skip


#: Five markets, for a read in chunks of two: two full chunks and one of a single market.
_FIVE = {
    "BTC/USD": 64_000.12,
    "ETH/USD": 3_100.5,
    "SOL/USD": 150.125,
    "AVAX/USD": 35.25,
    "LINK/USD": 18.5,
}
_LATEST_MANY = selector("latestMany(bytes32[])")


async def _five_on_chain(rig: Rig) -> Rounds:
    """The five markets pushed, then BTC and AVAX paused on chain (by hand)."""
    rounds = Rounds(make_config(_FIVE), _FIVE)
    pusher = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(pusher)
    for market in ("BTC/USD", "AVAX/USD"):
        rounds.core.set_manual(market, True)
    pusher.submit(rounds.step())
    await settle(pusher)
    assert [m for m in _FIVE if (await rig.feed_of(m))[4]] == ["BTC/USD", "AVAX/USD"]
    return rounds


def _five_again(rounds: Rounds) -> Rounds:
    """A restarted daemon's rounds of the five markets, at the same prices."""
    again = Rounds(make_config(_FIVE), _FIVE)
    again.now = rounds.now
    again.step()
    return again


def _latest_many(request: Any) -> bool:
    return request.get("method") == "eth_call" and request["params"][0]["data"].startswith(
        "0x" + _LATEST_MANY.hex()
    )


async def test_a_read_in_chunks_takes_every_price_and_pause_all_at_one_block(rig: Rig) -> None:
    """Markets read two a `latestMany` call: a restart's read of five markets is three calls,
    each pinned by hash (canonical only) to the one block that was the latest when the read
    began, and takes every price and pause flag as the chain holds them; its first look then
    pushes only the two paused markets' prices (active again), the three others unchanged. One
    call for every market was refused by a node past its gas cap at every look (3,840 gas a
    market at 500 markets on anvil, 6,050 at 5,000: over 30M)."""
    rounds = await _five_on_chain(rig)
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        second = rig.pusher(urls=(proxy.url,), heartbeat_s=3600.0)
        second.read_chunk = 2
        again = _five_again(rounds)
        second.submit(again.step())
        await second.start()
        head = await rig.chain.block()
        assert proxy.pins[-3:] == [{"blockHash": head["hash"], "requireCanonical": True}] * 3
        assert proxy.methods.count("eth_call") == 4  # VERSION, then 2 + 2 + 1 markets
        for market in _FIVE:
            price, expo, _, ts, paused = await rig.feed_of(market)
            stored = second._stored[market]
            assert (stored.price, stored.ts, stored.paused) == (price * 10.0**expo, ts, paused)
        second.submit(again.step())
        await second.step()
        assert second._inflight is not None
        assert sorted(second._inflight.batch.markets) == ["AVAX/USD", "BTC/USD"]
        assert second._inflight.batch.paused == []
        await settle(second)
    finally:
        await proxy.stop()
    assert not [m for m in _FIVE if (await rig.feed_of(m))[4]]


def _not_canonical(request: Any) -> dict[str, Any]:
    """geth's answer to a read pinned with `requireCanonical` to a block a reorganisation
    orphaned (the request's own block hash)."""
    gone = "hash " + request["params"][1]["blockHash"] + " is not currently canonical"
    return {"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32000, "message": gone}}


@pytest.mark.parametrize("fault", ["unreadable", "not_canonical"])
async def test_a_chunk_that_fails_fails_the_whole_read_and_the_next_one_reads_every_chunk(
    rig: Rig, fault: str
) -> None:
    """The second of three `latestMany` chunks answered unreadably (a word short: a counted bad
    answer) or refused as pinned to a block no longer canonical (a reorganisation: the request's
    own fault, not counted against the endpoint) fails the read as one call did: nothing of the
    first chunk is taken, and the next try reads all three again, at a new block."""
    rounds = await _five_on_chain(rig)
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    chunks: list[Any] = []

    def second_chunk_fails(request: Any, answer: Any) -> Any:
        if isinstance(request, dict) and _latest_many(request):
            chunks.append(request["params"][1])
            if len(chunks) == 2 and fault == "unreadable":
                answer["result"] = answer["result"][:-64]
            elif len(chunks) == 2:
                return _not_canonical(request)
        return answer

    proxy.rewrite = second_chunk_fails
    try:
        second = rig.pusher(urls=(proxy.url,), heartbeat_s=3600.0)
        second.read_chunk = 2
        second.submit(_five_again(rounds).step())
        failure = RpcUnavailable if fault == "unreadable" else UnknownBlock
        with pytest.raises(failure, match="latestMany" if fault == "unreadable" else "canonical"):
            await second.start()
        assert second.stats.bad_answers == (1 if fault == "unreadable" else 0)
        assert second._stored == {}
        await rig.chain.mine()
        await second.start()
    finally:
        await proxy.stop()
    assert len(chunks) == 5 and chunks[0] == chunks[1] != chunks[2] == chunks[4]
    assert {m for m, s in second._stored.items() if s.paused} == {"BTC/USD", "AVAX/USD"}
    assert len(second._stored) == 5


async def test_a_reorganisation_under_a_read_is_retried_and_not_counted_as_a_refusal(
    rig: Rig,
) -> None:
    """The task's start reads five markets in three chunks; the node refuses the second as
    pinned to a block no longer canonical. The start is retried under its own event (it was
    counted in `oracled_push_refused_requests_total` and logged as a refusal: the chain
    reorganised, nobody refused anything), then reads every chunk and pushes."""
    rounds = await _five_on_chain(rig)
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    chunks: list[Any] = []

    def second_chunk_orphaned(request: Any, answer: Any) -> Any:
        if isinstance(request, dict) and _latest_many(request):
            chunks.append(request["params"][1])
            if len(chunks) == 2:
                return _not_canonical(request)
        return answer

    proxy.rewrite = second_chunk_orphaned
    pusher = rig.pusher(urls=(proxy.url,), heartbeat_s=3600.0, interval_s=0.02)
    pusher.read_chunk = 2
    again = _five_again(rounds)
    pusher.submit(again.step())
    with capture_logs() as logs:
        try:
            await run_until(pusher, lambda: pusher.stats.up)
        finally:
            await proxy.stop()
    (said,) = [e for e in logs if "not currently canonical" in e.get("error", "")]
    assert said["event"] == "chain reorganised under a read; retrying"
    assert pusher.stats.refused == 0 and pusher.stats.bad_answers == 0
    assert len(chunks) >= 5  # two of the first read, then all three again
    assert len(pusher._stored) == 5


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


# -- what the pusher must refuse, and the node's refusals it must survive -------------------------

PUSHER_SLOT = "0x1"  # OracledFeed storage: owner at slot 0, pusher at slot 1


def sign_transfer(rig: Rig, nonce: int, max_fee: int, tip: int) -> str:
    """A plain transfer from the pusher's own key (another program using the same key)."""
    tx = {
        "type": 2, "chainId": 31337, "nonce": nonce, "to": OTHER, "value": 0, "data": b"",
        "gas": 21_000, "maxFeePerGas": max_fee, "maxPriorityFeePerGas": tip,
    }  # fmt: skip
    return "0x" + bytes(Account.sign_transaction(tx, rig.key.hex()).raw_transaction).hex()


async def mined(rig: Rig, tx_hash: str) -> None:
    """Wait for automine to mine a transaction (it answers the hash first, mines just after)."""
    async with asyncio.timeout(10):
        while await rig.chain.rpc("eth_getTransactionReceipt", [tx_hash]) is None:  # noqa: ASYNC110 - polled
            await asyncio.sleep(0.002)


async def nonce_reaches(rig: Rig, count: int) -> None:
    """Wait for automine to mine up to a nonce (asserting at once raced it on a loaded CI)."""
    async with asyncio.timeout(10):
        while await rig.nonce() < count:  # noqa: ASYNC110 - polled
            await asyncio.sleep(0.002)
    assert await rig.nonce() == count


def test_the_retry_wait_after_failed_steps_doubles_to_30_s_and_stays_there() -> None:
    """Each failed step in a row doubles the wait before the next (from twice the push
    interval), up to 30 s, for as long as the node fails. It was `interval * 2.0**failures`,
    which overflows past 1,023 failures: after some 8.5 hours of an unreachable node the
    retry loop raised OverflowError, logged and counted as a crash of the pusher."""
    waits = [_retry_delay_s(0.25, failing) for failing in (1, 2, 3, 7, 8, 1_024, 10**6)]
    assert waits == [0.5, 1.0, 2.0, 30.0, 30.0, 30.0, 30.0]


@pytest.mark.parametrize("problem", ["chain", "contract"])
async def test_a_node_of_another_chain_or_without_the_contract_is_refused_at_start(
    rig: Rig, problem: str
) -> None:
    """The pusher never signs for a chain it was not configured for, nor pushes to an address
    without code (a typo would burn gas for nothing): start() raises PushError."""
    if problem == "chain":
        pusher = rig.pusher(chain_id=1)
        match = "serves chain 31337, not 1"
    else:
        pusher = rig.pusher(contract=OTHER)
        match = "no contract at"
    with pytest.raises(PushError, match=match):
        await pusher.start()
    assert await rig.nonce("pending") == 0


async def test_a_pusher_without_a_contract_or_an_rpc_url_cannot_be_built() -> None:
    """Built from code rather than a validated config, a pusher with no contract or no URL is
    refused at construction, not at its first push."""
    key = SigningKey.generate()
    clock = ManualClock(0)
    no_contract = PushConfig.model_validate({"enabled": True, "key_env": "UNUSED"})
    with_contract = no_contract.model_copy(update={"contract": OTHER})
    no_url = ChainConfig(chain_id=31337)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(PushError, match=r"push\.contract is not set"):
            ChainPusher(no_contract, no_url, key, http, clock)
        with pytest.raises(PushError, match="no RPC URL"):
            ChainPusher(with_contract, no_url, key, http, clock)


def test_the_push_key_problems_name_the_push_table() -> None:
    """A missing pusher key is reported under `push.`, the table the operator must fix, not
    under the signer's table whose loader is shared."""
    cfg = PushConfig.model_validate({"enabled": True, "key_env": "ORACLED_TEST_PUSH_KEY_NEVER_SET"})
    with pytest.raises(ConfigError) as raised:
        load_push_key(cfg)
    assert raised.value.problems
    assert all(p.startswith("push.") for p in raised.value.problems)


async def test_only_the_configured_markets_are_pushed(rig: Rig) -> None:
    """With `push.markets` set, the other markets never go on chain, however due."""
    pusher = await first_push(rig, Rounds(make_config()), markets=["ETH/USD"])
    await settle(pusher)
    assert pusher.stats.updates == 1
    assert (await rig.stored("ETH/USD"))[3] > 0
    assert await rig.stored("BTC/USD") == (0, 0, 0, 0)


async def test_a_round_looked_at_twice_counts_its_skips_once(rig: Rig) -> None:
    """Skips are counted per round, not per look: two steps over one round with every market
    paused count each market once."""
    rounds = Rounds(make_config())
    pusher = rig.pusher()
    rounds.step()
    for market in ("BTC/USD", "ETH/USD", "SOL/USD"):
        rounds.core.set_manual(market, True)
    pusher.submit(rounds.step())
    await pusher.start()
    await pusher.step()
    await pusher.step()
    assert pusher.stats.skipped["paused"] == 3
    assert pusher.stats.transactions["sent"] == 0


async def test_a_pusher_started_before_any_round_reads_the_chain_when_the_first_comes(
    rig: Rig,
) -> None:
    """A restarted pusher that starts before the first round (so it cannot know which markets
    to read) reads the stored prices with that round, and does not push again what the chain
    already holds."""
    rounds = Rounds(make_config())
    first = await first_push(rig, rounds)
    await settle(first)
    second = rig.pusher()
    await second.step()  # starts; no round yet: nothing to read or push
    assert second.stats.nonce == 1
    second.submit(rounds.step())  # unchanged prices, heartbeat far away
    await second.step()
    assert second.stats.transactions["sent"] == 0
    assert await rig.nonce("pending") == 1


async def test_a_read_of_the_stored_prices_that_fails_is_tried_again_not_taken_as_empty(
    rig: Rig,
) -> None:
    """A restarted pusher whose read of the stored prices fails (the node unreachable for that
    one request) reads them again at the next step. It used to mark them read before the
    request, so after one failure it took the chain as holding nothing and pushed every
    market again, prices unchanged and the heartbeat far away (found reading `step()`)."""
    rounds = Rounds(make_config())
    first = await first_push(rig, rounds)
    await settle(first)
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        second = rig.pusher(urls=(proxy.url,))
        await second.step()  # starts; no round yet: nothing to read or push
        second.submit(rounds.step())  # unchanged prices, heartbeat far away
        proxy.script = ["error"]  # the eth_call of the stored prices
        with pytest.raises(RpcUnavailable):
            await second.step()
        await second.step()
        assert second.stats.transactions["sent"] == 0
        assert await rig.nonce("pending") == 1
    finally:
        await proxy.stop()


async def test_a_push_that_would_revert_is_not_sent(rig: Rig) -> None:
    """The key is no longer the contract's pusher: the gas estimate reverts, the push is
    counted as an error and logged, no transaction is signed away, and the nonce is kept."""
    pusher = await first_push(rig, Rounds(make_config()))
    await rig.chain.transact(rig.feed, "setPusher(address)", OTHER)
    with capture_logs() as logs:
        await pusher.step()
    assert pusher.stats.transactions["error"] == 1
    assert pusher.stats.transactions["sent"] == 0 and not pusher.stats.pending
    assert pusher.stats.nonce == 0 and await rig.nonce("pending") == 0
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "push would revert; not sent"
    ]


async def test_an_unfunded_pusher_logs_its_refusal_once_and_says_when_pushes_resume(
    rig: Rig,
) -> None:
    """The pusher's account is empty: every look is refused by the node and counted, but the
    refusal is logged once, not every second for as long as nobody funds it; once funded, the
    push goes through and one line says so."""
    pusher = await first_push(rig, Rounds(make_config()))
    await rig.chain.rpc("anvil_setBalance", [rig.key.address, "0x0"])
    with capture_logs() as logs:
        for _ in range(3):
            await pusher.step()
        assert pusher.stats.transactions["error"] == 3 and not pusher.stats.pending
        await rig.chain.rpc("anvil_setBalance", [rig.key.address, hex(10**20)])
        await settle(pusher)
    assert pusher.stats.transactions["confirmed"] == 1
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["push refused by the node"]
    assert "pushes go through again" in [e["event"] for e in logs]


async def test_a_transaction_reverted_on_chain_is_counted_and_the_markets_stay_due(
    rig: Rig,
) -> None:
    """A push mined with status 0 is counted `reverted`, not confirmed: nothing is recorded as
    stored, so the same markets are pushed again at the next step."""
    pusher = await first_push(rig, Rounds(make_config()))
    await rig.chain.rpc("evm_setAutomine", [False])
    await pusher.step()
    assert pusher.stats.pending
    own = await rig.chain.rpc("eth_getStorageAt", [rig.feed, PUSHER_SLOT, "latest"])
    other = "0x" + OTHER[2:].lower().rjust(64, "0")
    await rig.chain.rpc("anvil_setStorageAt", [rig.feed, PUSHER_SLOT, other])
    await rig.chain.rpc("evm_mine")
    await pusher.step()
    assert pusher.stats.transactions["reverted"] == 1
    assert pusher.stats.transactions["confirmed"] == 0 and pusher.stats.updates == 0
    assert not pusher.stats.pending
    await rig.chain.rpc("anvil_setStorageAt", [rig.feed, PUSHER_SLOT, own])
    await rig.chain.rpc("evm_setAutomine", [True])
    await settle(pusher)
    assert pusher.stats.transactions["sent"] == 2
    assert pusher.stats.transactions["confirmed"] == 1 and pusher.stats.updates == 3


async def test_a_nonce_taken_by_another_user_of_the_key_is_read_again(rig: Rig) -> None:
    """Another program spent the pusher's next nonce: the node says "nonce too low", the
    pusher counts the error, reads the nonce from the chain, and the next push goes through."""
    pusher = await first_push(rig, Rounds(make_config()))
    tx_hash = await rig.chain.rpc(
        "eth_sendRawTransaction", [sign_transfer(rig, 0, 10 * GWEI, GWEI)]
    )
    await mined(rig, tx_hash)
    await pusher.step()
    assert pusher.stats.transactions["error"] == 1
    assert pusher.stats.nonce == 1 and not pusher.stats.pending
    await settle(pusher)
    assert pusher.stats.transactions["confirmed"] == 1
    assert (await rig.stored("BTC/USD"))[3] > 0


async def test_a_push_mined_before_its_receipt_can_be_read_is_waited_for_not_given_up(
    rig: Rig,
) -> None:
    """The count says the nonce is mined but the node has no receipt for it yet (anvil, after
    a block of 900 markets' writes, answered the count at once and the receipt about a second
    later; a node behind a balancer can too): the pusher sees its own transaction mined and
    reads the receipt at the next look. Before, it took the nonce for used by another
    transaction and dropped its own push unconfirmed, so the same markets were pushed, and
    paid for, again."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        rounds = Rounds(make_config())
        pusher = await first_push(rig, rounds, urls=(proxy.url,))
        await pusher.step()  # sent; automine answers the hash first and mines just after
        await nonce_reaches(rig, 1)
        proxy.script = ["pass", "null_result"]  # the count, then a receipt not there yet
        with capture_logs() as logs:
            await pusher.step()
            assert pusher.stats.pending  # still its own push, mined: waited for
            await pusher.step()
        assert [e["event"] for e in logs if e["log_level"] != "info"] == []
        assert pusher.stats.transactions["confirmed"] == 1 and pusher.stats.updates == 3
        pusher.submit(rounds.step())  # nothing moved: nothing is pushed again
        await pusher.step()
        assert pusher.stats.transactions["sent"] == 1
    finally:
        await proxy.stop()


async def test_a_push_the_node_counts_mined_but_shows_without_a_block_is_waited_for(
    rig: Rig,
) -> None:
    """The count says the nonce is mined, the node has no receipt yet, and it answers the
    transaction by its hash without a block (a node that counts a block before it indexes its
    transactions, or one behind a balancer): the pusher waits for its own push and confirms
    it at the next look. Before, it took the nonce for another's, dropped its push
    unconfirmed, and pushed (and paid for) the same markets again; a 100-market test saw
    that once in some thirty runs on a loaded machine."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        rounds = Rounds(make_config())
        pusher = await first_push(rig, rounds, urls=(proxy.url,))
        await pusher.step()
        await nonce_reaches(rig, 1)

        def lag(request: Any, answer: Any) -> Any:
            if request.get("method") == "eth_getTransactionReceipt":
                answer["result"] = None
            elif request.get("method") == "eth_getTransactionByHash" and answer["result"]:
                answer["result"] = {**answer["result"], "blockNumber": None, "blockHash": None}
            return answer

        proxy.rewrite = lag
        with capture_logs() as logs:
            await pusher.step()
            assert pusher.stats.pending
            proxy.rewrite = None
            await pusher.step()
        assert [e["event"] for e in logs if e["log_level"] != "info"] == []
        assert pusher.stats.transactions["confirmed"] == 1 and pusher.stats.updates == 3
        pusher.submit(rounds.step())  # nothing moved: nothing is pushed again
        await pusher.step()
        assert pusher.stats.transactions["sent"] == 1
    finally:
        await proxy.stop()


async def test_a_nonce_mined_under_a_hash_the_pusher_never_sent_frees_the_pusher(
    rig: Rig,
) -> None:
    """The push in flight is outbid at its nonce by another user of the key, and that one is
    mined: the pusher sees its nonce used, stops waiting for its own transaction (never
    replacing it), and pushes the markets at the next nonce."""
    pusher = await first_push(rig, Rounds(make_config()))
    await rig.chain.rpc("evm_setAutomine", [False])
    await pusher.step()
    inflight = pusher._inflight
    assert inflight is not None
    outbid = sign_transfer(rig, 0, inflight.max_fee * 2, inflight.tip * 2)
    await rig.chain.rpc("eth_sendRawTransaction", [outbid])
    await rig.chain.rpc("evm_mine")
    with capture_logs() as logs:
        await pusher.step()
    assert not pusher.stats.pending
    assert [e["event"] for e in logs] == ["nonce used by another transaction"]
    assert pusher.stats.transactions["confirmed"] == 0
    await rig.chain.rpc("evm_setAutomine", [True])
    await settle(pusher)
    assert pusher.stats.transactions["confirmed"] == 1
    assert await rig.nonce() == 2
    assert (await rig.stored("BTC/USD"))[3] > 0


async def test_a_replacement_refused_as_underpriced_raises_its_fee_until_it_outbids(
    rig: Rig,
) -> None:
    """Another user of the key outbids the push in flight at its nonce at twice its fees, and
    that transaction stays pending: each replacement is refused as underpriced, and the next
    one offers 12.5 % more than the refused one, until it outbids the other (one warning for
    the nonce, not one a look); the replacement is then mined. Before, every look sent the
    same replacement, 12.5 % over the push's own fees, refused for as long as the other was
    pending, with the warning "raising the fee" each time and no fee ever raised."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds)
    await rig.chain.rpc("evm_setAutomine", [False])
    await pusher.step()
    inflight = pusher._inflight
    assert inflight is not None
    rival_fee = inflight.max_fee * 2
    rival = sign_transfer(rig, 0, rival_fee, inflight.tip * 2)
    await rig.chain.rpc("eth_sendRawTransaction", [rival])
    with capture_logs() as logs:
        for _ in range(8):
            rig.clock.advance(5_000)
            await pusher.step()
            if pusher.stats.transactions["replaced"]:
                break
    assert pusher.stats.transactions["replaced"] == 1
    assert 1 < pusher.stats.transactions["error"] < 8
    warned = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert warned == ["a pending transaction holds this nonce; raising the fee"]
    sent = await rig.chain.rpc("eth_getTransactionByHash", [inflight.sent[-1][0]])
    assert int(sent["maxFeePerGas"], 16) > rival_fee
    await rig.chain.rpc("evm_mine")
    await settle(pusher)
    assert pusher.stats.transactions["confirmed"] == 1
    assert (await rig.stored("BTC/USD"))[3] == rounds.now


async def test_a_refusal_the_pusher_cannot_fix_is_logged_and_nothing_is_in_flight(
    rig: Rig,
) -> None:
    """A key without funds: the node refuses the transaction, the pusher logs the node's reason
    and counts an error; nothing waits in flight and the nonce is kept for the next try."""
    pusher = await first_push(rig, Rounds(make_config()))
    await rig.chain.rpc("anvil_setBalance", [rig.key.address, "0x0"])
    with capture_logs() as logs:
        await pusher.step()
    assert pusher.stats.transactions["error"] == 1
    assert not pusher.stats.pending and pusher.stats.nonce == 0
    (refused,) = [e for e in logs if e["event"] == "push refused by the node"]
    assert "insufficient funds" in refused["error"].lower()


async def test_outbidding_a_pending_transaction_never_goes_above_the_cap(rig: Rig) -> None:
    """A previous run left a transaction pending at the cap: the restarted pusher is refused as
    underpriced, and the bump it would need is above the cap, so it holds back (counted
    gas_cap) instead of offering more than the operator allows."""
    rounds = Rounds(make_config())
    first = await first_push(rig, rounds, max_gas_price_gwei=2.0, priority_fee_gwei=1.0)
    await rig.chain.rpc("evm_setAutomine", [False])
    await first.step()
    assert first._inflight is not None and first._inflight.max_fee == 2 * GWEI
    second = rig.pusher(max_gas_price_gwei=2.0, priority_fee_gwei=1.0)
    second.submit(rounds.step())
    await second.start()
    await second.step()  # same fee as the pending one: refused as underpriced
    assert second.stats.transactions["error"] == 1
    await second.step()
    await second.step()
    assert second.stats.transactions["gas_cap"] == 2
    assert second.stats.transactions["sent"] == 0
    assert await rig.nonce("pending") == 1


async def test_a_raw_transaction_goes_to_the_next_endpoint_and_is_never_counted_unsent(
    rig: Rig,
) -> None:
    """eth_sendRawTransaction to an endpoint answering garbage goes to the next URL; with no
    endpoint taking it, the step fails with RpcUnavailable, nothing is counted as sent, and
    the same nonce is used by the next push."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        rounds = Rounds(make_config())
        pusher = await first_push(rig, rounds, urls=(proxy.url, rig.url))
        proxy.mode = "garbage"
        await settle(pusher)
        assert pusher.stats.transactions["confirmed"] == 1
        proxy.mode = "pass"
        alone = rig.pusher(urls=(proxy.url,))
        alone.submit(rounds.step(BTC_USD=1.05))
        await alone.start()
        proxy.script = ["pass", "pass", "garbage"]  # fees, gas estimate, then the raw send
        with pytest.raises(RpcUnavailable, match="eth_sendRawTransaction"):
            await alone.step()
        assert alone.stats.transactions["sent"] == 0 and not alone.stats.pending
        assert alone.stats.nonce == 1
    finally:
        await proxy.stop()


async def until(done: Callable[[], bool]) -> None:
    """Wait for a state of the pusher task (the bound only turns a hang into a failure)."""
    async with asyncio.timeout(10):
        while not done():  # noqa: ASYNC110 - the pusher's counters have no event to wait on
            await asyncio.sleep(0.01)


async def run_until(pusher: ChainPusher, done: Callable[[], bool]) -> None:
    """`pusher.run()` as a task until `done()` holds, the task still running then (it ends only
    on a PushError, which fails this), then cancelled and awaited."""
    task = asyncio.create_task(pusher.run())
    try:
        await until(lambda: task.done() or done())
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("mode", ["error", "rate_limited"])
async def test_the_pusher_task_outlasts_an_unreachable_node_at_start_and_later(
    rig: Rig, mode: str
) -> None:
    """`run()` with the node unreachable at start (a server-side error on every endpoint, or
    a rate limit answered with JSON-RPC code 429, which rests the endpoint on the pusher's
    clock) retries the start and says so; later, a step that fails the same way is logged and
    the task goes on, pushing again once the node answers (and its rest is over)."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    rounds = Rounds(make_config())
    pusher = rig.pusher(urls=(proxy.url,), interval_s=0.02)
    rounds.step()
    pusher.submit(rounds.step())
    proxy.script = [mode]  # the first request of the start: the chain id
    with capture_logs() as logs:
        task = asyncio.create_task(pusher.run())
        try:
            await until(lambda: any(e["event"] == "chain unreachable; retrying" for e in logs))
            rig.clock.advance(60_000)  # before the retry, 0.5 s away: a rate limit's rest ends
            await until(lambda: pusher.stats.transactions["confirmed"] == 1)
            proxy.mode = mode
            pusher.submit(rounds.step(BTC_USD=1.02))
            await until(lambda: any(e["event"] == "chain unreachable" for e in logs))
            proxy.mode = "pass"
            rig.clock.advance(60_000)
            await until(lambda: pusher.stats.transactions["confirmed"] == 2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await proxy.stop()
    assert [e["event"] for e in logs].count("chain unreachable; retrying") == 1
    assert not any(e["event"] == "chain answer unreadable; retrying" for e in logs)
    assert (await rig.stored("BTC/USD"))[3] == rounds.now


async def test_a_node_failing_look_after_look_is_logged_once_a_minute_with_the_count(
    rig: Rig,
) -> None:
    """Once started, a node that fails every step (a server-side error on its one URL) is
    logged when it starts failing and then at most once a minute, with the number of failed
    looks since the last line; the task retries on, and pushes once the node answers. Before,
    every failed look wrote a line (one every 30 s at the backoff's cap, for as long as the
    node stayed down)."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    rounds = Rounds(make_config())
    pusher = rig.pusher(urls=(proxy.url,), interval_s=0.01)
    rounds.step()
    pusher.submit(rounds.step())
    with capture_logs() as logs:
        task = asyncio.create_task(pusher.run())
        try:
            await until(lambda: pusher.stats.transactions["confirmed"] == 1)
            proxy.mode = "error"
            pusher.submit(rounds.step(BTC_USD=1.02))
            requests = proxy.requests
            await until(lambda: proxy.requests >= requests + 4)
            assert [e["failures"] for e in logs if e["event"] == "chain unreachable"] == [1]
            rig.clock.advance(60_000)
            await until(lambda: sum(e["event"] == "chain unreachable" for e in logs) == 2)
            proxy.mode = "pass"
            await until(lambda: pusher.stats.transactions["confirmed"] == 2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await proxy.stop()
    lines = [e for e in logs if e["event"] == "chain unreachable"]
    assert [e["failures"] for e in lines][:1] == [1] and len(lines) == 2
    assert lines[1]["failures"] >= 4 and lines[1]["log_level"] == "warning"
    assert (await rig.stored("BTC/USD"))[3] == rounds.now


async def test_a_node_that_answers_null_at_start_is_waited_for_not_a_crash(rig: Rig) -> None:
    """A node whose answers to the start's requests are null (the chain id, then the nonce) is
    retried as an unreachable node is, no traceback, and the pusher pushes once it answers.
    `int(None, 16)` used to end the pusher's task with `on-chain push crashed`, for the life of
    the daemon (found pointing a daemon's push chain at an endpoint that answered every request
    with a null result). The line says the node answered (`chain answer unreadable;
    retrying`): it said `chain unreachable; retrying`, which sent an operator to the network."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    rounds = Rounds(make_config())
    pusher = rig.pusher(urls=(proxy.url,), interval_s=0.02)
    rounds.step()
    pusher.submit(rounds.step())
    # the chain id; then, with it answered, the contract's code and the mined nonce
    proxy.script = ["null_result", "pass", "pass", "null_result"]
    with capture_logs() as logs:
        task = asyncio.create_task(pusher.run())
        try:
            await until(lambda: pusher.stats.transactions["confirmed"] == 1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await proxy.stop()
    retried = [e for e in logs if e["event"] == "chain answer unreadable; retrying"]
    # Both null answers failed a start; the second, within the minute, is held in `failures`.
    assert [(e["log_level"], e["failures"]) for e in retried] == [("warning", 1)]
    assert pusher.stats.bad_answers == 2
    assert "eth_chainId" in retried[0]["error"] and "None" in retried[0]["error"]
    assert not any(e["event"] == "chain unreachable; retrying" for e in logs)
    assert not any("exc_info" in e for e in logs)


@pytest.mark.parametrize(
    ("answer", "quoted"),
    [
        ("<html>" + "x" * 300 + "</html>", "'<html>" + "x" * 54 + "'... (313 characters)"),
        (
            list(range(100)),
            "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 1... (390 characters)",
        ),
    ],
    ids=["error_page", "list"],
)
async def test_a_long_answer_the_pusher_cannot_read_is_quoted_cut_with_its_length(
    rig: Rig, answer: Any, quoted: str
) -> None:
    """A node that answers the contract's code with a long string that is no code (an error
    page) or with a long list: the retry's line quotes it as every message quotes an outside
    value (errors.shown), its first 60 characters and its length. Before, it was cut at 40
    characters with no sign that anything was left out."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    rounds = Rounds(make_config())
    pusher = rig.pusher(urls=(proxy.url,), interval_s=0.02)
    rounds.step()
    pusher.submit(rounds.step())
    told: list[Any] = []

    def garble_once(request: Any, reply: Any) -> Any:
        if request.get("method") == "eth_getCode" and not told:
            told.append(reply["result"])
            reply["result"] = answer
        return reply

    proxy.rewrite = garble_once
    with capture_logs() as logs:
        task = asyncio.create_task(pusher.run())
        try:
            await until(lambda: pusher.stats.transactions["confirmed"] == 1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await proxy.stop()
    (retried,) = [e for e in logs if e["event"] == "chain answer unreadable; retrying"]
    assert retried["error"] == f"eth_getCode: {quoted} is not code"
    assert pusher.stats.bad_answers == 1


async def test_a_start_that_fails_again_and_again_is_logged_once_a_minute_with_the_count(
    rig: Rig,
) -> None:
    """A node that fails every start (a null for the chain id, each counted in `bad_answers`)
    is logged at the first failed start and then at most once a minute, with the number of
    failed starts since the last line (`failures`), as a failed step is; the pusher pushes once
    the node answers. Before, every start wrote a line: seven in the first minute of its
    backoff, then one every 30 s for as long as the node stayed down."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    rounds = Rounds(make_config())
    pusher = rig.pusher(urls=(proxy.url,), interval_s=0.02)
    rounds.step()
    pusher.submit(rounds.step())
    proxy.mode = "null_result"

    def lines() -> list[dict[str, Any]]:
        return [e for e in logs if e["event"] == "chain answer unreadable; retrying"]

    with capture_logs() as logs:
        task = asyncio.create_task(pusher.run())
        try:
            await until(lambda: pusher.stats.bad_answers >= 2)  # two starts, 0.5 s apart
            assert [e["failures"] for e in lines()] == [1]
            rig.clock.advance(60_000)
            await until(lambda: len(lines()) == 2)  # the next failed start, a second later
            proxy.mode = "pass"
            await until(lambda: pusher.stats.transactions["confirmed"] == 1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await proxy.stop()
    first, second = lines()
    # Every failed start is in a line's count: the first alone, the second with those held.
    assert (first["failures"], second["failures"]) == (1, pusher.stats.bad_answers - 1)
    assert second["failures"] >= 2 and second["log_level"] == "warning"
    assert "eth_chainId" in second["error"] and second["delay_s"] > first["delay_s"]
    assert (await rig.stored("BTC/USD"))[3] == rounds.now


async def test_a_null_answer_to_the_contract_check_at_start_is_waited_for_not_the_end(
    rig: Rig,
) -> None:
    """A node that answers the start's `eth_getCode` with a null (no answer, said wrongly)
    has not said that the address holds no code: the start is retried (`chain answer
    unreadable; retrying`, counted in `bad_answers`) and the pusher pushes once the node
    answers. The null was taken for an empty account: a PushError, which ends the pusher's task
    for the life of the daemon (found by a seeded fault schedule that restarted the pusher
    behind a proxy answering nulls)."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    rounds = Rounds(make_config())
    pusher = rig.pusher(urls=(proxy.url,), interval_s=0.02)
    rounds.step()
    pusher.submit(rounds.step())
    proxy.script = ["pass", "null_result"]  # the chain id, then the contract's code
    with capture_logs() as logs:
        try:
            await run_until(pusher, lambda: pusher.stats.transactions["confirmed"] == 1)
        finally:
            await proxy.stop()
    retried = [e for e in logs if e["event"] == "chain answer unreadable; retrying"]
    assert len(retried) == 1 and "eth_getCode" in retried[0]["error"]
    assert pusher.stats.bad_answers == 1


@pytest.mark.parametrize("method", ["eth_getBlockByNumber", "eth_getTransactionCount"])
async def test_a_read_the_node_refuses_on_its_merits_is_counted_and_retried(
    rig: Rig, method: str
) -> None:
    """A node that refuses one of the pusher's reads as the request's own fault (a JSON-RPC
    error, here invalid params for a step's `eth_getBlockByNumber` or the start's
    `eth_getTransactionCount`) is retried like a bad answer, and counted in
    `oracled_push_refused_requests_total`: before, only a log line said so, and the RPC
    families do not count it against the endpoint, which answered. Logged as a refusal at
    start-up too (it read "chain unreachable" there, which sends an operator to the network)."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    rounds = Rounds(make_config())
    pusher = rig.pusher(urls=(proxy.url,), interval_s=0.02)
    rounds.step()
    pusher.submit(rounds.step())
    proxy.refuse[method] = [{"code": -32602, "message": "invalid argument 0"}]
    with capture_logs() as logs:
        try:
            await run_until(pusher, lambda: pusher.stats.transactions["confirmed"] == 1)
        finally:
            await proxy.stop()
    assert pusher.stats.refused == 1 and pusher.stats.bad_answers == 0
    said = [e for e in logs if "invalid argument 0" in e.get("error", "")]
    assert len(said) == 1
    assert said[0]["event"] == "request refused by the node; retrying"
    counted = [
        s.value for s in exposed(pusher.stats) if s.name == "oracled_push_refused_requests_total"
    ]
    assert counted == [1.0]


@pytest.mark.usefixtures("daemon_recursion_limit")
@pytest.mark.parametrize("mode", ["wrong_id", "no_result", "huge", "deep"])
async def test_a_raw_send_answer_that_is_not_for_this_request_goes_to_the_next_endpoint(
    rig: Rig, mode: str
) -> None:
    """An endpoint that answers eth_sendRawTransaction with a JSON-RPC answer to another
    request id, or with no result, has not taken the transaction: the pusher sends it to the
    next endpoint and waits for that hash, never for one the endpoint made up. So with an
    answer over the RPC client's 16 MiB cap (before, read whole and its made-up 20 MiB
    "hash" waited for) or one nested past the decoder's depth (before, a RecursionError out
    of the step, which crashed the pusher task)."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        pusher = await first_push(rig, Rounds(make_config()), urls=(proxy.url, rig.url))
        proxy.mode = mode
        await pusher.step()
        inflight = pusher._inflight
        assert inflight is not None
        (tx_hash, _) = inflight.sent[0]
        assert await rig.chain.rpc("eth_getTransactionByHash", [tx_hash]) is not None
        await settle(pusher)
        assert pusher.stats.transactions["confirmed"] == 1
    finally:
        await proxy.stop()


# -- oracled_push_up: the one lasting sign that the pusher stopped --------------------------------


def exposed(stats: PushStats | None, chains: tuple[ChainStats, ...] = ()) -> list[Any]:
    """Every sample a real registry exposes with these push stats and chain readers."""
    rounds = Rounds(make_config())
    metrics = Metrics(
        MetricsInputs(
            core=rounds.core,
            latest=lambda: None,
            source_stats={},
            now_ms=lambda: rounds.now,
            stream_subscribers=lambda: 0,
            stream_dropped=dict,
            chains=lambda: chains,
            push=stats,
        )
    )
    body, _ = metrics.render()
    return [s for family in text_string_to_metric_families(body.decode()) for s in family.samples]


def push_up(stats: PushStats | None) -> float | None:
    """oracled_push_up as a real registry exposes it for these stats (None: no such series)."""
    values = [s.value for s in exposed(stats) if s.name == "oracled_push_up"]
    assert len(values) <= 1
    return values[0] if values else None


async def test_push_up_is_1_while_the_task_runs_0_while_the_node_is_unreachable_at_start_and_after(
    rig: Rig,
) -> None:
    """The gauge reads 0 while the start waits for an unreachable node (nothing can be pushed),
    1 once the start's checks pass and the task pushes, and 0 again once the task has ended."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    rounds = Rounds(make_config())
    pusher = rig.pusher(urls=(proxy.url,), interval_s=0.02)
    rounds.step()
    pusher.submit(rounds.step())
    proxy.mode = "error"
    with capture_logs() as logs:
        task = asyncio.create_task(pusher.run())
        try:
            await until(lambda: any(e["event"] == "chain unreachable; retrying" for e in logs))
            assert push_up(pusher.stats) == 0.0
            proxy.mode = "pass"
            await until(lambda: pusher.stats.transactions["confirmed"] == 1)
            assert push_up(pusher.stats) == 1.0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await proxy.stop()
    assert push_up(pusher.stats) == 0.0


async def test_a_pusher_stopped_at_start_for_want_of_a_contract_reads_push_up_0(rig: Rig) -> None:
    """The task as the service runs it, pointed at an address without code, ends with PushError
    (one log line in the service) and the gauge says so for as long as the daemon runs; with
    push off there is no series at all, so no alert can mistake 'off' for 'stopped'."""
    pusher = rig.pusher(contract=OTHER)
    task = asyncio.create_task(pusher.run())
    with pytest.raises(PushError, match="no contract at"):
        async with asyncio.timeout(10):
            await task
    assert push_up(pusher.stats) == 0.0
    assert push_up(None) is None


async def deploy_old_feed(rig: Rig, version: int | None) -> str:
    """An OracledFeed as version 1 shipped it (no `VERSION`), or a contract whose `VERSION()`
    answers `version`, with the rig's key as its pusher where it has one."""
    if version is None:
        return await rig.chain.deploy("OracledFeedV1", ["address"], [rig.key.address])
    return await rig.chain.deploy("TestFeedVersion", ["uint8"], [version])


@pytest.mark.parametrize(
    ("version", "said"), [(None, "no VERSION (version 1)"), (1, "VERSION 1"), (3, "VERSION 3")]
)
async def test_a_contract_that_is_not_version_2_stops_the_pusher_at_start_naming_what_it_found(
    rig: Rig, version: int | None, said: str
) -> None:
    """The task as the service runs it, pointed at a version 1 OracledFeed (no `VERSION`: the
    call reverts) or at a contract whose `VERSION` is 1 or 3, ends at start with a PushError
    that names the address, the chain and what it found: nothing is sent, no answer is counted
    bad, `push_up` reads 0. Before, a version 1 contract passed the start, and its `latestMany`
    (four fields a market) was a bad answer at every look, retried for ever."""
    old = await deploy_old_feed(rig, version)
    pusher = rig.pusher(contract=old, interval_s=0.02)
    rounds = Rounds(make_config())
    rounds.step()
    pusher.submit(rounds.step())
    task = asyncio.create_task(pusher.run())
    with pytest.raises(PushError) as raised:
        async with asyncio.timeout(10):
            await task
    assert str(raised.value) == (
        f"the contract at {old} on chain local (31337) is not OracledFeed version 2: it has {said}"
    )
    assert pusher.stats.bad_answers == 0 and pusher.stats.restarts == 0
    assert push_up(pusher.stats) == 0.0
    assert await rig.nonce("pending") == 0


@pytest.mark.parametrize("answer", ["0x" + "00" * 31, "0x" + "zz" * 32, None])
async def test_a_version_answer_that_is_no_word_is_waited_for_not_the_end(
    rig: Rig, answer: str | None
) -> None:
    """A node that answers the start's `VERSION()` call with a short word, a word that is not
    hex or a null has said nothing about the contract: the start is retried (`chain answer
    unreadable; retrying`, counted in `bad_answers`) and the pusher pushes once the node
    answers, where a PushError would end pushing for the life of the daemon."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    rounds = Rounds(make_config())
    pusher = rig.pusher(urls=(proxy.url,), interval_s=0.02)
    rounds.step()
    pusher.submit(rounds.step())
    version_call = "0x" + selector("VERSION()").hex()
    left = [answer]

    def first_version_answered(sent: Any, reply: Any) -> Any:
        calls = isinstance(sent, dict) and sent["method"] == "eth_call"
        if calls and left and sent["params"][0]["data"] == version_call:
            reply["result"] = left.pop()
        return reply

    proxy.rewrite = first_version_answered
    with capture_logs() as logs:
        try:
            await run_until(pusher, lambda: pusher.stats.transactions["confirmed"] == 1)
        finally:
            await proxy.stop()
    retried = [e for e in logs if e["event"] == "chain answer unreadable; retrying"]
    assert len(retried) == 1 and "VERSION()" in retried[0]["error"]
    assert pusher.stats.bad_answers == 1


@pytest.mark.parametrize("method", list(MANGLED))
async def test_a_node_answer_the_pusher_cannot_read_is_a_counted_error_it_outlives(
    rig: Rig, method: str
) -> None:
    """A node that answers a step's request in a form no node should (a base fee, gas estimate
    or nonce that is not a hex quantity, a receipt without a status) is logged as an error,
    counted in `bad_answers`, and retried after a backoff; the task goes on and pushes once the
    answers are right again. Each of these once ended the task with an uncaught ValueError,
    TypeError or KeyError: on-chain pushing stopped for the life of the daemon (found reading
    `step()` after the null-at-start fix)."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    rounds = Rounds(make_config())
    pusher = rig.pusher(urls=(proxy.url,), interval_s=0.02)
    rounds.step()
    pusher.submit(rounds.step())
    with capture_logs() as logs:
        task = asyncio.create_task(pusher.run())
        try:
            await until(lambda: pusher.stats.transactions["confirmed"] == 1)
            proxy.mode = "pass"
            proxy.script = []
            original = dict(MANGLED)
            MANGLED.clear()
            MANGLED[method] = original[method]
            try:
                proxy.mode = "mangle"
                pusher.submit(rounds.step(BTC_USD=1.02))
                await until(lambda: task.done() or pusher.stats.bad_answers >= 2)
                assert not task.done()
                proxy.mode = "pass"
                await until(lambda: pusher.stats.transactions["confirmed"] == 2)
            finally:
                MANGLED.clear()
                MANGLED.update(original)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await proxy.stop()
    bad = [e for e in logs if e["event"] == "bad answer from the node; retrying"]
    assert bad and all(e["log_level"] == "error" and method in e["error"] for e in bad)
    assert not any("exc_info" in e for e in logs)
    assert (await rig.stored("BTC/USD"))[3] == rounds.now


async def test_a_crashed_pusher_is_started_again_counted_and_logged_with_its_traceback(
    rig: Rig,
) -> None:
    """A bug in a step (here a round whose arrays do not match its markets, which `_due`
    cannot index) is logged with its traceback, counted in `restarts`, and the pusher starts
    again after a backoff, from the chain's state (nonce, stored prices), with
    `oracled_push_up` 0 meanwhile; it then pushes the next good round. The crash used to end
    the task for the life of the daemon."""
    rounds = Rounds(make_config())
    pusher = rig.pusher(interval_s=0.02)
    pusher.restart_base_s = 0.05
    rounds.step()
    pusher.submit(rounds.step())
    with capture_logs() as logs:
        task = asyncio.create_task(pusher.run())
        try:
            await until(lambda: pusher.stats.transactions["confirmed"] == 1)
            good = rounds.step(BTC_USD=1.02)
            pusher.submit(dataclasses.replace(good, status=good.status[:1]))
            await until(lambda: task.done() or pusher.stats.restarts == 1)
            assert not task.done()
            pusher.submit(good)
            await until(lambda: pusher.stats.transactions["confirmed"] == 2)
            assert push_up(pusher.stats) == 1.0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    crashed = [e for e in logs if e["event"] == "on-chain push crashed; restarting"]
    assert len(crashed) == 1 and crashed[0]["log_level"] == "error"
    assert "exc_info" in crashed[0]
    assert (await rig.stored("BTC/USD"))[3] == rounds.now


async def test_a_crash_after_a_minute_of_pushing_starts_the_backoff_over_as_logged(
    rig: Rig,
) -> None:
    """A pusher that ran over a minute (the daemon's clock) before it crashed waits the base
    delay again, and its crash line says that delay. Before, the line said the doubled delay
    that the reset then replaced, and the minute was read from the machine's clock, not the
    pusher's."""
    rounds = Rounds(make_config())
    pusher = rig.pusher(interval_s=0.02)
    pusher.restart_base_s = 0.05
    rounds.step()
    pusher.submit(rounds.step())
    with capture_logs() as logs:
        task = asyncio.create_task(pusher.run())
        try:
            await until(lambda: pusher.stats.transactions["confirmed"] == 1)
            good = rounds.step(BTC_USD=1.02)
            bad = dataclasses.replace(good, status=good.status[:1])
            pusher.submit(bad)
            await until(lambda: task.done() or pusher.stats.restarts == 1)
            await until(lambda: task.done() or pusher.stats.up)  # started again
            rig.clock.advance(61_000)
            pusher.submit(bad)
            await until(lambda: task.done() or pusher.stats.restarts == 2)
            assert not task.done()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    crashed = [e for e in logs if e["event"] == "on-chain push crashed; restarting"]
    assert [e["delay_s"] for e in crashed] == [0.05, 0.05]


async def test_a_push_a_reorganisation_took_off_the_chain_is_pushed_again(rig: Rig) -> None:
    """A reorganisation replaces the block of a confirmed push and its transaction is gone
    (anvil_reorg): the next push, at the nonce after it, waits behind a gap and is never mined
    (it was replaced every `replace_after_s` up to the cap, then waited for forever). At its
    replacement time the pusher sees the chain's count below its nonce, reads the nonce and
    the stored prices again and pushes from the free nonce: every market the reorganisation
    took off goes on again."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds)
    await settle(pusher)
    assert await rig.nonce() == 1
    await rig.chain.reorg(1)
    assert await rig.nonce() == 0
    assert (await rig.stored("BTC/USD"))[3] == 0  # the push went with its block
    rounds.step(ETH_USD=1.02)
    pusher.submit(rounds.step())
    await pusher.step()  # ETH alone: the pusher believes the others are on chain
    assert pusher._inflight is not None and pusher._inflight.nonce == 1
    rig.clock.advance(4_000)
    await pusher.step()
    assert await rig.nonce() == 0  # behind the gap: not mined
    rig.clock.advance(1_000)
    with capture_logs() as logs:
        await pusher.step()  # replacement time: the gap is seen
        await settle(pusher)
    assert "push waits behind a nonce the chain lost; pushing again from there" in [
        e["event"] for e in logs if e["log_level"] == "warning"
    ]
    assert pusher.stats.transactions["replaced"] == 0  # nothing was sent behind the gap again
    await rig.chain.rpc("evm_mine")  # the push left behind the gap, now free to be mined
    assert await rig.nonce() == 2
    for market in ("BTC/USD", "ETH/USD", "SOL/USD"):
        assert (await rig.stored(market))[3] == rounds.now
    pusher.submit(rounds.step(BTC_USD=1.05))
    await pusher.step()  # refused: the left-behind push took that nonce; read again
    await settle(pusher)
    assert (await rig.stored("BTC/USD"))[3] == rounds.now


async def test_a_reorganisation_that_takes_off_a_quiet_markets_push_is_seen_blocks_later(
    rig: Rig,
) -> None:
    """The first push is confirmed, then a reorganisation replaces its block (anvil_reorg) and
    nothing moves, so nothing would be pushed before the heartbeat. Once the push's block is
    `_RECHECK_DEPTH` blocks deep the pusher finds its receipt gone, reads the nonce and the
    stored prices again, and pushes every market again from the chain's nonce. Before, the
    contract held nothing for these markets until their heartbeat (an hour by default)."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(pusher)
    await rig.chain.reorg(1)
    assert await rig.nonce() == 0 and await rig.stored("BTC/USD") == (0, 0, 0, 0)
    pusher.submit(rounds.step())
    await pusher.step()  # not deep yet: nothing due, nothing sent
    assert pusher.stats.transactions["sent"] == 1 and not pusher.stats.pending
    await rig.chain.rpc("anvil_mine", [hex(_RECHECK_DEPTH - 1)])
    await pusher.step()
    assert pusher.stats.transactions["sent"] == 1
    await rig.chain.rpc("evm_mine")
    with capture_logs() as logs:
        for _ in range(3):
            pusher.submit(rounds.step())
            await settle(pusher)
    assert [e["nonce"] for e in logs if e["event"].startswith("a reorganisation took")] == [0]
    assert pusher.stats.transactions["sent"] == 2 and await rig.nonce() == 1
    for market in ("BTC/USD", "ETH/USD", "SOL/USD"):
        assert (await rig.stored(market))[3] > 0


async def test_a_confirmed_push_still_on_chain_when_deep_is_not_pushed_again(rig: Rig) -> None:
    """No reorganisation: once the push is `_RECHECK_DEPTH` blocks deep its receipt is there,
    the pusher stops looking for it and sends nothing; later looks ask the node nothing."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        rounds = Rounds(make_config())
        pusher = await first_push(rig, rounds, urls=(proxy.url,), heartbeat_s=3600.0)
        await settle(pusher)
        await rig.chain.rpc("anvil_mine", [hex(_RECHECK_DEPTH)])
        with capture_logs() as logs:
            pusher.submit(rounds.step())
            await pusher.step()
        assert not [e for e in logs if e["event"].startswith("a reorganisation took")]
        asked = proxy.requests
        pusher.submit(rounds.step())
        await pusher.step()
        assert proxy.requests == asked
        assert pusher.stats.transactions["sent"] == 1 and await rig.nonce() == 1
    finally:
        await proxy.stop()


async def test_a_configured_recheck_depth_sees_a_reorganisation_that_many_blocks_deep(
    rig: Rig,
) -> None:
    """`recheck_depth_blocks = 2` (an operator's choice for a chain that reorganises less
    deep): the push a reorganisation took off (anvil_reorg) is not looked for while its block
    is 1 deep, and is found gone once it is 2 deep, ten blocks before the default depth would
    look: every market is pushed again from the chain's nonce."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds, heartbeat_s=3600.0, recheck_depth_blocks=2)
    await settle(pusher)
    await rig.chain.reorg(1)
    assert await rig.nonce() == 0 and await rig.stored("BTC/USD") == (0, 0, 0, 0)
    await rig.chain.rpc("evm_mine")
    with capture_logs() as logs:
        pusher.submit(rounds.step())
        await pusher.step()  # 1 deep: not looked for yet
    assert not [e for e in logs if e["event"].startswith("a reorganisation took")]
    assert pusher.stats.transactions["sent"] == 1
    await rig.chain.rpc("evm_mine")
    with capture_logs() as logs:
        for _ in range(3):
            pusher.submit(rounds.step())
            await settle(pusher)
    assert [e["nonce"] for e in logs if e["event"].startswith("a reorganisation took")] == [0]
    assert pusher.stats.transactions["sent"] == 2 and await rig.nonce() == 1
    for market in ("BTC/USD", "ETH/USD", "SOL/USD"):
        assert (await rig.stored(market))[3] > 0


async def test_a_reloaded_recheck_depth_applies_to_the_push_already_held(rig: Rig) -> None:
    """The default depth (12) does not look for a push 3 blocks deep that a reorganisation
    took off; a reload to `recheck_depth_blocks = 3` (`reconfigure`, as the service hands it
    a reloaded `[push]`) makes the next look find it gone, for the push confirmed before the
    reload. The reload takes the two keys it applies and no other: the interval, which only a
    restart changes, stays."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds, heartbeat_s=3600.0)
    await settle(pusher)
    await rig.chain.reorg(1)
    await rig.chain.rpc("anvil_mine", [hex(3)])
    with capture_logs() as logs:
        pusher.submit(rounds.step())
        await pusher.step()
    assert not [e for e in logs if e["event"].startswith("a reorganisation took")]
    assert pusher.stats.transactions["sent"] == 1
    reloaded = pusher.cfg.model_copy(
        update={"recheck_depth_blocks": 3, "grow_batch_after": 4, "interval_s": 30.0}
    )
    pusher.reconfigure(reloaded)
    assert (pusher.cfg.recheck_depth_blocks, pusher.cfg.grow_batch_after) == (3, 4)
    assert pusher.cfg.interval_s == 1.0
    with capture_logs() as logs:
        for _ in range(3):
            pusher.submit(rounds.step())
            await settle(pusher)
    assert [e["nonce"] for e in logs if e["event"].startswith("a reorganisation took")] == [0]
    assert pusher.stats.transactions["sent"] == 2 and await rig.nonce() == 1


def _daemon_toml(
    rig: Rig,
    venue: BinanceSim,
    key_file: Path,
    push: str,
    second: BinanceSim | None = None,
    symbols: tuple[str, ...] = ("BTC/USDT",),
) -> str:
    """A daemon quoting BTC/USDT (or each of `symbols`) from `venue` and pushing it to the rig's
    contract; with a `second` venue too, each is active (one venue alone is `thin`: degraded,
    never pushed)."""
    venues = [("venue", venue)] + ([("second", second)] if second is not None else [])
    tables = "".join(
        f'[sources.{sid}]\ntype = "binance"\nws_url = "{v.ws_url}"\nrest_url = "{v.rest_url}"\n\n'
        for sid, v in venues
    )
    markets = "".join(
        "[[markets]]\n"
        f'symbol = "{symbol}"\n'
        "min_sources = 1\n"
        "sources = ["
        + ", ".join(f'{{ source = "{sid}", pair = "{symbol}" }}' for sid, _ in venues)
        + "]\n\n"
        for symbol in symbols
    )
    return f"""
[oracle]
round_interval_ms = 100

[api]
listen = "127.0.0.1:0"
admin_token_env = "ORACLED_KNOBS_TEST_NO_TOKEN"

[chains.local]
chain_id = 31337
rpc_urls = ["{rig.url}"]

[push]
enabled = true
chain = "local"
contract = "{rig.feed}"
key_file = "{key_file}"
{push}

{tables}{markets}"""


async def test_a_daemon_reload_hands_the_running_pusher_its_recheck_depth_and_regrowth(
    rig: Rig, tmp_path: Path
) -> None:
    """A running daemon pushing to anvil, whose file is reloaded with a new
    `push.recheck_depth_blocks` and `push.grow_batch_after`: the reload names both as applied,
    asks for no restart, and the running pusher (not a new one) reads them from then on; a
    later reload that also changes `push.interval_s` reports `[push]` as needing a restart and
    leaves the running interval alone."""
    key_file = tmp_path / "push.key"
    key_file.write_text(rig.key.hex())
    key_file.chmod(0o600)
    path = tmp_path / "oracled.toml"
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0, volatility=0.0) as venue:
        path.write_text(_daemon_toml(rig, venue, key_file, ""))
        service = Service(load_config(path), config_path=path)
        task = asyncio.create_task(service.run())
        try:
            async with asyncio.timeout(30):  # eth-account's import, the node's answers
                while service.push_stats is None or not service.push_stats.up:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # the pusher's counters have no event to wait on
            pusher = service.pusher
            assert pusher is not None
            assert (pusher.cfg.recheck_depth_blocks, pusher.cfg.grow_batch_after) == (12, 10)
            path.write_text(
                _daemon_toml(rig, venue, key_file, "recheck_depth_blocks = 2\ngrow_batch_after = 3")
            )
            changes = await service.reload("test")
            assert changes["needs_restart"] == []
            assert changes["settings_changed"] == [
                "push.recheck_depth_blocks",
                "push.grow_batch_after",
            ]
            assert service.pusher is pusher
            assert (pusher.cfg.recheck_depth_blocks, pusher.cfg.grow_batch_after) == (2, 3)
            path.write_text(
                _daemon_toml(rig, venue, key_file, "recheck_depth_blocks = 5\ninterval_s = 9.0")
            )
            changes = await service.reload("test")
            assert changes["needs_restart"] == ["push"]
            assert changes["settings_changed"] == [
                "push.recheck_depth_blocks",
                "push.grow_batch_after",
            ]
            assert (pusher.cfg.recheck_depth_blocks, pusher.cfg.grow_batch_after) == (5, 10)
            assert pusher.cfg.interval_s == 1.0 and service.cfg.push.interval_s == 1.0
        finally:
            service.stop()
            await task


async def test_a_daemon_reload_that_removes_a_market_pauses_it_on_chain(
    rig: Rig, tmp_path: Path
) -> None:
    """A running daemon pushes BTC/USDT and ETH/USDT (two venues each); its file is reloaded
    without ETH/USDT. The reload names it removed, and the running pusher puts ETH's pause
    entry on chain: `latest` refuses it, `latestFeed` keeps its last price, BTC goes on
    answering. Before, ETH's last price stayed live on chain for ever."""
    key_file = tmp_path / "push.key"
    key_file.write_text(rig.key.hex())
    key_file.chmod(0o600)
    path = tmp_path / "oracled.toml"
    quotes = {"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0}
    sims = [BinanceSim(quotes, rate_hz=20.0, volatility=0.0) for _ in range(2)]
    both = ("BTC/USDT", "ETH/USDT")
    async with sims[0] as venue, sims[1] as second:
        path.write_text(_daemon_toml(rig, venue, key_file, "interval_s = 0.1", second, both))
        service = Service(load_config(path), config_path=path)
        task = asyncio.create_task(service.run())
        try:
            async with asyncio.timeout(30):  # eth-account's import, the node's answers
                while (await rig.stored("ETH/USDT"))[0] == 0:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # the chain has no event to wait on
            eth = await rig.stored("ETH/USDT")
            path.write_text(
                _daemon_toml(rig, venue, key_file, "interval_s = 0.1", second, both[:1])
            )
            changes = await service.reload("test")
            assert changes["markets_removed"] == ["ETH/USDT"]
            async with asyncio.timeout(30):
                while not (await rig.feed_of("ETH/USDT"))[4]:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            paused = await rig.feed_of("ETH/USDT")
            assert paused[:2] == eth[:2] and paused[3] > eth[3]
            assert await rig.refused("ETH/USDT") == paused[3]
            assert (await rig.stored("BTC/USDT"))[0] > 0
        finally:
            service.stop()
            await task


async def test_a_daemon_pushing_to_a_version_1_contract_says_so_once_and_prices_on(
    rig: Rig, tmp_path: Path
) -> None:
    """A daemon whose `push.contract` is a version 1 OracledFeed logs one error, `on-chain push
    stopped`, naming the chain, the contract and the version found, and reads `push_up` 0;
    nothing is sent, and its rounds go on being published meanwhile."""
    old = await deploy_old_feed(rig, None)
    key_file = tmp_path / "push.key"
    key_file.write_text(rig.key.hex())
    key_file.chmod(0o600)
    path = tmp_path / "oracled.toml"
    quotes = {"BTCUSDT": 50_000.0}
    old_rig = Rig(rig.chain, old, rig.key, rig.url)
    async with BinanceSim(quotes, rate_hz=20.0, volatility=0.0) as venue:
        path.write_text(_daemon_toml(old_rig, venue, key_file, "interval_s = 0.1"))
        service = Service(load_config(path), config_path=path)
        with capture_logs() as logs:
            task = asyncio.create_task(service.run())
            try:
                async with asyncio.timeout(30):  # eth-account's import, the node's answers
                    while not any(e["event"] == "on-chain push stopped" for e in logs):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)  # the log has no event to wait on
                    published = service.rounds_published
                    while service.rounds_published < published + 5:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            finally:
                service.stop()
                await task
    stopped = [e for e in logs if e["event"] == "on-chain push stopped"]
    assert len(stopped) == 1 and stopped[0]["log_level"] == "error"
    assert (stopped[0]["chain"], stopped[0]["contract"]) == ("local", old)
    assert "no VERSION (version 1)" in stopped[0]["error"] and old in stopped[0]["error"]
    assert push_up(service.push_stats) == 0.0
    assert await rig.nonce("pending") == 0


_CHAINLINK_SOURCE = """
[sources.cl]
type = "chainlink"
chain = "local"
feeds = {{ "ETH/USD" = {{ address = "{proxy}", heartbeat_s = 3600 }} }}

[[markets]]
symbol = "ETH/USD"
min_sources = 1
sources = [{{ source = "cl", pair = "ETH/USD" }}]
"""


async def test_a_daemon_that_only_pushes_to_a_chain_reads_it_only_once_a_source_does(
    rig: Rig, tmp_path: Path
) -> None:
    """A daemon whose only use of its chain is the pusher starts no reader for it: no `chain
    enabled` line, nothing logged by the chain's reader (on this node, which has no Multicall3,
    every poll of a reader was a `read failed` warning), no reader series in /metrics, while the
    pusher pushes and exposes its own. A reload that adds a Chainlink source on that chain starts
    the reader then, once, and the source quotes through it. Before, every chain with an RPC URL
    got a reader at start, whether anything was to be read from it or not."""
    key_file = tmp_path / "push.key"
    key_file.write_text(rig.key.hex())
    key_file.chmod(0o600)
    path = tmp_path / "oracled.toml"
    sims = [BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0, volatility=0.0) for _ in range(2)]
    async with sims[0] as venue, sims[1] as second:
        toml = _daemon_toml(rig, venue, key_file, "interval_s = 0.1", second)
        path.write_text(toml)
        with capture_logs() as logs:
            service = Service(load_config(path), config_path=path)
            task = asyncio.create_task(service.run())
            try:
                async with asyncio.timeout(30):  # eth-account's import, the node's answers
                    while (await rig.stored("BTC/USDT"))[0] == 0:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)  # the chain has no event to wait on
                assert service.chains is not None and service.chains.readers == {}
                samples = [
                    s
                    for family in text_string_to_metric_families(
                        service.metrics.render()[0].decode()
                    )
                    for s in family.samples
                ]
                clients = {s.labels["client"] for s in samples if "client" in s.labels}
                assert clients == {"pusher"}
                assert not [s for s in samples if s.name == "oracled_chain_head_block"]
                pushing = list(logs)
                await rig.chain.install_multicall3()
                agg = await rig.chain.deploy(
                    "MockV3Aggregator", ["uint8", "int256"], [8, 3000_00000000]
                )
                proxy = await rig.chain.deploy("TestAggregatorProxy", ["address"], [agg])
                path.write_text(toml + _CHAINLINK_SOURCE.format(proxy=proxy))
                changes = await service.reload("test")
                assert changes["sources_restarted"] == ["cl"]
                async with asyncio.timeout(30):
                    while not service.source_stats["cl"].quotes:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)  # the source's counters have no event
                assert list(service.chains.readers) == ["local"]
            finally:
                service.stop()
                await task
    assert not [
        e for e in pushing if e.get("component") == "chain" or e["event"] == "chain enabled"
    ]
    assert [e["chain"] for e in logs if e["event"] == "chain enabled"] == ["local"]
    assert not [
        e
        for e in logs
        if e["event"] == "source not started: its chain is read from the next restart"
    ]
    assert service.push_stats is not None and service.push_stats.transactions["confirmed"] >= 1


async def test_a_push_left_behind_a_lost_nonce_never_lands_a_price_paused_since(
    rig: Rig,
) -> None:
    """A reorganisation took the first push off the chain; a 2 % move of BTC is then pushed
    behind the lost nonce, and BTC is paused by hand the round after. When the pusher sees
    the gap it replaces the push left behind it by one without BTC before it pushes again from
    the chain's count, so that filling the gap does not let BTC's price from before the pause
    land. Before, the left-behind push was abandoned as it was, and mined right after the push
    that filled the gap: BTC's price of the round before its pause went on chain."""
    rounds = Rounds(make_config())
    pusher = await first_push(rig, rounds)
    await settle(pusher)
    await rig.chain.reorg(1)
    assert await rig.nonce() == 0 and await rig.stored("BTC/USD") == (0, 0, 0, 0)
    rounds.step(BTC_USD=1.02)
    pusher.submit(rounds.step())
    await pusher.step()  # BTC alone: the pusher believes the others are on chain
    assert pusher._inflight is not None and pusher._inflight.batch.markets == ["BTC/USD"]
    assert pusher._inflight.nonce == 1
    pusher.submit(_btc_paused_round(rounds))
    rig.clock.advance(5_000)
    with capture_logs() as logs:
        await pusher.step()  # replacement time: the gap is seen
        await settle(pusher)
        await rig.chain.rpc("evm_mine")  # the push left behind the gap, now free to be mined
    assert "push waits behind a nonce the chain lost; pushing again from there" in [
        e["event"] for e in logs
    ]
    assert await rig.stored("BTC/USD") == (0, 0, 0, 0)
    assert pusher.stats.transactions["replaced"] == 1
    assert await rig.nonce() == 2
    for market in ("ETH/USD", "SOL/USD"):
        assert (await rig.stored(market))[3] == rounds.now


async def test_an_estimate_over_the_gas_a_block_allows_lowers_the_batch_on_the_same_endpoint(
    rig: Rig,
) -> None:
    """The node refuses the gas estimate as needing more than it allows (geth's -32000 "gas
    required exceeds allowance", what a batch over the block's gas limit gets): the pusher
    sends fewer markets a transaction, from the next look, on the same endpoint; nothing is
    counted as an error and no other endpoint is asked. Before, the refusal was taken for a
    failing node: the estimate went to the next URL (and with none left, `chain unreachable`
    and a backoff, look after look)."""
    first = await RpcProxy(rig.url, rig.chain.session).start()
    second = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        rounds = Rounds(make_config())
        pusher = await first_push(rig, rounds, urls=(first.url, second.url))
        refusal = {"code": -32000, "message": "gas required exceeds allowance (30000000)"}
        first.refuse["eth_estimateGas"] = [refusal]
        with capture_logs() as logs:
            await pusher.step()
            assert pusher.stats.transactions == dict.fromkeys(pusher.stats.transactions, 0)
            for _ in range(5):
                await settle(pusher)
                if pusher.stats.updates == 3:
                    break
        assert pusher.stats.updates == 3 and pusher.stats.transactions["error"] == 0
        assert second.requests == 0 and not pusher.rpc.stats[0].by_kind
        assert [e["max_batch"] for e in logs if e["event"].startswith("push batch over")] == [1]
        assert [e["markets"] for e in logs if e["event"] == "push sent"] == [1, 1, 1]
        assert not any(e["event"] == "chain unreachable" for e in logs)
    finally:
        await first.stop()
        await second.stop()


async def test_a_lowered_batch_grows_back_after_confirmed_pushes_up_to_max_batch(
    rig: Rig,
) -> None:
    """`max_batch = 2`, every market due at every round (a 250 ms heartbeat). One estimate
    refused as over the node's allowance lowers the batch to one market; after `_GROW_AFTER`
    confirmed pushes it grows back to two, and never past the configured two however many
    more are confirmed. Before, it stayed at one market a transaction for the life of the
    process."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        rounds = Rounds(make_config())
        pusher = await first_push(rig, rounds, urls=(proxy.url,), heartbeat_s=0.25, max_batch=2)
        refusal = {"code": -32000, "message": "gas required exceeds allowance (30000000)"}
        proxy.refuse["eth_estimateGas"] = [refusal]
        with capture_logs() as logs:
            await pusher.step()
            for _ in range(3 * _GROW_AFTER):
                pusher.submit(rounds.step())
                await settle(pusher)
        lowered = [e["max_batch"] for e in logs if e["event"].startswith("push batch over")]
        grown = [e["max_batch"] for e in logs if e["event"].startswith("push batch grows")]
        assert lowered == [1] and grown == [2]
        sent = [e["markets"] for e in logs if e["event"] == "push sent"]
        assert sent[:_GROW_AFTER] == [1] * _GROW_AFTER
        assert sent == sorted(sent) and set(sent) == {1, 2}
        assert sent[-_GROW_AFTER:] == [2] * _GROW_AFTER
        assert len(sent) == 3 * _GROW_AFTER
    finally:
        await proxy.stop()


async def test_a_lowered_batch_grows_back_after_the_configured_count_of_pushes(
    rig: Rig,
) -> None:
    """`grow_batch_after = 3`: a batch lowered to one market by a refused estimate grows back
    to the configured two after 3 confirmed pushes, not the default 10."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        rounds = Rounds(make_config())
        pusher = await first_push(
            rig, rounds, urls=(proxy.url,), heartbeat_s=0.25, max_batch=2, grow_batch_after=3
        )
        refusal = {"code": -32000, "message": "gas required exceeds allowance (30000000)"}
        proxy.refuse["eth_estimateGas"] = [refusal]
        with capture_logs() as logs:
            await pusher.step()
            for _ in range(6):
                pusher.submit(rounds.step())
                await settle(pusher)
        lowered = [e["max_batch"] for e in logs if e["event"].startswith("push batch over")]
        grown = [e["max_batch"] for e in logs if e["event"].startswith("push batch grows")]
        assert lowered == [1] and grown == [2]
        sent = [e["markets"] for e in logs if e["event"] == "push sent"]
        assert sent == [1, 1, 1, 2, 2, 2]
    finally:
        await proxy.stop()


async def test_a_gas_estimate_no_batch_could_use_is_a_bad_answer_not_a_smaller_batch(
    rig: Rig,
) -> None:
    """The node answers one gas estimate of the first push (three markets) with a billion gas,
    over the block's 30M: no updateBatch of three markets can use that, so it is a counted bad
    answer, retried, and the push goes out whole. Before, the answer was taken as said: the
    batch was over the block's gas limit, `max_batch` fell to one market a transaction, and
    stayed there for the life of the process (a crash's restart kept it too): three
    transactions for three markets, a hundred for a hundred."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        rounds = Rounds(make_config())
        pusher = await first_push(rig, rounds, urls=(proxy.url,))
        lied: list[str] = []

        def lie_once(request: Any, answer: Any) -> Any:
            if request.get("method") == "eth_estimateGas" and not lied:
                lied.append(answer["result"])
                answer["result"] = hex(10**9)
            return answer

        proxy.rewrite = lie_once
        with capture_logs() as logs, pytest.raises(RpcUnavailable, match="eth_estimateGas"):
            await pusher.step()
        assert pusher.stats.bad_answers == 1 and lied
        await settle(pusher)
        assert pusher.stats.transactions["sent"] == 1 and pusher.stats.updates == 3
        assert not [e for e in logs if e["event"].startswith("push batch over")]
    finally:
        await proxy.stop()


async def test_a_send_refused_as_nonce_too_high_reads_the_nonce_again(rig: Rig) -> None:
    """A reorganisation took a confirmed push off the chain, so the pusher's next nonce is one
    past the chain's; a node that takes no nonce ahead of the pool's refuses the send as
    "nonce too high" (geth's words). The pusher counts the error, reads the nonce from the
    chain and pushes at it. Before, the refusal was logged as one it cannot fix and the same
    nonce was sent again at every look."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        rounds = Rounds(make_config())
        pusher = await first_push(rig, rounds, urls=(proxy.url,))
        await settle(pusher)
        await rig.chain.reorg(1)
        assert await rig.nonce() == 0 and pusher.stats.nonce == 1
        pusher.submit(rounds.step(ETH_USD=1.02))
        proxy.refuse["eth_sendRawTransaction"] = [{"code": -32000, "message": "nonce too high"}]
        with capture_logs() as logs:
            await pusher.step()
        assert pusher.stats.transactions["error"] == 1 and not pusher.stats.pending
        assert pusher.stats.nonce == 0
        assert "nonce out of step; re-read from the chain" in [e["event"] for e in logs]
        await settle(pusher)
        assert pusher.stats.transactions["confirmed"] == 2 and await rig.nonce() == 1
        assert (await rig.stored("ETH/USD"))[3] == rounds.now
    finally:
        await proxy.stop()


# -- the pusher's RPC endpoints, in the chain readers' RPC families as client="pusher" ----------


def rpc_series(stats: PushStats, *chains: ChainStats) -> dict[tuple[str, ...], float]:
    """The RPC families' samples, keyed by name and label values (the label names sorted)."""
    return {
        (s.name, *(f"{k}={v}" for k, v in sorted(s.labels.items()))): s.value
        for s in exposed(stats, chains)
        if s.name.startswith(("oracled_chain_rpc_", "oracled_chain_failovers"))
    }


@pytest.mark.parametrize(("mode", "kind"), [("error", "node"), ("rate_limited", "rate_limited")])
async def test_the_pushers_endpoint_failing_over_shows_in_the_rpc_families_as_client_pusher(
    rig: Rig, mode: str, kind: str
) -> None:
    """The pusher's first URL answers its first request with a server-side error, or with a
    provider's rate limit (which rests it): the pusher fails over to its second URL and
    pushes, and the exposition says so under `client="pusher"`: one error of that kind and
    one fail-over on the first endpoint, the requests on the second, its answer time. A reader
    of the same chain on the same URL keeps its own series (`client="reader"`), untouched.
    Before, none of this was exported: only the push counters showed, and they showed a
    confirmed push."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        rounds = Rounds(make_config())
        pusher = rig.pusher(urls=(proxy.url, rig.url))
        first, second = (ep.name for ep in pusher.rpc.stats)
        reader = ChainStats("local", endpoints=[EndpointStats(first, requests=7)])
        before = rpc_series(pusher.stats, reader)
        assert before[("oracled_chain_failovers_total", "chain=local", "client=pusher")] == 0
        assert before[("oracled_chain_rpc_requests_total", "chain=local", "client=pusher",
                       f"endpoint={first}")] == 0  # fmt: skip
        proxy.script = [mode]  # the start's first request (the chain id) fails there
        rounds.step()
        pusher.submit(rounds.step())
        await pusher.start()
        await settle(pusher)
        assert pusher.stats.transactions["confirmed"] == 1
        after = rpc_series(pusher.stats, reader)
        at = ("chain=local", "client=pusher")
        assert after[("oracled_chain_failovers_total", *at)] == 1
        assert after[("oracled_chain_rpc_errors_total", *at, f"endpoint={first}",
                      f"kind={kind}")] == 1  # fmt: skip
        assert after[("oracled_chain_rpc_requests_total", *at, f"endpoint={first}")] == 1
        assert after[("oracled_chain_rpc_requests_total", *at, f"endpoint={second}")] > 1
        assert after[("oracled_chain_rpc_latency_seconds", *at, f"endpoint={second}")] >= 0
        read = ("chain=local", "client=reader", f"endpoint={first}")
        assert after[("oracled_chain_rpc_requests_total", *read)] == 7
        assert after[("oracled_chain_rpc_errors_total", *read, f"kind={kind}")] == 0
        assert after[("oracled_chain_failovers_total", "chain=local", "client=reader")] == 0
        if mode == "rate_limited":
            assert pusher.rpc.rest_left_s(0) > 0  # rested, so sent nothing more since
    finally:
        await proxy.stop()


async def test_a_push_chain_whose_every_endpoint_is_rate_limited_counts_each_limit_as_the_pusher(
    rig: Rig,
) -> None:
    """With its only URL rate-limited the pusher's step fails before it sends anything: no
    push counter moves, which is why OracledChainRateLimited watches the pusher's client too.
    The exposition counts the limit on that endpoint under `client="pusher"` as often as it
    was met, and a rested endpoint is sent nothing: the requests and the limits stay equal
    (the alert's share is 1) while the pusher retries, on its clock, after each rest."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        rounds = Rounds(make_config())
        pusher = await first_push(rig, rounds, urls=(proxy.url,))
        (name,) = (ep.name for ep in pusher.rpc.stats)
        at = ("chain=local", "client=pusher", f"endpoint={name}")
        started = rpc_series(pusher.stats)[("oracled_chain_rpc_requests_total", *at)]
        proxy.mode = "limit_32005"
        for _ in range(3):
            with pytest.raises(RpcUnavailable):
                await pusher.step()
            with pytest.raises(RpcUnavailable, match="resting"):
                await pusher.step()  # within the rest: nothing sent
            rig.clock.advance(int(pusher.rpc.rest_left_s(0) * 1000) + 1)
        series = rpc_series(pusher.stats)
        assert series[("oracled_chain_rpc_errors_total", *at, "kind=rate_limited")] == 3
        assert series[("oracled_chain_rpc_requests_total", *at)] == started + 3
        assert pusher.stats.transactions == dict.fromkeys(pusher.stats.transactions, 0)
        # a single URL has nowhere to fail over to
        assert series[("oracled_chain_failovers_total", "chain=local", "client=pusher")] == 0
    finally:
        await proxy.stop()


async def test_a_raw_send_rate_limited_rests_its_endpoint_and_goes_to_the_next_counted(
    rig: Rig,
) -> None:
    """eth_sendRawTransaction goes through the pusher's RPC client: a provider's rate limit
    answered to it (JSON-RPC 429) is counted on that endpoint under `client="pusher"`, rests
    it, and the transaction goes to the next URL, which takes it; a refusal in other words on
    the first URL is still the verdict, not sent elsewhere. Before, the send went to each URL
    outside the client, uncounted, and the limit was taken as the node refusing the push
    (`push refused by the node`, counted `error`, nothing sent)."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        rounds = Rounds(make_config())
        pusher = await first_push(rig, rounds, urls=(proxy.url, rig.url))
        first, _ = (ep.name for ep in pusher.rpc.stats)
        proxy.script = ["pass", "pass", "rate_limited"]  # fees, gas estimate, then the raw send
        await settle(pusher)
        assert pusher.stats.transactions["confirmed"] == 1
        assert pusher.stats.transactions["error"] == 0
        assert proxy.methods.count("eth_sendRawTransaction") == 1
        at = ("chain=local", "client=pusher")
        series = rpc_series(pusher.stats)
        assert series[("oracled_chain_rpc_errors_total", *at, f"endpoint={first}",
                       "kind=rate_limited")] == 1  # fmt: skip
        assert series[("oracled_chain_failovers_total", *at)] == 1
        assert pusher.rpc.rest_left_s(0) > 0
        rig.clock.advance(120_000)  # the rest over; the next send is the proxy's again
        pusher.rpc.prefer(0)
        pusher.submit(rounds.step(BTC_USD=1.05))
        proxy.refuse["eth_sendRawTransaction"] = [{"code": -32000, "message": "pool is full"}]
        await pusher.step()
        assert pusher.stats.transactions["error"] == 1 and not pusher.stats.pending
        assert proxy.methods.count("eth_sendRawTransaction") == 2
        assert rpc_series(pusher.stats)[("oracled_chain_failovers_total", *at)] == 1
    finally:
        await proxy.stop()


# -- a seeded fault schedule: the node, the chain and the rounds misbehave together ----------------

FAULT_CAP_GWEI = 20
#: What the schedule does between two looks of the pusher, with its weight.
FAULTS = {
    "round": 6, "move": 6, "pause": 1, "resume": 2, "advance": 4, "automine_off": 1,
    "automine_on": 2, "mine": 3, "reorg": 1, "drop": 1, "rival": 0.5, "set_nonce": 0.5,
    "broke": 0.3, "funded": 2, "spike": 0.5, "calm": 2, "garble": 1, "slow": 0.7,
    "rotate": 0.3, "restore": 2, "restart": 0.7,
}  # fmt: skip
#: pushBatch's arguments, as the proxy reads them from a raw transaction.
BATCH_ARGS = ["uint64", "uint48", "bytes32[]", "int128[]", "int8[]", "bytes32[]"]
#: The proxy's answers of a node gone wrong, a few requests at a time.
GARBLED = ("error", "garbage", "wrong_id", "null_result", "no_result", "http500", "mangle")


class FaultRun:
    """A pusher behind a proxy on a chain that a seeded schedule breaks between its looks, with
    the checks every look must pass: what is sent (at the proxy) and what the contract holds."""

    def __init__(self, rig: Rig, proxy: RpcProxy, seed: int) -> None:
        self.rig, self.proxy, self.random = rig, proxy, random.Random(seed)
        self.rounds = Rounds(make_config())
        self.markets = tuple(self.rounds.prices)
        self.ids = {market_id(m): m for m in self.markets}
        self.at: dict[int, dict[str, tuple[int, int, int] | None]] = {}  # ts -> active prices
        self.latest: dict[str, int | None] = {}  # what the latest round holds of each market
        self.problems: list[str] = []
        self.floor_block = 0
        self.own_pusher = ""
        self.pusher = self.new_pusher()
        proxy.delay_s = 0.4  # "slow": past the pusher's 0.3 s timeout, then forwarded
        proxy.rewrite = self.sent

    def new_pusher(self) -> ChainPusher:
        return self.rig.pusher(
            urls=(self.proxy.url,), heartbeat_s=5.0, replace_after_s=3.0, timeout_s=0.3,
            max_gas_price_gwei=float(FAULT_CAP_GWEI), priority_fee_gwei=1.0,
        )  # fmt: skip

    def submit(self, **moves: float) -> None:
        result = self.rounds.step(**moves)
        prices: dict[str, tuple[int, int, int] | None] = {}
        for report, decimals in zip(result.reports(), result.layout.decimals.tolist(), strict=True):
            active = report.status == "active" and report.price is not None
            price = decimal_to_int(report.price, decimals) if active else 0
            prices[report.market] = (price, -decimals, result.round) if active else None
            self.latest[report.market] = result.round if active else None
        self.at[result.ts] = prices
        self.pusher.submit(result)

    def sent(self, request: Any, answer: Any) -> Any:
        """The proxy's view of every transaction sent: under the cap, only active markets."""
        if isinstance(request, dict) and request.get("method") == "eth_sendRawTransaction":
            tx = TypedTransaction.from_bytes(HexBytes(request["params"][0])).as_dict()
            if tx["maxFeePerGas"] > FAULT_CAP_GWEI * GWEI:
                self.problems.append(f"sent at {tx['maxFeePerGas']} wei a gas, over the cap")
            _, ts, ids, _, _, paused = decode(BATCH_ARGS, bytes(tx["data"])[4:])
            for market in (self.ids[bytes(i)] for i in ids):
                if self.latest[market] is None:
                    self.problems.append(f"sent {market} of {ts} while it is not active")
            for market in (self.ids[bytes(i)] for i in paused):
                if self.latest[market] is not None:
                    self.problems.append(f"sent a pause of {market} at {ts} while it is active")
        return answer

    async def check_chain(self, when: str) -> None:
        """A price is its round's active price; a pause is at a round the market was not
        active in, and `latest` refuses it. All read at one block, named by its hash: a send
        the proxy forwarded late may be mined between two reads, and with the block named by
        its number (the head's, then) a loaded CI run read a market paused by `latestFeed`
        and priced by `latest` in one check (seed 13); a hash names one state, whatever is
        mined meanwhile."""
        block = {"blockHash": (await self.rig.chain.block())["hash"]}
        for market in self.markets:
            price, expo, round_no, ts, paused = await self.rig.feed_of(market, block)
            if paused:
                if ts not in self.at or self.at[ts][market] is not None:
                    self.problems.append(f"{when}: {market} paused at {ts}: it was active")
                if await self.rig.refused(market, block) != ts:
                    self.problems.append(f"{when}: latest of {market} not refused at {ts}")
            elif ts and self.at.get(ts, {}).get(market) != (price, expo, round_no):
                self.problems.append(
                    f"{when}: {market} holds {price}e{expo} of {ts}: not that round's active price"
                )

    async def look(self, when: str) -> None:
        with contextlib.suppress(RpcUnavailable, RpcError):  # the node's failure: retried
            await self.pusher.step()
        await self.check_chain(when)

    async def fault(self, name: str) -> None:
        rig, chain, market = self.rig, self.rig.chain, self.random.choice(self.markets)
        pick, key = self.random.choice, rig.key.address
        if name == "round":
            self.submit()
        elif name == "move":
            self.submit(**{market.replace("/", "_"): pick([0.97, 0.985, 1.015, 1.03])})
        elif name in ("pause", "resume"):
            self.rounds.core.set_manual(market, name == "pause")
            self.submit()
        elif name == "advance":
            rig.clock.advance(pick([500, 1_500, 3_500, 6_000]))
        elif name in ("automine_off", "automine_on"):
            await chain.rpc("evm_setAutomine", [name == "automine_on"])
        elif name == "mine":
            await chain.rpc("evm_mine")
        elif name == "reorg" and await chain.block_number() - 1 > self.floor_block:
            await chain.reorg(1)
        elif name == "drop" and self.pusher._inflight is not None:
            await chain.rpc("anvil_dropTransaction", [self.pusher._inflight.sent[-1][0]])
        elif name == "rival":  # another user of the key, at the next nonce or the last one
            nonce = max(0, await rig.nonce("pending") - pick([0, 1]))
            with contextlib.suppress(RpcFailed):
                raw = sign_transfer(rig, nonce, 15 * GWEI, 2 * GWEI)
                await chain.rpc("eth_sendRawTransaction", [raw])
        elif name == "set_nonce":
            await chain.rpc("anvil_setNonce", [key, hex(await rig.nonce() + pick([1, 2]))])
        elif name in ("broke", "funded"):
            await chain.rpc("anvil_setBalance", [key, hex(10**20 if name == "funded" else 0)])
        elif name in ("spike", "calm"):
            base = pick([15, 40, 500]) if name == "spike" else 1
            await chain.rpc("anvil_setNextBlockBaseFeePerGas", [hex(base * GWEI)])
            await chain.rpc("evm_mine")
        elif name == "garble":
            self.proxy.script = [pick(GARBLED) for _ in range(self.random.randint(1, 4))]
        elif name == "slow":
            self.proxy.script = ["slow"] * self.random.randint(1, 3)
        elif name in ("rotate", "restore"):  # the contract's pusher: another key, or ours again
            who = "0x" + OTHER[2:].lower().rjust(64, "0") if name == "rotate" else self.own_pusher
            await chain.rpc("anvil_setStorageAt", [rig.feed, PUSHER_SLOT, who])
        elif name == "restart":
            latest = self.pusher._latest
            self.pusher = self.new_pusher()
            if latest is not None:
                self.pusher.submit(latest)

    async def heal(self) -> None:
        """Every fault undone, every market resumed."""
        self.proxy.script, self.proxy.mode = [], "pass"
        for name in ("automine_on", "funded", "calm", "restore"):
            await self.fault(name)
        for market in self.markets:
            self.rounds.core.set_manual(market, False)

    async def run(self, looks: int) -> None:
        chain = self.rig.chain
        slot = [self.rig.feed, PUSHER_SLOT, "latest"]
        self.own_pusher = await chain.rpc("eth_getStorageAt", slot)
        self.floor_block = await chain.block_number()  # no reorganisation takes the contract
        self.rounds.step()
        self.submit()
        names, weights = list(FAULTS), list(FAULTS.values())
        for n in range(looks):
            name = self.random.choices(names, weights)[0]
            await self.fault(name)
            await self.look(f"look {n} after {name}")
        await self.heal()
        self.submit()
        healed = self.rounds.now
        for n in range(40):
            self.submit()
            self.rig.clock.advance(4_000)
            await self.look(f"look {n} after healing")
            await chain.rpc("evm_mine")
            feeds = [await self.rig.feed_of(m) for m in self.markets]
            if all(ts >= healed and not paused for *_, ts, paused in feeds):
                return
        stored = [await self.rig.feed_of(m) for m in self.markets]
        nonces = f"{await self.rig.nonce()}/{await self.rig.nonce('pending')}"
        self.problems.append(
            f"not every market pushed 40 looks after healing (from {healed}): on chain "
            f"{stored}, {self.pusher.stats.transactions}, the pusher's next nonce "
            f"{self.pusher.stats.nonce}, the chain's mined/pending {nonces}"
        )


@pytest.mark.parametrize("seed", [2, 13])
async def test_a_seeded_fault_schedule_never_pushes_a_doubtful_price_and_ends_pushing(
    rig: Rig, seed: int
) -> None:
    """150 looks of the pusher, each after a fault drawn from a seeded schedule: rounds that
    move, pause and resume markets; the chain's mining stopped and started, reorganised, fee
    spikes over the cap, transactions dropped, the key's nonce moved and its funds taken by
    another user of the key, the contract's pusher rotated away and back; the proxy answering
    garbage, errors, nulls and too late; the pusher restarted. Every transaction sent offers
    at most the cap and carries prices only of markets active in the latest round, and pauses
    only of markets that are not; the contract only ever holds a round's active price, or a
    pause at a round its market was not active in, which `latest` refuses; a look fails only
    as the node's failure (no crash, no traceback); and once every fault is undone every market
    is pushed again (resumed). Schedules like these found the start's null contract check that
    ended the pusher, and seed 2 the fee to outbid kept after its transaction left the pool;
    both seeds fail on a pusher whose stuck push is replaced with a market paused since."""
    proxy = await RpcProxy(rig.url, rig.chain.session).start()
    try:
        run = FaultRun(rig, proxy, seed)
        with capture_logs() as logs:
            await run.run(150)
    finally:
        await proxy.stop()
    assert not [e["event"] for e in logs if "exc_info" in e]
    assert not run.problems, "\n".join(run.problems)
