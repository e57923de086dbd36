"""Fixtures of the API tests: the rig, and a client on aiohttp's loopback test server."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, get_port_socket
from api_rig import ClientFactory, ContractRecorder, DaemonServer, Rig, make_config

from oracled.api import build_app
from oracled.config import Config


@pytest.fixture
def cfg() -> Config:
    return make_config()


@pytest.fixture
def rig(cfg: Config) -> Rig:
    return Rig(cfg)


@pytest.fixture
def contract() -> ContractRecorder:
    return ContractRecorder()


def small_buffer_socket(host: str, port: int, family: socket.AddressFamily) -> socket.socket:
    """A listening socket whose accepted connections get a small, fixed send buffer.

    A stuck client then fills the server's kernel buffer after kilobytes instead of megabytes.
    """
    sock = get_port_socket(host, port, family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    return sock


@pytest.fixture
async def make_client(
    aiohttp_client: Any, contract: ContractRecorder
) -> AsyncIterator[ClientFactory]:
    async def make(
        rig: Rig, small_send_buffer: bool = False
    ) -> TestClient[web.Request, web.Application]:
        app = build_app(rig.context(), stream_close_timeout=5.0)
        app.middlewares.insert(0, contract.middleware)
        kwargs = {"socket_factory": small_buffer_socket} if small_send_buffer else {}
        client: TestClient[web.Request, web.Application] = await aiohttp_client(
            DaemonServer(app, **kwargs)  # served as the daemon serves it
        )
        return client

    yield make
    assert not contract.failures, "responses that break the OpenAPI document:\n" + "\n".join(
        contract.failures
    )


@pytest.fixture
async def client(make_client: ClientFactory, rig: Rig) -> TestClient[web.Request, web.Application]:
    return await make_client(rig)
