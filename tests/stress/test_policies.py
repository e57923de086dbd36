"""The naive policies and the clean reference read a source's value the way the core does:
an inverse pair is inverted, and a conversion leg listed the other way round is divided by."""

from __future__ import annotations

import pytest

from oracled.config import Config, parse_config
from oracled.model import Quote
from oracled.stress.policies import QuoteWatch

T0 = 1_700_000_000_000


def _config() -> Config:
    """JPY/USD from venues quoting USD/JPY; BTC/USD from venues quoting BTC/USDT, converted
    through a USD/USDT market (the leg listed the other way round)."""
    venues = ("a", "b", "c")
    return parse_config(
        {
            "sources": {v: {"type": "binance"} for v in venues},
            "routes": [{"from": "USDT", "to": "USD", "via": "USD/USDT"}],
            "markets": [
                {
                    "symbol": "JPY/USD",
                    "price_exponent": -8,
                    "sources": [{"source": v, "pair": "USD/JPY"} for v in venues],
                },
                {
                    "symbol": "USD/USDT",
                    "price_exponent": -6,
                    "sources": [{"source": v, "pair": "USD/USDT"} for v in venues],
                },
                {
                    "symbol": "BTC/USD",
                    "sources": [{"source": v, "pair": "BTC/USDT"} for v in venues],
                },
            ],
        },
        env={},
    )


def test_inverse_pairs_and_legs_convert_like_the_core() -> None:
    """USD/JPY at 150 is JPY/USD at 1/150 for every policy; with USDT at 0.80 USD (USD/USDT at
    1.25), BTC/USDT at 62,500 is BTC/USD at 50,000 for the clean reference."""
    watch = QuoteWatch(_config())
    for v in ("a", "b", "c"):
        watch.on_quote(Quote(v, "USD/JPY", T0, price=150.0))
        watch.on_quote(Quote(v, "USD/USDT", T0, price=1.25))
        watch.on_quote(Quote(v, "BTC/USDT", T0, price=62_500.0))
    reference = watch.reference(T0)
    assert reference["JPY/USD"] == pytest.approx(1 / 150)
    assert reference["BTC/USD"] == pytest.approx(50_000.0)
    assert watch.plain_median()["JPY/USD"] == pytest.approx(1 / 150)
    assert watch.single_venue("a")["JPY/USD"] == pytest.approx(1 / 150)
