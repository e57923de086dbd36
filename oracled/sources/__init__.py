"""Collectors: one small module per venue or feed, on the shared base in `_base.py`.

The runtime builds sources through `build_source`, which picks the class by `SourceConfig.type`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import aiohttp

from oracled.clock import Clock
from oracled.config import SOURCE_TYPES as _TYPE_PATHS
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sources._base import Source, backoff_delay
from oracled.sources.binance import BinanceSource
from oracled.sources.stats import ConnState, SourceStats

__all__ = [
    "SOURCE_TYPES",
    "BinanceSource",
    "ConnState",
    "Source",
    "SourceStats",
    "backoff_delay",
    "build_source",
    "source_class",
]


def source_class(type_name: str) -> type[Source]:
    """The adapter class of a source type, imported on first use."""
    module, _, name = _TYPE_PATHS[type_name].partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise TypeError(f"{_TYPE_PATHS[type_name]} is not a Source")
    return cls


SOURCE_TYPES = tuple(_TYPE_PATHS)


def build_source(
    source_id: str,
    cfg: SourceConfig,
    pairs: Sequence[tuple[str, Kind]],
    emit: Callable[[Quote], None],
    clock: Clock,
    session: aiohttp.ClientSession,
    stats: SourceStats,
) -> Source:
    """Instantiate the adapter for `cfg.type`; the config has already checked the type exists."""
    return source_class(cfg.type)(source_id, cfg, pairs, emit, clock, session, stats)
