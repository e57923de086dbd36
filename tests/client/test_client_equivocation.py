"""OracleClient: one key signing two different rounds for one round time is caught.

Two real RoundSigners on one key, each over its own core (replicas given one key whose views
differ, or a stolen key): both rounds verify, so only the client's memory of what the key signed
for that time can tell. The second is refused as `equivocation`, the first withdrawn, and both
are kept as evidence.
"""

from __future__ import annotations

import msgspec
import pytest
from publish_rig import INTERVAL, Rounds, make_config
from structlog.testing import capture_logs

from oracled.client import OracleClient, Rejection
from oracled.publish.signer import Leaf, RoundSigner, SignedPrice, SignedRound, SigningKey

SHARED = SigningKey.from_hex("0x" + "51" * 32)  # the key two daemons were both given
HONEST = SigningKey.from_hex("0x" + "52" * 32)
ALLOWED = {SHARED.address, HONEST.address}


def replica(key: SigningKey, rounds: int = 1, **moves: float) -> list[SignedRound]:
    """`rounds` rounds of a daemon of its own core, signed with `key` (BTC_USD=1.01: its
    BTC/USD quotes 1 % apart from the others')."""
    core = Rounds(make_config())
    signer = RoundSigner(key, "test")
    return [signer.sign(core.step(**moves)) for _ in range(rounds)]


def frame(signed: SignedRound, i: int) -> bytes:
    return b'{"type":"signed","data":' + signed.envelope(i) + b"}"


def reason(client: OracleClient, data: bytes) -> str:
    with pytest.raises(Rejection) as exc:
        client.feed(data)
    return exc.value.reason


def client_at(ts: int) -> OracleClient:
    return OracleClient(ALLOWED, deployment="test", now_ms=lambda: ts + 10)


def test_two_rounds_one_key_signed_for_one_time_are_refused_and_the_first_withdrawn() -> None:
    """Replica A's BTC/USD is accepted; replica B's, signed with the same key for the same round
    time at another price, is `equivocation`: A's report is withdrawn (the other signer alone
    makes the price), every report of that key for that time is refused from then on, it is
    counted once per time in `equivocated` with both messages in `equivocations`, and logged;
    the key's next round counts again."""
    a_first, a_next = replica(SHARED, 2)
    (b,) = replica(SHARED, BTC_USD=1.01)
    (honest,) = replica(HONEST)
    assert a_first.ts == b.ts == honest.ts and a_first.root != b.root
    client = client_at(a_next.ts)
    client.feed(frame(a_first, 0))
    client.feed(frame(honest, 0))
    assert client.price("BTC/USD").signers == tuple(sorted(ALLOWED))
    with capture_logs() as logs:
        assert reason(client, frame(b, 0)) == "equivocation"
    view = client.price("BTC/USD")
    assert view.status == "active" and view.signers == (HONEST.address,)
    assert client.equivocated == {SHARED.address: 1}
    (evidence,) = client.equivocations
    decode = msgspec.json.Decoder(SignedPrice).decode
    assert (evidence.signer, evidence.ts) == (SHARED.address, b.ts)
    assert (evidence.first, evidence.second) == (decode(a_first.envelope(0)), decode(b.envelope(0)))
    (line,) = [e for e in logs if e["event"] == "client rejected"]
    assert (line["reason"], line["signer"]) == ("equivocation", SHARED.address)
    # Either replica's reports of that time, even one never seen (ETH/USD) or the first again.
    for again in (frame(a_first, 1), frame(b, 1), frame(a_first, 0), frame(b, 0)):
        assert reason(client, again) == "equivocation"
    assert client.rejected["equivocation"] == 5 and client.equivocated == {SHARED.address: 1}
    assert client.markets == ["BTC/USD"] and client.accepted == 2
    client.feed(frame(a_next, 0))  # the next round time: this key counts again
    assert client.price("BTC/USD").signers == tuple(sorted(ALLOWED))
    assert client.price("BTC/USD").ts == a_first.ts + INTERVAL


def test_another_root_with_the_same_leaf_of_the_market_is_equivocation() -> None:
    """The two replicas agree on BTC/USD and differ on SOL/USD only: BTC/USD's leaf is the same,
    the signed roots are not, and a key signs one round per time: `equivocation`."""
    (a,) = replica(SHARED)
    (b,) = replica(SHARED, SOL_USD=1.01)
    assert a.leaves[0] == b.leaves[0] and a.root != b.root
    client = client_at(a.ts)
    client.feed(frame(a, 0))
    with pytest.raises(Rejection, match=f"root 0x{b.root.hex()}, after round 1") as exc:
        client.feed(frame(b, 0))
    assert exc.value.reason == "equivocation"
    assert client.price("BTC/USD").status == "unknown"


def test_two_leaves_of_one_market_under_one_signed_root_are_equivocation() -> None:
    """A round whose tree holds BTC/USD twice at two prices (no daemon makes one; a stolen key
    can) proves both: the second leaf of the market under the same root is `equivocation`."""
    (honest,) = replica(SHARED)
    btc = honest.leaves[0]
    other = Leaf(btc.market, btc.ts, btc.status, btc.price + 100, btc.confidence, btc.expo)
    forged = RoundSigner(SHARED, "test").sign_leaves(
        honest.ts, honest.round, (btc, other, *honest.leaves[1:])
    )
    client = client_at(forged.ts)
    client.feed(frame(forged, 0))
    client.feed(frame(forged, 2))  # ETH/USD: same root, its only leaf
    with pytest.raises(Rejection, match="another leaf of BTC/USD") as exc:
        client.feed(frame(forged, 1))
    assert exc.value.reason == "equivocation"
    assert client.markets == ["BTC/USD", "ETH/USD"]
    assert client.price("BTC/USD").status == client.price("ETH/USD").status == "unknown"


def test_the_same_report_written_otherwise_is_no_equivocation() -> None:
    """One signed round cannot conflict with itself: its report again, spelled otherwise
    (hex in capitals), is `replayed` as before, and nothing is withdrawn or counted as
    equivocation."""
    (a,) = replica(SHARED)
    client = client_at(a.ts)
    client.feed(frame(a, 0))
    data = msgspec.json.decode(a.envelope(0))
    data["root"] = "0x" + data["root"][2:].upper()
    assert reason(client, msgspec.json.encode(data)) == "replayed"
    assert client.equivocated == {} and client.rejected["equivocation"] == 0
    assert client.price("BTC/USD").status == "active"
