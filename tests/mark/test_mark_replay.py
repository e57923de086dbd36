"""Replay with perpetuals in the tape: the mark is in the output, byte-identical run to run."""

from __future__ import annotations

import io
from typing import Any

import msgspec
from mark_rig import B, make_config

from oracled.replay import replay

PAUSE = range(B + 70_500, B + 80_500)  # spot quotes stop here: the index pauses


def _tape() -> list[bytes]:
    """130 s of quotes every second: spot at 100, USDT at 1, perp p at 100.1 and perp q bid/ask
    100.15/100.25 in USDT; no spot quotes during PAUSE."""
    lines: list[dict[str, Any]] = []
    for ts in range(B + 500, B + 130_500, 1_000):
        if ts not in PAUSE:
            for s in "abc":
                lines.append({"ts": ts, "source": s, "pair": "USDT/USD", "price": "1"})
                lines.append({"ts": ts, "source": s, "pair": "BTC/USD", "price": "100"})
        lines.append({"ts": ts, "source": "p", "pair": "BTC/USD", "kind": "perp", "price": "100.1"})
        lines.append(
            {
                "ts": ts,
                "source": "q",
                "pair": "BTC/USDT",
                "kind": "perp",
                "bid": "100.15",
                "ask": "100.25",
            }
        )
    header = {"format": "oracled-tape", "version": 1}
    return [msgspec.json.encode(line) + b"\n" for line in [header, *lines]]


def _run() -> bytes:
    out = io.BytesIO()
    replay(make_config(mark={"funding_interval_s": 60}), _tape(), out)
    return out.getvalue()


def test_replay_with_perps_is_byte_identical_and_carries_the_mark() -> None:
    """Two replays give the same bytes; BTC/USD lines hold a mark object, USDT/USD null."""
    first = _run()
    assert first == _run()
    reports = [msgspec.json.decode(line) for line in first.splitlines()]
    btc = [r for r in reports if r["market"] == "BTC/USD"]
    assert len(btc) == 130
    assert all(r["mark"] is None for r in reports if r["market"] == "USDT/USD")
    steady = btc[30]["mark"]
    # perp mids 100.1 and 100.2: median 100.15; premiums 0.001 and 0.0015 (impact bid): 0.00125
    estimators = {"basis_ema": "100.15", "perp_median": "100.15", "fallback": None}
    assert steady["estimators"] == estimators
    assert (steady["price"], steady["premium"], steady["perps_used"]) == ("100.15", "0.00125000", 2)


def test_replay_settles_funding_on_the_boundary_and_nulls_the_mark_while_paused() -> None:
    """The round at 60 s settles 0.00125 - 0.0005; rounds with a stale index have no mark."""
    reports = [msgspec.json.decode(line) for line in _run().splitlines()]
    btc = {r["ts"]: r for r in reports if r["market"] == "BTC/USD"}
    settled = btc[B + 60_000]["mark"]
    assert (settled["last_funding_rate"], settled["last_funding_ts"]) == ("0.00075000", B + 60_000)
    paused = btc[B + 79_000]
    assert paused["status"] == "paused"
    assert (paused["mark"]["price"], paused["mark"]["reason"]) == (None, "index")
    assert btc[B + 130_000]["mark"]["last_funding_ts"] == B + 120_000
