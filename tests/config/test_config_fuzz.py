"""The config boundary, fuzzed: mutations of the real config files either load or are refused
with a readable `ConfigError`, and a config that loads runs.

The seeds are the valid files beside this one (good/ and warn/) and the shipped
`config/default.toml`. Each example changes a few places of one seed (any key of any table set
to an edited or extreme value or another TOML type, a value replaced or copied from elsewhere in
the file, a key deleted or added, an entry duplicated, a route added, a market's source entry
pointed elsewhere), writes it back as TOML, sometimes damages the bytes, and loads the file as
the daemon does. Two invariants:

- nothing but `ConfigError` escapes `load_config`, and each of its problems is one printable
  line, `<where>: <what>`, in the project's words, not a library's;
- a config that loads passes `check-config --as-daemon`'s reads (keys, lease, pauses file) with
  readable problems at most, and is made into what the daemon builds from it (the core, the
  hub, the metrics, the chain readers and sources) and runs rounds over a few quotes, at a
  start and at a reload onto it from the seed, with no exception and no price outside its
  market's band.

The command line is run once on files the fuzz found faults with (tests/config/bad/).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import math
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracled_cli import run_oracled
from pydantic import BaseModel

from oracled.cli import _start_problems
from oracled.clock import ManualClock
from oracled.config import (
    ApiConfig,
    AuditConfig,
    ChainConfig,
    Config,
    FeedSpec,
    LogConfig,
    MarkConfig,
    MarketConfig,
    MarketSource,
    NatsConfig,
    OracleConfig,
    PushConfig,
    RouteConfig,
    SigningConfig,
    SourceConfig,
    config_warnings,
    load_config,
    parse_config,
)
from oracled.core import Core
from oracled.errors import ConfigError
from oracled.metrics import Metrics, MetricsInputs
from oracled.model import Quote
from oracled.publish.hub import Hub
from oracled.reload import config_changes, running_config, source_pairs
from oracled.sources import build_source
from oracled.sources.evm.runtime import ChainSet
from oracled.sources.stats import SourceStats
from oracled.tape import pricing_digest

HERE = Path(__file__).parent
SEED_FILES = [
    *sorted((HERE / "good").glob("*.toml")),
    *sorted((HERE / "warn").glob("*.toml")),  # valid too, with chains, pools, NATS and more
    HERE.parents[1] / "config" / "default.toml",
]
SEEDS: dict[str, dict[str, Any]] = {p.name: tomllib.loads(p.read_text()) for p in SEED_FILES}
SEED_CONFIGS: dict[str, Config] = {name: parse_config(doc, env={}) for name, doc in SEEDS.items()}
T0 = 1_700_000_000_000

Key = str | int
Where = tuple[Key, ...]

#: Values of every TOML type, and the extremes of each.
_ODD = [
    0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 10**400,
    0.0, -0.0, 1e-320, 1e-12, 0.5, 1.5, 1e12, 1e308, -1e308, math.inf, -math.inf, math.nan,
    True, False,
    "", " ", "x" * 5000, "é", "ＢＴＣ/USD", "\x00", "\x1b[2J", "a\nb", "\t",
    "BTC/USD", "btc/usd", "BTC/BTC", "BTC-USD", "/USD", "BTC//USD", "A" * 21 + "/USD",
    "binance", "ghost", "USDT/USD", "127.0.0.1:80", "127.0.0.1:٨٠", "127.0.0.1:²",
    "[::1]:" + "9" * 5000, "wss://\x00", "ws://host/\u2028", "https://h", ".", "..", "/",
    "dir/", "0x" + "0" * 40, "0x" + "aB" * 20, "0x" + "0" * 64,
    datetime.date(2024, 1, 1), datetime.time(12, 0),
    datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    [], [1], ["a"], [{}], [[[]]], [1, "a"],
    {}, {"x": 1}, {"a": {"b": {"c": {}}}}, {"source": "ghost", "pair": "BTC/USD"},
]  # fmt: skip
ODD_VALUES = st.one_of(
    st.sampled_from(_ODD).map(copy.deepcopy),  # a copy: mutations edit the tables they add
    st.integers(),
    st.floats(),
    st.text(max_size=12),
)
#: Keys an unknown-key mutation adds (a typo, a key of another table, odd characters).
ODD_KEYS = st.sampled_from(
    ["resume_round", "weight", "type", "enabled", "", "é", "a\nb", "\x1b[2J", "x" * 300, "0"]
)


#: The config's tables: a place's path with its ids and indices as "*", and the model it is.
TABLES: dict[Where, type[BaseModel]] = {
    ("oracle",): OracleConfig,
    ("api",): ApiConfig,
    ("log",): LogConfig,
    ("signing",): SigningConfig,
    ("nats",): NatsConfig,
    ("push",): PushConfig,
    ("audit",): AuditConfig,
    ("sources", "*"): SourceConfig,
    ("sources", "*", "feeds", "*"): FeedSpec,
    ("chains", "*"): ChainConfig,
    ("markets", "*"): MarketConfig,
    ("markets", "*", "sources", "*"): MarketSource,
    ("markets", "*", "perp_sources", "*"): MarketSource,
    ("markets", "*", "mark"): MarkConfig,
    ("routes", "*"): RouteConfig,
}
#: Numbers near the ranges the config's keys take.
NEAR_RANGE = st.one_of(
    st.integers(-2, 10),
    st.sampled_from([60, 250, 1_000, 3_600, 10_000, 60_000, 86_400, 604_800, 86_400_000]),
    st.floats(0, 2, allow_nan=False),
    st.floats(1e-13, 1e13, allow_nan=False),
)


#: Characters a value is edited with: digits of other scripts, controls, separators.
_CHARS = ["²", "٨", "\x00", "\n", "\x7f", " ", "é", "/", ":", ".", "0", "\u200b"]
ODD_CHARS = st.sampled_from(_CHARS)


@st.composite
def _edited(draw: st.DrawFn, value: Any) -> Any:
    """`value` changed a little: a character of a string, a number's size or sign or type."""
    if isinstance(value, str) and value:
        i = draw(st.integers(0, len(value) - 1))
        how = draw(st.sampled_from(["char", "insert", "cut", "long", "upper", "lower", "empty"]))
        if how == "char":
            return value[:i] + draw(ODD_CHARS) + value[i + 1 :]
        if how == "insert":
            return value[:i] + draw(ODD_CHARS) + value[i:]
        if how == "cut":
            return value[:i]
        if how == "long":
            return value * (5000 // len(value) + 1)
        return {"upper": value.upper(), "lower": value.lower(), "empty": ""}[how]
    if isinstance(value, bool):
        return draw(st.sampled_from([not value, int(value), str(value).lower()]))
    if isinstance(value, int | float) and abs(value) < 1e300:  # (and not inf or nan)
        near = [value + 1, value - 1, value * 1000, value / 1000, float(value), int(value)]
        extremes = [0, -value, -0.0, math.inf, math.nan, 2**63, 2**64 + int(value), str(value)]
        return draw(st.sampled_from(near + extremes))
    if isinstance(value, list) and value:
        i = draw(st.integers(0, len(value) - 1))
        how = draw(st.sampled_from(["drop", "twice", "edit", "empty"]))
        if how == "drop":
            return value[:i] + value[i + 1 :]
        if how == "twice":
            return [*value, value[i]]
        if how == "edit":
            return [*value[:i], draw(_edited(value[i])), *value[i + 1 :]]
        return []
    return draw(ODD_VALUES)


def _expand(doc: Any, pattern: Where, where: Where = ()) -> Iterator[Where]:
    """The places in `doc` that `pattern` names ("*": every id or index), tables or not."""
    if not pattern:
        yield where
        return
    head, rest = pattern[0], pattern[1:]
    if isinstance(doc, dict):
        keys: list[Key] = list(doc) if head == "*" else [head] if head in doc else []
    elif isinstance(doc, list) and head == "*":
        keys = list(range(len(doc)))
    else:
        keys = []
    for key in keys:
        yield from _expand(doc[key], rest, (*where, key))


def _walk(node: Any, where: Where = ()) -> Iterator[Where]:
    """Every place in a parsed document, parents before children."""
    yield where
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _walk(child, (*where, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _walk(child, (*where, i))


def _at(doc: Any, where: Where) -> Any:
    for key in where:
        doc = doc[key]
    return doc


def _set(doc: Any, where: Where, value: Any) -> None:
    _at(doc, where[:-1])[where[-1]] = value


def _symbols(doc: dict[str, Any]) -> list[str]:
    markets = doc.get("markets")
    if not isinstance(markets, list):
        return ["BTC/USD"]
    found = [m["symbol"] for m in markets if isinstance(m, dict) and "symbol" in m]
    return [s for s in found if isinstance(s, str)] or ["BTC/USD"]


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A seed's document with one to three mutations."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    doc = copy.deepcopy(SEEDS[name])
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        places = [w for w in _walk(doc) if w]
        if not places:  # every key deleted
            break
        where = draw(st.sampled_from(places))
        parent = _at(doc, where[:-1])
        op = draw(
            st.sampled_from(
                ["replace", "copy", "delete", "add_key", "duplicate", "route", "rewire", "key"]
                + ["key"] * 4
            )
        )
        if op == "key":  # any key of any table, set in the seed or not
            pattern = draw(st.sampled_from(sorted(TABLES)))
            model = TABLES[pattern]
            tables = [w for w in _expand(doc, pattern) if isinstance(_at(doc, w), dict)]
            if not tables and len(pattern) == 1:
                doc[pattern[0]] = {}
                tables = [pattern]
            if tables:
                table = draw(st.sampled_from(tables))
                fields = {f.alias or n: f for n, f in model.model_fields.items()}
                key = draw(st.sampled_from(sorted(fields)))
                now = _at(doc, table).get(key, fields[key].get_default(call_default_factory=True))
                _at(doc, table)[key] = draw(st.one_of(_edited(now), NEAR_RANGE, ODD_VALUES))
        elif op == "replace":
            _set(doc, where, draw(st.one_of(_edited(_at(doc, where)), ODD_VALUES)))
        elif op == "copy":  # a value that is valid somewhere else in the file
            _set(doc, where, copy.deepcopy(_at(doc, draw(st.sampled_from(places)))))
        elif op == "delete":
            del parent[where[-1]]
        elif op == "add_key":
            table = parent if isinstance(parent, dict) else doc
            table[draw(ODD_KEYS)] = draw(ODD_VALUES)
        elif op == "duplicate" and isinstance(parent, list):  # a market, source, route twice
            parent.append(copy.deepcopy(parent[where[-1]]))
        elif op == "route":  # a leg between two currencies of the file, through any market
            via = draw(st.sampled_from(_symbols(doc)))
            codes = sorted({c for s in _symbols(doc) for c in s.split("/")} | {"USD", "EUR"})
            route = {
                "from": draw(st.sampled_from(codes)),
                "to": draw(st.sampled_from(codes)),
                "via": via,
            }
            routes = doc.setdefault("routes", [])
            if isinstance(routes, list):
                routes.append(route)
        elif op == "rewire" and isinstance(parent, dict) and "source" in parent:
            ids = sorted(doc["sources"]) if isinstance(doc.get("sources"), dict) else []
            parent["source"] = draw(st.sampled_from([*ids, "ghost"]))
            parent["pair"] = draw(st.sampled_from([*_symbols(doc), "USD/BTC", "ETH/EUR"]))
    return name, doc


def _damaged(text: bytes, draw: st.DrawFn) -> bytes:
    """The file's bytes, sometimes broken: cut short, a line twice, bytes that are no UTF-8."""
    how = draw(st.sampled_from(["none"] * 9 + ["cut", "line twice", "bytes"]))
    if how == "cut":
        return text[: draw(st.integers(0, len(text)))]
    if how == "line twice":
        lines = text.splitlines(keepends=True) or [b""]
        i = draw(st.integers(0, len(lines) - 1))
        return b"".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])
    if how == "bytes":
        at = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from([b"\xff", b"\x00", b"\xc3(", b"\xef\xbb\xbf", b"\r", b"[[["]))
        return text[:at] + junk + text[at:]
    return text


def _readable(problem: str) -> bool:
    """One printable line, `<where>: <what>`, of a length a person reads (a value is quoted
    cut short), in the project's words (pydantic's own start "Input should", Python's int()
    "invalid literal", its digit limit "Exceeds the limit")."""
    where, sep, what = problem.partition(": ")
    leaks = ("Input should", "invalid literal", "Exceeds the limit", "constrained-", "function-")
    return (
        problem.isprintable()
        and len(problem) <= 1000
        and bool(sep and where and what)
        and not any(leak in problem for leak in leaks)
    )


def _band(cfg: Config, symbol: str) -> tuple[float, float]:
    market = cfg.market(symbol)
    assert market is not None
    low = max(market.min_price or cfg.oracle.min_price, cfg.oracle.min_price)
    high = min(market.max_price or cfg.oracle.max_price, cfg.oracle.max_price)
    return low, high


def _quotes(cfg: Config, now: int) -> list[Quote]:
    """One quote per market slot, at a price inside the market's band (its reciprocal for an
    inverted pair), and two that no market takes."""
    out = []
    for market in cfg.markets:
        low, high = _band(cfg, market.symbol)
        price = math.sqrt(low) * math.sqrt(high)
        base = market.symbol.split("/")[0]
        for ms in (*market.sources, *market.perp_sources):
            value = price if ms.pair.startswith(f"{base}/") else 1.0 / price
            out.append(Quote(ms.source, ms.pair, now, price=value, kind=ms.kind))
    return [*out, Quote("ghost", "BTC/USD", now, price=1.0), Quote("x", "A/B", now, price=0.0)]


def _rounds(cfg: Config, core: Core, hub: Hub, first: int, count: int) -> None:
    """`count` rounds over fresh quotes, each published to the hub and encoded; no price goes
    out beyond its market's band."""
    for k in range(count):
        now = first + k * cfg.oracle.round_interval_ms
        for quote in _quotes(cfg, now - 1):
            core.ingest(quote)
        result = core.run_round(now)
        hub.publish(result)
        for market in core.markets:
            report = json.loads(hub.encoded(market))
            if report["price"] is not None:
                low, high = _band(cfg, market)
                assert low <= float(report["price"]) <= high * (1 + 1e-9), report


def _runs(seed: str, cfg: Config, cwd: Path) -> None:
    """What the daemon makes of a config that loads, at start and at a reload onto it."""
    config_warnings(cfg)  # check-config prints them, `run` logs them
    with contextlib.chdir(cwd):  # relative key, lease and pauses files: in the example's own
        unreadable = [p for p in _start_problems(cfg) if not _readable(p)]  # --as-daemon's
    assert not unreadable, unreadable
    pricing_digest(cfg)  # `record` stamps its tape with it
    core, hub = Core(cfg), Hub(cfg.api.stream_queue)
    metrics = Metrics(
        MetricsInputs(
            core=core,
            latest=lambda: hub.latest_result,
            source_stats={sid: SourceStats(source=sid) for sid in cfg.sources},
            now_ms=lambda: T0,
            stream_subscribers=lambda: 0,
            stream_dropped=dict,
        )
    )
    _rounds(cfg, core, hub, T0, 3)
    metrics.render()
    asyncio.run(_build_sources(cfg))
    # A reload from the seed onto `cfg`, as Service.reload applies it.
    running = SEED_CONFIGS[seed]
    core, hub = Core(running), Hub(running.api.stream_queue)
    _rounds(running, core, hub, T0, 1)
    config_changes(running, cfg)
    new = running_config(running, cfg)
    core.reconfigure(new)
    _rounds(new, core, hub, T0 + 60_000, 2)


async def _build_sources(cfg: Config) -> None:
    """The chain readers and every enabled source a market uses, built as the service builds
    them at start (none is run, so nothing is dialled)."""
    clock = ManualClock(T0)
    async with aiohttp.ClientSession() as session:
        chains = ChainSet(cfg, session, clock)
        for sid, src in cfg.sources.items():
            pairs = source_pairs(cfg, sid)
            if src.enabled and pairs and chains.usable(src):
                stats = SourceStats(source=sid)
                chains.attach(build_source(sid, src, pairs, _drop, clock, session, stats))


def _drop(quote: Quote) -> None:
    """Where the built sources would emit: they are never run."""


def _refused_readably(path: Path) -> Config | None:
    """The config at `path`, or None when it is refused with one readable line per problem."""
    try:
        return load_config(path, env={})
    except ConfigError as exc:
        assert exc.problems
        unreadable = [p[:300] for p in exc.problems if not _readable(p)]
        assert not unreadable, unreadable
        return None


@settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_a_mutated_config_runs_or_is_refused_in_readable_lines(
    data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Whatever a mutated file holds, load_config returns a config or raises ConfigError (no
    other exception), each problem one printable line naming where; a config it returns
    builds and runs (core, hub, metrics, sources, a reload onto it) with no exception and no
    price outside its band."""
    seed, doc = data.draw(_mutated())
    path = tmp_path_factory.mktemp("fuzz") / "oracled.toml"
    path.write_bytes(_damaged(tomli_w.dumps(doc).encode(), data.draw))
    cfg = _refused_readably(path)
    if cfg is not None:
        _runs(seed, cfg, path.parent)


@settings(max_examples=100, derandomize=True, deadline=None, database=None)
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_bytes_that_are_no_config_are_refused_in_readable_lines(
    raw: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Bytes that are not UTF-8, not TOML or no config at all are refused as ConfigError."""
    path = tmp_path_factory.mktemp("bytes") / "oracled.toml"
    path.write_bytes(raw)
    assert _refused_readably(path) is None


def test_the_command_line_refuses_what_the_fuzz_found_in_one_line_per_problem() -> None:
    """check-config and run exit 2 on files the fuzz found faults with, printing a header and
    one printable line per problem (load_config's), and no traceback."""
    for argv, name, head in (
        (["check-config"], "key_with_control_characters", "{path}: {n} problem(s)"),
        (["run", "--config"], "listen_port_of_other_digits", "oracled: refusing to start: {n}"),
    ):
        path = HERE / "bad" / f"{name}.toml"
        with pytest.raises(ConfigError) as caught:
            load_config(path, env={})
        lines = [f"  {problem}" for problem in caught.value.problems]
        proc = run_oracled([*argv, str(path)])
        assert proc.returncode == 2, proc.stderr
        first, *rest = proc.stderr.splitlines()
        assert first.startswith(head.format(path=path, n=len(lines))), first
        assert rest == lines
        assert all(line.isprintable() for line in rest)
