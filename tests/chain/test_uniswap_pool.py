"""Uniswap v3 feed against real pools on the local node.

The factory and pool are Uniswap's own v3-core 1.0.1 bytecode as shipped in its npm package;
the tokens and the contract that pays the pool's mint and swap callbacks are the project's own
test contracts. Each read goes through Multicall3's aggregate3 pinned to one block number, as
the daemon reads.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest
from chain_rig import (
    MULTICALL3,
    Anvil,
    Chain,
    Deployed,
    Pool,
    Tokens,
    burn,
    make_pool,
    mint,
    slot0_tick,
    swap,
)
from reading import WARPED, make_reader, watch
from structlog.testing import capture_logs

from oracled.clock import SystemClock
from oracled.config import FeedSpec, SourceConfig
from oracled.model import Quote
from oracled.sources.evm.feed import Block
from oracled.sources.evm.multicall import decode_aggregate3, encode_aggregate3
from oracled.sources.evm.uniswap_v3 import UniswapV3Feed, UniswapV3Source, tick_to_price
from oracled.sources.stats import SourceStats

pytestmark = pytest.mark.asyncio(loop_scope="session")

WINDOW = 300
ONE_TICK = 1.0001


def feed_for(
    pool: Pool, base: str, *, min_liquidity: int, pair: str = "ETH/USD", window: int = WINDOW
) -> UniswapV3Feed:
    """The feed a config would declare for this pool: decimals and order as the tokens have them,
    the order checked against the base token."""
    return UniswapV3Feed(
        "uniswap",
        pair,
        pool.address,
        invert=base == pool.token1,
        token0_decimals=pool.decimals0,
        token1_decimals=pool.decimals1,
        min_liquidity=min_liquidity,
        twap_window_s=window,
        base_token=base,
    )


async def read(chain: Chain, feed: UniswapV3Feed) -> tuple[Quote | str | None, Block]:
    """One round as the reader does it: aggregate3 of the feed's calls pinned to the latest
    block, read again on the same block while the feed is learning (it changed its calls)."""
    head = await chain.block()
    block = Block(int(head["number"], 16), head["hash"], int(head["timestamp"], 16))
    for _ in range(3):
        calls = feed.calls()
        data = "0x" + encode_aggregate3(calls).hex()
        raw = await chain.rpc("eth_call", [{"to": MULTICALL3, "data": data}, hex(block.number)])
        results = decode_aggregate3(bytes.fromhex(raw[2:]), len(calls))
        out = feed.decode(results, block, block.timestamp * 1000 + 250)
        if out is not None or feed.calls() is calls:
            return out, block
    raise AssertionError("the feed kept changing its calls")


async def test_a_normal_read_is_the_pools_twap_at_the_read_block(
    chain: Chain, tokens: Tokens, snapshot: Deployed
) -> None:
    """A pool resting at 3000 USD per ETH for longer than the window reads 3000 (to a tick),
    stamped with the block it was read at."""
    pool = await make_pool(chain, tokens, tokens.weth, tokens.usd_above, "3000", liquidity=10**17)
    await chain.warp(2 * WINDOW)
    feed = feed_for(pool, tokens.weth, min_liquidity=10**16)
    quote, block = await read(chain, feed)
    assert isinstance(quote, Quote), quote
    tick = await slot0_tick(chain, pool.address)
    assert quote.price == tick_to_price(tick, 18, 6)  # resting: the mean tick is the tick
    assert quote.price == pytest.approx(3000, rel=ONE_TICK - 1)
    assert quote.flag is None
    assert quote.block == block.number
    assert quote.venue_ts == quote.block_ts == block.timestamp * 1000
    assert feed.spot_gaps == 0
    assert feed.last_spot == pytest.approx(3000, rel=1e-9)


async def test_after_a_swap_the_twap_is_emitted_and_slot0_only_cross_checks(
    chain: Chain, tokens: Tokens, snapshot: Deployed
) -> None:
    """A swap moves slot0 about 10 % up; one minute later the feed emits the time-weighted mean
    of the two ticks over its window, exactly as the pool's accumulators give it, not the spot;
    the gap to the spot is counted and logged."""
    pool = await make_pool(chain, tokens, tokens.weth, tokens.usd_above, "3000", liquidity=10**17)
    await chain.warp(2 * WINDOW)
    feed = feed_for(pool, tokens.weth, min_liquidity=10**16)
    before = await slot0_tick(chain, pool.address)
    # USD in (token1): the root of the price rises by amount / L, here by about 5 %.
    swapped_at = await swap(chain, tokens, pool.address, False, 270_000 * 10**6)
    after = await slot0_tick(chain, pool.address)
    assert tick_to_price(after - before, 0, 0) == pytest.approx(1.10, rel=0.01)
    await chain.warp(60)
    with capture_logs() as logs:
        quote, block = await read(chain, feed)
    assert isinstance(quote, Quote), quote
    moved = block.timestamp - swapped_at
    assert 55 <= moved <= 65
    expected_tick = (before * (WINDOW - moved) + after * moved) // WINDOW
    assert quote.price == tick_to_price(expected_tick, 18, 6)
    spot = tick_to_price(after, 18, 6)
    assert feed.last_spot == pytest.approx(spot, rel=ONE_TICK - 1)
    assert 3000 < quote.price < spot * 0.95
    assert feed.spot_gaps == 1
    assert feed.last_spot_gap is not None and feed.last_spot_gap > 0.05
    assert [e["event"] for e in logs] == ["uniswap_feed", "uniswap_spot_gap"]
    assert logs[0]["verified"] is True


async def test_a_pool_below_the_liquidity_minimum_is_flagged(
    chain: Chain, tokens: Tokens, snapshot: Deployed
) -> None:
    """The same pool is a price with a minimum at its liquidity and flagged 'liquidity'
    with a minimum above it; the flagged quote still carries the TWAP, for the report. (The
    window's harmonic mean comes out of the pool's floored accumulator, as OracleLibrary's
    does: one unit below the liquidity for some block times, so "at" allows that unit.)"""
    pool = await make_pool(chain, tokens, tokens.weth, tokens.usd_above, "3000", liquidity=10**15)
    await chain.warp(2 * WINDOW)
    deep_enough = await read(chain, feed_for(pool, tokens.weth, min_liquidity=10**15 - 1))
    too_thin = await read(chain, feed_for(pool, tokens.weth, min_liquidity=10**15 + 1))
    assert isinstance(deep_enough[0], Quote) and deep_enough[0].flag is None
    assert isinstance(too_thin[0], Quote) and too_thin[0].flag == "liquidity"
    assert too_thin[0].price == deep_enough[0].price


async def test_liquidity_pulled_or_added_late_is_judged_on_now_and_on_the_window(
    chain: Chain, tokens: Tokens, snapshot: Deployed
) -> None:
    """Liquidity burnt down to a tenth flags the pool at once; liquidity added just before the
    read does not unflag a pool that was thin over the window, until a whole window has passed
    at the new depth."""
    pool = await make_pool(chain, tokens, tokens.weth, tokens.usd_above, "3000", liquidity=10**15)
    feed = feed_for(pool, tokens.weth, min_liquidity=10**16)
    await chain.warp(2 * WINDOW)
    thin, _ = await read(chain, feed)
    assert isinstance(thin, Quote) and thin.flag == "liquidity"
    await mint(chain, tokens, pool.address, 10**17)  # now 101x deeper than over the window
    late, _ = await read(chain, feed)
    assert isinstance(late, Quote) and late.flag == "liquidity"
    await chain.warp(WINDOW + 5)
    settled, _ = await read(chain, feed)
    assert isinstance(settled, Quote) and settled.flag is None
    await burn(chain, tokens, pool.address, 10**17)  # back to 1e15 in range right now
    pulled, _ = await read(chain, feed)
    assert isinstance(pulled, Quote) and pulled.flag == "liquidity"


@pytest.mark.parametrize(
    ("base_name", "quote_name", "price", "pair", "token0_is_base"),
    [
        ("weth", "usd_above", "3000", "ETH/USD", True),  # token0 WETH 18, token1 USD 6
        ("weth", "usd_below", "3000", "ETH/USD", False),  # token0 USD 6, token1 WETH 18: inverted
        ("wbtc", "usd_above", "60000", "BTC/USD", True),  # 8 / 6
        ("wbtc", "usd_below", "60000", "BTC/USD", False),  # 6 / 8, inverted
    ],
)
async def test_token_order_and_decimals_either_way(
    chain: Chain,
    tokens: Tokens,
    snapshot: Deployed,
    base_name: str,
    quote_name: str,
    price: str,
    pair: str,
    token0_is_base: bool,
) -> None:
    """Whichever token sorts first and whichever has more decimals, the pair reads its price
    in whole quote tokens per whole base token."""
    base, quote_token = getattr(tokens, base_name), getattr(tokens, quote_name)
    pool = await make_pool(chain, tokens, base, quote_token, price, liquidity=10**15)
    assert (pool.token0 == base) is token0_is_base
    await chain.warp(2 * WINDOW)
    feed = feed_for(pool, base, pair=pair, min_liquidity=1)
    assert feed.invert is not token0_is_base
    quote, _ = await read(chain, feed)
    assert isinstance(quote, Quote), quote
    assert quote.price == pytest.approx(float(price), rel=ONE_TICK - 1)
    assert feed.last_spot == pytest.approx(float(price), rel=1e-9)


async def test_observe_reverts_when_the_window_outruns_the_observations(
    chain: Chain, tokens: Tokens, snapshot: Deployed
) -> None:
    """A pool with a single observation slot forgets its history at every swap: a five-minute
    window one minute after a swap reverts with 'OLD', dropped as observe_reverted and logged
    with the reason and the fix; a window that fits reads."""
    pool = await make_pool(
        chain, tokens, tokens.weth, tokens.usd_above, "3000", liquidity=10**17, cardinality=1
    )
    await chain.warp(2 * WINDOW)
    await swap(chain, tokens, pool.address, True, 10**18)
    await chain.warp(60)
    feed = feed_for(pool, tokens.weth, min_liquidity=1)
    with capture_logs() as logs:
        result, _ = await read(chain, feed)
    assert result == "observe_reverted"
    assert [e["event"] for e in logs] == ["uniswap_feed", "uniswap_observe_reverted"]
    assert logs[1]["reason"] == "OLD"
    short, _ = await read(chain, feed_for(pool, tokens.weth, min_liquidity=1, window=30))
    assert isinstance(short, Quote)


@pytest.mark.parametrize(("decimals0", "decimals1"), [(18, 6), (6, 8)], ids=["swapped", "token1"])
async def test_a_config_with_the_tokens_swapped_is_refused_on_the_real_pool(
    chain: Chain, tokens: Tokens, snapshot: Deployed, decimals0: int, decimals1: int
) -> None:
    """Decimals configured the wrong way round (18/6 for a USD/WETH pool), or wrong for one
    token only (6/8), are caught against the tokens' own decimals(): dropped as token_mismatch
    instead of a price off by 1e24 (or 1e10)."""
    pool = await make_pool(chain, tokens, tokens.weth, tokens.usd_below, "3000", liquidity=10**15)
    assert (pool.decimals0, pool.decimals1) == (6, 18)
    await chain.warp(2 * WINDOW)
    wrong = UniswapV3Feed(
        "uniswap", "ETH/USD", pool.address, invert=True, token0_decimals=decimals0,
        token1_decimals=decimals1, min_liquidity=1,
    )  # fmt: skip
    result, _ = await read(chain, wrong)
    assert result == "token_mismatch"
    assert (wrong.token0, wrong.token1) == (tokens.usd_below.lower(), tokens.weth.lower())


@pytest.mark.parametrize(
    ("base_name", "quote_name", "price"),
    [("weth", "usd_below", "3000"), ("usd_below", "usd_above", "1.25")],
    ids=["decimals_6_18", "decimals_6_6"],
)
async def test_a_wrong_invert_is_refused_when_the_base_token_is_named(
    chain: Chain, tokens: Tokens, snapshot: Deployed, base_name: str, quote_name: str, price: str
) -> None:
    """The decimals are right, `invert` is not: without `base_token` nothing on the chain says
    so (the decimals match whatever `invert` says) and the pool's reciprocal is published. With
    `base_token` the set-up compares it with the token `invert` names: the feed drops
    `token_mismatch` with one error saying which `invert` the pool needs; the right `invert`
    reads the price, its set-up line saying the order was verified. Both a pool of 6 and 18
    decimals and one of 6 and 6, where no decimals check could tell."""
    base, quote_token = getattr(tokens, base_name), getattr(tokens, quote_name)
    pool = await make_pool(chain, tokens, base, quote_token, price, liquidity=10**15)
    await chain.warp(2 * WINDOW)
    right = base == pool.token1

    def feed(invert: bool, base_token: str | None) -> UniswapV3Feed:
        return UniswapV3Feed(
            "uniswap", "X/USD", pool.address, invert=invert, token0_decimals=pool.decimals0,
            token1_decimals=pool.decimals1, min_liquidity=1, base_token=base_token,
        )  # fmt: skip

    unchecked, _ = await read(chain, feed(not right, None))
    assert isinstance(unchecked, Quote)
    assert unchecked.price == pytest.approx(1 / float(price), rel=ONE_TICK - 1)  # the gap
    with capture_logs() as logs:
        refused, _ = await read(chain, feed(not right, base))
        again, _ = await read(chain, feed(not right, base))
    assert refused == again == "token_mismatch"
    assert [e["event"] for e in logs] == ["uniswap_token_order_mismatch"] * 2  # one per feed
    assert (
        logs[0]["hint"]
        == f"the base is the pool's token{int(right)}: set invert = " + str(right).lower()
    )
    with capture_logs() as logs:
        quote, _ = await read(chain, feed(right, base))
    assert isinstance(quote, Quote)
    assert quote.price == pytest.approx(float(price), rel=ONE_TICK - 1)
    assert [(e["event"], e["order_verified"]) for e in logs] == [("uniswap_feed", True)]


async def test_a_base_token_not_in_the_pool_is_refused(
    chain: Chain, tokens: Tokens, snapshot: Deployed
) -> None:
    """A `base_token` that is neither of the pool's tokens (a WBTC address on a WETH pool) is a
    config that names another pool's token: dropped `token_mismatch`, logged once with a hint
    to check it, on every block."""
    pool = await make_pool(chain, tokens, tokens.weth, tokens.usd_above, "3000", liquidity=10**15)
    await chain.warp(2 * WINDOW)
    wrong = UniswapV3Feed(
        "uniswap", "ETH/USD", pool.address, invert=False, token0_decimals=18,
        token1_decimals=6, min_liquidity=1, base_token=tokens.wbtc,
    )  # fmt: skip
    with capture_logs() as logs:
        first, _ = await read(chain, wrong)
        await chain.mine()
        second, _ = await read(chain, wrong)
    assert first == second == "token_mismatch"
    assert [e["event"] for e in logs] == ["uniswap_token_order_mismatch"]
    assert "not in the pool" in logs[0]["hint"]


async def test_the_source_reads_its_pool_through_the_chain_reader(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, tokens: Tokens, snapshot: Deployed
) -> None:
    """The `uniswap_v3` source built from its config table registers its feed with the chain's
    reader: the first block costs the two set-up reads and the price, every later block one
    round trip, and the quotes carry the block they were read at."""
    pool = await make_pool(chain, tokens, tokens.weth, tokens.usd_below, "3000", liquidity=10**17)
    await chain.warp(2 * WINDOW)
    spec = FeedSpec(
        address=pool.address,
        min_liquidity=10**16,
        token0_decimals=6,
        token1_decimals=18,
        invert=True,
    )
    cfg = SourceConfig(type="uniswap_v3", chain="local", feeds={"ETH/USD": spec})
    quotes: list[Quote] = []
    stats = SourceStats("uni")
    source = UniswapV3Source(
        "uni", cfg, [("ETH/USD", "spot")], quotes.append, SystemClock(), http, stats
    )
    source.max_clock_skew_ms = WARPED  # as the service sets it; the reader takes it at attach
    reader = make_reader([anvil.url], http)
    source.attach(reader)
    task = asyncio.create_task(source.run(), name="uniswap-source")
    try:
        await asyncio.sleep(0)  # run() registers the feeds
        assert await reader.poll_once()
        head = await chain.block()
        assert len(quotes) == 1
        assert quotes[0].price == pytest.approx(3000, rel=ONE_TICK - 1)
        assert quotes[0].block == int(head["number"], 16)
        assert reader.stats.round_trips == 4  # the head, the read, two set-up re-reads
        await chain.mine()
        assert await reader.poll_once()
        assert len(quotes) == 2 and quotes[1].block == quotes[0].block + 1
        assert reader.stats.round_trips == 6
        assert stats.quotes == 2 and not stats.dropped
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_spot_gaps_are_counted_on_the_chain_reader_for_the_metrics(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, tokens: Tokens, snapshot: Deployed
) -> None:
    """The reader keeps each pool's TWAP/slot0 gap count in its stats (what
    `oracled_chain_spot_gaps_total` exports): 0 from registration, one more per block read with
    the spot beyond max_spot_deviation, and gone when the feed is unregistered."""
    pool = await make_pool(chain, tokens, tokens.weth, tokens.usd_above, "3000", liquidity=10**17)
    await chain.warp(2 * WINDOW)
    reader = make_reader([anvil.url], http, max_clock_skew_ms=WARPED)
    feed = feed_for(pool, tokens.weth, min_liquidity=10**16)
    got = watch(reader, feed)
    assert reader.stats.spot_gaps == {("uniswap", "ETH/USD"): 0}
    assert await reader.poll_once()
    assert reader.stats.spot_gaps == {("uniswap", "ETH/USD"): 0}
    await swap(chain, tokens, pool.address, False, 270_000 * 10**6)  # slot0 about 10 % up
    await chain.warp(60)
    assert await reader.poll_once()
    await chain.mine()
    assert await reader.poll_once()
    assert len(got.quotes) == 3
    assert (
        reader.stats.spot_gaps
        == {("uniswap", "ETH/USD"): 2}
        == {("uniswap", "ETH/USD"): feed.spot_gaps}
    )
    reader.unregister(feed)
    assert reader.stats.spot_gaps == {}


async def test_a_twap_reorged_out_for_an_earlier_block_is_flagged_until_a_later_one(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, tokens: Tokens, snapshot: Deployed
) -> None:
    """A swap's TWAP is published, then a reorg replaces its blocks with empty ones stamped
    earlier (anvil_reorg drops the time travel): the canonical TWAP is older by venue time than
    the one published, so it cannot replace it. The published one, from blocks the chain no
    longer holds, is published again flagged `reorged` (once; the drop counted `older_block`
    on every such block) instead of voting on; the first block later than it prices the pool
    again without the swap."""
    pool = await make_pool(chain, tokens, tokens.weth, tokens.usd_above, "3000", liquidity=10**17)
    await chain.warp(2 * WINDOW)
    reader = make_reader([anvil.url], http, max_clock_skew_ms=WARPED)
    got = watch(reader, feed_for(pool, tokens.weth, min_liquidity=10**16))
    assert await reader.poll_once()
    await swap(chain, tokens, pool.address, False, 270_000 * 10**6)  # slot0 about 10 % up
    await chain.warp(60)
    assert await reader.poll_once()
    moved = got.last
    assert moved.price is not None and moved.price > 3000 * ONE_TICK
    await chain.reorg(2)
    assert await chain.timestamp() * 1000 < moved.venue_ts  # stamped earlier
    assert await reader.poll_once()
    await chain.mine()
    assert await reader.poll_once()
    assert reader.stats.reorgs == 1
    assert got.stats.dropped["older_block"] == 2
    assert [(q.price, q.flag) for q in got.quotes[1:]] == [
        (moved.price, None), (moved.price, "reorged"),
    ]  # fmt: skip
    await chain.rpc("evm_setNextBlockTimestamp", [moved.venue_ts // 1000 + 1])
    await chain.mine()
    assert await reader.poll_once()
    assert got.last.flag is None
    assert got.last.price == pytest.approx(3000, rel=ONE_TICK - 1)
