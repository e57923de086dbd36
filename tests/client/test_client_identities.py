"""OracleClient with signers grouped by identity: a quorum counts daemons, not keys.

During a key rotation one daemon signs with its old key, restarts, and signs with its new one;
until the old key's last report ages out, a client that counts keys sees two signers. Given
`{identity: addresses}`, it counts the identity once, by its newest report.
"""

from __future__ import annotations

import pytest
from publish_rig import Rounds, make_config

from oracled.client import OracleClient, Rejection
from oracled.publish.signer import RoundSigner, SignedRound, SigningKey

OLD, NEW, OTHER = (SigningKey.from_hex("0x" + f"{i:02x}" * 32) for i in range(0x61, 0x64))


def frame(signed: SignedRound, i: int) -> bytes:
    return b'{"type":"signed","data":' + signed.envelope(i) + b"}"


def rotation() -> tuple[SignedRound, SignedRound, SignedRound]:
    """Daemon A's round signed with its old key, its next round with its new key (restarted
    on it), and daemon B's round, 2 % higher."""
    a = Rounds(make_config())
    old = RoundSigner(OLD, "test").sign(a.step())
    new = RoundSigner(NEW, "test").sign(a.step())
    other = RoundSigner(OTHER, "test").sign(Rounds(make_config()).step(BTC_USD=1.02))
    return old, new, other


def test_a_rotated_daemons_two_keys_make_one_signer_of_the_quorum() -> None:
    """Keys counted alone, A's old and new key are a quorum of two by themselves (the documented
    overlap); grouped as identity "a", they are one: the market waits for B, then is priced by
    A's newest report (the new key's) and B's, and the view names both keys and identities."""
    old, new, other = rotation()
    now = new.ts + 10

    by_key = OracleClient(
        [OLD.address, NEW.address, OTHER.address], deployment="test", quorum=2, now_ms=lambda: now
    )
    for signed in (old, new):
        by_key.feed(frame(signed, 0))
    view = by_key.price("BTC/USD")
    assert view.status == "active" and view.identities == view.signers

    client = OracleClient(
        {"a": [OLD.address, NEW.address.lower()], "b": OTHER.address},
        deployment="test",
        quorum=2,
        now_ms=lambda: now,
    )
    for signed in (old, new):
        client.feed(frame(signed, 0))
    view = client.price("BTC/USD")
    assert view.status == "unknown" and len(view.reports) == 2  # both keys' reports are held
    client.feed(frame(other, 0))
    view = client.price("BTC/USD")
    assert view.status == "active"
    assert view.signers == tuple(sorted((NEW.address, OTHER.address)))
    assert view.identities == ("a", "b")
    assert {r.signer: r.identity for r in view.reports} == {
        OLD.address: "a",
        NEW.address: "a",
        OTHER.address: "b",
    }
    prices = {r.signer: r.price for r in view.reports}
    new_price, other_price = prices[NEW.address], prices[OTHER.address]
    assert new_price is not None and other_price is not None
    assert view.price == (new_price + other_price) / 2


def test_an_identitys_newest_report_is_what_it_says_now() -> None:
    """A's newest report (the new key's, paused) outweighs its older live one (the old key's):
    with B live, the identities in the quorum are one live and one paused, so no price."""
    a = Rounds(make_config())
    old = RoundSigner(OLD, "test").sign(a.step())
    a.now += 10 * 60_000  # no quote for ten minutes: the next round has no price
    new = RoundSigner(NEW, "test").sign(a.core.run_round(a.now))
    b = Rounds(make_config())
    b.now = a.now - 1_000
    other = RoundSigner(OTHER, "test").sign(b.step())
    assert new.result is not None and new.result.report(0).price is None
    client = OracleClient(
        {"a": [OLD.address, NEW.address], "b": [OTHER.address]},
        deployment="test",
        quorum=2,
        max_age_ms=10 * 60_000 + 5_000,
        now_ms=lambda: new.ts,
    )
    for signed in (old, new, other):
        client.feed(frame(signed, 0))
    view = client.price("BTC/USD")
    assert (view.status, view.price, view.identities) == ("paused", None, ("a", "b"))
    assert view.signers == tuple(sorted((NEW.address, OTHER.address)))


def test_identities_are_checked_up_front_and_keys_outside_them_refused() -> None:
    """An address under two identities, an identity without an address and a quorum above the
    number of identities are ValueErrors; a key under no identity is still `unknown_signer`."""
    with pytest.raises(ValueError, match="both 'a' and 'b'"):
        OracleClient({"a": [OLD.address], "b": [OLD.address.lower()]}, deployment="test")
    with pytest.raises(ValueError, match="at least one address"):
        OracleClient({"a": [OLD.address], "b": []}, deployment="test")
    with pytest.raises(ValueError, match="between 1 and the 1 allowed"):
        OracleClient({"a": [OLD.address, NEW.address]}, deployment="test", quorum=2)
    old, _, _ = rotation()
    client = OracleClient(
        {"a": [NEW.address], "b": OTHER.address}, deployment="test", now_ms=lambda: old.ts
    )
    with pytest.raises(Rejection) as exc:
        client.feed(frame(old, 0))
    assert exc.value.reason == "unknown_signer" and exc.value.signer == OLD.address


def test_a_view_up_to_each_identitys_round_counts_the_reports_of_that_round() -> None:
    """`price(market, upto=...)` counts each identity's newest report at or before its time
    there: with A's round 2 in but not yet taken (a consumer waiting for the rest of it), the
    view up to A's round 1 is A's round 1 and B's, though the client holds A's round 2. An
    identity not in `upto` counts with none (below the quorum of two: `unknown`); a report
    that an equivocation withdrew is not brought back."""
    a, b = Rounds(make_config()), Rounds(make_config())
    a1 = RoundSigner(OLD, "test").sign(a.step())
    a2 = RoundSigner(OLD, "test").sign(a.step(BTC_USD=1.1))
    b1 = RoundSigner(OTHER, "test").sign(b.step(BTC_USD=1.02))
    now = a2.ts + 10
    client = OracleClient(
        {"a": OLD.address, "b": OTHER.address}, deployment="test", quorum=2, now_ms=lambda: now
    )
    for signed in (a1, b1, a2):
        client.feed(frame(signed, 0))
    newest = client.price("BTC/USD")
    cut = client.price("BTC/USD", upto={"a": a1.ts, "b": b1.ts})
    assert {(r.identity, r.ts) for r in newest.reports} == {("a", a2.ts), ("b", b1.ts)}
    assert {(r.identity, r.ts) for r in cut.reports} == {("a", a1.ts), ("b", b1.ts)}
    prices = {r.identity: r.price for r in cut.reports}
    assert cut.status == "active" and cut.price is not None and cut.price != newest.price
    assert prices["a"] is not None and prices["b"] is not None
    assert cut.price == (prices["a"] + prices["b"]) / 2
    assert client.price("BTC/USD", upto={"a": a2.ts}).status == "unknown"
    twin = RoundSigner(OLD, "test").sign(Rounds(make_config()).step(BTC_USD=0.9))
    assert twin.ts == a1.ts  # another round at round 1's time, by A's key
    with pytest.raises(Rejection) as refused:
        client.feed(frame(twin, 0))
    assert refused.value.reason == "equivocation"
    cut = client.price("BTC/USD", upto={"a": a1.ts, "b": b1.ts})
    assert [r.identity for r in cut.reports] == ["b"] and cut.status == "unknown"
