"""MarginService against the daemon's real API on loopback: markets it does not have, or drops."""

from __future__ import annotations

import asyncio
import copy
import io
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from structlog.testing import capture_logs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "publish"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))
from api_rig import CONFIG, T0, TOKEN, DaemonServer, Rig, make_config
from hostile_rig import redirecting, scripted_stream

from oracled.api import build_app
from oracled.config import parse_config
from oracled.margin import MarginEngine, parse_accounts
from oracled.margin.prices import Frozen, Resolved
from oracled.margin.service import MarginService

SAFETY_S = 15.0  # guards against hangs only


def engine(holdings: dict[str, str]) -> MarginEngine:
    """One account per asset (its id), holding only that asset, priced by its market."""
    assets: dict[str, Any] = {"USD": {}}
    assets.update({asset: {"market": market} for asset, market in holdings.items()})
    accounts = [{"id": asset.lower(), "collateral": {asset: 10.0}} for asset in holdings]
    return MarginEngine(parse_accounts({"assets": assets, "instruments": {}, "accounts": accounts}))


async def until(done: Callable[[], bool]) -> None:
    async with asyncio.timeout(SAFETY_S):
        while not done():  # noqa: ASYNC110 - the service exposes no event for this
            await asyncio.sleep(0.01)


def standing(out: io.BytesIO) -> dict[str, list[str] | None]:
    """Per account, the reasons of its last freeze, or None when it was unfrozen since."""
    last: dict[str, list[str] | None] = {}
    for line in out.getvalue().splitlines():
        d = msgspec.json.decode(line)
        if d["kind"] == "freeze":
            last[d["account"]] = d["reasons"]
        elif d["kind"] == "unfreeze":
            last[d["account"]] = None
    return last


@pytest.fixture
async def served() -> AsyncIterator[Callable[[Rig, MarginEngine], Any]]:
    """Start the rig's API and a margin service on it; both stop after the test."""
    stops: list[Callable[[], Any]] = []

    async def start(rig: Rig, eng: MarginEngine) -> tuple[MarginService, io.BytesIO, DaemonServer]:
        server = DaemonServer(build_app(rig.context()), host="127.0.0.1")
        await server.start_server()
        url = str(server.make_url("/v1/stream")).replace("http://", "ws://")
        out = io.BytesIO()
        service = MarginService(eng, url, out, step_ms=60_000, clock=rig.clock.now_ms, retry_s=0.05)
        task = asyncio.create_task(service.run())

        async def stop() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await server.close()

        stops.append(stop)
        return service, out, server

    yield start
    for stop in stops:
        await stop()


async def test_a_market_the_daemon_does_not_have_costs_only_its_own_accounts_their_price(
    served: Callable[[Rig, MarginEngine], Any],
) -> None:
    """The daemon refuses a whole subscribe request for one unknown market (`unknown_market`).
    The service asks again market by market: BTC/USD and SOL/USD are priced, the account on
    DOGE/USD is frozen with reason `unknown_market`, and the log and `unavailable` name it."""
    rig = Rig(make_config())
    rig.step()
    eng = engine({"BTC": "BTC/USD", "DOGE": "DOGE/USD", "SOL": "SOL/USD"})
    with capture_logs() as logs:
        service, out, _ = await served(rig, eng)
        await until(lambda: {"BTC/USD", "SOL/USD"} <= set(eng.book.latest))
        await until(lambda: "DOGE/USD" in service.unavailable)
    assert dict(service.unavailable) == {"DOGE/USD": "unknown_market"}
    prices = eng.prices(rig.clock.now_ms())
    assert isinstance(prices["BTC/USD"], Resolved) and isinstance(prices["SOL/USD"], Resolved)
    doge = prices["DOGE/USD"]
    assert isinstance(doge, Frozen) and doge.reason == "unknown_market"
    assert standing(out).get("doge") == ["unknown_market"]
    assert standing(out).get("btc") is None and standing(out).get("sol") is None
    named = [e for e in logs if e["event"] == "market_unavailable"]
    assert [(e["market"], e["code"], e["log_level"]) for e in named] == [
        ("DOGE/USD", "unknown_market", "warning")
    ]


async def test_a_market_a_reload_removes_freezes_its_accounts_at_once_with_the_reason(
    served: Callable[[Rig, MarginEngine], Any],
) -> None:
    """A reload that removes SOL/USD sends `market_removed`: the account on SOL/USD is frozen
    with that reason at once (not priced on its last report until it goes stale), the account
    on BTC/USD keeps its price, and the log names the market."""
    rig = Rig(make_config())
    data = copy.deepcopy(CONFIG)
    data["markets"] = [m for m in data["markets"] if m["symbol"] != "SOL/USD"]
    rig.next_config = parse_config(data, env={"ORACLED_ADMIN_TOKEN": TOKEN})
    rig.step()
    eng = engine({"BTC": "BTC/USD", "SOL": "SOL/USD"})
    with capture_logs() as logs:
        service, out, server = await served(rig, eng)
        await until(lambda: {"BTC/USD", "SOL/USD"} <= set(eng.book.latest))
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                server.make_url("/v1/admin/reload"), headers={"Authorization": f"Bearer {TOKEN}"}
            ) as resp,
        ):
            assert resp.status == 200
        rig.step()
        await until(lambda: "SOL/USD" in service.unavailable)
        await until(lambda: eng.book.latest["BTC/USD"].round == 2)
    prices = eng.prices(rig.clock.now_ms())
    assert isinstance(prices["BTC/USD"], Resolved)
    sol = prices["SOL/USD"]
    assert isinstance(sol, Frozen) and sol.reason == "market_removed"
    assert standing(out).get("sol") == ["market_removed"] and standing(out).get("btc") is None
    named = [e for e in logs if e["event"] == "market_unavailable"]
    assert [(e["market"], e["code"]) for e in named] == [("SOL/USD", "market_removed")]


async def test_a_market_a_reload_adds_back_is_priced_again_without_a_restart(
    served: Callable[[Rig, MarginEngine], Any],
) -> None:
    """The daemon never tells a connection that a market came back: the service asks again for
    the markets it lost, so once a reload adds SOL/USD back, its account is unfrozen on a new
    report (`market_available` logged), on the same connection; the refusals of the retries
    before that are not logged again."""
    rig = Rig(make_config())
    full = rig.cfg
    data = copy.deepcopy(CONFIG)
    data["markets"] = [m for m in data["markets"] if m["symbol"] != "SOL/USD"]
    rig.next_config = parse_config(data, env={"ORACLED_ADMIN_TOKEN": TOKEN})
    rig.step()
    eng = engine({"BTC": "BTC/USD", "SOL": "SOL/USD"})

    async def reload(server: DaemonServer) -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                server.make_url("/v1/admin/reload"), headers={"Authorization": f"Bearer {TOKEN}"}
            ) as resp,
        ):
            assert resp.status == 200

    with capture_logs() as logs:
        service, out, server = await served(rig, eng)
        await until(lambda: {"BTC/USD", "SOL/USD"} <= set(eng.book.latest))
        await reload(server)
        rig.step()
        await until(lambda: "SOL/USD" in service.unavailable)
        await until(lambda: sum(e["event"] == "subscribe_retry" for e in logs) >= 3)
        rig.next_config = full
        await reload(server)
        rig.step()
        await until(lambda: "SOL/USD" not in service.unavailable)
        await until(lambda: standing(out).get("sol", ["?"]) is None)
    assert isinstance(eng.prices(rig.clock.now_ms())["SOL/USD"], Resolved)
    assert [e["market"] for e in logs if e["event"] == "market_unavailable"] == ["SOL/USD"]
    assert [e["market"] for e in logs if e["event"] == "market_available"] == ["SOL/USD"]
    assert sum(e["event"] == "connected" for e in logs) == 1


class Cutter:
    """A WebSocket relay on loopback in front of a daemon that records each connection's
    requests and can cut the connection (a proxy restarted, a network path lost)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[list[Any]] = []  # per connection, in order
        self._down: web.WebSocketResponse | None = None
        app = web.Application()
        app.router.add_get("/v1/stream", self._relay)
        self.server = DaemonServer(app, host="127.0.0.1")

    async def cut(self) -> None:
        assert self._down is not None
        await self._down.close()

    async def _relay(self, request: web.Request) -> web.WebSocketResponse:
        down = web.WebSocketResponse()
        await down.prepare(request)
        self._down, asked = down, []
        self.requests.append(asked)
        async with aiohttp.ClientSession() as session, session.ws_connect(self.upstream) as up:

            async def upward() -> None:
                async for msg in down:
                    asked.append(msg.json())
                    await up.send_str(msg.data)
                await up.close()

            task = asyncio.create_task(upward())
            try:
                async for msg in up:
                    await down.send_str(msg.data)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return down


async def test_a_reconnect_asks_once_for_the_markets_served_and_retries_the_refused_alone() -> None:
    """The daemon does not have DOGE/USD. Before, every reconnect asked for all three markets
    again, was refused for DOGE/USD, and split the request market by market (four requests,
    a refusal, `subscribe_refused` each time). The service remembers the refusal: the new
    connection's first request is the markets served, in one request, acked; DOGE/USD is asked
    for alone on the retry schedule only (`retry_s`), stays unavailable and frozen, and is not
    logged unavailable again; the `connected` log names it as left out."""
    rig = Rig(make_config())
    rig.step()
    eng = engine({"BTC": "BTC/USD", "DOGE": "DOGE/USD", "SOL": "SOL/USD"})
    daemon = DaemonServer(build_app(rig.context()), host="127.0.0.1")
    await daemon.start_server()
    cutter = Cutter(str(daemon.make_url("/v1/stream")).replace("http://", "ws://"))
    await cutter.server.start_server()
    url = str(cutter.server.make_url("/v1/stream")).replace("http://", "ws://")
    service = MarginService(
        eng, url, io.BytesIO(), step_ms=60_000, clock=rig.clock.now_ms, retry_s=0.2
    )
    task = asyncio.create_task(service.run())
    try:
        with capture_logs() as logs:
            await until(lambda: "DOGE/USD" in service.unavailable and len(eng.book.latest) == 2)
            await cutter.cut()
            reports = service.reports
            await until(lambda: len(cutter.requests) == 2 and len(cutter.requests[1]) >= 3)
            await until(lambda: service.reports >= reports + 2)  # the ack's snapshot
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await cutter.server.close()
        await daemon.close()
    first, again = ([r["markets"] for r in asked] for asked in cutter.requests)
    assert first[:4] == [["BTC/USD", "DOGE/USD", "SOL/USD"], ["BTC/USD"], ["DOGE/USD"], ["SOL/USD"]]
    assert again[0] == ["BTC/USD", "SOL/USD"]
    assert again[1:] == [["DOGE/USD"]] * (len(again) - 1)  # the retries, one market each
    assert dict(service.unavailable) == {"DOGE/USD": "unknown_market"}
    doge = eng.prices(rig.clock.now_ms())["DOGE/USD"]
    assert isinstance(doge, Frozen) and doge.reason == "unknown_market"
    events = [e["event"] for e in logs]
    assert events.count("market_unavailable") == 1 and events.count("subscribe_refused") == 1
    assert [e["unavailable"] for e in logs if e["event"] == "connected"] == [[], ["DOGE/USD"]]


async def run_scripted(
    eng: MarginEngine, answers: list[str], done: Callable[[MarginService, list[Any]], bool]
) -> tuple[MarginService, list[Any], list[Any]]:
    """A scripted daemon: each subscribe request read is answered with the next of `answers`
    (none once they run out). Runs a margin service on it until `done(service, logs)`; returns
    the service, the requests and the logs."""
    requests: list[Any] = []

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            requests.append(msg.json())
            if len(requests) <= len(answers):
                await ws.send_str(answers[len(requests) - 1])
        return ws

    app = web.Application()
    app.router.add_get("/v1/stream", stream)
    with capture_logs() as logs:
        async with DaemonServer(app, host="127.0.0.1") as server:
            url = str(server.make_url("/v1/stream")).replace("http://", "ws://")
            service = MarginService(eng, url, io.BytesIO(), step_ms=60_000, retry_s=60)
            task = asyncio.create_task(service.run())
            try:
                await until(lambda: done(service, logs))
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    return service, requests, logs


async def test_a_refusal_of_the_whole_request_is_not_asked_again_market_by_market() -> None:
    """An error that refuses the request itself (`bad_request`), not one of its markets, is
    logged as `stream_error`; the service does not ask for each market alone (each would be
    refused alike) and calls no market unavailable."""
    eng = engine({"BTC": "BTC/USD", "SOL": "SOL/USD"})
    refused = '{"type":"error","code":"bad_request","message":"no"}'
    service, requests, logs = await run_scripted(
        eng, [refused], lambda _, logs: any("code" in e for e in logs)
    )
    assert requests == [{"op": "subscribe", "markets": ["BTC/USD", "SOL/USD"], "batch": True}]
    assert dict(service.unavailable) == {}
    assert [(e["event"], e["code"]) for e in logs if "code" in e] == [
        ("stream_error", "bad_request")
    ]


async def test_an_unreadable_error_frame_still_answers_its_request() -> None:
    """After a split, BTC/USD's request is answered by an error frame the service cannot read,
    then DOGE/USD's by `unknown_market`: the answers stay paired with their requests, so
    DOGE/USD is unavailable, not BTC/USD."""
    eng = engine({"BTC": "BTC/USD", "DOGE": "DOGE/USD"})
    unknown = '{"type":"error","code":"unknown_market","message":"not configured"}'
    answers = [unknown, '{"type":"error","code":7}', unknown]
    service, requests, logs = await run_scripted(eng, answers, lambda s, _: bool(s.unavailable))
    assert [r["markets"] for r in requests] == [["BTC/USD", "DOGE/USD"], ["BTC/USD"], ["DOGE/USD"]]
    assert dict(service.unavailable) == {"DOGE/USD": "unknown_market"}
    assert [(e["event"], e["code"]) for e in logs if e["event"] == "stream_error"] == [
        ("stream_error", "malformed")
    ]


def spec_of(policy: dict[str, Any], instruments: dict[str, str], accounts: list[Any]) -> Any:
    """Accounts on perpetuals of the rig's markets (one flat tier, maintenance 0.5 %)."""
    tiers = [{"initial": 0.01, "maintenance": 0.005}]
    return parse_accounts(
        {
            "policy": policy,
            "assets": {"USD": {}, "BTC": {"market": "BTC/USD"}},
            "instruments": {i: {"market": m, "tiers": tiers} for i, m in instruments.items()},
            "accounts": accounts,
        }
    )


async def test_a_stalled_daemon_freezes_every_market_with_the_reason_until_rounds_come_again(
    served: Callable[[Rig, MarginEngine], Any],
) -> None:
    """The daemon's `stalled` error frame says its latest round is no current price. With a
    policy that trusts a report for 60 s, the engine went on pricing (and would have
    liquidated) on that round for 55 s more, and logged a bare `stream_error`. Now every
    market the engine holds is frozen at once with reason `stalled` (a `freeze` decision naming
    it), the log says `stalled` with the daemon's words, and the next round's report unfreezes."""
    rig = Rig(make_config())
    rig.step()
    eng = MarginEngine(
        spec_of(
            {"max_report_age_ms": 60_000},
            {"BTC-PERP": "BTC/USD"},
            [
                {"id": "holder", "collateral": {"BTC": 1.0}},
                {
                    "id": "trader",
                    "collateral": {"USD": 10_000},
                    "positions": [{"instrument": "BTC-PERP", "qty": 1, "entry": 64_000}],
                },
            ],
        )
    )
    with capture_logs() as logs:
        _, out, _ = await served(rig, eng)
        await until(lambda: "BTC/USD" in eng.book.latest)
        assert isinstance(eng.prices(rig.clock.now_ms())["BTC/USD"], Resolved)
        rig.clock.advance(5_001)  # past the daemon's stall limit; the report is 5 s old
        await until(lambda: standing(out).get("trader") == ["stalled"])
        assert standing(out).get("holder") == ["stalled"]
        btc = eng.prices(rig.clock.now_ms())["BTC/USD"]
        assert isinstance(btc, Frozen) and btc.reason == "stalled"
        rig.step()
        await until(lambda: standing(out).get("trader", ["?"]) is None)
    assert isinstance(eng.prices(rig.clock.now_ms())["BTC/USD"], Resolved)
    assert standing(out).get("holder") is None
    told = [e for e in logs if e["event"] == "stalled"]
    assert len(told) == 1 and told[0]["log_level"] == "warning"
    assert "rounds have stalled" in told[0]["message"]
    assert not [e for e in logs if e["event"] == "stream_error"]
    assert b"liquidation" not in out.getvalue()


async def test_a_hedge_is_judged_on_one_rounds_prices_not_on_a_mix_of_two(
    served: Callable[[Rig, MarginEngine], Any],
) -> None:
    """A long BTC perpetual hedged by a short ETH one of the same notional, 1,000 USD of
    collateral, 640 maintenance. Both fall 2 % in one round: the account is as healthy as
    before. The service decided after every report frame, so between this round's BTC report
    and its ETH report it saw BTC down 2 % against the last round's ETH: equity -280, and it
    liquidated the hedge. It now reads each round whole (a `batch` subscription: one `reports`
    frame per round) and decides once per round. The snapshot comes whole too: no account is
    frozen for `no_report` between its first two reports."""
    rig = Rig(make_config())
    rig.step()
    eth_qty = -64_000 / 3_100
    eng = MarginEngine(
        spec_of(
            {"liquidation_fee": 0.0},
            {"BTC-PERP": "BTC/USD", "ETH-PERP": "ETH/USD"},
            [
                {
                    "id": "hedged",
                    "collateral": {"USD": 1_000},
                    "positions": [
                        {"instrument": "BTC-PERP", "qty": 1, "entry": 64_000},
                        {"instrument": "ETH-PERP", "qty": eth_qty, "entry": 3_100},
                    ],
                }
            ],
        )
    )
    service, out, _ = await served(rig, eng)
    await until(lambda: {"BTC/USD", "ETH/USD"} <= set(eng.book.latest))
    result = rig.step({"BTC/USD": 64_000 * 0.98, "ETH/USD": 3_100 * 0.98})
    btc, eth = result.report(0), result.report(1)
    assert {btc.status, eth.status} <= {"active", "degraded"}  # both priced: the engine acts
    await until(lambda: {v.round for v in eng.book.latest.values()} == {2})
    assert service.reports == 4  # two rounds of the two markets
    assert b"liquidation" not in out.getvalue()
    assert eng.state("hedged") == "healthy"
    # nor, at the start, a freeze for ETH/USD's `no_report` between the snapshot's two reports
    assert b"freeze" not in out.getvalue()


async def test_the_service_takes_a_daemons_reports_in_stream_order_whatever_their_time() -> None:
    """A daemon whose clock was an hour ahead and is set back (or a replica behind the one
    before): its reports come stamped earlier than the one held. The engine kept the newest by
    time, so it ignored them all and held the one from the future. The service takes each
    report of its stream as the newest, so the market is priced by the daemon's current one."""
    hour = 3_600_000

    def frame(ts: int, rnd: int, price: str) -> str:
        report = {"market": "BTC/USD", "ts": ts, "round": rnd, "status": "active", "price": price}
        return msgspec.json.encode(
            {"type": "reports", "round": rnd, "round_ts": ts, "data": [report]}
        ).decode()

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()
        await ws.send_str('{"type":"subscribed","markets":["BTC/USD"],"batch":true}')
        await ws.send_str(frame(T0 + hour, 900, "64000.00"))
        await ws.send_str(frame(T0 + 250, 1, "63000.00"))
        async for _ in ws:
            pass
        return ws

    eng = engine({"BTC": "BTC/USD"})
    await _serve_until(stream, eng, T0 + 300, lambda service: service.reports == 2)
    btc = eng.prices(T0 + 300)["BTC/USD"]
    assert isinstance(btc, Resolved) and btc.value == 63_000.0


async def test_a_report_whose_price_is_none_is_skipped_and_the_service_runs_on() -> None:
    """A report frame with a price that is no positive finite decimal (a broken proxy, a forged
    frame: the daemon never sends one) raised out of the service and ended `oracled margin`
    (`could not convert string to float`), and `NaN`, `inf`, `0` or `-5` were taken as live
    prices. Such a report is now skipped with one `bad_report` warning per market a minute:
    the round's other reports are taken, and the market is priced by its next good report."""

    def frame(rnd: int, prices: dict[str, str]) -> str:
        data = [
            {"market": m, "ts": T0 + rnd, "round": rnd, "status": "active", "price": p}
            for m, p in prices.items()
        ]
        return msgspec.json.encode({"type": "reports", "round": rnd, "data": data}).decode()

    bad = ["abc", "NaN", "inf", "0", "-5", "1e400", "1_000", " 5"]

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()
        await ws.send_str('{"type":"subscribed","markets":["BTC/USD","SOL/USD"],"batch":true}')
        for rnd, price in enumerate(bad, start=1):
            await ws.send_str(frame(rnd, {"BTC/USD": price, "SOL/USD": f"{150 + rnd}.0"}))
        await ws.send_str(frame(99, {"BTC/USD": "64000.5", "SOL/USD": "151.0"}))
        async for _ in ws:
            pass
        return ws

    eng = engine({"BTC": "BTC/USD", "SOL": "SOL/USD"})
    with capture_logs() as logs:
        await _serve_until(stream, eng, T0 + 99, lambda service: service.reports == len(bad) + 2)
    assert [v.round for v in eng.book.latest.values()] == [99, 99]
    btc = eng.prices(T0 + 99)["BTC/USD"]
    assert isinstance(btc, Resolved) and btc.value == 64_000.5
    told = [e for e in logs if e["event"] == "bad_report"]
    assert [(e["market"], e["error"], e["reports"]) for e in told] == [
        ("BTC/USD", "not a price: 'abc'", 1)
    ]


async def test_a_report_that_cannot_be_read_costs_only_its_own_market_the_round() -> None:
    """A `reports` frame in which one market's report cannot be read as one (no `status`, a
    `ts` that is no integer: a broken proxy, a forged frame) was dropped whole as `bad_frame`:
    every market lost the round, and a single bad market left all its accounts on prices
    ageing toward a freeze. That report is now skipped as `bad_report`, as one with a price
    that is none: the round's other reports are taken, and the market keeps its last one."""

    def frame(rnd: int, btc: dict[str, Any]) -> str:
        sol = {"market": "SOL/USD", "ts": T0 + rnd, "round": rnd, "status": "active"}
        sol["price"] = f"{150 + rnd}.0"
        return msgspec.json.encode({"type": "reports", "round": rnd, "data": [btc, sol]}).decode()

    good = {"market": "BTC/USD", "ts": T0 + 1, "round": 1, "status": "active", "price": "64000.5"}
    broken = [
        {"market": "BTC/USD", "ts": T0 + 2, "round": 2, "price": "1.0"},  # no status
        {"market": "BTC/USD", "ts": "soon", "round": 3, "status": "active", "price": "1.0"},
        ["BTC/USD"],  # no report at all
    ]

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()
        await ws.send_str('{"type":"subscribed","markets":["BTC/USD","SOL/USD"],"batch":true}')
        await ws.send_str(frame(1, good))
        for rnd, btc in enumerate(broken, start=2):
            await ws.send_str(frame(rnd, btc))  # type: ignore[arg-type]
        async for _ in ws:
            pass
        return ws

    eng = engine({"BTC": "BTC/USD", "SOL": "SOL/USD"})
    with capture_logs() as logs:
        await _serve_until(stream, eng, T0 + 9, lambda service: service.reports == 2 + len(broken))
    assert {m: v.round for m, v in eng.book.latest.items()} == {"BTC/USD": 1, "SOL/USD": 4}
    sol = eng.prices(T0 + 9)["SOL/USD"]
    assert isinstance(sol, Resolved) and sol.value == 154.0
    assert not [e for e in logs if e["event"] == "bad_frame"]
    told = [(e["market"], e["reports"]) for e in logs if e["event"] == "bad_report"]
    assert told == [("BTC/USD", 1), (None, 1)]  # the third, no report: no market to name


async def test_frames_that_cannot_be_read_are_logged_once_a_minute_not_each() -> None:
    """A server that sends frames that are no JSON (a broken proxy, a hostile peer) had each
    logged as its own `bad_frame` warning: as many lines as frames, a flood of the log at the
    peer's will. The first is logged at once, the rest are counted into the next line a minute
    later; the service reads on and prices the next good frame."""
    junk = 50

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()
        await ws.send_str('{"type":"subscribed","markets":["BTC/USD"],"batch":true}')
        for n in range(junk):
            await ws.send_str(f"not json {n}")
        report = {"market": "BTC/USD", "ts": T0, "round": 1, "status": "active", "price": "64000"}
        await ws.send_str(msgspec.json.encode({"type": "reports", "data": [report]}).decode())
        async for _ in ws:
            pass
        return ws

    eng = engine({"BTC": "BTC/USD"})
    with capture_logs() as logs:
        service = await _serve_until(stream, eng, T0, lambda service: service.reports == 1)
    told = [e for e in logs if e["event"] == "bad_frame"]
    assert len(told) == 1 and told[0]["frames"] == 1 and told[0]["log_level"] == "warning"
    assert service.bad_frames == junk
    assert isinstance(eng.prices(T0)["BTC/USD"], Resolved)


async def test_frames_nested_past_the_decoders_depth_leave_the_service_running() -> None:
    """A frame nested a hundred thousand levels deep (`[[[[...`: a hostile peer) made the
    decoder raise RecursionError, which ended the service's connection task and the service
    with it. Such a frame is a `bad_frame` now, an error frame of the kind read as `malformed`,
    and the report after them is priced on the same connection."""
    deep = "[" * 100_000 + "]" * 100_000
    connections: list[int] = []

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()
        connections.append(1)
        await ws.send_str('{"type":"subscribed","markets":["BTC/USD"],"batch":true}')
        await ws.send_str('{"type":"reports","data":' + deep + "}")
        await ws.send_str('{"type":"error","code":' + deep + "}")
        report = {"market": "BTC/USD", "ts": T0, "round": 1, "status": "active", "price": "64000"}
        await ws.send_str(msgspec.json.encode({"type": "reports", "data": [report]}).decode())
        async for _ in ws:
            pass
        return ws

    eng = engine({"BTC": "BTC/USD"})
    with capture_logs() as logs:
        service = await _serve_until(stream, eng, T0, lambda service: service.reports == 1)
    assert connections == [1] and service.bad_frames == 1
    assert [e["code"] for e in logs if e["event"] == "stream_error"] == ["malformed"]
    assert isinstance(eng.prices(T0)["BTC/USD"], Resolved)


async def test_reports_of_markets_never_asked_for_are_not_kept() -> None:
    """A server that sends reports of markets the service never asked for (the daemon sends
    only those subscribed: a hostile peer, a broken proxy) had every one kept in the engine's
    book, never read, so that memory grew with each new name it made up: 2,000 here, without
    end in a long run. Such a report is now skipped as `bad_report` (one line a minute for all
    of them, `market` the first one's name) and the book holds the engine's markets alone."""
    made_up = 2_000

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()
        await ws.send_str('{"type":"subscribed","markets":["BTC/USD"],"batch":true}')
        names = [f"X{n}/USD" for n in range(made_up)] + ["BTC/USD"]
        data = [
            {"market": m, "ts": T0, "round": 1, "status": "active", "price": "64000"} for m in names
        ]
        await ws.send_str(msgspec.json.encode({"type": "reports", "data": data}).decode())
        async for _ in ws:
            pass
        return ws

    eng = engine({"BTC": "BTC/USD"})
    with capture_logs() as logs:
        service = await _serve_until(stream, eng, T0, lambda service: "BTC/USD" in eng.book.latest)
    assert list(eng.book.latest) == ["BTC/USD"] and service.reports == 1
    assert isinstance(eng.prices(T0)["BTC/USD"], Resolved)
    told = [(e["market"], e["error"]) for e in logs if e["event"] == "bad_report"]
    assert told == [("X0/USD", "a market not asked for")]


async def _serve_until(
    stream: Callable[[web.Request], Awaitable[web.WebSocketResponse]],
    eng: MarginEngine,
    now_ms: int,
    done: Callable[[MarginService], bool],
) -> MarginService:
    """A margin service (clock fixed at `now_ms`) reading a stand-in daemon whose `/v1/stream`
    is `stream`, until `done(service)`; then stopped by the test (whatever the frames were, they
    did not end it)."""
    app = web.Application()
    app.router.add_get("/v1/stream", stream)
    async with DaemonServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("/v1/stream")).replace("http://", "ws://")
        service = MarginService(eng, url, io.BytesIO(), step_ms=60_000, clock=lambda: now_ms)
        task = asyncio.create_task(service.run())
        try:
            await until(lambda: done(service))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()  # ended by the test, not by the frames
    return service


@pytest.mark.parametrize("status", [302, 307])
async def test_a_handshake_redirected_to_another_host_is_refused_and_nothing_is_priced(
    status: int,
) -> None:
    """The daemon's address answers the handshake with a redirect to another host serving a
    round of plausible reports. aiohttp followed it: the service subscribed there and its
    engine priced BTC/USD at what that host said (unsigned, nothing tells them apart). The
    handshake is refused now, before subscribing (`connect_failed`, naming where it pointed),
    and retried with backoff; the other host is asked for nothing, nothing is priced."""
    report = {"market": "BTC/USD", "ts": T0, "round": 1, "status": "active", "price": "1.00"}
    frames = [
        '{"type":"subscribed","markets":["BTC/USD"],"batch":true}',
        msgspec.json.encode({"type": "reports", "round": 1, "data": [report]}).decode(),
    ]
    subscribed: list[int] = []  # subscriptions the other host got
    elsewhere = web.Application()
    elsewhere.router.add_get("/v1/stream", scripted_stream(frames, frames[0], subscribed))
    eng = engine({"BTC": "BTC/USD"})
    asked: list[int] = []
    with capture_logs() as logs:
        async with DaemonServer(elsewhere, host="127.0.0.1") as other:
            target = str(other.make_url("/v1/stream"))
            async with DaemonServer(redirecting(status, target, asked), host="127.0.0.1") as server:
                url = str(server.make_url("/v1/stream")).replace("http://", "ws://")
                service = MarginService(eng, url, io.BytesIO(), step_ms=60_000, clock=lambda: T0)
                task = asyncio.create_task(service.run())

                def settled() -> bool:  # prices taken there (the old way), or refused twice
                    failed = [e for e in logs if e["event"] == "connect_failed"]
                    return service.reports > 0 or (len(asked) >= 2 and len(failed) >= 2)

                try:
                    await until(settled)
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
    assert service.reports == 0 and eng.book.latest == {} and not service.connected.is_set()
    assert subscribed == []
    failed = [e for e in logs if e["event"] == "connect_failed"]
    assert failed[0]["error"] == f"handshake redirected to {target}"
    assert failed[0]["url"] == url and failed[0]["log_level"] == "warning"
    assert not any(e["event"] == "connected" for e in logs)
