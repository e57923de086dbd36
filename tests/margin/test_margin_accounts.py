"""The accounts file's refusals, as an operator reads them: every problem once, by key path."""

from __future__ import annotations

from typing import Any

import pytest

from oracled.errors import ConfigError
from oracled.margin import parse_accounts


def _file(tiers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "assets": {"USD": {}},
        "instruments": {"BTC-PERP": {"market": "BTC/USD", "tiers": tiers}},
        "accounts": [{"id": "a", "collateral": {"USD": 1}}],
    }


@pytest.mark.parametrize(
    ("tier", "problem"),
    [
        (
            {"initial": 0.01, "maintenance": 0.02},
            "instruments.BTC-PERP.tiers[0]: maintenance must not exceed initial",
        ),
        (
            {"initial": 0.02, "maintenance": 0.01, "warning": 0.5},
            "instruments.BTC-PERP.tiers[0].warning: Input should be greater than or equal to 1",
        ),
    ],
)
def test_a_bad_tier_is_one_problem_not_also_an_empty_list(
    tier: dict[str, Any], problem: str
) -> None:
    """A tier refused for its rates was followed by 'instruments.BTC-PERP.tiers: Tuple should
    have at least 1 item after validation, not 0', as if the file had no tier: the list counts
    only the items that passed. Only the tier's own problem is said now."""
    with pytest.raises(ConfigError) as caught:
        parse_accounts(_file([tier]))
    assert caught.value.problems == [problem]


def test_an_empty_list_of_tiers_is_still_refused_as_such() -> None:
    """With no tier at all, the list's own problem is the one to say."""
    with pytest.raises(ConfigError) as caught:
        parse_accounts(_file([]))
    assert caught.value.problems == [
        "instruments.BTC-PERP.tiers: Tuple should have at least 1 item after validation, not 0"
    ]


def test_tier_rates_that_fall_as_the_position_grows_are_refused_naming_the_tier() -> None:
    """A tier whose initial or maintenance rate is below the tier before it was accepted: a
    larger position then needs a smaller rate on its next unit of notional, which is no venue's
    table (each lists rates that rise, or leverage that falls, with the notional) and most
    likely a typo of the kind tested here (0.025 written 0.0025). Each such tier is named, with
    the rate, both values and the tier below; equal rates pass."""
    tiers = [
        {"up_to": 100_000, "initial": 0.02, "maintenance": 0.01},
        {"up_to": 500_000, "initial": 0.05, "maintenance": 0.0025},
        {"initial": 0.04, "maintenance": 0.03},
    ]
    with pytest.raises(ConfigError) as caught:
        parse_accounts(_file(tiers))
    assert caught.value.problems == [
        "instruments.BTC-PERP: tiers[1]: maintenance 0.0025 is below tiers[0]'s 0.01 (rates must"
        " not fall as the notional grows); tiers[2]: initial 0.04 is below tiers[1]'s 0.05"
        " (rates must not fall as the notional grows)"
    ]
    level = [{"up_to": 100_000, "initial": 0.02, "maintenance": 0.01}, tiers[0] | {"up_to": None}]
    assert parse_accounts(_file(level)).instruments["BTC-PERP"].tiers[1].maintenance == 0.01
