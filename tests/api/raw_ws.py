"""A bare WebSocket client on a plain socket, able to do what polite clients never do: stop reading.

aiohttp's client reads the socket on its own, so it cannot play a stuck consumer; this one reads
nothing until told to, with a tiny receive buffer so that the server's buffers fill quickly.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import struct

_MASK = b"\x37\xfa\x21\x3d"  # fixed: these tests need no unpredictability


class RawWebSocket:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._pending = bytearray()  # received and not yet returned by read_frames

    @classmethod
    async def connect(cls, host: str, port: int, path: str, rcvbuf: int = 4096) -> RawWebSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        self = cls(sock)
        await self._loop.sock_connect(sock, (host, port))
        key = base64.b64encode(b"oracled-test-key").decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await self._loop.sock_sendall(sock, request.encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # byte by byte: never read past the handshake
            byte = await self._loop.sock_recv(sock, 1)
            assert byte, "server closed during the handshake"
            head += byte
        assert head.startswith(b"HTTP/1.1 101"), head
        return self

    async def send_text(self, text: str) -> None:
        await self.send_frame(0x1, text.encode())

    async def send_frame(self, opcode: int, payload: bytes, rsv: int = 0) -> None:
        """One final frame of any opcode, payload and reserved bits (0x70), valid or not."""
        await self._loop.sock_sendall(self._sock, _client_frame(opcode, payload, rsv))

    async def send_unmasked(self, opcode: int, payload: bytes) -> None:
        """One final frame without the mask every client frame must carry (RFC 6455 5.1)."""
        assert len(payload) < 126
        frame = bytes([0x80 | opcode, len(payload)]) + payload
        await self._loop.sock_sendall(self._sock, frame)

    async def send_texts(self, *texts: str) -> None:
        """Several text frames in one write, so that the server reads them all at once."""
        data = b"".join(_client_frame(0x1, text.encode()) for text in texts)
        await self._loop.sock_sendall(self._sock, data)

    async def read_frames(self, count: int) -> list[tuple[int, bytes]]:
        """The next `count` frames the server sends (fails if it closes first)."""
        while len(frames := parse_frames(bytes(self._pending))) < count:
            chunk = await self._loop.sock_recv(self._sock, 65536)
            assert chunk, f"the server closed after {len(frames)} of {count} frames"
            self._pending += chunk
        taken = frames[:count]
        used = sum(_frame_size(payload) for _, payload in taken)
        del self._pending[:used]
        return taken

    async def read_to_eof(self) -> list[tuple[int, bytes]]:
        """Everything the server sent until it closed the connection, as (opcode, payload)."""
        data = bytearray()
        while chunk := await self._loop.sock_recv(self._sock, 65536):
            data += chunk
        return parse_frames(bytes(data))

    def close(self) -> None:
        self._sock.close()


def _client_frame(opcode: int, payload: bytes, rsv: int = 0) -> bytes:
    assert len(payload) < 126
    masked = bytes(b ^ _MASK[i % 4] for i, b in enumerate(payload))
    header = bytes([0x80 | rsv | opcode, 0x80 | len(payload)])  # masked, as clients must
    return header + _MASK + masked


def _frame_size(payload: bytes) -> int:
    """Bytes of an unmasked server frame carrying `payload`."""
    n = len(payload)
    return n + (2 if n < 126 else 4 if n < 65536 else 10)


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames (RFC 6455 section 5.2); a frame not wholly in `data` is left
    out."""
    frames, pos = [], 0
    while pos + 2 <= len(data):
        opcode, length = data[pos] & 0x0F, data[pos + 1] & 0x7F
        head = 2 + {126: 2, 127: 8}.get(length, 0)
        if pos + head > len(data):
            break
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos + 2)
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos + 2)
        if pos + head + length > len(data):
            break
        frames.append((opcode, data[pos + head : pos + head + length]))
        pos += head + length
    return frames
