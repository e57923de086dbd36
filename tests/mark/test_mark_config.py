"""The `mark` table of a market: defaults, ranges with key paths, perp routes."""

from __future__ import annotations

from typing import Any

import pytest
from mark_rig import make_config

from oracled.config import MarkConfig, parse_config
from oracled.errors import ConfigError


def test_defaults_are_the_documented_binance_style_values() -> None:
    """A market with perps and no mark table gets 60 s, 8 h, 0.01 %, 0.05 %, 0.75 %, 5 %."""
    cfg = make_config()
    mark = cfg.markets[1].mark
    assert mark == MarkConfig()
    assert (mark.basis_half_life_s, mark.funding_interval_s) == (60.0, 28_800)
    assert (mark.interest_rate, mark.premium_clamp, mark.funding_cap) == (0.0001, 0.0005, 0.0075)
    assert mark.max_perp_deviation == 0.05


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"basis_half_life_s": 0}, "markets[1].mark.basis_half_life_s: must be > 0"),
        ({"funding_interval_s": 30}, "markets[1].mark.funding_interval_s: must be >= 60"),
        ({"interest_rate": 0.5}, "markets[1].mark.interest_rate: must be <= 0.1"),
        ({"premium_clamp": -0.001}, "markets[1].mark.premium_clamp: must be >= 0"),
        ({"funding_cap": 0}, "markets[1].mark.funding_cap: must be > 0"),
        ({"max_perp_deviation": 1.5}, "markets[1].mark.max_perp_deviation: must be < 1"),
        ({"min_perp_sources": 0}, "markets[1].mark.min_perp_sources: must be >= 1"),
        (
            {"min_perp_sources": 3},
            "markets[1].mark.min_perp_sources: 3 exceeds the 2 perpetual(s) listed "
            "(the mark could never use them)",
        ),
        ({"half_life": 60}, "markets[1].mark.half_life: is not a known key"),
        ({"funding_interval_s": "8h"}, "markets[1].mark.funding_interval_s: must be an integer"),
    ],
)
def test_bad_mark_values_are_reported_with_their_key_path(
    table: dict[str, Any], problem: str
) -> None:
    """Each bad value is one problem naming markets[i].mark.<key>."""
    with pytest.raises(ConfigError) as caught:
        make_config(mark=table)
    assert caught.value.problems == [problem]


def test_a_perp_in_another_quote_currency_needs_a_route() -> None:
    """A BTC/EUR perp on a BTC/USD market without an EUR -> USD route is refused."""
    data: dict[str, Any] = {
        "sources": {"a": {"type": "binance"}, "p": {"type": "okx"}},
        "markets": [
            {
                "symbol": "BTC/USD",
                "min_sources": 1,
                "sources": [{"source": "a", "pair": "BTC/USD"}],
                "perp_sources": [{"source": "p", "pair": "BTC/EUR"}],
            }
        ],
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env={})
    assert caught.value.problems == [
        "markets[0].perp_sources[0].pair: no route converts EUR to USD (add a [[routes]] entry)"
    ]
