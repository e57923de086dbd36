"""The NATS sink's client: nats-py's, with a lost connection thrown away at once.

nats-py closes a connection it has given up on (its pings unanswered, the socket reset) the
polite way, and waits until it is closed before it connects again. A peer that reads nothing (a
path that stopped moving bytes, a frozen server) never lets that close end while bytes nats-py
wrote are still waiting to go: the client sat there, neither connected nor connecting again,
for as long as the path stayed stalled (at 1,000 markets a round is 1.3 MB, so two rounds
were enough), and when the path came back those bytes reached the server, rounds seconds or
minutes old arriving after the newer ones of the next connection. What it had not written yet
it kept, and sent on the next connection, late too.

So before nats-py connects again, the socket is reset (closed with SO_LINGER 0: the kernel
throws away what it holds unsent, the peer gets a RST) and the publishes nats-py still held are
dropped, their number handed to `on_dropped` (the sink counts them as `lost`). And the socket
of an attempt that failed after connecting (a server that never greets) is closed before the
next attempt: nats-py left it open for the collector, one per attempt.

The servers a cluster announces (the `connect_urls` of a server's INFO, sent again whenever the
cluster changes) join the ones configured, for the reconnections. nats-py adds every new one and
forgets none: a server announcing other names with each INFO grew the list for the life of the
process (and the scan of it at every INFO with it), and a cluster whose nodes move (new
addresses at every restart) left the old ones in it for good. `AnnouncedClient`, the base of
the sink's client and of `oracled.client`'s, keeps the servers of the latest announcement only,
at most `MAX_ANNOUNCED_SERVERS` of them, beside the configured ones; what it leaves out (past
the bound, or no server address at all) is handed to `on_refused` to count and log.

nats-py waits on each step of a connection (the TCP connect, the server's greeting, its PONG)
through `asyncio.wait_for`, which under Python 3.11 drops a cancellation that arrives as the step
completes: it returns the step's result, or raises its error, and the task goes on. A task
connecting went on connecting, twice a second, for good: a consumer's watch cancelled once right
after a server that closes at once took a connection, or nats-py's own reconnection task when
`close` cancelled it (the client closed, its reconnection still running). `CancellableClient`,
the base of both clients, raises that cancellation again after each step and before each attempt
(the task's `cancelling()` still counts it), so one cancellation ends the attempt; its `connect`
closes what the attempt had opened before it raises (nats-py left the socket to the collector),
and closes a connection made as the cancellation was dropped. A reconnection that `close`
cancelled as its connection was made went on as connected on the closed client (its read loop,
its pings, and once that connection went, reconnections for good): it is stopped there too.

All of them reach into nats-py's private state as 2.16 has it (`missing_internals` lists the names).
The sink's tests check the behaviour against the version installed, and
`require_supported_client` refuses the sink's start, naming the version, where those names are
not there: such a client would run, and silently neither reset nor drop nor bound the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import socket
import struct
from collections.abc import Callable
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlparse

import nats.aio.client
from nats.aio.client import Client
from nats.aio.transport import TcpTransport

from oracled.errors import ConfigError

__all__ = [
    "MAX_ANNOUNCED_SERVERS",
    "NATS_PY_TESTED",
    "NATS_PY_VERSION",
    "AnnouncedClient",
    "CancellableClient",
    "ResettingClient",
    "lost_cancellation",
    "missing_internals",
    "require_supported_client",
]

NATS_PY_TESTED: Final = "2.16"  # the nats-py whose internals these clients were written against
NATS_PY_VERSION: Final = version("nats-py")

#: The most servers of one announcement kept beside the configured ones: a NATS cluster is a
#: few nodes (docs/publishing.md, *Running replicas*).
MAX_ANNOUNCED_SERVERS: Final = 32

_LINGER_RESET = struct.pack("ii", 1, 0)
_PUBLISHES = (b"PUB ", b"HPUB ")


def _netloc(url: object) -> str | None:
    """The `host:port` by which nats-py tells an announced server from the others, or None for
    an entry that names no server."""
    if not isinstance(url, str):
        return None
    try:
        netloc = urlparse(f"nats://{url}").netloc  # the scheme nats-py gives it (or tls)
    except ValueError:  # an unclosed IPv6 bracket, say
        return None
    return netloc or None


def lost_cancellation() -> bool:
    """Whether the current task was cancelled and runs still: a cancellation that an await
    dropped (nats-py's `asyncio.wait_for`, see the module docstring) or that reached the task as
    the end of what it waited for is counted still."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _raise_lost_cancellation() -> None:
    if lost_cancellation():
        raise asyncio.CancelledError


class CancellableClient(Client):
    """A nats-py client whose connection attempts end on a cancellation that nats-py's
    `asyncio.wait_for` dropped, checked before each attempt and after its steps, and whose
    `connect` leaves nothing open when it raises (nats-py left a cancelled attempt's socket to
    the collector)."""

    if not TYPE_CHECKING:  # to a type checker, nats-py's `connect` with its parameters

        async def connect(self, *args: Any, **kwargs: Any) -> None:
            try:
                await super().connect(*args, **kwargs)
            except BaseException:
                self._abort_socket()  # no task of nats-py runs yet: they start once connected
                raise
            if lost_cancellation():  # dropped by the last step of a connection made
                await self.close()
                raise asyncio.CancelledError

    async def _attempt_reconnect(self) -> None:
        await super()._attempt_reconnect()
        if lost_cancellation() and self._reconnection_task is asyncio.current_task():
            # `close` cancelled this task (a newer reconnection would have taken its place)
            # and a connection made as it did went on as connected on the closed client: its
            # read loop, pings and, once that connection went, reconnections for good. The
            # close, waiting for this task, closes the socket next.
            self._status = Client.CLOSED
            for task in (self._reading_task, self._ping_interval_task, self._flusher_task):
                if task is not None:
                    task.cancel()
            raise asyncio.CancelledError

    async def _connect_to_server(self, s: Any) -> None:
        _raise_lost_cancellation()
        try:
            await super()._connect_to_server(s)
        except Exception:  # what a step raised in place of the cancellation
            _raise_lost_cancellation()
            raise
        _raise_lost_cancellation()

    async def _process_connect_init(self) -> None:
        # Once it returns, the connection is made and nats-py's tasks run: `connect` (at start)
        # or `_attempt_reconnect` (after a loss) goes on, and `close` undoes it.
        try:
            await super()._process_connect_init()
        except Exception:
            _raise_lost_cancellation()
            raise

    def _abort_socket(self) -> None:
        writer = getattr(self._transport, "_io_writer", None)
        if writer is not None:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed: nothing left to keep
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            writer.transport.abort()


class AnnouncedClient(CancellableClient):
    """A nats-py client that keeps the servers of the latest announcement only, at most
    `MAX_ANNOUNCED_SERVERS`; `on_refused` gets the number of those left out of each."""

    def __init__(self, on_refused: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self._on_refused = on_refused

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        announced = info.get("connect_urls")
        if announced:  # nats-py reads none from an empty or missing list either
            kept: dict[str, object] = {}
            refused = 0
            for url in announced if isinstance(announced, list) else [announced]:
                netloc = _netloc(url)
                if netloc is None or (netloc not in kept and len(kept) >= MAX_ANNOUNCED_SERVERS):
                    refused += 1
                else:
                    kept.setdefault(netloc, url)
            current = self._current_server
            self._server_pool[:] = [
                s
                for s in self._server_pool
                if not s.discovered or s is current or s.uri.netloc in kept
            ]
            info = {**info, "connect_urls": list(kept.values())}
            if refused and self._on_refused is not None:
                self._on_refused(refused)
        await super()._process_info(info, initial_connection)


class ResettingClient(AnnouncedClient):
    """A nats-py client that resets a lost connection and drops what it had not sent."""

    def __init__(
        self,
        on_dropped: Callable[[int], None],
        on_refused: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(on_refused)
        self._on_dropped = on_dropped

    async def _attempt_reconnect(self) -> None:
        self.reset()
        await super()._attempt_reconnect()

    async def close_within(self, timeout_s: float) -> None:
        """Close politely (what is still unsent goes first) if that ends within `timeout_s`,
        else reset the connection: nats-py's close waits for the peer to take every byte, and
        a stalled path takes none, which held the sink's task, and the daemon's stop, for ever.
        Never raises: closing a dead connection may raise anything."""
        closing = asyncio.ensure_future(self.close())
        for _ in range(2):  # a reset ends what the close waited for: one more wait, then left
            done, _ = await asyncio.wait({closing}, timeout=timeout_s)
            if done:
                with contextlib.suppress(Exception):
                    closing.result()
                return
            self.reset()
        closing.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def _connect_to_server(self, s: Any) -> None:
        # nats-py reuses its transport object for the next attempt and leaves the socket of one
        # that failed after connecting (a server that never greets) open, to the collector.
        self._abort_socket()
        await super()._connect_to_server(s)

    def reset(self) -> None:
        """Throw the connection away: reset the socket, drop the publishes not written yet."""
        self._abort_socket()
        dropped = sum(1 for command in self._pending if command.startswith(_PUBLISHES))
        self._pending = []
        self._pending_data_size = 0
        if dropped:
            self._on_dropped(dropped)


# nats-py's record of one server (`_server_pool`'s entries), looked up so that a release without
# it is reported as missing rather than failing this module's import.
_SERVER_RECORD: Any = getattr(nats.aio.client, "Srv", None)


def missing_internals(
    client: type[Any] = Client,
    transport: type[Any] = TcpTransport,
    server: Any = _SERVER_RECORD,
) -> list[str]:
    """What `ResettingClient`, `AnnouncedClient` and `CancellableClient` override or touch that
    `client` (its TCP `transport`, its `server` record) lacks: empty for nats-py 2.16. A name
    gone means a reset, a bound or a check of a lost cancellation that does nothing, without an
    error."""
    missing = [
        f"Client.{name}()"
        for name in (
            "_attempt_reconnect",
            "_connect_to_server",
            "_process_connect_init",
            "_process_info",
        )
        if not inspect.iscoroutinefunction(getattr(client, name, None))
    ]
    fresh = client()  # nats-py's client sets its state up in __init__ and connects nowhere
    for name, kind in (("_pending", list), ("_pending_data_size", int), ("_server_pool", list)):
        if not isinstance(getattr(fresh, name, None), kind):
            missing.append(f"Client.{name}")
    state = (
        "_transport",
        "_current_server",
        "_status",
        "_reconnection_task",
        "_reading_task",
        "_ping_interval_task",
        "_flusher_task",
    )
    missing.extend(f"Client.{name}" for name in state if not hasattr(fresh, name))
    if not hasattr(transport(), "_io_writer"):
        missing.append("TcpTransport._io_writer")
    fields = (
        {field.name for field in dataclasses.fields(server)}
        if isinstance(server, type) and dataclasses.is_dataclass(server)
        else set()
    )
    missing.extend(f"Srv.{name}" for name in ("uri", "discovered") if name not in fields)
    return missing


def require_supported_client(
    client: type[Any] = Client,
    transport: type[Any] = TcpTransport,
    server: Any = _SERVER_RECORD,
) -> None:
    """Refuse the start (ConfigError, as `check-config` does) on a nats-py without the internals
    these clients reach into: the sink would run, and neither reset a stalled connection nor
    drop what it held, which is what it needs its client for."""
    if missing := missing_internals(client, transport, server):
        raise ConfigError(
            [
                f"nats.enabled: the installed nats-py {NATS_PY_VERSION} lacks "
                f"{', '.join(missing)}, which oracled's NATS client relies on; "
                f"install nats-py {NATS_PY_TESTED}.x (`pip install 'nats-py~={NATS_PY_TESTED}.0'`)"
            ]
        )
