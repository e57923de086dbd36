"""The contract between a chain reader and the on-chain feeds it serves.

A `ChainReader` learns a new block, gathers every registered feed's `calls()` into one Multicall3
`aggregate3` pinned to that block, and hands each feed back exactly its own slice of the results
with `decode()`. Feeds therefore never do I/O: they pre-encode their calldata once, and turn
`(success, return data)` pairs into a `Quote`, a drop reason, or nothing.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from oracled.model import Quote

__all__ = ["Block", "Call", "Feed", "FeedResult"]


@dataclass(frozen=True, slots=True)
class Block:
    """The block a round of reads is pinned to; `timestamp` is in seconds, as the chain has it."""

    number: int
    hash: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class Call:
    """One read: a contract address (0x hex) and calldata encoded once at construction."""

    target: str
    data: bytes


#: What `Feed.decode` returns: a quote, a drop reason (counted), or None (nothing new).
FeedResult = Quote | str | None


class Feed(abc.ABC):
    """One on-chain value for one canonical pair, read through a chain's reader every block.

    `decode()` receives one `(success, return data)` per call of `calls()`, in that order. A call
    that reverted arrives as `(False, revert data)`, so a feed decides itself whether a revert
    means "drop" or "stale".

    `calls()` may change while the feed learns from the chain: Chainlink's feed first reads the
    proxy's `decimals()` and `description()` and learns its aggregator, then reads that
    aggregator's bounds with the decimals (and learns again when the aggregator behind the
    proxy is replaced, or reads the block again to confirm a change of either); Uniswap's asks
    the pool for its tokens, then the tokens for their decimals, and only then makes its steady
    reads. A feed that changed its calls returns None from that
    `decode()`, and the reader reads the SAME block again with the new calls (up to twice), so
    the first block is still priced and no round mixes blocks. Between such changes `calls()`
    must return the same sequence object: the reader compares it by identity to know that its
    encoded calldata still holds.
    """

    __slots__ = ("pair", "source_id")

    #: Drop reasons that mean the feed now answers garbage (an answer of zero, a round carried
    #: over): its previous value is not to be trusted either, so the reader publishes that value
    #: again flagged `bad_answer` until the feed gives a valid one. Other drops (a reverted
    #: call) leave the previous value voting.
    distrusting: ClassVar[frozenset[str]] = frozenset()
    #: Drop reasons that mean the chain no longer holds the value last published: the block read
    #: holds an older one (a reorg took the newer one away). The reader publishes the last value
    #: again flagged `reorged` until the feed has a newer one; the older value cannot take its
    #: place, since the core orders a slot's quotes by venue time.
    reorged: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, source_id: str, pair: str) -> None:
        self.source_id = source_id
        self.pair = pair

    def spot_gap_count(self) -> int | None:
        """Reads whose second view of the value parted from the first (Uniswap: slot0 against
        the TWAP), exported per feed; None for a feed without such a cross-check."""
        return None

    @abc.abstractmethod
    def calls(self) -> Sequence[Call]:
        """The reads this feed needs each block, pre-encoded."""

    @abc.abstractmethod
    def decode(
        self, results: Sequence[tuple[bool, bytes]], block: Block, recv_ts: int
    ) -> FeedResult:
        """A Quote (with `flag` set when the value is known not to be a price: "at_bound",
        "liquidity", "sequencer"), or a drop reason (counted), or None (nothing new)."""
