"""Replay: the tape contract of docs/contracts.md run through the real core."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from oracled.config import load_config
from oracled.errors import TapeError
from oracled.model import Quote
from oracled.replay import replay
from oracled.tape import TapeLineError, quote_to_line, read_tape

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tapes"
CONFIG = FIXTURES / "config.toml"
TAPE = FIXTURES / "small.jsonl"


def _run(tape: bytes) -> tuple[bytes, object]:
    out = io.BytesIO()
    stats = replay(load_config(CONFIG), io.BytesIO(tape).readlines(), out)
    return out.getvalue(), stats


def test_same_tape_and_config_give_byte_identical_output() -> None:
    """Two replays of one tape produce the same bytes."""
    first, _ = _run(TAPE.read_bytes())
    second, _ = _run(TAPE.read_bytes())
    assert first == second
    assert first.count(b"\n") == 16  # 8 rounds x 2 markets


def test_malformed_lines_are_reported_with_line_numbers_and_skipped() -> None:
    """Each bad line is named by its number and never enters a price."""
    _, stats = _run(TAPE.read_bytes())
    lines = {e.line: e.message for e in stats.errors}  # type: ignore[attr-defined]
    assert sorted(lines) == [5, 8, 10, 13, 15]
    assert "needs price" in lines[13]
    assert "not a decimal" in lines[15]
    assert "upper case" in lines[10]


@pytest.mark.parametrize("side", ["bid", "ask"])
def test_a_lone_bid_or_ask_record_wrote_is_read_and_dropped_by_the_core_as_live(
    side: str,
) -> None:
    """A quote with one side of its book and no price (a venue's emptied side), as `record`
    writes it, replays as the daemon took it: read, dropped by the core as `no_price`, the
    reports as without it. Before, the tape reader skipped the line as malformed ('needs price
    or both bid and ask'), so a recorded tape holding one never replayed cleanly (exit 3)."""
    base = TAPE.read_bytes().splitlines(keepends=True)
    lone = Quote(source="a", pair="BTC/USDT", recv_ts=1_700_000_002_503, **{side: 50_000.2})
    line = quote_to_line(lone)
    assert b'"price"' not in line and line.count(b"50000.2") == 1
    at = next(i for i, raw in enumerate(base) if b'"ts": 1700000002503' in raw)
    with_lone, stats = _run(b"".join([*base[:at], line, *base[at:]]))
    without, base_stats = _run(b"".join(base))
    assert with_lone == without
    assert stats.malformed == base_stats.malformed  # type: ignore[attr-defined]
    assert stats.drops[("a", "no_price")] == 1  # type: ignore[attr-defined]


def test_rounds_start_at_the_first_ts_rounded_up_and_quotes_join_at_or_after_their_ts() -> None:
    """The first round is at the first ts rounded up to the interval; a quote at 1500 joins 2000."""
    out, _ = _run(TAPE.read_bytes())
    reports = [msgspec.json.decode(line) for line in out.splitlines()]
    assert reports[0]["ts"] == 1_700_000_001_000
    assert {r["ts"] for r in reports} == {1_700_000_001_000 + k * 1000 for k in range(8)}
    first_btc = reports[1]
    assert first_btc["market"] == "BTC/USD"
    ages = {s["id"]: s["age_ms"] for s in first_btc["sources"]}
    assert ages == {"a": 505, "b": 497, "c": 496}  # venue_ts used for a, receive time for b and c


def test_a_routed_market_is_not_priced_before_its_leg_is_live() -> None:
    """BTC/USD from BTC/USDT waits for USDT/USD: reason route, price null, never 1.0; the
    blocked slots name the leg they wait for (`via`), the direct one has no `via` key."""
    out, _ = _run(TAPE.read_bytes())
    first_btc = msgspec.json.decode(out.splitlines()[1])
    assert first_btc["status"] == "unknown"
    assert "route" in first_btc["reasons"]
    assert first_btc["price"] is None
    assert [s["reason"] for s in first_btc["sources"][:2]] == ["route", "route"]
    assert [s.get("via", "-") for s in first_btc["sources"]] == ["USDT/USD", "USDT/USD", "-"]


def test_one_venue_spike_is_excluded_and_the_price_does_not_move() -> None:
    """Venue b prints 75000 once (the fifth round); it is excluded as an outlier and the
    price stays between the honest venues."""
    out, _ = _run(TAPE.read_bytes())
    btc = [msgspec.json.decode(x) for x in out.splitlines()][1::2]
    spiked = btc[4]
    assert spiked["status"] == "degraded"
    assert spiked["reasons"] == ["outlier", "thin"]
    b = next(s for s in spiked["sources"] if s["id"] == "b")
    assert (b["used"], b["reason"]) == (False, "outlier")
    honest = [float(s["value"]) for s in spiked["sources"] if s["used"]]
    assert min(honest) <= float(spiked["price"]) <= max(honest) < 50_100
    assert btc[3]["status"] == "active"


def test_nan_price_in_the_tape_is_dropped_by_the_core_not_published() -> None:
    """The last line carries NaN: counted as a core drop, prices stay finite."""
    out, stats = _run(TAPE.read_bytes())
    assert stats.dropped == 1  # type: ignore[attr-defined]
    assert stats.drops == {("c", "not_finite"): 1}  # type: ignore[attr-defined]
    assert b"NaN" not in out and b"nan" not in out


def test_a_price_below_resolution_replays_paused_and_byte_identical() -> None:
    """BTC/USD quoted at 0.014 for five rounds, then at 2.50: at two decimals 0.014 would be
    "0.01" (29 % off), so once its leg is live those rounds are not live either (reason
    resolution, no price) where they went out `active` at "0.01" before; 2.50 goes live after
    the resume streak. Two replays give the same bytes: the rule is arithmetic on the round's
    numbers."""
    lines = [b'{"format": "oracled-tape", "version": 1}']
    for k in range(10):
        ts = 1_700_000_000_500 + k * 1000
        btc = b"0.014" if k < 5 else b"2.50"
        lines += [
            b'{"ts": %d, "source": "%s", "pair": "USDT/USD", "price": "1.0"}' % (ts, s)
            for s in (b"a", b"b")
        ]
        lines += [
            b'{"ts": %d, "source": "%s", "pair": "%s", "price": "%s"}' % (ts, s, pair, btc)
            for s, pair in ((b"a", b"BTC/USDT"), (b"b", b"BTC/USDT"), (b"c", b"BTC/USD"))
        ]
    tape = b"\n".join(lines) + b"\n"
    first, _ = _run(tape)
    second, _ = _run(tape)
    assert first == second
    btc = [msgspec.json.decode(x) for x in first.splitlines()][1::2]
    assert (btc[0]["status"], btc[0]["reasons"]) == ("unknown", ["quorum", "route"])
    assert [(r["status"], r["reasons"], r["price"]) for r in btc[1:5]] == [
        ("unknown", ["resolution"], None)
    ] * 4
    assert [(r["status"], r["price"]) for r in btc[5:]] == [
        ("unknown", None), ("active", "2.50"), ("active", "2.50"), ("active", "2.50"),
        ("active", "2.50"),
    ]  # fmt: skip


def test_a_tape_without_a_header_is_refused() -> None:
    """The header line is required and versioned."""
    with pytest.raises(TapeError, match="header"):
        _run(b'{"ts": 1, "source": "a", "pair": "BTC/USD", "price": "1"}\n')
    with pytest.raises(TapeError, match="version 3"):
        _run(b'{"format": "oracled-tape", "version": 3}\n')
    with pytest.raises(TapeError, match="empty"):
        _run(b"")


def test_cli_replay_writes_the_file_and_exits_3_when_lines_were_skipped(tmp_path: Path) -> None:
    """`oracled replay --out` writes the library's bytes and reports the skipped lines."""
    out = tmp_path / "reports.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "oracled.cli",
            "replay",
            "--config",
            str(CONFIG),
            str(TAPE),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert f"{TAPE}:8: skipped" in proc.stderr
    assert out.read_bytes() == _run(TAPE.read_bytes())[0]
    # What the core dropped is named by source and reason, as the live daemon counts it.
    assert "dropped by the core: c not_finite 1" in proc.stderr


def test_a_line_older_than_the_one_before_is_reported_and_never_priced() -> None:
    """A tape is in receive-time order: a line stamped before its predecessor (here a wild
    USDT/USD print) is named by its number and skipped, so it cannot reach a round it was not
    in; blank lines (a trailing newline, a gap) are no error. Replay stays deterministic."""
    header = b'{"format": "oracled-tape", "version": 1}\n'
    quotes = [
        b'{"ts": 1700000000500, "source": "a", "pair": "USDT/USD", "price": "1.0001"}\n',
        b"\n",
        b'{"ts": 1700000000600, "source": "b", "pair": "USDT/USD", "price": "0.9999"}\n',
        b'{"ts": 1700000000599, "source": "a", "pair": "USDT/USD", "price": "2.0"}\n',
        b"   \n",
    ]
    out, stats = _run(header + b"".join(quotes))
    errors = [(e.line, e.message) for e in stats.errors]  # type: ignore[attr-defined]
    assert errors == [(5, "ts 1700000000599 is before the previous line")]
    assert stats.quotes == 2  # type: ignore[attr-defined]
    usdt = msgspec.json.decode(out.splitlines()[0])
    assert usdt["market"] == "USDT/USD"
    assert [(s["id"], s["value"], s["age_ms"]) for s in usdt["sources"]] == [
        ("a", "1.0001", 500),
        ("b", "0.9999", 400),
    ]


def test_a_tape_with_a_header_and_no_quotes_replays_to_nothing() -> None:
    """A recording that caught no quote (header, blank lines) is valid: no round is run, no
    report written, nothing reported as skipped."""
    out, stats = _run(b'{"format": "oracled-tape", "version": 1}\n\n')
    assert out == b""
    assert (stats.quotes, stats.rounds, stats.reports, stats.errors) == (0, 0, 0, [])  # type: ignore[attr-defined]


def test_a_ts_that_is_not_milliseconds_is_reported_and_skipped_not_replayed_to() -> None:
    """One line stamped in microseconds (or seconds, or a placeholder 0) among millisecond
    lines is named and skipped: replay does not run the billions of empty rounds up to it (it
    ran, writing reports, until stopped), and the millisecond lines after it still count."""
    header = b'{"format": "oracled-tape", "version": 1}\n'
    lines = [
        b'{"ts": 0, "source": "a", "pair": "USDT/USD", "price": "1"}\n',
        b'{"ts": 1700000000500, "source": "a", "pair": "USDT/USD", "price": "1.0001"}\n',
        b'{"ts": 1700000000600000, "source": "b", "pair": "USDT/USD", "price": "0.9999"}\n',
        b'{"ts": 1700000000, "source": "b", "pair": "USDT/USD", "price": "0.9999"}\n',
        b'{"ts": 1700000000700, "source": "b", "pair": "USDT/USD", "price": "0.9999"}\n',
    ]
    tape = header + b"".join(lines)
    errors: list[TapeLineError] = []
    quotes = list(read_tape(tape.splitlines(keepends=True), errors))
    assert [q.recv_ts for q in quotes] == [1700000000500, 1700000000700]
    assert [e.line for e in errors] == [2, 4, 5]
    assert "not milliseconds since the epoch" in errors[1].message
    _, stats = _run(tape)
    assert (stats.quotes, stats.rounds) == (2, 1)  # type: ignore[attr-defined]


def _numbered_less(out: bytes, rounds: list[int], by: int) -> bytes:
    """The reports of `out` (numbered `rounds`), each with its round `by` less."""
    return b"".join(
        line.replace(b'"round":%d,' % n, b'"round":%d,' % (n - by), 1) + b"\n"
        for line, n in zip(out.splitlines(), rounds, strict=True)
    )


def test_a_first_round_in_the_header_is_where_replay_numbers_its_rounds_from() -> None:
    """An audit tape's header names the daemon's round its first quote went into
    (`first_round`): replay numbers its rounds from there, so the reports equal the stored ones
    `round` included; the rest of every report is as without the key. A `first_round` below 1
    is a header that cannot be read."""
    plain, _ = _run(TAPE.read_bytes())
    header, rest = TAPE.read_bytes().split(b"\n", 1)
    numbered = header[:-1] + b', "first_round": 41}\n' + rest
    out, stats = _run(numbered)
    rounds = [msgspec.json.decode(line)["round"] for line in out.splitlines()]
    assert rounds[0] == 41 and rounds[-1] == 40 + stats.rounds  # type: ignore[attr-defined]
    assert _numbered_less(out, rounds, 40) == plain
    with pytest.raises(TapeError, match="first_round 0"):
        _run(header[:-1] + b', "first_round": 0}\n' + rest)


def test_a_first_round_with_its_time_numbers_the_round_at_that_time() -> None:
    """`first_round_ts` is the time of the round `first_round` numbers (an audit tape's first
    stored round with quotes, which may hold those of earlier rounds dropped from the trail):
    the replay's first round, two intervals before it, is numbered two less, and the rest of
    every report is as without the keys. `first_round_ts` alone names no round: unreadable."""
    plain, _ = _run(TAPE.read_bytes())
    header, rest = TAPE.read_bytes().split(b"\n", 1)
    first_tick = 1_700_000_001_000  # the first quote's ts rounded up to the 1 s interval
    numbered = header[:-1] + b', "first_round": 41, "first_round_ts": %d}\n' % (first_tick + 2000)
    out, stats = _run(numbered + rest)
    rounds = [msgspec.json.decode(line)["round"] for line in out.splitlines()]
    assert rounds[0] == 39 and rounds[-1] == 38 + stats.rounds  # type: ignore[attr-defined]
    assert _numbered_less(out, rounds, 38) == plain
    at_first, _ = _run(
        header[:-1] + b', "first_round": 41, "first_round_ts": %d}\n' % first_tick + rest
    )
    assert at_first == _run(header[:-1] + b', "first_round": 41}\n' + rest)[0]
    with pytest.raises(TapeError, match="first_round_ts without first_round"):
        _run(header[:-1] + b', "first_round_ts": %d}\n' % first_tick + rest)
