"""Test parts for the audit trail: a core fed the way the daemon feeds it, every quote and round
also handed to a real writer thread."""

from __future__ import annotations

import sqlite3
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import tomli_w
from publish_rig import INTERVAL, PERP, SOURCES, T0, make_config

from oracled.config import AuditConfig, Config, parse_config, read_config_text
from oracled.core import Core, RoundResult
from oracled.model import Quote, Report
from oracled.publish.audit import AuditTrail
from oracled.publish.signer import RoundSigner


class Feed:
    """Drives a core the way the daemon does: its config's load first in the trail, then quotes
    arrive and the round runs at the next tick; every quote and round also goes to the audit
    trail, and to `kept` (round, its quotes)."""

    def __init__(
        self,
        cfg: Config,
        audit: AuditTrail,
        *,
        now: int = T0,
        config_file: Path | None = None,
        start: bool = True,
    ) -> None:
        """The start is recorded as `oracled run` records it: with `config_file`, `cfg` is
        written there as TOML and read back, and the trail keeps that file's path and text;
        without, as a service given its config in process (the sha256 of its settings).
        `start=False` records none: for a test whose queue or file sizes count rounds alone."""
        text = None
        if config_file is not None:
            cfg, text = write_config(config_file, cfg)
        if start:
            path = None if config_file is None else str(config_file)
            audit.record_start(now - 5, cfg, path, text)
        self.cfg, self.core, self.audit = cfg, Core(cfg), audit
        self.now = now
        self.prices = {"BTC/USD": 64_000.0, "ETH/USD": 3_100.0, "SOL/USD": 150.0}
        self.silent: set[str] = set()
        # Perpetual markets (`make_config(perps=...)`) are also quoted by their perpetual venue.
        self.perpetual = [m.symbol for m in cfg.markets if m.perp_sources]
        self.kept: list[tuple[RoundResult, list[Quote]]] = []
        self._quotes: list[Quote] = []
        self._manual: list[tuple[int, str, str, str]] = []  # (ts, actor, action, market)

    def manual(self, market: str, paused: bool, actor: str = "alice") -> None:
        """An operator's pause or resume as the service takes one: the core at once, the trail
        with the round it first applies to, the next."""
        self.core.set_manual(market, paused)
        self._manual.append((self.now + 1, actor, "pause" if paused else "resume", market))

    def quote(self, source: str, market: str, offset: int, factor: float = 1.0) -> None:
        q = Quote(source, market, self.now + offset, price=self.prices[market] * factor)
        self.audit.add_quote(q)
        self._quotes.append(q)
        self.core.ingest(q)

    def round(self, signer: RoundSigner | None = None) -> None:
        for k, source in enumerate(SOURCES):
            if source in self.silent:
                continue
            for market in self.prices:
                self.quote(source, market, 10 + 20 * k, 1.0 + 0.0001 * k)
        for market in self.perpetual:
            q = Quote(PERP, market, self.now + 5, price=self.prices[market] * 1.001, kind="perp")
            self.audit.add_quote(q)
            self._quotes.append(q)
            self.core.ingest(q)
        self.now += INTERVAL
        for ts, actor, action, market in self._manual:
            self.audit.record_action(ts, actor, action, market, self.core.rounds + 1, self.now)
        self._manual = []
        result = self.core.run_round(self.now)
        self.kept.append((result, self._quotes))
        self._quotes = []
        self.audit.submit(result)
        if signer is not None:
            self.audit.submit_signed(signer.sign(result))


SPOT_USD = ("coinbase", "kraken", "bitstamp")


def daemon_config(audit: Path) -> Config:
    """A daemon of two markets on five loopback venues with its trail at `audit` (100 ms
    rounds, BTC/USD routed through USDT/USD and perpetual-marked), for the tests that run
    `oracled run` and read its trail."""
    return parse_config(
        {
            "oracle": {"round_interval_ms": 100, "resume_rounds": 3, "jump_confirm_rounds": 2},
            "api": {"admin_token_env": "ORACLED_TEST_ADMIN_TOKEN"},
            "log": {"format": "json"},
            # A short queue: a trail locked for a second drops rounds (test_audit_faults.py).
            "audit": {"enabled": True, "path": str(audit), "reserve_bytes": 64 * 1024, "queue": 4},
            "sources": {sid: {"type": sid} for sid in (*SPOT_USD, "binance", "okx")},
            "routes": [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
            "markets": [
                {
                    "symbol": "USDT/USD",
                    "price_exponent": -6,
                    "min_sources": 2,
                    "max_age_ms": 1500,
                    "sources": [{"source": s, "pair": "USDT/USD"} for s in SPOT_USD],
                },
                {
                    "symbol": "BTC/USD",
                    "min_sources": 3,
                    "max_age_ms": 1500,
                    "max_deviation": 0.01,
                    "sources": [
                        *({"source": s, "pair": "BTC/USD"} for s in SPOT_USD),
                        {"source": "binance", "pair": "BTC/USDT"},
                    ],
                    "perp_sources": [{"source": "okx", "pair": "BTC/USDT"}],
                },
            ],
        },
        env={},
    )


def write_config(path: Path, cfg: Config) -> tuple[Config, bytes]:
    """`cfg` written to `path` as a TOML config file, and that file as the daemon loads it:
    the config and its bytes."""
    path.write_text(tomli_w.dumps(cfg.model_dump(by_alias=True, exclude_none=True)))
    return read_config_text(path, env={})


#: The disk reserve of a test trail: the smallest the config takes, not the shipped 8 MiB in
#: every test's tmp dir (test_audit_full_disk.py keeps the shipped size: it fills a disk).
RESERVE = 64 * 1024


def audit_config(path: Path | str, **settings: Any) -> AuditConfig:
    """A test trail's config: enabled, at `path`, its reserve RESERVE unless `settings` say."""
    return AuditConfig(**{"enabled": True, "path": str(path), "reserve_bytes": RESERVE, **settings})


def wait_for(done: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Until the writer thread got there (it works on its own time)."""
    deadline = time.monotonic() + limit_s
    while not done():
        assert time.monotonic() < deadline, "the writer thread did not get there"
        time.sleep(0.01)


def trail(path: Path, **settings: Any) -> AuditTrail:
    audit = AuditTrail(audit_config(path, **settings))
    audit.start()
    return audit


def recorded(
    path: Path, rounds: int, *, after: Feed | None = None, gap_ms: int = 0, **settings: Any
) -> Feed:
    """A trail at `path` written `rounds` rounds by a fresh daemon-like feed, then closed; the
    feed (its audit closed) for the test to read back. `after`: the feed of an earlier run whose
    clock this one continues `gap_ms` later (a restart); `settings`: of the trail's config."""
    now = T0 if after is None else after.now + gap_ms
    feed = Feed(make_config(), trail(path, **settings), now=now)
    for _ in range(rounds):
        feed.round()
    feed.audit.close()
    return feed


def sql(path: Path, statement: str) -> None:
    """One statement on a stored trail, committed (anyone who can write the file can)."""
    db = sqlite3.connect(path)
    db.execute(statement)
    db.commit()
    db.close()


def rewrite_body(path: Path, round_id: int, market: str, change: Callable[[bytes], bytes]) -> None:
    """Rewrite one stored report body in place: inflated, its msgpack changed by `change`,
    deflated again with its dictionary (rounds.id `round_id`), as the writer deflates it."""
    db = sqlite3.connect(path)
    dict_id, body = db.execute(
        "SELECT dict, body FROM reports WHERE round_id = ? AND market = ?", (round_id, market)
    ).fetchone()
    (zdict,) = db.execute("SELECT data FROM dictionaries WHERE id = ?", (dict_id,)).fetchone()
    packer = zlib.compressobj(3, zlib.DEFLATED, -15, 8, zdict=zdict)
    new = change(zlib.decompressobj(-15, zdict=zdict).decompress(body))
    db.execute(
        "UPDATE reports SET body = ? WHERE round_id = ? AND market = ?",
        (packer.compress(new) + packer.flush(), round_id, market),
    )
    db.commit()
    db.close()


def rewrite_report(
    path: Path, round_id: int, market: str, change: Callable[[Report], Report]
) -> None:
    """Rewrite one stored report body in place: decoded, changed by `change`, deflated again
    with its dictionary (rounds.id `round_id`)."""

    def changed(body: bytes) -> bytes:
        return msgspec.msgpack.encode(change(msgspec.msgpack.decode(body, type=Report)))

    rewrite_body(path, round_id, market, changed)
