"""Keccak, selectors and EIP-55 addresses computed without eth-utils give eth-utils' results."""

from __future__ import annotations

import subprocess
import sys

import pytest
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak as eth_keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from oracled.eth import checksum_address, keccak, selector

#: The examples of EIP-55 itself (eips.ethereum.org/EIPS/eip-55): all caps, all lower, mixed.
EIP55_EXAMPLES = [
    "0x52908400098527886E0F7030069857D2E4169EE7",
    "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
    "0xde709f2102306220921060314715629080e2fb77",
    "0x27b1fdb04752bbc536007a920d24acb045561c26",
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]


@pytest.mark.parametrize("address", EIP55_EXAMPLES)
def test_eip55_examples_keep_their_case(address: str) -> None:
    """Each example of the standard is its own checksummed form, from any case."""
    assert checksum_address(address) == address
    assert checksum_address(address.lower()) == address
    assert checksum_address("0x" + address[2:].upper()) == address
    assert checksum_address(bytes.fromhex(address[2:])) == address


@settings(deadline=None)  # eth-utils' first calls are slow on a loaded machine
@given(st.binary(min_size=20, max_size=20))
def test_checksum_address_is_eth_utils_one(raw: bytes) -> None:
    """Any 20 bytes get the address eth-utils gives them, as bytes or as hex."""
    expected = to_checksum_address(raw)
    assert checksum_address(raw) == expected
    assert checksum_address("0x" + raw.hex()) == expected


@pytest.mark.parametrize("bad", ["0x1234", "0x" + "g" * 40, "0x" + "00" * 21, b"\x00" * 19])
def test_what_is_not_an_address_is_a_value_error(bad: str | bytes) -> None:
    """Short, long or non-hex input is refused, never checksummed into something."""
    with pytest.raises(ValueError):
        checksum_address(bad)


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_keccak_is_eth_utils_one(data: bytes) -> None:
    """Ethereum's keccak-256, not NIST SHA3-256."""
    assert keccak(data) == eth_keccak(data)


@pytest.mark.parametrize(
    "signature",
    [
        "aggregate3((address,bool,bytes)[])",
        "updateBatch(uint64,uint48,bytes32[],int128[],int8[])",
        "latestMany(bytes32[])",
        "decimals()",
    ],
)
def test_selectors_are_eth_utils_ones(signature: str) -> None:
    """The 4-byte selectors the daemon sends are those eth-utils computes."""
    assert selector(signature) == function_signature_to_4byte_selector(signature)


def _fresh(code: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_a_late_import_of_eth_account_keeps_the_recursion_limit() -> None:
    """py_ecc, imported through eth-account, raises the limit to 100,000 at its first import;
    inside `recursion_limit_kept` the limit is as it was (in a fresh interpreter: this one has
    imported py_ecc already)."""
    out = _fresh(
        "import sys\n"
        "from oracled.eth import recursion_limit_kept\n"
        "limit = sys.getrecursionlimit()\n"
        "with recursion_limit_kept():\n"
        "    import eth_account\n"
        "print('py_ecc' in sys.modules, sys.getrecursionlimit() == limit)\n"
        "sys.modules.pop('py_ecc')\n"
        "import py_ecc\n"  # not kept: the import itself raises it, as the premise says
        "print(sys.getrecursionlimit())\n"
    )
    assert out == ["True", "True", "100000"]


def test_asking_an_endpoint_its_chain_id_keeps_the_recursion_limit() -> None:
    """The JSON-RPC client imports web3 (and with it py_ecc) on its first chain id question,
    while the daemon runs at the limit it lowered to: the limit stays where it was."""
    out = _fresh(
        "import asyncio, sys\n"
        "import aiohttp\n"
        "from oracled.clock import SystemClock\n"
        "from oracled.jsonrpc import RpcClient, RpcUnavailable\n"
        "limit = sys.getrecursionlimit()\n"
        "async def main():\n"
        "    async with aiohttp.ClientSession() as session:\n"
        "        rpc = RpcClient(['http://127.0.0.1:9'], session, clock=SystemClock())\n"
        "        try:\n"
        "            await rpc.chain_id(0)\n"
        "        except RpcUnavailable:\n"
        "            pass\n"
        "asyncio.run(main())\n"
        "print('py_ecc' in sys.modules, sys.getrecursionlimit() == limit)\n"
    )
    assert out == ["True", "True"]
