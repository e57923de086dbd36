"""Property-based fuzzing of the public API against a real server on loopback (an AppRunner on
a GuardedSite, as the daemon serves it, every answer checked against the OpenAPI document):
whatever a client sends over HTTP, the WebSocket stream or the event stream, the answer is a
documented status in the documented shape, never a 500 or a traceback, the server goes on
serving, what the docs say is counted is counted, and nothing stays open once the client goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import WSMsgType
from api_rig import (
    TOKEN,
    ContractRecorder,
    Rig,
    SigningRig,
    make_config,
    openapi_doc,
    serve_guarded,
    until,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_ws import parse_frames
from stream_wire import SAFETY_S
from structlog.testing import capture_logs
from yarl import URL

from oracled.api.limits import Limits
from oracled.api.stream import MAX_CLIENT_MESSAGE
from oracled.model import market_name
from oracled.publish.hub import DROP_BAD_FRAME

MARKETS = ("BTC/USD", "ETH/USD", "SOL/USD")
#: The error codes a request frame can get (docs/contracts.md, *Stream errors*).
REQUEST_CODES = {"bad_request", "bad_query", "unknown_market", "signing_disabled"}
#: Bodies of the API's own that would betray a crash or leak an object.
LEAKS = ("Traceback (most recent call last)", " object at 0x", 'File "/')

#: Examples hold kilobyte-long names and frames on purpose: hypothesis warns when it prints one.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
PROBES = ("/healthz", "/readyz")
STALL_MS = 5_001  # past the stall limit of the rig's rounds (3 intervals, at least 5 s)
FUZZ = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Api:
    """The served API of a test, its rig and a client session."""

    def __init__(
        self,
        state: str,
        rig: Rig,
        base: str,
        limits: Limits,
        contract: ContractRecorder,
        session: aiohttp.ClientSession,
    ) -> None:
        self.state = state  # "live", "signing", "no_round" (none published yet) or "stalled"
        self.live = state in ("live", "signing")
        self.rig = rig
        self.base = base
        self.limits = limits
        self.contract = contract
        self.session = session

    def __repr__(self) -> str:  # in hypothesis's report of a failing example
        return f"Api({self.state})"

    def round(self) -> None:
        """A round published, the API left in its state (no round: none published)."""
        if self.state != "no_round":
            self.rig.step()
        if self.state == "stalled":
            self.rig.clock.advance(STALL_MS)


@pytest.fixture(params=["live", "signing", "no_round", "stalled"])
async def api(request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    """One served API for all the examples of a test, CORS on for one origin: a round
    published (signed too, by a daemon that signs), none yet, or one the round loop has not
    followed for longer than the limit. Afterwards no connection is left open, no answer broke
    the OpenAPI document and no handler failed."""
    state = str(request.param)
    cfg = make_config(cors_origins=["https://dash.example"])
    rig = SigningRig(cfg) if state == "signing" else Rig(cfg)
    if state != "no_round":
        rig.step()
    if state == "stalled":
        rig.clock.advance(STALL_MS)
    contract = ContractRecorder()
    with capture_logs() as logs:
        async with serve_guarded(rig, contract=contract) as (port, limits):
            # A request the server never answers fails the example, not the whole run.
            timeout = aiohttp.ClientTimeout(total=SAFETY_S)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                yield Api(state, rig, f"http://127.0.0.1:{port}", limits, contract, session)
            await until(lambda: limits.accepted == 0, "every connection closed")
    assert rig.hub.subscribers == 0
    assert not contract.failures, "\n".join(contract.failures)
    failed = [e for e in logs if e["log_level"] in ("error", "critical")]
    assert not failed, failed


# -- what a client can send -------------------------------------------------------------------

_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_ANY_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_SPELLINGS = st.sampled_from(
    ["BTC/USD", "BTC-USD", "btc-usd", " ETH/USD ", "SOL-usd", "DOGE/USD", "BTC", "BTC/USD/X"]
)
_NAMES = st.one_of(_SPELLINGS, _ANY_TEXT, st.just("A" * 300), st.just("B-" + "C" * 25))


def _encoded(text: str) -> str:
    """Every byte but the unreserved ones percent-encoded (a slash too)."""
    return quote(text, safe="")


_SEGMENT = st.one_of(
    _NAMES.map(_encoded),
    st.sampled_from(["prices", "markets", "sources", "stream", "events", "info", "admin"]),
    st.sampled_from(["%2F", "%2f", "%00", "%ff", "..", "%2e%2e", "BTC%2FUSD", "", "%25", "~"]),
)
_PATH = st.one_of(
    st.lists(_SEGMENT, max_size=4).map(lambda parts: "/v1/" + "/".join(parts)),
    st.sampled_from(
        [
            "/v1/prices",
            "/v1/prices/BTC-USD",
            "/v1/markets",
            "/v1/markets/ETH-USD/sources",
            "/v1/info",
            "/v1/stream",
            "/v1/events",
            "/v1/admin/reload",
            "/v1/admin/markets/BTC-USD/pause",
            "/v1/admin/markets/eth-usd/resume",
            "/v1/admin/markets/DOGE-USD/pause",
            "/healthz",
            "/readyz",
            "/openapi.json",
            "/metrics",
            "/",
        ]
    ),
)
_QUERY_KEYS = st.sampled_from(["markets", "signed", "deviation", "heartbeat_ms", "x", ""])
_QUERY_VALUES = st.one_of(
    st.lists(_NAMES, max_size=5).map(",".join),
    st.sampled_from(["true", "false", "0.001", "1", "0", "1e-400", "1e400", "nan", "5000"]),
    _ANY_TEXT,
    st.integers(min_value=0, max_value=300).map(lambda n: "," * n),
)
_QUERY = st.lists(st.tuples(_QUERY_KEYS, _QUERY_VALUES), max_size=4).map(
    lambda pairs: "&".join(f"{_encoded(k)}={_encoded(v)}" for k, v in pairs)
)
_HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            "gzip",
            "gzip;q=0",
            "gzip;q=nan",
            "gzip;q=1e999",
            "*;q=0.5, gzip;q=0",
            "x-gzip, deflate, br",
            '"abc"',
            "*",
            "https://dash.example",
            "null",
            f"Bearer {TOKEN}",
            f"bearer  {TOKEN} ",
        ]
    ),
    st.text(_PRINTABLE, max_size=60),
)
_HEADERS = st.dictionaries(
    st.sampled_from(
        [
            "Accept-Encoding",
            "If-None-Match",
            "If-Modified-Since",
            "Origin",
            "Accept",
            "Range",
            "Access-Control-Request-Method",
            "Authorization",
            "Upgrade",
            "Last-Event-ID",
        ]
    ),
    _HEADER_VALUES,
    max_size=4,
)
_METHODS = st.sampled_from(["GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "FOO"])


_ACTORS = st.one_of(
    # Near the pattern: good characters with something at the end, or too many of them.
    st.builds(
        str.__add__,
        st.text("aZ9_.@:-", min_size=1, max_size=66),
        st.sampled_from(["", "\n", "\r\n", " ", "\t", "\x00"]),
    ),
    st.sampled_from(["alice", "ops@desk", "a" * 64, "a" * 65, "é", "ａ"]),
    _ANY_TEXT,
)
_ACTOR_BODIES = _ACTORS.map(lambda actor: json.dumps({"actor": actor}).encode())
_BODIES = st.one_of(
    _ACTOR_BODIES,
    st.binary(max_size=64),
    st.just(b'{"actor": "alice", "actor": "bob"}'),
    st.just(b'{"actor": ' + b"[" * 3000 + b"}"),
)
#: What an admin answer may name as its actor (the OpenAPI document's pattern, an ECMA-262
#: one: `$` is the end of the text alone).
ACTOR = re.compile(
    openapi_doc()["components"]["schemas"]["ManualRequest"]["properties"]["actor"]["pattern"]
)


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    method = draw(_METHODS)
    path = draw(_PATH)
    query = draw(_QUERY)
    target = path + ("?" + query if query else "")
    body = draw(_BODIES) if method in ("POST", "PUT") else b""
    headers = draw(_HEADERS)
    if path.startswith("/v1/admin/") and draw(st.booleans()):
        headers["Authorization"] = f"Bearer {TOKEN}"  # past the token, to the body
    return method, target, headers, body


def _no_leak(text: str) -> None:
    assert not any(leak in text for leak in LEAKS), text[:500]


async def _probe(api: Api) -> None:
    """The server answers another client normally."""
    async with api.session.get(api.base + "/v1/info") as resp:
        assert resp.status == 200
        assert (await resp.json())["markets"] == len(MARKETS)
    async with api.session.get(api.base + "/v1/prices/BTC-USD") as resp:
        if api.live:
            assert resp.status == 200
            assert (await resp.json())["market"] == "BTC/USD"
        else:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] in ("not_ready", "stalled")


# -- HTTP ------------------------------------------------------------------------------------


@FUZZ
@given(batch=st.lists(_requests(), min_size=1, max_size=6))
async def test_any_http_request_gets_a_documented_answer(
    api: Api, batch: list[tuple[str, str, dict[str, str], bytes]]
) -> None:
    """Any method, path under /v1/ (percent-encoded anything, markets that do not exist or are
    malformed), query (unknown, repeated, huge, unicode) and headers (Accept-Encoding weights,
    If-None-Match, Origin, a preflight) get a status below 500 whose error body is exactly the
    documented `{"error": {"code", "message"}}` (the fixture checks every answer against the
    OpenAPI document), marked no-store, an admin answer with the token names an actor of the
    documented pattern, and the server answers a probe after each batch. The
    one exception, a method the HTTP parser does not know, is its plain-text 400, counted."""
    refused = api.rig.hub.api_closed["bad_request"]
    for method, target, headers, body in batch:
        url = URL(api.base + target, encoded=True)
        async with api.session.request(
            method, url, headers=headers, data=body or None, allow_redirects=False
        ) as resp:
            if resp.content_type == "text/event-stream":  # an event stream never ends
                assert resp.status == 200 and target.startswith("/v1/events"), target
                resp.close()
                continue
            data = await resp.read()
            where = (method, target, headers, resp.status, data[:300])
            # 503 only as documented (the fixture checks the route): no round, or a stale one.
            assert resp.status < 500 or (resp.status == 503 and not api.live), where
            if resp.status == 101:  # an Upgrade header that took: nothing to read here
                continue
            if resp.content_type == "text/plain" and resp.status == 400:
                # The parser's own refusal (an unknown method): documented, and counted.
                assert api.rig.hub.api_closed["bad_request"] == refused + 1, where
                refused += 1
                continue
            assert resp.headers.get("Cache-Control") == "no-store", where
            if resp.status == 200 and "/v1/admin/markets/" in target:
                assert ACTOR.fullmatch(json.loads(data)["actor"]), where
            # /healthz and /readyz say why they fail in their own documented shape.
            if resp.status >= 400 and method != "HEAD" and target.split("?")[0] not in PROBES:
                assert resp.content_type == "application/json", where
                error = json.loads(data)
                assert set(error) == {"error"} and set(error["error"]) == {"code", "message"}
                _no_leak(data.decode())
    await _probe(api)


_AUTHORIZATIONS = st.one_of(
    st.just(f"Bearer {TOKEN}"),
    st.just(f"bearer {TOKEN}  "),
    st.sampled_from(["", "Bearer", "Bearer ", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x"]),
    st.text(_PRINTABLE, max_size=40),
)


_GOOD_MARKETS = st.sampled_from(["BTC-USD", "eth%2Fusd", "SOL-USD"])


@settings(FUZZ, max_examples=100)
@given(
    action=st.sampled_from(["pause", "resume"]),
    market=st.one_of(_GOOD_MARKETS, _GOOD_MARKETS, _GOOD_MARKETS, _NAMES.map(_encoded)),
    authorization=st.one_of(
        st.just(f"Bearer {TOKEN}"), st.just(f"Bearer {TOKEN}"), st.none(), _AUTHORIZATIONS
    ),
    body=st.one_of(_ACTOR_BODIES, _BODIES),
)
async def test_any_admin_request_acts_as_documented_or_is_refused_and_counted(
    api: Api, action: str, market: str, authorization: str | None, body: bytes
) -> None:
    """A pause or resume with any market, `Authorization` and body either acts once, for the
    market it names and an actor of the documented pattern, or applies nothing; one refused
    for its token is a 401 counted under its reason in `oracled_admin_requests_refused_total`
    (the hub's `admin_refused`), and nothing else is counted there."""
    hub, manual = api.rig.hub, list(api.rig.manual)
    refused = sum(hub.admin_refused.values())
    headers = {} if authorization is None else {"Authorization": authorization}
    url = URL(f"{api.base}/v1/admin/markets/{market}/{action}", encoded=True)
    async with api.session.post(url, headers=headers, data=body) as resp:
        data = await resp.read()
    where = (market, authorization, body[:80], resp.status, data[:300])
    answer = json.loads(data)
    if resp.status == 200:
        assert ACTOR.fullmatch(answer["actor"]), where
        assert api.rig.manual == [*manual, (answer["market"], action == "pause", answer["actor"])]
    else:
        assert api.rig.manual == manual, where
        assert resp.status in (400, 401, 404), where
        _no_leak(data.decode())
    assert sum(hub.admin_refused.values()) == refused + (resp.status == 401), where
    await _probe(api)


@pytest.mark.parametrize("api", ["live"], indirect=True)  # the same in every state
@settings(FUZZ, max_examples=60)
@given(actor=_ACTORS, action=st.sampled_from(["pause", "resume"]))
async def test_an_actor_is_taken_only_as_the_documented_pattern_says(
    api: Api, actor: str, action: str
) -> None:
    """With the token, an actor that fits the OpenAPI document's pattern whole acts under that
    name; any other is a 400 `bad_request` that applies nothing."""
    manual = list(api.rig.manual)
    url = f"{api.base}/v1/admin/markets/SOL-USD/{action}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with api.session.post(url, headers=headers, json={"actor": actor}) as resp:
        answer = await resp.json()
    if ACTOR.fullmatch(actor):
        assert resp.status == 200, (actor, answer)
        assert api.rig.manual == [*manual, ("SOL/USD", action == "pause", actor)]
    else:
        assert (resp.status, answer["error"]["code"]) == (400, "bad_request"), (actor, answer)
        assert api.rig.manual == manual


_RAW_HEADERS = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from([b"Accept", b"X-Any", b"Origin", b"Range"]), st.binary(max_size=30)
        ),
        st.sampled_from(
            [
                (b"Bad Name", b"x"),
                (b"X\x00", b"y"),
                (b"", b"empty name"),
                (b"X-Long", b"a" * 9_000),
                (b"Content-Length", b"x"),
                (b"Transfer-Encoding", b"gzip"),
                (b"Connection", b"keep-alive, Upgrade"),
            ]
        ),
    ),
    max_size=4,
)


@st.composite
def _raw_requests(draw: st.DrawFn) -> bytes:
    """A request as bytes on the wire: any method token, target (raw bytes too), version and
    header lines, always ended by an empty line and with nothing announced after it."""
    method = draw(st.sampled_from([b"GET", b"HEAD", b"OPTIONS", b"FOO", b"G\x00T", b"get", b""]))
    target = draw(
        st.one_of(_PATH.map(str.encode), st.binary(max_size=30).map(lambda b: b"/v1/" + b))
    )
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"HTTP/1.1 x", b""]))
    lines = [method + b" " + target + b" " + version, b"Host: t"]
    lines += [name + b": " + value for name, value in draw(_RAW_HEADERS)]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _send_raw(port: int, data: bytes) -> bytes:
    """`data` on a new connection; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(SAFETY_S):
            return await reader.read()
    finally:
        writer.close()


@pytest.mark.parametrize("api", ["live"], indirect=True)  # the same in every state
@settings(FUZZ, max_examples=150)
@given(request=_raw_requests())
async def test_any_request_line_and_headers_are_answered_and_each_refusal_counted(
    api: Api, request: bytes
) -> None:
    """Any request line and header lines, valid or not: either the parser's documented
    plain-text `HTTP/1.0 400`, counted once in `oracled_api_connections_closed_total` as
    `bad_request` or `request_too_long`, or an answer of the API's own (counted nowhere),
    whose errors are the JSON error shape; the connection is closed after it either way."""
    closed = api.rig.hub.api_closed
    before = sum(closed.values())
    answer = await _send_raw(int(URL(api.base).port or 0), request)
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n")[0]
    assert status.startswith(b"HTTP/1."), (request[:200], answer[:300])
    refused = status == b"HTTP/1.0 400 Bad Request" and b"text/plain" in head
    assert sum(closed.values()) == before + refused, (request[:200], answer[:300])
    if not refused:
        code = int(status.split()[1])
        assert code < 500, (request[:200], answer[:300])
        if code >= 400 and body and not request.startswith(b"HEAD"):
            error = json.loads(body)
            assert set(error) == {"error"} and set(error["error"]) == {"code", "message"}
            _no_leak(body.decode())
    await _probe(api)


# -- WebSocket -------------------------------------------------------------------------------

_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    _ANY_TEXT,
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)
_OPS = st.one_of(st.sampled_from(["subscribe", "unsubscribe", "Subscribe", "", "dance"]), _JSON)
_MARKET_LISTS = st.one_of(
    st.lists(_NAMES, max_size=6),
    st.lists(st.sampled_from(MARKETS), max_size=4),
    st.just([f"A{i}/USD" for i in range(300)]),
    _JSON,
)


@st.composite
def _request_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A request as a client might get it wrong: keys missing, types swapped, unknown keys."""
    request: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        request["op"] = draw(_OPS)
    if draw(st.booleans()):
        request["markets"] = draw(_MARKET_LISTS)
    for key, values in (
        ("signed", st.one_of(st.booleans(), _JSON)),
        ("deviation", st.one_of(st.floats(0, 1), _JSON)),
        ("heartbeat_ms", st.one_of(st.integers(0, 10**9), _JSON)),
        ("batch", st.one_of(st.booleans(), _JSON)),
    ):
        if not draw(st.integers(0, 4)):
            request[key] = draw(values)
    if not draw(st.integers(0, 9)):
        request[draw(_ANY_TEXT)] = draw(_JSON)
    return request


def _nested(depth: int) -> str:
    return '{"op": "subscribe", "markets": ' + "[" * depth + "]" * depth + "}"


_TEXT_FRAMES = st.one_of(
    _request_objects().map(json.dumps),
    _JSON.map(json.dumps),
    _ANY_TEXT,
    st.integers(1, 5_000).map(_nested),
    st.integers(1, 5_000).map(lambda depth: "[" * depth),
    st.just('{"op": "subscribe", "op": "unsubscribe"}'),
    st.just('{"op": "subscribe", "markets": ["BTC/USD"], "markets": ["ETH/USD"]}'),
    st.just('{"op": "subscribe"} {"op": "unsubscribe"}'),
    st.just('{"op": "subscribe", "markets": null}'),
)
#: ("text", frame) or ("binary", bytes): each is answered with exactly one ack or error frame.
_FRAMES = st.one_of(
    _TEXT_FRAMES.map(lambda text: ("text", text)),
    st.binary(max_size=32).map(lambda data: ("binary", data)),
)


class Model:
    """What the connection's market set should be after each request the server accepts
    (docs/contracts.md, *Stream*); None: every market."""

    def __init__(self) -> None:
        self.markets: frozenset[str] | None = frozenset()

    def apply(self, request: Any) -> list[str]:
        named = None
        if request.get("markets"):
            named = frozenset(n for n in map(market_name, request["markets"]) if n is not None)
        current = frozenset(MARKETS) if self.markets is None else self.markets
        if request["op"] == "subscribe":
            self.markets = None if named is None or self.markets is None else current | named
        else:
            self.markets = frozenset() if named is None else current - named
        listed = frozenset(MARKETS) if self.markets is None else self.markets
        return [m for m in MARKETS if m in listed]


async def _answer(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next frame that answers a request (reports of snapshots and rounds skipped)."""
    while True:
        async with asyncio.timeout(SAFETY_S):
            msg = await ws.receive()
        assert msg.type is WSMsgType.TEXT, (msg, ws.close_code)
        _no_leak(msg.data)
        frame: dict[str, Any] = json.loads(msg.data)
        if frame["type"] in ("report", "reports", "signed"):
            continue
        if frame["type"] == "error" and frame["code"] == "stalled":  # answers no request
            assert set(frame) == {"type", "code", "message"}, frame
            continue
        return frame


def _check_answer(api: Api, model: Model, kind: str, text: str | bytes, frame: Any) -> None:
    api.contract.validator("/components/schemas/StreamMessage").validate(frame)
    if frame["type"] == "error":
        assert set(frame) == {"type", "code", "message"}, (text, frame)
        assert frame["code"] in REQUEST_CODES, (text, frame)
        return
    assert kind == "text" and isinstance(text, str)
    request = json.loads(text)  # the server took it: so must the model
    expected = model.apply(request)
    assert frame["type"] == f"{request['op']}d", (text, frame)
    assert frame["markets"] == expected, (text, frame)


@FUZZ
@given(frames=st.lists(_FRAMES, min_size=1, max_size=8), rounds=st.booleans())
async def test_any_stream_frame_gets_one_documented_answer(
    api: Api, frames: list[tuple[str, str | bytes]], rounds: bool
) -> None:
    """Any text or binary frame under the size limit (random JSON, types swapped, unknown ops
    and keys, duplicate keys, deep nesting, text that is not JSON) is answered by exactly one
    frame in the documented shape: an ack naming the whole set a model of the subscription
    expects, or an error frame of a request code that changes nothing; the connection stays
    open, a round on the way changes none of it, and its subscription goes once it closes."""
    model = Model()
    async with api.session.ws_connect(api.base + "/v1/stream") as ws:
        for kind, data in frames:
            if kind == "text":
                assert isinstance(data, str)
                await ws.send_str(data)
            else:
                assert isinstance(data, bytes)
                await ws.send_bytes(data)
            _check_answer(api, model, kind, data, await _answer(ws))
            if rounds:
                api.round()
    await until(lambda: api.rig.hub.subscribers == 0, "the subscription gone")
    await _probe(api)


@pytest.mark.parametrize("api", ["live"], indirect=True)  # the same in every state
@FUZZ
@given(
    requests=st.lists(
        st.fixed_dictionaries(
            {
                "op": st.sampled_from(["subscribe", "unsubscribe"]),
                "markets": st.lists(st.sampled_from(MARKETS), max_size=3),
            },
            optional={"batch": st.booleans()},
        ),
        min_size=20,
        max_size=150,
    )
)
async def test_a_flood_of_subscribe_and_unsubscribe_is_answered_in_order(
    api: Api, requests: list[dict[str, Any]]
) -> None:
    """Requests sent all at once, without waiting for their answers, are answered one ack each,
    in order, each naming the set the model expects; nothing is dropped and no subscription
    is left behind."""
    model = Model()
    async with api.session.ws_connect(api.base + "/v1/stream") as ws:
        for request in requests:
            await ws.send_str(json.dumps(request))
        for request in requests:
            frame = await _answer(ws)
            assert frame["type"] == f"{request['op']}d", (request, frame)
            assert frame["markets"] == model.apply(request), (request, frame)
    await until(lambda: api.rig.hub.subscribers == 0, "the subscriptions gone")
    await _probe(api)


@pytest.mark.parametrize("api", ["live"], indirect=True)  # the same in every state
@FUZZ
@given(
    size=st.integers(MAX_CLIENT_MESSAGE, 4 * MAX_CLIENT_MESSAGE),
    binary=st.booleans(),
    before=st.lists(_TEXT_FRAMES, max_size=2),
)
async def test_a_frame_past_the_limit_closes_with_1009_and_is_counted(
    api: Api, size: int, binary: bool, before: list[str]
) -> None:
    """A frame of 16 KiB or more, after any requests, closes its connection with 1009 and is
    counted once as a `bad_frame` drop; the subscription goes and others are served."""
    dropped = api.rig.hub.dropped_subscribers[DROP_BAD_FRAME]
    async with api.session.ws_connect(api.base + "/v1/stream") as ws:
        for text in before:
            await ws.send_str(text)
            await _answer(ws)
        if binary:
            await ws.send_bytes(b"\x00" * size)
        else:
            await ws.send_str('{"op": "subscribe", "markets": ["' + "A" * size + '"]}')
        while True:
            async with asyncio.timeout(SAFETY_S):
                msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                break
            assert msg.type is WSMsgType.TEXT, msg
            frame = json.loads(msg.data)
            assert frame["type"] in ("report", "reports") or frame["code"] == "stalled", frame
        assert ws.close_code == 1009
    await until(lambda: api.rig.hub.subscribers == 0, "the subscription gone")
    assert api.rig.hub.dropped_subscribers[DROP_BAD_FRAME] == dropped + 1
    await _probe(api)


_MASK = b"\x5a\x0f\xc3\x81"


def _raw_frame(first: int, payload: bytes, masked: bool) -> bytes:
    """One client frame as sent on the wire: `first` is FIN, RSV and opcode, valid or not."""
    n = len(payload)
    length = n if n < 126 else 126 if n < 65536 else 127
    head = bytes([first, (0x80 if masked else 0) | length])
    head += b"" if n < 126 else n.to_bytes(2 if n < 65536 else 8, "big")
    if not masked:
        return head + payload
    return head + _MASK + bytes(b ^ _MASK[i % 4] for i, b in enumerate(payload))


_WIRE_FRAMES = st.builds(
    _raw_frame,
    st.one_of(
        st.sampled_from([0x81, 0x82, 0x88, 0x89, 0x8A, 0x01, 0x00, 0x80]), st.integers(0, 255)
    ),
    st.one_of(
        _TEXT_FRAMES.map(str.encode),
        st.binary(max_size=200),
        st.integers(0, 5_000).map(lambda code: code.to_bytes(2, "big")),  # a close code
    ),
    st.booleans().map(lambda unmasked: not unmasked),
)
#: The codes of a close the server may send: after the client's own, or for a frame refused.
CLOSE_CODES = {1000, 1002, 1007, 1009}


async def _exchange(port: int, data: bytes) -> bytes:
    """Open a stream, send `data` after the handshake, then a close; what the server sent
    until it closed (or reset) the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        key = "b3JhY2xlZC1mdXp6LWtleQ=="
        writer.write(
            b"GET /v1/stream HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        async with asyncio.timeout(SAFETY_S):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 "), head
            with contextlib.suppress(ConnectionError):
                writer.write(data + _raw_frame(0x88, (1000).to_bytes(2, "big"), True))
                await writer.drain()
                while chunk := await reader.read(65536):
                    received += chunk
    finally:
        writer.close()
    return received


@pytest.mark.parametrize("api", ["live"], indirect=True)  # the same in every state
@FUZZ
@given(frames=st.lists(_WIRE_FRAMES, min_size=1, max_size=5))
async def test_any_frame_on_the_wire_is_answered_or_refused_and_counted_once(
    api: Api, frames: list[bytes]
) -> None:
    """Frames as sent on the wire, any first byte (FIN, reserved bits, opcode), masked or not,
    any payload (requests, garbage, close codes), then a close: the server sends only stream
    messages in the documented shape and closes with 1000 or a refusal's code (1002, 1007,
    1009), counts at most one `bad_frame` for the connection, lets its subscription go, and
    serves the next client."""
    hub = api.rig.hub
    dropped = hub.dropped_subscribers[DROP_BAD_FRAME]
    port = int(URL(api.base).port or 0)
    received = await _exchange(port, b"".join(frames))
    validator = api.contract.validator("/components/schemas/StreamMessage")
    for opcode, payload in parse_frames(received):
        if opcode == 0x8:
            assert int.from_bytes(payload[:2], "big") in CLOSE_CODES, payload
        elif opcode == 0x1:
            _no_leak(payload.decode())
            validator.validate(json.loads(payload))
        else:
            assert opcode in (0x9, 0xA), (opcode, payload)  # a ping, or a pong answering one
    await until(lambda: hub.subscribers == 0, "the subscription gone")
    assert hub.dropped_subscribers[DROP_BAD_FRAME] - dropped in (0, 1)
    await _probe(api)


# -- Server-Sent Events ----------------------------------------------------------------------


@settings(FUZZ, max_examples=12)  # each waits up to a second for its stream to see it gone
@given(query=_QUERY, headers=_HEADERS)
async def test_any_event_stream_query_is_a_stream_or_a_documented_error(
    api: Api, query: str, headers: dict[str, str]
) -> None:
    """Any query of `/v1/events` either opens a stream (its comment, then events whose data
    are report frames of the markets the query names) or is a documented 400/404 in the error
    shape; either way the subscription is gone once the client leaves."""
    url = URL(api.base + "/v1/events" + ("?" + query if query else ""), encoded=True)
    headers = {k: v for k, v in headers.items() if k != "Upgrade"}
    async with api.session.get(url, headers=headers) as resp:
        if resp.status == 200:
            assert resp.content_type == "text/event-stream"
            async with asyncio.timeout(SAFETY_S):
                first = await resp.content.readuntil(b"\n\n")
                # Nothing follows before the first round.
                event = b"" if api.state == "no_round" else await resp.content.readuntil(b"\n\n")
            assert first == b": oracled report stream\n\n"
            if event:
                assert event.startswith(b"data: "), event
                frame = json.loads(event[6:])
                if api.state == "stalled":  # in place of the snapshot
                    assert set(frame) == {"type", "code", "message"}, frame
                    assert frame["code"] == "stalled", frame
                else:
                    assert frame["type"] in ("report", "signed"), frame
                    assert frame["data"]["market"] in MARKETS, frame
        else:
            body = await resp.read()
            assert resp.status in (400, 404), (query, resp.status, body)
            error = json.loads(body)["error"]
            assert error["code"] in ("bad_query", "unknown_market", "signing_disabled"), error
            _no_leak(body.decode())
    await until(lambda: api.rig.hub.subscribers == 0, "the subscription gone")
    await _probe(api)
