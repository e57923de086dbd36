"""Requests the HTTP parser rejects: answered 400 and closed as before, but counted by reason and
logged at most once a minute without a traceback (each used to write an error line with a
traceback, so any client could flood the log; found sending garbage to a running demo)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web
from api_rig import TOKEN, ClientFactory, Rig, make_config
from structlog.testing import capture_logs

from oracled.api import build_app
from oracled.config import Config

LONG_LINE = b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
GARBAGE = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"
BAD_HEADER = b"GET /healthz HTTP/1.1\r\nHost: t\r\nBad Header\x00: x\r\n\r\n"
GOOD_THEN_BAD = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nNOT HTTP AT ALL\x00\r\n\r\n"


class _Records(logging.Handler):
    """Every record of aiohttp's loggers, as the daemon's own handler would receive them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def aiohttp_records() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("aiohttp")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class _HeldRig(Rig):
    """A rig whose /metrics render waits until the test releases it (in its worker thread)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.rendering, self.release = threading.Event(), threading.Event()

    def render_metrics(self) -> tuple[bytes, str]:
        self.rendering.set()
        self.release.wait(5)
        return super().render_metrics()


async def _send(host: str, port: int, data: bytes) -> bytes:
    """Send raw bytes on a new connection; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def test_unparseable_requests_are_counted_by_reason_and_logged_once_without_traceback(
    make_client: ClientFactory, aiohttp_records: _Records
) -> None:
    """Twelve unparseable requests of four kinds (an over-long request line, TLS-like garbage,
    a header with a NUL, garbage after a good request on a kept-alive connection) are each
    answered 400 and closed; they are counted as `request_too_long` (3) and `bad_request` (9),
    logged as one `api_bad_request` line per reason, and aiohttp logs nothing with a traceback."""
    rig = Rig(make_config())
    client = await make_client(rig)
    host, port = str(client.host), int(client.port)  # type: ignore[arg-type]
    with capture_logs() as logs:
        for data in [LONG_LINE, GARBAGE, BAD_HEADER, GOOD_THEN_BAD] * 3:
            answer = await _send(host, port, data)
            assert b"HTTP/1.1 400 " in answer or b"HTTP/1.0 400 " in answer, answer[:200]
    assert rig.hub.api_closed["request_too_long"] == 3
    assert rig.hub.api_closed["bad_request"] == 9
    lines = [e for e in logs if e["event"] == "api_bad_request"]
    assert [(e["reason"], e["closed"], e["log_level"]) for e in lines] == [
        ("request_too_long", 1, "warning"),
        ("bad_request", 1, "warning"),
    ]
    assert all(e["remote"] == "127.0.0.1" and len(e["error"]) <= 120 for e in lines), lines
    noisy = [r for r in aiohttp_records.records if r.exc_info or r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]
    assert (await client.get("/healthz")).status == 200  # the server answers on


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer %s\r",  # a token file's CR, left in by the caller's script
        b"Authorization : Bearer %s",  # a space before the colon
        b"authorization:Bearer %s\x00",
        b"Authorization: Bearer %s\nX-Next: 1",  # a bare LF
        b"Authorization: Bearer %s" + b"!" * 9_000,  # a value over the parser's limit
    ],
)
async def test_a_refused_header_line_holding_the_admin_token_is_never_logged(
    make_client: ClientFactory, aiohttp_records: _Records, header: bytes
) -> None:
    """The parser's message quotes the line it stopped at, and a malformed `Authorization`
    line is the admin token itself: it was logged whole in `api_bad_request`'s `error`
    (`Missing expected LF after header value: b'Authorization: Bearer <token>\\r'`, for a
    token read from a file with a Windows line end). The request is still answered 400,
    counted and logged with the parser's words, and nothing of the token reaches a log."""
    rig = Rig(make_config())
    client = await make_client(rig)
    request = b"POST /v1/admin/markets/BTC-USD/pause HTTP/1.1\r\nHost: t\r\n%s\r\n\r\n" % (
        header % TOKEN.encode()
    )
    with capture_logs() as logs:
        answer = await _send(str(client.host), int(client.port), request)  # type: ignore[arg-type]
    assert b" 400 " in answer.partition(b"\r\n")[0], answer[:200]
    assert sum(rig.hub.api_closed.values()) == 1
    assert rig.manual == []  # nothing paused
    [line] = [e for e in logs if e["event"] == "api_bad_request"]
    assert line["error"] and line["error"][0].isalpha(), line  # the parser's words
    written = json.dumps(logs) + "".join(r.getMessage() for r in aiohttp_records.records)
    for part in (TOKEN, TOKEN[:8], TOKEN[-8:]):
        assert part not in written, (part, written[:400])


async def test_a_client_that_resets_before_its_answer_is_not_logged_as_a_server_error(
    aiohttp_records: _Records,
) -> None:
    """A client that sends a request and resets its connection before the answer (a scrape
    timing out, a load balancer's probe) made one error line with a traceback per request
    (`Error handling request ... Cannot write to closing transport`: 50 for 50 such requests to
    a running demo): the connection limits middleware writes answers itself and let the
    ConnectionError escape, where aiohttp's own writer takes a client gone as nothing to report.
    Nothing is logged now, and the server answers on. Served as the daemon serves it (an
    AppRunner: the test server cancels handlers whose client went away, so it never writes)."""
    rig = _HeldRig(make_config())
    runner = web.AppRunner(build_app(rig.context()), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = "127.0.0.1", int(runner.addresses[0][1])
    try:
        with capture_logs() as logs:
            for _ in range(5):
                sock = socket.create_connection((host, port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
                assert await asyncio.to_thread(rig.rendering.wait, 5)  # the handler runs
                rig.rendering.clear()
                sock.close()  # linger 0: a reset, not a polite close
                await asyncio.sleep(0.05)  # the server sees the reset
                rig.release.set()  # the render ends; its answer goes to a reset connection
                await asyncio.sleep(0.05)
                rig.release.clear()
        assert rig.renders._value.get() == 5  # every answer was made, and its write tried
        rig.release.set()
        assert (await _send(host, port, b"GET /healthz HTTP/1.0\r\n\r\n")).startswith(
            b"HTTP/1.0 200 "
        )
    finally:
        rig.release.set()
        await runner.cleanup()
    assert not [e for e in logs if e["log_level"] in ("warning", "error")], logs
    noisy = [r for r in aiohttp_records.records if r.exc_info or r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


async def test_a_body_that_cannot_be_decoded_is_a_client_error_not_a_traceback(
    make_client: ClientFactory, aiohttp_records: _Records
) -> None:
    """A body sent with `Content-Encoding: gzip` that is not gzip made, on any endpoint, an
    `Unhandled exception` error line with a traceback per request once aiohttp drained it after
    the answer (found sending one to /healthz of a running demo), and on the admin endpoints a
    500 `internal` as well. It is now a 400 `bad_request` from the admin endpoints, and counted
    as `bad_request` and logged once, without a traceback, wherever it comes."""
    rig = Rig(make_config())
    client = await make_client(rig)
    host, port = str(client.host), int(client.port)  # type: ignore[arg-type]
    bad_body = b"Content-Encoding: gzip\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde"
    with capture_logs() as logs:
        for _ in range(3):
            answer = await _send(host, port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + bad_body)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
        auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
        pause = b"POST /v1/admin/markets/BTC-USD/pause HTTP/1.1\r\nHost: t\r\n" + auth + bad_body
        answer = await _send(host, port, pause)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:300]
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request" and "content-encoding" in error["message"], error
    assert rig.manual == []  # nothing paused
    assert rig.hub.api_closed["bad_request"] == 4
    assert [(e["event"], e["reason"]) for e in logs if e["log_level"] != "debug"] == [
        ("api_bad_request", "bad_request")
    ]
    noisy = [r for r in aiohttp_records.records if r.exc_info or r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


def _head(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    """An answer's status line, its headers (names in lower case) and its body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return status, {k.lower(): v for k, v in fields.items()}, body


async def test_an_expectation_other_than_100_continue_is_a_json_417(
    make_client: ClientFactory,
) -> None:
    """`Expect` with anything but 100-continue was answered by aiohttp's route handler, before
    the middlewares, with a plain-text 417 (`Unknown Expect: ...`). On every route it is now the
    API's error shape (`expectation_failed`, no-store, the connection closed after it: a body
    that follows is not a next request); over HTTP/1.0, which has no expectations, it is
    ignored."""
    client = await make_client(Rig(make_config()))
    host, port = str(client.host), int(client.port)  # type: ignore[arg-type]
    for request in (
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nExpect: bogus\r\n\r\n",
        b"GET /v1/prices/BTC-USD HTTP/1.1\r\nHost: t\r\nExpect: 100-continue, x\r\n\r\n",
        # With the token: the admin routes refuse a client that may not act first (401).
        b"POST /v1/admin/reload HTTP/1.1\r\nHost: t\r\nExpect: x\r\nContent-Length: 2\r\n"
        + f"Authorization: Bearer {TOKEN}\r\n\r\n{{}}".encode(),
    ):
        status, headers, body = _head(await _send(host, port, request))  # closed, or it hangs
        assert status == "HTTP/1.1 417 Expectation Failed", (request, status)
        assert headers["content-type"] == "application/json", headers
        assert headers["cache-control"] == "no-store"
        error = json.loads(body)["error"]
        assert error["code"] == "expectation_failed", error
        assert error["message"].endswith("cannot be met; only 100-continue is"), error
    ignored = b"GET /healthz HTTP/1.0\r\nExpect: bogus\r\n\r\n"
    assert (await _send(host, port, ignored)).startswith(b"HTTP/1.0 200 ")


async def test_100_continue_is_answered_before_the_body_is_sent(
    make_client: ClientFactory,
) -> None:
    """A client that sends `Expect: 100-continue` and waits gets the interim 100, then sends
    its body, which is read: the admin pause is applied with the actor it names."""
    rig = Rig(make_config())
    client = await make_client(rig)
    body = b'{"actor": "alice"}'
    reader, writer = await asyncio.open_connection(str(client.host), client.port)
    try:
        writer.write(
            b"POST /v1/admin/markets/BTC-USD/pause HTTP/1.1\r\nHost: t\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n".encode()
            + f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        async with asyncio.timeout(5):
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(body + b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert answer.count(b"HTTP/1.1 200 ") == 2  # the connection served the next request too
    assert rig.manual == [("BTC/USD", True, "alice")]


#: What aiohttp's HTTP parser refuses before any handler, middleware or signal runs: its own
#: plain-text 400 over HTTP/1.0 (docs/contracts.md, *HTTP answers*). aiohttp has no hook for
#: these answers short of replacing its request handler class, which is internal: a subclass
#: whose `handle_error` answered JSON would have to be built from the private keyword arguments
#: of aiohttp's `Server` (upstream's request for a hook, aio-libs/aiohttp#3287, is still open).
PARSER_REFUSALS = {
    "request line": b"NOT HTTP\r\n\r\n",
    "method": b"G\x00T / HTTP/1.1\r\nHost: t\r\n\r\n",
    "version": b"GET /healthz HTTP/9.9\r\nHost: t\r\n\r\n",
    "line ends": b"GET /healthz HTTP/1.1\nHost: t\n\n",
    "line too long": LONG_LINE,
    "header too long": b"GET /healthz HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 9_000 + b"\r\n\r\n",
    "too many headers": b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X: y\r\n" * 200 + b"\r\n",
    "header name": BAD_HEADER,
    "folded header": b"GET /healthz HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n",
    "missing Host": b"GET /healthz HTTP/1.1\r\n\r\n",
    "path byte": b"GET /v1/prices/\xff HTTP/1.1\r\nHost: t\r\n\r\n",
    "Content-Length": b"POST /v1/admin/reload HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",
    "two lengths": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    "length and chunked": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    ),
    "transfer coding": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
    "chunk size": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


#: The refusals counted as `request_too_long`; every other one is a `bad_request`.
TOO_LONG = {"line too long", "header too long"}


@pytest.mark.parametrize("case", sorted(PARSER_REFUSALS))
async def test_what_the_http_parser_refuses_is_its_plain_text_400(
    make_client: ClientFactory, case: str
) -> None:
    """Each request the parser cannot take is the documented exception to the JSON errors: a
    plain-text 400 over HTTP/1.0 with exactly the headers docs/contracts.md lists (no
    Cache-Control) and aiohttp's message as its body, the connection closed (`_send` reads to
    its end), so that the docs stay true. Each is counted once, under its reason, and nothing
    else is."""
    rig = Rig(make_config())
    client = await make_client(rig)
    answer = await _send(str(client.host), int(client.port), PARSER_REFUSALS[case])  # type: ignore[arg-type]
    status, headers, body = _head(answer)
    assert status == "HTTP/1.0 400 Bad Request", (case, answer[:200])
    assert headers["content-type"] == "text/plain; charset=utf-8", (case, headers)
    assert set(headers) == {"content-type", "content-length", "date", "server"}, (case, headers)
    assert int(headers["content-length"]) == len(body) > 0, (case, body)
    reason = "request_too_long" if case in TOO_LONG else "bad_request"
    assert {k: n for k, n in rig.hub.api_closed.items() if n} == {reason: 1}, case


async def test_an_unknown_expectation_on_a_path_without_a_route_is_aiohttps_text_417(
    make_client: ClientFactory,
) -> None:
    """The other documented exception: a path no route matches has no expectation handler of
    the API's (aiohttp's routes for 404 and 405 take none), so `Expect: bogus` there is
    aiohttp's plain-text 417; an expectation the API handles never meets it."""
    client = await make_client(Rig(make_config()))
    request = b"GET /nowhere HTTP/1.1\r\nHost: t\r\nExpect: bogus\r\nConnection: close\r\n\r\n"
    status, headers, body = _head(await _send(str(client.host), int(client.port), request))  # type: ignore[arg-type]
    assert status == "HTTP/1.1 417 Expectation Failed"
    assert headers["content-type"].startswith("text/plain") and body == b"Unknown Expect: bogus"


async def test_a_request_target_that_is_no_path_is_named_in_the_404(
    make_client: ClientFactory,
) -> None:
    """CONNECT's `host:port` and `OPTIONS *` have no path, and their 404 read "no endpoint at ;
    see /openapi.json": it names the method and target as sent and says what the API serves,
    in the API's error shape; a path that matches no route is named as before."""
    client = await make_client(Rig(make_config()))
    host, port = str(client.host), int(client.port)  # type: ignore[arg-type]
    served = "names no path; this API serves paths such as /v1/prices and is no proxy"
    for request, message in (
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n",
            f"CONNECT example.com:443 {served}; see /openapi.json",
        ),
        (b"OPTIONS * HTTP/1.1\r\nHost: t\r\n", f"OPTIONS * {served}; see /openapi.json"),
        (b"GET /nowhere HTTP/1.1\r\nHost: t\r\n", "no endpoint at /nowhere; see /openapi.json"),
    ):
        answer = await _send(host, port, request + b"Connection: close\r\n\r\n")
        status, headers, body = _head(answer)
        assert status == "HTTP/1.1 404 Not Found", (request, status)
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"error": {"code": "not_found", "message": message}}
