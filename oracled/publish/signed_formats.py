"""Every signed format a daemon has signed rounds in, so that a stored round is checked in its own.

The signed format is the EIP-712 domain's `version`; each change of what a signature covers made
a new one (docs/publishing.md, *Changes to the signed format*), and the audit trail keeps rounds
of older formats for `retention_days` after an upgrade. What each format signs, as its release's
docs describe it:

- **1**: domain `EIP712Domain(string name,string version)` = ("oracled", "1"); every market's leaf
  is a `Price`, a perpetual's mark unsigned; no deployment.
- **2**: domain `EIP712Domain(string name,string version,bytes32 salt)` = ("oracled", "2",
  keccak256(deployment)); leaves as in 1.
- **3**: the salted domain with version "3"; a perpetual market's leaf is a `PerpPrice` (its mark
  and mark mode signed too).

The signed message is `OracleRound(ts, round, count, root)` in all three. A CLI concern only
(`oracled audit`): the daemon signs in `SIGNED_FORMAT` alone.
"""

from __future__ import annotations

from typing import Final

from oracled.eth import keccak
from oracled.publish.signer import ROUND_TYPE, SIGNED_FORMAT, deployment_salt

__all__ = ["FORMATS", "FORMAT_UNRECORDED", "format_digest", "needs_deployment", "signs_mark"]

#: The formats this oracled can check, oldest first.
FORMATS: Final[tuple[int, ...]] = tuple(range(1, SIGNED_FORMAT + 1))
#: The format of a round the trail stored without one (schema before version 4): format 1 was
#: the only one released before the trail recorded them.
FORMAT_UNRECORDED: Final = 1
_NAME: Final = "oracled"
_PLAIN_DOMAIN: Final = "EIP712Domain(string name,string version)"
_SALTED_DOMAIN: Final = "EIP712Domain(string name,string version,bytes32 salt)"


def needs_deployment(fmt: int) -> bool:
    """Whether the format's domain names a deployment (from format 2, its salt)."""
    return fmt >= 2


def signs_mark(fmt: int) -> bool:
    """Whether a perpetual market's leaf is a `PerpPrice` with its mark (from format 3)."""
    return fmt >= 3


def _separator(fmt: int, deployment: str | None) -> bytes:
    if fmt not in FORMATS:
        raise ValueError(f"no signed format {fmt}: this oracled knows {FORMATS}")
    name, version = keccak(_NAME.encode()), keccak(str(fmt).encode())
    if not needs_deployment(fmt):
        return keccak(keccak(_PLAIN_DOMAIN.encode()) + name + version)
    if not deployment:
        raise ValueError(f"signed format {fmt} needs a deployment")
    return keccak(keccak(_SALTED_DOMAIN.encode()) + name + version + deployment_salt(deployment))


def format_digest(
    fmt: int, ts: int, round_no: int, count: int, root: bytes, deployment: str | None
) -> bytes:
    """The EIP-712 digest of `OracleRound(ts, round, count, root)` in format `fmt`'s domain
    (`deployment` is ignored by format 1, required from 2); ValueError for an unknown format."""
    if len(root) != 32:
        raise ValueError("root must be 32 bytes")
    struct = keccak(
        keccak(ROUND_TYPE.encode())
        + b"".join((v % (1 << 256)).to_bytes(32, "big") for v in (ts, round_no, count))
        + root
    )
    return keccak(b"\x19\x01" + _separator(fmt, deployment) + struct)
