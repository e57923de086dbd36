"""The one-way flow of docs/ARCHITECTURE.md, checked on every module's imports.

sources -> quotes -> core -> publish -> downstream: a layer never imports one after it, the core
imports nothing that does I/O or reads the clock, and downstream code (the client and the margin
engine) knows the daemon only through what it publishes. Imports are read from the source text
(function-level ones included), so a lazy import cannot slip past.
"""

from __future__ import annotations

import ast
import pkgutil
import re
from pathlib import Path

import pytest

import oracled

PACKAGE_DIR = Path(oracled.__file__).parent

CORE = ("oracled.core", "oracled.aggregate", "oracled.gates", "oracled.mark")
SOURCES = ("oracled.sources",)
PUBLISH = ("oracled.publish",)
DOWNSTREAM = ("oracled.client", "oracled.client_seen", "oracled.client_stream", "oracled.margin")

#: Modules a layer must not import (a prefix matches the package and everything in it).
FORBIDDEN: dict[tuple[str, ...], tuple[str, ...]] = {
    CORE: (
        # I/O, concurrency and the wall clock: the core is a function of (state, quotes, now).
        "asyncio",
        "aiohttp",
        "socket",
        "sqlite3",
        "threading",
        "time",
        "datetime",
        "random",
        "web3",
        "oracled.clock",
        "oracled.sources",
        "oracled.publish",
        "oracled.api",
        "oracled.service",
        "oracled.sim",
        *DOWNSTREAM,
    ),
    SOURCES: (
        "oracled.core",
        "oracled.aggregate",
        "oracled.gates",
        "oracled.mark",
        "oracled.publish",
        "oracled.api",
        "oracled.service",
        "oracled.stress",
        *DOWNSTREAM,
    ),
    PUBLISH: ("oracled.sources", "oracled.api", "oracled.service", "oracled.sim", *DOWNSTREAM),
    DOWNSTREAM: (
        "oracled.core",
        "oracled.aggregate",
        "oracled.gates",
        "oracled.mark",
        "oracled.sources",
        "oracled.service",
        "oracled.api",
        "oracled.sim",
    ),
}


def _module_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for info in pkgutil.walk_packages(oracled.__path__, "oracled."):
        rel = info.name.removeprefix("oracled.").replace(".", "/")
        path = PACKAGE_DIR / rel / "__init__.py" if info.ispkg else PACKAGE_DIR / f"{rel}.py"
        files[info.name] = path
    return files


MODULES = _module_files()


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def imports_of(path: Path, module: str) -> set[str]:
    """Every module `path` imports, relative imports resolved against `module`."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parents = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parents, base] if base else parents)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _cases() -> list[tuple[str, tuple[str, ...]]]:
    return [
        (module, forbidden)
        for module in sorted(MODULES)
        for layer, forbidden in FORBIDDEN.items()
        if _in(module, layer)
    ]


@pytest.mark.parametrize(("module", "forbidden"), _cases())
def test_no_layer_imports_against_the_flow(module: str, forbidden: tuple[str, ...]) -> None:
    """A module imports nothing its layer is forbidden (names the offending imports)."""
    bad = sorted(name for name in imports_of(MODULES[module], module) if _in(name, forbidden))
    assert bad == [], f"{module} imports {bad}"


def test_every_layer_has_modules_and_the_checker_sees_imports() -> None:
    """The rules are not vacuous: each layer matches modules, and the reader finds the imports a
    module really has (the core's book imports numpy and the model)."""
    for layer in FORBIDDEN:
        assert any(_in(m, layer) for m in MODULES), layer
    seen = imports_of(MODULES["oracled.aggregate.book"], "oracled.aggregate.book")
    assert {"numpy", "oracled.model"} <= seen


def test_relative_and_function_level_imports_are_read(tmp_path: Path) -> None:
    """A relative import and an import inside a function both count."""
    path = tmp_path / "mod.py"
    path.write_text("from ..publish import hub\n\ndef f() -> None:\n    import asyncio\n")
    seen = imports_of(path, "oracled.aggregate.mod")
    assert {"oracled.publish", "oracled.publish.hub", "asyncio"} <= seen


def test_the_architecture_names_every_top_level_module_and_only_modules_that_exist() -> None:
    """docs/ARCHITECTURE.md is where a reader learns the tree: each module or package at the top
    of `oracled/` has its place there (`demo.py`, `clock.py`, `errors.py` and `lograte.py` had
    none), and each path it names under `oracled/` is one of the tree."""
    text = (PACKAGE_DIR.parents[0] / "docs" / "ARCHITECTURE.md").read_text()
    named = {
        path.removeprefix("oracled/").rstrip("/")
        for path in re.findall(
            r"`((?:oracled/)?[a-z_][a-z0-9_]*(?:/[a-z_][a-z0-9_]*)*(?:\.py|/))`", text
        )
    }
    top = {
        path.name
        for path in PACKAGE_DIR.iterdir()
        if (path.suffix == ".py" and path.name != "__init__.py") or (path / "__init__.py").exists()
    }
    assert sorted(top - named) == []
    # Paths named relative to a package the text is inside of (`_base.py` in `sources/`, `evm/`).
    context = ("", "sources/", "sources/evm/")
    missing = [
        path
        for path in named
        if not path.startswith(("tests/", "benchmarks/"))
        and not any((PACKAGE_DIR / (prefix + path)).exists() for prefix in context)
    ]
    assert missing == []
