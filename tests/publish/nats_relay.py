"""A loopback TCP relay between a NATS client and a real nats-server that a test breaks on purpose.

Each connection the relay accepts is paired with one to the server, and bytes are pumped both
ways. The test then acts on the connections open at that moment, or on the next ones:

- `cut()` resets every open connection at once (RST, no goodbye), mid-frame or not;
- `stall()` stops moving bytes either way with both sockets left open (a frozen path: the
  client's pings go unanswered), until `flow()`;
- `inject(data)` writes `data` to every client as if the server had sent it (an `-ERR` line,
  garbage), after what the server already sent;
- `info(rewrite)` rewrites the server's INFO line of the connections made from then on (a
  smaller `max_payload`);
- `mute()` makes the next connections meet a socket that accepts and never answers (no INFO),
  and `refuse()` ones that are closed at once; `pass_()` undoes either;
- `hold()` makes the next connections pass the server's INFO line and hold what it says next
  (its answer to the client's CONNECT and PING) until `flow()`; `pass_()` undoes it too.

`taken(n)` returns in the loop turn after the relay took its `n`th connection, and `held(n)`
once `n` connections hold the server's answer, so that a test acts at a known point of the
client's attempt (the relay runs on the test's event loop).

Only what the test sets is changed: the server is the real one, and so is the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

from ports import free_port

__all__ = ["NatsRelay"]


class _Pair:
    """One client connection and its connection to the server."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter | None) -> None:
        self.client = client
        self.server = server
        self.flowing = asyncio.Event()
        self.flowing.set()

    def reset(self) -> None:
        for writer in (self.client, self.server):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:  # linger 0: close sends RST, the bytes in flight are lost
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


class NatsRelay:
    """Listens on a free loopback port (`url`) and relays to `upstream_port`; see the module
    docstring for the faults. Use as `async with NatsRelay(port) as relay:`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.accepted = 0  # connections taken, whatever became of them
        self._mode = "pass"
        self._took = asyncio.Event()  # set at each connection taken
        self.holding = 0  # connections that held the server's answer (`hold()`)
        self._held = asyncio.Event()  # set at each of them
        self._rewrite: Callable[[bytes], bytes] | None = None
        self._pairs: set[_Pair] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> NatsRelay:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for pair in list(self._pairs):
            pair.reset()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    # -- faults ------------------------------------------------------------------------------

    def cut(self) -> None:
        for pair in list(self._pairs):
            pair.reset()
        self._pairs.clear()

    def stall(self) -> None:
        for pair in self._pairs:
            pair.flowing.clear()

    def flow(self) -> None:
        for pair in self._pairs:
            pair.flowing.set()

    def inject(self, data: bytes) -> None:
        for pair in self._pairs:
            pair.client.write(data)

    def info(self, rewrite: Callable[[bytes], bytes] | None) -> None:
        self._rewrite = rewrite

    def mute(self) -> None:
        self._mode = "mute"

    def refuse(self) -> None:
        self._mode = "refuse"

    def hold(self) -> None:
        self._mode = "hold"

    def pass_(self) -> None:
        self._mode = "pass"

    async def taken(self, count: int) -> None:
        """Return once `count` connections were taken in all: in the loop turn after the one
        that took the last of them, if not before."""
        while self.accepted < count:
            self._took.clear()
            await self._took.wait()

    async def held(self, count: int) -> None:
        """Return once `count` connections in all held the server's answer (`hold()`)."""
        while self.holding < count:
            self._held.clear()
            await self._held.wait()

    @property
    def open(self) -> int:
        """Connections open through the relay now."""
        return len(self._pairs)

    # -- the relay ---------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._took.set()
        if self._mode == "refuse":
            writer.transport.abort()
            return
        if self._mode == "mute":
            pair = _Pair(writer, None)
            self._pairs.add(pair)
            self._spawn(self._drain(reader, pair))
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        self._spawn(self._pump(reader, up_writer, pair))
        hold = self._mode == "hold"
        self._spawn(self._pump(up_reader, writer, pair, rewrite=self._rewrite, hold=hold))

    async def _drain(self, reader: asyncio.StreamReader, pair: _Pair) -> None:
        """A mute peer: reads what the client sends and never answers."""
        try:
            while await reader.read(65536):
                pass
        except OSError:
            pass
        finally:
            self._pairs.discard(pair)
            pair.reset()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: _Pair,
        *,
        rewrite: Callable[[bytes], bytes] | None = None,
        hold: bool = False,
    ) -> None:
        try:
            if rewrite is not None or hold:  # the server speaks first: its INFO line
                info = await reader.readline()
                writer.write(info if rewrite is None else rewrite(info))
            if hold:  # then answers the client's CONNECT and PING: held until `flow()`
                answer = await reader.read(65536)
                pair.flowing.clear()
                self.holding += 1
                self._held.set()
                await pair.flowing.wait()
                writer.write(answer)
            while True:
                await pair.flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await pair.flowing.wait()  # a stall that began while this read waited
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self._pairs.discard(pair)
            pair.reset()
