"""`latestMany`'s call and answer without eth-abi, held to eth-abi's strict encode and decode.

eth-abi is the oracle: over valid answers, answers with a word mangled, pointers and lengths
moved, cut and lengthened answers, the numpy decoder gives the same feeds where eth-abi
decodes and refuses (ValueError) where eth-abi raises.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from eth_abi.abi import decode, encode
from hypothesis import given, settings
from hypothesis import strategies as st

from oracled.eth import selector
from oracled.publish.feed_abi import Feeds, decode_latest_many, encode_latest_many

FEED = "(int128,int8,uint48,uint64,bool)[]"

feeds = st.lists(
    st.tuples(
        st.integers(-(2**127), 2**127 - 1)
        | st.integers(-(2**63) - 2, 2**63 + 1)
        | st.integers(-(10**18), 10**18),
        st.integers(-128, 127),
        st.integers(0, 2**48 - 1),
        st.integers(0, 2**64 - 1),
        st.booleans(),
    ),
    max_size=12,
)


def word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def decoded(got: Feeds) -> list[tuple[int, int, int, int, bool]]:
    return list(zip(got.price, got.expo, got.ts, got.round, got.paused, strict=True))


def same_as_eth_abi(data: bytes) -> None:
    """The numpy decode equals eth-abi's, or both refuse."""
    try:
        (expected,) = decode([FEED], data)
    except Exception as exc:
        with pytest.raises(ValueError):
            decode_latest_many(data)
        assert type(exc).__module__.startswith("eth_abi")  # refused, not broken
        return
    got = decode_latest_many(data)
    assert decoded(got) == list(expected)


@settings(max_examples=150, deadline=None)
@given(feeds)
def test_a_valid_answer_decodes_to_eth_abis_values(values: list[Any]) -> None:
    """Every int128 (the int64 fast path and the wide rest), int8, uint48, uint64 and bool comes
    out as eth-abi decodes it."""
    data = encode([FEED], [values])
    got = decode_latest_many(data)
    assert decoded(got) == values
    same_as_eth_abi(data)


@settings(max_examples=300, deadline=None)
@given(feeds, st.randoms(use_true_random=False), st.integers(1, 4))
def test_an_answer_with_bytes_changed_is_refused_where_eth_abi_refuses_it(
    values: list[Any], rnd: random.Random, changes: int
) -> None:
    """Bytes overwritten anywhere (the pointer, the length, padding, sign extension): the same
    verdict and values as eth-abi's. The bytes are biased to 0x00, 0xff and 0x80, the values
    where padding and sign extension break or hold."""
    data = bytearray(encode([FEED], [values]))
    for _ in range(changes):
        at = rnd.randrange(len(data))
        data[at] = rnd.choice([0x00, 0xFF, 0x80, 0x7F, 0x01, rnd.randrange(256)])
    same_as_eth_abi(bytes(data))


@settings(max_examples=200, deadline=None)
@given(feeds, st.integers(-200, 200), st.binary(max_size=70))
def test_a_cut_or_lengthened_answer_is_judged_as_eth_abi_judges_it(
    values: list[Any], cut: int, tail: bytes
) -> None:
    """Cut anywhere (a word or less), or followed by bytes: eth-abi ignores what follows the
    array, and refuses an array whose words are not all there; so does the numpy decode."""
    data = encode([FEED], [values])
    data = data[: len(data) + cut] if cut < 0 else data + tail
    same_as_eth_abi(data)


def hostile() -> list[bytes]:
    one = encode([FEED], [[(5, -2, 7, 9, True)]])
    body = one[64:]
    return [
        b"",
        b"\x00" * 31,
        word(0),  # the pointer into its own head
        word(32),  # the length's word missing
        word(32) + word(0),  # empty
        word(64) + word(0),  # the pointer at the end of the answer
        word(64) + word(0) + word(0),  # past the head, to an empty array
        word(33) + b"\x00" + word(1) + body,  # a pointer not on a word boundary
        word(32) + word(2) + body,  # two feeds announced, one there
        word(32) + word(2**256 - 1) + body,  # a length no answer holds
        word(32) + word(2**64) + body,
        word(2**255) + word(1) + body,  # a pointer far past the answer
        word(96) + word(0) + word(0) + word(1) + body,  # a pointer past a gap
        one + b"\x01",  # a stray byte after the array
        word(32) + word(1) + word(2**127) + body[32:],  # int128 out of range, positive
        word(32) + word(1) + word(2**256 - 2**127 - 1) + body[32:],  # below int128's least
        word(32) + word(1) + word(2**256 - 2**127) + body[32:],  # int128's least
        word(32) + word(1) + body[:32] + word(128) + body[64:],  # int8 out of range
        word(32) + word(1) + body[:32] + word(2**256 - 129) + body[64:],
        word(32) + word(1) + body[:32] + word(2**256 - 128) + body[64:],  # int8's least
        word(32) + word(1) + body[:64] + word(2**48) + body[96:],  # uint48 out of range
        word(32) + word(1) + body[:64] + word(2**48 - 1) + body[96:],
        word(32) + word(1) + body[:96] + word(2**64) + body[128:],  # uint64 out of range
        word(32) + word(1) + body[:96] + word(2**64 - 1) + body[128:],
        word(32) + word(1) + body[:128] + word(0),  # paused: false
        word(32) + word(1) + body[:128] + word(2),  # a bool neither 0 nor 1
        word(32) + word(1) + body[:128] + word(2**64 + 1),  # 1 with a bit in its padding
        word(32) + word(1) + body[:128] + word(2**256 - 1),
        word(32) + word(1) + body[:128],  # the bool's word cut off (a version 1 answer)
        word(32) + word(1) + word(2**128 - 1) + body[32:],  # -1 without its sign extension
        word(32) + word(1) + word(2**256 - 1) + body[32:],  # -1
    ]


@pytest.mark.parametrize("data", hostile(), ids=range(len(hostile())))
def test_a_hostile_answer_gets_eth_abis_verdict(data: bytes) -> None:
    """Pointers into the head, past the answer or off a word boundary, lengths no answer
    holds, words just outside and just inside their type's range, a bool other than 0 or 1:
    eth-abi's verdict."""
    same_as_eth_abi(data)


def test_a_refusal_says_what_is_wrong() -> None:
    """The message names the fault, for the pusher's `bad answer` log line."""
    with pytest.raises(ValueError, match="pointer 0 is not inside"):
        decode_latest_many(word(0) + word(0))
    with pytest.raises(ValueError, match="2 feeds need 320 bytes; 160 follow"):
        decode_latest_many(word(32) + word(2) + encode([FEED], [[(1, 1, 1, 1, False)]])[64:])
    with pytest.raises(ValueError, match="feed 1: a word is not"):
        data = encode([FEED], [[(1, 1, 1, 1, False), (1, 1, 1, 1, True)]])
        decode_latest_many(data[: 64 + 160 + 64] + word(2**48) + data[64 + 160 + 96 :])
    with pytest.raises(ValueError, match="feed 0: a word is not"):
        data = encode([FEED], [[(1, 1, 1, 1, True)]])
        decode_latest_many(data[:-32] + word(2))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=20))
def test_the_call_is_eth_abis_encoding(ids: list[bytes]) -> None:
    """The call data is the selector and eth-abi's `bytes32[]` encoding, byte for byte."""
    expected = selector("latestMany(bytes32[])") + encode(["bytes32[]"], [ids])
    assert encode_latest_many(ids) == expected


def test_a_market_id_of_another_length_is_refused() -> None:
    """An id that is not 32 bytes would shift every word after it: refused, not sent."""
    with pytest.raises(ValueError, match="32 bytes"):
        encode_latest_many([b"\x00" * 31])
