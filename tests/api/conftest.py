"""Fixtures of the API tests: the rig, and a client on aiohttp's loopback test server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from api_rig import ContractRecorder, Rig, make_config

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


ClientFactory = Callable[[Rig], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def make_client(
    aiohttp_client: Any, contract: ContractRecorder
) -> AsyncIterator[ClientFactory]:
    async def make(rig: Rig) -> TestClient[web.Request, web.Application]:
        app = build_app(rig.context(), stream_close_timeout=5.0)
        app.middlewares.insert(0, contract.middleware)
        client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
        return client

    yield make
    assert not contract.failures, "responses that break the OpenAPI document:\n" + "\n".join(
        contract.failures
    )


@pytest.fixture
async def client(make_client: ClientFactory, rig: Rig) -> TestClient[web.Request, web.Application]:
    return await make_client(rig)
