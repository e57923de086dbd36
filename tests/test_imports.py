"""Every module of the package imports on its own in a fresh interpreter."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

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
