"""The quote tape (docs/contracts.md): read for `oracled replay`, written by `oracled record`.

Reading is lenient line by line and strict about the header: a malformed line is reported with
its line number and skipped, it never stops the replay and never enters a price. A line that
names a key twice is one: JSON readers differ on which value wins, and an audit artifact read
one way here and another way elsewhere would be no record. Prices travel as
decimal strings; a recorded float is written with `repr`, the shortest string that reads back to
the same float, so replaying a recording feeds the core exactly what the live run saw.

Version 2 adds a second kind of line, a manual command (an operator's pause or resume), since it
is an input of the core like the quotes: without it a replay differs from every round after a
pause. A command names the round the live core first applied it to, so that the replay applies
it before exactly that round. Version 1 tapes are read as before, byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shlex
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Literal, Protocol

import msgspec

from oracled.clock import FIRST_MS, LAST_MS
from oracled.errors import TapeError, shown
from oracled.model import Quote

if TYPE_CHECKING:  # pydantic loads only where a digest is made: `oracled --help` stays quick
    from oracled.config import Config

__all__ = [
    "DEFAULT_MAX_GAP_MS",
    "MAX_LINE_BYTES",
    "TAPE_FORMAT",
    "TAPE_VERSION",
    "ErrorSink",
    "ManualCommand",
    "TapeGapError",
    "TapeHeader",
    "TapeLineError",
    "command_to_line",
    "header_line",
    "line_ts",
    "max_gap_ms",
    "pricing_digest",
    "quote_to_line",
    "read_header",
    "read_tape",
    "tape_lines",
    "write_header",
]

TAPE_FORMAT = "oracled-tape"
#: The version written. Version 1 (quotes only) is still read, as before; a build that reads
#: version 1 only refuses a version 2 tape at its header, never replays it without its commands.
TAPE_VERSION = 2
_READ_VERSIONS = (1, 2)
#: Longest gap between consecutive quotes a replay runs through (a day: a restart, a weekend
#: without a venue); past it the replay stops (TapeGapError): a mistyped year in one `ts` would
#: otherwise be days of CPU and terabytes of reports.
DEFAULT_MAX_GAP_MS = 86_400_000
#: The longest tape line read, its newline included (a quote's line is about 200 bytes): a
#: longer one is skipped as malformed, and `tape_lines` holds no more of it than this. A file
#: without a newline (/dev/zero, a binary file given as the tape) was read whole as one line.
MAX_LINE_BYTES = 2**20
_TOO_LONG = f"longer than {MAX_LINE_BYTES // 2**20} MiB: no tape line is this long"


class TapeHeader(msgspec.Struct, forbid_unknown_fields=False):
    """Line 1. `config_sha256` (written by `record`, absent from older tapes and from tapes
    other tools write) is `pricing_digest` of the config the recording ran with. `first_round`
    (written by `oracled audit --tape`, and by `record` for the run that began the tape) is
    the daemon's number of a round: replay numbers its
    rounds from it, as the daemon did. With `first_round_ts`, the time of that round (ms), it
    numbers the round at time t `first_round + (t - first_round_ts) / interval`: the stored
    round that holds the first quotes is not always the one they went into (a round dropped
    from the trail passes its quotes to the next one stored); without it, `first_round` is the
    number of the tape's first round. `pricing_revision` (written by `record` and `oracled audit
    --tape`) is the revision of the rules the recorded reports were computed under: a replay of
    another revision says so, as of another config."""

    format: str
    version: int
    config_sha256: str | None = None
    #: The pricing revision (`oracled.core.PRICING_REVISION`) the recorded reports were computed
    #: under, and the version of the oracled that wrote the tape (None: an older writer).
    pricing_revision: int | None = None
    software_version: str | None = None
    first_round: int | None = None
    first_round_ts: int | None = None


class TapeGapError(TapeError):
    """Two consecutive quotes further apart than the replay's `max_gap_ms`: replaying the gap
    would run every round in it (a mistyped year is days of rounds). `ts` is the time of the
    quote after the gap."""

    def __init__(self, line: int, gap_ms: int, max_gap_ms: int, ts: int) -> None:
        self.line, self.gap_ms, self.max_gap_ms, self.ts = line, gap_ms, max_gap_ms, ts
        #: The gap and where the replay stopped, without what became of the output (a caller
        #: that writes none, such as `oracled stress`, says so itself).
        self.where = (
            f"line {line}: no quote for {_seconds(gap_ms)} s ({gap_ms / 3_600_000:.1f} h, from"
            f" {_iso(ts - gap_ms)} to {_iso(ts)}), more than --max-gap {_seconds(max_gap_ms)} s:"
            " stopped there"
        )
        super().__init__(
            f"{self.where}; the output ends with the round after the last quote before it"
        )

    def advice(
        self,
        interval_ms: int,
        markets: int,
        tape: str,
        config: str,
        *,
        audit: bool,
        header: TapeHeader | None = None,
    ) -> list[str]:
        """What the operator can do, as lines: a daemon that ran through the gap published a
        round every interval, which a replay gives only by running them all; one that was
        stopped numbered its rounds from 1 again with its gates afresh, which no replay of the
        whole tape gives (the part after the gap replays on its own). `header` is the tape's:
        one of `record` that numbers the rounds of the run that began the tape is written
        before the part without that numbering, which the restarted run did not continue."""
        rounds = self.gap_ms // interval_ms
        lift = -(-self.gap_ms // 1000)
        if audit:  # its header numbers the rounds of the first run: export the part again
            start = _iso(self.ts - interval_ms)
            part = f"oracled audit --db DB --tape OUT --from {start}, then replay OUT"
        else:
            path = "TAPE" if tape.startswith("<") else shlex.quote(tape)
            replay = f"oracled replay --config {shlex.quote(config)} -"
            head = f"head -n 1 {path}"
            if header is not None and header.first_round is not None:
                line = header_line(
                    config_sha256=header.config_sha256,
                    pricing_revision=header.pricing_revision,
                    software_version=header.software_version,
                )
                plain = line.decode().rstrip("\n")
                head = f"echo {shlex.quote(plain)}"
            part = f"({head}; tail -n +{self.line} {path}) | {replay}"
        return [
            f"if the daemon ran through the gap (a round every {interval_ms} ms without quotes):"
            f" --max-gap {lift} replays it as the daemon published it, {rounds:,} rounds"
            f" ({rounds * markets:,} reports) in the gap",
            "if it was stopped in the gap (its rounds after a restart are numbered from 1 again"
            " and its gates start afresh, which no replay of the whole tape gives): replay the"
            f" part from line {self.line} on by itself: {part}",
        ]


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.3f}".rstrip("0").rstrip(".")


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _Line(msgspec.Struct, forbid_unknown_fields=False):
    ts: int
    source: str
    pair: str
    kind: Literal["spot", "perp"] | None = None  # None: not sent, read as spot (`_keys_once`)
    price: str | None = None
    bid: str | None = None
    ask: str | None = None
    venue_ts: int | None = None
    volume: str | None = None
    flag: str | None = None
    block: int | None = None
    block_ts: int | None = None
    manual: str | None = None  # version 2: a manual command, not a quote


class _Command(msgspec.Struct, forbid_unknown_fields=False):
    """A manual command line (version 2), its keys in the contract's order: `ts` and `round`
    are the time and the daemon's number of the round the live core first applied it to."""

    ts: int
    manual: str
    market: str
    actor: str
    round: int


class _Manual(msgspec.Struct, forbid_unknown_fields=False):
    """What tells a line that is no quote for a command: its `manual` key."""

    manual: object = None


@dataclass(frozen=True, slots=True)
class ManualCommand:
    """An operator's pause (`paused`) or resume of `market`, first applied by the live core
    to the round at `ts` (ms), its round number `round`; `line` is where the tape holds it."""

    line: int
    ts: int
    round: int
    market: str
    paused: bool
    actor: str


@dataclass(frozen=True, slots=True)
class TapeLineError:
    line: int
    message: str


class ErrorSink(Protocol):
    """Where `read_tape` puts the lines it skips: a list, or anything that reports them."""

    def append(self, error: TapeLineError, /) -> None: ...


_header_decoder = msgspec.json.Decoder(TapeHeader)
_line_decoder = msgspec.json.Decoder(_Line)
_command_decoder = msgspec.json.Decoder(_Command)
_manual_decoder = msgspec.json.Decoder(_Manual)


# ASCII digits, an optional minus, fraction and exponent (`repr` writes `1e-07`), or NaN and the
# infinities `record` writes for such a live value (the core drops them). float() alone would
# also take `1_000`, spaces, a plus and digits of any script.
_DECIMAL = re.compile(
    r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|-?(?:nan|inf|infinity)",
    re.IGNORECASE,
)


def _decimal(text: str | None, key: str) -> float | None:
    if text is None:
        return None
    if _DECIMAL.fullmatch(text) is None:
        raise ValueError(f"{key}: not a decimal string: {text!r}")
    return float(text)


#: A report's `round` past this is not kept exact by JSON readers that hold numbers as doubles.
_ROUND_MAX = 2**53 - 1


def _to_quote(line: _Line) -> Quote:
    # A `ts` in seconds, in microseconds or a placeholder 0 is a malformed line: replay would
    # otherwise run an empty round every interval up to it (billions of rounds for a single line
    # in microseconds).
    if not FIRST_MS <= line.ts <= LAST_MS:
        raise ValueError(
            f"ts {line.ts} is not milliseconds since the epoch (13 digits, 2001 to 2286)"
        )
    if "/" not in line.pair or line.pair != line.pair.upper():
        raise ValueError(f"pair: must be BASE/QUOTE in upper case, got {line.pair!r}")
    if line.flag == "":
        raise ValueError("flag: empty (a flag names why the value is not a price)")
    price = _decimal(line.price, "price")
    bid = _decimal(line.bid, "bid")
    ask = _decimal(line.ask, "ask")
    # A lone bid or ask is read as `record` wrote it from what a venue sent: the core drops it
    # as `no_price`, as it did live (skipped as malformed, the replay's drops and exit status
    # differed from the daemon's). A line with no value at all is no quote any source makes.
    if price is None and bid is None and ask is None:
        raise ValueError("needs price, bid or ask")
    return Quote(
        source=line.source,
        pair=line.pair,
        kind=line.kind or "spot",
        recv_ts=line.ts,
        price=price,
        bid=bid,
        ask=ask,
        venue_ts=line.venue_ts,
        volume=_decimal(line.volume, "volume"),
        flag=line.flag,
        block=line.block,
        block_ts=line.block_ts,
    )


def _keys_once(raw: bytes | str, line: _Line) -> None:
    """ValueError if the line names a key twice (`"\\u0070rice"` is `"price"` too).

    The cheap look first: every `"` of a line opens or closes a string, or is one escaped in a
    string, so a line that holds the keys `line` has values for and no others, each once, with
    no `\\"` in a string, has 2 per key and 2 per string value, and any other line has more. One
    with more (a repeated key, an unknown one, a null, a quote in a string) is parsed again
    keeping every key."""
    strings = (
        (line.kind is not None)
        + (line.price is not None)
        + (line.bid is not None)
        + (line.ask is not None)
        + (line.volume is not None)
        + (line.flag is not None)
        + (line.manual is not None)
    )
    numbers = (line.venue_ts is not None) + (line.block is not None) + (line.block_ts is not None)
    marks = 10 + 4 * strings + 2 * numbers  # ts, source and pair: 10
    if raw.count(b'"' if isinstance(raw, bytes) else '"') != marks:  # type: ignore[arg-type]
        keys = _no_repeated_key(raw)
        if line.kind is None and "kind" in keys:  # None stands for "not sent" only
            raise ValueError("`kind` is null: `spot`, `perp`, or no `kind` (spot)")


def _no_repeated_key(raw: bytes | str) -> set[str]:
    """The keys of the line's object (not of one nested in it); ValueError naming one it holds
    twice."""
    # Numbers stay text: only the keys are wanted, and a long one would pass Python's limit.
    pairs = json.loads(raw, object_pairs_hook=list, parse_int=str, parse_float=str)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} appears twice: which of its values is meant is unknown")
        seen.add(key)
    return seen


def _to_command(number: int, line: _Command) -> ManualCommand:
    if not FIRST_MS <= line.ts <= LAST_MS:
        raise ValueError(
            f"ts {line.ts} is not milliseconds since the epoch (13 digits, 2001 to 2286)"
        )
    if line.manual not in ("pause", "resume"):
        raise ValueError(f"manual: must be pause or resume, got {line.manual!r}")
    if "/" not in line.market or line.market != line.market.upper():
        raise ValueError(f"market: must be BASE/QUOTE in upper case, got {line.market!r}")
    if not 1 <= line.round <= _ROUND_MAX:
        raise ValueError(f"round {line.round} is not a round number (1 to 2**53 - 1)")
    return ManualCommand(
        number, line.ts, line.round, line.market, line.manual == "pause", line.actor
    )


def _has_manual(raw: bytes | str) -> bool:
    try:
        return _manual_decoder.decode(raw).manual is not None
    except msgspec.DecodeError:  # not JSON: the quote's error says so
        return False


def _command(number: int, raw: bytes | str) -> ManualCommand:
    try:
        line = _command_decoder.decode(raw)
        _no_repeated_key(raw)  # a command is rare: no cheap look first
        return _to_command(number, line)
    except (msgspec.DecodeError, ValueError) as exc:
        raise ValueError(f"manual command: {exc}") from None


def tape_lines(file: IO[bytes]) -> Iterator[bytes]:
    """The lines of a tape file as they come, each cut after MAX_LINE_BYTES + 1 bytes: the rest
    of a longer line is read and dropped when the next line is asked for (`read_tape` reports
    the line as too long), so that no line is ever held whole."""
    while line := file.readline(MAX_LINE_BYTES + 1):
        yield line
        if len(line) > MAX_LINE_BYTES and line[-1:] != b"\n":
            while (rest := file.readline(MAX_LINE_BYTES)) and rest[-1:] != b"\n":
                pass


def read_header(first: bytes | str) -> TapeHeader:
    """Line 1 of a tape (a byte order mark before it is skipped); TapeError if it is none this
    build reads."""
    if len(first) > MAX_LINE_BYTES:
        raise TapeError(f"line 1: not an oracled-tape header ({_TOO_LONG})")
    if first[:3] == b"\xef\xbb\xbf" or first[:1] == "\ufeff":  # a byte order mark: RFC 8259
        first = first[3:] if isinstance(first, bytes) else first[1:]  # lets a reader skip it
    try:
        header = _header_decoder.decode(first)
        _no_repeated_key(first)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:  # not UTF-8; nested deep
        raise TapeError(f"line 1: not an oracled-tape header ({exc})") from None
    if header.format != TAPE_FORMAT or header.version not in _READ_VERSIONS:
        raise TapeError(
            f"line 1: unsupported tape {header.format!r} version {header.version}"
            f" (this build reads {TAPE_FORMAT!r} versions 1 and {TAPE_VERSION})"
        )
    if header.first_round is not None and header.first_round < 1:
        raise TapeError(f"line 1: first_round {header.first_round} is not a round number (1 up)")
    if header.first_round_ts is not None and header.first_round is None:
        raise TapeError("line 1: first_round_ts without first_round (the round it is the time of)")
    if header.first_round is not None and header.first_round > _ROUND_MAX:
        raise TapeError(
            f"line 1: first_round {header.first_round} is past 2**53 - 1 (the largest round"
            " number every JSON reader keeps exact)"
        )
    revision = header.pricing_revision
    if revision is not None and not 1 <= revision <= _ROUND_MAX:
        raise TapeError(
            f"line 1: pricing_revision {revision} is not a revision (an integer from 1 to"
            " 2**53 - 1)"
        )
    ts = header.first_round_ts
    if ts is not None and not FIRST_MS <= ts <= LAST_MS:
        raise TapeError(
            f"line 1: first_round_ts {ts} is not milliseconds since the epoch (13 digits, as a"
            " quote's ts): the replay would number its rounds from it"
        )
    return header


def read_tape(
    lines: Iterable[bytes | str],
    errors: ErrorSink,
    *,
    on_header: Callable[[TapeHeader], None] | None = None,
    max_gap_ms: int | None = None,
    on_command: Callable[[ManualCommand], None] | None = None,
    back_in_time: bool = False,
) -> Iterator[Quote]:
    """Yield the quotes of a tape in order; append every bad line to `errors` and skip it.

    `on_header` sees line 1 before any quote. With `max_gap_ms`, a quote further than that
    after the one before it raises TapeGapError instead of being yielded. A version 2 tape's
    manual commands go to `on_command` in their place among the quotes (before the next quote
    is yielded); without it each is reported as a line this reader does not apply.
    `back_in_time` yields a quote earlier than the one before it where it stands instead of
    skipping it: the audit trail stores the quotes in the order the daemon took them, and
    after its wall clock stepped back the daemon took such quotes (the gaps and the commands
    are still measured from the latest time)."""
    it = iter(lines)
    try:
        first = next(it)
    except StopIteration:
        raise TapeError("empty tape: the first line must be the oracled-tape header") from None
    header = read_header(first)
    if on_header is not None:
        on_header(header)
    commands = header.version >= 2
    last_ts = -math.inf
    for number, raw in enumerate(it, start=2):
        if len(raw) > MAX_LINE_BYTES:  # before strip: that would copy it
            errors.append(TapeLineError(number, _TOO_LONG))
            continue
        if not raw.strip():
            continue
        try:
            line = _line_decoder.decode(raw)
            _keys_once(raw, line)
            quote = _to_quote(line) if line.manual is None or not commands else None
        except (msgspec.DecodeError, ValueError, RecursionError) as exc:
            # a command has no source nor pair: the probe is only paid for lines that are no quote
            if not commands or isinstance(exc, RecursionError) or not _has_manual(raw):
                errors.append(TapeLineError(number, str(exc)))
                continue
            quote = None
        if quote is None:  # a manual command (version 2)
            try:
                command = _command(number, raw)
            except (ValueError, RecursionError) as exc:
                errors.append(TapeLineError(number, str(exc)))
                continue
            if command.ts < last_ts:  # its round ran before the quote above: too late for it
                message = f"manual command: ts {command.ts} is before the previous line"
                errors.append(TapeLineError(number, message))
            elif on_command is None:
                errors.append(TapeLineError(number, "manual command: this reader applies none"))
            else:
                on_command(command)
            continue
        if quote.recv_ts < last_ts:
            if back_in_time:
                yield quote
                continue
            errors.append(TapeLineError(number, f"ts {quote.recv_ts} is before the previous line"))
            continue
        if max_gap_ms and last_ts > -math.inf and quote.recv_ts - last_ts > max_gap_ms:
            raise TapeGapError(number, int(quote.recv_ts - last_ts), max_gap_ms, quote.recv_ts)
        last_ts = quote.recv_ts
        yield quote


def header_line(
    config_sha256: str | None = None,
    first_round: int | None = None,
    first_round_ts: int | None = None,
    *,
    pricing_revision: int | None = None,
    software_version: str | None = None,
) -> bytes:
    """Line 1; `record` adds the digest of its config (`pricing_digest`), `oracled audit --tape`
    the number and time of the stored round that holds its first quotes; both the pricing
    revision of the recorded reports and their own version."""
    header: dict[str, object] = {"format": TAPE_FORMAT, "version": TAPE_VERSION}
    if config_sha256 is not None:
        header["config_sha256"] = config_sha256
    if pricing_revision is not None:
        header["pricing_revision"] = pricing_revision
    if software_version is not None:
        header["software_version"] = software_version
    if first_round is not None:
        header["first_round"] = first_round
    if first_round_ts is not None:
        header["first_round_ts"] = first_round_ts
    return msgspec.json.encode(header) + b"\n"


def max_gap_ms(value: str) -> int | None:
    """`--max-gap SECONDS` of `replay` and `stress` (an argparse type): 0 is no limit."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{shown(value)}: not a number of seconds >= 0")
    return round(seconds * 1000) or None


def pricing_digest(cfg: Config) -> str:
    """SHA-256 (hex) of what in `cfg` decides the prices a replay computes: `[oracle]` but its
    pauses file, the markets, the routes and every slot's age limit (which an on-chain
    source's feeds set). URLs, the API, logging, signing and the sinks are left out, so the
    demo's rewritten config and a move to other hosts keep the digest."""
    from oracled.config import slot_max_age_ms

    body = {
        "oracle": cfg.oracle.model_dump(mode="json", exclude={"manual_pauses_file"}),
        "markets": [m.model_dump(mode="json") for m in cfg.markets],
        "routes": [r.model_dump(mode="json", by_alias=True) for r in cfg.routes],
        "slot_max_age_ms": [
            [slot_max_age_ms(cfg, m, ms) for ms in (*m.sources, *m.perp_sources)]
            for m in cfg.markets
        ],
    }
    return hashlib.sha256(msgspec.json.encode(body, order="sorted")).hexdigest()


class _QuoteLine(msgspec.Struct, omit_defaults=True):
    """A quote as a tape line: the contract's keys in its order, absent ones left out."""

    ts: int
    source: str
    pair: str
    kind: str = "spot"
    price: str | None = None
    bid: str | None = None
    ask: str | None = None
    volume: str | None = None
    venue_ts: int | None = None
    flag: str | None = None
    block: int | None = None  # on-chain quotes: the block they were read at, and its time
    block_ts: int | None = None


_LINE_ENCODER = msgspec.json.Encoder()


def quote_to_line(quote: Quote) -> bytes:
    """One tape line for a quote (ts is the receive time). Prices are written as the shortest
    decimal that reads back to the same float (`repr`)."""
    price, bid, ask, volume = quote.price, quote.bid, quote.ask, quote.volume
    line = _QuoteLine(
        quote.recv_ts,
        quote.source,
        quote.pair,
        quote.kind,
        None if price is None else repr(price),
        None if bid is None else repr(bid),
        None if ask is None else repr(ask),
        None if volume is None else repr(volume),
        quote.venue_ts,
        quote.flag,
        quote.block,
        None if quote.block is None else quote.block_ts,
    )
    return _LINE_ENCODER.encode(line) + b"\n"


def command_to_line(ts: int, round_no: int, market: str, paused: bool, actor: str) -> bytes:
    """One version 2 tape line for a manual command the live core first applied to the round
    numbered `round_no` at `ts`."""
    line = _Command(ts, "pause" if paused else "resume", market, actor, round_no)
    return _LINE_ENCODER.encode(line) + b"\n"


class _Ts(msgspec.Struct, forbid_unknown_fields=False):
    ts: int


_ts_decoder = msgspec.json.Decoder(_Ts)


def line_ts(line: bytes) -> int:
    """The `ts` of a line this build wrote (a quote's or a command's), to place a command among
    lines already written: msgspec.DecodeError if it has none."""
    return _ts_decoder.decode(line).ts


def write_header(out: IO[bytes]) -> None:
    out.write(header_line())
