"""The NATS sink: every round on one subject per market and on one round subject.

Subjects, with the configured prefix (default `oracled`):

    <prefix>.prices.<token>   one message per market per round: its SignedPrice JSON (the
                              report JSON when signing is off); <token> is the market with its
                              `/` made `-` (BTC/USD -> BTC-USD), which is always a valid token:
                              market symbols are upper-case letters and digits
    <prefix>.rounds           one message per round: the whole signed round (RoundMessage)
    <prefix>.stalled          once per stalled round: the stream's `stalled` frame with the
                              round it names and who signed it (a StallNotice), signed by
                              that key when signing is on; and, signing on, once no round
                              has been signed for longer than the stall limit (below)

With `jetstream = true` the sink creates a stream (default `ORACLED`) over `<prefix>.>` if none
exists, so a consumer that starts late replays what it missed: the last `max_age_s`, or less
when that would be over `max_bytes` (a round of 1,000 signed markets is about 1.3 MB stored).
Messages go out as core publishes, which the stream stores without a per-message
acknowledgement round trip (awaited JetStream acks run at a few thousand a second, fewer than
the messages of one round at 1,000 markets).

A stalled round loop sends no round, and silence on the bus looks like a quiet market: so when
the API's stall watch tells the streams, it hands the sink the notice the signed streams got
(`stalled`, the very bytes), which goes out like a round, in order behind the rounds already
queued. The watch tells it once per stalled round, so the sink keeps the notice while the stall
lasts (until the loop runs its next round) and sends it again each time it connects again: one
dropped while the server was unreachable is told once it is back, and one sent before is said
again (a subscriber takes it twice as once). Never after the stall: a round the loop ran ends
it, one submitted (even one dropped) or one the signer left unsigned (`unsigned`). With
signing on, the watch signs the notice with the rounds' key (`RoundSigner.sign_stall`), so
that a client that trusts the key can tell it from one anyone on the bus could write.

With signing on, the subjects carry signed messages only. A round the signer leaves unsigned
(skipped as `busy`, under its `floor`, past its signing `lease`, a signing `error`, or its signature
`stale` after a stall) is not published at all, never as its unsigned reports, which a consumer that
does not verify would take as signed ones: its messages are counted as unpublished (reason
`unsigned`), the signer's own count says why (`oracled_signer_errors_total`). The bus's last signed
round is then its newest, a frozen price to a consumer that trusts reports longer than the stall
limit: so once no round has been signed for longer than that limit (the API's), the daemon's one
rule (`oracled.publish.signstall`, owned by the service) hands the sink a notice as for a stall,
naming the last signed round in words that say why, the same bytes the signed streams get; the sink
sends it once and keeps it (sent again after each reconnection) until the next signed round.

The daemon never waits for NATS: `submit` only appends to a bounded queue, and the publisher task
sends when it can. While the server is unreachable rounds are counted as unpublished (reason
`disconnected`) rather than buffered, the rest of a round the connection was lost in too (nats-py
would buffer it), and the rounds queued behind it (sent late on the next connection, before): a
price published late is worse than none, and JetStream keeps what it had.
nats-py reconnects on its own after an outage; the sink connects the first time (again and again
until a server answers), and again whenever nats-py gives a connection up for good: it does when
the server ends one with an error (credentials revoked by a config reload, a user JWT expired),
logged at error level (`nats connection closed by the server; connecting again`).

A server that hangs with its socket open (a frozen process, a stalled network path) must count as
down too, or every round would pile into the socket and reach consumers all at once, late, when it
woke. nats-py's pings notice it: the sink pings every `ping_interval_s` (nats-py's default is two
minutes) and drops the connection after two unanswered, then reconnects as after any outage (to
another server of the list, if there is one). Dropped means reset (`nats_conn.ResettingClient`):
the messages nats-py held unwritten are thrown away and counted (`lost`), and so is what the
socket held (uncounted: nobody can say how many messages), where nats-py closed it politely and
waited, for as long as the path stayed stalled once its buffers were full (two rounds of 1,000
markets), then sent it all, late, after the newer rounds of the next connection. A stop (the
task cancelled) closes the connection politely for a second at most, then resets it: a polite
close waits for a stalled peer for ever, and nats-py swallows a cancellation that lands while a
publish waits for its full buffer, so `_publish` looks for one after each message.

The task supervises itself: an error other than the client's own (which `_publish` counts and
logs) is a bug that would otherwise end the task without a word while the daemon claims to
publish. It is logged with its traceback, counted (`restarts`; the round it was sending and
those queued, which would be late, as `error`), and the sink connects again after a backoff
(1 s doubling to 30 s).

Credentials and TLS (`nats_auth.py`) are read when the sink is made, so a secret that cannot be
used stops the daemon at start; a credential the server refuses only keeps the sink connecting:
the refusal is logged at error level (`nats credentials refused; retrying`, or `nats TLS
refused; retrying` for a certificate either side does not accept), and the rounds meanwhile are
counted `disconnected`, as for any outage. So that an operator can tell a refusal from an outage
without the logs, every failed attempt to connect is counted by why (`connect_failures`):
`credentials`, `tls`, `unreachable` (no server took the connection: refused, timed out, a
name that does not resolve; logged at warning level once a minute, `nats server unreachable;
retrying`, which at start-up nothing else would say), or `server_error` (a server took it and
ended it before letting the sink in, for another reason than credentials: at its connection
limit, `maximum connections exceeded`, or closed at once, or spoke no NATS; logged at warning
level once a minute, `nats server ended the connection; retrying`). TLS, when the config asks
for it, must start each connection (`tls_handshake_first`, checked in the config): nats-py
otherwise follows the server's greeting and would send a server that does not ask for TLS the
credentials and prices in clear.

A server that lets the sink in may still refuse it a subject: a user whose permissions leave one
of ours out. The server does not close the connection; it answers that publish (or subscription)
with an asynchronous `Permissions Violation` error, and the message is lost although it was
handed to the connection (and counted `published`). So each such refusal is counted by which of
our subjects it was (`permission_denied`: `prices`, `rounds`, `stalled`, `jetstream_api` for the
stream's creation, `inbox` for the subscription its reply needs, `other`), and logged at error
level (`nats permission denied`): at once for each kind, then once per `refusal_log_every_s`
with the number since the last line.

The servers a cluster announces are kept for the reconnections: those of the latest announcement
only, at most `nats_conn.MAX_ANNOUNCED_SERVERS` (`AnnouncedClient`). Those left out, past the
bound or naming no server, are counted (`announced_refused`) and logged at warning level once a
minute (`nats announced servers refused`): a server naming others at will grows nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import APIError, BadRequestError

from oracled.config import NatsConfig
from oracled.lograte import LogEveryMinute
from oracled.publish.encode import ReportEncoder
from oracled.publish.nats_auth import load_nats_auth
from oracled.publish.nats_conn import (
    MAX_ANNOUNCED_SERVERS,
    ResettingClient,
    lost_cancellation,
    require_supported_client,
)
from oracled.publish.nats_reasons import (
    CONNECT_FAILURE_REASONS,
    DENIED_SUBJECTS,
    UNPUBLISHED_REASONS,
)
from oracled.publish.signer import SignedRound
from oracled.publish.signstall import StallNotice

if TYPE_CHECKING:
    from oracled.core import RoundResult

__all__ = [
    "CONNECT_FAILURE_REASONS",
    "DENIED_SUBJECTS",
    "UNPUBLISHED_REASONS",
    "NatsSink",
    "NatsStats",
    "StallNotice",
    "market_token",
    "price_subject",
    "round_subject",
    "stalled_subject",
]

_DENIED = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"', re.I)
_YIELD_EVERY = 256  # publishes between two yields to the event loop
#: JetStream's "insufficient storage resources" and "insufficient memory resources": the
#: server cannot reserve the stream's max_bytes.
_NO_ROOM = (10047, 10028)
_MIN_STREAM_BYTES = 1 << 20
_RESTART_MAX_S = 30.0
_CLOSE_S = 1.0  # a connection's polite close, before it is reset
_ENCODER = msgspec.json.Encoder()


def _without_credentials(url: str) -> str:
    """A server URL as it may be logged: `nats://user:password@host:port` without its userinfo."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


def market_token(market: str) -> str:
    """`BTC/USD` -> `BTC-USD`: the market as one subject token (no `.`, `*`, `>` or space)."""
    return market.replace("/", "-")


def price_subject(prefix: str, market: str) -> str:
    return f"{prefix}.prices.{market_token(market)}"


def round_subject(prefix: str) -> str:
    return f"{prefix}.rounds"


def stalled_subject(prefix: str) -> str:
    return f"{prefix}.stalled"


@dataclass(slots=True)
class NatsStats:
    """Plain counters read by the metrics collector at scrape time."""

    connected: bool = False
    published: int = 0  # messages handed to the connection
    lost: int = 0  # of those, thrown away unsent with a lost connection (`ResettingClient`)
    reconnects: int = 0
    restarts: int = 0  # the sink's task started again after a crash
    unpublished: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(UNPUBLISHED_REASONS, 0)
    )
    connect_failures: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(CONNECT_FAILURE_REASONS, 0)
    )
    # publishes and subscriptions the server's permissions refused, by DENIED_SUBJECTS
    permission_denied: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(DENIED_SUBJECTS, 0)
    )
    # servers a cluster announced that were not kept: past MAX_ANNOUNCED_SERVERS, or no address
    announced_refused: int = 0


class _UnsignedRound(msgspec.Struct):
    ts: int
    round: int
    count: int
    markets: list[str]


@dataclass(frozen=True, slots=True)
class _Notice:
    """A stall notice waiting in the sink's queue beside the rounds: of the round loop, or of
    the signatures (`unsigned`: the loop runs, its rounds go unsigned)."""

    payload: bytes
    unsigned: bool = False


class NatsSink:
    """Publishes submitted rounds to NATS from its own task; see the module docstring."""

    def __init__(
        self,
        cfg: NatsConfig,
        *,
        connect_timeout_s: float = 2.0,
        ping_interval_s: int = 1,
        restart_base_s: float = 1.0,
        env: Mapping[str, str] | None = None,
        refusal_log_every_s: float = 60.0,
        jetstream_timeout_s: float = 5.0,
    ) -> None:
        self.cfg = cfg
        require_supported_client()  # ConfigError at start on a nats-py without its internals
        self._auth = load_nats_auth(cfg, env)  # ConfigError at start for an unusable secret
        self._restart_base_s = restart_base_s
        self._refusal_every_s = refusal_log_every_s
        self._refusal_logged: float | None = None  # monotonic time of the last refusal logged
        self._refusals = 0  # since the last connection
        self._refused_last = False  # the last failed attempt was a refusal (`_on_error`)
        self._denied_logged: dict[str, float] = {}  # kind -> monotonic time of its last line
        self._denied_since: dict[str, int] = dict.fromkeys(DENIED_SUBJECTS, 0)  # since then
        self._tls_refused = asyncio.Event()  # a TLS handshake failed while connecting
        self._failed_lines = LogEveryMinute()  # `nats publish failed`, by the client's error
        self._announced_since = 0  # announced servers refused since the last line about them
        self.stats = NatsStats()
        self._connect_timeout_s = connect_timeout_s
        self._jetstream_timeout_s = jetstream_timeout_s  # the stream's creation, a request
        self._ping_interval_s = ping_interval_s
        self._queue: deque[SignedRound | RoundResult | _Notice] = deque()
        self._stall: _Notice | None = None  # the notice of the stall going on, if one is
        self._behind = 0  # messages dropped `queue_full` since the queue was last empty
        self._losses = 0  # connections lost so far
        self._wakeup = asyncio.Event()
        self._nc: ResettingClient | None = None
        self._subjects: dict[str, str] = {}
        self._reports = ReportEncoder()  # unsigned rounds: the hub's bytes, from the arrays
        self._log = structlog.get_logger("oracled").bind(component="nats")
        self.ready = asyncio.Event()  # set once connected (and the stream exists, if any)

    # -- the round side ---------------------------------------------------------------------

    def submit(self, batch: SignedRound | RoundResult) -> None:
        """Queue one round (signed or not); never blocks. A full queue drops its oldest round.

        Without a connection the round is counted `disconnected` and dropped at once.
        """
        self._stall = None  # a round: the stall is over
        self._enqueue(batch)

    def unsigned(self, result: RoundResult, notice: bytes | None) -> None:
        """A round the signer left unsigned (`SignerWorker`): none of it is published, since
        with signing on the subjects carry signed messages only, and its messages are counted
        `unsigned`. The round loop ran it, so a stall of the loop is over, as for a round
        submitted.

        But the bus's last signed round is now the daemon's latest there, and a consumer that
        trusts reports longer than the stall limit would hold it as current: `notice` is the
        service's signed notice of that (`SignedStall`, the one the streams get), or None while
        none is due. The bus is told it once, and it is kept until the next signed round (sent
        again after each reconnection, as a stall's)."""
        self.stats.unpublished["unsigned"] += self._size(result)
        if notice is None:
            self._stall = None
        elif self._stall is None or self._stall.payload != notice:
            self._stall = _Notice(notice, unsigned=True)
            self._enqueue(self._stall)

    def stalled(self, notice: bytes) -> None:
        """The round loop has stalled (the API's stall watch says so once per stalled round,
        with `notice`, the StallNotice the signed streams got): queue it like a round."""
        self._stall = _Notice(notice)
        self._enqueue(self._stall)

    def _tell_stall_again(self) -> None:
        """Connected again: the stall still going on is told again (its notice may have been
        dropped while the server was away)."""
        if self._stall is not None:
            self._enqueue(self._stall)

    def _enqueue(self, batch: SignedRound | RoundResult | _Notice) -> None:
        if not self.stats.connected:
            self.stats.unpublished["disconnected"] += self._size(batch)
            return
        if len(self._queue) >= self.cfg.queue:
            dropped = self._size(self._queue.popleft())
            self.stats.unpublished["queue_full"] += dropped
            if not self._behind:  # once per episode: until the task has emptied its queue
                self._log.warning(
                    "nats sink behind; dropping its oldest rounds", queue=self.cfg.queue
                )
            self._behind += dropped
        self._queue.append(batch)
        self._wakeup.set()

    @staticmethod
    def _size(batch: SignedRound | RoundResult | _Notice) -> int:
        if isinstance(batch, _Notice):
            return 1
        count = batch.count if isinstance(batch, SignedRound) else len(batch.layout.markets)
        return count + 1  # the markets and the round message

    # -- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect (retrying until a server answers), then publish forever; cancel to stop. A
        crash is logged, counted and followed by a new start after a backoff."""
        delay = self._restart_base_s
        while True:
            started = time.monotonic()
            try:
                await self._run_once()
                # The server closed the connection with an error: rounds held meanwhile are
                # late by the time a new connection is up, as while disconnected.
                self.stats.unpublished["disconnected"] += self._drop_queued()
            except Exception:  # the supervisor's job: log, count, restart
                lost = self._drop_queued()  # late by the backoff: dropped, as while disconnected
                self.stats.unpublished["error"] += lost
                self.stats.restarts += 1
                self._log.exception("nats sink crashed; restarting", delay_s=delay, lost=lost)
            if time.monotonic() - started > 60.0:
                delay = self._restart_base_s
            await asyncio.sleep(delay)
            delay = min(delay * 2.0, _RESTART_MAX_S)

    def _drop_queued(self) -> int:
        """Empty the queue; the number of messages it held."""
        lost = sum(self._size(batch) for batch in self._queue)
        self._queue.clear()
        return lost

    async def _run_once(self) -> None:
        """Connect, then publish what is submitted until the client is closed for good: nats-py
        reconnects after an outage, but closes the client when the server ends the connection
        with an error (`Authorization Violation` after a reload that revoked the credentials,
        `User Authentication Expired`), and never connects it again. Then this returns, and
        `run` connects anew, the refusals counted and logged as at start."""
        try:
            nc = await self._connect()
            self._nc = nc
            await self._ensure_stream(nc)
            if lost_cancellation():
                # nats-py's request (its `asyncio.wait_for`) drops a cancellation that comes as
                # the JetStream API answers: the sink would wait for rounds for good.
                raise asyncio.CancelledError
            self.ready.set()
            self._tell_stall_again()
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                if nc.is_closed:
                    self._log.error(
                        "nats connection closed by the server; connecting again",
                        error=str(nc.last_error),
                    )
                    return
                while self._queue:
                    await self._publish(nc, self._queue.popleft())
                if self._behind:
                    self._log.info("nats sink caught up", dropped=self._behind)
                    self._behind = 0
        finally:
            self.stats.connected = False
            if self._nc is not None:
                await self._nc.close_within(_CLOSE_S)
                self._nc = None

    async def _connect(self) -> ResettingClient:
        delay = 0.2
        while True:
            self._tls_refused.clear()
            attempt = asyncio.ensure_future(self._connect_once())
            refused = asyncio.ensure_future(self._tls_refused.wait())
            try:
                await asyncio.wait({attempt, refused}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                if attempt.done() and not attempt.cancelled() and attempt.exception() is None:
                    # Connected as the cancellation came: its reading, pings and reconnections
                    # would run on behind the stopped sink, for good.
                    await attempt.result().close_within(_CLOSE_S)
                raise
            finally:
                refused.cancel()
                if not attempt.done():
                    attempt.cancel()
            try:
                nc = await attempt
            except asyncio.CancelledError:
                if lost_cancellation():
                    # The sink's own, cancelled as it waited for the attempt cancelled above:
                    # `Task.cancel` hands it to what the task waits for, the attempt, and it
                    # comes back as the attempt's end.
                    raise
                # The attempt's (ours came through the wait above): nats-py 2.16 never returns
                # from its first connect after a failed TLS handshake (its close waits on the
                # plain socket the handshake took over), so it never retries.
                await asyncio.sleep(delay)
                delay = min(delay * 2.0, 5.0)
                continue
            except (NatsError, OSError, TimeoutError) as exc:
                self._log.warning("nats connect failed; retrying", error=str(exc), delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2.0, 5.0)
                continue
            self.stats.connected = True
            self._refusal_logged, self._refusals, self._refused_last = None, 0, False
            self._log.info(
                "nats connected",
                server=str(nc.connected_url and nc.connected_url.netloc).rpartition("@")[2],
            )
            return nc

    async def _connect_once(self) -> ResettingClient:
        """One `connect`: it retries every server by itself until one lets it in. The client
        throws a lost connection away with what it had not sent (`ResettingClient`)."""
        nc = ResettingClient(self._on_lost, self._on_announced_refused)
        await nc.connect(
            servers=list(self.cfg.servers),
            name="oracled",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            # nats-py annotates these seconds as int; it takes (and sleeps) floats
            reconnect_time_wait=0.5,  # type: ignore[arg-type]
            connect_timeout=self._connect_timeout_s,  # type: ignore[arg-type]
            ping_interval=self._ping_interval_s,
            max_outstanding_pings=2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
            tls_handshake_first=self.cfg.tls_handshake_first,
            **self._auth.options,
        )
        return nc

    async def _ensure_stream(self, nc: NatsClient) -> None:
        """Create the JetStream stream over the prefix's subjects if it is missing.

        An existing stream with other settings is left as it is: operators may have raised its
        replicas or limits on purpose (several replicas publish to one stream), and a daemon
        must not undo that. A server without room for `max_bytes` (JetStream reserves a
        stream's limit when it is made; its `max_file_store` or `max_memory_store` may be
        smaller) is asked for half as much, down to 1 MiB, and the size made is logged: a stream
        without a limit, as before `max_bytes`, was made there, and one smaller is better than
        none.
        """
        if not self.cfg.jetstream:
            return
        js = nc.jetstream(timeout=self._jetstream_timeout_s)
        max_bytes = self.cfg.max_bytes
        while True:
            config = StreamConfig(
                name=self.cfg.stream,
                subjects=[f"{self.cfg.subject_prefix}.>"],
                max_age=self.cfg.max_age_s,
                max_bytes=max_bytes,  # the oldest go first (the default discard policy)
                storage=StorageType.FILE if self.cfg.storage == "file" else StorageType.MEMORY,
            )
            try:
                await js.add_stream(config)
            except BadRequestError as exc:  # it exists with other settings
                self._log.warning(
                    "jetstream stream exists with other settings; left as it is",
                    stream=self.cfg.stream,
                    detail=str(exc),
                )
                return
            except NatsError as exc:
                no_room = isinstance(exc, APIError) and exc.err_code in _NO_ROOM
                if no_room and max_bytes > _MIN_STREAM_BYTES:
                    max_bytes = max(max_bytes // 2, _MIN_STREAM_BYTES)
                    continue
                self._log.error(
                    "jetstream stream not set up", stream=self.cfg.stream, error=str(exc)
                )
                return
            break
        if max_bytes < self.cfg.max_bytes:
            self._log.warning(
                "jetstream stream made smaller than nats.max_bytes: no room for more",
                stream=self.cfg.stream,
                max_bytes=max_bytes,
                configured=self.cfg.max_bytes,
            )
        self._log.info("jetstream stream ready", stream=self.cfg.stream, max_bytes=max_bytes)

    def _subject(self, market: str) -> str:
        subject = self._subjects.get(market)
        if subject is None:
            subject = self._subjects[market] = price_subject(self.cfg.subject_prefix, market)
        return subject

    def _messages(self, batch: SignedRound | RoundResult | _Notice) -> Iterator[tuple[str, bytes]]:
        """The messages of `batch`, each encoded when it is taken: `_publish` gives the event
        loop a turn every `_YIELD_EVERY` of them, so the encoding of a large round is split the
        same way (encoded whole first, a round of 1,000 markets held the loop 15 to 23 ms)."""
        prefix = self.cfg.subject_prefix
        if isinstance(batch, _Notice):
            yield stalled_subject(prefix), batch.payload
            return
        if isinstance(batch, SignedRound):
            for i, leaf in enumerate(batch.leaves):
                yield self._subject(leaf.market), batch.envelope(i)
            yield round_subject(prefix), batch.message()
            return
        markets = batch.layout.markets
        for start in range(0, len(markets), _YIELD_EVERY):
            indices = range(start, min(start + _YIELD_EVERY, len(markets)))
            for i, report in zip(indices, self._reports.encode(batch, indices), strict=True):
                yield self._subject(markets[i]), report
        header = _UnsignedRound(batch.ts, batch.round, len(markets), list(markets))
        yield round_subject(prefix), _ENCODER.encode(header)

    async def _publish(self, nc: NatsClient, batch: SignedRound | RoundResult | _Notice) -> None:
        sent = 0
        done = 0  # messages taken: sent, or refused on their own (over the server's max_payload)
        task = asyncio.current_task()
        losses = self._losses
        try:
            for subject, payload in self._messages(batch):
                if not nc.is_connected or self._losses != losses:
                    # Lost part-way (noticed at a yield, or once a publish returned, maybe on
                    # the next connection): nats-py would keep the rest in its pending buffer
                    # and send it, late, whenever a server is back.
                    self.stats.unpublished["disconnected"] += self._size(batch) - done
                    return
                try:
                    await nc.publish(subject, payload)
                except MaxPayloadError as exc:
                    # Refused before anything is written, this message alone: the others of
                    # the round (smaller: another symbol, a shorter proof, no mark) still go.
                    self._publish_failed(exc, 1, subject=subject, size=len(payload))
                else:
                    sent += 1
                done += 1
                if task is not None and task.cancelling():
                    # nats-py swallows a cancellation that lands while a publish waits for its
                    # full buffer to be written (a stalled path): the task would never end.
                    raise asyncio.CancelledError
                if done % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        except NatsError as exc:
            self._publish_failed(exc, self._size(batch) - done)
        except Exception:  # a bug: the rest of this round is lost, and `run` restarts
            self.stats.unpublished["error"] += self._size(batch) - done
            raise
        finally:
            self.stats.published += sent

    def _publish_failed(self, exc: NatsError, lost: int, **told: object) -> None:
        """Counted each time, logged once a minute per kind: a round message over the server's
        max_payload fails every round, for as long as the markets stay."""
        self.stats.unpublished["error"] += lost
        failures = self._failed_lines.due(type(exc).__name__, time.monotonic())
        if failures is not None:
            self._log.warning(
                "nats publish failed", error=str(exc), lost=lost, rounds=failures, **told
            )

    # -- nats-py callbacks (state changes only) --------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        """nats-py's every error, connecting and reconnecting included (it retries by itself).

        Each failed attempt to connect is counted by its reason (`connect_failures`). An outage
        is otherwise the `disconnected` count's to tell; a refused credential or certificate is
        not an outage that passes by itself, so it is logged at error level: at once, then once
        per `refusal_log_every_s` with the number of refusals since the last connection (nats-py
        retries twice a second), and at once again after the next successful connection. A subject
        the server's permissions refuse, the connection up, is `_on_denied`'s.
        """
        denied = _DENIED.search(str(exc))
        if denied is not None:
            self._on_denied(denied.group(1).lower(), denied.group(2))
            return
        kind = _refusal(exc)
        if kind is None:
            ended = not self.stats.connected and _ended_by_server(exc)
            if ended and self._refused_last:  # the close of the attempt just refused
                self._refused_last = False
            elif not self.stats.connected and _unreachable(exc):
                self.stats.connect_failures["unreachable"] += 1
                # Said once a minute: at start nothing else says it (no `nats disconnected`)
                failures = self._failed_lines.due("unreachable", time.monotonic())
                if failures is not None:
                    self._log.warning(
                        "nats server unreachable; retrying", error=str(exc), attempts=failures
                    )
                return
            elif ended:
                # Taken and ended by the server (`maximum connections exceeded`, no INFO): not
                # counted at all before, an outage with no reason on record.
                self.stats.connect_failures["server_error"] += 1
                failures = self._failed_lines.due("server_error", time.monotonic())
                if failures is not None:
                    self._log.warning(
                        "nats server ended the connection; retrying",
                        error=str(exc),
                        attempts=failures,
                    )
                return
            self._log.debug("nats error", error=str(exc))
            return
        self.stats.connect_failures["tls" if kind == "TLS" else "credentials"] += 1
        self._refused_last = True
        if kind == "TLS":
            self._tls_refused.set()  # `_connect` starts over: nats-py would wait forever
        self._refusals += 1
        now = time.monotonic()
        if self._refusal_logged is None or now - self._refusal_logged >= self._refusal_every_s:
            self._refusal_logged = now
            self._log.error(
                f"nats {kind} refused; retrying",
                error=str(exc),
                auth=self._auth.way or "none",
                refusals=self._refusals,
            )

    def _on_denied(self, action: str, subject: str) -> None:
        """The server refused one publish (`action` `publish`) or subscription of `subject` to
        this user: count it by kind and say so at error level, once per kind per interval."""
        kind = _denied_kind(self.cfg.subject_prefix, action, subject)
        self.stats.permission_denied[kind] += 1
        self._denied_since[kind] += 1
        now = time.monotonic()
        last = self._denied_logged.get(kind)
        if last is not None and now - last < self._refusal_every_s:
            return
        self._denied_logged[kind] = now
        self._log.error(
            "nats permission denied",
            action=action,
            subject=subject,
            kind=kind,
            refusals=self._denied_since[kind],
            auth=self._auth.way or "none",
        )
        self._denied_since[kind] = 0

    def _on_lost(self, messages: int) -> None:
        """The connection was lost with `messages` handed to it and not sent: thrown away."""
        self.stats.lost += messages

    def _on_announced_refused(self, servers: int) -> None:
        """A server announced `servers` that are not kept (`AnnouncedClient`): counted, and
        logged once a minute with the number since the last line."""
        self.stats.announced_refused += servers
        self._announced_since += servers
        if self._failed_lines.due("announced", time.monotonic()) is not None:
            self._log.warning(
                "nats announced servers refused",
                refused=self._announced_since,
                kept_at_most=MAX_ANNOUNCED_SERVERS,
            )
            self._announced_since = 0

    async def _on_disconnected(self) -> None:
        """The connection is lost: the rounds queued are late by the time another is up (the
        sink was held by the lost one, up to `queue` rounds), so they go, counted, as the rest
        of the round being sent (`_losses`)."""
        if self.stats.connected:
            self._log.warning("nats disconnected")
        self.stats.connected = False
        self._losses += 1
        self.stats.unpublished["disconnected"] += self._drop_queued()

    async def _on_reconnected(self) -> None:
        self.stats.connected = True
        self._refusal_logged, self._refusals, self._refused_last = None, 0, False
        self.stats.reconnects += 1
        self._log.warning("nats reconnected")
        if self._nc is not None:
            await self._ensure_stream(self._nc)
        self._tell_stall_again()

    async def _on_closed(self) -> None:
        self.stats.connected = False
        self._wakeup.set()  # `_run_once` ends: nats-py never reconnects a closed client

    async def flush(self) -> None:
        """Wait (up to 1 s) until the server has answered a PING sent after what was handed to
        the connection: a refusal of those publishes has come by then. The connection stays
        open; the sink's task closes it when it ends. Cancelled, it raises, also as the PONG
        comes (nats-py would return)."""
        nc = self._nc
        if nc is not None and nc.is_connected:
            with contextlib.suppress(Exception):
                await nc.flush(timeout=1)
            if lost_cancellation():  # nats-py's `asyncio.wait_for` drops one that comes as the PONG
                raise asyncio.CancelledError

    def describe(self) -> dict[str, Any]:
        """What the sink publishes where, for start-up logs."""
        return {
            "servers": [_without_credentials(url) for url in self.cfg.servers],
            "prices": f"{self.cfg.subject_prefix}.prices.<BASE-QUOTE>",
            "rounds": round_subject(self.cfg.subject_prefix),
            "stalled": stalled_subject(self.cfg.subject_prefix),
            "jetstream": self.cfg.stream if self.cfg.jetstream else None,
            "auth": self._auth.way,
            "tls": self._auth.tls,
        }


def _refusal(exc: BaseException) -> str | None:
    """What the server (or our side of TLS) refused, or None for any other error: `credentials`
    (wrong or missing where the server requires them) or `TLS` (a certificate that does not
    verify, on either side)."""
    if isinstance(exc, ssl.SSLError):
        return "TLS"
    text = str(exc).lower()
    if "authorization violation" in text or "authentication" in text:
        return "credentials"
    return None


def _denied_kind(prefix: str, action: str, subject: str) -> str:
    """Which of DENIED_SUBJECTS a refused `subject` is: a bounded label, not the subject (one
    per market). Compared in lower case: nats-py lower-cases the server's error, subject and
    all."""
    subject, prefix = subject.lower(), prefix.lower()
    if action == "subscription":
        return "inbox" if subject.startswith("_inbox.") else "other"
    if subject.startswith(f"{prefix}.prices."):
        return "prices"
    if subject == round_subject(prefix):
        return "rounds"
    if subject == stalled_subject(prefix):
        return "stalled"
    if subject.startswith("$js.api."):
        return "jetstream_api"
    return "other"


def _ended_by_server(exc: BaseException) -> bool:
    """An attempt a server took and ended without a refusal of credentials: the connection reset
    (a server at its connection limit closes at once; nats-py then also reports the broken pipe
    of its CONNECT, the same attempt, not counted), or a client error (no INFO, garbage)."""
    return isinstance(exc, ConnectionResetError | NatsError)


def _unreachable(exc: BaseException) -> bool:
    """An attempt that found no server: the connection refused or timed out, no route, a name
    that does not resolve. Not a reset or a broken pipe: nats-py reports those also when it
    closes the socket of an attempt the server refused (counted once, as the refusal)."""
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return False
    return isinstance(exc, OSError | TimeoutError)
