"""Collectors: one small module per venue or feed, on the shared base in `_base.py`.

The runtime builds sources through `build_source`, which picks the class by `SourceConfig.type`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import aiohttp

from oracled.clock import Clock
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
]

SOURCE_TYPES: Final[dict[str, type[Source]]] = {"binance": BinanceSource}


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
    return SOURCE_TYPES[cfg.type](source_id, cfg, pairs, emit, clock, session, stats)
