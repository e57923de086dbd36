"""The API's resource use: gzip of the JSON read answers, send deadline, connection cap, CORS."""

from __future__ import annotations

import gzip
import json

from aiohttp import web
from aiohttp.test_utils import TestClient
from api_rig import ClientFactory, Rig

from oracled.api import READ

Client = TestClient[web.Request, web.Application]
GZIP = {"Accept-Encoding": "gzip"}
IDENTITY = {"Accept-Encoding": "identity"}


async def _raw(
    client: Client, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and the body exactly as sent (no decompression by the client)."""
    async with client.session.get(
        client.make_url(path), headers=headers, auto_decompress=False
    ) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_prices_are_gzipped_when_asked_and_compressed_once_per_round(
    make_client: ClientFactory, rig: Rig
) -> None:
    """`Accept-Encoding: gzip` gets the same JSON gzipped (`Content-Encoding: gzip`, `Vary:
    Accept-Encoding`); without it the body is plain. A round's body is compressed once however
    many clients ask, and again after the next round."""
    client = await make_client(rig)
    rig.step()
    status, headers, plain = await _raw(client, "/v1/prices", IDENTITY)
    assert status == 200 and "Content-Encoding" not in headers
    assert headers["Vary"] == "Accept-Encoding"
    status, headers, packed = await _raw(client, "/v1/prices", GZIP)
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(packed) == plain and len(packed) < len(plain)
    read = client.server.app[READ]
    before = read.compressions
    for _ in range(3):
        again = await _raw(client, "/v1/prices", {"Accept-Encoding": "deflate, gzip;q=0.5"})
        assert again[2] == packed
    assert read.compressions == before
    rig.step()
    _, _, fresh = await _raw(client, "/v1/prices", GZIP)
    assert read.compressions == before + 1
    assert json.loads(gzip.decompress(fresh))[0]["round"] == 2


async def test_gzip_refused_by_q_zero_and_other_read_answers(
    make_client: ClientFactory, rig: Rig
) -> None:
    """`gzip;q=0` (or only other codings) gets the plain body; `*` accepts gzip. A selection,
    one market, the market list and the OpenAPI document are gzipped too, and decompress to
    the plain answer."""
    client = await make_client(rig)
    rig.step()
    for refused in ("gzip;q=0", "br", "identity", "*;q=0", "gzip;q=0, *"):
        _, headers, _ = await _raw(client, "/v1/prices", {"Accept-Encoding": refused})
        assert "Content-Encoding" not in headers, refused
    for path in (
        "/v1/prices",
        "/v1/prices?markets=BTC-USD,ETH-USD",
        "/v1/prices/BTC-USD",
        "/v1/markets",
        "/openapi.json",
    ):
        _, headers, packed = await _raw(client, path, {"Accept-Encoding": "*"})
        _, _, plain = await _raw(client, path, IDENTITY)
        assert headers.get("Content-Encoding") == "gzip", path
        assert gzip.decompress(packed) == plain, path


async def test_streams_are_never_compressed(make_client: ClientFactory, rig: Rig) -> None:
    """The event stream is sent as it is even to a client that accepts gzip: a compressed
    stream would be held back by the compressor's buffer."""
    client = await make_client(rig)
    rig.step()
    async with client.session.get(
        client.make_url("/v1/events"), headers=GZIP, auto_decompress=False
    ) as resp:
        assert resp.status == 200 and "Content-Encoding" not in resp.headers
        assert await resp.content.readline() == b": oracled report stream\n"
        while (line := await resp.content.readline()) == b"\n":
            pass
        assert line.startswith(b"data: {")
