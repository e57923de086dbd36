"""The API's resource use: gzip of the JSON read answers, send deadline, connection cap, CORS."""

from __future__ import annotations

import asyncio
import copy
import gzip
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from api_rig import (
    CONFIG,
    PRICES,
    PROM_TEXT,
    TOKEN,
    ClientFactory,
    ContractRecorder,
    HeldMetricsRig,
    Rig,
    count_arrivals,
    make_config,
    raw_get,
    serve_guarded,
    until,
)
from prometheus_client import Gauge
from structlog.testing import capture_logs

from oracled.api import LIMITS, OPS, READ, build_app
from oracled.api.encoding import MIN_GZIP, OFF_LOOP
from oracled.api.params import MAX_LIST
from oracled.config import ApiConfig, Config, parse_config
from oracled.errors import ConfigError

Client = TestClient[web.Request, web.Application]
GZIP = {"Accept-Encoding": "gzip"}
IDENTITY = {"Accept-Encoding": "identity"}
ROUND_BODY_BYTES = ApiConfig().round_body_bytes  # the default, which the tests' configs keep
ROUND_BODIES = ApiConfig().round_bodies  # likewise


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


async def test_the_openapi_documents_gzip_is_made_once_and_counted(
    make_client: ClientFactory, rig: Rig
) -> None:
    """`/openapi.json` for clients that take gzip: one compression for all of them, off the
    loop (the document is past 64 KiB), counted where /metrics reads the read answers' gzip
    (`oracled_api_bodies_gzipped_total`, `..._off_loop_total`); a client that does not take
    gzip makes none. It was served gzipped and never counted."""
    client = await make_client(rig)
    read = client.server.app[READ]
    _, _, plain = await _raw(client, "/openapi.json", IDENTITY)
    assert len(plain) >= OFF_LOOP
    assert (read.compressions, read.compressed_off_loop) == (0, 0)
    answers = [await _raw(client, "/openapi.json", GZIP) for _ in range(3)]
    assert {a[2] for a in answers} == {answers[0][2]}
    assert all(a[1]["Content-Encoding"] == "gzip" for a in answers)
    assert gzip.decompress(answers[0][2]) == plain
    assert (read.compressions, read.compressed_off_loop) == (1, 1)
    assert (rig.hub.bodies_gzipped, rig.hub.bodies_gzipped_off_loop) == (1, 1)


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


async def test_an_answer_the_client_does_not_read_is_cut_at_the_send_timeout(
    make_client: ClientFactory,
) -> None:
    """A client that asks for a large answer and never reads it no longer holds the handler
    and the body forever: past `api.send_timeout_s` the connection is aborted (the client
    gets less than the body, then the end), counted in `api_closed["send_timeout"]` and logged
    once; the server goes on answering others.

    The timeout's width proves nothing but has to hold the reading client's own /metrics
    answer first (0.09 s unloaded with its render, up to 0.5 s seen at a load of 8 on 2
    vCPUs, where 0.3 s once cut it): 2 s, which the client that does not read never reaches."""
    rig = Rig(make_config(send_timeout_s=2.0))
    padding = Gauge("test_padding", "Fills /metrics", ["name"], registry=rig.registry)
    for k in range(5_000):
        padding.labels(f"{k:06d}-" + "x" * 40).set(1)
    client = await make_client(rig, small_send_buffer=True)
    size = len(await (await client.get("/metrics")).read())
    assert size > 300_000
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        with capture_logs() as logs:
            await loop.sock_connect(sock, (client.host, client.port))
            await loop.sock_sendall(sock, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            await until(lambda: rig.hub.api_closed["send_timeout"] == 1, "a send timeout")
        received = 0
        try:
            while chunk := await loop.sock_recv(sock, 65536):
                received += len(chunk)
        except ConnectionResetError:
            pass  # aborted: the unsent rest was dropped
        assert received < size
    finally:
        sock.close()
    (event,) = [e for e in logs if e["event"] == "api_send_timeout"]
    assert event["path"] == "/metrics" and event["closed"] == 1
    assert (await client.get("/v1/info")).status == 200


async def test_connections_beyond_the_cap_are_refused_with_503_and_closed(
    aiohttp_client: Any, contract: ContractRecorder
) -> None:
    """With `api.max_connections = 2`, two keep-alive clients are served as often as they ask;
    a request on a third connection is a 503 `too_many_connections` with `Connection: close`
    (counted, and logged as `api_connection_limit` at most once a minute with the number
    refused since the last line), except `/healthz`, answered on a connection then closed.
    Once one of the two goes, a new connection is served."""
    rig = Rig(make_config(max_connections=2))
    rig.step()
    client = await aiohttp_client(build_app(rig.context()))
    limits = client.server.app[LIMITS]

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(client.host, client.port)

    first, second = await connect(), await connect()
    for conn in (first, second, first, second):
        assert (await raw_get(conn, "/v1/info"))[0] == 200
    third = await connect()
    with capture_logs() as logs:
        status, headers, body = await raw_get(third, "/v1/info")
        for _ in range(3):  # refused too, within the minute: counted, not logged again
            extra = await connect()
            assert (await raw_get(extra, "/v1/info"))[0] == 503
            extra[1].close()
    (event,) = [e for e in logs if e["event"] == "api_connection_limit"]
    assert event["log_level"] == "warning" and event["max_connections"] == 2
    assert event["closed"] == 1 and event["path"] == "/v1/info"
    assert status == 503 and headers["connection"] == "close"
    assert headers["cache-control"] == "no-store" and headers["retry-after"] == "1"
    error = json.loads(body)
    contract.validator("/components/schemas/Error").validate(error)
    assert error["error"]["code"] == "too_many_connections"
    assert await third[0].read() == b""  # closed by the server
    assert rig.hub.api_closed["connection_limit"] == 4
    probe = await connect()
    status, headers, _ = await raw_get(probe, "/healthz")
    assert status == 200 and headers["connection"] == "close"
    assert await probe[0].read() == b""
    assert (await raw_get(first, "/v1/prices"))[0] == 200
    first[1].close()
    await until(lambda: limits.connections == 1, "the server saw the close")
    fourth = await connect()
    assert (await raw_get(fourth, "/v1/info"))[0] == 200
    for _, writer in (second, third, probe, fourth):
        writer.close()


async def test_a_scrape_beyond_the_connection_cap_is_answered(aiohttp_client: Any) -> None:
    """With every place under `api.max_connections` taken, Prometheus's scrape of `/metrics` on a
    new connection is still answered (then the connection closed), as `/healthz` is: a flood of
    clients must not read as a dead daemon (OracledDown) and hide the metrics that show it."""
    rig = Rig(make_config(max_connections=1))
    rig.step()
    client = await aiohttp_client(build_app(rig.context()))
    held = await asyncio.open_connection(client.host, client.port)
    assert (await raw_get(held, "/v1/info"))[0] == 200
    scraper = await asyncio.open_connection(client.host, client.port)
    status, headers, body = await raw_get(scraper, "/metrics")
    assert status == 200 and headers["connection"] == "close"
    assert b"test_renders_total" in body
    assert await scraper[0].read() == b""
    refused = await asyncio.open_connection(client.host, client.port)
    assert (await raw_get(refused, "/v1/prices"))[0] == 503  # the cap still holds for the rest
    for _, writer in (held, scraper, refused):
        writer.close()


DASH = "https://dash.example"
PREFLIGHT = {"Origin": DASH, "Access-Control-Request-Method": "GET"}


async def test_without_cors_origins_no_cors_headers_and_no_preflight(
    make_client: ClientFactory, rig: Rig
) -> None:
    """By default (`api.cors_origins` empty) nothing changes: no Access-Control-* header for
    any Origin, and a preflight OPTIONS is the usual 405."""
    client = await make_client(rig)
    rig.step()
    resp = await client.get("/v1/prices", headers={"Origin": DASH})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    assert "Origin" not in resp.headers.get("Vary", "")
    pre = await client.options("/v1/prices", headers=PREFLIGHT)
    assert pre.status == 405 and "Access-Control-Allow-Origin" not in pre.headers


async def test_cors_allows_listed_origins_on_reads_and_events_never_on_admin(
    make_client: ClientFactory,
) -> None:
    """With `api.cors_origins = ["https://dash.example"]`, a GET (answers and errors alike) and
    the event stream from that origin carry `Access-Control-Allow-Origin` naming it and `Vary:
    Origin`; a preflight is a 204 allowing GET and HEAD (an unknown path stays a 404); another
    origin gets none of it; the
    admin endpoints never do, nor answer a preflight."""
    rig = Rig(make_config(cors_origins=[DASH]))
    client = await make_client(rig)
    rig.step()
    origin = {"Origin": DASH}
    for path in ("/v1/prices", "/v1/prices/BTC-USD", "/v1/markets", "/v1/info", "/v1/prices/X"):
        resp = await client.get(path, headers=origin)
        assert resp.headers.get("Access-Control-Allow-Origin") == DASH, path
        assert "Origin" in resp.headers["Vary"], path
    prices = await client.get("/v1/prices", headers=origin)
    assert set(prices.headers["Vary"].replace(" ", "").split(",")) == {"Accept-Encoding", "Origin"}
    other = await client.get("/v1/prices", headers={"Origin": "https://evil.example"})
    assert other.status == 200 and "Access-Control-Allow-Origin" not in other.headers
    async with client.session.get(client.make_url("/v1/events"), headers=origin) as events:
        assert events.status == 200
        assert events.headers.get("Access-Control-Allow-Origin") == DASH
    pre = await client.options("/v1/events", headers=PREFLIGHT)
    assert pre.status == 204 and pre.headers["Access-Control-Allow-Origin"] == DASH
    assert set(pre.headers["Access-Control-Allow-Methods"].replace(" ", "").split(",")) == {
        "GET",
        "HEAD",
    }
    refused = await client.options(
        "/v1/prices", headers={**PREFLIGHT, "Origin": "https://evil.example"}
    )
    assert refused.status == 405 and "Access-Control-Allow-Origin" not in refused.headers
    unknown = await client.options("/v1/nothing", headers=PREFLIGHT)
    assert unknown.status == 404
    admin = "/v1/admin/markets/BTC-USD/pause"
    post = await client.post(admin, headers={**origin, "Authorization": "Bearer wrong-token-xx"})
    assert post.status == 401 and "Access-Control-Allow-Origin" not in post.headers
    pre = await client.options(
        admin, headers={**PREFLIGHT, "Access-Control-Request-Method": "POST"}
    )
    assert pre.status == 405 and "Access-Control-Allow-Origin" not in pre.headers
    assert rig.manual == []


async def test_cors_star_allows_any_origin(make_client: ClientFactory) -> None:
    """`"*"` in `api.cors_origins` answers `Access-Control-Allow-Origin: *` to any origin."""
    rig = Rig(make_config(cors_origins=["*"]))
    client = await make_client(rig)
    rig.step()
    resp = await client.get("/v1/prices", headers={"Origin": "https://any.example"})
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    pre = await client.options("/v1/prices", headers={**PREFLIGHT, "Origin": "http://x.test"})
    assert pre.status == 204 and pre.headers["Access-Control-Allow-Origin"] == "*"


_HANDSHAKE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


async def _opens_stream(client: TestClient[web.Request, web.Application], origin: str) -> bool:
    """Whether a handshake sent with `Origin: origin` becomes a stream that serves reports
    (False: refused with the documented 403, nothing subscribed)."""
    try:
        async with client.session.ws_connect(
            client.make_url("/v1/stream"), headers={"Origin": origin}
        ) as ws:
            await ws.send_json({"op": "subscribe", "markets": ["BTC/USD"]})
            assert (await ws.receive_json())["type"] == "subscribed"
            assert (await ws.receive_json())["type"] == "report"
            return True
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 403, exc
    async with client.session.get(
        client.make_url("/v1/stream"), headers={**_HANDSHAKE, "Origin": origin}
    ) as resp:
        assert resp.status == 403
        body = await resp.json()
    assert body["error"]["code"] == "origin_refused", body
    assert "api.cors_origins" in body["error"]["message"]
    return False


async def test_a_page_of_another_origin_cannot_open_the_stream_unless_listed(
    make_client: ClientFactory,
) -> None:
    """A browser lets any page open a WebSocket and read what it is sent (no preflight, and
    the answer's CORS headers are not looked at), so the stream holds `api.cors_origins`
    itself: a handshake whose `Origin` is neither listed nor the API's own is a 403
    `origin_refused`, subscribes nothing, and is logged once a minute with the count; with
    no `Origin` (not a browser page) or the API's own, it opens as before. Before, any web
    page a visitor opened could read the stream of a daemon the visitor's browser reaches."""
    rig = Rig(make_config())  # no cors_origins: no other origin may read
    client = await make_client(rig)
    rig.step()
    own = f"http://{client.host}:{client.port}"
    with capture_logs() as logs:
        assert not await _opens_stream(client, "https://evil.example")
        assert not await _opens_stream(client, "null")  # a sandboxed page, a file
        assert not await _opens_stream(client, f"ftp://{client.host}:{client.port}")
    assert rig.hub.subscribers == 0
    refused = [e for e in logs if e["event"] == "stream_origin_refused"]
    assert len(refused) == 1 and refused[0]["refused"] == 1, logs
    assert refused[0]["origin"] == "'https://evil.example'"
    assert await _opens_stream(client, own)
    async with client.session.ws_connect(client.make_url("/v1/stream")) as ws:  # no Origin
        await ws.send_json({"op": "subscribe", "markets": ["BTC/USD"]})
        assert (await ws.receive_json())["type"] == "subscribed"

    listed = Rig(make_config(cors_origins=[DASH]))
    client = await make_client(listed)
    listed.step()
    assert await _opens_stream(client, DASH)
    assert not await _opens_stream(client, "https://evil.example")

    star = Rig(make_config(cors_origins=["*"]))
    client = await make_client(star)
    star.step()
    assert await _opens_stream(client, "https://evil.example")


def test_cors_origins_must_be_bare_origins() -> None:
    """An entry of `api.cors_origins` is `*` or scheme://host[:port] exactly as a browser sends
    it in Origin (no path, no trailing slash): anything else is refused at load."""
    for bad in ("dash.example", "https://dash.example/", "https://dash.example/app", ""):
        try:
            make_config(cors_origins=[bad])
        except ConfigError as exc:
            assert "cors_origins" in str(exc), bad
        else:
            raise AssertionError(f"{bad!r} was accepted")
    assert make_config(cors_origins=["http://127.0.0.1:3000", "*"]).api.cors_origins == (
        "http://127.0.0.1:3000",
        "*",
    )


async def test_a_reload_turns_cors_on_without_a_restart(make_client: ClientFactory) -> None:
    """The origins are read from the config in force: after `POST /v1/admin/reload` with a
    file that lists one, answers to it carry the header; before, none did."""
    rig = Rig(make_config())
    rig.next_config = make_config(cors_origins=[DASH])
    client = await make_client(rig)
    rig.step()
    before = await client.get("/v1/info", headers={"Origin": DASH})
    assert "Access-Control-Allow-Origin" not in before.headers
    reload = await client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reload.status == 200
    after = await client.get("/v1/info", headers={"Origin": DASH})
    assert after.headers.get("Access-Control-Allow-Origin") == DASH


def _many_markets(n: int) -> Config:
    data = copy.deepcopy(CONFIG)
    data["markets"] += [
        {
            "symbol": f"M{k:03d}/USD",
            "min_sources": 1,
            "max_age_ms": 1_000,
            "sources": [{"source": "alpha", "pair": f"M{k:03d}/USD"}],
        }
        for k in range(n)
    ]
    return parse_config(data, env={})


async def test_a_large_body_is_gzipped_once_off_the_loop_for_concurrent_clients(
    make_client: ClientFactory,
) -> None:
    """A prices body over `OFF_LOOP` bytes is compressed in a worker thread (not on the event
    loop, which keeps reading the venues), and clients asking at the same time in one round
    share that single compression and get the same bytes."""
    cfg = _many_markets(260)
    rig = Rig(cfg)
    client = await make_client(rig)
    rig.step({**PRICES, **{m.symbol: 10.0 + k for k, m in enumerate(cfg.markets)}})
    _, _, plain = await _raw(client, "/v1/prices", IDENTITY)
    assert len(plain) > OFF_LOOP
    read = client.server.app[READ]
    # One worker, held busy: the compression cannot finish before all eight have asked.
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    gate = threading.Event()
    held = loop.run_in_executor(None, gate.wait)
    limits = client.server.app[LIMITS]
    asked = [asyncio.create_task(_raw(client, "/v1/prices", GZIP)) for _ in range(8)]
    await until(lambda: limits.connections >= 8, "eight requests waiting")
    gate.set()
    await held
    answers = await asyncio.gather(*asked)
    assert {a[2] for a in answers} == {answers[0][2]}
    assert all(a[1]["Content-Encoding"] == "gzip" for a in answers)
    assert gzip.decompress(answers[0][2]) == plain
    assert read.compressions == 1
    assert read.compressed_off_loop == 1


def _selection(names: list[str], k: int) -> tuple[list[str], str]:
    """The `k`th of the largest selections (`MAX_LIST` markets, the `k`th of the first
    `MAX_LIST + 1` left out) and its `/v1/prices` path."""
    selection = [n for i, n in enumerate(names[: MAX_LIST + 1]) if i != k]
    return selection, "/v1/prices?markets=" + ",".join(n.replace("/", "-") for n in selection)


async def test_distinct_large_selections_keep_the_rounds_bodies_within_their_byte_budget() -> None:
    """A client asking one round for many distinct selections of the most markets a request
    may name (half of them gzipped) gets each answer right, while the bodies the round keeps
    (plain and gzip) stay within `api.round_body_bytes` (its default): those past it are served
    uncached and counted. A selection kept is still served from the cache (no second
    compression); one left out is made anew, right. Served as the daemon serves it (the
    OpenAPI check of each answer is left out: a hundred and more answers of 256 reports took
    it a minute)."""
    cfg = _many_markets(MAX_LIST)
    rig = Rig(cfg)
    rig.step({**PRICES, **{m.symbol: 10.0 + k for k, m in enumerate(cfg.markets)}})
    names = [m.symbol for m in cfg.markets]
    async with serve_guarded(rig) as (port, _), aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{port}"

        async def get(path: str, headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
            async with session.get(base + path, headers=headers, auto_decompress=False) as resp:
                assert resp.status == 200, await resp.read()
                return dict(resp.headers), await resp.read()

        _, whole = await get("/v1/prices", IDENTITY)
        reports = {r["market"]: r for r in json.loads(whole)}
        assert rig.app is not None
        read = rig.app[READ]
        # Each selection is about as large as the whole array: enough of them overrun the
        # budget, and fewer than the count allows.
        asked = ROUND_BODY_BYTES // len(whole) + 20
        assert asked <= min(ROUND_BODIES - 1, MAX_LIST + 1)
        held = []
        for k in range(asked):
            selection, path = _selection(names, k)
            headers, data = await get(path, GZIP if k % 2 else IDENTITY)
            if headers.get("Content-Encoding") == "gzip":
                data = gzip.decompress(data)
            assert json.loads(data) == [reports[n] for n in selection]
            held.append(read.held_bytes())
        assert max(held) <= ROUND_BODY_BYTES
        assert held[-1] > ROUND_BODY_BYTES // 2  # it kept what fits, not nothing
        assert read.uncached >= 20
        compressions = read.compressions
        selection, path = _selection(names, 1)  # kept, and gzipped once already
        _, again = await get(path, GZIP)
        assert json.loads(gzip.decompress(again)) == [reports[n] for n in selection]
        assert read.compressions == compressions
        uncached = read.uncached
        selection, path = _selection(names, asked - 1)
        _, fresh = await get(path, IDENTITY)
        assert json.loads(fresh) == [reports[n] for n in selection]
        assert read.uncached == uncached + 1
        assert read.held_bytes() <= ROUND_BODY_BYTES


async def test_the_configured_round_body_bound_is_honoured_and_a_reload_applies_a_new_one(
    make_client: ClientFactory,
) -> None:
    """`api.round_body_bytes = 0` keeps no price body: each request makes its own, right, and
    is counted uncached. After a reload to room for the whole array and a little more, the
    next round keeps the whole array (asked again, it is not made again) but not a selection
    beside it, nor its gzip form, which would overrun the bound: the body is let go and made
    anew. What the round holds never exceeds the configured bound."""
    rig = Rig(make_config(round_body_bytes=0))
    rig.next_config = rig.cfg  # set below, once the whole array's size is known
    client = await make_client(rig)
    read = client.server.app[READ]
    rig.step()
    first = await _raw(client, "/v1/prices", IDENTITY)
    again = await _raw(client, "/v1/prices", IDENTITY)
    assert first[0] == again[0] == 200 and again[2] == first[2]
    assert read.uncached == 2 and read.held_bytes() == 0
    bound = len(first[2]) + 64  # the whole array; not a selection of two, nor its gzip, beside
    rig.next_config = make_config(round_body_bytes=bound)
    reload = await client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reload.status == 200
    assert (await reload.json())["settings_changed"] == ["api.round_body_bytes"]
    rig.step()
    whole = await _raw(client, "/v1/prices", IDENTITY)
    assert whole[0] == 200 and read.uncached == 2
    held = read.held_bytes()
    assert len(whole[2]) == held <= bound
    pair = await _raw(client, "/v1/prices?markets=BTC-USD,ETH-USD", IDENTITY)
    assert [r["market"] for r in json.loads(pair[2])] == ["BTC/USD", "ETH/USD"]
    assert len(pair[2]) > bound - held
    assert read.uncached == 3 and read.held_bytes() == held
    assert (await _raw(client, "/v1/prices", IDENTITY))[2] == whole[2]
    assert read.uncached == 3  # served from the round's cache
    packed = await _raw(client, "/v1/prices", GZIP)
    assert gzip.decompress(packed[2]) == whole[2] and len(packed[2]) > bound - held
    assert read.uncached == 4 and read.held_bytes() == 0  # let go: its gzip would not fit


async def test_the_configured_round_body_count_is_honoured_and_a_reload_applies_a_new_one(
    make_client: ClientFactory,
) -> None:
    """`api.round_bodies = 2` keeps two price bodies a round, however small: a third is made
    for its request and counted uncached each time it is asked, while the two kept are served
    from the round's cache (not counted again). A reload to 0 keeps none from the next body;
    one to 3 keeps the third too."""
    rig = Rig(make_config(round_bodies=2))
    rig.next_config = rig.cfg  # set below, before each reload
    client = await make_client(rig)
    read = client.server.app[READ]
    rig.step()
    paths = ["/v1/prices", "/v1/prices/BTC-USD", "/v1/prices/ETH-USD"]

    async def ask(path: str) -> bytes:
        status, _, body = await _raw(client, path, IDENTITY)
        assert status == 200, body
        return body

    first = [await ask(p) for p in paths]
    assert read.uncached == 1 and rig.hub.price_bodies_uncached == 1
    assert [await ask(p) for p in paths] == first
    assert read.uncached == 2  # the third again; the two kept came from the cache
    assert read.held_bytes() == len(first[0]) + len(first[1])
    for bound, uncached in ((0, 5), (3, 5)):
        rig.next_config = make_config(round_bodies=bound)
        reload = await client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert (await reload.json())["settings_changed"] == ["api.round_bodies"]
        rig.step()
        bodies = [await ask(p) for p in paths]
        assert read.uncached == uncached, bound
    assert read.held_bytes() == sum(len(b) for b in bodies)
    assert [await ask(p) for p in paths] == bodies and read.uncached == 5


def test_the_round_body_count_is_a_whole_number_within_its_range() -> None:
    """`api.round_bodies`: 0 (keep none) to 65,536, an integer; anything else is refused,
    naming the key."""
    assert make_config().api.round_bodies == 256
    assert make_config(round_bodies=0).api.round_bodies == 0
    assert make_config(round_bodies=65_536).api.round_bodies == 65_536
    for bad, said in (
        (-1, "must be >= 0"),
        (65_537, "must be <= 65536"),
        (2.5, "must be an integer"),
        ("256", "must be an integer"),
        (False, "must be an integer"),
    ):
        with pytest.raises(ConfigError) as caught:
            make_config(round_bodies=bad)
        assert caught.value.problems == [f"api.round_bodies: {said}"], bad


def test_the_round_body_bound_is_a_whole_number_of_bytes_within_its_range() -> None:
    """`api.round_body_bytes`: 0 (keep none) to 1 GiB, an integer; anything else is refused,
    naming the key."""
    assert make_config().api.round_body_bytes == 8 * 1024 * 1024
    assert make_config(round_body_bytes=0).api.round_body_bytes == 0
    assert make_config(round_body_bytes=2**30).api.round_body_bytes == 2**30
    for bad, said in (
        (-1, "must be >= 0"),
        (2**30 + 1, "must be <= 1073741824"),
        (1.5, "must be an integer"),
        ("8MiB", "must be an integer"),
        (True, "must be an integer"),
    ):
        with pytest.raises(ConfigError) as caught:
            make_config(round_body_bytes=bad)
        assert caught.value.problems == [f"api.round_body_bytes: {said}"], bad


_EXPOSITION = "".join(f'm{{k="{k}"}} {k}.0\n' for k in range(400)).encode()  # 6 KB of metrics


async def test_metrics_are_gzipped_in_the_render_thread_for_a_scraper_that_asks(
    make_client: ClientFactory,
) -> None:
    """`/metrics` with `Accept-Encoding: gzip` (what Prometheus sends) is the exposition gzipped,
    with `Vary: Accept-Encoding` and the Prometheus content type; compressed with the render in
    its worker thread, once per render. A scraper that does not ask (none, `identity`,
    `gzip;q=0`) gets the text as it is, uncompressed."""
    rig = HeldMetricsRig(lambda _: _EXPOSITION, hold=False)
    assert len(_EXPOSITION) >= MIN_GZIP
    client = await make_client(rig)
    ops = client.server.app[OPS]
    status, headers, packed = await _raw(client, "/metrics", GZIP)
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Vary"] == "Accept-Encoding" and headers["Content-Type"] == PROM_TEXT
    assert gzip.decompress(packed) == _EXPOSITION and len(packed) < len(_EXPOSITION) // 3
    assert ops.compressions == 1
    assert rig.metric_threads[0] != threading.get_ident()
    for refused in (IDENTITY, {"Accept-Encoding": "gzip;q=0"}):
        status, headers, plain = await _raw(client, "/metrics", refused)
        assert status == 200 and "Content-Encoding" not in headers, refused
        assert headers["Vary"] == "Accept-Encoding"
        assert plain == _EXPOSITION
    async with client.session.get(  # no Accept-Encoding at all (aiohttp would add one)
        client.make_url("/metrics"), skip_auto_headers=["Accept-Encoding"], auto_decompress=False
    ) as resp:
        assert resp.status == 200 and "Content-Encoding" not in resp.headers
        assert await resp.read() == _EXPOSITION
    assert ops.compressions == 1  # nobody asked: nothing compressed
    assert rig.calls == 4


async def test_scrapes_sharing_a_render_share_its_compression_whoever_started_it(
    aiohttp_client: Any,
) -> None:
    """A render started by a scraper that did not ask for gzip, joined by ten that do and
    four that do not: one render and one compression (off the loop) for all, the ten get the
    same gzip bytes and the four the text."""
    rig = HeldMetricsRig(lambda _: _EXPOSITION)
    app = build_app(rig.context())
    all_in = count_arrivals(app, "/metrics", 15)
    client: Client = await aiohttp_client(app)
    first = asyncio.create_task(_raw(client, "/metrics", IDENTITY))
    await until(lambda: rig.calls == 1, "the first scrape's render started")
    packed = [asyncio.create_task(_raw(client, "/metrics", GZIP)) for _ in range(10)]
    plain = [asyncio.create_task(_raw(client, "/metrics", IDENTITY)) for _ in range(4)]
    async with asyncio.timeout(10):
        await all_in.wait()
    rig.release.set()
    zipped = await asyncio.gather(*packed)
    texts = await asyncio.gather(first, *plain)
    assert {a[2] for a in zipped} == {zipped[0][2]}
    assert all(a[1]["Content-Encoding"] == "gzip" for a in zipped)
    assert gzip.decompress(zipped[0][2]) == _EXPOSITION
    assert all("Content-Encoding" not in a[1] and a[2] == _EXPOSITION for a in texts)
    assert rig.calls == 1
    assert client.server.app[OPS].compressions == 1
