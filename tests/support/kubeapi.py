"""Synchronous API calls for tests, through the operator's own client, logged in from a kubeconfig as kopf does."""

from __future__ import annotations

import asyncio
import builtins
import os
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import kopf

from kuberl_operator.handlers import connect
from kuberl_operator.kube import Kube, path
from support.apiserver import EmulatedApiServer

T = TypeVar("T")


def login(kubeconfig: Path) -> kopf.ConnectionInfo:
    before = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)
    try:
        info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    finally:
        if before is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = before
    assert info is not None, f"no credentials in {kubeconfig}"
    return info


class Api:
    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.info = login(kubeconfig)
        self.namespace = namespace

    def connect(self, session: aiohttp.ClientSession) -> Kube:
        return connect(self.info, session)

    def run(self, call: Callable[[Kube], Awaitable[T]]) -> T:
        async def main() -> T:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                return await call(self.connect(session))

        return asyncio.run(main())

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        return self.run(lambda kube: kube.get(path(self.namespace, plural, name)))

    def list(self, plural: str, selector: str = "") -> list[dict[str, Any]]:
        return self.run(lambda kube: kube.list(self.namespace, plural, selector))

    def create(self, plural: str, body: dict[str, Any]) -> Any:
        return self.run(lambda kube: kube.call("POST", path(self.namespace, plural), body))

    def patch(self, plural: str, name: str, body: dict[str, Any], subresource: str | None = None) -> Any:
        return self.run(lambda kube: kube.merge_patch(path(self.namespace, plural, name, subresource), body))

    def delete(self, plural: str, name: str) -> bool:
        return self.run(lambda kube: kube.delete(self.namespace, plural, name))

    def reasons(self, involved: str) -> builtins.list[str]:
        """The reasons of the events about object `involved`, oldest first."""
        events = self.list("events")
        events.sort(key=lambda e: (e.get("lastTimestamp") or "", e["metadata"]["name"]))
        return [e["reason"] for e in events if (e.get("involvedObject") or {}).get("name") == involved]


# the operator's own credential on the emulated cluster: its requests are told apart by it (RBAC completeness)
OPERATOR_TOKEN = "kuberl-operator-token"


@dataclass
class Cluster:
    kubeconfig: Path
    api: Api
    emulator: EmulatedApiServer | None  # None on a real cluster


@dataclass
class Operator:
    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path
