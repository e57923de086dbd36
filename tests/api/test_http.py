"""The HTTP endpoints against a real Core, Hub and aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import copy
import threading
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.test_utils import TestClient
from api_rig import (
    CONFIG,
    INTERVAL,
    PRICES,
    TOKEN,
    ClientFactory,
    ContractRecorder,
    HeldMetricsRig,
    Rig,
    count_arrivals,
    make_config,
    reloaded,
)
from stream_wire import SAFETY_S
from structlog.testing import capture_logs
from yarl import URL

from oracled.api import build_app
from oracled.config import parse_config
from oracled.errors import ConfigError

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _json(client: Client, path: str | URL, status: int = 200) -> Any:
    resp = await client.get(path)
    body = await resp.json()
    assert resp.status == status, body
    return body


async def test_prices_before_first_round_is_503_not_ready(client: Client) -> None:
    """Before any round, prices answer 503 with the not_ready error code, not an empty list."""
    for path in ("/v1/prices", "/v1/prices/BTC-USD"):
        body = await _json(client, path, 503)
        assert body["error"]["code"] == "not_ready"


async def test_prices_serve_latest_report_of_every_market(client: Client, rig: Rig) -> None:
    """/v1/prices has one report per market, in config order, at each market's precision."""
    rig.step()
    rig.step()
    body = await _json(client, "/v1/prices")
    assert {(r["round"], r["ts"]) for r in body} == {(2, rig.clock.now_ms())}
    assert [r["market"] for r in body] == ["BTC/USD", "ETH/USD", "SOL/USD"]
    btc, eth, sol = body
    assert btc["status"] == "active" and btc["reasons"] == []
    assert abs(float(btc["price"]) - PRICES["BTC/USD"]) < 5
    assert len(btc["price"].split(".")[1]) == 2 and len(sol["price"].split(".")[1]) == 3
    assert eth["status"] == "degraded" and eth["reasons"] == ["thin"]
    assert [s["id"] for s in btc["sources"]] == ["alpha", "beta", "gamma"]


async def test_prices_query_selects_markets_in_the_order_asked(client: Client, rig: Rig) -> None:
    """?markets= accepts both spellings, keeps the order asked and drops duplicates."""
    rig.step()
    body = await _json(client, "/v1/prices?markets=ETH/USD,BTC-USD,eth-usd")
    assert [r["market"] for r in body] == ["ETH/USD", "BTC/USD"]


async def test_prices_are_byte_for_byte_the_reports_of_the_latest_round(
    client: Client, rig: Rig
) -> None:
    """/v1/prices (all, a selection, one market) is exactly msgspec's JSON of the latest round's
    reports, joined in the order asked, round after round while prices move."""
    for k in range(3):
        result = rig.step({m: p * (1 + 0.01 * k) for m, p in PRICES.items()})
        for query, names in (
            ("", ["BTC/USD", "ETH/USD", "SOL/USD"]),
            ("?markets=SOL/USD,BTC/USD", ["SOL/USD", "BTC/USD"]),
            ("?markets=ETH/USD", ["ETH/USD"]),
        ):
            resp = await client.get(f"/v1/prices{query}")
            assert resp.status == 200
            idx = [rig.core.index[m] for m in names]
            want = b"[" + b",".join(msgspec.json.encode(result.report(i)) for i in idx) + b"]"
            assert await resp.read() == want, query


async def test_prices_bad_query_is_400_and_unknown_market_404(client: Client, rig: Rig) -> None:
    """Malformed queries answer 400 bad_query; a well-formed but unconfigured market 404."""
    rig.step()
    for query in ("markets=", "markets=BTC", "market=BTC/USD", "markets=BTC/USD&markets=ETH/USD"):
        body = await _json(client, f"/v1/prices?{query}", 400)
        assert body["error"]["code"] == "bad_query", query
    body = await _json(client, "/v1/prices?markets=BTC/USD,DOGE/USD", 404)
    assert body["error"]["code"] == "unknown_market"
    assert "DOGE/USD" in body["error"]["message"]


async def test_one_price_accepts_dash_and_encoded_slash(client: Client, rig: Rig) -> None:
    """/v1/prices/BTC-USD and /v1/prices/BTC%2FUSD name the same market and give the same bytes."""
    rig.step()
    dash = await client.get("/v1/prices/BTC-USD")
    slash = await client.get(URL("/v1/prices/BTC%2FUSD", encoded=True))
    assert dash.status == slash.status == 200
    assert await dash.read() == await slash.read()
    assert (await dash.json())["market"] == "BTC/USD"


async def test_unknown_market_is_404_json_everywhere(client: Client, rig: Rig) -> None:
    """An unconfigured or malformed market in a path is a 404 with the unknown_market code."""
    rig.step()
    for path in ("/v1/prices/DOGE-USD", "/v1/prices/nonsense", "/v1/markets/DOGE-USD/sources"):
        body = await _json(client, path, 404)
        assert body["error"]["code"] == "unknown_market", path


async def test_unknown_route_and_wrong_method_answer_json_errors(client: Client) -> None:
    """Even aiohttp's own 404/405 leave as the JSON error shape, 405 with its Allow header."""
    body = await _json(client, "/v1/nothing-here", 404)
    assert body["error"]["code"] == "not_found"
    assert "/openapi.json" in body["error"]["message"]
    resp = await client.get("/v1/admin/markets/BTC-USD/pause")
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_stream_route_without_upgrade_is_426(client: Client) -> None:
    """A plain GET on the stream endpoint says it needs a WebSocket upgrade."""
    body = await _json(client, "/v1/stream", 426)
    assert body["error"]["code"] == "upgrade_required"


async def test_markets_list_configured_gate_params(client: Client, rig: Rig) -> None:
    """/v1/markets shows each market's gate parameters and sources as configured."""
    body = await _json(client, "/v1/markets")
    btc = body["markets"][0]
    assert btc["symbol"] == "BTC/USD"
    assert (btc["min_sources"], btc["max_age_ms"], btc["price_exponent"]) == (2, 1000, -2)
    assert btc["lag_ms"] == rig.cfg.markets[0].lag_ms == 2_000  # the default
    assert btc["max_deviation"] == rig.cfg.markets[0].max_deviation
    gamma = btc["sources"][2]
    assert gamma == {"source": "gamma", "pair": "BTC/USD", "kind": "spot", "weight": 2.0}
    assert [m["symbol"] for m in body["markets"]] == ["BTC/USD", "ETH/USD", "SOL/USD"]


async def test_markets_list_perp_sources_and_mark_settings(make_client: ClientFactory) -> None:
    """/v1/markets shows a perpetual market's perp_sources and mark settings as configured, and
    an empty list and null for a spot-only market: the mark setup is visible over the API."""
    data = copy.deepcopy(CONFIG)
    data["sources"]["delta"] = {"type": "binance_usdm"}
    data["markets"][0]["perp_sources"] = [{"source": "delta", "pair": "BTC/USD"}]
    data["markets"][0]["mark"] = {"funding_interval_s": 3_600, "min_perp_sources": 1}
    rig = Rig(parse_config(data, env={"ORACLED_ADMIN_TOKEN": TOKEN}))
    client = await make_client(rig)
    btc, eth, _ = (await _json(client, "/v1/markets"))["markets"]
    assert btc["perp_sources"] == [
        {"source": "delta", "pair": "BTC/USD", "kind": "perp", "weight": 1.0}
    ]
    mark = btc["mark"]
    assert (mark["funding_interval_s"], mark["min_perp_sources"]) == (3_600, 1)
    assert mark["max_perp_deviation"] == rig.cfg.markets[0].mark.max_perp_deviation
    assert (eth["perp_sources"], eth["mark"]) == ([], None)


async def test_market_sources_show_quote_age_use_and_connection(client: Client, rig: Rig) -> None:
    """Per source: latest quote, its age now, used or excluded (and why), connection state."""
    before = await _json(client, "/v1/markets/BTC-USD/sources")
    assert before["round"] is None
    assert all(s["quote"] is None and s["used"] is None for s in before["sources"])

    rig.step({"BTC/USD": 64_000.0})
    rig.clock.advance(INTERVAL)
    rig.quote("alpha", "BTC/USD", 64_000.0)
    rig.quote("beta", "BTC/USD", 70_000.0)  # 9% off the others: excluded as an outlier
    rig.hub.publish(rig.core.run_round(rig.clock.now_ms()))
    rig.clock.advance(100)
    body = await _json(client, "/v1/markets/BTC%2FUSD/sources")
    assert body["market"] == "BTC/USD"
    assert body["now"] == rig.clock.now_ms()
    alpha, beta, gamma = body["sources"]
    assert (alpha["used"], alpha["reason"], alpha["age_ms"]) == (True, None, 100)
    assert (gamma["used"], gamma["age_ms"]) == (True, 100 + INTERVAL)  # quoted a round earlier
    assert (beta["used"], beta["reason"]) == (False, "outlier")
    assert float(beta["quote"]["bid"]) < 70_000.0 < float(beta["quote"]["ask"])
    assert beta["quote"]["price"] is None
    assert beta["value"].startswith("70000.")
    assert alpha["connection"]["state"] == "streaming"
    assert (beta["connection"]["state"], beta["connection"]["reconnects"]) == ("polling", 2)
    assert gamma["connection"] is None  # no stats registered for gamma


async def test_info_and_healthz(client: Client, rig: Rig) -> None:
    """/v1/info reports version, interval, market count and the latest round; /healthz is 200."""
    info = await _json(client, "/v1/info")
    assert info == {
        "version": "9.9.9-test",
        "round_interval_ms": INTERVAL,
        "markets": 3,
        "round": None,
        "ts": None,
        "stalled": None,
        "signer": None,  # this rig does not sign
        "deployment": None,
    }
    rig.step()
    assert (await _json(client, "/v1/info"))["round"] == 1
    assert await _json(client, "/healthz") == {"status": "ok"}


async def test_info_names_the_signer_and_the_deployment_consumers_must_configure(
    make_client: ClientFactory,
) -> None:
    """A signing daemon's /v1/info serves both things a consumer verifies against: the address
    and the `signing.deployment` its rounds are signed for (the EIP-712 salt), and no more of
    [signing] (the key's variable is not named)."""
    data = copy.deepcopy(CONFIG)
    data["signing"] = {
        "enabled": True,
        "deployment": "staging-eu",
        "key_env": "SIGNING_KEY_VAR",
        "lease_file": "oracled-signing-lease.json",  # the rig has no signer: never opened
    }
    rig = Rig(parse_config(data, env={"ORACLED_ADMIN_TOKEN": TOKEN}))
    address = "0x71C7656EC7ab88b098defB751B7401B5f6d8976F"
    rig.hub.signer = address  # what the service sets from its RoundSigner
    client = await make_client(rig)
    info = await _json(client, "/v1/info")
    assert (info["signer"], info["deployment"]) == (address, "staging-eu")
    assert "SIGNING_KEY_VAR" not in str(info)


async def test_readyz_flips_with_the_share_of_live_markets(client: Client, rig: Rig) -> None:
    """/readyz is 503 before a round, 200 once half the markets are live, 503 when they go stale."""
    body = await _json(client, "/readyz", 503)
    assert (body["ready"], body["live"], body["required"], body["round"]) == (False, 0, 2, None)
    rig.step()
    body = await _json(client, "/readyz", 200)
    assert (body["ready"], body["live"], body["markets"]) == (True, 3, 3)
    for _ in range(5):  # only SOL keeps quoting; BTC and ETH age past max_age_ms (1 s)
        rig.step({"SOL/USD": 150.0})
    body = await _json(client, "/readyz", 503)
    assert (body["ready"], body["live"]) == (False, 1)
    assert body["reason"] == "1 of 3 markets live, 2 required"


async def test_readyz_and_healthz_fail_when_no_round_is_published_for_too_long(
    client: Client, rig: Rig
) -> None:
    """A round loop that stops publishing (stuck, not crashed) no longer leaves the daemon ready
    for ever on its last round: past 3 intervals and 5 s /readyz is 503 naming the reason, past
    10 intervals and 60 s /healthz is 503 too (a supervisor restarts it); a new round heals
    both. /healthz is 200 before the first round (the loop has not started). /readyz's reason is
    the stall as the price endpoints' 503 `stalled` words it (one test: ApiContext.stalled)."""
    assert await _json(client, "/healthz") == {"status": "ok"}
    rig.step()
    body = await _json(client, "/readyz", 200)
    assert (body["round_age_s"], body["reason"]) == (0.0, None)
    rig.clock.advance(5_000)  # at the limit: still ready
    assert (await _json(client, "/readyz", 200))["round_age_s"] == 5.0
    rig.clock.advance(1)
    body = await _json(client, "/readyz", 503)
    assert (body["ready"], body["live"], body["round"], body["round_age_s"]) == (False, 3, 1, 5.001)
    assert body["reason"] == "the latest round is 5.0 s old (limit 5 s): rounds have stalled"
    refused = await _json(client, "/v1/prices", 503)  # one test of a stall, in the same words
    assert refused["error"]["message"].startswith(body["reason"] + ", "), refused
    assert await _json(client, "/healthz") == {"status": "ok"}
    rig.clock.advance(55_000)
    body = await _json(client, "/healthz", 503)
    assert body == {
        "status": "stalled",
        "reason": "no round for 60.0 s (limit 60 s): the round loop is stuck",
        "round": 1,
        "round_age_s": 60.001,
    }
    rig.step()
    assert await _json(client, "/healthz") == {"status": "ok"}
    assert (await _json(client, "/readyz", 200))["round"] == 2


async def test_the_round_age_limits_grow_with_a_long_round_interval(
    make_client: ClientFactory,
) -> None:
    """With 60 s rounds a round is normally up to 60 s old: not ready only past 180 s (3
    intervals), not alive only past 600 s (10 intervals)."""
    data = copy.deepcopy(CONFIG)
    data["oracle"]["round_interval_ms"] = 60_000
    rig = Rig(parse_config(data, env={}))
    client = await make_client(rig)
    rig.step()
    rig.clock.advance(180_000)
    await _json(client, "/readyz", 200)
    rig.clock.advance(1)
    assert "(limit 180 s)" in (await _json(client, "/readyz", 503))["reason"]
    rig.clock.advance(419_999)
    await _json(client, "/healthz")
    rig.clock.advance(1)
    assert "(limit 600 s)" in (await _json(client, "/healthz", 503))["reason"]


async def test_metrics_render_in_an_executor_thread(client: Client, rig: Rig) -> None:
    """/metrics serves what render_metrics returns, called off the event loop's thread."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert "test_renders_total 1.0" in await resp.text()
    assert rig.metric_threads and rig.metric_threads[0] != threading.get_ident()


async def test_scrapes_that_arrive_during_a_render_share_it(aiohttp_client: Any) -> None:
    """Twenty scrapes at once cost one render, all get its text, and a later scrape renders
    anew: a scrape storm must not start a render thread per request (they took the GIL from
    the round loop)."""
    rig = HeldMetricsRig(lambda n: f"renders {n}\n".encode())
    app = build_app(rig.context())
    all_in = count_arrivals(app, "/metrics", 20)
    client: Client = await aiohttp_client(app)
    scrapes = [asyncio.create_task(client.get("/metrics")) for _ in range(20)]
    async with asyncio.timeout(10):
        await all_in.wait()
    rig.release.set()
    answers = await asyncio.gather(*scrapes)
    assert [r.status for r in answers] == [200] * 20
    assert {await r.text() for r in answers} == {"renders 1\n"}
    assert rig.calls == 1
    assert await (await client.get("/metrics")).text() == "renders 2\n"


async def test_admin_without_configured_token_is_403(make_client: ClientFactory) -> None:
    """With no admin token configured the admin endpoints answer 403 admin_disabled, saying why."""
    rig = Rig(make_config(token=None))
    client = await make_client(rig)
    resp = await client.post("/v1/admin/markets/BTC-USD/pause", headers=AUTH)
    body = await resp.json()
    assert resp.status == 403
    assert body["error"]["code"] == "admin_disabled"
    assert "no admin token is configured" in body["error"]["message"]
    assert rig.manual == []


async def test_admin_rejects_missing_or_wrong_token_with_401(client: Client, rig: Rig) -> None:
    """A missing, malformed or wrong bearer token is 401 with a challenge, and nothing applied."""
    cases: list[dict[str, str]] = [
        {},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer " + TOKEN[:-1] + "x"},
        {"Authorization": "Basic " + TOKEN},
    ]
    for headers in cases:
        resp = await client.post("/v1/admin/markets/BTC-USD/pause", headers=headers)
        assert resp.status == 401, headers
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await resp.json())["error"]["code"] == "unauthorized"
    assert rig.manual == []


async def test_admin_pause_nulls_price_and_resume_restores_it(client: Client, rig: Rig) -> None:
    """Pause via the API: next report has price null, reason manual, last_good_price kept."""
    rig.step()
    live = await _json(client, "/v1/prices/BTC-USD")
    resp = await client.post(
        "/v1/admin/markets/BTC-USD/pause", headers=AUTH, json={"actor": "alice"}
    )
    assert resp.status == 200
    assert await resp.json() == {"market": "BTC/USD", "paused": True, "actor": "alice"}
    assert rig.manual == [("BTC/USD", True, "alice")]

    rig.step()
    paused = await _json(client, "/v1/prices/BTC-USD")
    assert (paused["status"], paused["reasons"]) == ("paused", ["manual"])
    assert paused["price"] is None and paused["confidence"] is None
    assert paused["last_good_price"] == live["price"]
    assert paused["last_good_ts"] == live["ts"]

    resp = await client.post("/v1/admin/markets/BTC%2FUSD/resume", headers=AUTH)
    assert resp.status == 200
    assert rig.manual[-1] == ("BTC/USD", False, "api")
    rig.step()
    assert (await _json(client, "/v1/prices/BTC-USD"))["status"] == "active"


async def test_admin_bad_body_is_400_and_unknown_market_404(client: Client, rig: Rig) -> None:
    """An authorized call with a broken body or an unknown market applies nothing."""
    url = "/v1/admin/markets/BTC-USD/pause"
    for data in (b"{not json", b'{"actor": "has spaces"}', b'{"who": "x"}'):
        resp = await client.post(url, headers=AUTH, data=data)
        assert resp.status == 400, data
        assert (await resp.json())["error"]["code"] == "bad_request"
    resp = await client.post("/v1/admin/markets/DOGE-USD/pause", headers=AUTH)
    assert resp.status == 404
    assert rig.manual == []


async def test_an_actor_with_a_line_break_is_refused(client: Client, rig: Rig) -> None:
    """An actor is 1-64 characters of A-Z a-z 0-9 _ . @ : - and nothing else, as the OpenAPI
    document's pattern says: one ending in a line break (`"alice\n"`) was taken (the check's
    `$` matches before a final newline) and went as it was into the pause, its log line and the
    audit trail's action (found fuzzing the admin endpoints: tests/api/test_api_fuzz.py)."""
    for actor in ("alice\n", "bob\r\n", "\n"):
        resp = await client.post(
            "/v1/admin/markets/BTC-USD/pause", headers=AUTH, json={"actor": actor}
        )
        assert resp.status == 400, actor
        assert (await resp.json())["error"]["code"] == "bad_request", actor
    assert rig.manual == []


async def test_reload_applies_a_new_config_and_refuses_an_invalid_one(
    make_client: ClientFactory,
) -> None:
    """POST /v1/admin/reload swaps markets in place; an invalid file is refused whole with 422."""
    rig = Rig(make_config())
    smaller = make_config()
    data = smaller.model_dump(by_alias=True, exclude={"admin_token"})
    data["markets"] = [m for m in data["markets"] if m["symbol"] != "SOL/USD"]
    rig.next_config = type(smaller).model_validate({**data, "admin_token": smaller.admin_token})
    client = await make_client(rig)
    rig.step()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    resp = await client.post("/v1/admin/reload", headers=auth, json={"actor": "ops@desk"})
    assert resp.status == 200
    body = await resp.json()
    assert body["markets_removed"] == ["SOL/USD"] and body["actor"] == "ops@desk"
    assert body["markets_added"] == [] and body["needs_restart"] == []
    markets = await (await client.get("/v1/markets")).json()
    assert [m["symbol"] for m in markets["markets"]] == ["BTC/USD", "ETH/USD"]
    assert (await client.get("/v1/prices/SOL-USD")).status == 404
    rig.step()
    assert (await client.get("/v1/prices/BTC-USD")).status == 200
    rig.next_config = ConfigError(["markets[0].weight: must be > 0"])
    resp = await client.post("/v1/admin/reload", headers=auth)
    assert resp.status == 422
    assert "markets[0].weight: must be > 0" in (await resp.json())["error"]["message"]


async def test_a_market_added_by_reload_is_503_until_its_first_round(
    make_client: ClientFactory,
) -> None:
    """Between a reload that adds a market and the next round, asking for the new market is a
    503 not_ready (as before any round), not a 500; the next round serves it."""
    rig = reloaded(
        lambda data: data["markets"].append(
            {
                "symbol": "ADA/USD",
                "price_exponent": -4,  # at two decimals 0.5 is below its resolution
                "min_sources": 1,
                "max_age_ms": 1_000,
                "sources": [{"source": "alpha", "pair": "ADA/USD"}],
            }
        )
    )
    client = await make_client(rig)
    rig.step()
    resp = await client.post("/v1/admin/reload", headers=AUTH)
    assert (await resp.json())["markets_added"] == ["ADA/USD"]
    for path in ("/v1/prices/ADA-USD", "/v1/prices?markets=BTC/USD,ADA/USD"):
        body = await _json(client, path, 503)
        assert body["error"]["code"] == "not_ready", path
    assert len(await _json(client, "/v1/prices")) == 3  # the latest round's markets still serve
    rig.step({**PRICES, "ADA/USD": 0.5})
    assert (await _json(client, "/v1/prices/ADA-USD"))["price"] == "0.5000"


async def test_sources_after_a_reload_never_show_another_sources_part(
    make_client: ClientFactory,
) -> None:
    """A reload that puts a new source first in a market, before the next round: the sources
    view answers (no 500), the new source has no part yet, and the old one keeps its own."""

    def add_delta(data: dict[str, Any]) -> None:
        data["sources"]["delta"] = {"type": "binance"}
        data["markets"][2]["sources"].insert(0, {"source": "delta", "pair": "SOL/USD"})

    rig = reloaded(add_delta)
    client = await make_client(rig)
    rig.step()
    before = await _json(client, "/v1/markets/SOL-USD/sources")
    (alpha,) = before["sources"]
    assert alpha["used"] is True
    await client.post("/v1/admin/reload", headers=AUTH)
    body = await _json(client, "/v1/markets/SOL-USD/sources")
    delta, alpha_now = body["sources"]
    assert delta["source"] == "delta" and delta["used"] is None and delta["value"] is None
    assert alpha_now["source"] == "alpha" and alpha_now["value"] == alpha["value"]
    assert alpha_now["used"] is True
    rig.step()
    body = await _json(client, "/v1/markets/SOL-USD/sources")
    assert [s["used"] for s in body["sources"]] == [True, True]


async def test_a_list_of_more_than_256_markets_is_refused_before_any_lookup(
    client: Client, rig: Rig
) -> None:
    """A query naming more markets than the limit is a 400 bad_query saying the limit, not a
    walk through every name."""
    rig.step()
    names = ",".join(f"C{i}/USD" for i in range(257))
    body = await _json(client, f"/v1/prices?markets={names}", 400)
    assert body["error"]["code"] == "bad_query" and "at most 256" in body["error"]["message"]


class _BrokenMetricsRig(Rig):
    """A rig whose metrics rendering fails, as a collector with a bug would."""

    def render_metrics(self) -> tuple[bytes, str]:
        raise RuntimeError("a collector failed")


async def test_an_unexpected_handler_error_is_a_logged_json_500(
    aiohttp_client: Any, contract: ContractRecorder
) -> None:
    """Anything a handler did not expect leaves as the JSON error shape with status 500 (no
    HTML page, no traceback to the client) and is logged with its traceback."""
    rig = _BrokenMetricsRig(make_config())
    client = await aiohttp_client(build_app(rig.context()))
    with capture_logs() as logs:
        resp = await client.get("/metrics")
    assert resp.status == 500 and resp.content_type == "application/json"
    body = await resp.json()
    contract.validator("/components/schemas/Error").validate(body)
    assert body["error"]["code"] == "internal" and "collector" not in body["error"]["message"]
    (event,) = [e for e in logs if e["log_level"] == "error"]
    assert event["event"] == "api_handler_failed" and event["path"] == "/metrics"
    assert event["exc_info"] is True


async def test_an_admin_body_over_the_limit_is_a_json_413_and_changes_nothing(
    aiohttp_client: Any, contract: ContractRecorder
) -> None:
    """A pause request whose body is larger than the API takes (16 KiB) is refused with the
    JSON error shape (413 payload_too_large) and pauses nothing."""
    rig = Rig(make_config())
    client = await aiohttp_client(build_app(rig.context()))
    body = b'{"actor":"' + b"x" * 20_000 + b'"}'
    resp = await client.post("/v1/admin/markets/BTC-USD/pause", headers=AUTH, data=body)
    assert resp.status == 413
    error = await resp.json()
    contract.validator("/components/schemas/Error").validate(error)
    assert error["error"]["code"] == "payload_too_large"
    assert rig.manual == []


async def test_no_answer_may_be_stored_by_a_cache(client: Client, rig: Rig) -> None:
    """A cached price is a frozen price: every answer, prices, errors and the event stream
    alike, says Cache-Control: no-store, so that no proxy or client cache serves an old round
    as the latest (no-cache would still let a cache store it and revalidate at will)."""
    before = await client.get("/v1/prices")  # 503 not_ready: must not be stored either
    assert before.status == 503 and before.headers.get("Cache-Control") == "no-store"
    rig.step()
    gets = [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/info",
        "/v1/prices",
        "/v1/prices?markets=BTC-USD,ETH-USD",
        "/v1/prices/BTC-USD",
        "/v1/markets",
        "/v1/markets/BTC-USD/sources",
        "/v1/prices/DOGE-USD",  # 404 unknown_market
        "/v1/prices?markets=",  # 400
        "/v1/nothing-here",  # 404 from the router
        "/v1/admin/reload",  # 405
        "/v1/stream",  # 426
    ]
    for path in gets:
        resp = await client.get(path)
        assert resp.headers.get("Cache-Control") == "no-store", (path, resp.status)
    for headers in ({}, AUTH):  # 401, then 200
        resp = await client.post("/v1/admin/markets/BTC-USD/pause", headers=headers)
        assert resp.headers.get("Cache-Control") == "no-store", (headers, resp.status)
    events = await client.get("/v1/events?markets=BTC-USD")
    assert events.status == 200 and events.headers.get("Cache-Control") == "no-store"
    events.close()


async def test_head_answers_like_get_without_the_body_except_on_streams(
    client: Client, rig: Rig
) -> None:
    """HEAD, which every HTTP server must support for what it serves with GET (RFC 9110, 9.1;
    load balancers and uptime checkers probe with it), answers each plain GET endpoint with the
    GET answer's status and headers and no body; it used to be a 405 everywhere. The two
    streams have no representation to describe: HEAD there stays a 405 naming GET."""
    rig.step()
    paths = [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/v1/info",
        "/v1/prices",
        "/v1/prices?markets=BTC-USD",
        "/v1/prices/BTC-USD",
        "/v1/prices/DOGE-USD",  # an error answers HEAD like GET too
        "/v1/markets",
        "/v1/markets/BTC-USD/sources",
    ]
    for path in paths:
        got = await client.get(path, auto_decompress=False)  # the body as sent (maybe gzip)
        body = await got.read()
        head = await client.head(path)
        assert head.status == got.status, path
        assert await head.read() == b"", path
        for name in ("Content-Type", "Content-Length", "Cache-Control", "Content-Encoding"):
            assert head.headers.get(name) == got.headers.get(name), (path, name)
        assert int(got.headers["Content-Length"]) == len(body), path
    head = await client.head("/metrics")
    assert head.status == 200 and head.content_type.startswith("text/plain")
    assert await head.read() == b""
    for path in ("/v1/stream", "/v1/events"):
        head = await client.head(path)
        assert head.status == 405 and head.headers["Allow"] == "GET", path
        assert (await head.read()) == b""
    post = await client.post("/v1/prices")  # a wrong method now names both
    assert post.status == 405 and set(post.headers["Allow"].split(",")) == {"GET", "HEAD"}


async def test_a_request_line_over_8190_bytes_is_the_http_layers_plain_400(
    client: Client, rig: Rig
) -> None:
    """As contracts.md says: a path and query one byte over the HTTP layer's 8,190 is refused
    by it with a plain-text 400 (not the API's JSON; no handler runs), one byte less reaches
    the API (here its JSON 400 for an unknown name), and 256 usual names fit with room to spare;
    128 headers are read, 129 are that plain 400; the server goes on answering."""
    rig.step()
    head = "/v1/prices?markets="
    for extra, ctype in ((0, "application/json"), (1, "text/plain")):
        path = head + "A" * (8190 - len(head) + extra)
        resp = await client.get(path)
        assert (resp.status, resp.content_type) == (400, ctype), extra
    names = ",".join(["BTC-USD", "ETH-USD"] * 128)  # 256 names, 2,047 bytes
    assert (await client.get(f"{head}{names}")).status == 200
    for count, answer in ((128, b"HTTP/1.1 200 "), (129, b"HTTP/1.0 400 ")):
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        headers = b"".join(b"X-N%d: 1\r\n" % i for i in range(count - 2))  # and Host, Connection
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: o\r\n" + headers + b"Connection: close\r\n\r\n"
        )
        async with asyncio.timeout(SAFETY_S):
            assert (await reader.read()).startswith(answer), count
        writer.close()
        await writer.wait_closed()


async def test_a_token_that_is_not_utf8_is_a_401_not_a_500(client: Client, rig: Rig) -> None:
    """A bearer token of bytes that are not UTF-8 (sent raw: aiohttp's client cannot) is a
    401 like any wrong token; it was a logged 500 internal, the token's text failing to encode
    before the comparison. A token of other non-ASCII letters is a 401 too; nothing is paused."""
    for token in (b"\xff\xfe", "tøken".encode()):
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        writer.write(
            b"POST /v1/admin/markets/BTC-USD/pause HTTP/1.1\r\nHost: oracled\r\n"
            b"Authorization: Bearer " + token + b"\r\nContent-Length: 0\r\n"
            b"Connection: close\r\n\r\n"
        )
        async with asyncio.timeout(SAFETY_S):
            answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401 "), (token, head)
        assert b'"code":"unauthorized"' in body, token
    assert rig.manual == []


async def test_only_the_endpoints_with_a_query_refuse_an_unknown_parameter(
    client: Client, rig: Rig
) -> None:
    """As contracts.md says: /v1/prices and /v1/events refuse a parameter they do not take
    (400 bad_query); the endpoints without a query ignore one (a probe's cache-buster such as
    ?_=1 keeps working), and /v1/prices/{market} answers for the market of its path."""
    rig.step()
    for path in ("/v1/prices?_=1", "/v1/events?_=1"):
        body = await _json(client, path, 400)
        assert body["error"]["code"] == "bad_query", path
    for path in ("/healthz?_=1", "/readyz?_=1", "/v1/info?_=1", "/v1/markets?_=1"):
        assert (await client.get(path)).status == 200, path
    body = await _json(client, "/v1/prices/BTC-USD?markets=ETH-USD")
    assert body["market"] == "BTC/USD"


async def test_a_broken_websocket_handshake_says_what_is_wrong(client: Client) -> None:
    """A WebSocket handshake of a version the server does not speak is a 426 naming the one it
    does (Sec-WebSocket-Version: 13, RFC 6455 4.4); one with a missing or malformed key is a
    400 bad_request (RFC 6455 4.2.1). Both were a 426 telling the client to connect with a
    WebSocket client, which it was. A GET without an upgrade stays a 426."""
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
    key = {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    resp = await client.get("/v1/stream", headers={**upgrade, **key, "Sec-WebSocket-Version": "99"})
    assert resp.status == 426 and resp.headers["Sec-WebSocket-Version"] == "13"
    assert (await resp.json())["error"]["code"] == "upgrade_required"
    for bad_key in ({}, {"Sec-WebSocket-Key": "c2hvcnQ="}, {"Sec-WebSocket-Key": "%%%"}):
        headers = {**upgrade, **bad_key, "Sec-WebSocket-Version": "13"}
        resp = await client.get("/v1/stream", headers=headers)
        assert resp.status == 400, bad_key
        assert (await resp.json())["error"]["code"] == "bad_request", bad_key
    resp = await client.get("/v1/stream")
    assert resp.status == 426 and "Sec-WebSocket-Version" not in resp.headers


async def test_no_answer_names_the_python_or_aiohttp_versions(client: Client, rig: Rig) -> None:
    """aiohttp's default `Server` header names the Python and aiohttp versions; every answer
    of the API, errors and the event stream alike, says `oracled` only."""
    rig.step()
    paths = ("/healthz", "/metrics", "/v1/prices", "/v1/prices/DOGE-USD", "/v1/nothing-here")
    for path in (*paths, "/v1/stream"):  # the last a 426: no WebSocket upgrade asked for
        resp = await client.get(path)
        assert resp.headers.get("Server") == "oracled", (path, resp.status)
    resp = await client.post("/v1/admin/markets/BTC-USD/pause")  # 401
    assert resp.status == 401 and resp.headers.get("Server") == "oracled"
    events = await client.get("/v1/events?markets=BTC-USD")
    assert events.status == 200 and events.headers.get("Server") == "oracled"
    events.close()
