"""Fixtures for the unit tier."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from kmock import ResourceInfo, Server

from kuberl_operator.api.crd import openapi_schema
from kuberl_operator.kube import Kube
from support.apiserver import EmulatedApiServer

RESOURCES = ["v1/pods", "v1/configmaps", "v1/secrets", "v1/services", "v1/events", "kuberl.io/v1alpha1/rljobs"]


@pytest.fixture(scope="session")
def schema() -> dict[str, Any]:
    return openapi_schema()


@pytest_asyncio.fixture(params=[EmulatedApiServer])
async def api(request: pytest.FixtureRequest) -> AsyncIterator[tuple[EmulatedApiServer, Kube]]:
    """An emulated API server (kmock, extended) and a client of it; parametrize indirectly for another class."""
    async with request.param() as emulator, Server(emulator) as server, aiohttp.ClientSession() as session:
        for resource in RESOURCES:
            emulator.resources[resource] = ResourceInfo(namespaced=True)
        yield emulator, Kube(str(server.url), session)


@pytest_asyncio.fixture
async def kube(api: tuple[EmulatedApiServer, Kube]) -> Kube:
    return api[1]
