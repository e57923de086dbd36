"""Why each perpetual did or did not count in a round, and what made the mark (its mode): what
`/v1/markets/{market}/sources` lists as `perp_sources` and the oracled_mark_* metrics show.
BTC/USD's perps: `p` quotes BTC/USD, `q` BTC/USDT through the USDT/USD leg (mark_rig)."""

from __future__ import annotations

from typing import Any

from mark_rig import B, Rig, make_config

from oracled.mark import MarkValues


def _values(rig: Rig, now: int, **kw: Any) -> MarkValues:
    rig.round(now, **kw)
    assert rig.last is not None and rig.last.mark is not None
    return rig.last.mark.values[rig.core.index["BTC/USD"]]


def test_each_perp_is_counted_or_named_with_why_not_and_its_mid() -> None:
    """A perp within max_perp_deviation counts (reason None); one 100 % away is `deviation` with
    its mid kept; one never quoted is `no_quote`; a routed one whose leg is not live is `route`;
    one older than max_age_ms is `stale`. One counting keeps the mode `perps`."""
    rig = Rig()
    first = _values(rig, B, p=100.5, q=200.0)
    assert first.perp_reasons == (None, "deviation")
    assert first.perp_mids == (100.5, 200.0)
    assert first.mode == "perps" and first.perps_used == 1
    later = B + 6_000  # the USDT/USD quotes of B are past max_age_ms: the leg is not live
    routed = _values(rig, later, usdt=None, p=100.0, q=100.0)
    assert routed.perp_reasons == (None, "route")
    assert routed.perp_mids[0] == 100.0 and routed.perp_mids[1] != routed.perp_mids[1]
    stale = _values(rig, later + 6_000, q=100.0)  # p last quoted 6 s ago
    assert stale.perp_reasons == ("stale", None)
    fresh = Rig()
    assert _values(fresh, B, p=100.0).perp_reasons == (None, "no_quote")


def test_too_few_counting_is_the_fallback_and_no_index_is_none() -> None:
    """With min_perp_sources 2 and one perp fresh, it is `too_few` and the mode `fallback` (0
    used); without a live index nothing is checked: both `index`, mode `none`."""
    rig = Rig(make_config(mark={"min_perp_sources": 2}))
    few = _values(rig, B, p=100.0)
    assert few.perp_reasons == ("too_few", "no_quote")
    assert few.mode == "fallback" and few.perps_used == 0
    both = _values(rig, B + 1_000, p=100.0, q=100.0)
    assert both.perp_reasons == (None, None) and both.mode == "perps"
    gone = _values(rig, B + 20_000, index=None, usdt=None, p=100.0, q=100.0)
    assert gone.perp_reasons == ("index", "index") and gone.mode == "none"
