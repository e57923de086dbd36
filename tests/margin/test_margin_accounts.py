"""The accounts file's refusals, as an operator reads them: every problem once, by key path."""

from __future__ import annotations

from typing import Any

import pytest

from oracled.errors import ConfigError
from oracled.margin import parse_accounts
from oracled.margin.risk import tier_levels


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


def test_warning_and_reduce_only_multiples_that_fall_as_the_position_grows_are_refused() -> None:
    """The warning and reduce-only levels are each bracket's maintenance times its multiple, so
    a multiple below the tier before it gives a larger position a thinner cushion over
    maintenance where the rates say it is riskier. Such files were accepted; the likeliest is a
    multiple set on the first tier alone (the next keep the defaults, 1.5 and 1.2). Each
    falling multiple is named by instrument, tier and key, with both values, and one left at
    its default says so; equal or rising multiples pass, and the levels they give only rise."""
    tiers = [
        {"up_to": 100_000, "initial": 0.02, "maintenance": 0.01, "warning": 2.0},
        {"up_to": 500_000, "initial": 0.05, "maintenance": 0.025, "warning": 2.0},
        {"initial": 0.1, "maintenance": 0.05, "warning": 1.6, "reduce_only": 1.1},
    ]
    with pytest.raises(ConfigError) as caught:
        parse_accounts(_file(tiers))
    assert caught.value.problems == [
        "instruments.BTC-PERP: tiers[2]: warning 1.6 is below tiers[1]'s 2.0 (multiples must"
        " not fall as the notional grows: set them on every tier); tiers[2]: reduce_only 1.1"
        " is below tiers[1]'s 1.2 (multiples must not fall as the notional grows: set them on"
        " every tier)"
    ]
    first_only = [tiers[0], {"initial": 0.05, "maintenance": 0.025}]
    with pytest.raises(ConfigError) as caught:
        parse_accounts(_file(first_only))
    assert caught.value.problems == [
        "instruments.BTC-PERP: tiers[1]: warning 1.5 (the default) is below tiers[0]'s 2.0"
        " (multiples must not fall as the notional grows: set them on every tier)"
    ]
    rising = [tiers[0], tiers[1], tiers[2] | {"warning": 2.5, "reduce_only": 1.2}]
    spec = parse_accounts(_file(rising))
    levels = [tier_levels(spec.instruments["BTC-PERP"].tiers, n) for n in (5e4, 3e5, 1e6)]
    assert [lv.warning for lv in levels] == sorted(lv.warning for lv in levels)
    assert levels[-1].warning == pytest.approx(2 * (1_000 + 10_000) + 2.5 * 25_000)


_AT_MOST = "Input should be less than or equal to 1000000000000000000"
_AT_LEAST = "Input should be greater than or equal to -1000000000000000000"


@pytest.mark.parametrize(
    ("account", "problem"),
    [
        (
            {"id": "a", "collateral": {"USD": 1e300}},
            f"accounts[0].collateral.USD: {_AT_MOST}",
        ),
        (
            {"id": "a", "positions": [{"instrument": "BTC-PERP", "qty": 1e308, "entry": 1.0}]},
            f"accounts[0].positions[0].qty: {_AT_MOST}",
        ),
        (
            {"id": "a", "positions": [{"instrument": "BTC-PERP", "qty": -1e308, "entry": 1.0}]},
            f"accounts[0].positions[0].qty: {_AT_LEAST}",
        ),
        (
            {"id": "a", "positions": [{"instrument": "BTC-PERP", "qty": 1.0, "entry": 1e308}]},
            f"accounts[0].positions[0].entry: {_AT_MOST}",
        ),
    ],
)
def test_amounts_past_any_real_book_are_refused(account: dict[str, Any], problem: str) -> None:
    """A quantity, price or balance of 1e308 is finite, so it passed, and the engine's products
    of it overflowed: `oracled stress` printed NaN and Infinity in its results with exit 0.
    Every amount is now at most 1e18 in size."""
    data = _file([{"initial": 0.1, "maintenance": 0.05}]) | {"accounts": [account]}
    with pytest.raises(ConfigError) as err:
        parse_accounts(data)
    assert problem in err.value.problems
