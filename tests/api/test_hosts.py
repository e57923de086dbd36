"""The `Host` check (DNS rebinding): against the API served on loopback as the daemon serves it.

A page on an attacker's site whose name the attacker's DNS points at 127.0.0.1 is, to the
browser, the API's own origin: before the check it read every answer and sent admin calls. All
it cannot change is the `Host` its requests name, so that is what the API checks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest
from api_rig import TOKEN, ContractRecorder, DaemonServer, Rig, make_config
from structlog.testing import capture_logs

from oracled.api import build_app
from oracled.api.hosts import host_name
from oracled.errors import ConfigError
from oracled.lograte import LOG_EVERY_S
from oracled.reload import running_config

_STREAM = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


async def _serve(aiohttp_client: Any, rig: Rig, **ctx: Any) -> int:
    """The rig's API on a loopback port (its context's fields replaced by `ctx`). Without the
    contract's middleware: the 403 `host_refused` is any path's, in the document's description
    as the connection cap's 503 is, its body checked against the error shape (`_refused`)."""
    app = build_app(dataclasses.replace(rig.context(), **ctx))
    client = await aiohttp_client(DaemonServer(app))
    return int(client.port)


async def _ask(
    port: int, host: str | None, path: str = "/v1/prices", method: str = "GET", extra: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """One request naming `host` (none: an HTTP/1.0 request without it) on a new connection;
    an answer with `Connection: close` must be followed by the server's close."""
    conn = await asyncio.open_connection("127.0.0.1", port)
    version = "HTTP/1.0" if host is None else "HTTP/1.1"
    named = "" if host is None else f"Host: {host}\r\n"
    conn[1].write(f"{method} {path} {version}\r\n{named}{extra}\r\n".encode())
    head = (await conn[0].readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    body = await conn[0].readexactly(int(headers.get("content-length", "0")))
    try:
        if headers.get("connection") == "close":
            async with asyncio.timeout(5):
                assert await conn[0].read() == b"", "more after an answer that closes"
    finally:
        conn[1].close()
    return int(lines[0].split()[1]), headers, body


_ERROR = ContractRecorder().validator("/components/schemas/Error")


def _refused(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 403 and headers["connection"] == "close", (status, headers)
    assert headers["cache-control"] == "no-store"
    _ERROR.validate(json.loads(body))
    error = json.loads(body)["error"]
    assert error["code"] == "host_refused" and "api.allowed_hosts" in error["message"], error


async def test_a_request_naming_another_host_is_refused_counted_and_closed(
    aiohttp_client: Any,
) -> None:
    """With no `api.allowed_hosts`, a GET naming `rebound.attacker.example` (what a rebinding
    page sends) is a 403 `host_refused` in the error shape, its connection closed; so is the
    stream's handshake, and an admin pause with the right token, which pauses nothing. Each
    is counted (`reason="host_refused"`); the first is logged as `api_host_refused` with the
    Host and the client's address, the rest of the minute only counted, and the next line a
    minute on says how many. Before, each was answered as for the API's own name."""
    rig = Rig(make_config(allowed_hosts=[]))
    rig.step()
    port = await _serve(aiohttp_client, rig)
    evil = "rebound.attacker.example:8480"
    with capture_logs() as logs:
        _refused(*await _ask(port, evil))  # and closed by the server
        _refused(*await _ask(port, evil, "/v1/stream", extra=_STREAM))
        auth = f"Authorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n"
        pause = "/v1/admin/markets/BTC-USD/pause"
        _refused(*await _ask(port, evil, pause, "POST", auth))
        rig.clock.advance(int(LOG_EVERY_S * 1000))
        _refused(*await _ask(port, "other.example", "/metrics"))
    assert rig.manual == []
    assert rig.hub.api_closed["host_refused"] == 4
    lines = [e for e in logs if e["event"] == "api_host_refused"]
    assert [(e["host"], e["path"], e["closed"]) for e in lines] == [
        (repr(evil), "/v1/prices", 1),
        ("'other.example'", "/metrics", 3),
    ]
    assert lines[0]["remote"] == "127.0.0.1" and lines[0]["log_level"] == "warning"


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:8480", "127.0.0.1", "10.1.2.3:80", "[::1]:8480", "localhost:8480", "LocalHost."],
)
async def test_the_api_s_own_names_are_answered_without_a_list(
    aiohttp_client: Any, host: str
) -> None:
    """An IP address (a page names one only when served from it: no DNS is asked) and
    `localhost`, with any port, in any case, are the API's own names with no list."""
    rig = Rig(make_config(allowed_hosts=[]))
    rig.step()
    port = await _serve(aiohttp_client, rig)
    status, _, body = await _ask(port, host)
    assert status == 200, body
    assert rig.hub.api_closed["host_refused"] == 0


async def test_a_request_without_host_the_listen_host_and_listed_names_are_answered(
    aiohttp_client: Any,
) -> None:
    """HTTP/1.0 without `Host` (no browser sends that) goes on; so does the listen host's name
    and a listed one, `.svc.cluster.local` admitting the names under it and not a name that
    only contains it. A reload that lists `*` admits any Host from the next request."""
    rig = Rig(make_config(allowed_hosts=["oracle.example.com", ".svc.cluster.local"]))
    rig.step()
    port = await _serve(aiohttp_client, rig, listen_host="oracled.internal")
    for host in (
        None,
        "oracled.internal:8480",
        "Oracle.Example.com:443",
        "oracled.prod.svc.cluster.local:8480",
    ):
        assert (await _ask(port, host))[0] == 200, host
    for host in ("svc.cluster.local.attacker.example", "example.com", "oracle.example.com.evil"):
        _refused(*await _ask(port, host))
    rig.core.reconfigure(running_config(rig.core.config, make_config(allowed_hosts=["*"])))
    assert (await _ask(port, "anything.example"))[0] == 200


def test_host_name_drops_the_port_the_brackets_the_final_dot_and_the_case() -> None:
    assert host_name("Api.Example.COM.:8480") == "api.example.com"
    assert host_name("[::1]:8480") == "::1"
    assert host_name("10.0.0.1") == "10.0.0.1"
    assert host_name("name:port") == "name:port"  # not a port: the whole value is the name


@pytest.mark.parametrize(
    "entry", ["https://api.example.com", "api.example.com:8480", "*.example.com", "a b", ""]
)
def test_an_allowed_host_that_is_no_host_name_is_refused_naming_the_key(entry: str) -> None:
    """A scheme, a port or a shell-style wildcard would never match a Host: refused with the
    key and the value, rather than leaving the API refusing its clients."""
    with pytest.raises(ConfigError) as caught:
        make_config(allowed_hosts=[entry])
    (problem,) = [p for p in caught.value.problems if p.startswith("api.allowed_hosts")]
    assert repr(entry) in problem and ".example.com for the names under it" in problem


def test_allowed_hosts_takes_names_suffixes_addresses_and_the_wildcard() -> None:
    cfg = make_config(allowed_hosts=["api.example.com", ".svc", "10.0.0.1", "*"])
    assert cfg.api.allowed_hosts == ("api.example.com", ".svc", "10.0.0.1", "*")
