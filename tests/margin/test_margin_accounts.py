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
