"""Funding inputs through the real core: time-weighted premium, settlement, gaps, pauses.

One-minute intervals (`funding_interval_s = 60`); interval k covers (k x 60 s, (k + 1) x 60 s],
B is a boundary. Index 100 and a single-price perp p, so the premium is (p - 100) / 100.
Interest 0.0001, clamp 0.0005, cap 0.0075 (the defaults).
"""

from __future__ import annotations

from mark_rig import B, Rig, make_config

MINUTE = {"funding_interval_s": 60}


def test_running_estimate_weights_samples_by_time_and_settles_on_the_boundary() -> None:
    """Samples 0.001 (1 s: the first round's weight is one round interval), 0.002 (30 s) and
    -0.0005 (20 s): average 51 / 51000 = 0.001; F = 0.001 + clamp(-0.0009) = 0.0005.

    Before the last sample: 61 / 31000 = 0.0019677; F = 0.0019677 - 0.0005 = 0.0014677.
    """
    rig = Rig(make_config(mark=MINUTE))
    first = rig.mark(B + 10_000, p=100.1)
    assert (first.premium, first.funding_rate_estimate) == ("0.00100000", "0.00050000")
    assert (first.last_funding_rate, first.last_funding_ts) == (None, None)
    assert first.next_funding_ts == B + 60_000
    second = rig.mark(B + 40_000, p=100.2)
    assert second.funding_rate_estimate == "0.00146774"
    settled = rig.mark(B + 60_000, p=99.95)
    assert settled.premium == "-0.00050000"
    assert (settled.last_funding_rate, settled.last_funding_ts) == ("0.00050000", B + 60_000)
    assert settled.funding_rate_estimate is None  # the new interval has no sample yet
    assert settled.next_funding_ts == B + 120_000


def test_intervals_without_rounds_settle_to_null_rather_than_repeat_an_old_rate() -> None:
    """After the boundary at 60 s the next round is at 200 s: the intervals ending 120 s and
    180 s had no sample, so the last rate is null at 180 s; the new sample weighs 20 s."""
    rig = Rig(make_config(mark=MINUTE))
    rig.mark(B + 10_000, p=100.1)
    rig.mark(B + 60_000, p=100.1)
    later = rig.mark(B + 200_000, p=100.3)
    assert (later.last_funding_rate, later.last_funding_ts) == (None, B + 180_000)
    assert later.funding_rate_estimate == "0.00250000"  # 0.003 - 0.0005
    assert later.next_funding_ts == B + 240_000


def test_a_paused_index_adds_no_sample_and_its_time_goes_to_no_other_sample() -> None:
    """0.001 for 1 s, paused 10 s, 0.003 for 10 s: (1 + 30) / 11000 = 0.0028182, F = 0.0023182."""
    rig = Rig(make_config(mark=MINUTE))
    rig.mark(B + 10_000, p=100.1)
    paused = rig.round(B + 20_000, index=None, p=100.2)
    assert paused.mark is not None and paused.mark.premium is None
    assert paused.mark.funding_rate_estimate == "0.00050000"  # still the first sample's
    resumed = rig.mark(B + 30_000, p=100.3)
    assert resumed.funding_rate_estimate == "0.00231818"


def test_a_round_just_past_a_boundary_settles_the_interval_before_sampling() -> None:
    """Rounds at 50 s and 61 s: the interval ending 60 s settles from the 50 s sample alone
    (0.002 - 0.0005), and the 61 s sample weighs only the 1 s since the boundary."""
    rig = Rig(make_config(mark=MINUTE))
    rig.mark(B + 50_000, p=100.2)
    after = rig.mark(B + 61_000, p=99.96)  # premium -0.0004: F = -0.0004 + 0.0005
    assert (after.last_funding_rate, after.last_funding_ts) == ("0.00150000", B + 60_000)
    assert after.funding_rate_estimate == "0.00010000"


def test_configured_interest_clamp_and_cap_apply() -> None:
    """interest 0, clamp 0.0001, cap 0.001: premium 0.002 gives 0.002 - 0.0001, capped 0.001."""
    cfg = make_config(
        mark={**MINUTE, "interest_rate": 0.0, "premium_clamp": 0.0001, "funding_cap": 0.001}
    )
    mark = Rig(cfg).mark(B + 10_000, p=100.2)
    assert mark.funding_rate_estimate == "0.00100000"
