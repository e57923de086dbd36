"""Fan-out of round results to HTTP readers and stream subscribers.

The round loop calls `Hub.publish` once per round. Publishing only swaps the latest result and,
when someone is subscribed, schedules one fan-out callback on the event loop: the round loop is
never held up by readers, and a slow reader never holds up anyone.

Reports are encoded to JSON straight from the round's arrays (`ReportEncoder`, about 5 us a
market at 8 sources, no `Report` objects), lazily: only for markets somebody asked for, at most
once per round. Every subscriber of a market receives the very same `bytes` object. A fan-out
that has many markets to encode does it in slices, one per turn of the event loop, so that the
sources keep being read while it runs; the subscribers get the round once all of it is encoded.
A slice is `SLICE` markets while the encoder still makes their templates (a layout's first
round: the start, a reload; 20 to 45 us a market) and `WARM_SLICE` once it has them (about 5 us
a market): more turns only delay the round, the reads between them making the encoding dearer
(benchmarks/README.md, rounds 4 to 6).

A subscription may ask for batches (`batch`): one frame per round,
`{"type":"reports","round":...,"round_ts":...,"data":[...reports...]}`, instead of one frame per
report, which costs one WebSocket write and one read per round instead of one per market.

A subscriber has a bounded buffer of encoded stream frames. When a round's frames do not fit,
the subscriber is dropped (`slow_consumer`) instead of growing the buffer: memory stays bounded
by the queue size whatever the client does. The bound counts reports, so a batch of 1,000
reports weighs as much as 1,000 single frames.

Signed rounds arrive later than their reports (they are hashed and signed off the event loop):
`publish_signed` fans `{"type":"signed",...}` frames out to the subscriptions that asked for
them, which receive no report frames; they are encoded in slices of `SLICE` markets as the
reports are. A subscription may also filter: with a `deviation` it gets a market only when the
price (a perpetual market's mark too) moved by at least that fraction since the last frame it
was sent (or the status, or the mark's mode, changed), with a `heartbeat_ms` at least that
often; these subscriptions get frames built for them alone,
the others keep sharing one batch per market set (what a filter lets through is encoded in the
slices too). While no round is signed past the stall limit, the round loop running
(`signed_stalled`), the signed subscriptions are told with the signed `stalled` frame, which
also stands in for their snapshot until the next signed round. A notice to every subscription
(`tell`, the API's stall of the round loop) reaches the signed ones in its signed form.

A subscription starts with a snapshot: the latest frames of the markets it adds, or of all its
markets when it switches frame kind. A snapshot goes through the same slices (the first in the
subscribing turn) and is buffered once whole; one whose round is superseded meanwhile is dropped,
the newer round's fan-out sending those markets. Whatever the hub sends a subscription after
asking for a snapshot (another snapshot, a notice, an answer to the client) waits behind it, so
the client reads them in the order they were asked for, as when snapshots were sent at once.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from collections.abc import (
    Callable,
    Container,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from functools import partial
from itertools import repeat
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import msgspec

from oracled.aggregate.book import Layout
from oracled.bands import BAND_SLACK
from oracled.core import RoundResult
from oracled.errors import OracledError
from oracled.mark.engine import MarkRound
from oracled.model import Report
from oracled.publish.encode import ReportEncoder

if TYPE_CHECKING:
    from oracled.publish.signer import SignedRound

__all__ = [
    "DROP_BAD_FRAME",
    "DROP_PING_TIMEOUT",
    "DROP_SHUTDOWN",
    "DROP_SLOW",
    "MARKET_REMOVED",
    "SLICE",
    "WARM_SLICE",
    "Hub",
    "Subscription",
    "SubscriptionClosed",
]

DROP_SLOW = "slow_consumer"  # the buffer could not take a round's frames
DROP_SHUTDOWN = "shutdown"  # the hub was closed
DROP_BAD_FRAME = "bad_frame"  # the client sent a frame the server could not read
DROP_PING_TIMEOUT = "ping_timeout"  # the client stopped answering the server's pings
_UNSUBSCRIBED = "unsubscribed"  # closed by its owner; not counted as a drop
#: Error frame code: markets a subscription received were removed by a config reload.
MARKET_REMOVED = "market_removed"
_encode_frame = msgspec.json.Encoder().encode

_ENCODER = msgspec.json.Encoder()
_FRAME_HEAD = b'{"type":"report","data":'
_SIGNED_HEAD = b'{"type":"signed","data":'
_FRAME_TAIL = b"}"
_BATCH_HEAD = b'{"type":"reports","round":%d,"round_ts":%d,"data":['
_BATCH_TAIL = b"]}"
SLICE = 200  # markets encoded per turn of the event loop in a fan-out (about 1 ms)
#: Markets encoded per turn in a report fan-out whose markets all have templates (about 5 ms).
WARM_SLICE = 1000
_R = TypeVar("_R")  # the round a fan-out encodes: a RoundResult or a SignedRound
#: A market's mark as a filter compares it, (price, mode): NaN and 0 without one (a spot
#: market, an index not live, a mark out of its band); mode 1 made from the perpetuals, 2 not.
_Mark = tuple[float, int]
_NO_MARK: _Mark = (math.nan, 0)


def _moved(value: float, last: float, fraction: float) -> bool:
    """`value` moved by at least `fraction` of `last`, a move of exactly `fraction` included
    (BAND_SLACK): measured as |value / last - 1|, the division's rounding held back about half
    of such moves (1,001 after 1,000 at 0.1 %)."""
    return abs(value - last) * BAND_SLACK >= fraction * abs(last)


def _filter_marks(mark: MarkRound, count: int) -> list[_Mark]:
    """Each of `count` markets' mark as a filter compares it (`_Mark`), by layout position;
    from the round's arrays (its MODES place: 0 perps, 1 fallback, 2 none without a price),
    not its `MarkValues`, which would all be made for two fields."""
    marks = [_NO_MARK] * count
    for i, price, mode in zip(mark.markets, mark.price.tolist(), mark.modes.tolist(), strict=True):
        if mode != 2:
            marks[i] = (price, mode + 1)
    return marks


class SubscriptionClosed(OracledError):
    """Raised by `Subscription.get` once the subscription is closed; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"subscription closed: {reason}")


class Subscription:
    """One consumer's bounded buffer of encoded stream frames (`{"type":"report",...}`).

    A deque plus one waiter future rather than an `asyncio.Queue`: a round's frames arrive as
    one batch (`deque.extend`, one wake-up), which keeps the fan-out cost per subscriber flat.
    The bound is `queue_size` reports, or one round's worth of this subscription's markets if
    that is larger (a round must always fit in an empty buffer); a batch frame weighs the
    reports it carries.
    """

    __slots__ = (
        "_answered",
        "_buf",
        "_closed_waiter",
        "_load",
        "_queue_size",
        "_sent",
        "_taken",
        "_waiter",
        "_weights",
        "batch",
        "closed_reason",
        "deviation",
        "heartbeat_ms",
        "markets",
        "signed",
    )

    def __init__(self, markets: frozenset[str] | None, queue_size: int) -> None:
        self.markets = markets  # None = every market
        self.closed_reason: str | None = None
        self.signed = False  # signed frames instead of report frames
        self.batch = False  # one frame of all the round's reports instead of one per report
        self.deviation: float | None = None  # filter: a relative move that warrants a frame
        self.heartbeat_ms: int | None = None  # filter: the longest gap between two frames
        # market -> (price, status, ts, mark) of the last frame sent
        self._sent: dict[str, tuple[float, int, int, _Mark]] = {}
        self._queue_size = queue_size
        self._buf: deque[bytes] = deque()
        self._load = 0  # reports buffered (a batch frame counts its reports)
        self._weights: deque[int] | None = None  # per buffered frame, once a batch was offered
        self._waiter: asyncio.Future[None] | None = None
        self._closed_waiter: asyncio.Future[str] | None = None
        self._taken = 0  # frames taken by the writer since the start
        # An answer's place in the frame count and the future its request's reader awaits
        self._answered: tuple[int, asyncio.Future[None]] | None = None

    @property
    def filtered(self) -> bool:
        return self.deviation is not None or self.heartbeat_ms is not None

    def _wants(
        self, market: str, price: float, status: int, ts: int, mark: _Mark = _NO_MARK
    ) -> bool:
        """The filter: a frame for `market` now? Records it as sent when it says yes.

        Only a deviation holds frames back; a heartbeat is a floor ("at least this often"),
        so with a heartbeat alone every round passes.
        """
        send = self._passes(market, price, status, ts, mark)
        if send:
            self._sent[market] = (price, status, ts, mark)
        return send

    def _passes(
        self, market: str, price: float, status: int, ts: int, mark: _Mark = _NO_MARK
    ) -> bool:
        """The filter's answer for `market` now, not recorded. A perpetual market's mark counts
        as its price does: margin engines value positions at it, and it moves apart from the
        index (the perpetuals' basis) and changes mode (`fallback`) while the index stands."""
        last = self._sent.get(market)
        deviation = self.deviation
        return (
            last is None
            or last[1] != status
            or deviation is None
            or (self.heartbeat_ms is not None and ts - last[2] >= self.heartbeat_ms)
            or (
                price == price  # not NaN
                and (last[0] != last[0] or _moved(price, last[0], deviation))
            )
            or (
                last[3] is not mark  # both _NO_MARK: a spot market, or no mark then and now
                and (last[3][1] != mark[1] or _moved(mark[0], last[3][0], deviation))
            )
        )

    @property
    def pending(self) -> int:
        """Frames buffered and not yet taken by `get`."""
        return len(self._buf)

    @property
    def queue_size(self) -> int:
        return self._queue_size

    async def get(self) -> bytes:
        """The next frame; raises SubscriptionClosed once closed (pending frames are dropped)."""
        while not self._buf:
            if self.closed_reason is not None:
                raise SubscriptionClosed(self.closed_reason)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._take()

    def get_nowait(self) -> bytes | None:
        """The next frame if one is buffered, else None (lets a writer drain a batch)."""
        return self._take() if self._buf else None

    def _take(self) -> bytes:
        weights = self._weights
        self._load -= 1 if weights is None else weights.popleft()
        self._taken += 1
        answered = self._answered
        if answered is not None and self._taken >= answered[0]:
            self._answered = None
            if not answered[1].done():
                answered[1].set_result(None)
        return self._buf.popleft()

    async def _answer(self, frame: bytes) -> None:
        """Queue an answer to the client's request behind the frames buffered, and wait until
        the writer has taken it.

        An answer weighs nothing against the bound (it is no report: a full buffer must not
        drop a client for being told what it asked), and waiting for it is the reader's
        backpressure: one request is answered at a time, as a direct write of the answer did.
        """
        if self.closed_reason is not None:
            return
        if self._weights is None:
            self._weights = deque(repeat(1, len(self._buf)))
        self._weights.append(0)
        self._buf.append(frame)
        done = asyncio.get_running_loop().create_future()
        self._answered = (self._taken + len(self._buf), done)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        await done

    async def wait_closed(self) -> str:
        """Wait until the subscription is closed; return the reason."""
        if self.closed_reason is not None:
            return self.closed_reason
        if self._closed_waiter is None:
            self._closed_waiter = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._closed_waiter)

    def _offer(self, frames: Sequence[bytes], weight: int | None = None) -> bool:
        """Append a round's frames; False (nothing appended) if they do not fit.

        `weight`: `frames` is one batch frame carrying that many reports; 0, a notice, which
        always fits (a round may fill the buffer past its bound, and the notice must follow it).
        """
        n = len(frames) if weight is None else weight
        if n and self._load + n > max(self._queue_size, n):
            return False
        weights = self._weights
        if weight is not None and weights is None:
            weights = self._weights = deque(repeat(1, len(self._buf)))
        if weights is not None:
            if weight is None:
                weights.extend(repeat(1, len(frames)))
            else:
                weights.append(weight)
        self._buf.extend(frames)
        self._load += n
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def _close(self, reason: str) -> None:
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        self._buf.clear()
        self._load, self._weights = 0, None
        answered, self._answered = self._answered, None
        if answered is not None and not answered[1].done():
            answered[1].set_result(None)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(reason)


class _Ask(NamedTuple):
    """A snapshot asked for, as things stood then: the round and, for signed frames, its
    signature; the markets (None: all of the subscription's); the frames it goes out as."""

    result: RoundResult
    signed: SignedRound | None
    markets: frozenset[str] | None
    batch: bool
    filtered: bool


class _Snapshots:
    """One subscription's snapshots under way, in the order asked, and what waits behind them:
    notices (`Hub.tell`), and answers (`Hub.reply`) until `done`."""

    __slots__ = ("asks", "done", "notices")

    def __init__(self, first: _Ask) -> None:
        self.asks = deque((first,))
        self.notices: list[bytes] = []
        self.done: asyncio.Future[None] | None = None


class Hub:
    """Latest round result, lazily encoded reports, and the stream subscribers."""

    __slots__ = (
        "_encoded",
        "_encoder",
        "_fanned",
        "_frames",
        "_index",
        "_latest",
        "_layout",
        "_marks",
        "_queue_size",
        "_removed",
        "_reports",
        "_scheduled",
        "_shared",
        "_signed",
        "_signed_fanned",
        "_signed_frames",
        "_signed_scheduled",
        "_signed_stall",
        "_snapshots",
        "_subs",
        "_wants",
        "_warm_slice",
        "admin_refused",
        "api_closed",
        "bodies_gzipped",
        "bodies_gzipped_off_loop",
        "dropped_subscribers",
        "metrics_gzipped",
        "price_bodies_uncached",
        "signer",
    )

    def __init__(
        self,
        queue_size: int = 256,
        encoder: ReportEncoder | None = None,
        *,
        warm_slice: int = WARM_SLICE,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        if warm_slice < SLICE:
            raise ValueError(f"warm_slice must be >= {SLICE}")
        self._queue_size = queue_size
        self._warm_slice = warm_slice
        self._encoder = encoder or ReportEncoder()
        self._latest: RoundResult | None = None
        self._layout: Layout | None = None
        self._marks: tuple[RoundResult, list[_Mark]] | None = None  # `_marks_of`'s round
        self._index: dict[str, int] = {}
        # Markets reloads removed since the last layout change was published: one added back
        # before the next round is a new market all the same, and its subscribers are told.
        self._removed: set[str] = set()
        self._reports: dict[int, Report] = {}
        self._encoded: dict[int, bytes] = {}
        self._frames: dict[int, bytes] = {}
        # This round's frames per (market set, batch), shared by the subscriptions asking alike.
        self._shared: dict[tuple[frozenset[str] | None, bool], tuple[tuple[bytes, ...], int]] = {}
        self._subs: dict[Subscription, None] = {}  # insertion-ordered set
        self._scheduled = False  # a fan-out is pending or encoding its slices
        self._fanned: RoundResult | None = None  # the last result delivered to subscribers
        self.signer: str | None = None  # the signing address, when rounds are signed
        self._signed: SignedRound | None = None
        self._signed_fanned: SignedRound | None = None
        self._signed_frames: dict[int, bytes] = {}
        self._signed_scheduled = False
        self._signed_stall: bytes | None = None  # the signed `stalled` frame, while it lasts
        self._snapshots: dict[Subscription, _Snapshots] = {}  # snapshots under way, by subscriber
        self._wants = 0  # bumped when a subscription may want more (`_slices` asks again)
        # Every reason present from the start: the metrics thread may iterate this while the
        # loop counts, which is safe as long as no key is ever added.
        self.dropped_subscribers: Counter[str] = Counter(
            {DROP_SLOW: 0, DROP_SHUTDOWN: 0, DROP_BAD_FRAME: 0, DROP_PING_TIMEOUT: 0}
        )
        #: HTTP connections the API closed, by reason (oracled/api/limits.py); same rule.
        self.api_closed: Counter[str] = Counter(
            {
                "send_timeout": 0,
                "connection_limit": 0,
                "first_request_timeout": 0,
                "accept_limit": 0,
                "request_timeout": 0,
                "expect_refused": 0,
                "bad_request": 0,
                "request_too_long": 0,
                "host_refused": 0,
                "client_connection_limit": 0,
            }
        )
        #: Admin API requests refused, by reason (oracled/api/admin.py); same rule.
        self.admin_refused: Counter[str] = Counter(
            {"disabled": 0, "missing": 0, "malformed": 0, "wrong": 0, "locked_out": 0}
        )
        #: Price bodies the API served without keeping them for the round (oracled/api/read.py).
        self.price_bodies_uncached = 0
        #: Read answers the API gzipped (oracled/api/read.py): once per body, however many
        #: clients ask; of those, the ones large enough to be gzipped in a worker thread.
        self.bodies_gzipped = 0
        self.bodies_gzipped_off_loop = 0
        #: /metrics renders the API gzipped (oracled/api/ops.py), in the render's thread.
        self.metrics_gzipped = 0

    # -- the round side ----------------------------------------------------------------------

    def publish(self, result: RoundResult) -> None:
        """Make `result` the latest; the fan-out to subscribers runs soon after, never inside."""
        if result.layout is not self._layout:
            before = self._index
            self._layout = result.layout
            self._index = {m: i for i, m in enumerate(result.layout.markets)}
            self._tell_removed([m for m in before if m not in self._index or m in self._removed])
            self._removed = set()
            # A signed round of the old layout may list removed markets: no snapshot from it.
            self._signed, self._signed_frames = None, {}
        self._latest = result
        # New dicts rather than clear(): the old round's objects are freed in one go, later.
        self._reports, self._encoded, self._frames, self._shared = {}, {}, {}, {}
        if not self._subs or self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): fan out right away
            self._scheduled = True
            self._drive(self._fan_out(), sliced=False)
            return
        self._scheduled = True
        loop.call_soon(self._drive, self._fan_out(), True)

    def markets_removed(self, markets: Iterable[str]) -> None:
        """A reload removed `markets`: their subscribers are told with the first round of a new
        layout, even where a later reload added one back before that round."""
        self._removed.update(markets)

    def _tell_removed(self, removed: list[str]) -> None:
        """A reload removed `removed`: every subscription that received one of them gets an
        error frame naming them (code `market_removed`) instead of silence, and they leave its
        market set, so that nobody keeps a market's last report as if more were coming."""
        if not removed:
            return
        for sub in list(self._subs):
            gone = removed if sub.markets is None else [m for m in removed if m in sub.markets]
            if not gone:
                continue
            if sub.markets is not None:
                sub.markets = sub.markets.difference(gone)
            for market in gone:
                sub._sent.pop(market, None)
            frame = _encode_frame(
                {
                    "type": "error",
                    "code": MARKET_REMOVED,
                    "message": f"removed by a config reload, no more reports: {', '.join(gone)}",
                    "markets": gone,
                }
            )
            if not sub._offer([frame]):
                self._drop(sub, DROP_SLOW)

    def _drive(self, job: Iterator[None], sliced: bool) -> None:
        """Run a fan-out: each `yield` of `job` ends a turn of the event loop, so that the
        sources are read between two slices of it; without `sliced` it runs to its end now."""
        for _ in job:
            if sliced:
                asyncio.get_running_loop().call_soon(self._drive, job, sliced)
                return

    def _slices(
        self,
        latest: Callable[[], _R | None],
        todo: Callable[[_R], list[int]],
        encode: Callable[[list[int]], object],
        size: Callable[[_R, list[int]], int] | None = None,
    ) -> Generator[None, None, _R | None]:
        """Encode a fan-out's markets (`todo` of the round `latest()` returns), a slice per
        turn of the loop (a yield between two slices): `size(round, rest)` markets of the rest,
        else `SLICE`. When a newer round came in meanwhile it starts over on that one:
        subscribers get the latest round whole, never part of an older one. When a subscription
        came or changed in the turns between two slices it asks `todo` again: what that one
        wants is encoded in slices too, not all at delivery. Returns the round encoded, or None
        when there is none to fan out."""
        current = latest()
        busy = False  # a slice was encoded in this turn of the loop
        while current is not None:
            wants = self._wants
            markets = todo(current)
            if not markets:
                return current
            turned = False
            start = 0
            while start < len(markets):
                if busy:
                    yield
                    turned, busy = True, False
                    if latest() is not current:
                        break
                stop = start + (SLICE if size is None else size(current, markets[start:]))
                encode(markets[start:stop])
                busy, start = True, stop
            else:
                if not turned or self._wants == wants:  # nobody changed what is wanted
                    return current
                continue
            current = latest()
        return None

    def _fan_out(self) -> Iterator[None]:
        """Encode what the report subscriptions will be sent, slice by slice, then deliver."""
        try:
            result = yield from self._slices(
                self._unfanned, self._report_todo, self._ensure, self._report_slice
            )
        finally:  # also when encoding raised: else no fan-out would ever be scheduled again
            self._scheduled = False
        if result is not None:
            self._fanned = result
            self._deliver(result)

    def _unfanned(self) -> RoundResult | None:
        """The latest round, unless it was delivered already."""
        return None if self._latest is self._fanned else self._latest

    def _report_todo(self, result: RoundResult) -> list[int]:
        return self._todo(result, False, self._encoded)

    def _report_slice(self, result: RoundResult, rest: list[int]) -> int:
        """How many of `rest` to encode in this turn: `warm_slice` when the encoder has their
        templates already (a steady round, about 5 us a market), else `SLICE`."""
        warm = rest[: self._warm_slice]
        return len(warm) if self._encoder.warm(result, warm) else SLICE

    def _deliver(self, result: RoundResult) -> None:
        for sub in list(self._subs):
            if sub.signed:
                continue  # served by the signed fan-out
            if sub.filtered:
                frames, weight = self._frames_of(self._passing(sub, result), sub.batch)
            else:
                frames, weight = self._shared_frames(sub.markets, sub.batch)
            if frames and not sub._offer(frames, weight if sub.batch else None):
                self._drop(sub, DROP_SLOW)

    def publish_signed(self, signed: SignedRound) -> None:
        """The signed form of a round; fanned out soon after to the subscriptions that want it."""
        if signed.result is None:
            raise ValueError("a signed round for the hub carries its RoundResult")
        self._signed_stall = None  # a round signed: signed frames are current again
        if self._layout is not None and signed.result.layout is not self._layout:
            # Signed after a reload changed the markets (the signer thread was late): it may
            # carry markets the subscribers were told are removed. The next round is signed.
            return
        self._signed = signed
        self._signed_frames = {}
        if self._signed_scheduled or not any(s.signed for s in self._subs):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): fan out right away
            self._signed_scheduled = True
            self._drive(self._fan_out_signed(), sliced=False)
            return
        self._signed_scheduled = True
        loop.call_soon(self._drive, self._fan_out_signed(), True)

    @property
    def latest_signed(self) -> SignedRound | None:
        return self._signed

    def signed_stalled(self, frame: bytes) -> None:
        """No round has been signed for longer than the stall limit while the round loop runs
        (`oracled.publish.signstall`): the latest signed round is no current price. Every
        signed subscription of a market is told with `frame` (the signed `stalled` error
        frame), and until the next signed round a signed snapshot is that frame instead. Report
        subscriptions are not told: their rounds still come. Like `tell`, it weighs nothing,
        and a filter forgets what it sent: the next signed round's frames go out, moved or not."""
        self._signed_stall = frame
        for sub in self._subs:
            if sub.signed and sub.markets != frozenset():
                sub._sent.clear()  # the next signed round's frames go out, moved or not
                self._notify(sub, frame)

    @property
    def signed_stall(self) -> bytes | None:
        """The signed `stalled` frame while no round is signed past the limit, else None."""
        return self._signed_stall

    def _fan_out_signed(self) -> Iterator[None]:
        """Encode the signed frames the signed subscriptions will be sent, slice by slice, then
        deliver them: a round of 1,000 envelopes (about 5 ms) must not hold the loop at once."""
        try:
            signed = yield from self._slices(
                self._signed_unfanned, self._signed_todo, self._signed_frames_of
            )
        finally:  # also when encoding raised: else no signed fan-out would ever run again
            self._signed_scheduled = False
        if signed is not None:
            self._signed_fanned = signed
            self._deliver_signed(signed)

    def _signed_unfanned(self) -> SignedRound | None:
        """The latest signed round, unless it was delivered already."""
        return None if self._signed is self._signed_fanned else self._signed

    def _signed_todo(self, signed: SignedRound) -> list[int]:
        assert signed.result is not None
        return self._todo(signed.result, True, self._signed_frames)

    def _todo(self, result: RoundResult, signed: bool, done: Container[int]) -> list[int]:
        """Markets of `result` that the subscriptions of one kind (signed frames or reports)
        will be sent and that are not encoded yet (not in `done`), in layout order. A filter is
        asked without recording its answer (it answers again at delivery, which records): what
        it lets through is encoded in the slices too, and a round superseded before its
        delivery leaves the filter as it was."""
        wanted: set[int] = set()
        everything = len(result.layout.markets)
        for sub in self._subs:
            if len(wanted) == everything:
                break
            if sub.signed is signed:
                wanted.update(self._passing(sub, result, force=not sub.filtered, record=False))
        return sorted(i for i in wanted if i not in done)

    def _deliver_signed(self, signed: SignedRound) -> None:
        result = signed.result
        assert result is not None
        shared: dict[frozenset[str] | None, tuple[bytes, ...]] = {}  # unfiltered, by market set
        for sub in list(self._subs):
            if not sub.signed:
                continue
            if sub.filtered:
                frames = self._signed_frames_of(self._passing(sub, result))
            elif sub.markets in shared:
                frames = shared[sub.markets]
            else:
                frames = shared[sub.markets] = self._signed_frames_of(
                    self._passing(sub, result, force=True)
                )
            if frames and not sub._offer(frames):
                self._drop(sub, DROP_SLOW)

    def _signed_frames_of(self, indices: list[int]) -> tuple[bytes, ...]:
        return tuple(self._signed_frame(i) for i in indices)

    def _signed_frame(self, i: int) -> bytes:
        frame = self._signed_frames.get(i)
        if frame is None:
            assert self._signed is not None
            frame = b"".join((_SIGNED_HEAD, self._signed.envelope(i), _FRAME_TAIL))
            self._signed_frames[i] = frame
        return frame

    def _indices(self, result: RoundResult, markets: Iterable[str] | None) -> list[int]:
        """Layout positions of `markets` (None: all) in `result`, in layout order."""
        index = (
            self._index
            if result.layout is self._layout
            else {m: i for i, m in enumerate(result.layout.markets)}
        )
        if markets is None:
            return list(range(len(index)))
        return sorted(i for m in markets if (i := index.get(m)) is not None)

    def _passing(
        self,
        sub: Subscription,
        result: RoundResult,
        *,
        force: bool = False,
        markets: Iterable[str] | None = None,
        record: bool = True,
    ) -> list[int]:
        """Markets of `sub` (or `markets`) that its filter lets through this round (recorded
        as sent unless `record` is False)."""
        indices = self._indices(result, sub.markets if markets is None else markets)
        if force:
            return indices
        names, price, status = result.layout.markets, result.price, result.status
        wants, ts = sub._wants if record else sub._passes, result.ts
        if result.mark is None:  # no perpetual market
            return [i for i in indices if wants(names[i], float(price[i]), int(status[i]), ts)]
        marks = self._marks_of(result)
        return [
            i for i in indices if wants(names[i], float(price[i]), int(status[i]), ts, marks[i])
        ]

    def _marks_of(self, result: RoundResult) -> list[_Mark]:
        """`result`'s marks as filters compare them, made once per round for every filter."""
        kept = self._marks
        if kept is None or kept[0] is not result:
            assert result.mark is not None
            marks = _filter_marks(result.mark, len(result.layout.markets))
            kept = self._marks = (result, marks)
        return kept[1]

    # -- encoding ----------------------------------------------------------------------------

    def _ensure(self, indices: Sequence[int]) -> None:
        """Encode the latest reports of `indices` that are not encoded yet, in one pass."""
        encoded = self._encoded
        missing = [i for i in indices if i not in encoded]
        if missing:
            assert self._latest is not None
            encoded.update(zip(missing, self._encoder.encode(self._latest, missing), strict=True))

    def _frame(self, i: int) -> bytes:
        frame = self._frames.get(i)
        if frame is None:
            frame = self._frames[i] = b"".join((_FRAME_HEAD, self._encoded[i], _FRAME_TAIL))
        return frame

    def _frames_of(self, indices: list[int], batch: bool) -> tuple[tuple[bytes, ...], int]:
        """The frames of this round's reports of `indices` and how many reports they carry."""
        if not indices:
            return (), 0
        self._ensure(indices)
        if not batch:
            return tuple(self._frame(i) for i in indices), len(indices)
        latest = self._latest
        assert latest is not None
        encoded = self._encoded
        # One join, so the ~1 MB of a round of 1,000 reports is copied once: the head and tail
        # go onto the first and last report (copies of ~1 KB) instead of a second join around
        # the joined body (a second 1 MB buffer and copy a round).
        parts = [encoded[i] for i in indices]
        parts[0] = _BATCH_HEAD % (latest.round, latest.ts) + parts[0]
        parts[-1] += _BATCH_TAIL
        return (b",".join(parts),), len(indices)

    def _shared_frames(
        self, markets: frozenset[str] | None, batch: bool
    ) -> tuple[tuple[bytes, ...], int]:
        """This round's frames for a market set, in layout order; shared by equal requests."""
        key = (markets, batch)
        found = self._shared.get(key)
        if found is None:
            assert self._latest is not None
            found = self._shared[key] = self._frames_of(self._indices(self._latest, markets), batch)
        return found

    # -- the reader side ---------------------------------------------------------------------

    @property
    def latest_result(self) -> RoundResult | None:
        return self._latest

    @property
    def markets(self) -> tuple[str, ...]:
        """Markets of the latest result, in layout order (empty before the first round)."""
        return self._layout.markets if self._layout is not None else ()

    def report(self, market: str) -> Report | None:
        """The latest report of `market`, or None before the first round or if unknown."""
        i = self._index.get(market)
        if i is None or self._latest is None:
            return None
        return self._report(i)

    def reports(self) -> list[Report]:
        if self._latest is None:
            return []
        return [self._report(i) for i in range(len(self._index))]

    def encoded(self, market: str) -> bytes:
        """JSON of the latest report of `market`; LookupError if unknown or before a round."""
        i = self._index.get(market)
        if i is None or self._latest is None:
            raise LookupError(f"no report for market {market!r}")
        data = self._encoded.get(i)
        if data is None:
            # One market: the Report path costs less than the array encoder's set-up.
            data = self._encoded[i] = _ENCODER.encode(self._report(i))
        return data

    def encoded_many(self, markets: Iterable[str]) -> list[bytes]:
        """JSON of the latest reports of `markets` (encoded in one pass: cheaper than one by
        one); LookupError if one is unknown or before a round."""
        index = self._index
        if self._latest is None:
            raise LookupError("no round yet")
        try:
            indices = [index[m] for m in markets]
        except KeyError as exc:
            raise LookupError(f"no report for market {exc.args[0]!r}") from None
        self._ensure(indices)
        encoded = self._encoded
        return [encoded[i] for i in indices]

    def _report(self, i: int) -> Report:
        report = self._reports.get(i)
        if report is None:
            assert self._latest is not None
            report = self._reports[i] = self._latest.report(i)
        return report

    # -- subscriptions -----------------------------------------------------------------------

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def pending_frames(self) -> int:
        """Frames buffered across all subscribers (a gauge; bounded by subscribers x queue).

        Safe to read from the metrics thread: tuple() copies the keys without yielding the GIL.
        """
        return sum(sub.pending for sub in tuple(self._subs))

    def configure(
        self,
        sub: Subscription,
        *,
        signed: bool | None = None,
        deviation: float | None = None,
        heartbeat_ms: int | None = None,
        batch: bool | None = None,
        snapshot: bool = True,
    ) -> None:
        """Set a live subscription's frame kind and filters (None leaves an option unchanged).

        Switching to signed frames sends the latest signed frame of each subscribed market
        (not with `snapshot=False`: the API's word that the latest round is no current price).
        Batches are report frames only: ValueError for a subscription that would be both.
        """
        if sub not in self._subs:
            return
        self._wants += 1
        if (sub.signed if signed is None else signed) and (sub.batch if batch is None else batch):
            raise ValueError("batches carry report frames, not signed frames")
        if deviation is not None:
            sub.deviation = deviation
        if heartbeat_ms is not None:
            sub.heartbeat_ms = heartbeat_ms
        if batch is not None:
            sub.batch = batch
        if signed is not None and signed != sub.signed:
            if signed and self.signer is None:
                raise ValueError("this daemon does not sign its rounds")
            sub.signed = signed
            sub._sent.clear()
            if snapshot:
                self._snapshot(sub, sub.markets)

    def subscribe(self, markets: frozenset[str] | None, *, batch: bool = False) -> Subscription:
        """A new subscription to `markets` (None = all); it starts with their latest reports."""
        sub = Subscription(markets, self._queue_size)
        self._wants += 1
        sub.batch = batch
        self._subs[sub] = None
        self._snapshot(sub, markets)
        return sub

    def change(
        self, sub: Subscription, markets: frozenset[str] | None, *, snapshot: bool = True
    ) -> None:
        """Replace the market set of a live subscription; newly added markets get a snapshot
        (not with `snapshot=False`: they wait for the next round)."""
        if sub not in self._subs:
            return
        self._wants += 1
        before = sub.markets
        sub.markets = markets
        if markets is not None:  # a filter forgets what it sent of markets it no longer serves
            for market in [m for m in sub._sent if m not in markets]:
                del sub._sent[market]
        added: frozenset[str]
        if before is None:
            added = frozenset()  # it already receives every market
        elif markets is None:
            added = frozenset(m for m in self._index if m not in before)
        else:
            added = markets - before
        if snapshot:
            self._snapshot(sub, added)

    async def reply(self, sub: Subscription, frame: bytes) -> None:
        """Send an answer to the client's request (an ack, an error) behind the frames already
        buffered for it and its snapshots under way, so that the client reads them in the order
        of its requests; returns once the writer has taken it (at once for a subscription no
        longer served)."""
        while (under_way := self._snapshots.get(sub)) is not None:
            if under_way.done is None:
                under_way.done = asyncio.get_running_loop().create_future()
            await asyncio.shield(under_way.done)
        if sub in self._subs:
            await sub._answer(frame)

    def tell(self, frame: bytes, signed: bytes | None = None) -> None:
        """Queue a notice (an error frame that answers no request, such as the API's `stalled`)
        to every subscription of at least one market, behind the frames buffered for it: the
        signed subscriptions get `signed` instead when given (the notice in its signed form).
        Like an answer it weighs nothing against the bound: a notice never drops a subscriber.

        A filter forgets what it sent: a `deviation` subscriber told that its frames are no
        current price would otherwise hear nothing of a price that did not move once rounds
        come again, and could never tell the stall had ended. The next round's frame of each
        of its markets goes out, moved or not."""
        for sub in self._subs:
            if sub.markets != frozenset():
                sub._sent.clear()
                self._notify(sub, signed if sub.signed and signed is not None else frame)

    def _notify(self, sub: Subscription, frame: bytes) -> None:
        """Queue a notice to `sub`, behind its snapshots under way if any."""
        under_way = self._snapshots.get(sub)
        if under_way is not None:  # after the snapshots, as when they were sent at once
            under_way.notices.append(frame)
        else:
            sub._offer([frame], 0)

    def drop(self, sub: Subscription, reason: str) -> None:
        """Remove and close a subscription its connection lost for `reason`; counted, idempotent."""
        self._drop(sub, reason)

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove and close a subscription (not counted as a drop). Idempotent."""
        if self._subs.pop(sub, False) is None:  # values are None; False means "was not here"
            sub._close(_UNSUBSCRIBED)

    async def close(self) -> None:
        """Drop every subscriber (shutdown): their `get` raises SubscriptionClosed.

        The drop itself is immediate; the one yield lets the stream handlers start closing
        their connections (with 1001) before the caller tears the server down.
        """
        for sub in list(self._subs):
            self._drop(sub, DROP_SHUTDOWN)
        await asyncio.sleep(0)

    def _snapshot(self, sub: Subscription, markets: frozenset[str] | None) -> None:
        """Send `sub` the latest frames of `markets` (None: all of its markets), of the kind it
        asks for now. Encoded in slices as a fan-out is (the first in this turn: a snapshot of
        up to `SLICE` markets is buffered before this returns); one asked while another of
        `sub` is under way follows it."""
        if markets == frozenset():
            return
        # While a fan-out is pending it will deliver the latest round to the new set anyway;
        # sending a snapshot now as well would duplicate it.
        if sub.signed:
            if self._signed_stall is not None:  # no current signed round: the notice instead
                self._notify(sub, self._signed_stall)
                return
            signed = self._signed
            if signed is None or self._signed_scheduled:
                return
            assert signed.result is not None
            ask = _Ask(signed.result, signed, markets, sub.batch, sub.filtered)
        else:
            latest = self._latest
            if latest is None or self._scheduled:
                return
            ask = _Ask(latest, None, markets, sub.batch, sub.filtered)
        under_way = self._snapshots.get(sub)
        if under_way is not None:
            under_way.asks.append(ask)
            return
        self._snapshots[sub] = _Snapshots(ask)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): all of it right away
            self._drive(self._send_snapshots(sub), sliced=False)
            return
        self._drive(self._send_snapshots(sub), sliced=True)

    def _send_snapshots(self, sub: Subscription) -> Iterator[None]:
        """Encode `sub`'s snapshots, slice by slice, and buffer each once it is encoded whole,
        in the order asked; then the notices that came meanwhile. A snapshot whose round is no
        longer the latest is dropped (the newer round's fan-out sends its markets), as is one
        of a frame kind `sub` no longer asks for (the switch sent a snapshot of its own)."""
        under_way = self._snapshots[sub]
        try:
            while True:
                ask = under_way.asks[0]
                standing = yield from self._slices(
                    partial(self._standing, sub, ask),
                    partial(self._snapshot_todo, sub),
                    self._ensure if ask.signed is None else self._signed_frames_of,
                )
                if standing is not None:
                    self._offer_snapshot(sub, standing)
                under_way.asks.popleft()
                if not under_way.asks:
                    return
                yield  # the next one's first slice in a turn of its own
        finally:
            del self._snapshots[sub]
            if sub in self._subs:
                for notice in under_way.notices:
                    sub._offer([notice], 0)
            if under_way.done is not None and not under_way.done.done():
                under_way.done.set_result(None)

    def _standing(self, sub: Subscription, ask: _Ask) -> _Ask | None:
        """`ask` while it still stands: `sub` is served, asks for frames of that kind, and the
        round is still the latest."""
        if sub not in self._subs or sub.signed != (ask.signed is not None):
            return None
        if ask.signed is None:
            return ask if self._latest is ask.result else None
        return ask if self._signed is ask.signed else None

    def _snapshot_todo(self, sub: Subscription, ask: _Ask) -> list[int]:
        done = self._encoded if ask.signed is None else self._signed_frames
        return [i for i in self._asked(sub, ask, record=False) if i not in done]

    def _asked(self, sub: Subscription, ask: _Ask, *, record: bool) -> list[int]:
        """The markets of a snapshot that `sub` is sent (its filter's answer recorded only with
        `record`), less any it left since it was asked."""
        markets = ask.markets
        if sub.markets is not None:
            markets = sub.markets if markets is None else markets & sub.markets
        return self._passing(
            sub, ask.result, force=not ask.filtered, markets=markets, record=record
        )

    def _offer_snapshot(self, sub: Subscription, ask: _Ask) -> None:
        indices = self._asked(sub, ask, record=True)
        if ask.signed is not None:
            frames, weight = self._signed_frames_of(indices), None
        else:
            frames, reports = self._frames_of(indices, ask.batch)
            weight = reports if ask.batch else None
        if frames and not sub._offer(frames, weight):
            self._drop(sub, DROP_SLOW)

    def _drop(self, sub: Subscription, reason: str) -> None:
        if self._subs.pop(sub, False) is None:
            self.dropped_subscribers[reason] += 1
            sub._close(reason)
