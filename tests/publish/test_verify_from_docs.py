"""A consumer that knows only docs/publishing.md verifies what the daemon signs.

Nothing here comes from `oracled.publish.signer` or `oracled.client`: the leaf is the EIP-712
struct hash written out with eth-abi and eth-utils' keccak, the proof is folded by the
documented steps, and the round is recovered through eth-account's own EIP-712 encoder. If the
daemon's scheme and its documentation drift apart, this fails.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak as _keccak
from publish_rig import Rounds, make_config

from oracled.publish.signer import RoundSigner, SigningKey

KEY = SigningKey.from_hex("0x" + "5a" * 32)
DEPLOYMENT = "test"  # what this consumer was configured with, never read from a message
STATUS = {"active": 0, "degraded": 1, "paused": 2, "unknown": 3}  # the docs' table
PRICE_TYPE = "Price(string market,uint64 ts,uint8 status,int256 price,uint256 confidence,int8 expo)"
PERP_PRICE_TYPE = (
    "PerpPrice(string market,uint64 ts,uint8 status,int256 price,uint256 confidence,int8 expo,"
    "int256 mark,uint8 markMode)"
)
MARK_MODE = {"perps": 0, "fallback": 1, "none": 2}  # the docs' table


def keccak(data: bytes) -> bytes:
    return bytes(_keccak(data))


def leaf(
    market: str,
    ts: int,
    status: str,
    price: str,
    confidence: str,
    expo: int,
    mark: str | None = None,
    mark_mode: str | None = None,
) -> bytes:
    """Step 2: hashStruct(Price) = keccak(typeHash ‖ keccak(market) ‖ the other fields), or
    hashStruct(PerpPrice) when the message has a `mark` (a perpetual market)."""
    types = ["bytes32", "uint64", "uint8", "int256", "uint256", "int8"]
    values = [keccak(market.encode()), ts, STATUS[status], int(price), int(confidence), expo]
    if mark is None:
        return keccak(keccak(PRICE_TYPE.encode()) + abi_encode(types, values))
    assert mark_mode is not None, "a mark comes with its mode"
    fields = abi_encode([*types, "int256", "uint8"], [*values, int(mark), MARK_MODE[mark_mode]])
    return keccak(keccak(PERP_PRICE_TYPE.encode()) + fields)


def fold(node: bytes, index: int, count: int, proof: list[bytes]) -> bytes:
    """Step 3, as the docs word it."""
    width, used = count, 0
    while width > 1:
        if index % 2 == 0 and index + 1 < width:
            node, used = keccak(node + proof[used]), used + 1
        elif index % 2 == 1:
            node, used = keccak(proof[used] + node), used + 1
        index, width = index // 2, (width + 1) // 2
    assert used == len(proof), "use exactly all the hashes of the proof"
    return node


def recover(
    ts: int, round_no: int, count: int, root: bytes, signature: str, deployment: str = DEPLOYMENT
) -> str:
    """Step 5, the docs' own eth-account snippet, in the domain of `deployment` (the one this
    consumer expects)."""
    message = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "salt", "type": "bytes32"},
            ],
            "OracleRound": [
                {"name": "ts", "type": "uint64"},
                {"name": "round", "type": "uint64"},
                {"name": "count", "type": "uint32"},
                {"name": "root", "type": "bytes32"},
            ],
        },
        "primaryType": "OracleRound",
        "domain": {"name": "oracled", "version": "3", "salt": keccak(deployment.encode())},
        "message": {"ts": ts, "round": round_no, "count": count, "root": root},
    }
    sig = bytes.fromhex(signature.removeprefix("0x"))
    return str(Account.recover_message(encode_typed_data(full_message=message), signature=sig))


def verify(sp: dict[str, Any], deployment: str = DEPLOYMENT) -> str:
    """Steps 1 to 5 over one SignedPrice (step 1's deployment check; the signer check is the
    callers'); returns the recovered signer."""
    assert sp["deployment"] == deployment, "signed for another deployment"
    node = leaf(
        sp["market"],
        sp["ts"],
        sp["status"],
        sp["price"],
        sp["confidence"],
        sp["expo"],
        sp.get("mark"),
        sp.get("mark_mode"),
    )
    proof = [bytes.fromhex(h[2:]) for h in sp["proof"]]
    root = fold(node, sp["index"], sp["count"], proof)
    assert "0x" + root.hex() == sp["root"]
    return recover(sp["ts"], sp["round"], sp["count"], root, sp["signature"], deployment)


@pytest.mark.parametrize("markets", [1, 2, 3, 5])
def test_every_signed_price_verifies_by_the_documented_steps_alone(markets: int) -> None:
    """For rounds of 1 to 5 markets (trees with and without unpaired nodes), each market's
    SignedPrice JSON, as the stream and NATS carry it, verifies by the docs' steps and
    recovers the daemon's address, and the RoundMessage's leaves rebuild its root."""
    prices = {f"M{i}/USD": 10.0 + i for i in range(markets)}
    signed = RoundSigner(KEY, "test").sign(Rounds(make_config(prices)).step())
    for i in range(markets):
        sp = msgspec.json.decode(signed.envelope(i))
        assert verify(sp) == sp["signer"] == KEY.address
    whole = msgspec.json.decode(signed.message())
    level = [leaf(x["market"], whole["ts"], x["status"], x["price"], x["confidence"], x["expo"])
             for x in whole["leaves"]]  # fmt: skip
    while len(level) > 1:
        up = [keccak(level[k] + level[k + 1]) for k in range(0, len(level) - 1, 2)]
        level = up + level[-1:] if len(level) % 2 else up
    assert "0x" + level[0].hex() == whole["root"]
    assert recover(whole["ts"], whole["round"], whole["count"], level[0], whole["signature"]) == (
        KEY.address
    )


def test_a_paused_market_cannot_be_passed_off_as_active_by_the_documented_check() -> None:
    """A market paused in the round is signed with status 2 and price 0: claiming `active` (or
    the last price) gives another leaf, so the documented check fails on the root."""
    rounds = Rounds(make_config())
    rounds.step()
    rounds.prices["BTC/USD"] *= 1.5  # beyond the breaker: BTC/USD pauses on the jump
    signed = RoundSigner(KEY, "test").sign(rounds.step())
    sp = msgspec.json.decode(signed.envelope(0))
    assert (sp["market"], sp["status"], sp["price"]) == ("BTC/USD", "paused", "0")
    assert verify(sp) == KEY.address
    for forged in ({"status": "active"}, {"status": "active", "price": "6400012"}):
        with pytest.raises(AssertionError):
            verify({**sp, **forged})


def test_a_round_signed_for_another_deployment_fails_the_documented_check() -> None:
    """The same key signing for `staging`: a production consumer refuses the message by its
    `deployment`, and one rewritten to claim `production` recovers another address than the
    key's in the production domain, so the documented signer check refuses it too."""
    signed = RoundSigner(KEY, "staging").sign(Rounds(make_config()).step())
    sp = msgspec.json.decode(signed.envelope(0))
    assert verify(sp, "staging") == KEY.address
    with pytest.raises(AssertionError, match="another deployment"):
        verify(sp, "production")
    assert verify({**sp, "deployment": "production"}, "production") != KEY.address


def test_a_perpetual_markets_mark_verifies_by_the_documented_steps_and_cannot_be_changed() -> None:
    """BTC/USD is perpetual: in every mode (perps, then fallback once its perpetual went quiet)
    its SignedPrice verifies by the docs' steps with the `PerpPrice` leaf, the RoundMessage's
    leaves rebuild the root, and a changed mark, a changed mode, the mark left out, or a mark
    added to a spot market each fail the documented check on the root."""
    rounds = Rounds(make_config(perps=["BTC/USD"]))
    signer = RoundSigner(KEY, DEPLOYMENT)
    modes = set()
    for step in range(24):
        rounds.perps_quiet = step >= 2
        signed = signer.sign(rounds.step())
        sp = msgspec.json.decode(signed.envelope(0))
        modes.add(sp["mark_mode"])
        assert verify(sp) == KEY.address
        whole = msgspec.json.decode(signed.message())
        level = [
            leaf(
                x["market"],
                whole["ts"],
                x["status"],
                x["price"],
                x["confidence"],
                x["expo"],
                x.get("mark"),
                x.get("mark_mode"),
            )
            for x in whole["leaves"]
        ]
        while len(level) > 1:
            up = [keccak(level[k] + level[k + 1]) for k in range(0, len(level) - 1, 2)]
            level = up + level[-1:] if len(level) % 2 else up
        assert "0x" + level[0].hex() == whole["root"]
    assert modes == {"perps", "fallback"}
    bare = {k: v for k, v in sp.items() if k not in ("mark", "mark_mode")}
    other = "perps" if sp["mark_mode"] == "fallback" else "fallback"
    for forged in (
        {**sp, "mark": str(int(sp["mark"]) + 1)},
        {**sp, "mark_mode": other},
        bare,
    ):
        with pytest.raises(AssertionError):
            verify(forged)
    spot = msgspec.json.decode(signed.envelope(1))
    assert "mark" not in spot and verify(spot) == KEY.address
    with pytest.raises(AssertionError):
        verify({**spot, "mark": spot["price"], "mark_mode": "perps"})
