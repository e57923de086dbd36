"""The aggregate3 codec: round trip through eth_abi, and refusal of malformed answers."""

from __future__ import annotations

import pytest
from eth_abi.abi import encode
from hypothesis import given
from hypothesis import strategies as st

from oracled.sources.evm.feed import Call
from oracled.sources.evm.multicall import AGGREGATE3, decode_aggregate3, encode_aggregate3

RESULTS = st.lists(st.tuples(st.booleans(), st.binary(max_size=200)), max_size=20)


@given(RESULTS)
def test_decode_reads_what_the_abi_encodes(results: list[tuple[bool, bytes]]) -> None:
    """Any (success, returnData)[] encoded by eth_abi decodes to the same pairs."""
    data = encode(["(bool,bytes)[]"], [results])
    assert decode_aggregate3(data, len(results)) == results


def test_encode_is_aggregate3_with_failures_allowed() -> None:
    """The calldata starts with aggregate3's selector and allows every call to fail."""
    data = encode_aggregate3([Call("0x" + "11" * 20, b"\x01\x02")])
    assert data[:4] == AGGREGATE3 == bytes.fromhex("82ad56cb")
    assert data[4:] == encode(["(address,bool,bytes)[]"], [[("0x" + "11" * 20, True, b"\x01\x02")]])


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[:-40],  # truncated inside the last return data
        lambda d: d[:64],  # only the head
        lambda d: d[:32] + (99).to_bytes(32, "big") + d[64:],  # wrong count
        lambda d: d[:128] + (2).to_bytes(32, "big") + d[160:],  # success flag that is no bool
        lambda d: (10**6).to_bytes(32, "big") + d[32:],  # offset past the end
        lambda d: d[:192] + (4096).to_bytes(32, "big") + d[224:],  # a length past the end
    ],
)
def test_malformed_answers_raise(mangle: object) -> None:
    """A cut, mis-counted or out-of-bounds answer raises ValueError, never yields bytes."""
    data = encode(["(bool,bytes)[]"], [[(True, b"\xaa" * 40), (False, b"")]])
    with pytest.raises(ValueError, match="aggregate3"):
        decode_aggregate3(mangle(data), 2)  # type: ignore[operator]
