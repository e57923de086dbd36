"""Test parts for the API: a real Core fed with real quotes, a real Hub, the contract recorder.

Every HTTP response a test receives is checked against the OpenAPI document (see
`ContractRecorder`): an undocumented key, status or shape fails the test that produced it.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator, ValidationError  # type: ignore[import-untyped]
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from oracled.api import LIMITS, ApiContext, build_app
from oracled.api.limits import GuardedSite, Limits
from oracled.clock import ManualClock
from oracled.config import Config, parse_config
from oracled.core import Core, RoundResult
from oracled.errors import OracledError
from oracled.model import Quote
from oracled.publish import Hub, Subscription
from oracled.publish.signer import RoundSigner, SigningKey
from oracled.reload import config_changes, running_config
from oracled.sources.stats import ConnState, SourceStats

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
#: A raw connection to the API, for what a client library would not send.
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]

T0 = 1_700_000_000_000
TOKEN = "test-admin-token-0123456789"
INTERVAL = 250

CONFIG: dict[str, Any] = {
    "oracle": {"round_interval_ms": INTERVAL, "resume_rounds": 1},
    "api": {
        "ready_fraction": 0.5,
        "stream_queue": 4,
        # The names the tests' raw requests send in Host (the Host check: tests/api/test_hosts.py).
        "allowed_hosts": ["t", "x", "o", "oracled", "example.com"],
    },
    "sources": {name: {"type": "binance"} for name in ("alpha", "beta", "gamma")},
    "markets": [
        {
            "symbol": "BTC/USD",
            "min_sources": 2,
            "max_age_ms": 1_000,
            "sources": [
                {"source": "alpha", "pair": "BTC/USD"},
                {"source": "beta", "pair": "BTC/USD"},
                {"source": "gamma", "pair": "BTC/USD", "weight": 2.0},
            ],
        },
        {
            "symbol": "ETH/USD",
            "min_sources": 2,
            "max_age_ms": 1_000,
            "sources": [
                {"source": "alpha", "pair": "ETH/USD"},
                {"source": "beta", "pair": "ETH/USD"},
            ],
        },
        {
            "symbol": "SOL/USD",
            "min_sources": 1,
            "price_exponent": -3,
            "max_age_ms": 1_000,
            "sources": [{"source": "alpha", "pair": "SOL/USD"}],
        },
    ],
}
PRICES = {"BTC/USD": 64_000.0, "ETH/USD": 3_100.0, "SOL/USD": 150.0}


class DaemonServer(TestServer):
    """A loopback test server that serves as the daemon does (aiohttp's AppRunner default): a
    lost connection does not cancel its handler, whose pending write raises instead. aiohttp's
    test server cancels handlers, which hid handler error paths the daemon takes (an SSE write
    to a reset client gave the daemon a traceback and a 500 while every test passed)."""

    async def start_server(self, **kwargs: Any) -> None:
        await super().start_server(**kwargs)
        assert self.runner is not None and self.runner.server is not None
        self.runner.server.handler_cancellation = False


def make_config(token: str | None = TOKEN, **api: Any) -> Config:
    data = copy.deepcopy(CONFIG)
    data["api"].update(api)
    return parse_config(data, env={"ORACLED_ADMIN_TOKEN": token} if token else {})


class Rig:
    """The daemon's parts, wired by hand: the test moves the clock and runs the rounds."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.core = Core(cfg)
        self.hub = Hub(cfg.api.stream_queue)
        self.clock = ManualClock(T0)
        self.stats = {
            "alpha": SourceStats("alpha", state=ConnState.STREAMING, last_quote_ms=T0),
            "beta": SourceStats("beta", state=ConnState.POLLING, reconnects=2),
        }  # gamma has no stats yet: the API must cope
        self.manual: list[tuple[str, bool, str]] = []
        self.save_error: str | None = None  # why the pauses file "could not be written"
        self.next_config: Config | OracledError | None = None  # what a reload reads (or raises)
        self.metric_threads: list[int] = []
        self.app: web.Application | None = None  # the application `serve_guarded` serves
        self.round_at: float | None = None  # as the round loop stamps it: the last publish
        # The rounds' key of a rig that signs them (set by the signing rigs): the stall watch
        # signs its notice to the signed subscribers with it, as the daemon's does.
        self.signer: RoundSigner | None = None
        self.registry = CollectorRegistry()
        self.renders = PromCounter(
            "test_renders", "Times the metrics were rendered", registry=self.registry
        )

    def quote(self, source: str, pair: str, price: float, age_ms: int = 0) -> None:
        now = self.clock.now_ms()
        spread = price * 1e-5
        quote = Quote(
            source, pair, now, bid=price - spread, ask=price + spread, venue_ts=now - age_ms
        )
        assert self.core.ingest(quote) is None

    def step(self, markets: dict[str, float] | None = None) -> RoundResult:
        """Advance one interval, quote every source of `markets` (default all), run and publish."""
        self.clock.advance(INTERVAL)
        for market in self.core.config.markets:  # the config in force (a reload replaces it)
            price = (PRICES if markets is None else markets).get(market.symbol)
            if price is None:
                continue
            for k, ms in enumerate(market.sources):
                self.quote(ms.source, ms.pair, price * (1 + 1e-5 * k))
        result = self.core.run_round(self.clock.now_ms())
        self.hub.publish(result)
        self.round_at = self.clock.monotonic()
        return result

    def on_manual(self, market: str, paused: bool, actor: str) -> Future[str | None]:
        """Apply it; the pauses file's save is done at once, failed with `save_error` if set."""
        self.manual.append((market, paused, actor))
        self.core.set_manual(market, paused)
        saved: Future[str | None] = Future()
        saved.set_result(self.save_error)
        return saved

    async def on_reload(self, actor: str) -> dict[str, object]:
        """A reload as the runtime does it, reading `next_config` instead of a file."""
        new = self.next_config
        if isinstance(new, OracledError):
            raise new
        assert new is not None
        changes = config_changes(self.core.config, new)
        self.core.reconfigure(running_config(self.core.config, new))
        return changes.as_dict()

    def render_metrics(self) -> tuple[bytes, str]:
        self.metric_threads.append(threading.get_ident())
        self.renders.inc()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def context(self) -> ApiContext:
        return ApiContext(
            hub=self.hub,
            core=self.core,
            config=self.cfg,
            source_stats=self.stats,
            clock=self.clock,
            render_metrics=self.render_metrics,
            on_manual=self.on_manual,
            version="9.9.9-test",
            on_reload=self.on_reload if self.next_config is not None else None,
            round_at=lambda: self.round_at,
            signer=self.signer,
        )


class SigningRig(Rig):
    """The rig with a signing daemon's hub: each round is signed right after it is published."""

    KEY = SigningKey.from_hex("0x" + "44" * 32)

    def __init__(self, cfg: Config | None = None) -> None:
        super().__init__(make_config() if cfg is None else cfg)
        self.signer = RoundSigner(self.KEY, "test")
        self.hub.signer = self.KEY.address

    def step(self, markets: dict[str, float] | None = None) -> RoundResult:
        result = super().step(markets)
        self.hub.publish_signed(self.signer.sign(result))
        return result


def reloaded(change: Callable[[dict[str, Any]], None]) -> Rig:
    """The usual rig, whose next reload reads a copy of the test config changed by `change`."""
    rig = Rig(make_config())
    data = copy.deepcopy(CONFIG)
    change(data)
    rig.next_config = parse_config(data, env={"ORACLED_ADMIN_TOKEN": TOKEN})
    return rig


def rig_whose_reload_removes_sol() -> Rig:
    """The usual rig, whose next reload reads the same config without SOL/USD."""

    def remove_sol(data: dict[str, Any]) -> None:
        data["markets"] = [m for m in data["markets"] if m["symbol"] != "SOL/USD"]

    return reloaded(remove_sol)


def frames(sub: Subscription) -> list[bytes]:
    """Every frame waiting in a subscription's queue, taken without waiting."""
    out = []
    while (frame := sub.get_nowait()) is not None:
        out.append(frame)
    return out


def openapi_doc() -> dict[str, Any]:
    data = resources.files("oracled.api").joinpath("openapi.json").read_text()
    return dict(json.loads(data))


def _closed(schema: Any) -> Any:
    """A copy where every object schema with properties forbids other keys (strict, for tests)."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if "properties" in out and out.get("type") == "object":
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@dataclass
class ContractRecorder:
    """Records every response of the app and checks it against the OpenAPI document."""

    doc: dict[str, Any] = field(default_factory=openapi_doc)
    seen: set[tuple[str, str, int]] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        strict = _closed(self.doc)
        resource = Resource.from_contents(strict, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource("urn:oracled:openapi", resource)

    def validator(self, pointer: str) -> Draft202012Validator:
        return Draft202012Validator(
            {"$ref": f"urn:oracled:openapi#{pointer}"}, registry=self._registry
        )

    def check(
        self, template: str | None, method: str, status: int, ctype: str, body: bytes
    ) -> None:
        if template is None and method == "OPTIONS" and status == 204:
            # A CORS preflight (api.cors_origins; the document's description says so): no
            # route of its own, and no body.
            assert body == b"", body
            return
        if template is None:  # no route matched: the generic error shape
            assert status in (404, 405), status
            self.validator("/components/schemas/Error").validate(json.loads(body))
            return
        if method == "HEAD":  # answered by the GET handler; its body is checked, not sent
            method = "GET"
        op = self.doc["paths"][template][method.lower()]
        documented = op["responses"].get(str(status))
        assert documented is not None, f"{method} {template} answered undocumented {status}"
        self.seen.add((template, method.lower(), status))
        if "content" not in documented:
            return
        (media,) = documented["content"]
        assert ctype.split(";")[0] == media, (template, ctype, media)
        if media != "application/json":
            return
        escaped = template.replace("~", "~0").replace("/", "~1")
        pointer = (
            f"/paths/{escaped}/{method.lower()}/responses/{status}/content/application~1json/schema"
        )
        self.validator(pointer).validate(json.loads(body))

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        if isinstance(response, web.Response):
            resource = request.match_info.route.resource
            template = None if resource is None else resource.canonical
            body = response.body
            try:
                assert isinstance(body, bytes)
                if response.headers.get("Content-Encoding") == "gzip":  # checked as sent
                    body = gzip.decompress(body)
                self.check(template, request.method, response.status, response.content_type, body)
            except (AssertionError, ValidationError) as exc:
                self.failures.append(f"{request.method} {request.path_qs}: {exc}")
        elif response.status == 200:  # a finished stream (SSE): its status and media type count
            resource = request.match_info.route.resource
            template = None if resource is None else resource.canonical
            try:
                assert template is not None
                self.check(template, request.method, 200, response.content_type, b"")
            except AssertionError as exc:
                self.failures.append(f"{request.method} {request.path_qs}: {exc}")
        return response


PROM_TEXT = "text/plain; version=0.0.4; charset=utf-8"  # a held render's content type


class HeldMetricsRig(Rig):
    """A rig whose `/metrics` render waits for the test's word (`release`; set at once unless
    `hold`), counting the renders started and the threads they ran on; `body(n)` is the n-th
    render's text."""

    def __init__(self, body: Callable[[int], bytes], hold: bool = True) -> None:
        super().__init__(make_config())
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.calls = 0
        self._body = body
        self._lock = threading.Lock()  # renders that wrongly overlap must still count right

    def render_metrics(self) -> tuple[bytes, str]:
        self.metric_threads.append(threading.get_ident())
        with self._lock:
            self.calls += 1
            calls = self.calls
        self.release.wait(10.0)
        return self._body(calls), PROM_TEXT


def count_arrivals(app: web.Application, path: str, count: int) -> asyncio.Event:
    """An event set once `count` requests for `path` have reached the handlers (a middleware
    appended last, so innermost: the handler runs right after the count)."""
    arrived = 0
    all_in = asyncio.Event()

    @web.middleware
    async def counting(request: web.Request, handler: Any) -> web.StreamResponse:
        nonlocal arrived
        arrived += request.path == path
        if arrived == count:
            all_in.set()
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(counting)
    return all_in


@asynccontextmanager
async def serve_guarded(
    rig: Rig,
    keepalive_timeout: float = 75.0,
    contract: ContractRecorder | None = None,
    **deadlines: float,
) -> AsyncIterator[tuple[int, Limits]]:
    """The API as the daemon serves it: an AppRunner on a GuardedSite on loopback; `deadlines`
    go to `build_app` (`first_request_timeout`, `request_timeout`); with `contract`, every
    answer is checked against the OpenAPI document."""
    app = rig.app = build_app(rig.context(), **deadlines)
    if contract is not None:
        app.middlewares.insert(0, contract.middleware)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, keepalive_timeout=keepalive_timeout
    )
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site.port, app[LIMITS]
    finally:
        await runner.cleanup()


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll `check` for up to 5 s; fail naming `what` if it never holds."""
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never happened: {what}")


async def raw_get(conn: Conn, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET on a raw connection (the connection limits count connections, which a client
    session would pool): the status, the headers (names in lower case) and the body."""
    reader, writer = conn
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), headers, body
