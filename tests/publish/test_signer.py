"""Signed rounds: EIP-712 digests eth-account agrees with, Merkle proofs, integer prices, keys."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st
from publish_rig import Rounds, make_config
from structlog.testing import capture_logs

from oracled.core import RoundResult
from oracled.errors import ConfigError
from oracled.mark.engine import MODES
from oracled.publish.signer import (
    DOMAIN,
    MARK_MODES,
    Leaf,
    RoundSigner,
    SignatureError,
    SignedPrice,
    SignedRound,
    SignerWorker,
    SigningKey,
    decimal_to_int,
    deployment_salt,
    domain_separator,
    keccak,
    leaf_hash,
    load_signing_key,
    merkle_levels,
    merkle_proof,
    recover_signer,
    root_from_proof,
    round_digest,
    stall_digest,
    stall_typed_data,
    typed_data,
)

KEY = SigningKey.from_hex("0x" + "11" * 32)
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def test_round_digest_is_eip712_as_eth_account_computes_it() -> None:
    """The hand-built digest equals eth-account's, and its signature recovers to the key."""
    root = keccak(b"some root")
    message = typed_data(1_700_000_000_250, 7, 3, root, "production")
    expected = _hash_eip191_message(encode_typed_data(full_message=message))
    digest = round_digest(1_700_000_000_250, 7, 3, root, "production")
    assert digest == expected
    signature = KEY.sign_digest(digest)
    assert signature == KEY.sign_typed(message)  # deterministic (RFC 6979) and the same bytes
    assert recover_signer(digest, signature) == KEY.address
    signable = encode_typed_data(full_message=message)
    assert Account.recover_message(signable, signature=signature) == KEY.address


def test_stall_digest_is_eip712_as_eth_account_computes_it() -> None:
    """A stall notice's digest (`OracleStall`, the rounds' domain) equals eth-account's, a
    signer's `sign_stall` recovers to its key through eth-account too, and it is no round's
    digest: its own type hash keeps a notice's signature from passing for a round's."""
    words = "the latest round is 9.0 s old (limit 5.0 s): rounds have stalled"
    message = stall_typed_data(1_700_000_000_250, 7, words, "production")
    digest = stall_digest(1_700_000_000_250, 7, words, "production")
    assert digest == _hash_eip191_message(encode_typed_data(full_message=message))
    signature = RoundSigner(KEY, "production").sign_stall(1_700_000_000_250, 7, words)
    assert signature == KEY.sign_typed(message)
    signable = encode_typed_data(full_message=message)
    assert Account.recover_message(signable, signature=signature) == KEY.address
    assert digest != stall_digest(1_700_000_000_250, 7, words, "staging")
    assert digest != stall_digest(1_700_000_000_250, 7, words + ".", "production")
    assert digest != round_digest(1_700_000_000_250, 7, 0, bytes(32), "production")


def test_leaf_is_the_eip712_struct_hash_of_price() -> None:
    """A leaf hashes as EIP-712 `Price` would: checked through eth-account with that type."""
    leaf = Leaf("BTC/USD", 1_700_000_000_250, 1, 6_400_012, 55, -2)
    message = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "salt", "type": "bytes32"},
            ],
            "Price": [
                {"name": "market", "type": "string"},
                {"name": "ts", "type": "uint64"},
                {"name": "status", "type": "uint8"},
                {"name": "price", "type": "int256"},
                {"name": "confidence", "type": "uint256"},
                {"name": "expo", "type": "int8"},
            ],
        },
        "primaryType": "Price",
        "domain": {**DOMAIN, "salt": deployment_salt("test")},
        "message": {
            "market": "BTC/USD",
            "ts": 1_700_000_000_250,
            "status": 1,
            "price": 6_400_012,
            "confidence": 55,
            "expo": -2,
        },
    }
    expected = _hash_eip191_message(encode_typed_data(full_message=message))
    assert keccak(b"\x19\x01" + domain_separator("test") + leaf_hash(leaf)) == expected


def test_a_perpetual_leaf_is_the_eip712_struct_hash_of_perp_price() -> None:
    """A leaf with a mark hashes as EIP-712 `PerpPrice` would (checked through eth-account),
    and differs from the `Price` leaf of the same fields: a mark cannot be dropped unnoticed."""
    leaf = Leaf("BTC/USD", 1_700_000_000_250, 0, 6_400_012, 55, -2, 6_406_412, 1)
    fields = [
        {"name": "market", "type": "string"},
        {"name": "ts", "type": "uint64"},
        {"name": "status", "type": "uint8"},
        {"name": "price", "type": "int256"},
        {"name": "confidence", "type": "uint256"},
        {"name": "expo", "type": "int8"},
        {"name": "mark", "type": "int256"},
        {"name": "markMode", "type": "uint8"},
    ]
    message = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "salt", "type": "bytes32"},
            ],
            "PerpPrice": fields,
        },
        "primaryType": "PerpPrice",
        "domain": {**DOMAIN, "salt": deployment_salt("test")},
        "message": {
            "market": "BTC/USD",
            "ts": 1_700_000_000_250,
            "status": 0,
            "price": 6_400_012,
            "confidence": 55,
            "expo": -2,
            "mark": 6_406_412,
            "markMode": 1,
        },
    }
    expected = _hash_eip191_message(encode_typed_data(full_message=message))
    assert keccak(b"\x19\x01" + domain_separator("test") + leaf_hash(leaf)) == expected
    spot = Leaf("BTC/USD", 1_700_000_000_250, 0, 6_400_012, 55, -2)
    assert leaf_hash(spot) != leaf_hash(leaf) != leaf_hash(Leaf(*fields_of(leaf)[:6], 0, 2))
    assert MARK_MODES == MODES  # the leaf's codes are the mark engine's modes, in order


def fields_of(leaf: Leaf) -> tuple[object, ...]:
    return (leaf.market, leaf.ts, leaf.status, leaf.price, leaf.confidence, leaf.expo)


def test_a_perpetual_markets_mark_and_mode_are_signed_in_every_mode() -> None:
    """BTC/USD is perpetual: its envelope carries the report's mark price as an integer at the
    market's exponent and the mode that made it (perps while the perpetual quotes, fallback once
    it is stale, `none` with mark 0 when the index is paused), and its proof leads to the signed
    root; ETH/USD and SOL/USD (spot) carry neither key. The round message lists the same."""
    rounds = Rounds(make_config(perps=["BTC/USD"]))
    signer = RoundSigner(KEY, "test")
    seen = []
    for step in range(26):
        if step == 3:
            rounds.perps_quiet = True  # stale after max_age_ms (5 s = 20 rounds): fallback
        result = rounds.step(BTC_USD=1.5 if step == 25 else 1.0)  # the last: a jump pauses it
        signed = signer.sign(result)
        assert result.mark is not None
        sp = msgspec.json.decode(signed.envelope(0), type=SignedPrice)
        report = result.report(0)
        assert report.mark is not None
        expected = "0" if report.mark.price is None else report.mark.price.replace(".", "")
        assert sp.mark == str(int(expected)) and sp.mark_mode == result.mark.values[0].mode
        root = root_from_proof(
            leaf_hash(sp.leaf()), sp.index, sp.count, [bytes.fromhex(p[2:]) for p in sp.proof]
        )
        assert "0x" + root.hex() == sp.root
        for spot in (1, 2):
            data = signed.envelope(spot)
            assert b'"mark"' not in data and b'"mark_mode"' not in data
        leaf = msgspec.json.decode(signed.message())["leaves"][0]
        assert (leaf["mark"], leaf["mark_mode"]) == (sp.mark, sp.mark_mode)
        seen.append(sp.mark_mode)
    assert seen[0] == "perps" and "fallback" in seen and seen[-1] == "none"
    assert sp.status == "paused" and sp.mark == "0"


@settings(deadline=None)  # a loaded machine (or coverage tracing) is no failure of the tree
@given(st.integers(min_value=1, max_value=40))
def test_every_leaf_proves_into_the_root_for_any_round_size(count: int) -> None:
    """For 1 to 40 leaves, each leaf's proof folds into the root; a wrong index does not."""
    hashes = [keccak(i.to_bytes(4, "big")) for i in range(count)]
    levels = merkle_levels(hashes)
    root = levels[-1][0]
    for i, h in enumerate(hashes):
        proof = merkle_proof(levels, i)
        assert root_from_proof(h, i, count, proof) == root
        if count > 1:
            other = (i + 1) % count
            try:
                assert root_from_proof(h, other, count, proof) != root
            except SignatureError as exc:  # the other index may need a proof of another length
                assert exc.reason in {"truncated", "bad_proof"}


def test_truncated_or_padded_proofs_are_refused_before_hashing() -> None:
    """A proof one hash short is `truncated`, one too long or an index past the end `bad_proof`."""
    hashes = [keccak(bytes([i])) for i in range(5)]
    levels = merkle_levels(hashes)
    proof = merkle_proof(levels, 2)
    with pytest.raises(SignatureError) as short:
        root_from_proof(hashes[2], 2, 5, proof[:-1])
    assert short.value.reason == "truncated"
    with pytest.raises(SignatureError) as long:
        root_from_proof(hashes[2], 2, 5, [*proof, proof[0]])
    assert long.value.reason == "bad_proof"
    with pytest.raises(SignatureError) as outside:
        root_from_proof(hashes[2], 5, 5, proof)
    assert outside.value.reason == "bad_proof"


def test_a_single_market_round_has_its_leaf_as_root() -> None:
    """One market: the root is the leaf and the proof is empty."""
    h = keccak(b"x")
    assert merkle_levels([h])[-1][0] == h
    assert merkle_proof(merkle_levels([h]), 0) == []
    assert root_from_proof(h, 0, 1, []) == h


@pytest.mark.parametrize(
    ("text", "decimals", "value"),
    [("64000.12", 2, 6_400_012), ("0.000022", 6, 22), ("150", 0, 150), ("-1.50", 2, -150)],
)
def test_decimal_strings_become_exact_integers(text: str, decimals: int, value: int) -> None:
    """The mantissa is read from the decimal string digit for digit, never through a float."""
    assert decimal_to_int(text, decimals) == value


@pytest.mark.parametrize(
    ("text", "decimals"),
    [("1.5", 2), ("1.", 0), ("1e5", 0), ("nan", 0), ("1._5", 2), ("1_0.50", 2)],  # int() takes _
)
def test_decimal_strings_with_other_places_are_refused(text: str, decimals: int) -> None:
    """A string that is not exactly `decimals` places of digits is an error, not rounded."""
    with pytest.raises(ValueError):
        decimal_to_int(text, decimals)


def test_leaves_carry_the_reports_decimal_strings_as_integers() -> None:
    """Each leaf's price and confidence are the report's strings at the market's exponent."""
    rounds = Rounds(make_config())
    result = rounds.step()
    leaves = RoundSigner(KEY, "test").leaves(result)
    for i, leaf in enumerate(leaves):
        report = result.report(i)
        assert leaf.market == report.market and leaf.ts == report.ts
        assert report.price is not None and report.confidence is not None
        digits = len(report.price.partition(".")[2])
        assert leaf.expo == -digits
        assert leaf.price == int(report.price.replace(".", ""))
        assert leaf.confidence == int(report.confidence.replace(".", ""))
        assert leaf.status == 0  # active


def test_non_live_markets_sign_zero_prices_with_their_status() -> None:
    """Before quorum a market is unknown: price 0, confidence 0, status 3 in the signed leaf."""
    rounds = Rounds(make_config())
    result = rounds.core.run_round(rounds.now + 250)  # no quotes at all
    leaves = RoundSigner(KEY, "test").leaves(result)
    assert {(leaf.status, leaf.price, leaf.confidence) for leaf in leaves} == {(3, 0, 0)}


def test_a_signed_round_proves_each_market_by_its_envelope() -> None:
    """Every envelope decodes to a SignedPrice whose leaf and proof lead to the signed root."""
    rounds = Rounds(make_config())
    signed = RoundSigner(KEY, "test").sign(rounds.step())
    assert signed.count == 3 and signed.signer == KEY.address
    for i in range(signed.count):
        sp = msgspec.json.decode(signed.envelope(i), type=SignedPrice)
        root = root_from_proof(
            leaf_hash(sp.leaf()), sp.index, sp.count, [bytes.fromhex(p[2:]) for p in sp.proof]
        )
        assert "0x" + root.hex() == sp.root
        digest = round_digest(sp.ts, sp.round, sp.count, root, "test")
        assert recover_signer(digest, bytes.fromhex(sp.signature[2:])) == KEY.address
    assert signed.envelope(1) is signed.envelope(1)  # encoded once per round


def test_the_round_message_rebuilds_the_same_root() -> None:
    """The round subject's message lists every leaf; hashing them again gives the signed root."""
    rounds = Rounds(make_config())
    signed = RoundSigner(KEY, "test").sign(rounds.step())
    message = msgspec.json.decode(signed.message())
    leaves = [
        Leaf(
            leaf["market"],
            message["ts"],
            ["active", "degraded", "paused", "unknown"].index(leaf["status"]),
            int(leaf["price"]),
            int(leaf["confidence"]),
            leaf["expo"],
        )
        for leaf in message["leaves"]
    ]
    root = merkle_levels([leaf_hash(x) for x in leaves])[-1][0]
    assert "0x" + root.hex() == message["root"]


def test_the_deployment_is_the_domain_salt_and_separates_signatures() -> None:
    """One key signing the same round for two deployments makes two signatures that each
    recover the key only in their own domain: in the other's they name another address, so a
    staging round can never pass for a production one. The salt is keccak256 of the name, as
    docs/publishing.md says, and a signer without a deployment is refused at construction."""
    assert deployment_salt("production") == keccak(b"production")
    root = keccak(b"r")
    prod = round_digest(1, 1, 1, root, "production")
    staging = round_digest(1, 1, 1, root, "staging")
    assert prod != staging
    signature = KEY.sign_digest(staging)
    assert recover_signer(staging, signature) == KEY.address
    assert recover_signer(prod, signature) != KEY.address
    signed = RoundSigner(KEY, "staging").sign(Rounds(make_config()).step())
    assert msgspec.json.decode(signed.envelope(0))["deployment"] == "staging"
    assert msgspec.json.decode(signed.message())["deployment"] == "staging"
    with pytest.raises(ValueError, match="deployment"):
        RoundSigner(KEY, "")


def test_a_signature_by_another_key_recovers_another_address() -> None:
    """Recovery names whoever signed: a different key gives a different address."""
    digest = round_digest(1, 1, 1, keccak(b"r"), "test")
    other = SigningKey.generate()
    assert recover_signer(digest, other.sign_digest(digest)) == other.address != KEY.address


@settings(max_examples=50, deadline=None)
@given(secret=st.integers(min_value=1, max_value=_SECP256K1_N - 1))
def test_a_keys_address_is_the_one_eth_account_derives(secret: int) -> None:
    """The signer derives its address itself (coincurve, keccak, EIP-55) so that the daemon
    does not import eth-account; it is the address eth-account gives the same key."""
    raw = secret.to_bytes(32, "big")
    assert SigningKey(raw).address == Account.from_key(raw).address


def test_malformed_signatures_are_refused() -> None:
    """Wrong length, a v that is not 27/28, or a high s are bad signatures."""
    digest = round_digest(1, 1, 1, keccak(b"r"), "test")
    good = KEY.sign_digest(digest)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = good[:32] + (n - int.from_bytes(good[32:64], "big")).to_bytes(32, "big") + good[64:]
    for bad in (good[:64], good[:64] + b"\x05", high_s):
        with pytest.raises(SignatureError) as exc:
            recover_signer(digest, bad)
        assert exc.value.reason == "bad_signature"


def test_key_file_with_mode_600_loads_and_repr_hides_the_secret(tmp_path: Path) -> None:
    """A private key file loads; neither repr nor str of the key shows the secret."""
    path = tmp_path / "key"
    path.write_text(KEY.hex() + "\n")
    path.chmod(0o600)
    key = load_signing_key(str(path), None)
    assert key.address == KEY.address
    assert KEY.hex()[2:] not in repr(key) and KEY.hex()[2:] not in str(key)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_key_file_readable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    """Group- or world-accessible key files are refused with the mode in the message."""
    path = tmp_path / "key"
    path.write_text(KEY.hex())
    path.chmod(mode)
    with pytest.raises(ConfigError) as exc:
        load_signing_key(str(path), None)
    assert f"mode {stat.S_IMODE(os.stat(path).st_mode):o}" in str(exc.value)
    assert KEY.hex()[2:] not in str(exc.value)


def test_key_from_the_environment_and_its_errors_never_echo_it() -> None:
    """A key from the environment loads; a bad or missing one is a ConfigError without the value."""
    assert load_signing_key(None, "K", {"K": KEY.hex()}).address == KEY.address
    with pytest.raises(ConfigError, match=r"\$K is not set"):
        load_signing_key(None, "K", {})
    secret_ish = "0x" + "zz" * 32
    with pytest.raises(ConfigError) as exc:
        load_signing_key(None, "K", {"K": secret_ish})
    assert secret_ish not in str(exc.value)


@pytest.mark.parametrize(
    "content",
    [
        ("0x" + "ab" * 31).encode(),  # a digit pair short
        ("0x" + "00" * 32).encode(),  # zero is no secp256k1 key
        "0x" + "\u00e9" * 64,  # not ASCII: a garbled or wrong file
    ],
    ids=["short", "zero", "not-ascii"],
)
def test_a_key_file_that_holds_no_usable_key_is_a_config_error(
    tmp_path: Path, content: bytes | str
) -> None:
    """A short, zero or non-ASCII key file is a ConfigError naming the file, never a traceback,
    and never showing what the file holds."""
    path = tmp_path / "key"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=r"signing\.key_file") as exc:
        load_signing_key(str(path), None)
    assert path.read_bytes().decode("utf-8")[4:] not in str(exc.value)


def test_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    """A key file that does not exist is reported with its path."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_signing_key(str(tmp_path / "nope"), None)


def test_a_key_file_that_is_a_directory_is_named_as_such(tmp_path: Path) -> None:
    """A directory is not a key file: it was refused as 'accessible by group or others (mode
    755); chmod 600 it', advice that cannot help."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    keys.chmod(0o755)  # whatever the umask
    with pytest.raises(ConfigError) as caught:
        load_signing_key(str(keys), None)
    assert caught.value.problems == [f"signing.key_file: {keys} is a directory, not a file"]


def test_a_key_file_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    """A FIFO nobody writes, mode 600: the key's read waited on it for ever (the daemon's
    start with it); it is refused at once, named as what it is."""
    fifo = tmp_path / "key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError) as caught:
        load_signing_key(str(fifo), None)
    assert caught.value.problems == [f"signing.key_file: {fifo} is a FIFO, not a file"]


def test_signing_config_needs_exactly_one_key_source() -> None:
    """[signing] enabled with neither or both of key_file and key_env is a config problem."""
    named = {"enabled": True, "deployment": "prod", "lease_file": "lease.json"}
    with pytest.raises(ConfigError, match="exactly one of key_file and key_env"):
        make_config(signing=named)
    with pytest.raises(ConfigError, match="exactly one of key_file and key_env"):
        make_config(signing={**named, "key_file": "k", "key_env": "K"})
    assert make_config(signing={**named, "key_env": "K"}).signing.key_env == "K"


def test_signing_config_needs_a_deployment_name() -> None:
    """[signing] enabled without `deployment` is a config problem naming the key (no default:
    one shared by every deployment would let a staging price pass in production); a name with
    a space is refused by its shape; with one, it is the signer's."""
    with pytest.raises(ConfigError, match=r"signing\.deployment: required when signing is enabled"):
        make_config(signing={"enabled": True, "key_env": "K", "lease_file": "lease.json"})
    with pytest.raises(ConfigError, match=r"signing\.deployment"):
        make_config(signing={"enabled": True, "key_env": "K", "deployment": "prod uction"})
    named = {"enabled": True, "key_env": "K", "lease_file": "lease.json"}
    cfg = make_config(signing={**named, "deployment": "staging-eu"})
    assert cfg.signing.deployment == "staging-eu"


class Delivery:
    """A signer worker's hand-on callback: keeps each signed round and wakes `next`."""

    def __init__(self) -> None:
        self.rounds: list[SignedRound] = []
        self._arrived = asyncio.Event()

    def __call__(self, signed: SignedRound) -> None:
        self.rounds.append(signed)
        self._arrived.set()

    async def next(self) -> None:
        """Until a round is handed on after the last call (a 10 s hang guard)."""
        async with asyncio.timeout(10):
            await self._arrived.wait()
        self._arrived.clear()


async def test_the_signer_worker_skips_a_round_while_the_last_is_being_signed() -> None:
    """Two rounds back to back: the second is counted busy and skipped (handed back as unsigned),
    the first is delivered."""
    rounds = Rounds(make_config())
    signer = RoundSigner(KEY, "test")
    delivered = Delivery()
    unsigned: list[tuple[RoundResult, str]] = []
    worker = SignerWorker(signer, delivered, on_unsigned=lambda *args: unsigned.append(args))
    first, second = rounds.step(), rounds.step()
    worker.submit(first)
    worker.submit(second)  # the first's future cannot be done before the loop runs again
    assert unsigned == [(second, "busy")]  # at once: the round loop learns it in its own turn
    assert worker.signing == first.ts  # the round on its way
    await delivered.next()
    assert worker.signing is None
    assert [s.round for s in delivered.rounds] == [first.round]
    assert (
        signer.stats.errors == {"busy": 1, "error": 0, "floor": 0, "lease": 0, "stale": 0}
        and signer.stats.signed == 1
    )
    assert signer.stats.last_seconds > 0
    worker.submit(rounds.step())  # free again
    await delivered.next()
    assert len(delivered.rounds) == 2
    worker.close()


async def test_the_round_after_a_stall_is_signed_and_the_one_before_it_is_not_sent() -> None:
    """A round handed on while the one before a stall is still on its way (`resumed`: the loop
    caught up since) is signed after it, not skipped as busy; the pre-stall round's signature,
    older than the round just published, comes back unsigned as `stale`, and is never handed
    on."""
    rounds = Rounds(make_config())
    signer = RoundSigner(KEY, "test")
    delivered = Delivery()
    unsigned: list[tuple[RoundResult, str]] = []
    worker = SignerWorker(signer, delivered, on_unsigned=lambda *args: unsigned.append(args))
    before = rounds.step()
    for _ in range(40):  # computed, unpublished, by the catch-up
        rounds.step()
    after = rounds.step()
    worker.submit(before)
    worker.submit(after, resumed=True)  # the first's future cannot be done yet
    assert worker.signing == after.ts
    await delivered.next()
    assert [s.ts for s in delivered.rounds] == [after.ts]
    assert unsigned == [(before, "stale")]
    assert signer.stats.errors["stale"] == 1 and signer.stats.errors["busy"] == 0
    assert signer.stats.signed == 2  # signed, not sent
    worker.submit(rounds.step(), resumed=True)  # nothing on its way: nothing stale
    await delivered.next()
    assert len(delivered.rounds) == 2 and signer.stats.errors["stale"] == 1
    worker.close()


async def test_a_round_that_cannot_be_signed_is_counted_logged_and_not_delivered() -> None:
    """A round whose price no leaf can carry (wider than int256) fails in the worker: it is
    counted as an error and logged (no stray traceback on the loop), it is handed back as
    unsigned, and the next round is signed."""
    rounds = Rounds(make_config())
    signer = RoundSigner(KEY, "test")
    delivered = Delivery()
    unhandled: list[dict[str, object]] = []  # the loop's own: a test-scoped loop
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unhandled.append(ctx))
    unsigned: list[tuple[RoundResult, str]] = []
    worker = SignerWorker(signer, delivered, on_unsigned=lambda *args: unsigned.append(args))
    bad = rounds.step()
    bad.price[0] = 1e80  # an active market priced past what a signed int256 holds
    with capture_logs() as logs:
        worker.submit(bad)
        async with asyncio.timeout(10):
            while signer.stats.errors["error"] == 0:  # noqa: ASYNC110 - the worker thread's
                await asyncio.sleep(0.005)
        await asyncio.sleep(0)  # the done callback runs on the loop
    assert delivered.rounds == [] and signer.stats.signed == 0 and unhandled == []
    assert unsigned == [(bad, "error")]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["round not signed"]
    (said,) = [e["error"] for e in logs if e["log_level"] == "error"]
    # In words: it was `ValueError('leaf price out of range: Leaf(market=...)')`, a repr.
    assert said == "ValueError: BTC/USD: price or confidence wider than a signed leaf's 256 bits"
    good = rounds.step()
    worker.submit(good)  # the failed round left the worker free
    await delivered.next()
    assert [s.round for s in delivered.rounds] == [good.round] and unsigned == [(bad, "error")]
    worker.close()


def _new_key_command(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oracled.publish.signer", "new-key", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_new_key_writes_a_private_key_file_and_prints_its_address(tmp_path: Path) -> None:
    """The documented `new-key` command writes a mode 600 key that loads, and prints its
    address (the one to add to the consumers' allowed sets)."""
    path = tmp_path / "signing.key"
    done = _new_key_command(path)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert done.stdout.strip() == load_signing_key(str(path), None).address


@pytest.mark.parametrize("case", ["exists", "no_directory"])
def test_new_key_refuses_a_path_it_cannot_create_with_a_message(tmp_path: Path, case: str) -> None:
    """An existing file is never overwritten and a missing directory is named: both are one
    line on stderr and exit code 1, not a traceback. Found by running the rotation steps of
    docs/publishing.md twice: the second `new-key` on the same path ended in FileExistsError."""
    path = tmp_path / "signing.key" if case == "exists" else tmp_path / "missing" / "signing.key"
    if case == "exists":
        path.write_text("keep me\n")
    done = _new_key_command(path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and str(path) in done.stderr, done.stderr
    assert done.stdout == ""
    if case == "exists":
        assert path.read_text() == "keep me\n"
    else:
        assert not path.parent.exists()


def test_a_relative_key_file_not_found_names_the_directory_it_was_looked_for_in(
    tmp_path: Path,
) -> None:
    """`key_file = "signing.key"` is read from the working directory, not the config's: when
    it is not there, the refusal says where it looked. Found starting `oracled run` from
    another directory with the key beside the config: 'cannot read signing.key (No such file
    or directory)' while `ls` beside the config showed it."""
    (tmp_path / "signing.key").write_text(SigningKey.generate().hex())
    (tmp_path / "signing.key").chmod(0o600)
    config = tmp_path / "oracled.toml"
    config.write_text(
        '[signing]\nenabled = true\ndeployment = "test"\nkey_file = "signing.key"\n'
        'lease_file = "signing-lease.json"\n\n'
        '[sources.binance]\ntype = "binance"\n\n'
        '[[markets]]\nsymbol = "BTC/USD"\nmin_sources = 1\n'
        'sources = [{ source = "binance", pair = "BTC/USD" }]\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "oracled.cli", "run", "--config", str(config)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"signing.key_file: cannot read {elsewhere / 'signing.key'}" in done.stderr
    assert "relative to the working directory" in done.stderr
