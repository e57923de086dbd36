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
        assert len(payload) < 126
        masked = bytes(b ^ _MASK[i % 4] for i, b in enumerate(payload))
        header = bytes([0x80 | rsv | opcode, 0x80 | len(payload)])  # masked, as clients must
        await self._loop.sock_sendall(self._sock, header + _MASK + masked)

    async def read_to_eof(self) -> list[tuple[int, bytes]]:
        """Everything the server sent until it closed the connection, as (opcode, payload)."""
        data = bytearray()
        while chunk := await self._loop.sock_recv(self._sock, 65536):
            data += chunk
        return parse_frames(bytes(data))

    def close(self) -> None:
        self._sock.close()


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames (RFC 6455 section 5.2)."""
    frames, pos = [], 0
    while pos < len(data):
        opcode, length = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        frames.append((opcode, data[pos : pos + length]))
        pos += length
    return frames
