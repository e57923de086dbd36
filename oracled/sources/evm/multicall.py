"""Multicall3 `aggregate3`: many reads in one `eth_call`, every one executed on the same block.

Calldata is `aggregate3((address,bool,bytes)[])`, selector 0x82ad56cb, encoded with eth_abi once
per set of feeds (the reader caches it). The answer, `(bool success, bytes returnData)[]`, is
decoded here by hand: it is the only per-block decode of the whole chain, and walking the ABI
offsets directly costs a fraction of a generic decoder. Every offset and length is checked, so
a garbage answer raises `ValueError` instead of yielding wrong bytes.

Multicall3 is deployed at the same address on nearly every EVM chain:
https://github.com/mds1/multicall3 (the interface; oracled's tests install their own contract).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from oracled.eth import selector
from oracled.sources.evm.feed import Call

__all__ = [
    "AGGREGATE3",
    "GET_BLOCK_NUMBER",
    "GET_BLOCK_TIMESTAMP",
    "GET_CHAIN_ID",
    "decode_aggregate3",
    "encode_aggregate3",
    "selector",
]


AGGREGATE3: Final = selector("aggregate3((address,bool,bytes)[])")
GET_BLOCK_NUMBER: Final = selector("getBlockNumber()")
GET_CHAIN_ID: Final = selector("getChainId()")
GET_BLOCK_TIMESTAMP: Final = selector("getCurrentBlockTimestamp()")


def encode_aggregate3(calls: Sequence[Call]) -> bytes:
    """aggregate3 calldata, allowFailure on every call: one bad feed never hides the rest."""
    # eth-abi is imported when a reader first encodes its calls, not with this module: a daemon
    # without on-chain sources never pays its import (oracled/eth.py).
    from eth_abi.abi import encode as abi_encode

    items = [(c.target, True, c.data) for c in calls]
    return AGGREGATE3 + abi_encode(["(address,bool,bytes)[]"], [items])


def _word(data: bytes, at: int) -> int:
    if at < 0 or at + 32 > len(data):
        raise ValueError(f"aggregate3 answer truncated at byte {at}")
    return int.from_bytes(data[at : at + 32], "big")


def decode_aggregate3(data: bytes, expected: int) -> list[tuple[bool, bytes]]:
    """The `(success, returnData)` pairs of an aggregate3 answer holding `expected` results."""
    base = _word(data, 0)
    count = _word(data, base)
    if count != expected:
        raise ValueError(f"aggregate3 answered {count} results for {expected} calls")
    heads = base + 32
    size = len(data)
    out: list[tuple[bool, bytes]] = []
    append = out.append
    for i in range(count):
        item = heads + _word(data, heads + 32 * i)
        flag = _word(data, item)
        if flag > 1:
            raise ValueError("aggregate3 success flag is not a bool")
        start = item + _word(data, item + 32)
        length = _word(data, start)
        if start + 32 + length > size:
            raise ValueError("aggregate3 return data runs past the answer")
        append((flag == 1, data[start + 32 : start + 32 + length]))
    return out
