"""The OpenAPI document: valid 3.1, exactly the app's routes, schemas that match the code."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from api_rig import (
    TOKEN,
    ClientFactory,
    ContractRecorder,
    Rig,
    make_config,
    openapi_doc,
    rig_whose_reload_removes_sol,
)
from jsonschema import ValidationError  # type: ignore[import-untyped]
from openapi_spec_validator import validate
from stream_wire import ask, next_event, recv

from oracled.api import CONTEXT, build_app
from oracled.core import SLOT_REASONS
from oracled.errors import ConfigError, ServiceStopping
from oracled.model import REASON_BITS, Report, SourceValue, Status
from oracled.publish.signer import RoundSigner, SigningKey
from oracled.publish.signstall import stall_notice
from oracled.sources.stats import ConnState

#: A WebSocket upgrade whose key is not 16 bytes in base64.
BROKEN_HANDSHAKE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "c2hvcnQ=",
}
#: A well-formed upgrade a browser page of an origin the API does not list sent.
CROSS_ORIGIN_HANDSHAKE = {
    **BROKEN_HANDSHAKE,
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Origin": "https://page.example",
}
CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"
METHODS = {"get", "post", "put", "patch", "delete"}


def schema(name: str) -> dict[str, Any]:
    found: dict[str, Any] = openapi_doc()["components"]["schemas"][name]
    return found


def test_document_is_valid_openapi_3_1() -> None:
    """openapi-spec-validator accepts the shipped document as OpenAPI 3.1."""
    doc = openapi_doc()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_routes_equal_documented_paths(rig: Rig) -> None:
    """Every route of the app is documented and every documented operation is routed."""
    app = build_app(rig.context())
    routed = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {
        (path, method)
        for path, item in openapi_doc()["paths"].items()
        for method in item
        if method in METHODS
    }
    assert routed == documented


def test_report_schema_matches_the_model() -> None:
    """Report and SourceValue schemas list exactly the struct fields, all required but those a
    struct leaves out at their default (a slot's `via`, present on routed slots only)."""
    for struct, name in ((Report, "Report"), (SourceValue, "SourceValue")):
        fields = msgspec.structs.fields(struct)
        omits = struct.__struct_config__.omit_defaults
        names = {f.encode_name for f in fields}
        required = {f.encode_name for f in fields if f.required or not omits}
        assert set(schema(name)["properties"]) == names, name
        assert set(schema(name)["required"]) == required, name
    assert set(schema("SourceValue")["required"]) == names - {"via"}


def test_schema_enums_match_the_code() -> None:
    """Statuses, reasons, slot reasons and connection states come from the code's own lists."""
    report = schema("Report")["properties"]
    assert report["status"]["enum"] == [s.label for s in Status]
    assert set(report["reasons"]["items"]["enum"]) == set(REASON_BITS)
    slot = schema("SourceValue")["properties"]["reason"]
    assert set(SLOT_REASONS) - {None} <= set(slot["examples"])  # the core's own reasons
    assert slot["type"] == ["string", "null"]  # null: used; sources may add flags (at_bound...)
    assert schema("Connection")["properties"]["state"]["enum"] == [s.value for s in ConnState]


def test_report_schema_has_every_key_of_the_contract() -> None:
    """The Report keys in docs/contracts.md are exactly the documented schema's properties."""
    text = CONTRACTS.read_text(encoding="utf-8")
    section = text.split("## Report", 1)[1].split("\n## ", 1)[0]
    keys = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))
    assert keys == set(schema("Report")["properties"])


async def test_served_document_is_the_shipped_one(client: Any) -> None:
    """/openapi.json serves the document byte for byte."""
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert await resp.json() == openapi_doc()


def test_contract_check_rejects_undocumented_keys_and_statuses() -> None:
    """The response checker used by every API test fails on an extra key or status."""
    recorder = ContractRecorder()
    good = b'{"status":"ok"}'
    recorder.check("/healthz", "GET", 200, "application/json", good)
    with pytest.raises(ValidationError):
        recorder.check("/healthz", "GET", 200, "application/json", b'{"status":"ok","x":1}')
    with pytest.raises(AssertionError, match="undocumented 201"):
        recorder.check("/healthz", "GET", 201, "application/json", good)
    with pytest.raises(AssertionError):
        recorder.check("/healthz", "GET", 200, "text/html", good)


async def test_every_documented_response_is_produced_and_valid(
    make_client: ClientFactory, contract: ContractRecorder
) -> None:
    """Drive the app into each documented status; each real body validates against its schema."""
    rig = Rig(make_config())
    rig.next_config = make_config()
    client = await make_client(rig)
    closed = await make_client(Rig(make_config(token=None)))
    fileless = await make_client(Rig(make_config()))
    # One failed token check locks its address out (429 on every admin route).
    locked = await make_client(Rig(make_config(admin_lockout_failures=1)))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/readyz", {}),  # 503
        ("GET", "/v1/prices", {}),  # 503
        ("GET", "/v1/prices/BTC-USD", {}),  # 503
        ("GET", "/v1/markets/BTC-USD/sources", {}),  # before any round
        ("GET", "/v1/stream", {}),  # 426
        ("GET", "/v1/stream", {"headers": BROKEN_HANDSHAKE}),  # 400
        ("GET", "/v1/stream", {"headers": CROSS_ORIGIN_HANDSHAKE}),  # 403
    ]
    for method, path, kw in calls:
        await client.request(method, path, **kw)
    rig.step()
    admin = "/v1/admin/markets/{}/{}"
    calls = [
        ("GET", "/healthz", {}),
        ("GET", "/readyz", {}),
        ("GET", "/metrics", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/v1/info", {}),
        ("GET", "/v1/prices", {}),
        ("GET", "/v1/prices?markets=BTC", {}),
        ("GET", "/v1/prices?markets=DOGE/USD", {}),
        ("GET", "/v1/prices/BTC-USD", {}),
        ("GET", "/v1/prices/DOGE-USD", {}),
        ("GET", "/v1/markets", {}),
        ("GET", "/v1/markets/BTC-USD/sources", {}),
        ("GET", "/v1/markets/DOGE-USD/sources", {}),
    ]
    for action in ("pause", "resume"):
        calls += [
            ("POST", admin.format("BTC-USD", action), {"headers": auth}),
            ("POST", admin.format("BTC-USD", action), {"headers": auth, "data": b"[]"}),
            ("POST", admin.format("BTC-USD", action), {}),
            ("POST", admin.format("DOGE-USD", action), {"headers": auth}),
        ]
    for method, path, kw in calls:
        await client.request(method, path, **kw)
    rig.step()  # a paused market's report, too
    await client.get("/v1/prices")
    rig.save_error = "No space left on device"  # applied, not kept: 500 not_saved
    for action in ("pause", "resume"):
        await client.post(admin.format("BTC-USD", action), headers=auth)
    rig.save_error = None
    for action in ("pause", "resume"):
        await closed.post(admin.format("BTC-USD", action), headers=auth)
    events = await client.get("/v1/events?markets=BTC-USD")  # 200: a stream, closed by us
    await events.content.readline()
    events.close()
    # A closed client's handler returns at its next write (served as the daemon serves: a lost
    # connection does not cancel it), so the next round ends it.
    async with asyncio.timeout(10):
        while ("/v1/events", "get", 200) not in contract.seen:
            rig.step()
            await asyncio.sleep(0.01)
    await client.get("/v1/events?markets=NOPE-USD")  # 404
    await client.get("/v1/events?deviation=5")  # 400
    await client.post("/v1/admin/reload", headers=auth)  # 200
    await client.post("/v1/admin/reload")  # 401
    await client.post("/v1/admin/reload", headers=auth, data=b"[]")  # 400
    await closed.post("/v1/admin/reload", headers=auth)  # 403
    await fileless.post("/v1/admin/reload", headers=auth)  # 409
    await locked.post("/v1/admin/reload", headers={"Authorization": "Bearer wrong"})  # 401
    for path in (admin.format("BTC-USD", "pause"), admin.format("BTC-USD", "resume")):
        await locked.post(path, headers=auth)  # 429
    await locked.post("/v1/admin/reload", headers=auth)  # 429
    rig.next_config = ConfigError(["markets[0].min_sources: must be >= 1"])
    await client.post("/v1/admin/reload", headers=auth)  # 422
    rig.next_config = ServiceStopping("the daemon is stopping")
    await client.post("/v1/admin/reload", headers=auth)  # 503
    rig.clock.advance(61_000)  # no round for a minute: the round loop stalled
    await client.get("/healthz")  # 503
    await client.get("/readyz")  # 503, stalled

    documented = {
        (path, method, int(status))
        for path, item in contract.doc["paths"].items()
        for method, op in item.items()
        for status in op["responses"]
        if status not in ("default", "101")
    }
    assert documented - contract.seen == set()
    assert not contract.failures


def test_app_key_holds_the_context(rig: Rig) -> None:
    """The context is reachable from the app (for the runtime's own sub-apps or middlewares)."""
    ctx = rig.context()
    app = build_app(ctx)
    assert app[CONTEXT] is ctx
    assert isinstance(app, web.Application)


async def test_every_stream_frame_validates_against_the_stream_message_schema(
    make_client: ClientFactory, contract: ContractRecorder
) -> None:
    """Each frame a WebSocket and an SSE client receive (acks with options, report and batch
    frames, error frames of each kind, the market_removed notice of a reload) validates against
    StreamMessage with no key left undocumented, and each error code is one the schema names;
    the HTTP checks do not see these frames."""
    rig = rig_whose_reload_removes_sol()
    client = await make_client(rig)
    message = contract.validator("/components/schemas/StreamMessage")
    frames: list[dict[str, Any]] = []
    rig.step()
    events = await client.get("/v1/events?deviation=0.5&heartbeat_ms=1000")
    async with client.ws_connect("/v1/stream") as ws, client.ws_connect("/v1/stream") as batch:
        frames.append(await ask(ws, {"op": "subscribe", "deviation": 0.01, "heartbeat_ms": 500}))
        frames += [await recv(ws) for _ in range(3)]  # the snapshot
        frames.append(await ask(ws, {"op": "nonsense"}))  # error: bad_request
        frames.append(await ask(ws, {"op": "subscribe", "signed": True}))  # signing_disabled
        frames.append(await ask(ws, {"op": "subscribe", "markets": ["DOGE/USD"]}))  # unknown
        frames.append(await ask(ws, {"op": "subscribe", "markets": ["not one"]}))  # bad_query
        frames.append(await ask(batch, {"op": "subscribe", "batch": True}))
        frames.append(await recv(batch))  # the snapshot, as one batch
        resp = await client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert (await resp.json())["markets_removed"] == ["SOL/USD"]
        rig.step()
        frames += [await recv(ws), await recv(batch)]  # market_removed, to both
        frames.append(await ask(ws, {"op": "unsubscribe", "markets": ["BTC/USD"]}))
    for _ in range(3):
        _, frame = await next_event(events)
        frames.append(frame)
    events.close()
    kinds = {(f["type"], f.get("code")) for f in frames}
    assert {
        ("subscribed", None),
        ("unsubscribed", None),
        ("report", None),
        ("reports", None),
    } < kinds
    assert {("error", "bad_request"), ("error", "market_removed")} < kinds
    (error,) = [v for v in schema("StreamMessage")["oneOf"] if "code" in v["properties"]]
    named = set(re.findall(r"[a-z_]+", error["properties"]["code"]["description"]))
    assert {code for kind, code in kinds if kind == "error"} <= named  # each code is documented
    for frame in frames:
        try:
            message.validate(frame)
        except ValidationError as exc:
            raise AssertionError(f"{frame}: {exc.message}") from None


def test_the_signed_stalled_frame_validates_against_the_stream_message_schema(
    contract: ContractRecorder,
) -> None:
    """The `stalled` frame a signed subscriber gets when no round is signed past the limit
    (`stall_notice`, the NATS StallNotice, signed) validates against StreamMessage with no key
    left undocumented: its round, signer, deployment and signature are in the schema."""
    signer = RoundSigner(SigningKey.from_hex("0x" + "55" * 32), "test")
    message = "no round signed since round 7 for 5.3 s (the signer skips its rounds: lease)"
    frame = msgspec.json.decode(stall_notice(message, 1_700_000_000_000, 7, signer))
    assert (frame["code"], frame["round"], frame["signer"]) == ("stalled", 7, signer.address)
    contract.validator("/components/schemas/StreamMessage").validate(frame)


def test_every_operation_documents_the_error_shape_for_any_status() -> None:
    """Each operation has a `default` response with the Error shape: a status it does not list
    (405 for a wrong method, 500, 413) still has a documented body for generated clients."""
    missing = [
        f"{method.upper()} {path}"
        for path, item in openapi_doc()["paths"].items()
        for method, op in item.items()
        if method in METHODS
        and op["responses"].get("default") != {"$ref": "#/components/responses/Error"}
    ]
    assert missing == []
