"""Which markets' quorum views signed mode must read again: those that can have changed.

`SignedMarginService` hands the engine the client's quorum view of a market whenever it
changes (docs/margin.md, *Signed mode*). Reading every market's view at every refresh (each
daemon's completed round, each tick) cost 18 to 35 µs a market, about 40 ms a refresh at 1,000
markets. A view is a function of the reports the client holds of the market, the identities'
cuts (`OracleClient.price`'s `upto`, for a market a round still coming in has reached), the
stalls and equivocations the client knows of, and the time, through the reports' ages only. So
a market is read again when:

* a frame of it was verified (of any daemon), except a live one beyond its identity's cut of a
  market read up to the cuts at its last read and now, whose plain view is known to be live
  (below): the view taken, made of the reports up to the cuts, is the same;
* a report of it passed its identity's cut as the cut moved (a round of it completed);
* it joined or left the markets of the rounds coming in (read up to the cuts, or not);
* `now` reached the time one of the reports its last view counted ages out (kept in a heap);
* and every market when a case is not bounded this way: at the first refresh, while a stall is
  held or on the refresh after one ended (a stalled identity's reports leave every market, and
  its reports that left may age out unseen), after an equivocation (it withdraws reports of
  every market), when the clock went back, and while a report held is ahead of it by more than
  the client's `max_future_ms` and on the refresh after (it is counted once the clock comes
  near).

A market of the rounds coming in is read twice, its plain view (whether it is live decides
which view is taken, and its reports' ages count) and its view up to the cuts; the plain one is
not read again while it is known to be live: read live, with only live frames of the market
verified since, until a report its last read counted ages out or every market is read. A live
report takes the place of an older one of its signer or adds an identity, so the plain view
keeps at least as many identities with a price, each until no earlier than before: it cannot
stop being live before the age-out its last read scheduled.

Pure bookkeeping: times are arguments, nothing is read here.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence, Set

__all__ = ["Reads"]


class Reads:
    """The markets whose quorum views can have changed since they were last read."""

    __slots__ = (
        "_ahead",
        "_arriving",
        "_beyond",
        "_dirty",
        "_early",
        "_full",
        "_heap",
        "_live",
        "_newest",
        "_order",
        "_queued",
        "_read_at",
        "_until",
        "max_age_ms",
        "max_future_ms",
    )

    def __init__(self, markets: Sequence[str], *, max_age_ms: int, max_future_ms: int) -> None:
        self.max_age_ms = max_age_ms
        self.max_future_ms = max_future_ms
        self._order = {m: i for i, m in enumerate(markets)}  # reads go in the engine's order
        self._full = True  # nothing read yet
        self._dirty: set[str] = set()  # markets of frames verified since the last read
        # Markets with only live frames beyond their identities' cuts since, their plain view
        # known live: read only if not read up to the cuts at the last refresh and now.
        self._ahead: set[str] = set()
        # Markets whose plain view is known to be live, with the oldest round time counted
        # at their last read (scheduled in the heap; a reason to read the plain view again).
        self._live: dict[str, int] = {}
        # Per identity, (round time, market) of frames verified beyond its cut: read again
        # when the cut passes them.
        self._beyond: dict[str, list[tuple[int, str]]] = {}
        self._arriving: Set[str] = frozenset()  # the rounds' markets coming in, last read
        self._read_at: int | None = None
        self._newest: int | None = None  # the newest round time verified
        self._early = False  # a report held was too far ahead at the last read: left out
        # Per market, when a report its last view counted ages out; the heap holds an entry at
        # or before it for each (`_queued`: the earliest), found without a scan.
        self._until: dict[str, int] = {}
        self._queued: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []

    def verified(
        self, market: str, identity: str, ts: int, cut: int | None, *, live: bool = False
    ) -> None:
        """A frame of `market` by `identity` for round time `ts` was verified (`cut`: the
        identity's last complete round time, None before its first; `live`: its status has a
        price, active or degraded)."""
        if market in self._order:
            beyond = cut is None or ts > cut
            if beyond:
                heapq.heappush(self._beyond.setdefault(identity, []), (ts, market))
            if not live:
                self._live.pop(market, None)
            if live and beyond and market in self._live:
                self._ahead.add(market)  # the view up to the cuts is the same
            else:
                self._dirty.add(market)
        if self._newest is None or ts > self._newest:
            self._newest = ts

    def cut(self, identity: str, ts: int) -> None:
        """`identity`'s cut moved to `ts`: its reports up to it count in the rounds' markets."""
        beyond = self._beyond.get(identity)
        while beyond and beyond[0][0] <= ts:
            self._dirty.add(heapq.heappop(beyond)[1])

    def everything(self) -> None:
        """Read every market at the next refresh."""
        self._full = True

    def due(self, now: int, arriving: Set[str]) -> Iterable[str]:
        """The markets to read at `now`, in the engine's order; `arriving`: the markets of the
        rounds still coming in (read up to the cuts)."""
        # A report ahead of `now` by more than max_future_ms (held from before the clock went
        # back) is left out of the views read now, and counts once the clock comes near, with
        # no frame: every market is read now and at the next refresh.
        early = self._newest is not None and self._newest - now > self.max_future_ms
        full = self._full or self._early or early or self._read_at is None or now < self._read_at
        self._read_at, self._full, self._early = now, False, early
        previous, self._arriving = self._arriving, arriving
        if full:
            self._dirty.clear()
            self._ahead.clear()
            self._live.clear()
            self._heap.clear()
            self._queued.clear()
            return self._order
        wanted, self._dirty = self._dirty, set()
        for market in self._ahead:
            if market not in arriving or market not in previous:
                wanted.add(market)  # its plain view was or is the one taken: read it
        self._ahead.clear()
        if arriving or previous:
            # Read up to the cuts now, or no longer: also where no report passed a cut as the
            # round completed (an identity read through two connections, its cut moved by the
            # other's round), so that `cut` did not name them.
            wanted.update(m for m in arriving ^ previous if m in self._order)
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, market = heapq.heappop(heap)
            if self._queued.get(market) != at:
                continue  # superseded by an earlier entry, taken already
            del self._queued[market]
            until = self._until.get(market)
            if until is None:
                continue
            if until <= now:
                wanted.add(market)  # its read schedules it again
                self._live.pop(market, None)  # a report of it aged out: liveness unknown
            else:
                self._queue(market, until)
        return sorted(wanted, key=self._order.__getitem__)

    def known_live(self, market: str) -> int | None:
        """If `market`'s plain view is known to be live, the oldest round time its last read
        counted (the view stays live at least until that one ages out); None when it must be
        read."""
        return self._live.get(market)

    def read(self, market: str, oldest: int | None, live: bool = False) -> None:
        """`market`'s view was read; `oldest`: the oldest round time among the reports it
        counted (with those of the view it was chosen over), None if none; `live`: its plain
        view was read and is live (with reports, so `oldest` is not None), or known to be."""
        if live and oldest is not None:
            self._live[market] = oldest
        else:
            self._live.pop(market, None)
        if oldest is None:
            self._until.pop(market, None)
            return
        until = oldest + self.max_age_ms + 1  # fresh while now - ts <= max_age_ms
        self._until[market] = until
        queued = self._queued.get(market)
        if queued is None or until < queued:
            self._queue(market, until)

    def _queue(self, market: str, at: int) -> None:
        heapq.heappush(self._heap, (at, market))
        self._queued[market] = at
