"""The pricing revision against a pinned replay: a change to the rules cannot slip in unsaid.

`tests/fixtures/tapes/pricing.jsonl` with `pricing.toml` moves spot prices, both kinds of route
(a leg and a leg listed the other way round), perpetuals into a mark with funding, and the gates
(an outlier, a jump held then confirmed, a stale quorum, a manual pause, a weight majority
outvoted by younger quotes, quiet direct books against routed quotes whose leg lags, silent
perpetuals left behind by the index, in their own currency too):
`pricing_digest.json` holds the SHA-256 of its replay output and the `PRICING_REVISION` it was
computed under. Output that changes while the revision does not fails here: the change moves
some tape's reports, so the revision is bumped and CHANGELOG.md says how.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from oracled.config import load_config
from oracled.core import PRICING_REVISION
from oracled.replay import replay

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tapes"
ROOT = Path(__file__).parent.parent.parent
B = 1_700_000_040_000  # the tape's start (make_pricing_tape.py)


class _Pin(msgspec.Struct, forbid_unknown_fields=True):
    pricing_revision: int
    sha256: str
    reports: int


def _replayed() -> bytes:
    out = io.BytesIO()
    with (FIXTURES / "pricing.jsonl").open("rb") as tape:
        stats = replay(load_config(FIXTURES / "pricing.toml"), tape, out)
    assert stats.malformed == 0, stats.errors
    return out.getvalue()


def test_the_pinned_tape_replays_to_its_digest_under_this_revision() -> None:
    """The replay output of the pinned tape is the one stored for this PRICING_REVISION: a
    pricing change that moves it without a bump fails with what to do."""
    pin = msgspec.json.decode((FIXTURES / "pricing_digest.json").read_bytes(), type=_Pin)
    output = _replayed()
    digest, count = hashlib.sha256(output).hexdigest(), output.count(b"\n")
    stored = f"sha256 {digest}, {count} reports"
    if pin.pricing_revision == PRICING_REVISION:
        assert (digest, count) == (pin.sha256, pin.reports), (
            f"the pinned tape's replay changed ({stored}) while PRICING_REVISION stayed"
            f" {PRICING_REVISION}: bump PRICING_REVISION and add a CHANGELOG entry, then store the"
            " new revision and digest in tests/fixtures/tapes/pricing_digest.json"
        )
    else:
        raise AssertionError(
            f"PRICING_REVISION is {PRICING_REVISION}, the pinned digest was computed under"
            f" {pin.pricing_revision}: store this revision and the replay's {stored} in"
            " tests/fixtures/tapes/pricing_digest.json (and a CHANGELOG entry for the revision)"
        )


def test_the_pinned_tape_moves_spot_routes_perpetuals_and_the_gates() -> None:
    """The pin guards only what its tape exercises: every layer of the rules is held to it."""
    reports: list[dict[str, Any]] = [msgspec.json.decode(line) for line in _replayed().splitlines()]
    states = Counter((r["market"], r["status"], *r["reasons"]) for r in reports)
    for state in (
        ("BTC/USD", "degraded", "outlier"),
        ("BTC/USD", "paused", "jump"),
        ("ETH/USD", "paused", "quorum", "stale"),
        ("ETH/USD", "paused", "manual"),
        ("ETH/USD", "paused", "resuming"),
        ("USDT/USD", "active"),
        ("SOL/USD", "paused", "quorum", "stale"),
    ):
        assert states[state] > 0, state
    sol = [r for r in reports if r["market"] == "SOL/USD"]
    lagged = [s for r in sol for s in r["sources"] if s["reason"] == "stale"]
    assert any(s["age_ms"] < 5000 for s in lagged)  # outvoted by younger quotes (lag_ms)
    btc = [r for r in reports if r["market"] == "BTC/USD"]
    vias = {s["via"] for r in btc for s in r["sources"] if s.get("via") and s["used"]}
    assert vias == {"USDT/USD", "USD/USDC"}  # a leg, and one listed the other way round
    # c (direct) and d (through USD/USDC) are old while a and b, routed through USDT/USD, agree
    # against them (k 112 to 117): a and b share their leg's error, so they judge neither, and
    # both vote (c from revision 23, d from 24)
    quiet = [s for r in btc for s in r["sources"] if s["id"] in "cd"]
    assert {s["id"] for s in quiet if s["age_ms"] > 2000 and s["used"]} == {"c", "d"}
    assert not any(s["reason"] == "stale" and s["age_ms"] <= 5000 for s in quiet)
    marks = [r["mark"] for r in btc if r["mark"] is not None]
    assert max(m["perps_used"] for m in marks) == 3
    # p and r silent while BTC rises 3 % (k 64 to 72): 3.5 and 4.5 s old, within
    # max_perp_deviation but more than max_deviation from the index, they no longer count
    # (revision 25), p though its polls repeat its frozen ticker every round (revision 27), r
    # though its feed, back from k 67, delivers each quote 3 s late (revision 28); only q does
    lifted = {r["ts"] - B: r["mark"]["perps_used"] for r in btc if 67_000 <= r["ts"] - B <= 71_000}
    assert lifted == {67_000: 1, 68_000: 1, 69_000: 1, 70_000: 1, 71_000: 1}
    # q, quoted in USDT, silent while USDT falls 2 % and BTC/USD stays (k 94 to 99): 2.5 to 4.5 s
    # old, the index in USDT has left it (revision 27); p and r count
    depeg = {r["ts"] - B: r["mark"]["perps_used"] for r in btc if 96_000 <= r["ts"] - B <= 98_000}
    assert depeg == {96_000: 2, 97_000: 2, 98_000: 2}
    # r quiet from k 81 at its own 1.5 % basis while BTC stays where it was: 2.5 to 4.5 s old,
    # it counts (revision 26; 25 made it stale, 1.5 % from the index and the basis EMA)
    quiet_r = {r["ts"] - B: r["mark"]["perps_used"] for r in btc if 84_000 <= r["ts"] - B <= 85_000}
    assert quiet_r == {84_000: 3, 85_000: 3}
    assert {m["reason"] for m in marks} >= {None, "index"}
    assert any(m["last_funding_ts"] is not None for m in marks)


def test_the_changelog_names_every_revision_up_to_this_one() -> None:
    """CHANGELOG.md lists revisions PRICING_REVISION down to 1, each once: a bump comes with
    its entry."""
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    listed = [int(n) for n in re.findall(r"^- \*\*(\d+)\*\*:", text, flags=re.MULTILINE)]
    assert listed == list(range(PRICING_REVISION, 0, -1))


def test_the_pinned_tape_is_what_its_generator_writes() -> None:
    """make_pricing_tape.py is where a stretch of the tape is read and changed (its comments say
    what each one moves); a tape edited by hand, or a generator changed without writing the tape
    again, would pin reports that no longer match the stretches described."""
    spec = importlib.util.spec_from_file_location(
        "make_pricing_tape", FIXTURES / "make_pricing_tape.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = "".join(json.dumps(line) + "\n" for line in module.tape())
    assert written == (FIXTURES / "pricing.jsonl").read_text()
