"""`oracled.client_seen`: what `OracleClient` remembers of the reports it accepted.

Per signer and market, the last `SEEN_PER_KEY` round times accepted, for three uses:

- the very same message again is a duplicate (no rejection), the same round written otherwise
  is `replayed`, and a round older than the newest is `reordered`;
- another leaf of the market at one of those times, under the same signed root, is equivocation;
- a view up to an earlier round (`OracleClient.price(upto=...)`) reads the signer's report of it.

Only the newest message is kept whole: a conflict with it is shown with both messages. Each
earlier one is kept as a `Kept`: a digest of the message for the first use, its leaf's values
and round for the other two. Whole, with its Merkle proof (ten 66-character hashes at 1,000
markets) and signature, a report took about 2.4 kB of heap, a `Kept` about 300 bytes: 3 daemons
x 1,000 markets x 64 round times grew a client's RSS by 520 MB before, by 70 MB so
(benchmarks/README.md, `bench_margin_signed.py --memory`).
"""

from __future__ import annotations

import hashlib
import sys

import msgspec

from oracled.publish.signer import SignedPrice

__all__ = ["SEEN_PER_KEY", "Kept", "LeafValues", "Seen", "leaf_values", "message_digest"]

SEEN_PER_KEY = 64  # accepted round times remembered per (signer, market) to tell replays apart

_ENCODE = msgspec.json.Encoder().encode


def message_digest(sp: SignedPrice) -> bytes:
    """16 bytes that tell two messages apart as `==` does: the hash of the decoded message's
    encoding, which is one per value (its fields in order, strings and integers only)."""
    return hashlib.blake2b(_ENCODE(sp), digest_size=16).digest()


#: status, price, confidence, expo, mark, mark_mode (the mantissas as integers)
LeafValues = tuple[str, int, int, int, int | None, str | None]


def leaf_values(sp: SignedPrice) -> LeafValues:
    """What the leaf of a verified message says besides its market and time, one to one: the
    signer allows one spelling per number, so two messages of one market and time have equal
    leaves exactly when these are equal."""
    mark = None if sp.mark is None else int(sp.mark)
    return sp.status, int(sp.price), int(sp.confidence), sp.expo, mark, sp.mark_mode


class Kept(msgspec.Struct, frozen=True, gc=False):
    """An earlier accepted report of a signer and market, without its proof and signature.

    No cycles (strings, integers, bytes): left out of the garbage collector's scans, whose cost
    grows with every object it tracks.
    """

    digest: bytes  # `message_digest`: the same message again is a duplicate
    round: int
    status: str
    price: int  # the mantissas, at `expo`
    confidence: int
    expo: int
    mark: int | None
    mark_mode: str | None

    @classmethod
    def of(cls, sp: SignedPrice) -> Kept:
        status, price, confidence, expo, mark, mode = leaf_values(sp)
        return cls(
            message_digest(sp),
            sp.round,
            sys.intern(status),  # a handful of words, shared by every report
            price,
            confidence,
            expo,
            mark,
            None if mode is None else sys.intern(mode),
        )

    def leaf_values(self) -> LeafValues:
        return self.status, self.price, self.confidence, self.expo, self.mark, self.mark_mode


class Seen:
    """One signer's accepted reports of one market: the newest whole, the earlier as `Kept`.

    Round times accepted only grow (an older one is refused), so the earlier ones are in order
    in `earlier` and the oldest goes first when `SEEN_PER_KEY` are held.
    """

    __slots__ = ("earlier", "last")

    def __init__(self, sp: SignedPrice) -> None:
        self.last = sp
        self.earlier: dict[int, Kept] = {}

    @property
    def latest(self) -> int:
        return self.last.ts

    def add(self, sp: SignedPrice) -> None:
        """`sp` accepted: the newest now (its time is after every one held)."""
        earlier = self.earlier
        if len(earlier) >= SEEN_PER_KEY - 1:
            del earlier[next(iter(earlier))]
        earlier[self.last.ts] = Kept.of(self.last)
        self.last = sp

    def holds(self, ts: int) -> bool:
        """A report of round time `ts` was accepted (among the last `SEEN_PER_KEY`)."""
        return ts == self.last.ts or ts in self.earlier

    def is_duplicate(self, sp: SignedPrice) -> bool:
        """`sp` is the very message accepted at its time (not merely the same round)."""
        if sp.ts == self.last.ts:
            return sp == self.last
        kept = self.earlier.get(sp.ts)
        return kept is not None and kept.digest == message_digest(sp)

    def other_leaf(self, sp: SignedPrice) -> bool:
        """A report of `sp`'s time was accepted with another leaf than `sp`'s."""
        if sp.ts == self.last.ts:
            return self.last.leaf() != sp.leaf()
        kept = self.earlier.get(sp.ts)
        return kept is not None and kept.leaf_values() != leaf_values(sp)

    def message(self, ts: int) -> SignedPrice | None:
        """The whole message accepted at `ts`, while it is the newest (None after)."""
        return self.last if ts == self.last.ts else None

    def upto(self, limit: int) -> tuple[int, Kept] | None:
        """The newest earlier report at or before `limit`, with its time (None if none)."""
        for ts, kept in reversed(self.earlier.items()):
            if ts <= limit:
                return ts, kept
        return None
