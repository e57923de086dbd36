"""Helpers to read the local chain the way the daemon does: a ChainReader over an RpcClient."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp

from oracled.clock import SystemClock
from oracled.config import ChainConfig, FeedSpec
from oracled.model import Quote
from oracled.sources.evm.chain import ChainReader
from oracled.sources.evm.feed import Feed
from oracled.sources.evm.rpc import RpcClient
from oracled.sources.stats import SourceStats


class Collected:
    """The quotes and counters one feed's registration produced."""

    def __init__(self, source: str) -> None:
        self.quotes: list[Quote] = []
        self.stats = SourceStats(source)

    def emit(self, quote: Quote) -> None:
        self.quotes.append(quote)

    @property
    def last(self) -> Quote:
        return self.quotes[-1]


def make_reader(
    urls: Sequence[str], http: aiohttp.ClientSession, *, timeout_s: float = 2.0, **chain: Any
) -> ChainReader:
    cfg = ChainConfig(chain_id=31337, rpc_urls=tuple(urls), timeout_s=timeout_s, **chain)
    rpc = RpcClient(list(urls), http, timeout_s=timeout_s, clock=SystemClock())
    return ChainReader("local", cfg, rpc, SystemClock(), http)


def watch(reader: ChainReader, feed: Feed) -> Collected:
    out = Collected(feed.source_id)
    reader.register(feed, out.emit, out.stats)
    return out


def chainlink_spec(address: str, heartbeat_s: int = 3600) -> FeedSpec:
    return FeedSpec(address=address, heartbeat_s=heartbeat_s)


def pyth_spec(feed_id: bytes, max_age_s: int = 60) -> FeedSpec:
    return FeedSpec(feed_id="0x" + feed_id.hex(), max_age_s=max_age_s)
