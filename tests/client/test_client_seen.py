"""OracleClient remembers 64 round times per signer and market, compactly, deciding as before.

Found measuring a client of 3 daemons x 1,000 markets: it kept each of those reports whole, Merkle
proof and signature included, about 520 MB. Only the newest is kept whole now; the earlier ones
as `Kept` (a digest of the message, its leaf's values and round). These tests pin that shape and
the decisions it serves over more rounds than are remembered: the very same message again is a
duplicate and the same round written otherwise `replayed` at every remembered time, a time
forgotten is `reordered`, another leaf or another root at a remembered time is equivocation, and
a view up to an earlier round reads that round's report.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import msgspec
import pytest

from oracled.client import OracleClient, Rejection
from oracled.client_seen import SEEN_PER_KEY, Kept
from oracled.model import Status
from oracled.publish.signer import (
    MARK_MODE_CODES,
    Leaf,
    RoundSigner,
    SignedPrice,
    SignedRound,
    SigningKey,
)

KEY = SigningKey.from_hex("0x" + "61" * 32)
OTHER = SigningKey.from_hex("0x" + "62" * 32)
T0 = 1_700_000_000_000
INTERVAL = 250
MARKETS = [f"M{i:02d}/USD" for i in range(16)]  # a tree of 16 leaves: proofs of 4 hashes
PERP = MARKETS[1]  # a perpetual market: its leaf carries a mark
ROUNDS = SEEN_PER_KEY + 6
DECODE = msgspec.json.Decoder(SignedPrice).decode


def leaves(ts: int, number: int, *, twice: bool = False) -> tuple[Leaf, ...]:
    """A round of `MARKETS` at prices that move with `number` (every fifth round paused); with
    `twice`, the tree holds the first market a second time at another price (no daemon makes
    one; a stolen key can)."""
    status = Status.PAUSED if number % 5 == 0 else Status.ACTIVE
    out = [
        Leaf(m, ts, status, 10_000 + 10 * i + number, 3, -2)
        if m != PERP
        else Leaf(m, ts, status, 20_000 + number, 3, -2, 20_005 + number, MARK_MODE_CODES["perps"])
        for i, m in enumerate(MARKETS)
    ]
    if twice:
        first = out[0]
        out.append(Leaf(first.market, ts, first.status, first.price + 77, 3, -2))
    return tuple(out)


def ts_of(number: int) -> int:
    return T0 + number * INTERVAL


def signed_rounds(key: SigningKey, numbers: range, twice: int | None = None) -> list[SignedRound]:
    """`key`'s rounds `numbers`, round `twice` with its first market twice in the tree."""
    signer = RoundSigner(key, "test")
    return [signer.sign_leaves(ts_of(n), n, leaves(ts_of(n), n, twice=n == twice)) for n in numbers]


def frame(signed: SignedRound, i: int) -> bytes:
    return b'{"type":"signed","data":' + signed.envelope(i) + b"}"


def frames(signed: SignedRound) -> Iterator[bytes]:
    return (frame(signed, i) for i in range(len(MARKETS)))


def respelled(data: bytes, field: str) -> bytes:
    """The same signed message with one hash written in capitals (it still verifies)."""
    outer = msgspec.json.decode(data)
    inner = outer["data"]
    if field == "proof":
        inner["proof"][0] = "0x" + inner["proof"][0][2:].upper()
    else:
        inner[field] = "0x" + inner[field][2:].upper()
    return msgspec.json.encode(outer)


def reason(client: OracleClient, data: bytes) -> str:
    with pytest.raises(Rejection) as exc:
        client.feed(data)
    return exc.value.reason


def client_fed(rounds: list[SignedRound], **options: int) -> tuple[OracleClient, list[int]]:
    """A client fed every round as it comes (its clock 10 ms after each); and the clock."""
    now = [T0]
    client = OracleClient(
        {KEY.address, OTHER.address}, deployment="test", now_ms=lambda: now[0], **options
    )
    for signed in rounds:
        now[0] = max(now[0], signed.ts + 10)
        for data in frames(signed):
            client.feed(data)
    return client, now


def deep_size(obj: object, seen: set[int] | None = None) -> int:
    """Bytes of `obj` and of the strings, numbers, bytes and containers it holds."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, msgspec.Struct):
        children: tuple[object, ...] = msgspec.structs.astuple(obj)
    elif isinstance(obj, (list, tuple)):
        children = tuple(obj)
    else:
        children = ()
    return size + sum(deep_size(child, seen) for child in children)


def test_the_newest_message_is_kept_whole_and_the_earlier_without_their_proofs() -> None:
    """After more rounds than are remembered, each signer and market holds 64 round times: the
    newest as the message, the 63 before it as `Kept` entries made of strings, numbers and a
    digest only (no proof, no signature, no message): less than a quarter of a message each."""
    client, _ = client_fed(signed_rounds(KEY, range(1, ROUNDS + 1)))
    assert len(client._seen) == len(MARKETS)
    for (signer, market), seen in client._seen.items():
        assert (signer, market, seen.last.ts) == (KEY.address, market, ts_of(ROUNDS))
        assert isinstance(seen.last, SignedPrice) and len(seen.last.proof) == 4
        assert list(seen.earlier) == [ts_of(n) for n in range(ROUNDS - 63, ROUNDS)]
        for kept in seen.earlier.values():
            assert isinstance(kept, Kept)
            assert {type(v) for v in msgspec.structs.astuple(kept)} <= {str, int, bytes, type(None)}
            assert (
                kept.digest not in (seen.last.signature, seen.last.root) and len(kept.digest) == 16
            )
            assert deep_size(kept) * 4 < deep_size(seen.last)


def test_the_same_message_is_a_duplicate_and_respelled_replayed_at_any_remembered_time() -> None:
    """With reports counted for a minute: the very same message of the newest round or of an
    earlier remembered one is a duplicate (counted, no rejection); one of them with a hash in
    capitals (root, signature, a proof's hash) is `replayed`; a message of a time no longer
    remembered is `reordered`, written either way."""
    rounds = signed_rounds(KEY, range(1, ROUNDS + 1))
    client, _ = client_fed(rounds, max_age_ms=60_000)
    accepted = client.accepted
    oldest_kept = ROUNDS - SEEN_PER_KEY + 1
    for number in (ROUNDS, ROUNDS - 1, 30, oldest_kept):
        for i in (0, 1):  # a spot market and the perpetual
            data = frame(rounds[number - 1], i)
            client.feed(data)
            for field in ("root", "signature", "proof"):
                assert reason(client, respelled(data, field)) == "replayed"
    assert client.duplicates == 8 and client.rejected["replayed"] == 24
    for data in (frame(rounds[oldest_kept - 2], 0), respelled(frame(rounds[0], 0), "root")):
        assert reason(client, data) == "reordered"
    assert client.accepted == accepted and client.equivocated == {}


def test_a_remembered_message_again_is_a_duplicate_before_its_age_is_judged() -> None:
    """With reports counted for 5 s, an earlier round's very same message is still a duplicate
    (what came again changes nothing), and written otherwise it is `stale`, as before."""
    rounds = signed_rounds(KEY, range(1, ROUNDS + 1))
    client, _ = client_fed(rounds)
    data = frame(rounds[20], 3)
    client.feed(data)
    assert client.duplicates == 1
    assert reason(client, respelled(data, "root")) == "stale"


def test_another_leaf_of_a_market_at_an_earlier_remembered_round_is_equivocation() -> None:
    """Round 10's tree holds the first market twice; its second leaf comes after round 70. It is
    `equivocation` as it would be at once: counted, refused with every later report of the key
    for that time, the key's round 10 left out of views up to it. The evidence is the second
    message; the first, no longer kept whole (only the newest is), is None. The same at the
    newest round keeps both messages."""
    rounds = signed_rounds(KEY, range(1, ROUNDS + 1), twice=10)
    client, _ = client_fed(rounds, max_age_ms=60_000)
    upto = {KEY.address: ts_of(10)}
    assert client.price(MARKETS[2], upto=upto).reports[0].round == 10
    late = frame(rounds[9], len(MARKETS))  # the market's second leaf under round 10's root
    with pytest.raises(Rejection, match=f"another leaf of {MARKETS[0]}") as exc:
        client.feed(late)
    assert exc.value.reason == "equivocation"
    assert client.equivocated == {KEY.address: 1}
    (evidence,) = client.equivocations
    assert (evidence.signer, evidence.ts, evidence.first) == (KEY.address, ts_of(10), None)
    assert evidence.second == DECODE(rounds[9].envelope(len(MARKETS)))
    for data in (late, frame(rounds[9], 0), frame(rounds[9], 2)):
        assert reason(client, data) == "equivocation"
    assert client.price(MARKETS[2], upto=upto).reports == ()
    assert client.price(MARKETS[2]).reports[0].round == ROUNDS  # the newest still counts

    newest = signed_rounds(KEY, range(1, 2), twice=1)
    client, _ = client_fed(newest)
    assert reason(client, frame(newest[0], len(MARKETS))) == "equivocation"
    (evidence,) = client.equivocations
    assert evidence.first == DECODE(newest[0].envelope(0))


def test_another_round_at_an_earlier_remembered_time_is_equivocation_with_both_messages() -> None:
    """A second daemon on the key signs round 10's time again, another round: `equivocation`,
    the evidence both messages whole (the first the round's first the client accepted)."""
    rounds = signed_rounds(KEY, range(1, ROUNDS + 1))
    client, _ = client_fed(rounds)
    other = RoundSigner(KEY, "test").sign_leaves(ts_of(10), 99, leaves(ts_of(10), 99))
    assert reason(client, frame(other, 3)) == "equivocation"
    (evidence,) = client.equivocations
    assert evidence.first == DECODE(rounds[9].envelope(0))
    assert evidence.second == DECODE(other.envelope(3))


def test_a_view_up_to_an_earlier_round_is_the_view_a_client_fed_up_to_it_gives() -> None:
    """Two signers, 70 rounds: a view up to round 41 (and up to 42 for one, a paused round for
    the other) is, market by market, the plain view of a client fed only that far, at the same
    time: the earlier reports rebuilt from what is kept give the same prices, marks, rounds and
    statuses as the messages did."""
    mine = signed_rounds(KEY, range(1, ROUNDS + 1))
    theirs = signed_rounds(OTHER, range(1, ROUNDS + 1))
    both = [r for pair in zip(mine, theirs, strict=True) for r in pair]
    client, now = client_fed(both, max_age_ms=60_000)
    for a, b in ((41, 41), (42, 45)):
        upto = {KEY.address: ts_of(a), OTHER.address: ts_of(b)}
        partial, clock = client_fed(mine[:a] + theirs[:b], max_age_ms=60_000)
        clock[0] = now[0]
        for market in MARKETS:
            assert client.price(market, upto=upto) == partial.price(market)
        view = client.price(PERP, upto=upto)
        assert view.mark is not None and view.reports[0].round == a
