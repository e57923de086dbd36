"""What a config reload changes, and what it cannot change without a restart.

Pure: compares two validated configs. The runtime applies the result (core.reconfigure for
markets and thresholds, restarting exactly the sources whose settings or pairs changed) and
logs it; `POST /v1/admin/reload` returns it. `settings_changed` names every changed setting the
reload applies, so that a new threshold (`oracle.resume_rounds`, `api.cors_origins`) is not
answered with "nothing changed".

Some settings are read once at start-up (the round loop's interval, the listening socket, the
sinks). A reload lists a change to one of them in `needs_restart` and the daemon goes on with the
running value (`running_config`), so that `/v1/info` and `/metrics` show what actually runs.
A few keys of such a table are read at each use and do change on a reload (`RELOADED_WITHIN`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel

from oracled.config import Config, MarketConfig

__all__ = [
    "RELOADED_WITHIN",
    "RESTART_ONLY",
    "ConfigChanges",
    "config_changes",
    "running_config",
    "source_pairs",
]

#: Settings (dotted paths into the config) that only a restart applies; a reload keeps their
#: running values. `chains` is not kept: a reload's sources may name a new chain, and the config
#: must stay whole; its readers keep the start's settings (reported, as for the others).
RESTART_ONLY: tuple[str, ...] = (
    "oracle.round_interval_ms",
    "oracle.manual_pauses_file",
    "api.listen",
    "api.idle_timeout_s",
    "api.admin_token_env",
    "api.stream_queue",
    "log",
    "signing",
    "nats",
    "push",
    "audit",
)
_REPORTED_ONLY: tuple[str, ...] = ("chains",)
#: Keys inside a `RESTART_ONLY` table that a reload applies all the same: the part that runs
#: reads them at each use (`ChainPusher.reconfigure`). Named in `settings_changed`, never kept.
RELOADED_WITHIN: tuple[str, ...] = ("push.recheck_depth_blocks", "push.grow_batch_after")


@dataclass(frozen=True, slots=True)
class ConfigChanges:
    markets_added: list[str]
    markets_removed: list[str]
    markets_changed: list[str]
    sources_restarted: list[str]  # started, stopped or restarted
    needs_restart: list[str]  # changed settings that only a restart applies
    # Every changed setting the reload applies, as a dotted path (`oracle.resume_rounds`,
    # `markets.BTC/USD.max_deviation`, `sources.a.ws_url`; a table added or removed: its own path).
    settings_changed: list[str]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def empty(self) -> bool:
        return not any(self.as_dict().values())


def source_pairs(cfg: Config, sid: str) -> list[tuple[str, str]]:
    """The (pair, kind) list a source must serve: every market's sources and perp_sources."""
    seen: dict[tuple[str, str], None] = {}
    for market in cfg.markets:
        for ms in (*market.sources, *market.perp_sources):
            if ms.source == sid:
                seen[(ms.pair, ms.kind)] = None
    return list(seen)


def _enabled(cfg: Config, sid: str) -> bool:
    src = cfg.sources.get(sid)
    return src is not None and src.enabled


def config_changes(old: Config, new: Config) -> ConfigChanges:
    before = {m.symbol: m for m in old.markets}
    after = {m.symbol: m for m in new.markets}
    skew_changed = old.oracle.max_clock_skew_ms != new.oracle.max_clock_skew_ms
    sources = sorted(
        sid
        for sid in set(old.sources) | set(new.sources)
        if (_enabled(old, sid) or _enabled(new, sid))  # off in both: runs in neither
        and (
            old.sources.get(sid) != new.sources.get(sid)
            or source_pairs(old, sid) != source_pairs(new, sid)
            or skew_changed  # each source refuses future quotes itself
        )
    )
    # The new file with the keys a reload applies inside restart-only tables at their old
    # values: a change of those alone needs no restart.
    masked = _with(new, {path: _get(old, path) for path in RELOADED_WITHIN})
    needs_restart = [
        path for path in (*RESTART_ONLY, *_REPORTED_ONLY) if _get(old, path) != _get(masked, path)
    ]
    return ConfigChanges(
        markets_added=[s for s in after if s not in before],
        markets_removed=[s for s in before if s not in after],
        markets_changed=[
            s
            for s in after
            if s in before
            and (before[s] != after[s] or _legs(old, before[s]) != _legs(new, after[s]))
        ],
        sources_restarted=sources,
        needs_restart=needs_restart,
        settings_changed=[
            path
            for path in _changed(old, new, "")
            if path in RELOADED_WITHIN
            or not any(
                path == kept or path.startswith(kept + ".")
                for kept in (*RESTART_ONLY, *_REPORTED_ONLY)
            )
        ],
    )


def _changed(old: Any, new: Any, path: str) -> Iterator[str]:
    """The dotted paths of the settings that differ: tables and markets (by symbol) are walked
    into, lists are one setting. The admin token (kept from the start) is never compared."""
    if old == new:
        return
    if isinstance(old, tuple) and path == "markets":
        old, new = {m.symbol: m for m in old}, {m.symbol: m for m in new}
    if isinstance(old, BaseModel) and type(old) is type(new):
        for name, info in type(old).model_fields.items():
            if not info.exclude and name != "admin_token":
                yield from _changed(getattr(old, name), getattr(new, name), _join(path, name))
    elif isinstance(old, dict) and isinstance(new, dict):
        for key in {**old, **new}:
            if key not in old or key not in new:
                if old.get(key) != new.get(key):
                    yield _join(path, str(key))
            else:
                yield from _changed(old[key], new[key], _join(path, str(key)))
    else:
        yield path


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _legs(cfg: Config, market: MarketConfig) -> list[str | None]:
    """The leg market each of a market's source entries converts through (None: no leg). A
    market whose legs change is priced differently even when its own table did not change."""
    routes = {(r.from_, r.to): r.via for r in cfg.routes}
    base, quote = market.symbol.split("/")
    pairs = (e.pair.split("/") for e in (*market.sources, *market.perp_sources))
    return [routes.get((pq, quote)) if pb == base and pq != quote else None for pb, pq in pairs]


def running_config(old: Config, new: Config) -> Config:
    """`new` with every `RESTART_ONLY` setting at its running value from `old`: the config a
    reload puts in force; the keys of `RELOADED_WITHIN` keep the new file's values."""
    applied = {path: _get(new, path) for path in RELOADED_WITHIN}
    for path in RESTART_ONLY:
        value = _get(old, path)
        if _get(new, path) != value:
            new = _replaced(new, path.split("."), value)
    return _with(new, applied)


def _with(cfg: Config, values: dict[str, Any]) -> Config:
    """`cfg` with the setting at each dotted path of `values` set to its value."""
    for path, value in values.items():
        if _get(cfg, path) != value:
            cfg = _replaced(cfg, path.split("."), value)
    return cfg


def _get(cfg: BaseModel, path: str) -> Any:
    value: Any = cfg
    for name in path.split("."):
        value = getattr(value, name)
    return value


def _replaced(model: Any, names: list[str], value: Any) -> Any:
    """A copy of `model` with the field at `names` set to `value` (the values come from a
    validated config of the same shape, so nothing is validated again)."""
    head, *rest = names
    inner = _replaced(getattr(model, head), rest, value) if rest else value
    return model.model_copy(update={head: inner})
