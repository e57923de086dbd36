"""Refused admin requests: counted by reason, logged at most once a minute, never the token.

Against the API served on loopback as the daemon serves it; the rig's manual clock drives the
once-a-minute rule, so that no test waits for it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from api_rig import TOKEN, ClientFactory, Rig, make_config
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from oracled.api.admin import REFUSED_REASONS
from oracled.lograte import LOG_EVERY_S
from oracled.metrics import Metrics, MetricsInputs
from oracled.publish import Hub

Client = TestClient[web.Request, web.Application]
PAUSE = "/v1/admin/markets/BTC-USD/pause"
WRONG = TOKEN[:-1] + "x"  # one character off: a guess that shares all the rest


def _leaks(events: list[dict[str, Any]], *secrets: str) -> list[str]:
    """Every 6-character piece of a secret that appears anywhere in the logged events."""
    text = repr(events)
    return [s[i : i + 6] for s in secrets for i in range(len(s) - 5) if s[i : i + 6] in text]


def _refused_lines(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "api_admin_refused"]


def _exposed(rig: Rig) -> dict[str, float]:
    """`oracled_admin_requests_refused_total` by reason, as a registry over the rig's hub
    renders it (the daemon's registry reads the same hub counter)."""
    metrics = Metrics(
        MetricsInputs(
            core=rig.core,
            latest=lambda: rig.hub.latest_result,
            source_stats=rig.stats,
            now_ms=rig.clock.now_ms,
            stream_subscribers=lambda: 0,
            stream_dropped=dict,
            admin_refused=lambda: rig.hub.admin_refused,
        )
    )
    body, _ = metrics.render()
    return {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(body.decode())
        if family.name == "oracled_admin_requests_refused"
        for s in family.samples
        if s.name.endswith("_total")
    }


def test_a_new_hub_counts_every_reason_from_the_start() -> None:
    """Each reason the admin handlers refuse for is in a new hub's counter at 0, no other: the
    metrics thread reads it while the loop counts, safe only while no key is added."""
    assert dict(Hub(4).admin_refused) == dict.fromkeys(REFUSED_REASONS, 0)


async def test_each_refusal_is_counted_by_reason_and_logged_without_the_token(
    client: Client, rig: Rig
) -> None:
    """No header is `missing`; the token without `Bearer `, an empty bearer and another scheme
    are `malformed`; a bearer token one character off is `wrong`. Each is a 401, counted under
    its reason, in the exposition too. The first of each reason is logged (`api_admin_refused`,
    with the route's template and the client's address); more within the minute are counted and
    not logged, and the next line, a minute on, says how many there were. No line holds any
    six characters of the token or of the one sent, and nothing is paused."""
    cases: list[tuple[str, dict[str, str], str]] = [
        (PAUSE, {}, "missing"),
        (PAUSE, {"Authorization": TOKEN}, "malformed"),  # the header's whole value is the token
        ("/v1/admin/markets/ETH-USD/resume", {"Authorization": "Bearer "}, "malformed"),
        (PAUSE, {"Authorization": "Basic " + TOKEN}, "malformed"),
        ("/v1/admin/reload", {"Authorization": "Bearer " + WRONG}, "wrong"),
    ]
    with capture_logs() as logs:
        for path, headers, _ in cases:
            resp = await client.post(path, headers=headers)
            assert resp.status == 401, (path, headers)
            assert (await resp.json())["error"]["code"] == "unauthorized"
    assert dict(rig.hub.admin_refused) == {
        "disabled": 0,
        "missing": 1,
        "malformed": 3,
        "wrong": 1,
        "locked_out": 0,
    }
    assert _exposed(rig) == {
        "disabled": 0.0,
        "missing": 1.0,
        "malformed": 3.0,
        "wrong": 1.0,
        "locked_out": 0.0,
    }
    lines = _refused_lines(logs)
    assert [(e["reason"], e["route"], e["refused"]) for e in lines] == [
        ("missing", "/v1/admin/markets/{market}/pause", 1),
        ("malformed", "/v1/admin/markets/{market}/pause", 1),
        ("wrong", "/v1/admin/reload", 1),
    ]
    assert {(e["log_level"], e["remote"]) for e in lines} == {("warning", "127.0.0.1")}

    rig.clock.advance(int(LOG_EVERY_S * 1000))
    with capture_logs() as later:
        resp = await client.post(PAUSE, headers={"Authorization": "Token " + TOKEN})
        assert resp.status == 401
    assert [(e["reason"], e["refused"]) for e in _refused_lines(later)] == [("malformed", 3)]
    assert rig.hub.admin_refused["malformed"] == 4
    assert _leaks([*logs, *later], TOKEN, WRONG) == []
    assert rig.manual == []


async def test_a_valid_token_is_not_counted(client: Client, rig: Rig) -> None:
    """A request with the token acts and is neither counted nor logged as refused, whatever
    the refusals before it."""
    with capture_logs() as logs:
        assert (await client.post(PAUSE)).status == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for path in (PAUSE, "/v1/admin/markets/BTC-USD/resume"):
            assert (await client.post(path, headers=auth)).status == 200, path
        # The scheme is case-insensitive, and whitespace around the token is no part of it.
        resp = await client.post(PAUSE, headers={"Authorization": f"bearer  {TOKEN} "})
        assert resp.status == 200
    assert dict(rig.hub.admin_refused) == {
        "disabled": 0,
        "missing": 1,
        "malformed": 0,
        "wrong": 0,
        "locked_out": 0,
    }
    assert [e["reason"] for e in _refused_lines(logs)] == ["missing"]
    assert rig.manual == [
        ("BTC/USD", True, "api"),
        ("BTC/USD", False, "api"),
        ("BTC/USD", True, "api"),
    ]


async def test_without_a_configured_token_every_call_is_counted_as_disabled(
    make_client: ClientFactory,
) -> None:
    """A daemon with no admin token answers 403 whatever the request sends, counted as
    `disabled` (a deploy whose automation expects a token the daemon was not given) and logged
    without what it sent."""
    rig = Rig(make_config(token=None))
    client = await make_client(rig)
    with capture_logs() as logs:
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            assert (await client.post("/v1/admin/reload", headers=headers)).status == 403
    assert dict(rig.hub.admin_refused) == {
        "disabled": 2,
        "missing": 0,
        "malformed": 0,
        "wrong": 0,
        "locked_out": 0,
    }
    assert [(e["reason"], e["route"]) for e in _refused_lines(logs)] == [
        ("disabled", "/v1/admin/reload")
    ]
    assert _leaks(logs, TOKEN) == []
