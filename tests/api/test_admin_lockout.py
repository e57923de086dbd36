"""Lock-out of an address after failed admin token checks, against the API on loopback.

The clients connect from distinct loopback addresses (Linux routes all of 127/8 to lo); the
rig's manual clock moves the windows and the cool-down, so that no test waits for them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from api_rig import TOKEN, ClientFactory, Rig, make_config
from structlog.testing import capture_logs

from oracled.api.lockout import MAX_ADDRESSES, Lockout
from oracled.reload import running_config

PAUSE = "/v1/admin/markets/BTC-USD/pause"
WRONG = TOKEN[:-1] + "x"
GUESSER, OPERATOR = "127.0.0.2", "127.0.0.3"


def _rig(**api: Any) -> Rig:
    rig = Rig(make_config(admin_lockout_failures=3, **api))
    rig.step()
    return rig


async def _post(port: int, source: str, token: str) -> tuple[int, dict[str, str], Any]:
    """A pause from `source`, on a connection of its own."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            f"http://127.0.0.1:{port}{PAUSE}", headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.json()


async def test_failed_checks_lock_out_their_address_only_until_the_cool_down_ends(
    make_client: ClientFactory,
) -> None:
    """With `admin_lockout_failures = 3` (window 60 s, cool-down 300 s by default), three wrong
    tokens from one address are 401s; the third locks it out, logged once as
    `api_admin_locked_out` with the address and never the token. From then on its admin calls,
    the right token included, are 429 `admin_locked_out` with `Retry-After` (counted as
    `locked_out`) and pause nothing, while another address pauses with the token. The
    cool-down is 300 s on the API's clock: 1 s before its end the address is still refused,
    then it may act. Before, there was no lock-out: the 4th guess was checked like the 1st."""
    rig = _rig()
    client = await make_client(rig)
    with capture_logs() as logs:
        for _ in range(3):
            status, _, body = await _post(client.port, GUESSER, WRONG)
            assert status == 401 and body["error"]["code"] == "unauthorized", body
        status, headers, body = await _post(client.port, GUESSER, TOKEN)
        assert status == 429 and headers["Retry-After"] == "300", (status, body)
        assert body["error"]["code"] == "admin_locked_out"
        assert "admin calls are refused for 300 s more" in body["error"]["message"]
        assert rig.manual == []
        assert (await _post(client.port, OPERATOR, TOKEN))[0] == 200
        assert rig.manual == [("BTC/USD", True, "api")]
        rig.clock.advance(299_000)
        status, headers, _ = await _post(client.port, GUESSER, TOKEN)
        assert status == 429 and headers["Retry-After"] == "1"
        rig.clock.advance(1_000)
        assert (await _post(client.port, GUESSER, TOKEN))[0] == 200
    assert rig.hub.admin_refused["wrong"] == 3 and rig.hub.admin_refused["locked_out"] == 2
    (line,) = [e for e in logs if e["event"] == "api_admin_locked_out"]
    assert line["remote"] == GUESSER and line["failures"] == 3 and line["locked"] == 1
    assert line["lockout_s"] == 300 and line["log_level"] == "warning"
    assert TOKEN[4:16] not in repr(logs) and WRONG[-12:] not in repr(logs)


async def test_failures_outside_the_window_or_before_a_success_do_not_add_up(
    make_client: ClientFactory,
) -> None:
    """Two failures, a window later two more: no lock-out (the window counts from the first of
    its failures). Two failures, then the right token (answered), then two more: none either,
    a passed check forgiving the ones before. A token sent without `Bearer ` counts as a
    failure like a wrong one; no `Authorization` at all (a scanner's probe) does not."""
    rig = _rig(admin_lockout_window_s=10.0)
    client = await make_client(rig)
    for _ in range(2):
        assert (await _post(client.port, GUESSER, WRONG))[0] == 401
    rig.clock.advance(10_001)
    for _ in range(2):
        assert (await _post(client.port, GUESSER, WRONG))[0] == 401
    assert (await _post(client.port, GUESSER, TOKEN))[0] == 200
    for _ in range(2):
        assert (await _post(client.port, GUESSER, WRONG))[0] == 401
    for _ in range(5):
        async with client.session.post(client.make_url(PAUSE)) as resp:
            assert resp.status == 401
    assert (await _post(client.port, GUESSER, TOKEN))[0] == 200
    headers = {"Authorization": WRONG}  # the token without its scheme: malformed
    async with client.session.post(client.make_url(PAUSE), headers=headers) as resp:
        assert resp.status == 401
    for _ in range(2):
        assert (await _post(client.port, "127.0.0.1", WRONG))[0] == 401
    assert rig.hub.admin_refused["locked_out"] == 0
    assert (await _post(client.port, "127.0.0.1", TOKEN))[0] == 429


async def test_with_no_lock_out_configured_every_check_is_made(
    make_client: ClientFactory,
) -> None:
    """`admin_lockout_failures = 0` turns the lock-out off (behind a proxy every client has
    its address): twenty wrong tokens, then the right one acts."""
    rig = Rig(make_config(admin_lockout_failures=0))
    rig.step()
    client = await make_client(rig)
    for _ in range(20):
        assert (await _post(client.port, GUESSER, WRONG))[0] == 401
    assert (await _post(client.port, GUESSER, TOKEN))[0] == 200


async def test_a_reload_that_turns_the_lock_out_off_lifts_the_running_ones(
    make_client: ClientFactory,
) -> None:
    """Behind a proxy one guesser locks every operator out; the documented way out is
    `admin_lockout_failures = 0` and a reload (SIGHUP: the admin reload is locked out too).
    From the next request the address acts with the token. Before, the cool-down ran on (300 s
    by default, up to a day) though the config in force had no lock-out."""
    rig = _rig()
    client = await make_client(rig)
    for _ in range(3):
        assert (await _post(client.port, GUESSER, WRONG))[0] == 401
    assert (await _post(client.port, GUESSER, TOKEN))[0] == 429
    off = make_config(admin_lockout_failures=0)
    rig.core.reconfigure(running_config(rig.core.config, off))
    assert (await _post(client.port, GUESSER, TOKEN))[0] == 200
    assert rig.manual == [("BTC/USD", True, "api")]


async def test_a_locked_out_address_asking_100_continue_gets_the_429_instead(
    make_client: ClientFactory,
) -> None:
    """A locked-out client that asks `Expect: 100-continue` is answered 429 in place of the 100,
    so it never sends its body, and its connection is to close after the answer."""
    rig = _rig()
    client = await make_client(rig)
    for _ in range(3):
        assert (await _post(client.port, "127.0.0.1", WRONG))[0] == 401
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(
        f"POST {PAUSE} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 20\r\nExpect: 100-continue\r\n\r\n"
        "".encode()
    )
    head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
    assert head.startswith("http/1.1 429") and "\r\nconnection: close\r\n" in head, head
    assert "\r\nretry-after: 300\r\n" in head, head
    length = int(head.split("content-length:")[1].split("\r\n")[0])
    assert json.loads(await reader.readexactly(length))["error"]["code"] == "admin_locked_out"
    writer.close()
    assert rig.manual == []


def test_the_table_stays_bounded_and_lets_the_oldest_go_first() -> None:
    """A client with many addresses cannot grow the table for good: past `MAX_ADDRESSES`,
    entries whose window is over go first, then the oldest outside a cool-down."""
    lockout = Lockout()
    for n in range(MAX_ADDRESSES):
        assert not lockout.failed(f"a{n}", 0.0, 2, 60.0, 300.0)
    assert lockout.failed("a1", 1.0, 2, 60.0, 300.0)  # locked: kept while it lasts
    assert not lockout.failed("new", 1.0, 2, 60.0, 300.0)
    assert len(lockout) == MAX_ADDRESSES
    assert lockout.locked_for("a1", 2.0) == 299.0
    assert not lockout.failed("a0", 2.0, 2, 60.0, 300.0)  # evicted: counted from scratch
    assert lockout.locked_for("a1", 2.0) == 299.0  # a2 went, not a1 in its cool-down
    assert not lockout.failed("later", 61.0, 2, 60.0, 300.0)  # windows over: pruned
    assert len(lockout) < 10
    assert lockout.locked_for("a1", 61.0) == 240.0
