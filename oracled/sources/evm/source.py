"""The `Source` face of on-chain feeds: the runtime supervises them like venues.

An on-chain source opens no socket of its own. It builds one `Feed` per configured pair, and
`run()` registers them with its chain's `ChainReader` (attached by the runtime) until cancelled;
the reader reads all feeds of the chain in one call per block. The venue hooks of `Source` are
never called for these sources.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Mapping, Sequence

import aiohttp

from oracled.clock import Clock
from oracled.config import FeedSpec, SourceConfig
from oracled.model import Kind, Quote
from oracled.sources._base import Source
from oracled.sources.evm.chain import ChainReader
from oracled.sources.evm.feed import Feed
from oracled.sources.stats import ConnState, SourceStats

__all__ = ["ChainSource"]


class ChainSource(Source):
    """Base of the chainlink, pyth_evm and uniswap_v3 source types."""

    default_ws_url = ""

    def __init__(
        self,
        source_id: str,
        cfg: SourceConfig,
        pairs: Sequence[tuple[str, Kind]],
        emit: Callable[[Quote], None],
        clock: Clock,
        session: aiohttp.ClientSession,
        stats: SourceStats,
    ) -> None:
        super().__init__(source_id, cfg, pairs, emit, clock, session, stats)
        self.reader: ChainReader | None = None
        self.feeds: list[Feed] = []
        for pair, kind in pairs:
            spec = cfg.feeds.get(pair)
            if spec is None or kind != "spot":
                stats.failed_instruments[pair] = f"no {kind} feed configured for {pair}"
                continue
            self.feeds.append(self.build_feed(pair, spec))

    @abc.abstractmethod
    def build_feed(self, pair: str, spec: FeedSpec) -> Feed:
        """The feed that reads `pair` as `spec` says."""

    def attach(self, reader: ChainReader) -> None:
        """Give the source its chain's reader (the runtime does this before `run`), with the
        `max_clock_skew_ms` the service set on the source: a reload that changes it restarts
        every source, and the reader, built at start, refuses blocks from the future by it."""
        self.reader = reader
        reader.max_clock_skew_ms = self.max_clock_skew_ms

    async def run(self) -> None:
        """Keep the feeds registered with the chain's reader until cancelled."""
        if self.reader is None:
            raise RuntimeError(f"{self.source_id}: on-chain source started without a chain reader")
        reader = self.reader
        for feed in self.feeds:
            reader.register(feed, self._emit, self.stats)
        self.stats.state = ConnState.CONNECTING
        try:
            await asyncio.Event().wait()
        finally:
            for feed in self.feeds:
                reader.unregister(feed)
            self.stats.state = ConnState.STOPPED

    # The venue hooks: an on-chain source has no stream and no REST endpoint of its own.
    def stream_url(self) -> str:
        raise NotImplementedError("read by the chain reader")

    def subscribe_message(self, request_id: int, symbols: Sequence[str]) -> str:
        raise NotImplementedError("read by the chain reader")

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        raise NotImplementedError("read by the chain reader")

    def rest_request(self, symbols: Sequence[str]) -> tuple[str, Mapping[str, str]] | None:
        return None

    def on_rest(self, body: bytes, recv_ts: int) -> None:
        raise NotImplementedError("read by the chain reader")
