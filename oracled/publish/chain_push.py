"""The on-chain pusher: Chainlink-style updates of the project's `OracledFeed` contract.

A market is pushed when its price moved by at least its deviation threshold since the last
price on chain, or when its heartbeat passed since then (both per market or global, `[push]`).
Only `active` prices are pushed, ever: paused, unknown and degraded markets are skipped and
counted by reason. A pause is explicit on chain: a market paused or unknown whose chain entry
is a price (not already a pause) gets a pause entry at the next look, in the same transaction
as the prices, so that the contract's `latest` refuses its frozen price; its next active price
clears it. A degraded market gets none (it is live, with a warning): its price just ages. Nor
does, for `start_grace_s` after a start, a market unknown and not active since: every market is
unknown until its gates have seen enough rounds, and a restart must not pause and resume every
market on chain (two batches of gas a market) for the seconds that takes. A market a reload
removed gets a pause entry too (nothing would write it again); the pusher remembers every
market of the process's layouts for that, but a restart without it cannot know it, unless the
start-up scan (`push.scan_from_block`) is on: the looks after a start then read the contract's
`PriceUpdated` logs in bounded ranges, and pause each market with a live price on chain that
this config does not push (not in it, or left out of `push.markets`). A price
past the contract's `int128` is skipped (`overflow`) and its chain price paused: the config
check refuses such a bound, and one bad market must not crash every push.

The pusher runs in its own task. The round loop only calls `submit(result)`, which replaces the
latest result (a queue of one: a slow chain makes pushes sparser, it never stalls a round nor
makes them queue up). Each step looks at the latest result, and sends at most one transaction at
a time: one `updateBatch` of the most due markets (largest deviation or most overdue first, at
most `max_batch`), signed locally with an EIP-1559 fee that never exceeds `max_gas_price_gwei`.

Nonces are the pusher's own: read from the chain at start (the mined count, so transactions a
previous run left pending are replaced rather than queued behind, by a transaction without
markets when none is due), then counted locally and re-read when the node says a nonce is too
low (or too high), when a transaction waits behind a nonce the chain lost (a reorganisation
took a confirmed push off it), or when the last confirmed push is gone once
`recheck_depth_blocks` blocks are on top of its block. A transaction not mined after
`replace_after_s` is replaced by one with the same nonce, fees raised by 12.5 % (the node's
minimum bump is 10 %; over the last replacement refused as underpriced, if one was) and the
latest prices (never a market's price paused since: its pause entry instead); when the cap
leaves no room for that bump the pusher waits and counts `gas_cap`, unless the node no longer
knows the transaction (evicted, or lost by the RPC): then the nonce is free and it is sent
again at the current fees. One that carries a market no longer active (paused since it was
sent) is replaced at the next look, not after `replace_after_s`, by one with that market's
pause entry instead of its price, so that no block after that look mines its old price. The
contract ignores an entry that is not newer than what it stores, so a replaced transaction and
its replacement can never move a market back in time, nor a late price clear a pause.

The task supervises itself, as the NATS sink does: an unreachable node, or an answer it cannot
read (a base fee, gas estimate or nonce that is not a hex quantity, a receipt without a status),
is logged and retried with a backoff; a crash (a bug) is logged with its traceback, counted in
`restarts`, and the pusher starts again from the chain's state after a backoff (1 s doubling to
30 s). Only a `PushError` (wrong chain, no contract, a contract that is not OracledFeed version
2) ends it: a restart would find the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import numpy as np
import structlog

from oracled.bands import BAND_SLACK
from oracled.clock import Clock
from oracled.config import PUSH_PRICE_MAX, ChainConfig, PushConfig
from oracled.errors import ConfigError, OracledError, shown
from oracled.eth import keccak, recursion_limit_kept, selector
from oracled.jsonrpc import EndpointStats, RpcClient, RpcError, RpcUnavailable, UnknownBlock
from oracled.lograte import LogEveryMinute
from oracled.model import Status
from oracled.publish.feed_abi import decode_latest_many, encode_latest_many
from oracled.publish.signer import SigningKey, decimal_to_int, load_signing_key

if TYPE_CHECKING:
    from oracled.core import RoundResult

__all__ = [
    "SKIP_REASONS",
    "TX_RESULTS",
    "ChainPusher",
    "PushError",
    "PushStats",
    "load_push_key",
    "market_id",
]

#: Why a market was not pushed in a round the pusher looked at.
#: `overflow`: an active price whose mantissa does not fit the contract's `int128 price` (a
#: config check refuses a market whose price bound allows one; this guards the pusher anyway).
SKIP_REASONS: Final = ("paused", "unknown", "degraded", "overflow")
#: What happened to transactions: sent (new nonce), replaced (same nonce, higher fee), confirmed
#: (mined, status 1), reverted (mined, status 0), error (refused by the node), gas_cap (a push
#: or a replacement held back because the fee it needs is above the cap).
TX_RESULTS: Final = ("sent", "replaced", "confirmed", "reverted", "error", "gas_cap")
_GWEI: Final = 10**9
_BUMP_NUM, _BUMP_DEN = 9, 8  # +12.5 %: above the 10 % a node demands of a replacement
_GAS_MARGIN: Final = 1.25
_GAS_BASE, _GAS_PER_MARKET = 60_000, 32_000  # a first write of a market: one new slot + event
#: A gas estimate over this many times that least is no estimate of the call (a bad answer).
_ESTIMATE_MAX_FACTOR: Final = 4
#: The hashes sent for the nonce in flight that are kept, the newest: more than the bumps of
#: 12.5 % from 1 gwei to a 1,000 gwei cap. A node that takes each one and loses it (an RPC
#: behind a balancer) had a hash sent again at every `replace_after_s` for as long as it went
#: on, each kept and asked about at every look; a hash let go that is mined after all is taken
#: for another program's transaction (`nonce used by another transaction`).
_HASHES_KEPT: Final = 64
#: The contract's one write of a round's prices and pauses (OracledFeed version 2).
_PUSH_BATCH: Final = selector("pushBatch(uint64,uint48,bytes32[],int128[],int8[],bytes32[])")
#: The contract version the pusher speaks: `pushBatch`, and `latestMany` with the paused flag.
FEED_VERSION: Final = 2
_VERSION: Final = selector("VERSION()")
#: The topic of `PriceUpdated(bytes32 indexed market, ...)`, which every stored price emits:
#: the start-up scan (`push.scan_from_block`) reads the markets ever priced from its logs.
_PRICE_UPDATED: Final = "0x" + keccak(b"PriceUpdated(bytes32,int128,int8,uint64,uint48)").hex()
#: Markets a `latestMany` call reads at most. A node caps an `eth_call`'s gas (geth's default
#: is 50M, many providers set less) and the client caps an answer at 16 MiB: measured on anvil,
#: the call takes 3,840 gas a market at 500 (1.9M, an 80 KB answer), 4,070 at 1,000 and 6,050
#: at 5,000 (30.3M: memory costs grow with its square), so one call for every market would be
#: refused at every look past a few thousand. More markets are read in calls of this many, all
#: pinned to one block (`_read_feeds`).
_READ_CHUNK: Final = 500
#: A read pinned to a block that a reorganisation took away (`UnknownBlock`): the chain's doing,
#: not a refusal of the request, so not counted as one; the read is tried again.
_REORGANISED: Final = "chain reorganised under a read; retrying"
#: `eth_getLogs` ranges a look asks for at most while the scan runs: pushes go on between.
_SCAN_RANGES_A_LOOK: Final = 8
#: Ranges answered in a row after which a halved span doubles again (at most `scan_max_blocks`).
_SCAN_GROW_AFTER: Final = 8
#: One 32-byte word as a node writes it (a topic, a `VERSION` answer): ASCII hex digits only,
#: as `bytes.fromhex` takes them (`int(_, 16)` also takes `_` and other scripts' digits).
_WORD: Final = re.compile(r"0x[0-9a-fA-F]{64}")
_STATUS_NAMES: Final = tuple(s.label for s in Status)
_RESTART_MAX_S: Final = 30.0
#: Prices at or above this many units of their last digit are checked exactly against the
#: contract's int128 (a float's rounding is far below the margin of 2**126 to 2**127).
_NEAR_INT128: Final = float(2**126)
#: Refusals of a transaction that mean the pusher's nonce is not the chain's: re-read it.
#: "nonce too high": a node that takes no nonce ahead of the pool's (most queue it);
#: "already known" (geth), "transaction already imported" (anvil), "known transaction" (Besu):
#: this very transaction is in the pool already.
_NONCE_OUT_OF_STEP: Final = (
    "nonce too low",
    "nonce too high",
    "already known",
    "transaction already imported",
    "known transaction",
)


class _BadAnswer(RpcUnavailable):
    """The node answered, but not in a form the pusher can read: retried as an unreachable
    node is, counted, and logged under events of its own."""


class PushError(OracledError):
    """The pusher cannot run with what it was given (wrong chain, no contract at the address,
    a contract of another version than `FEED_VERSION`)."""


def market_id(market: str) -> bytes:
    """The contract's key of a market: keccak256 of its symbol (as the signed leaves hash it)."""
    return keccak(market.encode())


def _chain_id(key: str) -> bytes:
    """The contract's key of a market the pusher tracks: its symbol's hash, or, for a market the
    start-up scan found on chain and no config names, that hash itself, written `0x` and 64 hex
    digits (no symbol can be: a symbol is `BASE/QUOTE`)."""
    return bytes.fromhex(key[2:]) if key.startswith("0x") else market_id(key)


def load_push_key(cfg: PushConfig) -> SigningKey:
    """The pusher's key from `push.key_file` or `push.key_env` (file mode 600 enforced)."""
    try:
        return load_signing_key(cfg.key_file, cfg.key_env)
    except ConfigError as exc:  # the signer's loader names its own table; this key is ours
        raise ConfigError([p.replace("signing", "push", 1) for p in exc.problems]) from None


@dataclass(slots=True)
class PushStats:
    """Plain counters read by the metrics collector at scrape time."""

    transactions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TX_RESULTS, 0))
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    updates: int = 0  # market prices confirmed on chain
    pauses: int = 0  # pause entries confirmed on chain (markets marked paused)
    pending: bool = False  # a transaction is in flight
    nonce: int = -1  # the next nonce the pusher will use (-1 before start)
    # True from a successful start until run() ends or crashes; it ends only on PushError (wrong
    # chain, no contract, a contract not of version 2), with one log line, so this is the only
    # lasting sign that pushing stopped.
    up: bool = False
    bad_answers: int = 0  # node answers the pusher could not read (retried)
    #: Requests the node refused as their own fault (a JSON-RPC error) where no step acts on the
    #: refusal: retried, and not counted against the endpoint, which answered.
    refused: int = 0
    restarts: int = 0  # the task started again after a crash (a bug)
    #: The push chain's name and its RPC client's endpoints (empty until the pusher is built):
    #: exported in the chain readers' RPC families, as `client="pusher"`, so that a push RPC
    #: failing over or rate-limited shows as a reader's does.
    chain: str = ""
    endpoints: list[EndpointStats] = field(default_factory=list)


@dataclass(slots=True)
class _Stored:
    """What the chain holds for a market, as far as the pusher knows (float for comparisons)."""

    price: float
    ts: int  # ms, the round time of the stored entry (the price's, or the pause's)
    paused: bool = False  # the entry is a pause: `price` is the last good one


@dataclass(slots=True)
class _Batch:
    round: int
    ts: int
    markets: list[str]
    prices: list[int]
    expos: list[int]
    paused: list[str] = field(default_factory=list)  # pause entries of this round

    @property
    def entries(self) -> int:
        """Prices and pauses: what the gas floor and the batch size count."""
        return len(self.markets) + len(self.paused)

    def calldata(self) -> bytes:
        from eth_abi.abi import encode  # imported with eth-account: see `ChainPusher`

        ids = [_chain_id(m) for m in self.markets]
        args = encode(
            ["uint64", "uint48", "bytes32[]", "int128[]", "int8[]", "bytes32[]"],
            [
                self.round,
                self.ts,
                ids,
                self.prices,
                self.expos,
                [_chain_id(m) for m in self.paused],
            ],
        )
        return _PUSH_BATCH + args


@dataclass(slots=True)
class _Scan:
    """The start-up scan of `PriceUpdated` logs: where it is, kept across a crash and a failed
    look (it goes on from there), and the market ids found so far."""

    next_block: int
    span: int  # blocks a request spans: `scan_max_blocks`, halved while refused
    end: int | None = None  # the head when the scan began (None: not read yet)
    answered: int = 0  # ranges answered in a row at this span
    requests: int = 0
    found: dict[bytes, None] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class _Confirmed:
    """The last confirmed push, until it is `recheck_depth_blocks` deep."""

    nonce: int
    tx_hash: str
    block: int


@dataclass(slots=True)
class _InFlight:
    nonce: int
    batch: _Batch
    max_fee: int
    tip: int
    sent_at: float  # clock.monotonic()
    sent: list[tuple[str, _Batch]] = field(default_factory=list)  # (tx hash, its batch)
    capped: bool = False  # a replacement was already held back by the cap (counted once)


class ChainPusher:
    """Pushes due markets of the latest round to an OracledFeed; see the module docstring.

    `start()` checks the chain and reads the nonce and the stored prices; `step()` does one
    round of work (confirm or replace the transaction in flight, else send the next batch);
    `run()` is both in a loop, for the service. Tests drive `step()` directly.
    """

    def __init__(
        self,
        cfg: PushConfig,
        chain: ChainConfig,
        key: SigningKey,
        session: aiohttp.ClientSession,
        clock: Clock,
        *,
        stats: PushStats | None = None,
    ) -> None:
        if cfg.contract is None:
            raise PushError("push.contract is not set")
        if not chain.resolved_urls:
            raise PushError("the push chain has no RPC URL")
        # eth-account signs the transactions (and brings eth-abi, which encodes them). Imported
        # here, not with this module: about 2 s of imports (py_ecc computes BLS pairing tables)
        # that a daemon without a pusher never pays.
        with recursion_limit_kept():  # py_ecc raises it: see there
            from eth_account import Account

        self._sign_transaction = Account.sign_transaction
        self.cfg = cfg
        self.chain = chain
        self.contract: str = cfg.contract
        self.address = key.address
        self._secret = bytes.fromhex(key.hex()[2:])
        self.rpc = RpcClient(chain.resolved_urls, session, timeout_s=chain.timeout_s, clock=clock)
        self._session = session
        self.clock = clock
        self.stats = stats if stats is not None else PushStats()
        self.stats.chain, self.stats.endpoints = cfg.chain or "", self.rpc.stats
        self._latest: RoundResult | None = None
        self._wakeup = asyncio.Event()
        self._stored: dict[str, _Stored] = {}
        self._inflight: _InFlight | None = None
        self._confirmed: _Confirmed | None = None
        self._nonce = -1
        # The nonces below this may hold a transaction the pusher does not track: one a previous
        # run (or another user of the key) left pending (the pending count at start), or a send
        # whose answer never came (the node may have taken it)
        self._left_until = 0
        # (nonce, max_fee, tip): what a push at that nonce must outbid (a node refused it as
        # underpriced: a transaction of ours, or of a previous run, holds the nonce)
        self._fee_floor: tuple[int, int, int] | None = None
        self._counted_round = -1
        # For `start_grace_s`: the first round this pusher looked at, and the markets it saw
        # active since (an `unknown` one of those is stopped, not still starting).
        self._first_ts: int | None = None
        self._was_active: set[str] = set()
        # Markets per transaction: `max_batch`, lowered when a batch would not fit in a block
        # (the gas limit of the latest block, read with its base fee; None: not said).
        self._batch_cap = cfg.max_batch
        self._fitted = 0  # pushes confirmed since `_batch_cap` last changed
        self._block_gas: int | None = None
        self._capped = False
        self._failing: str | None = None  # the failure logged for the current episode
        self._step_lines = LogEveryMinute()  # a step that failed on the node, by its log event
        self._started = False
        # The layout whose markets' chain entries were read (None: read again at the next look,
        # which needs a round's markets), and the markets read since the last full read.
        self._read_layout: object | None = None
        self._read_markets: set[str] = set()
        # Every market of every layout this process looked at, kept across a crash and a
        # re-read: one a reload removed is still read, and paused on chain (`_due`).
        self._known: dict[str, None] = {}
        # The start-up scan (`push.scan_from_block`) while it runs; the ids it found, until a
        # round's layout names them; and the keys of the markets it found.
        start = cfg.scan_from_block
        self._scan = _Scan(start, cfg.scan_max_blocks) if start is not None else None
        self._found: list[bytes] = []
        self._scanned: set[str] = set()
        # (layout, its markets, those this config pushes)
        self._layout_set: tuple[object, frozenset[str], frozenset[str]] | None = None
        self._overflowed: set[str] = set()  # markets whose price does not fit (logged once)
        self._removed_logged: set[str] = set()  # markets paused as no longer configured
        self._only = frozenset(cfg.markets)
        self._log = structlog.get_logger("oracled").bind(component="push")
        self.restart_base_s = 1.0  # the first backoff after a crash (tests shorten it)
        self.read_chunk = _READ_CHUNK  # markets a `latestMany` call at most (tests lower it)

    # -- the round side -----------------------------------------------------------------------

    def submit(self, result: RoundResult) -> None:
        """Make `result` the one the next step looks at (replacing any not looked at yet)."""
        self._latest = result
        self._wakeup.set()

    def reconfigure(self, cfg: PushConfig) -> None:
        """Take a reload's `recheck_depth_blocks` and `grow_batch_after`, read at their next use
        (the push held for its recheck is looked for at the new depth; a lowered batch grows
        once the pushes confirmed at it reach the new count). The rest of `[push]` (the chain,
        key, contract, fees) is only read at start: a reload keeps it (`reload.RESTART_ONLY`)."""
        update = {k: getattr(cfg, k) for k in ("recheck_depth_blocks", "grow_batch_after")}
        self.cfg = self.cfg.model_copy(update=update)

    # -- the task -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Start (retrying while the node is unreachable), then step every `interval_s`; a
        crash is logged, counted and followed by a new start after a backoff. Ends only on a
        PushError (raised). `stats.up` is True from a successful start until a crash or the end.
        """
        delay = self.restart_base_s
        while True:
            started = self.clock.monotonic()
            try:
                await self._run_once()
            except Exception as exc:
                if isinstance(exc, PushError):
                    raise
                if self.clock.monotonic() - started > 60.0:
                    delay = self.restart_base_s  # ran a minute: the backoff starts over
                self.stats.restarts += 1
                self._log.exception("on-chain push crashed; restarting", delay_s=delay)
                self._reset()
            await asyncio.sleep(delay)
            delay = min(delay * 2.0, _RESTART_MAX_S)

    def _reset(self) -> None:
        """Forget what a crashed run knew: the next start reads the chain again (nonce, stored
        prices; a transaction left pending is replaced), and the round that may have caused the
        crash is dropped: the next round is looked at."""
        self._started = False
        self._forget_read()
        self._inflight, self._fee_floor, self._latest = None, None, None
        self._confirmed = None
        self.stats.pending = False
        self._stored.clear()

    async def _run_once(self) -> None:
        """A step that fails on the node (unreachable, refusing a request on its merits where
        no step acts on the refusal, or answering in a form the pusher cannot read) is logged
        and retried, backing off while it lasts: ending this task would stop on-chain
        pushing."""
        try:
            await self._start_retrying()
            self.stats.up = True
            failing = 0
            while True:
                try:
                    await self.step()
                    failing = 0
                except _BadAnswer as exc:
                    failing += 1
                    self._step_failed("bad answer from the node; retrying", exc, error=True)
                except RpcUnavailable as exc:
                    failing += 1
                    self._step_failed("chain unreachable", exc)
                except UnknownBlock as exc:  # the block a read was pinned to: reorganised away
                    failing += 1
                    self._step_failed(_REORGANISED, exc)
                except RpcError as exc:  # the node read the request and refused it
                    failing += 1
                    self.stats.refused += 1
                    self._step_failed("request refused by the node; retrying", exc)
                if failing:
                    await asyncio.sleep(_retry_delay_s(self.cfg.interval_s, failing))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.cfg.interval_s):
                        await self._wakeup.wait()
                self._wakeup.clear()
                if self._inflight is None:
                    # Let a few rounds accumulate between pushes: one look per interval.
                    await asyncio.sleep(self.cfg.interval_s)
        finally:
            self.stats.up = False

    def _step_failed(
        self, event: str, exc: Exception, *, error: bool = False, **fields: float
    ) -> None:
        """Log a failed step (or start) at most once a minute per kind, with the number of
        failed looks since its last line (`failures`): a node down for an hour was a line every
        30 s."""
        failures = self._step_lines.due(event, self.clock.monotonic())
        if failures is not None:
            log = self._log.error if error else self._log.warning
            log(event, error=str(exc), failures=failures, **fields)

    async def _start_retrying(self) -> None:
        """start() until it succeeds: an unreachable node at start-up is waited for, and logged
        as a failed step is, once a minute with the failed starts since (its backoff reached
        a line every 30 s, seven in the first minute). A node that answered in a form the start
        cannot read, or refused a request as its own fault, is retried the same way under its own
        event (the one a step uses for a refusal): an operator told "unreachable" would look at
        the network, not at what the endpoint answers."""
        delay = 0.5
        while not self._started:
            try:
                await self.start()
            except (RpcUnavailable, RpcError) as exc:  # RpcError: a code not failed over
                if isinstance(exc, UnknownBlock):
                    event = _REORGANISED
                elif isinstance(exc, RpcError):
                    self.stats.refused += 1
                    event = "request refused by the node; retrying"
                elif isinstance(exc, _BadAnswer):
                    event = "chain answer unreadable; retrying"
                else:
                    event = "chain unreachable; retrying"
                self._step_failed(event, exc, delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2.0, 30.0)

    async def start(self) -> None:
        """Check the chain id and the contract (its code and `VERSION`); read the nonce and the
        prices stored on chain."""
        chain_id = await self._quantity("eth_chainId", [])
        if chain_id != self.chain.chain_id:
            raise PushError(f"the node serves chain {chain_id}, not {self.chain.chain_id}")
        code = await self.rpc.call("eth_getCode", [self.contract, "latest"])
        if not isinstance(code, str) or not code.startswith("0x"):
            # A null is no answer, not an empty account: a PushError here ended the pusher for
            # the life of the daemon on one bad answer at start.
            self.stats.bad_answers += 1
            raise _BadAnswer(f"eth_getCode: {shown(code)} is not code")
        if code == "0x":
            raise PushError(f"no contract at {self.contract}")
        mined = await self._quantity("eth_getTransactionCount", [self.address, "latest"])
        pending = await self._quantity("eth_getTransactionCount", [self.address, "pending"])
        self._nonce = self.stats.nonce = mined
        self._left_until = pending
        await self._check_version()
        if pending > mined:
            self._log.warning(
                "transactions of a previous run are pending; the next pushes replace them",
                mined=mined,
                pending=pending,
            )
        await self._read_stored()
        self._started = True
        self._log.info(
            "pusher started",
            contract=self.contract,
            pusher=self.address,
            nonce=mined,
            markets_on_chain=len(self._stored),
        )

    async def _check_version(self) -> None:
        """A PushError unless the contract says `VERSION` 2. Version 1 has no `VERSION` (the
        call reverts): its `latestMany` answers four fields a market, which read as a bad answer
        at every look, retried for ever, and it has no `pushBatch`. A contract that answers no
        32-byte word, nor reverts, is a bad answer (retried), as a null code is."""
        call = {"to": self.contract, "data": "0x" + _VERSION.hex()}
        try:
            raw = await self.rpc.call("eth_call", [call, "latest"])
        except RpcError as exc:  # code 3 (anvil, geth with data), -32000 "execution reverted"
            if exc.code != 3 and "revert" not in exc.message.lower():
                raise
            raw = "0x"
        if raw == "0x":  # reverted, or a fallback that answers nothing: no VERSION
            found = None
        elif isinstance(raw, str) and _WORD.fullmatch(raw):
            found = int(raw, 16)
        else:
            self.stats.bad_answers += 1
            raise _BadAnswer(f"eth_call VERSION(): {shown(raw)} is not a version")
        if found != FEED_VERSION:
            said = "no VERSION (version 1)" if found is None else f"VERSION {found}"
            raise PushError(
                f"the contract at {self.contract} on chain {self.stats.chain} "
                f"({self.chain.chain_id}) is not OracledFeed version {FEED_VERSION}: it has {said}"
            )

    async def _quantity(self, method: str, params: list[Any]) -> int:
        """A hex quantity the node answers; RpcUnavailable if the answer is none (a null, a
        number in another form): a node misbehaving at start is waited for, as an unreachable
        one, not a crash that ends the pusher for the life of the daemon."""
        return self._hex(method, await self.rpc.call(method, params))

    def _hex(self, what: str, answer: Any) -> int:
        """`answer` as a hex quantity; a counted _BadAnswer if it is not one."""
        if isinstance(answer, str) and answer.startswith("0x"):
            with contextlib.suppress(ValueError):
                return int(answer, 16)
        self.stats.bad_answers += 1
        raise _BadAnswer(f"{what}: {shown(answer)} is not a hex quantity")

    async def _base_fee(self) -> int:
        """The latest block's base fee (0 on a chain without EIP-1559)."""
        block = await self.rpc.call("eth_getBlockByNumber", ["latest", False])
        if not isinstance(block, dict):
            self.stats.bad_answers += 1
            raise _BadAnswer(f"eth_getBlockByNumber: {shown(block)} is not a block")
        limit = block.get("gasLimit")
        self._block_gas = int(limit, 16) if isinstance(limit, str) and _is_hex(limit) else None
        base = block.get("baseFeePerGas")
        return 0 if base is None else self._hex("eth_getBlockByNumber baseFeePerGas", base)

    def _forget_read(self) -> None:
        """The chain's entries are read again at the next look (a crash, a reorganisation)."""
        self._read_layout = None
        self._read_markets.clear()

    async def _read_stored(self) -> None:
        """Read what the chain stores for the markets not read yet: at the first look, for
        the markets a reload added, and again after `_forget_read`, for every market known
        (those a reload removed too). Nothing when the layout was read already."""
        result = self._latest
        if result is None or result.layout is self._read_layout:
            return
        self._known.update(dict.fromkeys(result.layout.markets))
        if self._found or any(key.startswith("0x") for key in self._scanned):
            self._name_scanned([m for m in self._known if not m.startswith("0x")])
        markets = [m for m in self._known if m not in self._read_markets]
        if not markets:
            self._read_layout = result.layout
            return
        feeds = await self._read_feeds(markets)
        # Only now: a failed read is tried again, never taken as "nothing".
        self._read_layout = result.layout
        self._read_markets.update(markets)
        for market, (price, expo, ts, paused) in zip(markets, feeds, strict=True):
            if ts > 0:
                self._stored[market] = _Stored(price * 10.0**expo, ts, paused)

    async def _read_feeds(self, markets: list[str]) -> list[tuple[int, int, int, bool]]:
        """(price, expo, ts, paused) of each market, as the chain stores it: `latestMany` in
        calls of `read_chunk` markets (`_READ_CHUNK`). Several calls are pinned to one block by
        hash (EIP-1898, `requireCanonical`), the latest when the read begins, so that a read
        never mixes two chain states: a reorganisation that takes the block away fails the read
        (`UnknownBlock`), as a chunk the node fails or answers unreadably does; the look is
        retried whole. One call alone reads one state, and is sent unpinned as before (a
        balancer's node behind the head would refuse a pin to the head)."""
        chunks = [markets[i : i + self.read_chunk] for i in range(0, len(markets), self.read_chunk)]
        call: list[Any] = [] if len(chunks) == 1 else [await self._head_pin()]
        feeds: list[tuple[int, int, int, bool]] = []
        for chunk in chunks:
            data = "0x" + encode_latest_many([_chain_id(m) for m in chunk]).hex()
            raw = await self.rpc.call("eth_call", [{"to": self.contract, "data": data}, *call])
            try:
                # numpy over the words, not eth-abi: 1,000 markets held the loop 36 to 67 ms
                if not isinstance(raw, str):
                    raise ValueError("not a hex string")
                got = decode_latest_many(bytes.fromhex(raw[2:]))
                if len(got.ts) != len(chunk):
                    raise ValueError(f"{len(got.ts)} feeds for {len(chunk)} markets")
            except ValueError as exc:  # a decoding error, a result that is not hex
                self.stats.bad_answers += 1
                raise _BadAnswer(f"eth_call latestMany: {shown(raw)} unreadable ({exc})") from None
            feeds += zip(got.price, got.expo, got.ts, got.paused, strict=True)
        return feeds

    async def _head_pin(self) -> dict[str, Any]:
        """The latest block as an EIP-1898 pin that holds only while it is canonical."""
        block = await self.rpc.call("eth_getBlockByNumber", ["latest", False])
        found = block.get("hash") if isinstance(block, dict) else None
        if not isinstance(found, str) or not _WORD.fullmatch(found):
            self.stats.bad_answers += 1
            raise _BadAnswer(f"eth_getBlockByNumber: {shown(block)} has no block hash")
        return {"blockHash": found, "requireCanonical": True}

    def _name_scanned(self, markets: Sequence[str]) -> None:
        """The scan's markets under the names `markets` give them, by their id where no name
        does (a market no config of this process names). `markets`: every market of this
        process's layouts, not only the current one's: a market a reload removed before the
        scan ended is tracked under its name already (tracked under its id too, it was paused
        twice in one batch, and counted twice). A reload that adds a market known by its id
        renames it: its entry is read again under its name, and the id's entry is forgotten
        (a pause of the id and the name's price in one call would keep the price, and leave
        the id taken for paused)."""
        names = {market_id(m): m for m in markets}
        for key in [k for k in self._scanned if k.startswith("0x")]:
            name = names.get(bytes.fromhex(key[2:]))
            if name is not None:
                self._scanned.discard(key)
                self._scanned.add(name)
                self._known.pop(key, None)
                self._stored.pop(key, None)
                self._read_markets.discard(key)
                self._rename_in_flight(key, name)
        keys = [names.get(i, "0x" + i.hex()) for i in self._found]
        self._found = []
        self._scanned.update(keys)
        self._known.update(dict.fromkeys(keys))

    def _rename_in_flight(self, key: str, name: str) -> None:
        """The id's pause entry in the transaction in flight, under the market's name (the same
        calldata): its confirmation then marks the name's entry paused. Left under the id, it
        went to the entry just forgotten, and the name's, read while the pause was pending,
        passed for a live price: an active market stayed paused on chain until its heartbeat."""
        inflight = self._inflight
        if inflight is None:
            return
        for batch in (inflight.batch, *(sent for _, sent in inflight.sent)):
            if key in batch.paused:
                batch.paused = [name if k == key else k for k in batch.paused]

    async def step(self) -> None:
        """One unit of work: settle or replace the transaction in flight, else push what is due."""
        if not self._started:
            await self.start()
        if self._scan is not None:
            await self._scan_look(self._scan)
        await self._read_stored()
        if self._inflight is not None:
            await self._settle(self._inflight)
            return
        result = self._latest
        if result is None:
            return
        batch = self._due(result)
        if batch is None:
            # Nothing to push, so no push behind it would show a lost nonce: look for it.
            if self._confirmed is not None and not await self._still_mined(self._confirmed):
                return  # the chain is read again at the next look
            if self._nonce >= self._left_until:
                return
            # A push a previous run left pending holds this nonce (or one sent unanswered may),
            # with prices from before, perhaps of a market paused since: it would land whenever
            # the fees let it. Nothing is due, so it is replaced by one that carries no market.
            batch = _Batch(result.round, result.ts, [], [], [])
        fees = await self._fees()
        if fees is None:
            return
        await self._send(batch, self._nonce, *fees, replacing=None)

    # -- the start-up scan ---------------------------------------------------------------------

    async def _scan_look(self, scan: _Scan) -> None:
        """A look's share of the scan: up to `_SCAN_RANGES_A_LOOK` ranges of `PriceUpdated`
        logs, so that pushes go on meanwhile. A failure is logged (once a minute) and the
        scan goes on at the next look from where it stopped, never holding a push back. Once
        past the head the scan began at, the markets found are read (`latestMany`) at this
        look, and each live on chain that this config does not push gets a pause entry."""
        try:
            if scan.end is None:
                scan.end = await self._quantity("eth_blockNumber", [])
                if scan.next_block > scan.end:  # a block of another chain, a digit too many
                    self._log.warning(
                        "push.scan_from_block is past the chain's head: nothing is scanned",
                        from_block=scan.next_block,
                        head=scan.end,
                    )
            for _ in range(_SCAN_RANGES_A_LOOK):
                if scan.next_block > scan.end or not await self._scan_range(scan):
                    break
        except (RpcUnavailable, RpcError) as exc:
            self._step_failed("on-chain scan failed; going on at the next look", exc)
            return
        if scan.next_block <= scan.end:
            return
        self._scan = None
        self._found = list(scan.found)
        self._read_layout = None  # read what the chain stores for them at this look
        self._log.info(
            "on-chain scan done",
            from_block=self.cfg.scan_from_block,
            to_block=scan.end,
            requests=scan.requests,
            markets=len(scan.found),
        )

    async def _scan_range(self, scan: _Scan) -> bool:
        """One `eth_getLogs` of the next range; False when the look should stop (the node
        did not answer). A range the node refuses (an error: providers word a range or result
        limit in many ways, and some code it as a rate limit) or cannot answer (an answer too
        large is no answer) is halved, down to one block; 8 ranges answered in a row double
        it again, up to `scan_max_blocks`."""
        assert scan.end is not None
        last = min(scan.next_block + scan.span - 1, scan.end)
        query = {
            "address": self.contract,
            "topics": [_PRICE_UPDATED],
            "fromBlock": hex(scan.next_block),
            "toBlock": hex(last),
        }
        scan.requests += 1
        try:
            logs = await self.rpc.call("eth_getLogs", [query], verdict=True)
        except (RpcError, RpcUnavailable) as exc:
            if scan.span == 1:
                raise
            scan.span, scan.answered = scan.span // 2, 0
            self._log.warning(
                "eth_getLogs range refused; halving it", blocks=scan.span, error=str(exc)
            )
            return isinstance(exc, RpcError)  # unreachable: not again at this look
        scan.found.update(dict.fromkeys(self._logged_markets(logs)))
        scan.next_block = last + 1
        scan.answered += 1
        if scan.answered >= _SCAN_GROW_AFTER and scan.span < self.cfg.scan_max_blocks:
            scan.span, scan.answered = min(scan.span * 2, self.cfg.scan_max_blocks), 0
        return True

    def _logged_markets(self, logs: Any) -> list[bytes]:
        """The market ids of `PriceUpdated` logs of the contract; a counted _BadAnswer for an
        answer that is not such a list (another address, another event, a topic not 32 bytes)."""
        contract = self.contract.lower()
        ids: list[bytes] = []
        for entry in logs if isinstance(logs, list) else [None]:
            topics = entry.get("topics") if isinstance(entry, dict) else None
            address = entry.get("address") if isinstance(entry, dict) else None
            if (
                not isinstance(topics, list)
                or len(topics) < 2
                or not isinstance(topics[0], str)
                or topics[0].lower() != _PRICE_UPDATED
                or not isinstance(address, str)
                or address.lower() != contract
                or not isinstance(topics[1], str)
                or not _WORD.fullmatch(topics[1])
            ):
                self.stats.bad_answers += 1
                raise _BadAnswer(f"eth_getLogs: {shown(logs)} is not a list of PriceUpdated logs")
            ids.append(bytes.fromhex(topics[1][2:]))
        return ids

    # -- deciding -----------------------------------------------------------------------------

    def _threshold(self, market: str) -> tuple[float, float]:
        over = self.cfg.overrides.get(market)
        deviation = over.deviation if over and over.deviation else self.cfg.deviation
        heartbeat = over.heartbeat_s if over and over.heartbeat_s else self.cfg.heartbeat_s
        return deviation, heartbeat * 1000.0

    def _due(self, result: RoundResult) -> _Batch | None:
        """The entries of `result` to push now: pauses first (a market paused or unknown whose
        chain entry is a price; none for a market never on chain, where nothing can pass for
        live; none within `start_grace_s` of the start for one unknown and not active since;
        a market whose price does not fit the contract; one a reload removed), then prices,
        most due first; counts the markets skipped."""
        status = result.status.tolist()
        price = result.price.tolist()
        decimals = result.layout.decimals.tolist()
        # Exactly checked only where a float says it may be near: one vector compare a look.
        with np.errstate(invalid="ignore", over="ignore"):
            near = result.price * 10.0**result.layout.decimals >= _NEAR_INT128
        large = set(np.flatnonzero(near).tolist())
        count = result.round != self._counted_round
        self._counted_round = result.round
        if self._first_ts is None:
            self._first_ts = result.ts
        starting = result.ts - self._first_ts < self.cfg.start_grace_s * 1000.0
        scored: list[tuple[float, int]] = []
        pauses: list[str] = []
        for i, market in enumerate(result.layout.markets):
            if self._only and market not in self._only:
                continue
            stored = self._stored.get(market)
            if status[i] != Status.ACTIVE:
                if count:
                    self.stats.skipped[_STATUS_NAMES[status[i]]] += 1
                if (
                    status[i] != Status.DEGRADED
                    and stored is not None
                    and not stored.paused
                    and result.ts > stored.ts
                    and not (
                        starting and status[i] == Status.UNKNOWN and market not in self._was_active
                    )
                ):
                    pauses.append(market)
                continue
            self._was_active.add(market)
            if i in large and _mantissa(price[i], decimals[i]) > PUSH_PRICE_MAX:
                if count:
                    self.stats.skipped["overflow"] += 1
                if market not in self._overflowed:
                    self._overflowed.add(market)
                    self._log.error(
                        "price does not fit the contract's int128; not pushed",
                        market=market,
                        price=price[i],
                        decimals=decimals[i],
                    )
                if stored is not None and not stored.paused and result.ts > stored.ts:
                    pauses.append(market)  # its chain price is not its price any more
                continue
            self._overflowed.discard(market)
            if stored is None or stored.paused:  # a first price, or the one that resumes it
                if stored is None or result.ts > stored.ts:
                    scored.append((math.inf, i))
                continue
            deviation, heartbeat_ms = self._threshold(market)
            # |a - b| against the band, a move of exactly `deviation` included (BAND_SLACK):
            # |a / b - 1| rounded 1,001 after 1,000 to under 0.1 %
            band = deviation * abs(stored.price)
            moved = abs(price[i] - stored.price) * BAND_SLACK / band if band else math.inf
            waited = (result.ts - stored.ts) / heartbeat_ms
            if result.ts > stored.ts and (moved >= 1.0 or waited >= 1.0):
                scored.append((max(moved, waited), i))
        pauses.extend(self._removed(result))
        if not scored and not pauses:
            return None
        del pauses[self._batch_cap :]
        scored.sort(key=lambda item: (-item[0], item[1]))
        chosen = sorted(i for _, i in scored[: self._batch_cap - len(pauses)])
        markets = [result.layout.markets[i] for i in chosen]
        prices = [_mantissa(price[i], decimals[i]) for i in chosen]
        expos = [-decimals[i] for i in chosen]
        return _Batch(result.round, result.ts, markets, prices, expos, pauses)

    def _removed(self, result: RoundResult) -> list[str]:
        """Markets with a live price on chain that the config no longer has (a reload removed
        them): nothing will ever push them again, so their last price must not read as live.
        Only this process knows them: a restart without them in its config cannot, unless the
        start-up scan (`push.scan_from_block`) is on. Then every market with a live price on
        chain that this config does not push (not in it, or left out of `push.markets`) is
        paused: those are not `unknown`, no start grace applies."""
        layout = result.layout
        if self._layout_set is None or self._layout_set[0] is not layout:
            ours = [m for m in layout.markets if not self._only or m in self._only]
            self._layout_set = (layout, frozenset(layout.markets), frozenset(ours))
        _, current, pushed = self._layout_set
        scanning = self.cfg.scan_from_block is not None
        removed = [
            market
            for market, stored in self._stored.items()
            if (
                market not in pushed
                if scanning
                else market not in current and (not self._only or market in self._only)
            )
            and not stored.paused
            and result.ts > stored.ts
        ]
        for market in removed:
            if market not in self._removed_logged:
                self._removed_logged.add(market)
                if market in current or market in self._scanned:
                    self._log.warning(
                        "market on chain not pushed by this config; pausing its price on chain",
                        market=market,
                    )
                else:
                    self._log.warning(
                        "market no longer in the config; pausing its price on chain",
                        market=market,
                    )
        return removed

    # -- fees ---------------------------------------------------------------------------------

    async def _fees(self) -> tuple[int, int] | None:
        """(maxFeePerGas, maxPriorityFeePerGas) for a new transaction, or None over the cap."""
        base = await self._base_fee()
        cap = int(self.cfg.max_gas_price_gwei * _GWEI)
        tip = min(int(self.cfg.priority_fee_gwei * _GWEI), cap)
        if base + tip > cap:
            self.stats.transactions["gas_cap"] += 1
            if not self._capped:
                self._capped = True
                self._log.warning(
                    "push held back: the base fee is above the gas price cap",
                    base_fee_gwei=base / _GWEI,
                    cap_gwei=self.cfg.max_gas_price_gwei,
                )
            return None
        if self._capped:
            self._capped = False
            self._log.info("base fee back under the gas price cap", base_fee_gwei=base / _GWEI)
        max_fee, tip = min(cap, 2 * base + tip), tip
        floor = self._fee_floor
        if floor is not None and floor[0] != self._nonce:
            self._fee_floor = floor = None  # it was for a nonce used since
        if floor is not None:  # a pending transaction of ours (or of a previous run) to outbid
            bid, bid_tip = max(max_fee, _bump(floor[1])), max(tip, _bump(floor[2]))
            if bid <= cap:
                return bid, min(bid_tip, bid)
            # Over the cap: unless what held the nonce has been mined since, which frees the
            # pusher of it, or has left the node's pool (held here, it would wait at the cap
            # with nothing pending for ever).
            mined = await self._quantity("eth_getTransactionCount", [self.address, "latest"])
            if mined <= floor[0] and await self._pending_at(floor[0]):
                self.stats.transactions["gas_cap"] += 1
                return None
            self._fee_floor = None
            if mined > floor[0]:
                self._nonce = self.stats.nonce = mined
                self._log.info("the transaction holding the nonce was mined", nonce=mined)
            else:
                self._log.info("the transaction holding the nonce left the pool", nonce=floor[0])
        return max_fee, tip

    async def _pending_at(self, nonce: int) -> bool:
        """Whether the node holds a transaction of the key at `nonce` (pending or mined): its
        pending count is past it."""
        pending = await self._quantity("eth_getTransactionCount", [self.address, "pending"])
        return pending > nonce

    # -- sending and settling -----------------------------------------------------------------

    async def _send(
        self, batch: _Batch, nonce: int, max_fee: int, tip: int, *, replacing: _InFlight | None
    ) -> None:
        least = _GAS_BASE + _GAS_PER_MARKET * batch.entries
        if self._over_block(batch.entries, least):
            return
        data = batch.calldata()
        call = {"from": self.address, "to": self.contract, "data": "0x" + data.hex()}
        try:
            # Against the mined state: the pending one may already hold the transaction this
            # one replaces, where the same updates are skipped as not newer and cost little.
            estimate = await self._quantity("eth_estimateGas", [call, "latest"])
        except RpcError as exc:
            if "gas required exceeds allowance" in exc.message.lower() and batch.entries > 1:
                # More gas than a block (or the node's call cap) holds: fewer markets fit.
                self._fewer(batch.entries, batch.entries // 2, error=exc.message)
                return
            self.stats.transactions["error"] += 1
            self._failed("push would revert; not sent", error=exc.message, data=exc.data)
            return
        if estimate > _ESTIMATE_MAX_FACTOR * least:
            # Taken as said, one such answer cut `max_batch` to one market a transaction for
            # the life of the process (below: over the block's gas limit).
            self.stats.bad_answers += 1
            raise _BadAnswer(
                f"eth_estimateGas: {estimate} gas for {batch.entries} markets, over "
                f"{_ESTIMATE_MAX_FACTOR} times a first write of each"
            )
        # Unused gas is not paid for; a limit too low is (the transaction reverts out of gas).
        gas = max(int(estimate * _GAS_MARGIN), least)
        if self._over_block(batch.entries, gas):
            return
        tx = {
            "type": 2,
            "chainId": self.chain.chain_id,
            "nonce": nonce,
            "to": self.contract,
            "value": 0,
            "data": data,
            "gas": gas,
            "maxFeePerGas": max_fee,
            "maxPriorityFeePerGas": tip,
        }
        signed = self._sign_transaction(tx, self._secret)
        try:
            tx_hash = await self._send_raw("0x" + bytes(signed.raw_transaction).hex())
        except RpcError as exc:
            await self._refused(exc, nonce, max_fee, tip)
            return
        except RpcUnavailable:
            # No answer (a timeout, a connection cut, garbage): the node may have taken the
            # transaction all the same, and mine it whatever comes next.
            self._left_until = max(self._left_until, nonce + 1)
            raise
        self._fee_floor = None
        if self._failing is not None:
            self._failing = None
            self._log.info("pushes go through again")
        kind = "sent" if replacing is None else "replaced"
        self.stats.transactions[kind] += 1
        now = self.clock.monotonic()
        if replacing is None:
            self._inflight = _InFlight(nonce, batch, max_fee, tip, now, [(str(tx_hash), batch)])
            self._nonce = self.stats.nonce = nonce + 1
        else:
            replacing.batch, replacing.max_fee, replacing.tip = batch, max_fee, tip
            replacing.sent_at = now
            replacing.sent.append((str(tx_hash), batch))
            del replacing.sent[:-_HASHES_KEPT]
        self.stats.pending = True
        self._log.info(
            "push " + kind,
            nonce=nonce,
            markets=len(batch.markets),
            paused=len(batch.paused),
            round=batch.round,
            max_fee_gwei=max_fee / _GWEI,
            tx=tx_hash,
        )

    def _over_block(self, markets: int, gas: int) -> bool:
        """True, with fewer markets a transaction from now on, when `gas` is over the latest
        block's gas limit: no node would take the transaction, nor ever mine it (with a
        `max_batch` of 1,000 every first push was refused as `intrinsic gas too high` on a
        30M-gas chain, for ever; a node also refuses the estimate of such a call, which the
        RPC client took for an unreachable node before it read that refusal as the request's
        own fault). The next look sends the most due markets."""
        limit = self._block_gas
        if limit is None or gas <= limit or markets <= 1:
            return False
        by_least = (limit - _GAS_BASE) // _GAS_PER_MARKET
        self._fewer(markets, min(by_least, markets * limit // gas), gas=gas, block_gas_limit=limit)
        return True

    def _fewer(self, markets: int, fit: int, **detail: Any) -> None:
        """At most `fit` markets a transaction from now on (at least 1, fewer than `markets`):
        a batch of `markets` needs more gas than a block holds."""
        self._batch_cap = max(1, min(markets - 1, fit))
        self._fitted = 0
        self._log.warning(
            "push batch over the block gas limit; fewer markets a transaction",
            markets=markets,
            max_batch=self._batch_cap,
            **detail,
        )

    def _grow(self) -> None:
        """A push confirmed under a lowered `max_batch`: after `grow_batch_after` of them, a quarter
        more markets a transaction (at least one more, at most the configured `max_batch`, and
        never more than the latest block's gas limit holds at the floor of `_send`'s gas: such
        a batch is never sent, and growing to it lowered it again with a warning every
        `grow_batch_after` pushes). A batch that no longer fits is caught before it is sent
        (`_over_block`) or by its estimate, and lowers it again."""
        self._fitted += 1
        if self._fitted < self.cfg.grow_batch_after:
            return
        self._fitted = 0
        cap, most = self._batch_cap, self.cfg.max_batch
        if self._block_gas is not None:
            most = min(most, max(1, (self._block_gas - _GAS_BASE) // _GAS_PER_MARKET))
        if most <= cap:
            return
        self._batch_cap = min(most, max(cap + 1, cap * 5 // 4))
        self._log.info(
            "push batch grows back; more markets a transaction", max_batch=self._batch_cap
        )

    async def _send_raw(self, raw: str) -> str:
        """eth_sendRawTransaction, keeping the node's refusal as an RpcError whatever its code.

        Through the pusher's RPC client, so that each send is counted on its endpoint and a
        rate limit rests it and goes to the next (`client="pusher"` in the RPC metrics), but as
        a `verdict`: the client raises only the refusals it knows by their words
        (`_REQUEST_FAULTS` in `oracled.jsonrpc`) and fails over any other server-side error;
        for a transaction every refusal is the verdict, in whatever words the node uses, and
        another endpoint asked would only see it again. An endpoint that answers garbage, an
        answer to another request, none, or a null hash has not taken the transaction: the
        next is asked.
        """
        tx_hash = await self.rpc.call("eth_sendRawTransaction", [raw], required=True, verdict=True)
        if not isinstance(tx_hash, str):
            self.stats.bad_answers += 1
            raise _BadAnswer(f"eth_sendRawTransaction: {shown(tx_hash)} not a transaction hash")
        return tx_hash

    async def _refused(self, exc: RpcError, nonce: int, max_fee: int, tip: int) -> None:
        """The node refused a transaction: fix what can be fixed for the next step."""
        message = exc.message.lower()
        if any(words in message for words in _NONCE_OUT_OF_STEP):
            mined = await self._quantity("eth_getTransactionCount", [self.address, "latest"])
            self._nonce = self.stats.nonce = mined
            self._log.warning("nonce out of step; re-read from the chain", nonce=self._nonce)
        elif "underpriced" in message:
            if self._fee_floor is None or self._fee_floor[0] != nonce:  # once a nonce
                self._log.warning(
                    "a pending transaction holds this nonce; raising the fee", nonce=nonce
                )
            self._fee_floor = (nonce, max_fee, tip)  # something holds the nonce: outbid it
        else:
            self._failed("push refused by the node", error=exc.message)
        self.stats.transactions["error"] += 1

    def _failed(self, event: str, **detail: Any) -> None:
        """Log a failure when it starts, not at every look (one a second for as long as an
        account stays empty); the error counter counts each, and a send that goes through
        says the episode ended."""
        if event != self._failing:
            self._failing = event
            self._log.error(event, **detail)

    async def _settle(self, inflight: _InFlight) -> None:
        """Confirm the transaction in flight if mined; replace it if stuck for too long.

        The count first, and the receipts only once it says the nonce is mined (then they are
        there too): a look at a pending transaction costs one request, however many hashes were
        sent for its nonce (one more with each replacement)."""
        mined = await self._quantity("eth_getTransactionCount", [self.address, "latest"])
        if mined > inflight.nonce:
            for tx_hash, batch in reversed(inflight.sent):
                receipt = await self.rpc.call("eth_getTransactionReceipt", [tx_hash])
                if receipt is not None:
                    self._mined_receipt(inflight.nonce, batch, tx_hash, receipt)
                    return
            if await self._mined_unread(inflight):
                return  # ours, its receipt not readable yet: read at the next look
            # the nonce went through under a hash we never sent
            self._inflight, self.stats.pending = None, False
            self._log.warning("nonce used by another transaction", nonce=inflight.nonce)
            return
        if self.clock.monotonic() - inflight.sent_at < self.cfg.replace_after_s:
            if mined == inflight.nonce and not inflight.capped and self._stale_market(inflight):
                # Not after replace_after_s: the next block may mine it, and put a price from
                # before a pause on chain after the pause (held by the cap: at replace_after_s).
                await self._replace(inflight)
            return
        if mined < inflight.nonce:  # behind a gap: a replacement would wait there as well
            await self._behind_gap(inflight, mined)
            return
        await self._replace(inflight)

    def _stale_market(self, inflight: _InFlight) -> bool:
        """Whether the transaction in flight carries the price of a market not active in the
        latest round (paused, degraded or unknown since it was sent). A pause entry of a market
        active again is no reason for a replacement: it lands on the safe side, and the next
        look pushes the price that clears it."""
        result = self._latest
        if result is None:
            return False
        active = _active_markets(result)
        return any(market not in active for market in inflight.batch.markets)

    async def _still_mined(self, confirmed: _Confirmed) -> bool:
        """False when a reorganisation took the last confirmed push off the chain: looked for
        once `recheck_depth_blocks` are on top of its block (one request a look until then,
        in looks that have nothing to send: a push sent behind a lost one shows the loss as a
        gap, `_behind_gap`). Then the nonce and the stored prices are read again, so that
        the markets it carried are pushed again if due against what the chain holds now, not
        at their heartbeat; and, as for a send without an answer, a transaction at its nonce
        is replaced even with nothing due (the node may hold it pending again, with prices
        from before, perhaps of a market paused since)."""
        head = await self._quantity("eth_blockNumber", [])
        if head < confirmed.block + self.cfg.recheck_depth_blocks:
            return True
        receipt = await self.rpc.call("eth_getTransactionReceipt", [confirmed.tx_hash])
        self._confirmed = None
        if receipt is not None:
            return True
        mined = await self._quantity("eth_getTransactionCount", [self.address, "latest"])
        self._log.warning(
            "a reorganisation took a confirmed push off the chain; reading the chain again",
            tx=confirmed.tx_hash,
            nonce=confirmed.nonce,
            block=confirmed.block,
            mined=mined,
        )
        if mined <= confirmed.nonce:
            self._nonce = self.stats.nonce = mined
            self._left_until = max(self._left_until, confirmed.nonce + 1)
        self._stored.clear()
        self._forget_read()
        return False

    async def _mined_unread(self, inflight: _InFlight) -> bool:
        """True when one of the hashes sent for the nonce is in a block though the node has no
        receipt for it yet: anvil answered the count at once and the receipt about a second
        later after a block of 900 markets' writes, and a node behind a balancer may lag so.
        Without this the push was taken for another's, dropped unconfirmed and paid again.
        So is one the node still holds without a block, for `replace_after_s` from its send:
        a node that counts the block before it indexes its transactions shows it so (another
        transaction at the nonce makes the node drop it: then it is not found at all)."""
        young = self.clock.monotonic() - inflight.sent_at < self.cfg.replace_after_s
        for tx_hash, _ in inflight.sent:
            found = await self.rpc.call("eth_getTransactionByHash", [tx_hash])
            if isinstance(found, dict) and (found.get("blockNumber") is not None or young):
                return True
        return False

    def _mined_receipt(self, nonce: int, batch: _Batch, tx_hash: str, receipt: Any) -> None:
        if not isinstance(receipt, dict):
            self.stats.bad_answers += 1
            raise _BadAnswer(f"eth_getTransactionReceipt: {shown(receipt)} not a receipt")
        status = self._hex("eth_getTransactionReceipt status", receipt.get("status"))
        block = self._hex("eth_getTransactionReceipt blockNumber", receipt.get("blockNumber"))
        self._mined(nonce, batch, tx_hash, status, block)

    async def _behind_gap(self, inflight: _InFlight, mined: int) -> None:
        """The transaction in flight was sent after one the chain had mined, and the chain's
        count is below its nonce now: a reorganisation took that push off the chain and nothing
        holds its nonce any more (a pool that took it back would have had it mined by now). A
        node never mines past a missing nonce, so push again from the chain's count, and read
        what the contract stores again: the markets the lost push carried are due again. Only
        after `replace_after_s`: a node behind the one that gave the last receipt may show a
        lower count for a block or two.

        The push left behind the gap is mined as soon as the gap is filled: one that carries a
        market not active any more is first replaced by one without it, as a stuck push is, so
        that a price sent before its market was paused does not land after the pause (it did,
        right after the push from the chain's count). Until that replacement goes out (held at
        the cap, or refused) the pusher waits behind the gap."""
        result = self._latest
        if result is not None:
            kept = _active_part(inflight.batch, result)
            if kept is not inflight.batch:
                await self._replace(inflight, kept)
                if inflight.batch is not kept:
                    return
        self._log.warning(
            "push waits behind a nonce the chain lost; pushing again from there",
            nonce=inflight.nonce,
            mined=mined,
        )
        self._inflight, self.stats.pending = None, False
        self._nonce = self.stats.nonce = mined
        self._stored.clear()
        self._forget_read()

    def _mined(self, nonce: int, batch: _Batch, tx_hash: str, status: int, block: int) -> None:
        self._inflight, self.stats.pending = None, False
        if status != 1:
            self.stats.transactions["reverted"] += 1
            self._log.error("push reverted", tx=tx_hash, nonce=nonce)
            return
        # A pause entry is held for the reorganisation recheck as a price is.
        self._confirmed = _Confirmed(nonce, tx_hash, block)
        if batch.entries and self._batch_cap < self.cfg.max_batch:
            self._grow()
        self.stats.transactions["confirmed"] += 1
        self.stats.updates += len(batch.markets)
        self.stats.pauses += len(batch.paused)
        resumed: list[str] = []
        for market, price, expo in zip(batch.markets, batch.prices, batch.expos, strict=True):
            stored = self._stored.get(market)
            if stored is None or stored.ts < batch.ts:
                if stored is not None and stored.paused:
                    resumed.append(market)
                self._stored[market] = _Stored(price * 10.0**expo, batch.ts)
        paused: list[str] = []
        for market in batch.paused:
            stored = self._stored.get(market)
            if stored is not None and stored.ts < batch.ts:  # else the contract skipped it
                stored.ts, stored.paused = batch.ts, True
                paused.append(market)
        self._log.info(
            "push confirmed",
            tx=tx_hash,
            nonce=nonce,
            markets=len(batch.markets),
            paused=len(batch.paused),
            block=block,
        )
        if paused or resumed:  # one line a batch that changed what `latest` answers
            self._log.info(
                "on-chain pause state changed", round=batch.round, paused=paused, resumed=resumed
            )

    async def _replace(self, inflight: _InFlight, batch: _Batch | None = None) -> None:
        """Same nonce, fees +12.5 % (at least the current market's), the latest prices.

        +12.5 % over the fees in flight, or over the last replacement the node refused as
        underpriced (another transaction holds the nonce at a higher fee, or the node demands a
        larger bump): each refusal raises the next try, up to the cap. Bumped from the fees in
        flight alone, the same refused replacement was sent at every look for as long as that
        transaction stayed pending, and never outbid it. `batch`: what to send instead of the
        latest prices."""
        cap = int(self.cfg.max_gas_price_gwei * _GWEI)
        paid, paid_tip = inflight.max_fee, inflight.tip
        floor = self._fee_floor
        held = floor is not None and floor[0] == inflight.nonce
        if floor is not None and held:
            paid, paid_tip = max(paid, floor[1]), max(paid_tip, floor[2])
        max_fee, tip = _bump(paid), _bump(paid_tip)
        base = await self._base_fee()
        max_fee = max(max_fee, 2 * base + tip)
        if max_fee > cap:
            max_fee = cap
        # Held too while the base fee and the tip are over the cap, as a new push is: no block
        # would take the replacement (anvil refused it as under the base fee, at every look).
        spike = base + min(int(self.cfg.priority_fee_gwei * _GWEI), cap) > cap
        if max_fee < _bump(paid) or tip > max_fee or spike:
            # An underpriced refusal said the node holds a transaction at this nonce: not free,
            # for as long as the node's pending count says so.
            if held and not await self._pending_at(inflight.nonce):
                self._fee_floor, held = None, False
            if not held and await self._dropped(inflight):
                await self._send_again(inflight, batch)
                return
            # Asked again in `replace_after_s`: the cap holds for as long as it is set (the bump
            # is over the fee in flight), and each look asks the node for every hash sent.
            inflight.sent_at = self.clock.monotonic()
            if not inflight.capped:
                inflight.capped = True
                self.stats.transactions["gas_cap"] += 1
                self._log.warning(
                    "stuck push not replaced: the bump would exceed the gas price cap",
                    nonce=inflight.nonce,
                    max_fee_gwei=inflight.max_fee / _GWEI,
                    cap_gwei=self.cfg.max_gas_price_gwei,
                )
            return
        if batch is None:
            batch = self._replacement(inflight)
        await self._send(batch, inflight.nonce, max_fee, tip, replacing=inflight)

    def _replacement(self, inflight: _InFlight) -> _Batch:
        """What replaces the transaction in flight: the latest due entries (a market paused
        since it was sent is among them, as a pause entry), else its own batch without the
        prices of markets that are no longer active (paused, degraded, unknown since it was
        sent). With none of them left it carries no market: it only takes the nonce, so that
        a price sent before its market was paused does not land after the pause."""
        result = self._latest
        if result is None:
            return inflight.batch
        fresh = self._due(result)
        if fresh is not None:
            return fresh
        return _active_part(inflight.batch, result)

    async def _dropped(self, inflight: _InFlight) -> bool:
        """True when the node knows none of the hashes sent for this nonce (its pool evicted
        them, or an RPC took the transaction and lost it): the nonce is free again."""
        for tx_hash, _ in inflight.sent:
            if await self.rpc.call("eth_getTransactionByHash", [tx_hash]) is not None:
                return False
        return True

    async def _send_again(self, inflight: _InFlight, batch: _Batch | None = None) -> None:
        """The nonce of a dropped transaction, at the current fees (no bump: nothing to beat)."""
        fees = await self._fees()
        if fees is None:  # the base fee is above the cap: counted; the next look tries again
            return
        self._log.warning("push dropped by the node; sent again", nonce=inflight.nonce)
        if batch is None:
            batch = self._replacement(inflight)
        await self._send(batch, inflight.nonce, *fees, replacing=inflight)

    def describe(self) -> dict[str, Any]:
        """Where and how the pusher pushes, for start-up logs."""
        return {
            "contract": self.contract,
            "pusher": self.address,
            "deviation": self.cfg.deviation,
            "heartbeat_s": self.cfg.heartbeat_s,
            "max_gas_price_gwei": self.cfg.max_gas_price_gwei,
            "recheck_depth_blocks": self.cfg.recheck_depth_blocks,
            "scan_from_block": self.cfg.scan_from_block,
        }


def _retry_delay_s(interval_s: float, failing: int) -> float:
    """The wait after `failing` failed steps in a row: 2x the interval per failure, 30 s at
    most. The exponent is bounded: 2.0**1024 overflows, which after some 1,024 failures (8.5
    hours of an unreachable node at 30 s) raised out of the retry loop as a crash."""
    return min(interval_s * 2.0 ** min(failing, 62), _RESTART_MAX_S)


def _active_markets(result: RoundResult) -> set[str]:
    return {
        market
        for market, status in zip(result.layout.markets, result.status.tolist(), strict=True)
        if status == Status.ACTIVE
    }


def _active_part(old: _Batch, result: RoundResult) -> _Batch:
    """`old` without the prices of markets that are not active in `result` and the pauses of
    markets that are (`old` itself if it has neither)."""
    active = _active_markets(result)
    keep = [i for i, market in enumerate(old.markets) if market in active]
    paused = [market for market in old.paused if market not in active]
    if len(keep) == len(old.markets) and len(paused) == len(old.paused):
        return old
    return _Batch(
        old.round,
        old.ts,
        [old.markets[i] for i in keep],
        [old.prices[i] for i in keep],
        [old.expos[i] for i in keep],
        paused,
    )


def _mantissa(price: float, decimals: int) -> int:
    """The contract's integer of `price` at `decimals` places (the signed reports' digits)."""
    return decimal_to_int(format(price, f".{decimals}f"), decimals)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return text.startswith("0x")


def _bump(value: int) -> int:
    return -(-value * _BUMP_NUM // _BUMP_DEN)
