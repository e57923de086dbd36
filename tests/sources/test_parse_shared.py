"""What every venue's decoder does alike, written once and run for each case of parse_cases.py.

Frames are handed to the adapter directly (no socket): each bad frame is dropped for the one
reason that names what is wrong with it and is never quoted, the simulator's whole garbage
catalogue has a stated reason, replies to requests we never sent are counted and blamed on no
symbol, a refusal that names no symbol splits its request instead of failing every symbol, a
refusal of one symbol fails it until an ack brings it back, and an older frame never overrides a
newer one on either decoding path, nor does a dropped bad frame move that order on; a locked
book (bid equal to ask) is a price, only a bid above the ask is crossed.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from parse_cases import (
    BAD_COUNTERS,
    CASES,
    LAX_NUMBERS,
    ODD_IDS,
    Harness,
    Numbers,
    ParseCase,
    open_harness,
)
from structlog.testing import capture_logs

from oracled.clock import ManualClock

BAD_FRAMES = [
    pytest.param(case, frame, reason, id=f"{case.id}-{i}")
    for case in CASES
    for i, (frame, reason) in enumerate(case.bad_frames())
]


@pytest.fixture
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness[Any]]:
    """A harness for the test's `case` parameter."""
    case: ParseCase[Any] = request.getfixturevalue("case")
    async with open_harness(case) as h:
        yield h


@pytest.mark.parametrize(("case", "frame", "reason"), BAD_FRAMES)
def test_bad_frame_is_dropped_for_its_reason_and_never_quoted(
    case: ParseCase[Any], frame: str | bytes, reason: str, harness: Harness[Any]
) -> None:
    """Broken JSON, wrong shapes, other channels, NaN/inf/zero/negative/crossed prices: one
    malformed frame, dropped for exactly its reason, no quote, nothing raised; a kept book is
    left as it was."""
    if case.prime is not None:
        case.prime(harness)
    before = list(harness.quotes)
    harness.source.on_message(frame, 2)
    assert harness.quotes == before
    assert harness.stats.malformed == 1
    assert harness.stats.dropped == {reason: 1}
    if case.settled is not None:
        case.settled(harness)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_whole_garbage_catalogue_has_a_reason(case: ParseCase[Any]) -> None:
    """Each frame the simulator can send as garbage has its reason above (or, where it does
    more than drop, a test in the venue's own file): a frame added to the catalogue without
    one fails here."""
    assert len(case.reasons) + case.covered_elsewhere == len(case.garbage)
    assert len(set(case.garbage)) == len(case.garbage)


UNSOLICITED = [c for c in CASES if c.unsolicited]


@pytest.mark.parametrize("case", UNSOLICITED, ids=[c.id for c in UNSOLICITED])
def test_replies_to_nothing_we_sent_are_counted_and_blamed_on_no_symbol(
    case: ParseCase[Any], harness: Harness[Any]
) -> None:
    """An ack for a request we never sent and an error about nothing of ours are counted
    (unsolicited, venue_error), never raised, never malformed, and fail no symbol."""
    for i, frame in enumerate(case.unsolicited):
        harness.source.on_message(frame, i + 1)
    assert harness.stats.dropped == {"unsolicited": 1, "venue_error": 1}
    assert harness.stats.failed_instruments == {}
    assert harness.stats.malformed == 0


@pytest.mark.parametrize("case", UNSOLICITED, ids=[c.id for c in UNSOLICITED])
def test_a_venue_repeating_errors_is_counted_each_time_and_logged_once_a_minute(
    case: ParseCase[Any], harness: Harness[Any]
) -> None:
    """A venue that sends an error about nothing of ours with every frame has each counted, but
    the log gets one line (then at most one a minute, saying how many it held back): a hostile
    or broken venue cannot fill the disk through the log."""
    with capture_logs() as logs:
        for i in range(200):
            for frame in case.unsolicited:
                harness.source.on_message(frame, i + 1)
    assert harness.stats.dropped["venue_error"] == 200
    warned = [e for e in logs if e["event"] == "venue error"]
    assert len(warned) == 1 and warned[0]["suppressed"] == 0


@pytest.mark.parametrize("case", UNSOLICITED, ids=[c.id for c in UNSOLICITED])
def test_the_next_minutes_venue_error_line_says_how_many_were_held_back(
    case: ParseCase[Any], harness: Harness[Any]
) -> None:
    """Venue errors held back within a minute of a line are not lost: the first one a minute
    later is logged with their number (`suppressed`, itself not included), and the count
    starts again from there."""
    clock = harness.source._clock
    assert isinstance(clock, ManualClock)
    error = case.unsolicited[-1]
    with capture_logs() as logs:
        for _ in range(5):  # one line, four held back
            harness.source.on_message(error, 1)
        clock.advance(59_999)
        harness.source.on_message(error, 1)  # still within the minute: held back
        clock.advance(1)
        harness.source.on_message(error, 1)  # a minute after the first line
        harness.source.on_message(error, 1)
    assert harness.stats.dropped["venue_error"] == 8
    assert [e["suppressed"] for e in logs if e["event"] == "venue error"] == [0, 5]


SPLIT = [c for c in CASES if c.split is not None]


@pytest.mark.parametrize("case", SPLIT, ids=[c.id for c in SPLIT])
def test_refusal_naming_no_symbol_splits_the_request(
    case: ParseCase[Any], harness: Harness[Any]
) -> None:
    """A refused request of two symbols, with no symbol named, is queued again one symbol per
    request; no symbol is marked failed."""
    assert case.split is not None
    source = harness.source
    source._pending[case.split_id] = case.split_symbols
    source.on_message(case.split, 1)
    queued = [source._outbox.get_nowait()[1] for _ in range(source._outbox.qsize())]
    assert queued == [(symbol,) for symbol in case.split_symbols]
    assert harness.stats.failed_instruments == {}
    assert harness.stats.malformed == 0


REFUSALS = [c for c in CASES if c.refusal is not None]


@pytest.mark.parametrize("case", REFUSALS, ids=[c.id for c in REFUSALS])
def test_refused_symbol_fails_alone_until_an_ack_clears_it(
    case: ParseCase[Any], harness: Harness[Any]
) -> None:
    """A refused one-symbol request fails that symbol, with the venue's words; a later ack for it
    clears the failure; each settles its request and neither counts as malformed."""
    refusal = case.refusal
    assert refusal is not None
    source, stats = harness.source, harness.stats
    source._pending[refusal.refusal_id] = (refusal.symbol,)
    source.on_message(refusal.refusal, 1)
    assert stats.failed_instruments == {refusal.symbol: refusal.says}
    assert source._pending == {}
    source._pending[refusal.ack_id] = (refusal.symbol,)
    source.on_message(refusal.ack, 2)
    assert stats.failed_instruments == {}
    assert source._pending == {}
    assert stats.malformed == 0 and source._outbox.qsize() == 0


PATHS = ("one_pass", "text")


def _on_path(case: ParseCase[Any], path: str, frame: str) -> str:
    """`frame` as the decoder of `path` reads it (the text path: moved off the one-pass one)."""
    if path == "one_pass":
        return frame
    assert case.text_path is not None
    moved = case.text_path(frame)
    assert moved != frame
    return moved


def _each_path(cases: list[ParseCase[Any]]) -> list[Any]:
    """(case, path) for every decoding path each of `cases` has."""
    return [
        pytest.param(case, path, id=f"{case.id}-{path}")
        for case in cases
        for path in PATHS[: 2 if case.text_path is not None else 1]
    ]


ORDERED = _each_path([c for c in CASES if c.order is not None])


@pytest.mark.parametrize(("case", "path"), ORDERED)
def test_older_frame_never_overrides_a_newer_one_on_either_path(
    case: ParseCase[Any], path: str, harness: Harness[Any]
) -> None:
    """After a newer frame of an instrument, an older one is dropped as stale, whichever decoder
    reads them: the text path keeps the order exactly as the one-pass decoder does."""
    assert case.order is not None
    older, newer = (_on_path(case, path, frame) for frame in case.order)
    recv = case.recv_ts
    harness.source.on_message(older, recv + 1)  # quoted: nothing came before it
    harness.source.on_message(newer, recv + 2)
    harness.source.on_message(older, recv + 3)  # late: never overrides the newer price
    assert [q.recv_ts for q in harness.quotes] == [recv + 1, recv + 2]
    assert harness.stats.dropped == {case.stale: 1}
    assert harness.stats.malformed == 0


POISONED = _each_path([c for c in CASES if c.order is not None and c.poisoned is not None])


@pytest.mark.parametrize(("case", "path"), POISONED)
def test_a_dropped_bad_price_does_not_move_the_order_on(
    case: ParseCase[Any], path: str, harness: Harness[Any]
) -> None:
    """A frame dropped for a zero bid, though stamped (or numbered) past every good one, leaves
    the bar where it was: later good frames are not taken for stale ones."""
    assert case.order is not None and case.poisoned is not None
    older, newer = case.order
    recv = case.recv_ts
    harness.source.on_message(_on_path(case, path, case.poisoned(newer)), recv + 1)
    assert harness.quotes == []
    assert harness.stats.dropped == {"non_positive": 1}
    harness.source.on_message(_on_path(case, path, older), recv + 2)
    assert [q.recv_ts for q in harness.quotes] == [recv + 2]
    assert harness.stats.dropped == {"non_positive": 1}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_locked_book_is_a_price_and_only_a_crossed_one_is_dropped(
    case: ParseCase[Any], harness: Harness[Any]
) -> None:
    """A bid equal to the ask (a locked book, a real state of a fast market) is quoted; only a
    bid above the ask is dropped as crossed."""
    symbol = harness.source.symbols[0]
    harness.source._quote(symbol, 100.0, 100.0, 1)
    harness.source._quote(symbol, 100.0, 99.99, 2)
    assert [(q.recv_ts, q.bid, q.ask) for q in harness.quotes] == [(1, 100.0, 100.0)]
    assert harness.stats.dropped == {"crossed": 1}


LOCKED = [c for c in CASES if c.locked is not None]


@pytest.mark.parametrize("case", LOCKED, ids=[c.id for c in LOCKED])
def test_a_locked_frame_is_quoted_not_taken_for_a_crossed_one(
    case: ParseCase[Any], harness: Harness[Any]
) -> None:
    """Where the venue's decoder judges crossing itself (a kept book, a confidence band), a frame
    with the bid equal to the ask is quoted as it is: not dropped as crossed (which would also
    resync Gemini's book)."""
    assert case.locked is not None
    harness.source.on_message(case.locked, case.recv_ts + 1)
    [quote] = harness.quotes
    assert quote.bid is not None and quote.bid == quote.ask
    assert harness.stats.dropped == {} and harness.stats.malformed == 0


def _numbered(stream: bool) -> list[Any]:
    """(case, number, text) for every venue number of every case's stream or REST sample."""
    return [
        pytest.param(case, number, text, id=f"{case.id}-{number}-{text!r}")
        for case in CASES
        if (sample := case.stream_numbers if stream else case.rest_numbers) is not None
        for number in sample.numbers
        for text in LAX_NUMBERS
    ]


def _sampled(stream: bool) -> list[Any]:
    cases = [c for c in CASES if (c.stream_numbers if stream else c.rest_numbers) is not None]
    return [pytest.param(c, id=c.id) for c in cases]


def _with(sample: Numbers, number: str, text: str) -> str:
    """The sample with `number` (found exactly once) written as the JSON string `text`."""
    assert sample.body.count(number) == 1
    return sample.body.replace(number, json.dumps(text))


def _poll(harness: Harness[Any], sample: Numbers, body: str) -> None:
    """`body` read as the answer to a poll for the sample's symbol."""
    assert harness.source.rest_request([sample.symbol]) is not None
    harness.source.on_rest(body.encode(), sample.recv_ts)


def test_every_lax_number_is_a_number_to_float() -> None:
    """The texts refused below are ones Python's float() reads: each would have been a price."""
    assert all(math.isfinite(float(text)) for text in LAX_NUMBERS)


@pytest.mark.parametrize("case", _sampled(stream=True))
def test_the_stream_number_sample_is_quoted_as_it_is(
    case: ParseCase[Any], harness: Harness[Any]
) -> None:
    """The stream sample below gives a quote unchanged: a refusal of its edited copies is the
    edited number's doing."""
    assert case.stream_numbers is not None
    if case.prime is not None:
        case.prime(harness)
    before = len(harness.quotes)
    harness.source.on_message(case.stream_numbers.body, case.stream_numbers.recv_ts + 1)
    assert len(harness.quotes) == before + 1
    assert harness.stats.malformed == 0


@pytest.mark.parametrize(("case", "number", "text"), _numbered(stream=True))
def test_a_stream_number_float_would_read_is_dropped_as_bad_number(
    case: ParseCase[Any], number: str, text: str, harness: Harness[Any]
) -> None:
    """A price (or size) written as text that float() reads but no venue sends ("1_000",
    " 12.5 ", "١٢٣", "+5", ...) is a `bad_number` drop on the stream, never a quote, whichever
    decoding path the frame takes."""
    sample = case.stream_numbers
    assert sample is not None
    if case.prime is not None:
        case.prime(harness)
    before = list(harness.quotes)
    harness.source.on_message(_with(sample, number, text), sample.recv_ts + 1)
    assert harness.quotes == before
    assert harness.stats.dropped == {"bad_number": 1} and harness.stats.malformed == 1


@pytest.mark.parametrize("case", _sampled(stream=False))
def test_the_rest_number_sample_is_quoted_as_it_is(
    case: ParseCase[Any], harness: Harness[Any]
) -> None:
    """The REST sample below gives a quote unchanged."""
    assert case.rest_numbers is not None
    _poll(harness, case.rest_numbers, case.rest_numbers.body)
    assert len(harness.quotes) == 1
    assert harness.stats.malformed == 0


@pytest.mark.parametrize(("case", "number", "text"), _numbered(stream=False))
def test_a_rest_number_float_would_read_is_dropped_as_bad_number(
    case: ParseCase[Any], number: str, text: str, harness: Harness[Any]
) -> None:
    """The same texts in a REST answer: a `bad_number` drop, never a quote."""
    sample = case.rest_numbers
    assert sample is not None
    _poll(harness, sample, _with(sample, number, text))
    assert harness.quotes == []
    assert harness.stats.dropped == {"bad_number": 1} and harness.stats.malformed == 1


@pytest.mark.parametrize("case", _sampled(stream=False))
def test_refused_numbers_are_logged_once_a_minute_with_their_text(
    case: ParseCase[Any], harness: Harness[Any]
) -> None:
    """Each refused number is counted; the log names the first one's text at once, then holds
    the rest back (at most a line a minute), so a venue printing every number wrongly is seen
    without flooding the log."""
    sample = case.rest_numbers
    assert sample is not None
    with capture_logs() as logs:
        for text in LAX_NUMBERS:
            _poll(harness, sample, _with(sample, sample.numbers[0], text))
    assert harness.stats.dropped == {"bad_number": len(LAX_NUMBERS)}
    lines = [e for e in logs if e["event"] == "number refused"]
    assert [(e["text"], e["suppressed"]) for e in lines] == [(repr(LAX_NUMBERS[0]), 0)]


COUNTED = [
    pytest.param(case, text, id=f"{case.id}-{text!r}")
    for case in CASES
    if case.counters is not None
    for text in BAD_COUNTERS
]


@pytest.mark.parametrize(("case", "text"), COUNTED)
def test_a_venue_time_or_sequence_int_would_read_drops_its_frame(
    case: ParseCase[Any], text: str, harness: Harness[Any]
) -> None:
    """A venue time or sequence number written as text that int() reads and no venue sends
    ("1_000", " 12", "+5", "١٢٣") or as no integer at all ("nan", "inf", "1e400", "") drops
    its frame as `bad_number`, never quoted, never raised; "-1" is older than anything and
    `out_of_order`. Before, int() read the first four: the frame was quoted with that time
    (Bitstamp, OKX) or ordered by that sequence (KuCoin)."""
    sample = case.counters
    assert sample is not None
    if case.prime is not None:
        case.prime(harness)
    before = list(harness.quotes)
    with capture_logs() as logs:
        harness.source.on_message(_with(sample, sample.numbers[0], text), sample.recv_ts + 1)
    assert harness.quotes == before
    if text == "-1":
        assert harness.stats.dropped == {"out_of_order": 1} and harness.stats.malformed == 0
        return
    assert harness.stats.dropped == {"bad_number": 1} and harness.stats.malformed == 1
    assert [e["text"] for e in logs if e["event"] == "number refused"] == [repr(text)]


@pytest.mark.parametrize("case", [c for c in CASES if c.counters is not None], ids=lambda c: c.id)
def test_the_counter_sample_is_quoted_as_it_is(case: ParseCase[Any], harness: Harness[Any]) -> None:
    """The sample above gives a quote unchanged: its drops are the edited number's doing."""
    sample = case.counters
    assert sample is not None
    if case.prime is not None:
        case.prime(harness)
    before = len(harness.quotes)
    harness.source.on_message(sample.body, sample.recv_ts + 1)
    assert len(harness.quotes) == before + 1 and harness.stats.malformed == 0


ECHOED = [
    pytest.param(case, text, id=f"{case.id}-{text!r}")
    for case in CASES
    if case.echo is not None
    for text in ODD_IDS
]


@pytest.mark.parametrize(("case", "text"), ECHOED)
def test_a_request_id_of_other_digits_answers_no_request(
    case: ParseCase[Any], text: str, harness: Harness[Any]
) -> None:
    """An ack whose id is digits str.isdigit() takes but no id of ours is written in (a
    superscript, Arabic-Indic or full-width one) answers no request of ours: counted as
    `unsolicited`, request 1 still waiting, nothing raised. Before, the superscript raised
    ValueError out of the read loop (int() refuses what isdigit() passed), and the others
    acknowledged request 1 (Bybit, KuCoin)."""
    assert case.echo is not None
    source = harness.source
    source._pending[1] = (source.symbols[0],)
    source.on_message(case.echo.replace("{id}", text), 1)
    assert source._pending == {1: (source.symbols[0],)}
    assert harness.stats.dropped == {"unsolicited": 1} and harness.stats.malformed == 0


def _latin1(sample: Numbers) -> bytes:
    """The sample with its first number's text ending in a Latin-1 byte: no UTF-8."""
    number = sample.numbers[0]
    return sample.body.encode().replace(number.encode(), number[:-1].encode() + b'\xe9"', 1)


@pytest.mark.parametrize("case", _sampled(stream=False))
def test_a_rest_answer_that_is_not_utf8_is_a_decode_drop_not_a_crash(
    case: ParseCase[Any], harness: Harness[Any]
) -> None:
    """A byte that is not UTF-8 inside a string makes the decoder raise UnicodeDecodeError, not
    DecodeError (it checks a string's text only as it builds it): the answer is a malformed
    `decode` drop. Before, the error left the poller and crashed the whole source, which a
    venue or a proxy answering in Latin-1 could do at every poll (found by test_adapter_fuzz)."""
    sample = case.rest_numbers
    assert sample is not None
    assert harness.source.rest_request([sample.symbol]) is not None
    harness.source._read_rest(_latin1(sample), sample.recv_ts)
    assert harness.quotes == []
    assert harness.stats.dropped == {"decode": 1} and harness.stats.malformed == 1


_NOT_UTF8 = b'{"code":"\xe9","retCode":1,"retMsg":"\xe9","msg":"\xe9","error":["\xe9"]}'
_TOO_DEEP = b'{"code":"1","retCode":1,"error":[],"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize("status", [200, 503])
@pytest.mark.parametrize("body", [_NOT_UTF8, _TOO_DEEP], ids=["not_utf8", "too_deep"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_a_rest_answer_no_decoder_reads_is_handed_on_by_fetch_never_raised(
    case: ParseCase[Any], body: bytes, status: int, aiohttp_server: Any
) -> None:
    """A venue's own look at each REST answer (OKX, Bybit and Kraken read an error code from
    every body) meets bytes no decoder reads: strings that are not UTF-8, or JSON nested past
    the decoder's depth. The answer goes on to be judged as any other (`on_rest` counts it);
    nothing is raised. Before, Kraken raised on both and OKX and Bybit on the first, which
    ended the poller and crashed the source."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, status=status, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    server = await aiohttp_server(app)
    async with open_harness(case) as h:
        got, _, _ = await h.source._fetch(str(server.make_url("/any")), {})
    assert got in (status, 400, 429)  # as the venue reads the status (a 400: split, 429: wait)
