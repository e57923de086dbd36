"""One reader per chain: learn each new block, read every feed of it in one `eth_call`.

For every new block the reader sends ONE `eth_call` of Multicall3 `aggregate3` holding all the
registered feeds' calls (plus the multicall's own `getBlockNumber()`, `getChainId()` and
`getCurrentBlockTimestamp()`, which prove which block, which chain and which time the node
executed them at, and the L2 sequencer uptime feed
where configured), pinned to that block by hash (EIP-1898), and hands each feed exactly its
slice of the results.

New blocks come from a WebSocket `newHeads` subscription when the chain has a `ws_url`, else from
polling; a poll asks for the latest header alone and reads the feeds, pinned to it, only when
it is a block not read yet (an idle poll costs one small call, not the aggregate3). The WebSocket
falls back to polling while it is down.

Blocks never go backwards: a block below the last one processed is counted and not read; the same
height with a new hash (a reorg) is read again, and each feed publishes only data newer than what
it already published; a feed that finds older data (the chain no longer holds the value it
published) has that value re-emitted flagged `reorged` until it has newer. A block older than
`max_block_age_s` by our clock (a stuck node) is not published, nor one stamped further ahead
of our clock than `oracle.max_clock_skew_ms` (remembered as the newest, it would have every real
block after it refused until the chain reached its time). With `cross_check`, the same read
is repeated on a second endpoint pinned to the same block hash; a disagreement is settled by the
other endpoints' reads when they come from three or more hosts (a majority of hosts is
published, an endpoint it outvoted is counted, logged and left), else the block is withheld,
counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import aiohttp
import msgspec
import structlog

from oracled.clock import Clock
from oracled.config import DEFAULT_MAX_CLOCK_SKEW_MS, ChainConfig
from oracled.errors import SourceError, shown
from oracled.headers import redirected_to
from oracled.jsonrpc import (
    EndpointStats,
    RpcClient,
    RpcError,
    RpcUnavailable,
    UnknownBlock,
    redact,
)
from oracled.lograte import LogEveryMinute
from oracled.model import Quote
from oracled.sources._base import backoff_delay
from oracled.sources.evm.feed import Block, Call, Feed
from oracled.sources.evm.multicall import (
    GET_BLOCK_NUMBER,
    GET_BLOCK_TIMESTAMP,
    GET_CHAIN_ID,
    decode_aggregate3,
    encode_aggregate3,
    selector,
)
from oracled.sources.stats import ConnState, SourceStats

__all__ = ["ChainReader", "ChainStats", "decode_round"]

_LATEST_ROUND: Final = selector("latestRoundData()")
_MAX_REREADS: Final = 2
_SILENT_BLOCKS: Final = 3  # block times without a newHeads notice before the reader polls
_READ_ERRORS: Final = (RpcError, RpcUnavailable, ValueError)
# Where the multicall's own answers sit in every read: the block it ran on, the chain it ran on,
# that block's time, then the sequencer feed (L2 only), then the feeds.
_AT_BLOCK: Final = 0
_AT_CHAIN: Final = 1
_AT_TIME: Final = 2
_AT_SEQUENCER: Final = 3
#: How long a cross-check leaves an endpoint the others outvoted: a node that lied about one
#: block is not asked about the next ones, then votes again (a liar costs a vote a minute).
_OUTVOTED_REST_S: Final = 60.0
#: The active endpoint's answers taking this share of `timeout_s` or more on average make the
#: reader ask whether the next URL answers much faster (`_prefer_faster`): below it, a read does
#: not wait long enough to matter, and no request is spent finding out.
_SLOW_SHARE: Final = 0.25
#: At most one such question in this long (by the reader's clock) ...
_PROBE_S: Final = 60.0
#: ... and the next URL is taken when it answered the block's read this many times faster.
_FASTER: Final = 2.0
#: Rejections an endpoint or a feed can cause on every block or every retry: logged at most
#: once a minute (`_reject`), and counted in the metrics each time (`reads_failed`, the
#: endpoints' errors, `failed_left`, `silent_left` and `refused_left`, the feed's drops).
_EVERY_MINUTE: Final = frozenset({"read failed", "newHeads down, polling", "feed decode failed"})


class _HeadsLeft(SourceError):
    """A newHeads socket the reader leaves although it did not fail (`_leave_heads`)."""


def decode_round(data: bytes) -> tuple[int, int, int, int, int]:
    """(roundId, answer, startedAt, updatedAt, answeredInRound) of `latestRoundData()`."""
    if len(data) < 160:
        raise ValueError("latestRoundData answer shorter than five words")
    answer = int.from_bytes(data[32:64], "big", signed=True)
    return (
        int.from_bytes(data[0:32], "big"),
        answer,
        int.from_bytes(data[64:96], "big"),
        int.from_bytes(data[96:128], "big"),
        int.from_bytes(data[128:160], "big"),
    )


@dataclass(slots=True)
class ChainStats:
    """Counters of one chain reader, exported at scrape time."""

    chain: str
    #: The chain's configured `max_block_age_s` (the reader's, which a reload does not change):
    #: exported so that the chain's alert compares the head's age with its own limit.
    max_block_age_s: float = 300.0
    mode: str = "starting"  # "newHeads", "polling" or "starting" (`oracled_chain_mode`)
    blocks: int = 0  # blocks read and handed to the feeds
    round_trips: int = 0  # HTTP requests made to read blocks (a batch counts once)
    reads_failed: int = 0
    reorgs: int = 0  # same height, new hash
    backwards: int = 0  # a block below the last one processed (never published)
    old_blocks: int = 0  # blocks older than max_block_age_s (not published)
    future_blocks: int = 0  # blocks stamped past our clock by more than the skew (not published)
    superseded: int = 0  # newHeads: heads passed over for a newer one while a read was slow
    unknown: int = 0  # heads the node did not hold at their read (reorged out, or a node behind)
    disagreements: int = 0  # cross-check: two endpoints answered differently
    slow_switches: int = 0  # the active endpoint left for one much faster (`_prefer_faster`)
    #: newHeads sockets the reader left for polling because a poll found a block they did not
    #: deliver: `silent_left` after no notice at all, `refused_left` after notices whose heads
    #: were all refused (from the future, too old, backwards) for as long; and `failed_left`,
    #: sockets that failed (refused, redirected, ended, broken: `newHeads down, polling`).
    silent_left: int = 0
    refused_left: int = 0
    failed_left: int = 0
    restarts: int = 0  # the reader started again by its supervisor (a failed start, a crash)
    sequencer_up: bool | None = None
    #: (source, pair) -> reads whose spot parted from the TWAP (Uniswap feeds only)
    spot_gaps: dict[tuple[str, str], int] = field(default_factory=dict)
    last_block: int | None = None
    last_block_ts: int | None = None
    endpoints: list[EndpointStats] = field(default_factory=list)


class _Slot:
    """A registered feed, where its results sit in the multicall, and what it last published."""

    __slots__ = ("calls", "count", "emit", "feed", "flag", "last", "start", "stats")

    def __init__(self, feed: Feed, emit: Callable[[Quote], None], stats: SourceStats) -> None:
        self.feed, self.emit, self.stats = feed, emit, stats
        self.calls: Sequence[Call] = ()
        self.start = self.count = 0
        self.last: Quote | None = None  # as the feed made it, before any sequencer flag
        # `last` withdrawn until the feed's next quote: "bad_answer" (the feed's latest answer
        # was garbage) or "reorged" (the chain no longer holds it)
        self.flag: str | None = None


class _Header(msgspec.Struct):
    number: str
    hash: str
    timestamp: str


class _Head(msgspec.Struct):
    result: Any  # a header, checked by `_block` as a polled one is


class _Notice(msgspec.Struct):
    params: _Head | None = None


_notice_decoder: Final = msgspec.json.Decoder(_Notice)


#: A quantity as JSON-RPC writes one (0x, hex digits), and a block hash: `int(x, 16)` alone
#: also takes "-0x5", "1_0" or " 5 ", which no node sends.
_QUANTITY: Final = re.compile(r"0x[0-9a-fA-F]{1,64}")
_HASH: Final = re.compile(r"0x[0-9a-fA-F]{64}")


def _block(header: Any) -> Block:
    """A header's number, hash and time; ValueError (or msgspec's ValidationError) when the
    answer is not a block header."""
    h = msgspec.convert(header, _Header)
    if not (_QUANTITY.fullmatch(h.number) and _QUANTITY.fullmatch(h.timestamp)):
        raise ValueError("block header: number or timestamp is not a hex quantity")
    if not _HASH.fullmatch(h.hash):
        raise ValueError("block header: hash is not 32 bytes of hex")
    return Block(int(h.number, 16), h.hash, int(h.timestamp, 16))


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a helper task and wait for it; a cancellation of the caller itself propagates."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


def _hex_bytes(value: Any) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError("eth_call result is not a hex string")
    return bytes.fromhex(value[2:])


def _other_time(block: Block, proof: tuple[bool, bytes]) -> bool:
    """The multicall's `getCurrentBlockTimestamp()` says the read ran at another time than the
    block's header said. The header's time is what the feeds judge by (a round's age, a pool's
    order of blocks): one from the future (a node's or a relay's garbage) once published made a
    pool refuse every later block as `older_block` until the chain reached it. A multicall
    without the call (it reverts) proves nothing, and the header is taken as it is."""
    ok, data = proof
    return ok and len(data) == 32 and int.from_bytes(data, "big") != block.timestamp


def _pin(block: Block) -> dict[str, Any]:
    """A read pinned to `block` by hash, and only while it is on the node's canonical chain
    (EIP-1898 `requireCanonical`): geth and others otherwise serve a block a reorg already
    orphaned, whose values would be published until the reorg is noticed and withdrawn."""
    return {"blockHash": block.hash, "requireCanonical": True}


class ChainReader:
    """Reads every registered feed of one chain once per new block."""

    def __init__(
        self,
        name: str,
        cfg: ChainConfig,
        rpc: RpcClient,
        clock: Clock,
        session: aiohttp.ClientSession,
        *,
        rng: random.Random | None = None,
        max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS,
    ) -> None:
        self.name = name
        self.cfg = cfg
        #: The core's `oracle.max_clock_skew_ms`, the venues' rule: a block stamped further
        #: ahead of our clock is refused (`ChainSource.attach` keeps it the config's).
        self.max_clock_skew_ms = max_clock_skew_ms
        self.rpc = rpc
        self._clock = clock
        self._http = session
        self._rng = rng or random.Random()
        self.stats = ChainStats(
            chain=name, max_block_age_s=cfg.max_block_age_s, endpoints=rpc.stats
        )
        self._log = structlog.get_logger("oracled").bind(component="chain", chain=name)
        self._slots: list[_Slot] = []
        self._prefix: list[Call] = [
            Call(cfg.multicall, GET_BLOCK_NUMBER),
            Call(cfg.multicall, GET_CHAIN_ID),
            Call(cfg.multicall, GET_BLOCK_TIMESTAMP),
        ]
        if cfg.sequencer is not None:
            self._prefix.append(Call(cfg.sequencer.address, _LATEST_ROUND))
        self._calldata: bytes | None = None
        self._total = 0
        self._last: Block | None = None
        self._sequencer_ok = True
        self._current = True  # False once no block was read for max_block_age_s: feeds flagged
        self._chain_checked: set[int] = set()  # endpoints whose chain id was verified
        self._chain_unproven = False  # the multicall has no getChainId(): warned once
        self._last_rejection: str | None = None
        self._unfinished_log = LogEveryMinute()  # feeds whose block was not read again
        self._reject_log = LogEveryMinute()  # the rejections of `_EVERY_MINUTE`, by kind
        self._heads = 0  # newHeads notices received
        self._next_probe_ms = 0  # when `_prefer_faster` may next ask another URL
        # newHeads silent this long: poll, and subscribe again if the poll finds a new block.
        self._silence_s = cfg.max_block_age_s
        if cfg.block_time_s is not None:
            self._silence_s = min(self._silence_s, _SILENT_BLOCKS * cfg.block_time_s)

    # -- feeds ----------------------------------------------------------------------------
    def register(self, feed: Feed, emit: Callable[[Quote], None], stats: SourceStats) -> None:
        """Read `feed` from the next block on; its quotes go to `emit`, its drops to `stats`."""
        slot = _Slot(feed, emit, stats)
        self._slots.append(slot)
        self._calldata = None
        self._count_gaps(slot)

    def unregister(self, feed: Feed) -> None:
        self._slots = [s for s in self._slots if s.feed is not feed]
        self._calldata = None
        self.stats.spot_gaps.pop((feed.source_id, feed.pair), None)

    def _count_gaps(self, slot: _Slot) -> None:
        """Copy a feed's spot-gap count into the chain's stats, where the metrics read it."""
        gaps = slot.feed.spot_gap_count()
        if gaps is not None:
            self.stats.spot_gaps[(slot.feed.source_id, slot.feed.pair)] = gaps

    def _layout(self) -> bytes:
        """The aggregate3 calldata for all feeds; rebuilt only when a feed's calls changed."""
        changed = self._calldata is None
        for slot in self._slots:
            calls = slot.feed.calls()
            if calls is not slot.calls:
                slot.calls = calls
                changed = True
        if changed or self._calldata is None:
            every = list(self._prefix)
            for slot in self._slots:
                slot.start, slot.count = len(every), len(slot.calls)
                every.extend(slot.calls)
            self._total = len(every)
            self._calldata = encode_aggregate3(every)
        return self._calldata

    # -- the read -------------------------------------------------------------------------
    async def read_block(self, block: Block) -> bool:
        """Read and publish one block (pinned by hash); False when it was not published."""
        if self._refusal(block) is not None:
            self._check_current()
            return False
        return await self._read(block)

    async def poll_once(self) -> bool:
        """One poll: the latest header, then, only when it is a block not read yet (a new height,
        or the same height under a new hash), its read pinned by hash. An idle poll costs one
        small request, not the whole `aggregate3` again: providers bill per call, and at a 2 s
        poll on 12 s blocks five polls in six find nothing new. A single request, not a batch,
        because some providers refuse JSON-RPC batches."""
        return await self._poll_head(again=True)

    async def _poll_head(self, *, again: bool) -> bool:
        self.stats.round_trips += 1
        try:
            head = await self.rpc.call("eth_getBlockByNumber", ["latest", False], required=True)
        except _READ_ERRORS as exc:
            self._read_failed(None, exc)
            return False
        try:
            block = _block(head)
        except (ValueError, msgspec.ValidationError) as exc:
            # An answer that is no header is the endpoint's garbage, as a null one is: counted
            # on it and left for the next URL. Before, only the read failure was counted, and
            # the client kept the endpoint that answered, so the next poll asked it again.
            self._garbage(None, ValueError(str(exc)), "eth_getBlockByNumber")
            return False
        endpoint = self.rpc.stats[self.rpc.active].name  # the one that answered
        refused = self._refusal(block, endpoint=endpoint)
        if refused is not None:
            if refused != "same" or self._stalled() or await self._ahead_elsewhere(block):
                self._behind(block, refused, endpoint)
            return False
        return await self._read(block, again=again)

    async def _ahead_elsewhere(self, head: Block) -> bool:
        """The polled endpoint's head has not moved for three block times (`block_time_s` set):
        does the next URL have a newer one? One request, made only then. A node whose head stopped
        while the chain goes on answers without error, and its last values would otherwise look
        current until max_block_age_s (300 s by default) with another URL ahead all along; on a
        chain that is merely quiet, every URL has the same head and nothing changes."""
        age_ms = self._clock.now_ms() - head.timestamp * 1000
        if len(self.rpc.urls) < 2 or age_ms <= self._silence_s * 1000:
            return False
        other = (self.rpc.active + 1) % len(self.rpc.urls)
        self.stats.round_trips += 1
        try:
            answer = await self.rpc.call_on(other, "eth_getBlockByNumber", ["latest", False])
            theirs = _block(answer)
        except (*_READ_ERRORS, msgspec.ValidationError):
            return False
        return theirs.number > head.number

    async def _read(self, block: Block, *, again: bool = True) -> bool:
        """Read `block` pinned by hash. A node that does not hold it (a reorg took it away
        between its head and its read, or a load-balanced node behind the one that named it) is
        not failing: the block is counted as refused (`unknown`) and the head is read, once."""
        data = self._layout()
        try:
            raw = await self._eth_call(data, _pin(block))
            results = self._results(raw, self._total)
        except UnknownBlock as exc:
            if not again:
                self._read_failed(block, exc)
                return False
            self.stats.unknown += 1
            self._log.warning(
                "block unknown to the node at its read: reading the head", block=block.number,
                hash=block.hash, endpoint=self.rpc.stats[self.rpc.active].name,
            )  # fmt: skip
            return await self._poll_head(again=False)
        except ValueError as exc:
            self._garbage(block, exc)
            return False
        except _READ_ERRORS as exc:
            self._read_failed(block, exc)
            return False
        published = await self._publish(block, raw, results)
        if published:
            await self._prefer_faster(block)
        return published

    async def _prefer_faster(self, block: Block) -> None:
        """Leave an active endpoint that answers, but much slower than the next URL. The client
        keeps the endpoint that answered last, so a URL that always answers just under
        `timeout_s` would otherwise be the one every read waits on, however fast the others.
        While the active one's answers average `_SLOW_SHARE` of `timeout_s` or more, both it and
        the next URL not resting are asked the read of `block` (the one just published, its
        `aggregate3` pinned to its hash), side by side, at most once per `_PROBE_S`; the next
        URL becomes the active one when it answered the same bytes, whole, at least `_FASTER`
        times faster. The same request on both: the active one's average holds its heavier
        multicall reads, and set against the other's one header it made an equal URL look
        faster, so two equal URLs swapped every few minutes. And the request a block costs,
        timed to its answer's last byte: a head is a small answer, and a URL whose heads were
        quick and whose reads were slow (a thin link, a node slow to execute calls) was never
        left while the rule compared heads. The same answer proves the other URL holds the
        block and its state (one that does not hold it answers that, and is not taken).
        Counted (`slow_switches`) and logged. Deterministic: the same answers and times give
        the same choice; nothing is asked while the active endpoint is fast."""
        active = self.rpc.active
        average = self.rpc.stats[active].latency_s
        now = self._clock.now_ms()
        if average is None or average < _SLOW_SHARE * self.cfg.timeout_s:
            return
        other = self.rpc.standby()
        if other is None or now < self._next_probe_ms:
            return
        self._next_probe_ms = now + int(_PROBE_S * 1000)
        read = self._layout()
        async with asyncio.TaskGroup() as tg:
            mine = tg.create_task(self._timed_read(active, read, block), name=f"{self.name}-probe")
            theirs = tg.create_task(self._timed_read(other, read, block), name=f"{self.name}-alt")
        slow, took = mine.result(), theirs.result()
        if slow is None or took is None or took[0] != slow[0] or took[1] * _FASTER > slow[1]:
            return
        self.rpc.prefer(other)
        self.stats.slow_switches += 1
        self._log.warning(
            "endpoint slower than another: switched", endpoint=self.rpc.stats[active].name,
            latency_ms=round(slow[1] * 1000), to=self.rpc.stats[other].name,
            to_latency_ms=round(took[1] * 1000), block=block.number,
        )  # fmt: skip

    async def _timed_read(self, index: int, data: bytes, block: Block) -> tuple[Any, float] | None:
        """Endpoint `index`'s answer to the read `data` pinned to `block`, and how long the
        whole answer took (send to last byte, decoded), or None when it gave none: a failure
        (counted on it by the client), or no such block on that node (not a failure)."""
        self.stats.round_trips += 1
        call = {"to": self.cfg.multicall, "data": "0x" + data.hex()}
        try:
            answer = await self.rpc.call_on(index, "eth_call", [call, _pin(block)])
        except (RpcError, RpcUnavailable):
            return None
        took = self.rpc.stats[index].last_latency_s
        return None if took is None or not isinstance(answer, str) else (answer, took)

    def _garbage(self, block: Block | None, exc: ValueError, method: str = "eth_call") -> None:
        """The endpoint answered the read, but not with an aggregate3 answer of our calls on
        that block (null, not hex, the wrong ABI length, another block's), or a poll with no
        block header (`method` says which): its fault, counted on
        it (`garbage`) and left for the next URL, as the client does with an answer that is not
        JSON-RPC. Without this the client keeps the endpoint that answered, and one that answers
        every head but garbles every read would keep the healthy URLs unused for good."""
        self.rpc.fail_active("garbage", f"{method}: {exc}"[:120])
        self._read_failed(block, exc)

    def _results(self, raw: Any, count: int) -> list[tuple[bool, bytes]]:
        """The (success, data) pairs of an aggregate3 answer. An empty answer is what an
        eth_call to an address without code returns: say so, it is a config to fix."""
        data = _hex_bytes(raw)
        if not data:
            raise ValueError(
                f"empty answer: no contract at the multicall address {self.cfg.multicall}"
            )
        return decode_aggregate3(data, count)

    async def _eth_call(self, data: bytes, pin: Any) -> Any:
        self.stats.round_trips += 1
        return await self.rpc.call(
            "eth_call", [{"to": self.cfg.multicall, "data": "0x" + data.hex()}, pin]
        )

    def _read_failed(self, block: Block | None, exc: Exception) -> None:
        self.stats.reads_failed += 1
        for slot in self._slots:
            slot.stats.state = ConnState.DOWN
        self._reject("read failed", block=block.number if block else None, error=str(exc)[:200])
        self._check_current()

    def _check_current(self) -> None:
        """No block read for max_block_age_s: the feeds' last values are flagged `chain_stale`
        now, not when each one's own heartbeat runs out (an hour for many Chainlink feeds). The
        chain may have moved on, with new rounds this reader cannot see."""
        if self._current and self._stalled():
            self._current = False
            self._log.warning(
                "chain not read: feeds flagged", max_block_age_s=self.cfg.max_block_age_s
            )
            self._reemit(self._clock.now_ms())

    def _reemit(self, now: int) -> None:
        """Every feed's last quote again, with the flags of the reader's state: its meaning
        changed now, and a feed publishes only data newer than what it has."""
        for slot in self._slots:
            if slot.last is not None:
                slot.emit(msgspec.structs.replace(self._flagged(slot, slot.last), recv_ts=now))

    def _flagged(self, slot: _Slot, quote: Quote) -> Quote:
        """`quote` flagged as the reader's state requires: `bad_answer` while the feed answers
        garbage or `reorged` while the chain no longer holds it, else the feed's own flag, else
        the chain's (`chain_stale`, `sequencer`)."""
        if slot.flag is not None:
            return msgspec.structs.replace(quote, flag=slot.flag)
        if quote.flag is not None:
            return quote
        if not self._current:
            return msgspec.structs.replace(quote, flag="chain_stale")
        if not self._sequencer_ok:
            return msgspec.structs.replace(quote, flag="sequencer")
        return quote

    def _reject(self, why: str, per: Hashable = None, **detail: Any) -> None:
        """Log a rejection when its kind changes, not on every block. The kinds an endpoint or
        a feed can cause on every attempt (`_EVERY_MINUTE`) are logged at most once a minute
        per kind (and `per`, a feed's), with the number since (`failures`): one that fails
        every other block, a socket that drops after each subscription while polls publish
        between, or a feed whose decode fails on every block while the others publish changed
        kind each time and wrote a line every block or every retry."""
        changed = why != self._last_rejection
        self._last_rejection = why
        if why in _EVERY_MINUTE:
            failures = self._reject_log.due((why, per), self._clock.monotonic())
            if failures is not None:
                self._log.warning(why, failures=failures, **detail)
        elif changed:
            self._log.warning(why, **detail)

    def _refusal(self, block: Block, **where: Any) -> str | None:
        """None when `block` is to be read; else why not: "same" (nothing new), "backwards",
        "future" or "too_old" (counted and logged, with `where` it came from). A block stamped
        further ahead of our clock than `max_clock_skew_ms` is refused as a venue's quote is:
        a node or a chain whose time runs ahead, and the multicall's time agreeing proves
        nothing. Before, such a block was published and, remembered as the newest, made a pool
        refuse every later block as `older_block` until the chain reached its time."""
        last = self._last
        if last is not None and block.number < last.number:
            self.stats.backwards += 1
            self._reject("block went backwards", block=block.number, last=last.number, **where)
            return "backwards"
        if last is not None and block.number == last.number:
            if block.hash == last.hash:
                return "same"
            self.stats.reorgs += 1
            self._log.warning("reorg at the head", block=block.number, hash=block.hash)
        age_ms = self._clock.now_ms() - block.timestamp * 1000
        if -age_ms > self.max_clock_skew_ms:
            self.stats.future_blocks += 1
            self._reject(
                "block from the future", block=block.number, ahead_ms=-age_ms,
                max_clock_skew_ms=self.max_clock_skew_ms, **where,
            )  # fmt: skip
            return "future"
        if age_ms > self.cfg.max_block_age_s * 1000:
            self.stats.old_blocks += 1
            self._reject("block too old", block=block.number, age_s=age_ms // 1000, **where)
            return "too_old"
        return None

    def _stalled(self) -> bool:
        """The last block read is older than max_block_age_s by our clock: no new block since."""
        last = self._last
        return last is not None and (
            self._clock.now_ms() - last.timestamp * 1000 > self.cfg.max_block_age_s * 1000
        )

    def _behind(self, block: Block, why: str, endpoint: str) -> None:
        """The polled endpoint answered a head that is not the chain's (it lags, is syncing or
        stalled; or, `future`, its time runs ahead: counted as `garbage`). Count it on that
        endpoint and leave it, as after a failed request: the client keeps the endpoint that
        answered, and one that answers from the past (or the future) would otherwise hold the
        reader until it caught up (or the chain caught up with it), however healthy the others."""
        last = self._last.number if self._last is not None else None
        kind = "garbage" if why == "future" else "behind"
        self.rpc.fail_active(kind, f"head {block.number} {why}, last read {last}")
        if why == "same":
            self._reject("no new block", block=block.number, endpoint=endpoint,
                         max_block_age_s=self.cfg.max_block_age_s)  # fmt: skip
        self._check_current()

    def _proven(self, block: Block, results: list[tuple[bool, bytes]]) -> bool:
        """The read ran on `block`, at its header's time and on the configured chain, by the
        multicall's own answers at the head of `results`; else refused (counted, logged) as
        the endpoint's fault. A read again carries them too: it is pinned as a read is, and
        a node that ignores the pin, or now serves another chain, answers it as well."""
        ok, proof = results[_AT_BLOCK]
        if not ok or int.from_bytes(proof, "big") != block.number:
            self._garbage(block, ValueError("the node executed the read on another block"))
            return False
        if _other_time(block, results[_AT_TIME]):
            self._garbage(block, ValueError("the block's time is not the one its header said"))
            return False
        return self._on_our_chain(block, results[_AT_CHAIN])

    async def _publish(self, block: Block, raw: Any, results: list[tuple[bool, bytes]]) -> bool:
        if not self._proven(block, results):
            return False
        if self.cfg.cross_check and len(self.rpc.urls) > 1:
            voted = await self._cross_check(block, raw)
            if voted is None:
                return False
            if voted is not raw:
                majority = self._majority(block, voted)
                if majority is None:
                    return False
                results = majority
        if self._last is not None and block.number < self._last.number:
            # A newer block was published while this one was being read: its values are older
            # than the ones out, so it is passed over, and counted as such (before: silently).
            self.stats.superseded += 1
            self._reject(
                "read passed over: a newer block was published meanwhile", block=block.number,
                last=self._last.number,
            )  # fmt: skip
            return False
        self._last = block
        self._last_rejection = None
        self.stats.blocks += 1
        self.stats.last_block, self.stats.last_block_ts = block.number, block.timestamp
        recv_ts = self._clock.now_ms()
        if not self._current:  # read again: the last values count until the feeds update them
            self._current = True
            self._log.warning("chain read again: feeds unflagged", block=block.number)
            self._reemit(recv_ts)
        state = ConnState.STREAMING if self.stats.mode == "newHeads" else ConnState.POLLING
        for slot in self._slots:
            slot.stats.state = state
            slot.stats.frames += 1
            slot.stats.last_frame_ms = recv_ts
        self._update_sequencer(block, results, recv_ts)
        pending = self._decode_all(self._slots, block, results, recv_ts)
        for _ in range(_MAX_REREADS):
            if not pending:
                break
            pending = await self._reread(pending, block)
        if pending:
            self._unfinished(pending, block, "still learning after two reads of the block")
        return True

    def _unfinished(self, slots: Sequence[_Slot], block: Block, why: str) -> None:
        """Feeds that learned from `block` (an aggregator, a pool's tokens) and wanted it read
        again, but whose read again did not come back (it failed, or they were still learning
        after `_MAX_REREADS`): the block was counted as their frame, so it is counted as their
        drop (`reread_failed`) and logged, at most once a minute. They are priced from the next
        block; the block itself stays read (the other feeds published from it)."""
        for slot in slots:
            slot.stats.dropped["reread_failed"] += 1
        held = self._unfinished_log.due("reread_failed", self._clock.now_ms() / 1000.0)
        if held is not None:
            self._log.warning(
                "feed read again failed: block not priced for it", block=block.number,
                feeds=[f"{s.feed.source_id}:{s.feed.pair}" for s in slots], why=why[:200],
                dropped=held,
            )  # fmt: skip

    def _decode_all(
        self, slots: Sequence[_Slot], block: Block, results: list[tuple[bool, bytes]], recv_ts: int
    ) -> list[_Slot]:
        """Hand every feed its results; return the feeds that changed their calls and said
        nothing (they learned something, e.g. an aggregator address, and want the same block
        read again with the new calls)."""
        pending: list[_Slot] = []
        for slot in slots:
            part = results[slot.start : slot.start + slot.count]
            try:
                out = slot.feed.decode(part, block, recv_ts)
            except (ValueError, ArithmeticError, IndexError) as exc:
                slot.stats.malformed += 1
                slot.stats.dropped["decode_error"] += 1
                self._reject(
                    "feed decode failed", (slot.feed.source_id, slot.feed.pair),
                    feed=slot.feed.pair, error=str(exc)[:200],
                )  # fmt: skip
                continue
            self._count_gaps(slot)
            if out is None:
                if slot.feed.calls() is not slot.calls:
                    pending.append(slot)
            elif isinstance(out, str):
                slot.stats.dropped[out] += 1
                if out in slot.feed.distrusting:
                    self._withdraw(slot, "bad_answer", block, recv_ts)
                elif out in slot.feed.reorged:
                    self._withdraw(slot, "reorged", block, recv_ts)
            else:
                self._emit(slot, out, block, recv_ts)
        return pending

    async def _reread(self, slots: list[_Slot], block: Block) -> list[_Slot]:
        every = self._prefix[:_AT_SEQUENCER]  # the proofs of block, chain and time, as a read's
        for slot in slots:
            slot.calls = slot.feed.calls()
            slot.start, slot.count = len(every), len(slot.calls)
            every.extend(slot.calls)
        self._calldata = None  # the block's layout changed too
        try:
            raw = await self._eth_call(encode_aggregate3(every), _pin(block))
            results = self._results(raw, len(every))
        except UnknownBlock as exc:
            # The block the first read had is not on this node now (a load-balanced node behind,
            # or a reorg): not a failing read, as in `_read`. Counted `unknown`, and the feeds
            # that wanted the block read again are priced from the next one; the others, which
            # published from this block, stay up.
            self.stats.unknown += 1
            self._unfinished(slots, block, f"block unknown to the node at its read again: {exc}")
            return []
        except ValueError as exc:
            self._garbage(block, exc)
            self._unfinished(slots, block, str(exc))
            return []
        except _READ_ERRORS as exc:
            self._read_failed(block, exc)
            self._unfinished(slots, block, str(exc))
            return []
        if not self._proven(block, results):
            self._unfinished(slots, block, "the read again ran on another block, time or chain")
            return []
        # Received now, not when the block was first read: other sources stamped quotes while
        # this answer was on the wire, and the tape is in receive-time order.
        return self._decode_all(slots, block, results, self._clock.now_ms())

    def _withdraw(self, slot: _Slot, flag: str, block: Block, now: int) -> None:
        """The feed's last quote is not to vote: it answered garbage (`bad_answer`), or the
        chain no longer holds that value (`reorged`). The quote again with that flag, once (the
        slot is excluded now, not when the feed's heartbeat runs out); the feed's next valid
        quote clears the flag. `bad_answer` is not replaced by `reorged`."""
        if slot.flag in (flag, "bad_answer"):
            return
        slot.flag = flag
        if slot.last is not None:
            if flag == "reorged":
                self._log.warning(
                    "published value reorged out: flagged", source=slot.feed.source_id,
                    pair=slot.feed.pair, block=slot.last.block, read_at=block.number,
                )  # fmt: skip
            slot.emit(msgspec.structs.replace(self._flagged(slot, slot.last), recv_ts=now))

    def _emit(self, slot: _Slot, quote: Quote, block: Block, recv_ts: int) -> None:
        if quote.block is None:
            quote = msgspec.structs.replace(
                quote, block=block.number, block_ts=block.timestamp * 1000
            )
        slot.last = quote
        slot.flag = None
        slot.emit(self._flagged(slot, quote))
        slot.stats.quotes += 1
        slot.stats.last_quote_ms = recv_ts

    def _update_sequencer(self, block: Block, results: list[tuple[bool, bytes]], now: int) -> None:
        """L2 only: the sequencer must be up and past its grace period, else flag every feed."""
        seq = self.cfg.sequencer
        if seq is None:
            return
        ok_call, data = results[_AT_SEQUENCER]
        up = False
        try:
            if ok_call:
                _, answer, started_at, _, _ = decode_round(data)
                up = answer == 0 and 0 < started_at < block.timestamp - seq.grace_period_s
        except ValueError:
            up = False
        self.stats.sequencer_up = up
        if up == self._sequencer_ok:
            return
        self._sequencer_ok = up
        self._log.warning("sequencer gate", up=up, block=block.number)
        self._reemit(now)  # the last quotes change meaning now, not at their next update

    def _on_our_chain(self, block: Block, proof: tuple[bool, bytes]) -> bool:
        """The read ran on the configured chain, by the multicall's own `getChainId()`. The
        start-up check asks each URL once, but the node behind a URL can change (a provider's or
        load balancer's fail-over to a node of another chain, a testnet or a fork where the same
        addresses hold other values): such a read is refused, counted on that endpoint
        (`wrong_chain`, which moves the reader to the next URL) and logged as an error. A multicall
        without `getChainId()` cannot say: warned once, and the start-up check is all there is."""
        ok, data = proof
        if not ok or len(data) != 32:
            if not self._chain_unproven:
                self._chain_unproven = True
                self._log.warning(
                    "multicall has no getChainId(): chain id checked at start only",
                    multicall=self.cfg.multicall,
                )
            return True
        chain_id = int.from_bytes(data, "big")
        if chain_id == self.cfg.chain_id:
            return True
        endpoint = self.rpc.stats[self.rpc.active].name  # the one that answered the read
        self.rpc.fail_active("wrong_chain", f"chain {chain_id}, not {self.cfg.chain_id}")
        self._log.error(
            "endpoint serves another chain: read refused", endpoint=endpoint,
            chain_id=chain_id, expected=self.cfg.chain_id, block=block.number,
        )  # fmt: skip
        self._read_failed(block, ValueError(f"read ran on chain {chain_id}"))
        return False

    async def _cross_check(self, block: Block, raw: Any) -> Any:
        """The same read on the next URL, pinned to the same block hash: the answer to publish,
        or None to withhold the block. An agreeing read, or none (no other URL can answer),
        lets the first stand; the next URL that cannot answer passes its turn to the one after.
        URLs on another host than the first read's come first: another key of the same
        provider is no independent check. After a disagreement every other URL is asked, and
        the reads settle it (`_vote`)."""
        first = self.rpc.active
        n = len(self.rpc.urls)
        hosts = self.rpc.hosts
        params = [{"to": self.cfg.multicall, "data": "0x" + self._layout().hex()}, _pin(block)]
        votes: list[tuple[int, Any]] = [(first, raw)]
        split = False
        others = [(first + k) % n for k in range(1, n)]
        for index in sorted(others, key=lambda i: hosts[i] == hosts[first]):  # stable: in order
            try:
                answer = await self.rpc.call_on(index, "eth_call", params)
            except (RpcError, RpcUnavailable):
                continue  # cannot say (down, resting, or the block unknown to it)
            votes.append((index, answer))
            if answer != raw:
                split = True
            elif not split:
                return raw
        return self._vote(block, votes) if split else raw

    def _vote(self, block: Block, votes: list[tuple[int, Any]]) -> Any:
        """Reads of one block that differ: the answer of more than half of the hosts that
        answered, at least two, is published; each endpoint that answered otherwise is counted
        `outvoted`, left (rested `_OUTVOTED_REST_S`) and logged. A host votes once however many
        of its URLs answered (`RpcClient.hosts`: two keys of one provider that lies must not
        outvote an honest third). With no majority (two hosts, or a tie) the block is withheld
        and counted (`disagreements`): nothing says which one lies."""
        hosts = self.rpc.hosts
        tally: list[tuple[Any, list[int]]] = []
        for index, answer in votes:
            for value, voters in tally:
                if value == answer:
                    voters.append(index)
                    break
            else:
                tally.append((answer, [index]))
        value, voters = max(tally, key=lambda t: len({hosts[i] for i in t[1]}))
        names = [self.rpc.stats[i].name for i, _ in votes]
        backers = len({hosts[i] for i in voters})
        if backers < 2 or 2 * backers <= len({hosts[i] for i, _ in votes}):
            self.stats.disagreements += 1
            self._log.warning(
                "endpoints disagree", block=block.number, first=names[0], second=names[1],
                endpoints=names,
            )  # fmt: skip
            return None
        for index, _ in votes:
            if index in voters:
                continue
            name = self.rpc.stats[index].name
            self.rpc.fail(index, "outvoted", f"block {block.number}: {len(voters)} reads differ")
            self.rpc.rest(index, _OUTVOTED_REST_S)
            self._log.warning(
                "endpoint outvoted: left", endpoint=name, block=block.number,
                agreeing=[self.rpc.stats[i].name for i in voters], rest_s=_OUTVOTED_REST_S,
            )  # fmt: skip
        return value

    def _majority(self, block: Block, raw: Any) -> list[tuple[bool, bytes]] | None:
        """The results of a majority's read that outvoted the first: checked as the first read
        was (an aggregate3 answer, run on this block and chain), else the block is withheld."""
        try:
            results = self._results(raw, self._total)
            ok, proof = results[_AT_BLOCK]
            chained, chain = results[_AT_CHAIN]
            if not ok or int.from_bytes(proof, "big") != block.number:
                raise ValueError("the majority's read ran on another block")
            if _other_time(block, results[_AT_TIME]):
                raise ValueError("the majority's read ran at another time")
            if chained and len(chain) == 32 and int.from_bytes(chain, "big") != self.cfg.chain_id:
                raise ValueError("the majority's read ran on another chain")
        except ValueError as exc:
            self._read_failed(block, exc)
            return None
        return results

    # -- block sources --------------------------------------------------------------------
    async def check_chain_id(self) -> None:
        """Refuse to read a node of another chain: every endpoint is asked, through web3, once
        (the answer cannot change). An endpoint that cannot answer now is logged and asked
        again at the reader's next start; at least one endpoint must answer. While none has
        and one rests (a provider's rate limit: its `Retry-After`, or the backoff), the check
        waits out the shortest rest and asks again, as the reader's polls would: a limited
        start is neither failed nor retried sooner than the provider asked."""
        while True:
            answered = False
            for index, st in enumerate(self.rpc.stats):
                if index in self._chain_checked:
                    answered = True
                    continue
                if self.rpc.rest_left_s(index) > 0:
                    continue  # rate-limited: asked once its rest is over
                try:
                    chain_id = await self.rpc.chain_id(index)
                except RpcUnavailable as exc:
                    self._log.warning("chain id unknown", endpoint=st.name, error=str(exc)[:200])
                    continue
                if chain_id != self.cfg.chain_id:
                    raise SourceError(
                        f"chain {self.name}: {st.name} is chain {chain_id}, not {self.cfg.chain_id}"
                    )
                self._chain_checked.add(index)
                answered = True
            if answered:
                return
            rests = [self.rpc.rest_left_s(i) for i in range(len(self.rpc.urls))]
            if not any(rests):
                raise RpcUnavailable(f"chain {self.name}: no endpoint answered eth_chainId")
            await asyncio.sleep(min(r for r in rests if r > 0))

    async def run(self) -> None:
        """Follow the chain until cancelled: newHeads when possible, else polling. Once it ends
        (a crash its supervisor restarts after a delay, a cancellation) the mode is `starting`
        again until the next poll: before, the delay showed the mode it had when it crashed,
        `new_heads` for a reader that read nothing."""
        try:
            await self._follow()
        finally:
            self.stats.mode = "starting"

    async def _follow(self) -> None:
        await self.check_chain_id()
        if self.cfg.heads_url is None:
            await self._poll_forever()
            return
        attempt = 0
        while True:
            heads = self._heads
            try:
                await self._follow_heads(self.cfg.heads_url)
            except (aiohttp.ClientError, OSError, TimeoutError, SourceError, ValueError,
                    msgspec.MsgspecError, RecursionError) as exc:  # fmt: skip
                # RecursionError: a message nested past the decoder's depth limit
                if not isinstance(exc, _HeadsLeft):  # those are counted by why they were left
                    self.stats.failed_left += 1
                self._reject("newHeads down, polling", error=self._heads_error(exc)[:200])
            if self._heads != heads:
                attempt = 0  # that subscription worked: this break starts the backoff again
            delay = backoff_delay(attempt, 1.0, 60.0, self._rng)
            attempt += 1
            backed_off = asyncio.Event()
            asyncio.get_running_loop().call_later(delay, backed_off.set)
            await self._poll(backed_off)

    def _heads_error(self, exc: BaseException) -> str:
        """The error without the WebSocket URL, which may carry an API key: a refused handshake's
        text is the URL whole (as the client normalised it, so it is not simply replaced)."""
        url = self.cfg.heads_url or ""
        if isinstance(exc, aiohttp.ClientResponseError):
            return f"{type(exc).__name__}: {exc.status}, {shown(exc.message)}, {redact(url)}"
        return f"{type(exc).__name__}: {exc}".replace(url, redact(url))

    async def _poll_forever(self) -> None:
        await self._poll(asyncio.Event())

    async def _poll(self, stop: asyncio.Event) -> None:
        """Poll every poll_interval_s until `stop` is set. A poll under way is finished, never
        cut: a block cut between its read and its feeds' second read would count as read."""
        self.stats.mode = "polling"
        while not stop.is_set():
            await self.poll_once()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.poll_interval_s):
                    await stop.wait()

    async def _follow_heads(self, url: str) -> None:
        opened = asyncio.Event()
        polling = asyncio.create_task(self._poll(opened))  # blocks go on while the socket opens
        try:
            async with self._http.ws_connect(url, heartbeat=30.0, autoping=True) as ws:
                # Heads from wherever the endpoint (or a proxy in the way) points are refused.
                if redirected_to(ws) is not None:
                    raise SourceError("newHeads handshake redirected to another URL")
                await ws.send_str(
                    '{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}'
                )
                ack = await ws.receive(timeout=self.cfg.timeout_s)
                if ack.type != aiohttp.WSMsgType.TEXT or '"result"' not in ack.data:
                    raise SourceError("newHeads subscription refused")
                opened.set()
                await polling
                await self.poll_once()  # the current head, without waiting for the next block
                self.stats.mode = "newHeads"
                self._log.info("following newHeads")
                await self._read_heads(ws)
        finally:
            opened.set()
            await polling  # its poll under way ends first; a cancellation of ours reaches it

    async def _read_heads(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Read the newest head each time one arrives, until the socket fails. A silence of
        `_silence_s` (three block times) costs one poll: a subscription can die on the node's
        side while its socket stays up and answers pings, and would otherwise blind the reader
        for max_block_age_s. A poll that finds a new block proves it: the socket is dropped
        (polling, then a new subscription); one that finds none means a quiet chain. Heads the
        reader refuses (`_usable`) do not break the silence: a socket that sends only heads
        from the future (a node whose clock runs ahead), or too old or gone backwards (a node
        stuck or syncing), delivers as little as a silent one. Before, each such head was
        counted and refused, the socket kept, and no poll ever made: the chain went quiet."""
        newest: list[Block] = []  # the newest head not read yet (at most one)
        arrived = asyncio.Event()
        listener = asyncio.create_task(self._listen(ws, newest, arrived))
        loop = asyncio.get_running_loop()
        heard = loop.time()  # the last usable head read, or the last poll that found nothing
        refused = 0  # heads refused since then
        try:
            while True:
                waiter = asyncio.create_task(arrived.wait())
                done, _ = await asyncio.wait(
                    (listener, waiter), timeout=max(0.0, heard + self._silence_s - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )  # fmt: skip
                if listener.done():
                    waiter.cancel()
                    listener.result()  # raises why the socket ended
                if not done:
                    waiter.cancel()
                    if await self.poll_once():
                        self._leave_heads(refused)
                    heard, refused = loop.time(), 0
                    continue
                arrived.clear()
                if await self._usable(newest.pop()):
                    heard, refused = loop.time(), 0
                else:
                    refused += 1
        finally:
            await _stop(listener)

    async def _usable(self, block: Block) -> bool:
        """Read a newHeads head as `read_block` does; False when it was refused as no head of
        the chain we follow (from the future, too old, below the last block read). One already
        read (a poll found it first) or whose read failed (the HTTP endpoint's fault) proves
        the subscription follows the chain."""
        why = self._refusal(block)
        if why is None:
            await self._read(block)
            return True
        self._check_current()
        return why == "same"

    def _leave_heads(self, refused: int) -> NoReturn:
        """A poll found a block the socket did not deliver in `_silence_s`: count why the
        socket is left and raise (`run` logs it, polls, then subscribes again)."""
        if refused:
            self.stats.refused_left += 1
            raise _HeadsLeft(
                f"newHeads sent only refused heads ({refused}) for {self._silence_s:g} s "
                "while the chain moved"
            )
        self.stats.silent_left += 1
        raise _HeadsLeft(f"newHeads silent for {self._silence_s:g} s while the chain moved")

    async def _listen(
        self, ws: aiohttp.ClientWebSocketResponse, newest: list[Block], arrived: asyncio.Event
    ) -> None:
        """Take notices off the socket while blocks are read: a head that a newer one passes
        before its read began is skipped (counted), so an endpoint slower than the chain costs
        blocks, not an ever-growing lag. A notice's header passes the checks of a polled one
        (`_block`): one that fails them is counted as a polled head that fails them is (a
        failed read), and skipped, the head before it still to be read. Before, `int(x, 16)`
        took a number "-0x5" as block -5, refused as a block gone backwards."""
        while True:
            msg = await ws.receive(timeout=self.cfg.max_block_age_s)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise SourceError(f"newHeads socket ended ({msg.type.name})")
            notice = _notice_decoder.decode(msg.data)
            if notice.params is None:
                continue
            try:
                block = _block(notice.params.result)
            except (ValueError, msgspec.ValidationError) as exc:
                self._read_failed(None, ValueError(f"newHeads notice: {exc}"))
                continue
            self._heads += 1
            if newest:
                self.stats.superseded += 1
            newest[:] = [block]
            arrived.set()
