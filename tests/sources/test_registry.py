"""The registry the runtime uses to build sources."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

import oracled.sources as sources
from oracled.clock import ManualClock
from oracled.config import CHAIN_SOURCE_TYPES, SourceConfig
from oracled.sources import (
    SOURCE_TYPES,
    BinanceSource,
    Source,
    SourceStats,
    build_source,
    source_class,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_public_names_are_pinned() -> None:
    """The package exports exactly what the runtime and tests rely on."""
    assert set(sources.__all__) == {
        "SOURCE_TYPES",
        "BinanceSource",
        "ConnState",
        "Source",
        "SourceStats",
        "backoff_delay",
        "build_source",
        "source_class",
    }


async def test_build_source_picks_the_class_by_type() -> None:
    """A binance config builds a BinanceSource with venue defaults and mapped symbols."""
    assert "binance" in SOURCE_TYPES
    assert source_class("binance") is BinanceSource
    cfg = SourceConfig(type="binance", instruments={"XBT/USDT": "BTCUSDT"})
    async with aiohttp.ClientSession() as http:
        source = build_source(
            "bn",
            cfg,
            [("XBT/USDT", "spot"), ("ETH/USDT", "spot")],
            lambda q: None,
            ManualClock(),
            http,
            SourceStats("bn"),
        )
    assert isinstance(source, BinanceSource)
    assert source.symbols == ("BTCUSDT", "ETHUSDT")
    assert source.stream_url() == "wss://stream.binance.com:9443/stream"
    assert source.rest_url == "https://api.binance.com"


async def test_perp_pairs_are_refused_by_a_spot_venue() -> None:
    """A pair of a kind the venue does not serve is marked failed instead of subscribed."""
    stats = SourceStats("bn")
    async with aiohttp.ClientSession() as http:
        source = build_source(
            "bn",
            SourceConfig(type="binance"),
            [("BTC/USDT", "perp"), ("ETH/USDT", "spot")],
            lambda q: None,
            ManualClock(),
            http,
            stats,
        )
    assert source.symbols == ("ETHUSDT",)
    assert "BTC/USDT" in stats.failed_instruments


def test_every_registered_type_resolves_to_a_source_class() -> None:
    """Each type the config accepts names an importable Source subclass (a typo fails here)."""
    for name in SOURCE_TYPES:
        assert issubclass(source_class(name), sources.Source), name


def test_the_snapshot_table_holds_each_venue_adapter_to_its_class() -> None:
    """docs/sources.md's table under Adding a venue names every venue adapter once, saying
    whether its venue answers a subscription with a snapshot exactly as its class's
    `snapshot_on_subscribe` does (which decides whether the first-quote filter runs); a class
    that sets nothing keeps the safe default, the filter on."""
    section = (DOCS / "sources.md").read_text().split("\n## Adding a venue\n", 1)[1]
    rows = re.findall(r"^\| `([a-z_0-9]+)`[^|]*\| (yes|no)\b", section, re.M)
    table = dict(rows)
    assert len(rows) == len(table) and set(table) == set(SOURCE_TYPES) - CHAIN_SOURCE_TYPES
    for name, said in table.items():
        assert source_class(name).snapshot_on_subscribe is (said == "yes"), name
    assert Source.snapshot_on_subscribe is True
