"""What a config reload changes, and what it cannot change without a restart.

Pure: compares two validated configs. The runtime applies the result (core.reconfigure for
markets and thresholds, restarting exactly the sources whose settings or pairs changed) and
logs it; `POST /v1/admin/reload` returns it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from oracled.config import Config

__all__ = ["ConfigChanges", "config_changes", "source_pairs"]


@dataclass(frozen=True, slots=True)
class ConfigChanges:
    markets_added: list[str]
    markets_removed: list[str]
    markets_changed: list[str]
    sources_restarted: list[str]  # started, stopped or restarted
    needs_restart: list[str]  # changed settings that only a restart applies

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


def config_changes(old: Config, new: Config) -> ConfigChanges:
    before = {m.symbol: m for m in old.markets}
    after = {m.symbol: m for m in new.markets}
    sources = sorted(
        sid
        for sid in set(old.sources) | set(new.sources)
        if old.sources.get(sid) != new.sources.get(sid)
        or source_pairs(old, sid) != source_pairs(new, sid)
    )
    needs_restart = [
        key
        for key, a, b in (
            ("api.listen", old.api.listen, new.api.listen),
            ("api.admin_token_env", old.api.admin_token_env, new.api.admin_token_env),
            ("api.stream_queue", old.api.stream_queue, new.api.stream_queue),
            ("log", old.log, new.log),
            ("chains", old.chains, new.chains),
            ("signing", old.signing, new.signing),
            ("nats", old.nats, new.nats),
        )
        if a != b
    ]
    return ConfigChanges(
        markets_added=[s for s in after if s not in before],
        markets_removed=[s for s in before if s not in after],
        markets_changed=[s for s in after if s in before and before[s] != after[s]],
        sources_restarted=sources,
        needs_restart=needs_restart,
    )
