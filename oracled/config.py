"""The one place where TOML and the environment are read.

`load_config` parses a TOML file into frozen pydantic models and checks the whole thing at once:
first the shape of every table (types, ranges), then the relations between them (sources that
exist, conversion routes that resolve, no cycles). Every problem is reported with its key path,
e.g. ``markets[3].sources[1].weight: must be > 0``, and raised together as one `ConfigError`.

Secrets (the admin token) are named by environment variable in the file and read from the
environment here; they are held as `SecretStr` so that they never reach a log line.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from oracled.errors import ConfigError

__all__ = [
    "ApiConfig",
    "Config",
    "LogConfig",
    "MarketConfig",
    "MarketSource",
    "OracleConfig",
    "RouteConfig",
    "SourceConfig",
    "load_config",
    "parse_config",
    "parse_listen",
]

# Source type -> "module:Class" of its adapter, imported only when a config uses it.
SOURCE_TYPES: dict[str, str] = {
    "binance": "oracled.sources.binance:BinanceSource",
    "kraken": "oracled.sources.kraken:KrakenSource",
    "bitstamp": "oracled.sources.bitstamp:BitstampSource",
    "okx": "oracled.sources.okx:OkxSource",
    "kucoin": "oracled.sources.kucoin:KucoinSource",
    "coinbase": "oracled.sources.coinbase:CoinbaseSource",
    "gemini": "oracled.sources.gemini:GeminiSource",
    "binance_usdm": "oracled.sources.binance_usdm:BinanceUsdmSource",
    "bybit_linear": "oracled.sources.bybit:BybitLinearSource",
    "bybit_spot": "oracled.sources.bybit:BybitSpotSource",
    "pyth_hermes": "oracled.sources.pyth_hermes:PythHermesSource",
}
MAX_SOURCES_PER_MARKET = 64
_PAIR = r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}$"
_ID = r"^[a-z0-9][a-z0-9_\-]{0,39}$"

Pair = Annotated[str, Field(pattern=_PAIR)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]


def _as_tuple(value: Any) -> Any:
    """TOML arrays arrive as lists; hold them as tuples so a frozen config stays frozen."""
    return tuple(value) if isinstance(value, list) else value


class _Frozen(BaseModel):
    # strict: "yes" is not a boolean and "3" is not a number in a risk config.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class OracleConfig(_Frozen):
    """Round timing and the gates that apply to every market."""

    round_interval_ms: Annotated[int, Field(ge=10, le=60_000)] = 250
    max_clock_skew_ms: Annotated[int, Field(ge=0, le=60_000)] = 2_000
    resume_rounds: Annotated[int, Field(ge=1, le=10_000)] = 3
    jump_confirm_rounds: Annotated[int, Field(ge=1, le=10_000)] = 4
    min_price: PosFloat = 1e-12
    max_price: PosFloat = 1e12


class ApiConfig(_Frozen):
    """The HTTP/WebSocket API and its admin guard."""

    listen: str = "127.0.0.1:8480"
    admin_token_env: str | None = "ORACLED_ADMIN_TOKEN"
    ready_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5
    stream_queue: Annotated[int, Field(ge=1, le=100_000)] = 256

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value


class LogConfig(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class SourceConfig(_Frozen):
    """One feed instance. Several instances may share a type (e.g. two Binance hosts)."""

    type: str
    enabled: bool = True
    ws_url: str | None = None
    rest_url: str | None = None
    instruments: dict[Pair, str] = Field(default_factory=dict)
    liveness_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    rest_poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_connection_age_s: Annotated[float, Field(gt=0)] = 23 * 3600.0

    @field_validator("type")
    @classmethod
    def _check_type(cls, value: str) -> str:
        if value not in SOURCE_TYPES:
            raise ValueError(f"unknown source type {value!r}; known: {', '.join(SOURCE_TYPES)}")
        return value

    @field_validator("ws_url", "rest_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(wss?|https?)://[^\s/]+", value):
            raise ValueError("must be an absolute ws://, wss://, http:// or https:// URL")
        return value


class MarketSource(_Frozen):
    """One source's contribution to a market: which pair it quotes and its weight."""

    source: Annotated[str, Field(pattern=_ID)]
    pair: Pair
    kind: Literal["spot", "perp"] = "spot"
    weight: PosFloat = 1.0


class MarketConfig(_Frozen):
    """A published market and the gates that guard it."""

    symbol: Pair
    price_exponent: Annotated[int, Field(ge=-18, le=0)] = -2
    min_sources: Annotated[int, Field(ge=1, le=64)] = 3
    max_age_ms: Annotated[int, Field(ge=1, le=86_400_000)] = 10_000
    max_deviation: Fraction = 0.01
    circuit_breaker: Fraction = 0.1
    max_confidence_ratio: Fraction | None = None
    min_price: PosFloat | None = None
    max_price: PosFloat | None = None
    sources: tuple[MarketSource, ...]  # 1 to 64 entries, checked with the relations
    #: Perpetual instruments of this market (kind "perp"), collected for the mark price; they
    #: never vote in the index price.
    perp_sources: tuple[MarketSource, ...] = ()

    _sources_tuple = field_validator("sources", mode="before")(_as_tuple)

    @field_validator("perp_sources", mode="before")
    @classmethod
    def _perp_kind(cls, value: Any) -> Any:
        """Entries of perp_sources are perpetuals: their kind defaults to "perp"."""
        if isinstance(value, list | tuple):
            return tuple({"kind": "perp", **v} if isinstance(v, dict) else v for v in value)
        return value

    @property
    def confidence_limit(self) -> float:
        """Relative band width above which the sources are said to disagree."""
        return self.max_confidence_ratio if self.max_confidence_ratio else self.max_deviation


class RouteConfig(_Frozen):
    """Convert prices quoted in `from` into `to` through the live price of market `via`."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)

    from_: Annotated[str, Field(alias="from", pattern=r"^[A-Z0-9]{1,20}$")]
    to: Annotated[str, Field(pattern=r"^[A-Z0-9]{1,20}$")]
    via: Pair


class Config(_Frozen):
    oracle: OracleConfig = Field(default_factory=OracleConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    sources: dict[Annotated[str, Field(pattern=_ID)], SourceConfig] = Field(default_factory=dict)
    markets: tuple[MarketConfig, ...]  # at least one, checked with the relations
    routes: tuple[RouteConfig, ...] = ()
    admin_token: SecretStr | None = None

    _lists_as_tuples = field_validator("markets", "routes", mode="before")(_as_tuple)

    def market(self, symbol: str) -> MarketConfig | None:
        return next((m for m in self.markets if m.symbol == symbol), None)


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6); raise ValueError with a clear message."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8480")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("port must be between 0 and 65535")
    return host.strip("[]"), port


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # the dict key itself failed, not its value
            out += " (key)"
        elif isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _message(error: Mapping[str, Any]) -> str:
    ctx = error.get("ctx") or {}
    kind = error["type"]
    short = {
        "greater_than": "must be > {gt}",
        "greater_than_equal": "must be >= {ge}",
        "less_than": "must be < {lt}",
        "less_than_equal": "must be <= {le}",
        "missing": "is required",
        "extra_forbidden": "is not a known key",
        "string_pattern_mismatch": "has the wrong form (must match {pattern})",
        "literal_error": "must be one of {expected}",
        "finite_number": "must be a finite number",
        "too_short": "must have at least {min_length} item(s)",
        "too_long": "must have at most {max_length} item(s)",
        "int_type": "must be an integer",
        "float_type": "must be a number",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "tuple_type": "must be an array",
        "list_type": "must be an array",
        "dict_type": "must be a table",
        "model_type": "must be a table",
    }.get(kind)
    if short:
        shown = {k: (f"{v:g}" if isinstance(v, float) else v) for k, v in ctx.items()}
        return short.format(**shown)
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _relations(cfg: Config) -> list[str]:
    """Checks that need the whole config: references, routes, cycles, quorum feasibility."""
    problems: list[str] = []
    if not cfg.markets:
        problems.append("markets: must have at least 1 item(s)")
    for i, market in enumerate(cfg.markets):
        if not 1 <= len(market.sources) <= MAX_SOURCES_PER_MARKET:
            problems.append(
                f"markets[{i}].sources: must list 1 to {MAX_SOURCES_PER_MARKET} sources"
            )
    if problems:
        return problems
    symbols = [m.symbol for m in cfg.markets]
    for i, sym in enumerate(symbols):
        if sym in symbols[:i]:
            problems.append(f"markets[{i}].symbol: duplicate market {sym}")
    by_symbol = {m.symbol: m for m in cfg.markets}
    routes: dict[tuple[str, str], RouteConfig] = {}
    for i, route in enumerate(cfg.routes):
        leg = (route.from_, route.to)
        if leg in routes:
            problems.append(f"routes[{i}]: duplicate route {route.from_} -> {route.to}")
        routes[leg] = route
        if route.via not in by_symbol:
            problems.append(f"routes[{i}].via: market {route.via} is not configured")
        elif route.via not in (f"{route.from_}/{route.to}", f"{route.to}/{route.from_}"):
            problems.append(
                f"routes[{i}].via: market {route.via} does not convert {route.from_} to {route.to}"
            )

    depends: dict[str, set[str]] = {m.symbol: set() for m in cfg.markets}
    for i, market in enumerate(cfg.markets):
        base, quote = market.symbol.split("/")
        seen: dict[tuple[str, str], int] = {}
        for j, ms in enumerate(market.sources):
            where = f"markets[{i}].sources[{j}]"
            if ms.source not in cfg.sources:
                problems.append(f"{where}.source: source {ms.source!r} is not configured")
            key = (ms.source, ms.kind)
            if key in seen:  # independence: one venue gets one vote per market
                problems.append(
                    f"{where}.source: {ms.source} ({ms.kind}) is already listed as "
                    f"sources[{seen[key]}] of this market; a venue gets one vote"
                )
            seen.setdefault(key, j)
            p_base, p_quote = ms.pair.split("/")
            if (p_base, p_quote) in ((base, quote), (quote, base)):
                continue
            if p_base != base:
                problems.append(f"{where}.pair: {ms.pair} cannot price {market.symbol}")
                continue
            found = routes.get((p_quote, quote))
            if found is None:
                problems.append(
                    f"{where}.pair: no route converts {p_quote} to {quote} (add a [[routes]] entry)"
                )
            elif found.via == market.symbol:
                problems.append(
                    f"{where}.pair: route via {found.via} would price a market by itself"
                )
            else:
                depends[market.symbol].add(found.via)
        for j, ps in enumerate(market.perp_sources):
            where = f"markets[{i}].perp_sources[{j}]"
            if ps.source not in cfg.sources:
                problems.append(f"{where}.source: source {ps.source!r} is not configured")
            if ps.kind != "perp":
                problems.append(f"{where}.kind: must be perp")
            if ps.pair.split("/")[0] != base:
                problems.append(f"{where}.pair: {ps.pair} is not a {base} contract")
        if market.min_sources > len(market.sources):
            problems.append(
                f"markets[{i}].min_sources: {market.min_sources} exceeds the "
                f"{len(market.sources)} source(s) listed"
            )
        if market.min_price and market.max_price and market.min_price >= market.max_price:
            problems.append(f"markets[{i}].min_price: must be below max_price")
    used_pairs = {(ms.source, ms.pair) for m in cfg.markets for ms in m.sources}
    problems.extend(
        f"sources.{sid}.instruments.{pair}: no market uses this pair"
        for sid, src in cfg.sources.items()
        for pair in src.instruments
        if (sid, pair) not in used_pairs
    )
    problems.extend(_cycles(depends, symbols))
    if cfg.oracle.min_price >= cfg.oracle.max_price:
        problems.append("oracle.min_price: must be below oracle.max_price")
    return problems


def _cycles(depends: dict[str, set[str]], order: list[str]) -> list[str]:
    problems: list[str] = []
    state: dict[str, int] = {}

    def visit(sym: str, trail: list[str]) -> None:
        if state.get(sym) == 2:
            return
        if state.get(sym) == 1:
            cycle = [*trail[trail.index(sym) :], sym]
            problems.append(f"routes: conversion cycle {' -> '.join(cycle)}")
            return
        state[sym] = 1
        for dep in sorted(depends.get(sym, ())):
            visit(dep, [*trail, sym])
        state[sym] = 2

    for sym in order:
        visit(sym, [])
    return problems


def parse_config(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    try:
        cfg = Config.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError([f"{_path(e['loc'])}: {_message(e)}" for e in exc.errors()]) from None
    problems = _relations(cfg)
    if problems:
        raise ConfigError(problems)
    token_env = cfg.api.admin_token_env
    token = env.get(token_env) if token_env else None
    if token is not None and len(token) < 16:
        raise ConfigError([f"api.admin_token_env: ${token_env} must hold at least 16 characters"])
    return cfg.model_copy(update={"admin_token": SecretStr(token) if token else None})


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
    if "admin_token" in data:
        raise ConfigError(["admin_token: put the token in the environment, not the file"])
    return parse_config(data, env)
