"""Helpers to read the local chain the way the daemon does: a ChainReader over an RpcClient."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any, Final

import aiohttp

from oracled.clock import Clock, SystemClock
from oracled.config import DEFAULT_MAX_CLOCK_SKEW_MS, ChainConfig, FeedSpec
from oracled.jsonrpc import RpcClient
from oracled.model import Quote
from oracled.sources.evm.chain import ChainReader
from oracled.sources.evm.chainlink import ChainlinkFeed
from oracled.sources.evm.feed import Feed
from oracled.sources.stats import SourceStats


class Collected:
    """The quotes and counters one feed's registration produced."""

    def __init__(self, source: str) -> None:
        self.quotes: list[Quote] = []
        self.stats = SourceStats(source)
        self._changed = asyncio.Event()

    def emit(self, quote: Quote) -> None:
        self.quotes.append(quote)
        self._changed.set()

    async def until(self, done: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Wait for quotes until `done()` holds (a test of a reader running in the background)."""
        async with asyncio.timeout(timeout_s):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    @property
    def last(self) -> Quote:
        return self.quotes[-1]


#: `max_clock_skew_ms` of a reader whose clock a test keeps behind the node's (it warps the node
#: ahead for a round newer than deployment or a TWAP window of history, or holds a manual clock
#: at a fixed time): a day. Every other reader refuses blocks from the future as the daemon
#: does, by the default skew.
WARPED: Final = 86_400_000


def make_reader(
    urls: Sequence[str],
    http: aiohttp.ClientSession,
    *,
    timeout_s: float = 2.0,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    rpc_clock: Clock | None = None,
    max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS,
    **chain: Any,
) -> ChainReader:
    """A reader of the local chain; `clock` is the reader's own, `rpc_clock` the RPC client's
    (for its endpoints' rests; the system clock unless given)."""
    cfg = ChainConfig(chain_id=31337, rpc_urls=tuple(urls), timeout_s=timeout_s, **chain)
    rpc = RpcClient(list(urls), http, timeout_s=timeout_s, clock=rpc_clock or SystemClock())
    return ChainReader(
        "local", cfg, rpc, clock or SystemClock(), http, rng=rng,
        max_clock_skew_ms=max_clock_skew_ms,
    )  # fmt: skip


def watch(reader: ChainReader, feed: Feed) -> Collected:
    out = Collected(feed.source_id)
    reader.register(feed, out.emit, out.stats)
    return out


def chainlink_spec(address: str, heartbeat_s: int = 3600) -> FeedSpec:
    return FeedSpec(address=address, heartbeat_s=heartbeat_s)


def watch_eth(reader: ChainReader, proxy: str) -> Collected:
    """The Chainlink ETH/USD feed of the proxy at `proxy` as source `cl`, registered with
    `reader` (most reader tests watch just that one)."""
    return watch(reader, ChainlinkFeed("cl", "ETH/USD", chainlink_spec(proxy)))


def pyth_spec(feed_id: bytes, max_age_s: int = 60) -> FeedSpec:
    return FeedSpec(feed_id="0x" + feed_id.hex(), max_age_s=max_age_s)
