"""OracleClient: verified prices only; every forged, replayed, reordered, truncated, stale,
unsigned or wrongly signed message refused with its reason; the median over a quorum of signers."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from publish_rig import INTERVAL, SOURCES, Rounds, make_config
from structlog.testing import capture_logs

import oracled.client as client_module
from oracled.client import REASONS, OracleClient, Rejection, verify, verify_signed
from oracled.model import Quote
from oracled.publish.signer import RoundSigner, SignedRound, SigningKey

KEYS = [SigningKey.from_hex("0x" + f"{i:02x}" * 32) for i in range(1, 5)]
ALLOWED = frozenset(k.address for k in KEYS[:3])  # KEYS[3] is a stranger


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def signed_rounds(
    key: SigningKey, n: int, deployment: str = "test", **moves: float
) -> list[SignedRound]:
    rounds = Rounds(make_config())
    signer = RoundSigner(key, deployment)
    return [signer.sign(rounds.step(**moves)) for _ in range(n)]


def frame(signed: SignedRound, i: int) -> bytes:
    return b'{"type":"signed","data":' + signed.envelope(i) + b"}"


def edit(signed: SignedRound, i: int, **changes: object) -> bytes:
    data = msgspec.json.decode(signed.envelope(i))
    data.update(changes)
    return msgspec.json.encode(data)


def btc_price(signed: SignedRound) -> Decimal:
    """The BTC/USD price the signed round carries, as a Decimal."""
    assert signed.result is not None
    price = signed.result.report(0).price
    assert price is not None
    return Decimal(price)


def client_at(signed: SignedRound, **kwargs: object) -> tuple[OracleClient, Clock]:
    clock = Clock(signed.ts + 10)
    return OracleClient(ALLOWED, deployment="test", now_ms=clock, **kwargs), clock  # type: ignore[arg-type]


def reason(client: OracleClient, data: bytes | str) -> str:
    with pytest.raises(Rejection) as exc:
        client.feed(data)
    return exc.value.reason


def test_a_genuine_signed_frame_is_accepted_with_its_exact_decimal_price() -> None:
    """The stream frame verifies; the price and its confidence are the integer mantissas
    scaled, as Decimals."""
    (signed,) = signed_rounds(KEYS[0], 1)
    client, _ = client_at(signed)
    sp = client.feed(frame(signed, 0))
    assert sp.market == "BTC/USD"
    view = client.price("BTC/USD")
    assert view.status == "active" and view.signers == (KEYS[0].address,)
    assert signed.result is not None
    report = signed.result.report(0)
    assert view.price == btc_price(signed)
    assert report.confidence is not None and Decimal(report.confidence) > 0
    assert view.reports[0].confidence == Decimal(report.confidence)
    assert client.accepted == 1 and sum(client.rejected.values()) == 0


def test_a_bare_payload_as_on_nats_is_accepted() -> None:
    """The NATS payload (the SignedPrice without the frame) verifies the same way."""
    (signed,) = signed_rounds(KEYS[0], 1)
    client, _ = client_at(signed)
    client.feed(signed.envelope(2))
    assert client.price("SOL/USD").price == Decimal("150.125")


TAMPERED = [
    ({"price": "9999999"}, "forged"),  # the price changed after signing
    ({"status": "paused"}, "forged"),
    ({"market": "ETH/USD"}, "forged"),  # BTC's proof passed off as ETH's
    ({"ts": 1}, "forged"),  # another round time: another digest, another recovered key
    ({"round": 999}, "forged"),
    ({"expo": -3}, "forged"),
    ({"root": "0x" + "00" * 32}, "forged"),
    ({"signer": KEYS[1].address}, "forged"),  # claims to be another allowed signer
    ({"index": 1}, "forged"),
    ({"index": 7}, "bad_proof"),
    ({"count": 2}, "bad_proof"),  # a tree of 2 takes one hash less than this proof has
    ({"status": "sideways"}, "malformed"),
    ({"price": "12.5"}, "malformed"),
    ({"signature": "0x1234"}, "truncated"),
    ({"signature": "0x" + "ab" * 64 + "05"}, "bad_signature"),
    # r = 0 passes the v and low-s checks, but no public key has such a signature
    ({"signature": "0x" + "00" * 32 + "00" * 31 + "01" + "1b"}, "bad_signature"),
    ({"proof": ["0x" + "zz" * 32]}, "malformed"),  # not hex
    ({"root": "0x" + "00" * 33}, "malformed"),  # too long is malformed, not truncated
    ({"count": 0}, "malformed"),  # no round has zero markets
    ({"count": 1 << 32}, "malformed"),  # wider than the signed uint32
    ({"round": -1}, "malformed"),  # outside the signed uint64
    ({"ts": -1}, "malformed"),  # a leaf field outside its uint64
    ({"expo": 128}, "malformed"),  # outside int8
    ({"price": str(1 << 255)}, "malformed"),  # wider than int256
    ({"confidence": "-1"}, "malformed"),  # a uint256 is never negative
]


@pytest.mark.parametrize(("changes", "expected"), TAMPERED)
def test_tampered_fields_are_refused_with_their_reason(
    changes: dict[str, object], expected: str
) -> None:
    """Any field changed after signing breaks the proof or the signature; the reason says which."""
    (signed,) = signed_rounds(KEYS[0], 1)
    client, _ = client_at(signed)
    assert reason(client, edit(signed, 0, **changes)) == expected
    assert client.rejected[expected] == 1
    assert client.price("BTC/USD").status == "unknown"  # nothing refused ever moved a price


@pytest.mark.parametrize(("changes", "expected"), TAMPERED)
def test_tampered_fields_are_refused_after_the_whole_round_verified(
    changes: dict[str, object], expected: str
) -> None:
    """The client keeps the hashing a round's markets share (Merkle nodes, the round digest,
    market name hashes) once it verified them: a tampered message of that round is refused
    with the same reason as by a client that never saw the round."""
    (signed,) = signed_rounds(KEYS[0], 1)
    client, _ = client_at(signed)
    for i in range(1, signed.count):
        client.feed(frame(signed, i))
    held = client.price("BTC/USD")
    assert reason(client, edit(signed, 0, **changes)) == expected
    assert client.rejected[expected] == 1
    assert client.price("BTC/USD") == held  # nothing refused moved a price
    client.feed(frame(signed, 0))  # the message as signed still verifies
    assert client.price("BTC/USD").status == "active"


def test_a_proof_changed_above_a_known_node_is_forged() -> None:
    """A proof whose lower hashes lead to a node the client has computed before, with any
    hash above it changed, leads to another root: `forged`, however much of the tree the
    client already knows."""
    (signed,) = signed_rounds(KEYS[0], 1)
    client, _ = client_at(signed)
    for i in range(1, signed.count):
        client.feed(frame(signed, i))
    proof = msgspec.json.decode(signed.envelope(0))["proof"]
    assert len(proof) >= 2
    for level in range(1, len(proof)):
        changed = [*proof]
        changed[level] = "0x" + bytes(32).hex()
        assert reason(client, edit(signed, 0, proof=changed)) == "forged"
    client.feed(frame(signed, 0))
    assert client.accepted == signed.count


ARABIC_INDIC = str.maketrans("0123456789", "".join(chr(0x660 + d) for d in range(10)))


@pytest.mark.parametrize(
    ("field", "rewrite"),
    [
        ("price", lambda v: "+" + v),
        ("price", lambda v: " " + v + "\n"),
        ("price", lambda v: "000" + v),
        ("price", lambda v: v[:2] + "_" + v[2:]),
        ("price", lambda v: v.translate(ARABIC_INDIC)),  # int() reads other scripts' digits
        ("confidence", lambda v: "0" + v),
        ("root", lambda v: v.removeprefix("0x")),
        ("root", lambda v: "0X" + v[2:]),
        ("signature", lambda v: v[:10] + " " + v[10:]),  # bytes.fromhex skips spaces
        ("proof", lambda v: [h[:4] + " " + h[4:] for h in v]),
    ],
)
def test_the_same_signed_values_written_otherwise_are_refused(
    field: str, rewrite: Callable[[Any], Any]
) -> None:
    """A message whose fields hold the signed values in another spelling than the contract's
    (integers as ASCII digits without sign or leading zeros, hashes as `0x` and hex digits) is
    `malformed`: the client would otherwise hand it on as verified, with a price string other
    consumers (JavaScript's BigInt, Go's big.Int) cannot read. Found by feeding such rewrites
    of a real daemon's signed frame to the client: every one was accepted."""
    (signed,) = signed_rounds(KEYS[0], 1)
    client, _ = client_at(signed)
    original = msgspec.json.decode(signed.envelope(0))
    assert reason(client, edit(signed, 0, **{field: rewrite(original[field])})) == "malformed"
    assert client.price("BTC/USD").status == "unknown"
    client.feed(signed.envelope(0))  # the message as signed still verifies
    assert client.accepted == 1


def test_truncated_messages_and_proofs_are_refused_as_truncated() -> None:
    """JSON cut short, and a proof with its last hash removed, are both `truncated`."""
    (signed,) = signed_rounds(KEYS[0], 1)
    client, _ = client_at(signed)
    whole = frame(signed, 0)
    assert reason(client, whole[: len(whole) // 2]) == "truncated"
    proof = msgspec.json.decode(signed.envelope(0))["proof"]
    assert reason(client, edit(signed, 0, proof=proof[:-1])) == "truncated"


def test_unsigned_reports_are_refused() -> None:
    """A plain report frame, or a bare report as NATS carries with signing off, is `unsigned`."""
    (signed,) = signed_rounds(KEYS[0], 1)
    client, _ = client_at(signed)
    assert signed.result is not None
    report = msgspec.json.encode(signed.result.report(0))
    assert reason(client, b'{"type":"report","data":' + report + b"}") == "unsigned"
    assert reason(client, report) == "unsigned"
    assert reason(client, b"not json") == "malformed"


def test_frames_of_other_shapes_are_refused_as_malformed() -> None:
    """A frame of another type, a signed frame without data, and a payload missing a field
    are `malformed`: none reaches the verification, none moves a price."""
    (signed,) = signed_rounds(KEYS[0], 1)
    client, _ = client_at(signed)
    envelope = msgspec.json.decode(signed.envelope(0))
    del envelope["proof"]
    for data in (
        b'{"type":"error","code":"bad_request","message":"no"}',
        b'{"type":"signed"}',
        msgspec.json.encode(envelope),
    ):
        assert reason(client, data) == "malformed", data
    assert client.rejected["malformed"] == 3 and client.markets == []


def test_json_nested_past_the_decoders_depth_is_refused_as_malformed() -> None:
    """A frame nested a hundred thousand levels deep (`[[[[...`, in `data` or as the whole
    payload) made the decoder raise RecursionError, which went out of `feed` instead of a
    Rejection (and ended `watch_ws`): it is `malformed` and counted, and the genuine frame
    after it is accepted."""
    (signed,) = signed_rounds(KEYS[0], 1)
    client, _ = client_at(signed)
    deep = "[" * 100_000 + "]" * 100_000
    for data in ('{"type":"signed","data":' + deep + "}", deep, '{"market":' + deep + "}"):
        assert reason(client, data) == "malformed"
    assert client.rejected["malformed"] == 3
    client.feed(frame(signed, 0))
    assert client.price("BTC/USD").status == "active"


def test_the_cache_of_recovered_signers_stays_bounded() -> None:
    """The (digest, signature) -> signer cache is emptied when full rather than growing with
    every round; the message that found it full is still verified and cached."""
    (signed,) = signed_rounds(KEYS[0], 1)
    recovered = {(bytes([i % 256, i // 256]), b"sig"): "0x" for i in range(4096)}
    found = verify_signed(signed.envelope(0), ALLOWED, deployment="test", recovered=recovered)
    assert found[1] == KEYS[0].address
    assert list(recovered.values()) == [KEYS[0].address]
    # the same round: a cache hit
    verify_signed(signed.envelope(1), ALLOWED, deployment="test", recovered=recovered)
    assert len(recovered) == 1


def test_the_tables_of_shared_hashing_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each table of what a round's markets share (Merkle nodes, round digests, market name
    hashes) is emptied when full rather than growing with every round; rounds verified across
    the emptying are accepted as before."""
    monkeypatch.setattr(client_module, "_MEMO_MAX", 8)
    rounds = signed_rounds(KEYS[0], 4)
    client, clock = client_at(rounds[0])
    memo = client._memo
    for signed in rounds:
        clock.now = signed.ts + 10
        for i in range(signed.count):
            client.feed(frame(signed, i))
            assert len(memo.nodes) <= 8 + 2 * signed.count.bit_length()  # a proof's few
            assert len(memo.digests) <= 8 and len(memo.markets) <= 8
    assert client.accepted == sum(s.count for s in rounds)
    assert memo.digests and memo.nodes


def test_a_valid_signature_by_a_key_not_allowed_is_refused() -> None:
    """A stranger's correctly signed round is `unknown_signer`."""
    (signed,) = signed_rounds(KEYS[3], 1)
    client, _ = client_at(signed)
    assert reason(client, frame(signed, 0)) == "unknown_signer"


def test_a_round_signed_by_an_allowed_key_for_another_deployment_is_refused() -> None:
    """An allowed key that also signs for staging: its staging rounds are `wrong_deployment` at
    a client of deployment "test" (the detail names both); relabelled as "test" they are
    `forged`, since the client checks the signature in its own domain, not the claimed one; a
    message naming no deployment (the old format) is `wrong_deployment` too. None moves a price,
    and the same key's rounds for "test" are accepted."""
    (staging,) = signed_rounds(KEYS[0], 1, deployment="staging")
    client, _ = client_at(staging)
    with pytest.raises(Rejection) as exc:
        client.feed(frame(staging, 0))
    assert exc.value.reason == "wrong_deployment"
    assert "'staging'" in exc.value.detail and "'test'" in exc.value.detail
    assert reason(client, edit(staging, 0, deployment="test")) == "forged"
    old = msgspec.json.decode(staging.envelope(0))
    del old["deployment"]
    assert reason(client, msgspec.json.encode(old)) == "wrong_deployment"
    assert client.rejected["wrong_deployment"] == 2 and client.markets == []
    (ours,) = signed_rounds(KEYS[0], 1)
    assert client.offer(frame(ours, 0))
    with pytest.raises(ValueError, match="deployment"):
        OracleClient(ALLOWED, deployment="")
    with pytest.raises(ValueError, match="deployment"):
        verify(frame(ours, 0), ALLOWED, deployment="")


def test_a_wrong_signer_is_logged_naming_both_signers_at_most_once_per_interval() -> None:
    """A flood of rounds signed by a stranger gives one warning naming the actual signer and
    the allowed ones; the next, an interval later, says how many refusals it held back; every
    refusal is counted all the same."""
    (signed,) = signed_rounds(KEYS[3], 1)
    client, clock = client_at(signed, log_every_ms=10_000, max_age_ms=60_000)
    with capture_logs() as logs:
        for _ in range(100):
            client.offer(frame(signed, 0))
        clock.now += 10_000
        client.offer(frame(signed, 1))
    lines = [e for e in logs if e["event"] == "client rejected"]
    assert client.rejected["unknown_signer"] == 101
    assert len(lines) == 2
    for line in lines:
        assert line["log_level"] == "warning"
        assert line["reason"] == "unknown_signer"
        assert line["signer"] == KEYS[3].address
        assert line["allowed"] == sorted(ALLOWED)
    assert [line["suppressed"] for line in lines] == [0, 99]


def test_stale_and_future_reports_are_refused() -> None:
    """Older than max_age_ms is `stale`; ahead of the local clock beyond the bound is `future`."""
    (signed,) = signed_rounds(KEYS[0], 1)
    client, clock = client_at(signed, max_age_ms=1_000, max_future_ms=500)
    clock.now = signed.ts + 1_001
    assert reason(client, frame(signed, 0)) == "stale"
    clock.now = signed.ts - 501
    assert reason(client, frame(signed, 0)) == "future"
    clock.now = signed.ts
    client.feed(frame(signed, 0))


def test_replayed_and_reordered_reports_are_refused() -> None:
    """A report for a round already accepted from the signer, its signed content written
    otherwise, is `replayed`; an older round after a newer one is `reordered`; the very same
    report again (a reconnect's snapshot, a second transport) is no rejection: it is counted in
    `duplicates` and changes nothing. (Another round signed for the same time is
    `equivocation`: test_client_equivocation.)"""
    first, second, third = signed_rounds(KEYS[0], 3)
    rewritten = edit(first, 0, signer=KEYS[0].address.lower())  # same signature, same leaf
    client, clock = client_at(first)
    clock.now = third.ts
    client.feed(frame(first, 0))
    client.feed(frame(third, 0))
    before = client.price("BTC/USD")
    assert client.feed(frame(third, 0)).ts == third.ts
    assert client.offer(frame(first, 0))
    assert (client.duplicates, client.accepted) == (2, 2)
    assert sum(client.rejected.values()) == 0
    assert client.price("BTC/USD") == before  # the old round did not come back
    assert reason(client, rewritten) == "replayed"
    assert reason(client, frame(second, 0)) == "reordered"
    client.feed(frame(second, 1))  # order is per market: ETH's round 2 is new
    assert client.price("BTC/USD").ts == third.ts
    assert client.duplicates == 2


def test_every_reason_is_counted_from_zero() -> None:
    """The rejection counter lists every reason, at zero before any message."""
    client = OracleClient(ALLOWED, deployment="test")
    assert dict(client.rejected) == dict.fromkeys(REASONS, 0)


def test_median_of_a_quorum_of_signers_ignores_one_liar() -> None:
    """Three signers, one 30 % high: the median is an honest price."""
    honest_a = signed_rounds(KEYS[0], 1)[0]
    honest_b = signed_rounds(KEYS[1], 1, BTC_USD=1.0001)[0]
    liar = signed_rounds(KEYS[2], 1, BTC_USD=1.3)[0]
    client, _ = client_at(honest_a, quorum=2)
    for signed in (honest_a, honest_b, liar):
        client.feed(frame(signed, 0))
    view = client.price("BTC/USD")
    assert view.status == "active" and len(view.signers) == 3
    honest = sorted(btc_price(s) for s in (honest_a, honest_b))
    assert view.price == honest[1]


def test_below_quorum_the_market_is_unknown_and_goes_unknown_when_reports_age() -> None:
    """One signer of a quorum of two is not enough; two are, until their reports go stale. The
    price of two is their mean (the median of an even count), as of the newer report."""
    a = signed_rounds(KEYS[0], 1)[0]
    b = signed_rounds(KEYS[1], 2, BTC_USD=1.001)[-1]  # a round later, and priced higher
    client, clock = client_at(a, quorum=2, max_age_ms=1_000)
    client.feed(frame(a, 0))
    assert client.price("BTC/USD").status == "unknown"
    assert client.price("BTC/USD").price is None
    client.feed(frame(b, 0))
    view = client.price("BTC/USD")
    assert view.status == "active"
    prices = [btc_price(s) for s in (a, b)]
    assert prices[0] < prices[1]
    assert view.price == (prices[0] + prices[1]) / 2
    assert view.ts == b.ts > a.ts
    clock.now += 1_000 + INTERVAL
    assert client.price("BTC/USD").status == "unknown"


def test_one_degraded_signer_makes_the_quorum_view_degraded() -> None:
    """A quorum of live reports is `active` only if every one is active; one signer whose round
    excluded an outlier (degraded) makes the view `degraded`, still with the median price."""
    a = signed_rounds(KEYS[0], 1)[0]
    rounds = Rounds(make_config())
    rounds.step()
    rounds.now += INTERVAL
    for source, px in zip(SOURCES, (64_000.0, 64_001.0, 90_000.0), strict=True):
        rounds.core.ingest(Quote(source, "BTC/USD", rounds.now - 10, price=px))
    b = RoundSigner(KEYS[1], "test").sign(rounds.core.run_round(rounds.now))
    assert b.result is not None and b.result.report(0).status == "degraded"
    client, _ = client_at(a, quorum=2)
    client.feed(frame(a, 0))
    client.feed(frame(b, 0))
    view = client.price("BTC/USD")
    assert view.status == "degraded" and len(view.signers) == 2
    assert view.price is not None


def test_a_quorum_without_prices_is_paused() -> None:
    """A quorum of fresh signers all saying the market has no price: paused, price None."""
    rounds = [Rounds(make_config()) for _ in range(2)]
    signed = [
        RoundSigner(k, "test").sign(r.core.run_round(r.now + INTERVAL))
        for k, r in zip(KEYS[:2], rounds, strict=True)
    ]
    client, _ = client_at(signed[0], quorum=2)
    for s in signed:
        client.feed(frame(s, 0))
    view = client.price("BTC/USD")
    assert (view.status, view.price, len(view.signers)) == ("paused", None, 2)


def test_verify_alone_checks_signature_and_signer_set() -> None:
    """`verify` is the stateless part: it needs no clock and keeps nothing."""
    (signed,) = signed_rounds(KEYS[0], 1)
    assert verify(signed.envelope(0), ALLOWED, deployment="test").market == "BTC/USD"
    with pytest.raises(Rejection, match="unknown_signer"):
        verify(signed.envelope(0), frozenset({KEYS[1].address}), deployment="test")


def test_verify_alone_compares_signers_case_insensitively() -> None:
    """`verify(payload, allowed)` takes addresses as written anywhere (lower case, EIP-55, a set
    or a list), as docs/publishing.md's step 1 says: compare case-insensitively. Found calling
    it as documented with a lower-case address: the daemon's own signer was `unknown_signer`."""
    (signed,) = signed_rounds(KEYS[0], 1)
    address = KEYS[0].address
    for allowed in ({address.lower()}, [address.upper().replace("0X", "0x")], frozenset({address})):
        assert verify(signed.envelope(0), allowed, deployment="test").market == "BTC/USD"
    with pytest.raises(Rejection, match="unknown_signer"):
        verify(signed.envelope(0), {KEYS[1].address.lower()}, deployment="test")


def test_the_client_needs_a_feasible_quorum() -> None:
    """A quorum larger than the allowed signers, or no signers at all, is refused up front,
    each for what it is (no signers would also fail the quorum's check, with a message that
    sends the operator to the quorum)."""
    with pytest.raises(ValueError, match="quorum must be between 1 and the 3 allowed signers"):
        OracleClient(ALLOWED, deployment="test", quorum=4)
    with pytest.raises(ValueError, match="allow at least one signer"):
        OracleClient([], deployment="test")


def test_a_cached_recovery_still_catches_a_false_signer_claim() -> None:
    """After a round's signature is recovered once, a copy naming another signer is forged."""
    (signed,) = signed_rounds(KEYS[0], 1)
    client, _ = client_at(signed)
    client.feed(frame(signed, 0))
    assert reason(client, edit(signed, 1, signer=KEYS[1].address)) == "forged"
    client.feed(frame(signed, 1))
    assert client.price("ETH/USD").signers == (KEYS[0].address,)


def test_a_perpetual_markets_mark_is_verified_and_its_quorum_median_served() -> None:
    """BTC/USD is perpetual. Each signer's report keeps its signed mark and mode, the view
    serves the median mark of the signers that made the price, and a mark changed, or left out
    (read as a spot leaf), is `forged`, a mark without its mode `malformed`: none moves a price."""
    rounds = [Rounds(make_config(perps=["BTC/USD"])) for _ in range(2)]
    rounds[1].perp_premium = 0.003  # the second daemon's perpetual trades higher
    signed = [RoundSigner(k, "test").sign(r.step()) for k, r in zip(KEYS, rounds, strict=False)]
    client, _ = client_at(signed[0], quorum=2)
    tampered = msgspec.json.decode(signed[0].envelope(0))
    for forged, why in (
        ({**tampered, "mark": str(int(tampered["mark"]) - 100)}, "forged"),
        ({k: v for k, v in tampered.items() if k not in ("mark", "mark_mode")}, "forged"),
        ({k: v for k, v in tampered.items() if k != "mark_mode"}, "malformed"),
    ):
        assert reason(client, msgspec.json.encode(forged)) == why
    assert client.markets == []
    for one in signed:
        client.feed(frame(one, 0))
        client.feed(frame(one, 1))
    marks = []
    for one in signed:
        assert one.result is not None and one.result.report(0).mark is not None
        marks.append(Decimal(str(one.result.report(0).mark.price)))
    view = client.price("BTC/USD")
    assert view.status == "active" and view.mark == (marks[0] + marks[1]) / 2
    assert {(r.mark, r.mark_mode) for r in view.reports} == {(m, "perps") for m in marks}
    spot = client.price("ETH/USD")
    assert spot.price is not None and spot.mark is None
    assert {(r.mark, r.mark_mode) for r in spot.reports} == {(None, None)}
