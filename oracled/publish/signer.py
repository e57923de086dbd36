"""Signed rounds: one EIP-712 signature over a Merkle root of a round's per-market prices.

Signing each report would cost one ECDSA signature per market per round (about 0.3 ms each through
eth-account); instead every market of a round becomes a leaf, the leaves become a Merkle tree, and
the daemon signs one EIP-712 typed message (`OracleRound`) that carries the root. A consumer checks
one market with its leaf, its proof (the sibling hashes up to the root) and the round signature;
the cost of signing does not grow with the number of markets (hashing does, about 2 keccaks per
market, which is why `RoundSigner.sign` is meant to run in a worker thread).

The scheme, in full (docs/publishing.md has it for consumers):

- leaf = EIP-712 struct hash of `Price(string market,uint64 ts,uint8 status,int256 price,
  uint256 confidence,int8 expo)`, where `price` and `confidence` are the report's decimal strings
  read as integers at the market's exponent (`"64000.12"` at expo -2 is 6400012) and 0 when the
  market is not live; `status` is 0 active, 1 degraded, 2 paused, 3 unknown;
- a perpetual market's leaf (one with `perp_sources`) is `PerpPrice`: the same fields followed by
  `int256 mark` (the report's mark price at the same exponent, 0 when it has none) and
  `uint8 markMode` (0 perps, 1 fallback, 2 none: what made the mark), so that the mark margin
  engines liquidate on is signed too; its own type hash keeps the two kinds of leaf apart;
- node = keccak256(left ‖ right); a node without a sibling moves up unchanged (never duplicated);
- the signed message is `OracleRound(uint64 ts,uint64 round,uint32 count,bytes32 root)` in the
  domain `EIP712Domain(string name,string version,bytes32 salt)` = ("oracled", "3",
  keccak256(deployment)), where the deployment is the operator's name for this installation
  (`signing.deployment`): one key used by two deployments signs for neither of the other;
  signatures are 65 bytes r ‖ s ‖ v with v 27 or 28 and a low s, as Ethereum's ecrecover expects.

A stall notice (`<prefix>.stalled` on NATS: the round loop has stalled after round `ts`) is signed
by the same key as `OracleStall(uint64 ts,uint64 round,string message)` in the same domain, its
own type hash keeping it apart from any round's signature.

Digests are computed here with plain keccak rather than through eth-account's typed-data encoder,
which would rebuild the type strings on every call; a test holds both to the same bytes.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import coincurve
import msgspec
import structlog

from oracled.errors import ConfigError, OracledError, described
from oracled.eth import checksum_address, keccak, recursion_limit_kept
from oracled.files import NotRegularFileError, read_regular
from oracled.model import Status

if TYPE_CHECKING:
    from oracled.core import RoundResult
    from oracled.publish.sign_lease import SignLease

__all__ = [
    "DOMAIN",
    "ERROR_REASONS",
    "MARK_MODES",
    "PERP_PRICE_TYPE",
    "PRICE_TYPE",
    "ROUND_TYPE",
    "SIGNED_FORMAT",
    "STALL_TYPE",
    "STATUS_CODES",
    "Leaf",
    "RoundSigner",
    "SignatureError",
    "SignedPrice",
    "SignedRound",
    "SignerStats",
    "SignerWorker",
    "SigningKey",
    "decimal_to_int",
    "deployment_salt",
    "domain_separator",
    "leaf_hash",
    "load_signing_key",
    "merkle_levels",
    "merkle_proof",
    "recover_signer",
    "root_from_proof",
    "round_digest",
    "stall_digest",
    "stall_typed_data",
    "typed_data",
]


#: The fixed part of the EIP-712 domain; the `salt` is the deployment's (`domain_separator`).
DOMAIN: Final = {"name": "oracled", "version": "3"}
#: The signed format this daemon signs in: the domain's version (the audit trail records it per
#: round, so that `oracled audit --verify` checks a round in the format that signed it).
SIGNED_FORMAT: Final = int(DOMAIN["version"])
PRICE_TYPE: Final = (
    "Price(string market,uint64 ts,uint8 status,int256 price,uint256 confidence,int8 expo)"
)
PERP_PRICE_TYPE: Final = (
    "PerpPrice(string market,uint64 ts,uint8 status,int256 price,uint256 confidence,int8 expo,"
    "int256 mark,uint8 markMode)"
)
ROUND_TYPE: Final = "OracleRound(uint64 ts,uint64 round,uint32 count,bytes32 root)"
STALL_TYPE: Final = "OracleStall(uint64 ts,uint64 round,string message)"
_DOMAIN_TYPE: Final = "EIP712Domain(string name,string version,bytes32 salt)"
_PRICE_TYPEHASH: Final = keccak(PRICE_TYPE.encode())
_PERP_PRICE_TYPEHASH: Final = keccak(PERP_PRICE_TYPE.encode())
_ROUND_TYPEHASH: Final = keccak(ROUND_TYPE.encode())
_STALL_TYPEHASH: Final = keccak(STALL_TYPE.encode())
#: Status label -> the uint8 in a leaf (the order of `oracled.model.Status`).
STATUS_CODES: Final[Mapping[str, int]] = {s.label: int(s) for s in Status}
STATUS_LABELS: Final[tuple[str, ...]] = tuple(s.label for s in Status)
#: What made a perpetual's mark, by its uint8 in a leaf (`oracled.mark.engine.MODES`' order).
MARK_MODES: Final[tuple[str, ...]] = ("perps", "fallback", "none")
MARK_MODE_CODES: Final[Mapping[str, int]] = {m: i for i, m in enumerate(MARK_MODES)}
_MODE_NONE: Final = MARK_MODE_CODES["none"]
_SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_INT256_MIN, _INT256_MAX = -(1 << 255), (1 << 255) - 1


class SignatureError(OracledError):
    """A signature, proof or signed payload that does not check out; `reason` is a short code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _word(value: int) -> bytes:
    """One ABI word: two's complement for negatives (int256/int8 sign-extend the same way)."""
    return (value % (1 << 256)).to_bytes(32, "big")


def decimal_to_int(text: str, decimals: int) -> int:
    """A report's decimal string at `decimals` places as an integer mantissa, exactly.

    Strict on purpose: the signed integer must be the very string consumers see, so a string with
    another number of places (or anything but digits) is an error, not something to round.
    """
    negative = text.startswith("-")
    whole, dot, frac = text.removeprefix("-").partition(".")
    if len(frac) != decimals or (dot and not frac) or not whole.isdigit():
        raise ValueError(f"{text!r} is not a decimal with {decimals} places")
    if frac and not frac.isdigit():
        raise ValueError(f"{text!r} is not a decimal with {decimals} places")
    value = int(whole + frac)
    return -value if negative else value


@dataclass(frozen=True, slots=True)
class Leaf:
    """What the signature covers for one market in one round (integers only, never floats).

    `mark` is None for a spot market (a `Price` leaf); a perpetual market's leaf (`PerpPrice`)
    has its mark mantissa (0 without a mark) and `mark_mode` (MARK_MODES).
    """

    market: str
    ts: int
    status: int  # STATUS_CODES
    price: int  # mantissa; 0 when not live
    confidence: int
    expo: int  # price = mantissa x 10**expo
    mark: int | None = None  # mantissa at `expo`; None: not a perpetual market
    mark_mode: int = _MODE_NONE  # MARK_MODES; only with a mark


def leaf_hash(leaf: Leaf, market_hash: bytes | None = None) -> bytes:
    """The EIP-712 struct hash of a `Price` (or, with a mark, a `PerpPrice`); pass the market's
    keccak to skip rehashing it."""
    if not (0 <= leaf.ts < 1 << 64 and 0 <= leaf.status < 256 and -128 <= leaf.expo < 128):
        raise ValueError(
            f"{leaf.market}: ts {leaf.ts}, status {leaf.status} or expo {leaf.expo} out of a"
            " signed leaf's range"
        )
    if not (_INT256_MIN <= leaf.price <= _INT256_MAX and 0 <= leaf.confidence < 1 << 256):
        raise ValueError(f"{leaf.market}: price or confidence wider than a signed leaf's 256 bits")
    if leaf.mark is None:
        typehash, tail = _PRICE_TYPEHASH, b""
    elif _INT256_MIN <= leaf.mark <= _INT256_MAX and 0 <= leaf.mark_mode < 256:
        typehash, tail = _PERP_PRICE_TYPEHASH, _word(leaf.mark) + _word(leaf.mark_mode)
    else:
        raise ValueError(f"{leaf.market}: mark wider than a signed leaf's 256 bits")
    return keccak(
        b"".join(
            (
                typehash,
                market_hash or keccak(leaf.market.encode()),
                _word(leaf.ts),
                _word(leaf.status),
                _word(leaf.price),
                _word(leaf.confidence),
                _word(leaf.expo),
                tail,  # a PerpPrice's mark and markMode follow the Price fields
            )
        )
    )


def merkle_levels(hashes: Sequence[bytes]) -> list[list[bytes]]:
    """All levels of the tree, leaves first; a node without a sibling moves up unchanged."""
    if not hashes:
        raise ValueError("a round has at least one market")
    levels = [list(hashes)]
    level = levels[0]
    while len(level) > 1:
        up = [keccak(level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])
        levels.append(up)
        level = up
    return levels


def merkle_proof(levels: Sequence[Sequence[bytes]], index: int) -> list[bytes]:
    """Sibling hashes from leaf `index` up to the root (levels where it has none are skipped)."""
    proof: list[bytes] = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        index >>= 1
    return proof


def root_from_proof(
    leaf: bytes,
    index: int,
    count: int,
    proof: Sequence[bytes],
    nodes: dict[bytes, bytes] | None = None,
) -> bytes:
    """Fold a proof into the root it implies; SignatureError if it has the wrong length.

    The shape of the tree follows from `count` alone, so a proof with a hash too many or too few
    (a truncated one) is refused before any hashing. `nodes` memoizes keccak(left ‖ right) ->
    node across calls: the proofs of one round's markets share their upper levels (and two
    sibling leaves their first pair), so a consumer verifying every market of a round hashes
    about one node per market instead of one per level. The caller bounds it.
    """
    if not 0 <= index < count:
        raise SignatureError("bad_proof", f"index {index} outside a round of {count}")
    node, width, used = leaf, count, 0
    while width > 1:
        sibling = index ^ 1
        if sibling < width:
            if used >= len(proof):
                raise SignatureError("truncated", "the proof is shorter than the tree")
            other = proof[used]
            used += 1
            pair = node + other if index % 2 == 0 else other + node
            if nodes is None:
                node = keccak(pair)
            else:
                parent = nodes.get(pair)
                if parent is None:
                    parent = nodes[pair] = keccak(pair)
                node = parent
        index >>= 1
        width = (width + 1) // 2
    if used != len(proof):
        raise SignatureError("bad_proof", "the proof is longer than the tree")
    return node


def deployment_salt(deployment: str) -> bytes:
    """The domain's `salt`: keccak256 of the deployment name's UTF-8 bytes."""
    if not deployment:
        raise ValueError("a deployment name is required")
    return keccak(deployment.encode())


@lru_cache(maxsize=16)
def domain_separator(deployment: str) -> bytes:
    """hashStruct(EIP712Domain) for ("oracled", version, keccak256(deployment)).

    Cached: a consumer checks every message against one or two deployments, and the separator
    is four keccaks it would otherwise repeat per message.
    """
    return keccak(
        keccak(_DOMAIN_TYPE.encode())
        + keccak(DOMAIN["name"].encode())
        + keccak(DOMAIN["version"].encode())
        + deployment_salt(deployment)
    )


def round_digest(ts: int, round_no: int, count: int, root: bytes, deployment: str) -> bytes:
    """The EIP-712 digest the daemon signs: keccak(0x1901 ‖ domain ‖ hashStruct(OracleRound)).

    `deployment` is the one the signer was configured with, or, for a consumer, the one it
    expects: never a message's own claim, or any deployment's signature would pass.
    """
    if len(root) != 32:
        raise ValueError("root must be 32 bytes")
    struct_hash = keccak(_ROUND_TYPEHASH + _word(ts) + _word(round_no) + _word(count) + root)
    return keccak(b"\x19\x01" + domain_separator(deployment) + struct_hash)


def stall_digest(ts: int, round_no: int, message: str, deployment: str) -> bytes:
    """The EIP-712 digest of a stall notice: `OracleStall(ts, round, message)`, the round after
    which the daemon's rounds stalled and its words, in the rounds' domain. `deployment`: as for
    `round_digest`, the consumer's own, never the notice's claim."""
    struct_hash = keccak(
        _STALL_TYPEHASH + _word(ts) + _word(round_no) + keccak(message.encode("utf-8"))
    )
    return keccak(b"\x19\x01" + domain_separator(deployment) + struct_hash)


def stall_typed_data(ts: int, round_no: int, message: str, deployment: str) -> dict[str, Any]:
    """`stall_digest`'s message as an EIP-712 document, for eth-account's `encode_typed_data`."""
    document = typed_data(ts, round_no, 0, bytes(32), deployment)  # the same domain
    return {
        "types": {
            "EIP712Domain": document["types"]["EIP712Domain"],
            "OracleStall": [
                {"name": "ts", "type": "uint64"},
                {"name": "round", "type": "uint64"},
                {"name": "message", "type": "string"},
            ],
        },
        "primaryType": "OracleStall",
        "domain": document["domain"],
        "message": {"ts": ts, "round": round_no, "message": message},
    }


def typed_data(ts: int, round_no: int, count: int, root: bytes, deployment: str) -> dict[str, Any]:
    """The same message as an EIP-712 document, for eth-account's `encode_typed_data`."""
    return {
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
        "domain": {**DOMAIN, "salt": deployment_salt(deployment)},
        "message": {"ts": ts, "round": round_no, "count": count, "root": root},
    }


def _address(public_key: coincurve.PublicKey) -> str:
    return checksum_address(keccak(public_key.format(compressed=False)[1:])[-20:])


def recover_signer(digest: bytes, signature: bytes) -> str:
    """The checksummed address that made `signature` over `digest`; SignatureError if none did."""
    if len(signature) != 65:
        raise SignatureError("bad_signature", f"{len(signature)} bytes, expected 65")
    v = signature[64]
    s = int.from_bytes(signature[32:64], "big")
    if v not in (27, 28) or not 0 < s <= _SECP256K1_N // 2:
        raise SignatureError("bad_signature", "v must be 27 or 28 and s in the lower half")
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes((v - 27,)), digest, hasher=None
        )
    except Exception as exc:  # coincurve raises bare Exception/ValueError for bad points
        raise SignatureError("bad_signature", "no public key matches") from exc
    return _address(public)


class SigningKey:
    """A secp256k1 private key. Its repr never shows the secret; only the address leaves it."""

    __slots__ = ("_key", "address")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError("a secp256k1 private key is 32 bytes")
        self._key = coincurve.PrivateKey(secret)  # raises ValueError for 0 or >= n
        # The tests hold it to eth-account's address of the same key; eth-account itself is not
        # imported here (oracled/eth.py says why).
        self.address: str = _address(self._key.public_key)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(coincurve.PrivateKey().secret)

    @classmethod
    def from_hex(cls, text: str) -> SigningKey:
        body = text.strip().removeprefix("0x")
        if len(body) != 64:
            raise ValueError("expected 64 hex digits (optionally 0x-prefixed)")
        try:
            return cls(bytes.fromhex(body))
        except ValueError:
            raise ValueError("expected 64 hex digits (optionally 0x-prefixed)") from None

    def hex(self) -> str:
        """The secret as 0x-hex: for writing a new key file, nothing else."""
        return "0x" + self._key.secret.hex()

    def sign_digest(self, digest: bytes) -> bytes:
        """65 bytes r ‖ s ‖ v (v 27/28); libsecp256k1 always returns the low-s form."""
        raw = self._key.sign_recoverable(digest, hasher=None)
        return raw[:64] + bytes((raw[64] + 27,))

    def sign_typed(self, message: dict[str, Any]) -> bytes:
        """Sign through eth-account's EIP-712 encoder (slower; cross-checks the fast path, and
        imported only for it: oracled/eth.py says why)."""
        with recursion_limit_kept():  # py_ecc raises it (oracled/eth.py)
            from eth_account import Account

        signed = Account.from_key(self._key.secret).sign_typed_data(full_message=message)
        return bytes(signed.signature)

    def __repr__(self) -> str:
        return f"SigningKey(address={self.address})"


def load_signing_key(
    key_file: str | None, key_env: str | None, env: Mapping[str, str] | None = None
) -> SigningKey:
    """Read the key named by the config; ConfigError (never showing the key) if it cannot be used.

    A key file must not be readable, writable or executable by group or others (like ssh keys):
    a key that other accounts may have read is refused rather than trusted.
    """
    env = os.environ if env is None else env
    if key_file is not None:
        path = Path(key_file)
        try:  # the mode checked is the one of the file read (its fstat)
            raw, info = read_regular(path)
            if stat.S_IMODE(info.st_mode) & 0o077:
                raise ConfigError(
                    [
                        f"signing.key_file: {path} is accessible by group or others "
                        f"(mode {stat.S_IMODE(info.st_mode):o}); chmod 600 it"
                    ]
                )
            text = raw.decode("ascii")
        except NotRegularFileError as exc:  # else a directory would be told to chmod 600
            raise ConfigError([f"signing.key_file: {path} is {exc.kind}, not a file"]) from None
        except OSError as exc:
            # A relative path is read from the working directory, not beside the config file:
            # say which file that was, or "no such file" contradicts an `ls` by the config.
            hint = "" if path.is_absolute() else "; relative to the working directory"
            raise ConfigError(
                [f"signing.key_file: cannot read {path.absolute()} ({exc.strerror or exc}{hint})"]
            ) from None
        except UnicodeDecodeError:
            raise ConfigError([f"signing.key_file: {path} is not a hex key"]) from None
        where = f"signing.key_file: {path}"
    elif key_env is not None:
        found = env.get(key_env)
        if not found:
            raise ConfigError([f"signing.key_env: ${key_env} is not set"])
        text, where = found, f"signing.key_env: ${key_env}"
    else:
        raise ConfigError(["signing: set key_file or key_env"])
    try:
        return SigningKey.from_hex(text)
    except ValueError as exc:
        raise ConfigError([f"{where} does not hold a usable key ({exc})"]) from None


class SignedPrice(msgspec.Struct, frozen=True, forbid_unknown_fields=False, omit_defaults=True):
    """One market's signed price as it travels (stream `signed` frames, NATS price subjects).

    `price` and `confidence` are integer strings (JSON numbers lose precision above 2**53);
    the value is `int(price) * 10**expo`. Everything from `count` to `signer` proves it. A
    perpetual market's also carry `mark` (an integer string at `expo`) and `mark_mode`, which
    its `PerpPrice` leaf covers; a spot market's have neither (they are left out, not null).
    `deployment` says which domain it was signed in, so that a consumer can tell a message of
    another deployment apart; a consumer checks against the deployment it expects, never this field
    (None: a message of the old format, which named none).
    """

    market: str
    ts: int
    round: int
    status: str
    price: str
    confidence: str
    expo: int
    count: int
    index: int
    root: str
    proof: list[str]
    signature: str
    signer: str
    deployment: str | None = None
    mark: str | None = None
    mark_mode: str | None = None

    def leaf(self) -> Leaf:
        """The leaf these fields describe; ValueError if a field cannot be one."""
        return _leaf_of(self, self.ts)


def _leaf_of(fields: SignedPrice | RoundLeaf, ts: int) -> Leaf:
    """The leaf a SignedPrice or a RoundMessage's leaf describes; ValueError if it is none.

    A mark without its mode (or a mode without a mark) is refused rather than read as a spot
    leaf: the two kinds of leaf hash differently, so such a message could only fail later.
    """
    code = STATUS_CODES.get(fields.status)
    if code is None:
        raise ValueError(f"unknown status {fields.status!r}")
    price, confidence = _integer(fields.price), _integer(fields.confidence)
    if fields.mark is None and fields.mark_mode is None:
        return Leaf(fields.market, ts, code, price, confidence, fields.expo)
    mode = MARK_MODE_CODES.get(fields.mark_mode or "")
    if fields.mark is None or mode is None:
        raise ValueError(f"mark {fields.mark!r} with mark_mode {fields.mark_mode!r}")
    mark = _integer(fields.mark)
    return Leaf(fields.market, ts, code, price, confidence, fields.expo, mark, mode)


def _integer(text: str) -> int:
    """An integer as the daemon writes it: ASCII digits, a minus for negatives, no leading zero.

    `int()` alone also reads "+5", " 5", "0_5" and other scripts' digits: a message spelled so
    would verify and be handed on with a string other consumers cannot read.
    """
    value = int(text) if text.isascii() else None
    if value is None or str(value) != text:
        raise ValueError(f"{text[:80]!r} is not an integer as the daemon writes it")
    return value


class RoundLeaf(msgspec.Struct, frozen=True, omit_defaults=True):
    """One market in a round message (the round subject carries every leaf, no proofs)."""

    market: str
    status: str
    price: str
    confidence: str
    expo: int
    mark: str | None = None  # perpetual markets only, as in SignedPrice
    mark_mode: str | None = None

    def leaf(self, ts: int) -> Leaf:
        """The leaf of this market in the round of time `ts`; ValueError if it is none."""
        return _leaf_of(self, ts)


class RoundMessage(msgspec.Struct, frozen=True):
    """A whole signed round: rebuild the tree from `leaves` and check `root` and `signature`."""

    ts: int
    round: int
    count: int
    root: str
    signature: str
    signer: str
    leaves: list[RoundLeaf]
    deployment: str | None = None  # as in SignedPrice: a label, never what is checked


_ENCODER = msgspec.json.Encoder()
#: Why a round was left unsigned: the previous one was still being signed, an error, its time
#: not after one this key signed before (the floor), the signing lease not reaching it yet, or
#: signed before a stall of the round loop and not sent after it (stale).
ERROR_REASONS: Final = ("busy", "error", "floor", "lease", "stale")


@dataclass(slots=True)
class SignerStats:
    """Plain counters read by the metrics collector at scrape time."""

    signed: int = 0  # rounds signed
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_REASONS, 0))
    last_seconds: float = 0.0  # time the last round took to hash and sign


@dataclass(frozen=True, slots=True, eq=False)
class SignedRound:
    """A signed round: its leaves, the tree, the signature; envelopes are built on demand."""

    ts: int
    round: int
    root: bytes
    signature: bytes
    signer: str
    leaves: tuple[Leaf, ...]
    levels: list[list[bytes]]
    deployment: str
    result: RoundResult | None = None  # what it was made from (stream filters read prices)
    _envelopes: dict[int, bytes] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.leaves)

    @property
    def format(self) -> int:
        """The signed format (domain version) it was signed in: this daemon's only one."""
        return SIGNED_FORMAT

    def proof(self, index: int) -> list[bytes]:
        return merkle_proof(self.levels, index)

    def signed_price(self, index: int) -> SignedPrice:
        leaf = self.leaves[index]
        return SignedPrice(
            market=leaf.market,
            ts=leaf.ts,
            round=self.round,
            status=STATUS_LABELS[leaf.status],
            price=str(leaf.price),
            confidence=str(leaf.confidence),
            expo=leaf.expo,
            count=self.count,
            index=index,
            root="0x" + self.root.hex(),
            proof=["0x" + h.hex() for h in self.proof(index)],
            signature="0x" + self.signature.hex(),
            signer=self.signer,
            deployment=self.deployment,
            mark=None if leaf.mark is None else str(leaf.mark),
            mark_mode=None if leaf.mark is None else MARK_MODES[leaf.mark_mode],
        )

    def envelope(self, index: int) -> bytes:
        """The JSON of one market's `SignedPrice`, encoded once per round."""
        data = self._envelopes.get(index)
        if data is None:
            data = self._envelopes[index] = _ENCODER.encode(self.signed_price(index))
        return data

    def message(self) -> bytes:
        """The JSON of the whole round (`RoundMessage`)."""
        return _ENCODER.encode(
            RoundMessage(
                ts=self.ts,
                round=self.round,
                count=self.count,
                root="0x" + self.root.hex(),
                signature="0x" + self.signature.hex(),
                signer=self.signer,
                leaves=[
                    RoundLeaf(
                        leaf.market,
                        STATUS_LABELS[leaf.status],
                        str(leaf.price),
                        str(leaf.confidence),
                        leaf.expo,
                        None if leaf.mark is None else str(leaf.mark),
                        None if leaf.mark is None else MARK_MODES[leaf.mark_mode],
                    )
                    for leaf in self.leaves
                ],
                deployment=self.deployment,
            )
        )


class RoundSigner:
    """Turns a RoundResult into a SignedRound. Thread-safe: it keeps no per-round state.

    Market-name hashes are cached (names change only on reload); the rest is 1 keccak per market,
    about 1 per market for the tree, and one signature.
    """

    __slots__ = ("_market_hashes", "deployment", "key", "stats")

    def __init__(self, key: SigningKey, deployment: str) -> None:
        domain_separator(deployment)  # ValueError now for an empty name, not at the first round
        self.key = key
        self.deployment = deployment
        self.stats = SignerStats()
        self._market_hashes: dict[str, bytes] = {}

    @property
    def address(self) -> str:
        return self.key.address

    def leaves(self, result: RoundResult) -> tuple[Leaf, ...]:
        """Every market's leaf, from the same decimal strings the reports carry (a perpetual's
        mark too: the report's `mark.price` is this float at the market's places)."""
        status = result.status.tolist()
        price = result.price.tolist()
        conf = result.confidence.tolist()
        decimals = result.layout.decimals.tolist()
        # A perpetual market's mark price and MODES place, from the round's arrays: making every
        # `MarkValues` of the round for two fields would cost more than the leaves themselves.
        marks: dict[int, tuple[float, int]] = {}
        if result.mark is not None:
            m = result.mark
            marks = dict(
                zip(m.markets, zip(m.price.tolist(), m.modes.tolist(), strict=True), strict=True)
            )
        ts = result.ts
        out = []
        for i, market in enumerate(result.layout.markets):
            dec = decimals[i]
            live = status[i] <= Status.DEGRADED
            fmt = f".{dec}f"
            px = decimal_to_int(format(price[i], fmt), dec) if live else 0
            cf = decimal_to_int(format(conf[i], fmt), dec) if live else 0
            found = marks.get(i)
            if found is None:  # a spot market: a `Price` leaf
                out.append(Leaf(market, ts, status[i], px, cf, -dec))
                continue
            mark_price, mode = found
            mark = 0 if mode == _MODE_NONE else decimal_to_int(format(mark_price, fmt), dec)
            out.append(Leaf(market, ts, status[i], px, cf, -dec, mark, mode))
        return tuple(out)

    def sign_leaves(
        self,
        ts: int,
        round_no: int,
        leaves: tuple[Leaf, ...],
        result: RoundResult | None = None,
    ) -> SignedRound:
        hashes = self._market_hashes
        if len(hashes) > 4 * len(leaves) + 64:  # reloads renamed markets: start afresh
            hashes.clear()
        hashed = []
        for leaf in leaves:
            mh = hashes.get(leaf.market)
            if mh is None:
                mh = hashes[leaf.market] = keccak(leaf.market.encode())
            hashed.append(leaf_hash(leaf, mh))
        levels = merkle_levels(hashed)
        root = levels[-1][0]
        digest = round_digest(ts, round_no, len(leaves), root, self.deployment)
        signature = self.key.sign_digest(digest)
        self.stats.signed += 1
        return SignedRound(
            ts, round_no, root, signature, self.key.address, leaves, levels, self.deployment, result
        )

    def sign(self, result: RoundResult) -> SignedRound:
        """Hash and sign one round (milliseconds at 1,000 markets: call it off the event loop)."""
        return self.sign_leaves(result.ts, result.round, self.leaves(result), result)

    def sign_stall(self, ts: int, round_no: int, message: str) -> bytes:
        """Sign a stall notice (`stall_digest`): three keccaks and one signature, about a tenth
        of a millisecond, once per stalled round. It signs no round, so the floor and the lease
        that keep one round per round time have nothing to say about it."""
        return self.key.sign_digest(stall_digest(ts, round_no, message, self.deployment))


class SignerWorker:
    """Signs rounds in one worker thread and hands each SignedRound back on the event loop.

    The round loop only submits: it never waits for hashing or signing. A round submitted while
    the previous one is still being signed is skipped and counted (`busy`), so a slow signer
    makes signed rounds sparser instead of letting them queue up and fall behind.

    Nor is a round signed whose time is not after `floor` (counted `floor`): one key signs one
    round per round time, across restarts too (docs/publishing.md, *Equivocation*). With a
    `lease` (oracled/publish/sign_lease.py), nor one whose time the lease on disk does not reach
    yet (counted `lease`): the lease is extended in its own thread, never waited for here.

    After a stall of the round loop (`submit(..., resumed=True)`: rounds went unpublished
    before this one), the round published is signed even if the one before the stall is still
    on its way: the thread signs it next, and the pre-stall signature, which the blocked loop
    did not hand on, never does go out (counted `stale`): it is older than the round the
    consumers were just given.

    Every round submitted comes back once: signed to `on_signed`, or, skipped, failed or stale,
    to `on_unsigned` with the reason it was counted under (the NATS sink publishes signed rounds
    only, and must still learn that the round loop ran: a stall is over, whatever became of
    the signature).
    """

    def __init__(
        self,
        signer: RoundSigner,
        on_signed: Callable[[SignedRound], None],
        floor: int | None = None,
        lease: SignLease | None = None,
        on_unsigned: Callable[[RoundResult, str], None] | None = None,
    ) -> None:
        self.signer = signer
        self._on_signed = on_signed
        self._on_unsigned = on_unsigned
        #: the newest round time this key was handed to sign (from the audit trail and the lease
        #: at start, then each round's): a round at or before it is skipped, never signed again
        known = [f for f in (floor, None if lease is None else lease.floor) if f is not None]
        self.floor = max(known) if known else None
        self._lease = lease
        self._behind = False  # skipping rounds under the floor (logged once each way)
        self._unleased = False  # skipping rounds past the lease (logged once each way)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="oracled-signer")
        self._pending: asyncio.Future[SignedRound | None] | None = None
        #: the time of the round whose signature is on its way (not handed on yet), or None
        self._on_its_way: int | None = None
        #: the time of a round before a stall, whose signature is not handed on when it comes
        self._stale: int | None = None
        self._log = structlog.get_logger("oracled").bind(component="signer")

    def take_lease(self, lease: SignLease) -> None:
        """Sign under `lease` from now on; its floor raises this one. The daemon takes the lease
        at the end of its start, after this worker is made, and before the first round."""
        self._lease = lease
        if lease.floor is not None and (self.floor is None or lease.floor > self.floor):
            self.floor = lease.floor

    def submit(self, result: RoundResult, resumed: bool = False) -> None:
        """Sign `result` in the thread, or hand it back unsigned with its reason. `resumed`:
        rounds before it went unpublished (the loop stalled, or fell behind, and caught up): a
        signature still on its way is stale, and this round is signed after it instead of
        being skipped as `busy` (one that finished while the loop was blocked is not handed on
        yet either: to the loop its round is still being signed)."""
        lease = self._lease
        if lease is not None and lease.due(result.ts):
            lease.extend(result.ts)  # queued for the lease thread: this round does not wait
        if resumed and self._on_its_way is not None:
            self._stale = self._on_its_way
        elif self._pending is not None and not self._pending.done():
            self.signer.stats.errors["busy"] += 1
            self._unsigned(result, "busy")
            return
        if self._under_floor(result.ts):
            self._unsigned(result, "floor")
            return
        if lease is not None and not self._leased(lease, result.ts):
            self._unsigned(result, "lease")
            return
        self.floor = self._on_its_way = result.ts
        loop = asyncio.get_running_loop()  # one thread: a stale round's signing comes first
        self._pending = loop.run_in_executor(self._pool, self._timed_sign, result)
        self._pending.add_done_callback(partial(self._done, result))

    @property
    def signing(self) -> int | None:
        """The time of the round being signed now, or None: a round skipped as `busy` is not a
        sign that signing stopped while this one is still on its way."""
        pending = self._pending
        return None if pending is None or pending.done() else self.floor

    def _unsigned(self, result: RoundResult, reason: str) -> None:
        if self._on_unsigned is not None:
            self._on_unsigned(result, reason)

    def _under_floor(self, ts: int) -> bool:
        """True (counted as `floor`) for a round time this key signed already, before a restart
        with the clock behind: a second round for one `ts` is equivocation to every consumer."""
        floor = self.floor
        if floor is None or ts > floor:
            if self._behind:
                self._behind = False
                self._log.info("signing resumed past the floor", floor=floor, ts=ts)
            return False
        self.signer.stats.errors["floor"] += 1
        if not self._behind:
            self._behind = True
            self._log.warning(
                "round not signed: this key signed up to a later round time before",
                floor=floor,
                ts=ts,
                resumes_in_ms=floor - ts + 1,
            )
        return True

    def _leased(self, lease: SignLease, ts: int) -> bool:
        """False (counted as `lease`) for a round time the lease on disk does not reach: a crash
        right after signing it would leave a floor under it, and a restart could sign it again."""
        if lease.covers(ts):
            if self._unleased:
                self._unleased = False
                self._log.info("signing resumed: the lease covers the rounds again", ts=ts)
            return True
        self.signer.stats.errors["lease"] += 1
        if not self._unleased and not lease.lost:  # a lost lock is logged by the lease
            self._unleased = True
            self._log.warning(
                "round not signed: the signing lease on disk does not reach its time",
                ts=ts,
                lease=lease.granted,
            )
        return False

    def _timed_sign(self, result: RoundResult) -> SignedRound | None:
        """The round signed, in the worker thread; None if the lease's lock is lost (`held`),
        asked here, just before the signature and off the loop: a daemon that took the lock
        after this look starts its rounds after this round's time."""
        lease = self._lease
        if lease is not None and not lease.held():
            return None
        started = time.perf_counter()
        signed = self.signer.sign(result)
        self.signer.stats.last_seconds = time.perf_counter() - started
        return signed

    def _done(self, result: RoundResult, future: asyncio.Future[SignedRound | None]) -> None:
        if self._on_its_way == result.ts:
            self._on_its_way = None
        stale = self._stale == result.ts  # a round before a stall: a newer one went out since
        if stale:
            self._stale = None
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.signer.stats.errors["error"] += 1
            self._log.error("round not signed", error=described(exc))
            self._unsigned(result, "error")
            return
        signed = future.result()
        if signed is None:  # the lease's lock was lost (logged there)
            self.signer.stats.errors["lease"] += 1
            self._unsigned(result, "lease")
            return
        if stale:
            self.signer.stats.errors["stale"] += 1
            self._log.warning(
                "round signature not sent: the round loop stalled before it went out, and a "
                "newer round went out since",
                ts=result.ts,
                round=result.round,
            )
            self._unsigned(result, "stale")
            return
        self._on_signed(signed)

    async def drain(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the round being signed, so that its signature reaches the
        sinks (the audit trail) before they close: stopped at once, the last round of every run
        was stored unsigned. False if it was not done in time (it is left to the thread)."""
        pending = self._pending
        if pending is None or pending.done():
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(pending)
        except TimeoutError:
            return False
        except Exception:
            return True
        await asyncio.sleep(0)  # `_done` runs as a callback: let it hand the signature on
        return True

    def close(self, lease_timeout_s: float = 1.0) -> bool:
        """Stop signing; with a lease, write it down to the newest round time handed to the
        signer (nothing after it was signed; none handed: back to what the start found), so
        that a clean restart need not wait it out.
        False if that write did not finish within `lease_timeout_s` (the lease on disk stays
        where it was, higher: safe, and a restart waits it out)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._lease is not None:
            return self._lease.close(self.floor, lease_timeout_s)
        return True


def _new_key(path: Path) -> int:
    """`python -m oracled.publish.signer new-key PATH`: write a fresh key (mode 600).

    Never over an existing file (that may be the key in use); a path it cannot create is one
    line naming it, exit code 1.
    """
    key = SigningKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        print(f"new-key: cannot create {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w") as out:
        out.write(key.hex() + "\n")
    print(key.address)
    return 0


if __name__ == "__main__":  # pragma: no cover - a two-line operator convenience
    if len(sys.argv) == 3 and sys.argv[1] == "new-key":
        raise SystemExit(_new_key(Path(sys.argv[2])))
    print("usage: python -m oracled.publish.signer new-key PATH", file=sys.stderr)
    raise SystemExit(2)
