"""Every module of the package imports on its own in a fresh interpreter, and the daemon
imports no library that only other configurations use."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import oracled

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(oracled.__path__, "oracled.")
    if not m.name.endswith("__main__")
)


def _import_alone(module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.fixture(scope="module")
def imported() -> dict[str, subprocess.CompletedProcess[str]]:
    """Each module imported in an interpreter of its own, as many at a time as there are CPUs:
    the interpreters share nothing, and one after the other they took minutes of the suite."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(zip(MODULES, pool.map(_import_alone, MODULES), strict=True))


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(
    module: str, imported: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    """Importing the module by itself succeeds."""
    proc = imported[module]
    assert proc.returncode == 0, proc.stderr


#: Libraries only some configurations use, and what each costs to import on the 2-vCPU
#: machine (benchmarks/README.md, `bench_start.py`): eth-account ~1.5 s (py_ecc's pairing
#: tables), eth-utils ~0.3 s, eth-abi ~0.15 s (on-chain sources, the pusher), the NATS client
#: ~0.15 s (the NATS sink), web3 (on-chain sources).
OPTIONAL_HEAVY = ("eth_account", "py_ecc", "eth_keys", "eth_utils", "eth_abi", "nats", "web3")
SHIPPED_CONFIG = Path(oracled.__file__).parents[1] / "config" / "default.toml"


def test_the_daemon_and_its_shipped_config_load_without_the_optional_libraries() -> None:
    """`oracled run` and `check-config` import oracled.service and read the config; with the
    shipped one (no signing, pusher, NATS sink, nor RPC URL) neither imports the libraries
    only other configurations use, and py_ecc leaves the recursion limit alone."""
    code = (
        "import sys\n"
        "limit = sys.getrecursionlimit()\n"
        "import oracled.service\n"
        "from oracled.config import load_config\n"
        f"load_config({str(SHIPPED_CONFIG)!r}, env={{}})\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({OPTIONAL_HEAVY!r})))\n"
        "print(sys.getrecursionlimit() == limit)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[]", "True"]
