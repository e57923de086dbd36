"""Ethereum's keccak-256, 4-byte selectors and EIP-55 addresses, without the eth-* libraries.

The daemon needs these three small things on every start (the config's checksummed addresses,
the signer's address, the multicall and push selectors). eth-utils takes about 0.3 s to import
(its pydantic models, package metadata) and eth-account about 1.5 s more (py_ecc computes BLS
pairing tables at import), so they are imported only where a configuration uses what only they
do: eth-abi where on-chain calls are encoded, eth-account where the pusher signs transactions,
web3 where an endpoint's chain id is asked. The tests hold these functions to eth-utils' results.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from sha3 import keccak_256 as _keccak_256

__all__ = ["checksum_address", "keccak", "recursion_limit_kept", "selector"]


@contextmanager
def recursion_limit_kept() -> Iterator[None]:
    """Around a late import of eth-account or web3: py_ecc, which both import, raises the
    interpreter's recursion limit to 100,000 at its first import, under which an untyped JSON
    decode of deeply nested brackets overflows the C stack (a segmentation fault) instead of
    raising RecursionError (`Service._lower_recursion_limit`). Imported while the daemon runs,
    it would do so behind the service's back; this puts the limit back as it was."""
    limit = sys.getrecursionlimit()
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def keccak(data: bytes) -> bytes:
    """Ethereum's keccak-256 (not NIST SHA3-256): safe-pysha3's C code, ~1.7 us a call here
    against ~7 us through pycryptodome, which matters at two hashes per market per round."""
    return bytes(_keccak_256(data).digest())


def selector(signature: str) -> bytes:
    """The 4-byte function selector of a signature such as ``"decimals()"``."""
    return keccak(signature.encode())[:4]


def checksum_address(address: bytes | str) -> str:
    """The EIP-55 mixed-case form of a 20-byte address (raw bytes, or 0x + 40 hex in any case):
    a hex digit is upper case where the same nibble of keccak(lower-case hex) is 8 or more.
    ValueError for anything else."""
    if isinstance(address, str):
        body = address.removeprefix("0x")
        if len(body) != 40:
            raise ValueError(f"{address!r} is not 0x + 40 hex digits")
        raw = bytes.fromhex(body)  # ValueError for a non-hex digit
    else:
        raw = address
    if len(raw) != 20:
        raise ValueError(f"an address is 20 bytes, not {len(raw)}")
    lower = raw.hex()
    digest = keccak(lower.encode()).hex()
    return "0x" + "".join(
        c.upper() if int(h, 16) >= 8 else c for c, h in zip(lower, digest, strict=False)
    )
