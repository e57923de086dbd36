"""The OracledFeed's `latestMany(bytes32[])`: its call encoded and its answer decoded with numpy.

The answer is a dynamic array of `(int128 price, int8 expo, uint48 ts, uint64 round, bool
paused)` (the contract's version 2; version 1 had no `paused`): a word that points at the array,
a word with its length, then five 32-byte words a market. eth-abi
decoded 1,000 markets in 36 to 67 ms of Python per word (a stream object, each static tuple
decoded twice: once to check pointers, once for the values), on the event loop, where venue
reads and rounds waited for it. Here the words are viewed as big-endian 64-bit lanes and every
check eth-abi makes in its strict mode is one array comparison: the pointer lands after the
head and inside the answer, the length's words are all there, each word is its type's value
zero- or sign-extended to 32 bytes, a bool 0 or 1. What eth-abi accepts, this accepts with the
same values; what it refuses, this refuses (`ValueError`): tests/publish/test_feed_abi.py holds
the two equal over random and hostile answers. Like eth-abi, bytes after the array are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from oracled.eth import selector

__all__ = ["Feeds", "decode_latest_many", "encode_latest_many"]

_LATEST_MANY: Final = selector("latestMany(bytes32[])")
_WORD: Final = 32
_FEED_WORDS: Final = 5  # price, expo, ts, round, paused
_LANES: Final = 4  # 64-bit lanes of a word, most significant first
_UINT48_END: Final = 1 << 48
_WORD_HEAD: Final = (32).to_bytes(32, "big")


@dataclass(frozen=True, slots=True)
class Feeds:
    """What `latestMany` answered, one entry a market, in the order asked (ints exact)."""

    price: list[int]
    expo: list[int]
    ts: list[int]  # ms; 0: never written
    round: list[int]
    paused: list[bool]  # oracled paused the market: the price is its last good one


def encode_latest_many(ids: list[bytes]) -> bytes:
    """The call data of `latestMany(ids)`: eth-abi's encoding of `bytes32[]`, joined directly
    (7 ms through eth-abi at 1,000 markets, on the loop as the decode was)."""
    if any(len(i) != _WORD for i in ids):
        raise ValueError("a market id is 32 bytes")
    return b"".join((_LATEST_MANY, _WORD_HEAD, len(ids).to_bytes(32, "big"), *ids))


def decode_latest_many(data: bytes) -> Feeds:
    """The feeds of a `latestMany` answer; ValueError where eth-abi's strict decode of
    `(int128,int8,uint48,uint64,bool)[]` raises."""
    size = len(data)
    if size < _WORD:
        raise ValueError(f"{size} bytes: no room for the array's pointer")
    at = int.from_bytes(data[:_WORD], "big")
    if not _WORD <= at < size:
        raise ValueError(f"the array's pointer {at} is not inside the {size}-byte answer")
    if at + _WORD > size:
        raise ValueError(f"the array's length at byte {at} is cut off")
    count = int.from_bytes(data[at : at + _WORD], "big")
    start = at + _WORD
    end = start + count * _FEED_WORDS * _WORD
    if end > size:
        raise ValueError(f"{count} feeds need {end - start} bytes; {size - start} follow")
    body = data[start:end]
    signed = np.frombuffer(body, dtype=">i8").reshape(count, _FEED_WORDS, _LANES)
    unsigned = np.frombuffer(body, dtype=">u8").reshape(count, _FEED_WORDS, _LANES)
    price_hi, price_lo = signed[:, 0, 2], signed[:, 0, 3]
    expo = signed[:, 1, 3]
    ts, round_no, paused = unsigned[:, 2, 3], unsigned[:, 3, 3], unsigned[:, 4, 3]
    # int128: the two upper lanes copy the sign of the third; int8: the three upper lanes and
    # the top 56 bits of the last copy its bit 7; uint48, uint64 and bool: upper lanes zero,
    # and a bool's last lane 0 or 1.
    sign = price_hi >> 63
    bad = (signed[:, 0, :2] != sign[:, None]).any(axis=1)
    bad |= (signed[:, 1, :3] != (expo >> 63)[:, None]).any(axis=1)
    bad |= (expo < -128) | (expo > 127)
    bad |= (unsigned[:, 2:, :3] != 0).any(axis=(1, 2))
    bad |= ts >= _UINT48_END
    bad |= paused > 1
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(f"feed {first}: a word is not its type's value padded to 32 bytes")
    price = price_lo.tolist()
    # Exact ints: the low lane alone where the high one only extends its sign (any price
    # oracled writes), high * 2**64 + low (unsigned) for the rest.
    for i in np.flatnonzero(price_hi != (price_lo >> 63)).tolist():
        price[i] = (int(price_hi[i]) << 64) + int(unsigned[i, 0, 3])
    return Feeds(price, expo.tolist(), ts.tolist(), round_no.tolist(), (paused == 1).tolist())
