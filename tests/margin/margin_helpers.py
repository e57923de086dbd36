"""Builders for margin tests: a small spec, reports as they arrive on the wire, resolved prices."""

from __future__ import annotations

from typing import Any

import msgspec

from oracled.margin import AccountsFile, PriceView, parse_accounts

T0 = 1_700_000_000_000

TIERS: list[dict[str, Any]] = [
    {"up_to": 100_000, "initial": 0.02, "maintenance": 0.01},
    {"up_to": 500_000, "initial": 0.05, "maintenance": 0.025},
    {"initial": 0.1, "maintenance": 0.05},
]


def spec(
    accounts: list[dict[str, Any]],
    *,
    policy: dict[str, Any] | None = None,
    tiers: list[dict[str, Any]] | None = None,
    max_notional: float | None = None,
) -> AccountsFile:
    btc: dict[str, Any] = {"market": "BTC/USD", "tiers": tiers or TIERS}
    if max_notional is not None:
        btc["max_notional"] = max_notional
    return parse_accounts(
        {
            "policy": policy or {},
            "assets": {
                "USD": {},
                "BTC": {"market": "BTC/USD", "haircut": 0.1},
                "ETH": {"market": "ETH/USD", "haircut": 0.2},
            },
            "instruments": {
                "BTC-PERP": btc,
                "ETH-PERP": {"market": "ETH/USD", "tiers": [{"initial": 0.1, "maintenance": 0.05}]},
            },
            "accounts": accounts,
        }
    )


def view(
    market: str,
    price: float | None,
    *,
    ts: int = T0,
    round: int = 1,
    status: str = "active",
    reasons: list[str] | None = None,
    last_good: float | None = None,
    mark: float | None = None,
    mark_mode: str = "perps",
    signature: str | None = None,
) -> PriceView:
    """A report as JSON text, the way the stream delivers it, read into the engine's view."""
    live = status in ("active", "degraded")
    good = price if live else last_good
    body: dict[str, Any] = {
        "market": market,
        "ts": ts,
        "round": round,
        "status": status,
        "reasons": reasons or [],
        "price": None if price is None or not live else f"{price:.2f}",
        "confidence": None,
        "last_good_price": None if good is None else f"{good:.2f}",
        "last_good_ts": ts if live else (ts - 1000 if good is not None else None),
        "sources": [],
        "unknown_future_key": 1,
    }
    if mark is not None:
        text = f"{mark:.2f}"
        perps = mark_mode == "perps"  # the perpetuals' median counted (docs/mark.md)
        body["mark"] = {
            "price": text,
            "estimators": {
                "basis_ema": text if perps else None,
                "perp_median": text if perps else None,
                "fallback": None if perps else text,
            },
            "funding_rate_estimate": "0.0001",
        }
    if signature is not None:
        body["signature"] = signature
    return PriceView.from_json(msgspec.json.encode(body))
