"""The runtime's side of the chains: one supervised `ChainReader` per chain that has RPC URLs
and an on-chain source to read.

A chain without URLs (its environment variable unset) is switched off with one clear log line
at start-up, and so is every source on it; nothing else changes, so the default config runs
without any RPC provider. A chain with URLs and nothing to read (only the on-chain pusher's, or
its sources disabled or used by no market) gets no reader: one would poll a chain for no feed,
and warn of every read a node without Multicall3 refuses. A reload that starts the chain's first
source starts its reader then, with the chain's settings of the start; one that stops its last
source stops the reader (`release`), which the next source to read the chain starts again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import aiohttp
import structlog

from oracled.clock import Clock
from oracled.config import CHAIN_SOURCE_TYPES, ChainConfig, Config, SourceConfig
from oracled.errors import SourceError
from oracled.jsonrpc import RpcClient, RpcUnavailable, redact
from oracled.lograte import LogEveryMinute
from oracled.sources._base import Source
from oracled.sources.evm.chain import ChainReader, ChainStats
from oracled.sources.evm.source import ChainSource

__all__ = ["ChainSet"]

_RESTART_MAX_S = 30.0


class ChainSet:
    """The chain readers of one daemon, and the glue that hands them to on-chain sources."""

    def __init__(self, cfg: Config, session: aiohttp.ClientSession, clock: Clock) -> None:
        self.readers: dict[str, ChainReader] = {}
        self._session = session
        self._clock = clock
        self._lit: dict[str, ChainConfig] = {}  # chains with URLs, as the daemon started
        self._skew_ms = cfg.oracle.max_clock_skew_ms  # a reload's comes with its sources
        self._tasks: dict[str, asyncio.Task[None]] = {}  # the started readers' tasks
        # The pusher logs `chain unreachable; retrying` too: its lines say `component=push`.
        self._log = structlog.get_logger("oracled").bind(component="chain")
        for cid, chain in cfg.chains.items():
            if not chain.resolved_urls:
                where = f"${chain.rpc_urls_env}" if chain.rpc_urls_env else "rpc_urls"
                self._log.warning(
                    "chain disabled: no RPC URL", chain=cid, set=where,
                    sources=sorted(s for s, c in cfg.sources.items() if c.chain == cid),
                )  # fmt: skip
                continue
            self._lit[cid] = chain
        for cid in sorted(_chains_read(cfg).intersection(self._lit)):
            self._build(cid)

    def start(self) -> list[asyncio.Task[None]]:
        """The tasks of the readers built so far (the chains the start's sources read)."""
        return [self._task(cid) for cid in self.readers if cid not in self._tasks]

    def read(self, src: SourceConfig) -> asyncio.Task[None] | None:
        """Start the reader of an on-chain source's chain if it has none yet (a reload that
        starts the chain's first source); the new reader's task, or None."""
        cid = src.chain
        if src.type not in CHAIN_SOURCE_TYPES or cid is None or cid not in self._lit:
            return None
        if cid not in self.readers:
            self._build(cid)
        return None if cid in self._tasks else self._task(cid)

    async def release(self, reading: Iterable[SourceConfig]) -> list[str]:
        """Stop the reader of every chain that none of `reading` (the sources running now)
        reads: a reload stopped its last source, and a reader left running would poll the
        chain for no feed. The tasks are cancelled together and awaited (a newHeads socket
        closes with its task); the reader goes with its series, as a stopped source's do, and
        `read` builds a new one for the chain's next source. The chains stopped, in order."""
        kept = {src.chain for src in reading if src.type in CHAIN_SOURCE_TYPES}
        idle = sorted(cid for cid in self.readers if cid not in kept)
        tasks = [task for cid in idle if (task := self._tasks.pop(cid, None)) is not None]
        for cid in idle:
            del self.readers[cid]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for cid in idle:
            self._log.info("chain reader stopped: no source reads it", chain=cid)
        return idle

    def _build(self, cid: str) -> None:
        chain = self._lit[cid]
        session, clock = self._session, self._clock
        rpc = RpcClient(chain.resolved_urls, session, timeout_s=chain.timeout_s, clock=clock)
        self.readers[cid] = ChainReader(
            cid, chain, rpc, clock, session, max_clock_skew_ms=self._skew_ms
        )
        self._log.info(
            "chain enabled", chain=cid, chain_id=chain.chain_id,
            endpoints=[redact(u) for u in chain.resolved_urls],
            blocks="newHeads" if chain.heads_url else "polling",
        )  # fmt: skip
        if chain.heads_url is None and chain.ws_url_env:  # set in the file, unset here
            self._log.warning(
                "chain polling: no WebSocket URL", chain=cid, set=f"${chain.ws_url_env}"
            )

    def _task(self, cid: str) -> asyncio.Task[None]:
        task = asyncio.create_task(self._supervise(self.readers[cid]), name=f"chain:{cid}")
        self._tasks[cid] = task
        return task

    def stats(self) -> list[ChainStats]:
        """Every running reader's counters (read by the metrics at scrape time)."""
        return [reader.stats for reader in self.readers.values()]

    def usable(self, src: SourceConfig) -> bool:
        """False for an on-chain source whose chain is switched off or was not in the start's
        config (readers take their chain's settings at start)."""
        return src.type not in CHAIN_SOURCE_TYPES or src.chain in self._lit

    def attach(self, source: Source) -> None:
        """Give an on-chain source its chain's reader; venues pass through untouched."""
        if isinstance(source, ChainSource) and source.cfg.chain in self.readers:
            source.attach(self.readers[source.cfg.chain])

    async def _supervise(self, reader: ChainReader) -> None:
        """Run one reader forever; restart it with capped backoff if it fails.

        A start the endpoints refuse (none answers eth_chainId, or one serves another chain)
        is an operational condition, logged with its error and no traceback, at most once a
        minute with the failed starts since (`failures`): its backoff made a line every 30 s
        for as long as the node stayed down, seven in the first minute. Anything else is a
        bug, logged each time with its traceback. All are counted and retried."""
        delay = 1.0
        log = self._log.bind(chain=reader.name)
        lines = LogEveryMinute()  # failed starts, by their log event
        while True:
            started = self._clock.monotonic()
            try:
                try:
                    await reader.run()
                finally:  # before the lines below, which say the delay
                    if self._clock.monotonic() - started > 60.0:
                        delay = 1.0  # ran a minute: the backoff starts over
                log.error("chain reader returned; restarting", delay_s=delay)
            except RpcUnavailable as exc:  # no endpoint answered: down, or not reachable yet
                if (failures := lines.due("unreachable", self._clock.monotonic())) is not None:
                    log.warning(
                        "chain unreachable; retrying",
                        error=str(exc)[:200], delay_s=delay, failures=failures,
                    )  # fmt: skip
            except SourceError as exc:  # an endpoint of another chain: a misconfiguration
                if (failures := lines.due("refused", self._clock.monotonic())) is not None:
                    log.error(
                        "chain reader refused; retrying",
                        error=str(exc)[:200], delay_s=delay, failures=failures,
                    )  # fmt: skip
            except Exception:  # the supervisor's job: log, count, restart
                log.exception("chain reader crashed; restarting", delay_s=delay)
            reader.stats.restarts += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2.0, _RESTART_MAX_S)


def _chains_read(cfg: Config) -> set[str]:
    """The chains an enabled on-chain source used by a market reads: those the service starts."""
    used = {ms.source for m in cfg.markets for ms in (*m.sources, *m.perp_sources)}
    return {
        src.chain
        for sid, src in cfg.sources.items()
        if src.enabled and src.type in CHAIN_SOURCE_TYPES and src.chain is not None and sid in used
    }
