"""Fan-out of round results to HTTP readers and stream subscribers.

The round loop calls `Hub.publish` once per round. Publishing only swaps the latest result and,
when someone is subscribed, schedules one fan-out callback on the event loop: the round loop is
never held up by readers, and a slow reader never holds up anyone.

Reports are expensive compared with the round itself (a report is built from the round's arrays,
about 10-20 us each), so they are materialized lazily: only for markets somebody asked for, at
most once per round, and encoded to JSON at most once per round. Every subscriber of a market
receives the very same `bytes` object.

A subscriber has a bounded buffer of encoded stream frames. When a round's frames do not fit,
the subscriber is dropped (`slow_consumer`) instead of growing the buffer: memory stays bounded
by the queue size whatever the client does.

Signed rounds arrive later than their reports (they are hashed and signed off the event loop):
`publish_signed` fans `{"type":"signed",...}` frames out to the subscriptions that asked for
them, which receive no report frames. A subscription may also filter: with a `deviation` it gets
a market only when the price moved by at least that fraction since the last frame it was sent
(or the status changed), with a `heartbeat_ms` at least that often; these subscriptions get
frames built for them alone, the others keep sharing one batch per market set.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import msgspec

from oracled.aggregate.book import Layout
from oracled.core import RoundResult
from oracled.errors import OracledError
from oracled.model import Report

if TYPE_CHECKING:
    from oracled.publish.signer import SignedRound

__all__ = [
    "DROP_SHUTDOWN",
    "DROP_SLOW",
    "Hub",
    "Subscription",
    "SubscriptionClosed",
]

DROP_SLOW = "slow_consumer"  # the buffer could not take a round's frames
DROP_SHUTDOWN = "shutdown"  # the hub was closed
_UNSUBSCRIBED = "unsubscribed"  # closed by its owner; not counted as a drop

_ENCODER = msgspec.json.Encoder()
_FRAME_HEAD = b'{"type":"report","data":'
_SIGNED_HEAD = b'{"type":"signed","data":'
_FRAME_TAIL = b"}"


class SubscriptionClosed(OracledError):
    """Raised by `Subscription.get` once the subscription is closed; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"subscription closed: {reason}")


class Subscription:
    """One consumer's bounded buffer of encoded stream frames (`{"type":"report",...}`).

    A deque plus one waiter future rather than an `asyncio.Queue`: a round's frames arrive as
    one batch (`deque.extend`, one wake-up), which keeps the fan-out cost per subscriber flat.
    The bound is `queue_size` frames, or one round's worth of this subscription's markets if
    that is larger (a round must always fit in an empty buffer).
    """

    __slots__ = (
        "_buf",
        "_closed_waiter",
        "_queue_size",
        "_sent",
        "_waiter",
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
        self.deviation: float | None = None  # filter: a relative move that warrants a frame
        self.heartbeat_ms: int | None = None  # filter: the longest gap between two frames
        self._sent: dict[str, tuple[float, int, int]] = {}  # market -> (price, status, ts) sent
        self._queue_size = queue_size
        self._buf: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed_waiter: asyncio.Future[str] | None = None

    @property
    def filtered(self) -> bool:
        return self.deviation is not None or self.heartbeat_ms is not None

    def _wants(self, market: str, price: float, status: int, ts: int) -> bool:
        """The filter: a frame for `market` now? Records it as sent when it says yes."""
        last = self._sent.get(market)
        send = (
            last is None
            or last[1] != status
            or (self.heartbeat_ms is not None and ts - last[2] >= self.heartbeat_ms)
            or (
                self.deviation is not None
                and price == price  # not NaN
                and (last[0] != last[0] or abs(price / last[0] - 1.0) >= self.deviation)
            )
        )
        if send:
            self._sent[market] = (price, status, ts)
        return send

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
        return self._buf.popleft()

    def get_nowait(self) -> bytes | None:
        """The next frame if one is buffered, else None (lets a writer drain a batch)."""
        return self._buf.popleft() if self._buf else None

    async def wait_closed(self) -> str:
        """Wait until the subscription is closed; return the reason."""
        if self.closed_reason is not None:
            return self.closed_reason
        if self._closed_waiter is None:
            self._closed_waiter = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._closed_waiter)

    def _offer(self, frames: tuple[bytes, ...]) -> bool:
        """Append a round's frames; False (nothing appended) if they do not fit."""
        if len(self._buf) + len(frames) > max(self._queue_size, len(frames)):
            return False
        self._buf.extend(frames)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def _close(self, reason: str) -> None:
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        self._buf.clear()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(reason)


class Hub:
    """Latest round result, lazily materialized reports, and the stream subscribers."""

    __slots__ = (
        "_batches",
        "_encoded",
        "_fanned",
        "_frames",
        "_index",
        "_latest",
        "_layout",
        "_queue_size",
        "_reports",
        "_scheduled",
        "_signed",
        "_signed_fanned",
        "_signed_frames",
        "_signed_scheduled",
        "_subs",
        "dropped_subscribers",
        "signer",
    )

    def __init__(self, queue_size: int = 256) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self._queue_size = queue_size
        self._latest: RoundResult | None = None
        self._layout: Layout | None = None
        self._index: dict[str, int] = {}
        self._reports: dict[int, Report] = {}
        self._encoded: dict[int, bytes] = {}
        self._frames: dict[int, bytes] = {}
        self._batches: dict[frozenset[str] | None, tuple[bytes, ...]] = {}
        self._subs: dict[Subscription, None] = {}  # insertion-ordered set
        self._scheduled = False
        self._fanned: RoundResult | None = None  # the last result delivered to subscribers
        self.signer: str | None = None  # the signing address, when rounds are signed
        self._signed: SignedRound | None = None
        self._signed_fanned: SignedRound | None = None
        self._signed_frames: dict[int, bytes] = {}
        self._signed_scheduled = False
        # Every reason present from the start: the metrics thread may iterate this while the
        # loop counts, which is safe as long as no key is ever added.
        self.dropped_subscribers: Counter[str] = Counter({DROP_SLOW: 0, DROP_SHUTDOWN: 0})

    # -- the round side ----------------------------------------------------------------------

    def publish(self, result: RoundResult) -> None:
        """Make `result` the latest; the fan-out to subscribers runs soon after, never inside."""
        if result.layout is not self._layout:
            self._layout = result.layout
            self._index = {m: i for i, m in enumerate(result.layout.markets)}
        self._latest = result
        # New dicts rather than clear(): the old round's objects are freed in one go, later.
        self._reports, self._encoded, self._frames, self._batches = {}, {}, {}, {}
        if not self._subs or self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): fan out right away
            self._fan_out()
            return
        self._scheduled = True
        loop.call_soon(self._fan_out)

    def _fan_out(self) -> None:
        self._scheduled = False
        result = self._latest
        if result is None or result is self._fanned:
            return
        self._fanned = result
        for sub in list(self._subs):
            if sub.signed:
                continue  # served by the signed fan-out
            if sub.filtered:
                frames = self._filtered(sub, result, self._frame)
            else:
                frames = self._batch(sub.markets)
            if frames and not sub._offer(frames):
                self._drop(sub, DROP_SLOW)

    def publish_signed(self, signed: SignedRound) -> None:
        """The signed form of a round; fanned out soon after to the subscriptions that want it."""
        if signed.result is None:
            raise ValueError("a signed round for the hub carries its RoundResult")
        self._signed = signed
        self._signed_frames = {}
        if self._signed_scheduled or not any(s.signed for s in self._subs):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._fan_out_signed()
            return
        self._signed_scheduled = True
        loop.call_soon(self._fan_out_signed)

    @property
    def latest_signed(self) -> SignedRound | None:
        return self._signed

    def _fan_out_signed(self) -> None:
        self._signed_scheduled = False
        signed = self._signed
        if signed is None or signed is self._signed_fanned:
            return
        self._signed_fanned = signed
        result = signed.result
        assert result is not None
        shared: dict[frozenset[str] | None, tuple[bytes, ...]] = {}  # unfiltered, by market set
        for sub in list(self._subs):
            if not sub.signed:
                continue
            if sub.filtered:
                frames = self._filtered(sub, result, self._signed_frame)
            elif sub.markets in shared:
                frames = shared[sub.markets]
            else:
                frames = shared[sub.markets] = self._filtered(
                    sub, result, self._signed_frame, force=True
                )
            if frames and not sub._offer(frames):
                self._drop(sub, DROP_SLOW)

    def _signed_frame(self, i: int) -> bytes:
        frame = self._signed_frames.get(i)
        if frame is None:
            assert self._signed is not None
            frame = b"".join((_SIGNED_HEAD, self._signed.envelope(i), _FRAME_TAIL))
            self._signed_frames[i] = frame
        return frame

    def _filtered(
        self,
        sub: Subscription,
        result: RoundResult,
        frame: Callable[[int], bytes],
        *,
        force: bool = False,
        markets: Iterable[str] | None = None,
    ) -> tuple[bytes, ...]:
        """Frames of `sub`'s markets (or `markets`) that its filter lets through this round."""
        index = (
            self._index
            if result.layout is self._layout
            else {m: i for i, m in enumerate(result.layout.markets)}
        )
        wanted = sub.markets if markets is None else markets
        if wanted is None:
            indices: list[int] = list(range(len(index)))
        else:
            indices = sorted(i for m in wanted if (i := index.get(m)) is not None)
        names, price, status = result.layout.markets, result.price, result.status
        return tuple(
            frame(i)
            for i in indices
            if force or sub._wants(names[i], float(price[i]), int(status[i]), result.ts)
        )

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
        return self._encode(i)

    def _report(self, i: int) -> Report:
        report = self._reports.get(i)
        if report is None:
            assert self._latest is not None
            report = self._reports[i] = self._latest.report(i)
        return report

    def _encode(self, i: int) -> bytes:
        data = self._encoded.get(i)
        if data is None:
            data = self._encoded[i] = _ENCODER.encode(self._report(i))
        return data

    def _frame(self, i: int) -> bytes:
        frame = self._frames.get(i)
        if frame is None:
            frame = self._frames[i] = b"".join((_FRAME_HEAD, self._encode(i), _FRAME_TAIL))
        return frame

    def _batch(self, markets: frozenset[str] | None) -> tuple[bytes, ...]:
        """This round's frames for a market set, in layout order; shared by equal sets."""
        batch = self._batches.get(markets)
        if batch is None:
            batch = self._batches[markets] = self._frames_for(markets)
        return batch

    def _frames_for(self, markets: Iterable[str] | None) -> tuple[bytes, ...]:
        if self._latest is None:
            return ()
        if markets is None:
            indices = list(range(len(self._index)))
        else:
            indices = sorted(i for m in markets if (i := self._index.get(m)) is not None)
        return tuple(self._frame(i) for i in indices)

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
    ) -> None:
        """Set a live subscription's frame kind and filters (None leaves an option unchanged).

        Switching to signed frames sends the latest signed frame of each subscribed market.
        """
        if sub not in self._subs:
            return
        if deviation is not None:
            sub.deviation = deviation
        if heartbeat_ms is not None:
            sub.heartbeat_ms = heartbeat_ms
        if signed is not None and signed != sub.signed:
            if signed and self.signer is None:
                raise ValueError("this daemon does not sign its rounds")
            sub.signed = signed
            sub._sent.clear()
            self._snapshot(sub, sub.markets)

    def subscribe(self, markets: frozenset[str] | None) -> Subscription:
        """A new subscription to `markets` (None = all); it starts with their latest reports."""
        sub = Subscription(markets, self._queue_size)
        self._subs[sub] = None
        self._snapshot(sub, markets)
        return sub

    def change(self, sub: Subscription, markets: frozenset[str] | None) -> None:
        """Replace the market set of a live subscription; newly added markets get a snapshot."""
        if sub not in self._subs:
            return
        before = sub.markets
        sub.markets = markets
        added: frozenset[str]
        if before is None:
            added = frozenset()  # it already receives every market
        elif markets is None:
            added = frozenset(m for m in self._index if m not in before)
        else:
            added = markets - before
        self._snapshot(sub, added)

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
        if sub.signed:
            signed = self._signed
            if signed is None or self._signed_scheduled or markets == frozenset():
                return
            assert signed.result is not None
            frames = self._filtered(sub, signed.result, self._signed_frame, markets=markets)
            if frames and not sub._offer(frames):
                self._drop(sub, DROP_SLOW)
            return
        # While a fan-out is pending it will deliver the latest round to the new set anyway;
        # sending a snapshot now as well would duplicate it.
        if self._latest is None or self._scheduled or markets == frozenset():
            return
        if sub.filtered:
            frames = self._filtered(sub, self._latest, self._frame, markets=markets)
        else:
            frames = self._frames_for(markets)
        if frames and not sub._offer(frames):
            self._drop(sub, DROP_SLOW)

    def _drop(self, sub: Subscription, reason: str) -> None:
        if self._subs.pop(sub, False) is None:
            self.dropped_subscribers[reason] += 1
            sub._close(reason)
