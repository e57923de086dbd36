"""The sink's NATS client reaches into nats-py's private state: the start checks it is there."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.transport import TcpTransport

from oracled.errors import ConfigError
from oracled.publish.nats_conn import (
    NATS_PY_TESTED,
    NATS_PY_VERSION,
    missing_internals,
    require_supported_client,
)

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


class _RenamedClient(Client):
    """A later nats-py as it could be: the reconnect renamed, the pending buffer and the
    server pool gone."""

    _attempt_reconnect = None

    def __init__(self) -> None:
        super().__init__()
        del self._pending
        del self._server_pool


class _RenamedTransport(TcpTransport):
    """A TCP transport whose writer is held under another name."""

    def __init__(self) -> None:
        super().__init__()
        del self._io_writer


@dataclasses.dataclass
class _RenamedServer:
    """nats-py's record of a server with the flag of an announced one renamed."""

    uri: str
    announced: bool = False


def test_the_installed_nats_py_has_every_internal_the_client_reaches_into() -> None:
    """On the nats-py installed (the pinned one) nothing is missing and the start goes on; it
    is the release the client was written against, so a new pin comes back here first."""
    assert missing_internals() == []
    require_supported_client()
    assert NATS_PY_VERSION.split(".")[:2] == NATS_PY_TESTED.split(".")


def test_the_package_allows_only_the_tested_nats_py() -> None:
    """pyproject's range is the tested minor release: an installed oracled never gets another."""
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    major, minor = (int(part) for part in NATS_PY_TESTED.split("."))
    assert [d for d in deps if d.startswith("nats-py")] == [
        f"nats-py>={NATS_PY_TESTED},<{major}.{minor + 1}"
    ]


def test_a_nats_py_without_those_internals_is_refused_naming_its_version() -> None:
    """A nats-py whose internals differ would run and silently neither reset a stalled
    connection nor drop what it held nor bound the servers announced: the start is refused
    instead, saying which release is installed, what it lacks and which one to install."""
    lacks = [
        "Client._attempt_reconnect()",
        "Client._pending",
        "Client._server_pool",
        "TcpTransport._io_writer",
        "Srv.discovered",
    ]
    assert missing_internals(_RenamedClient, _RenamedTransport, _RenamedServer) == lacks
    assert missing_internals(Client, TcpTransport, None) == ["Srv.uri", "Srv.discovered"]
    with pytest.raises(ConfigError) as refused:
        require_supported_client(_RenamedClient, _RenamedTransport, _RenamedServer)
    [problem] = refused.value.problems
    assert problem.startswith(f"nats.enabled: the installed nats-py {NATS_PY_VERSION} lacks ")
    assert ", ".join(lacks) in problem
    assert f"install nats-py {NATS_PY_TESTED}.x" in problem
