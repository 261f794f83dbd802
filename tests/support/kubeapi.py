"""Synchronous API calls for tests, through the operator's own client, logged in from a kubeconfig as kopf does."""

from __future__ import annotations

import asyncio
import builtins
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import kopf
import yaml

from kuberl_operator.handlers import connect
from kuberl_operator.kube import Kube, path
from support.apiserver import EmulatedApiServer
from support.net import free_port, http_get

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


def delete_all_jobs(api: Api, timeout: float) -> None:
    """Delete every RLJob of the namespace and wait (bounded) until they are gone."""
    for job in api.list("rljobs"):
        api.delete("rljobs", job["metadata"]["name"])
    deadline = time.monotonic() + timeout
    while api.list("rljobs") and time.monotonic() < deadline:
        time.sleep(0.5)


# the operator's own credential on the emulated cluster: its requests are told apart by it (RBAC completeness)
OPERATOR_TOKEN = "kuberl-operator-token"


@dataclass
class Cluster:
    kubeconfig: Path
    api: Api
    emulator: EmulatedApiServer | None  # None on a real cluster
    worker_image: str | None = None  # given to the operator (real nodes pull it)
    access_mode: str = "ReadWriteOnce"  # of the checkpoint claims the tier creates on real nodes
    operator_kubeconfig: Path | None = None  # the operator's own credential, when not the test's (the chart's SA)


@dataclass
class Operator:
    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path


def start_operator(cluster: Cluster, folder: Path) -> Operator:
    """`kuberl operator` as a process, exactly as the container runs it (standalone, one namespace); returns once
    its liveness endpoint answers. A second call with the same folder is a restart: the log is appended to."""
    log = folder / "operator.log"
    kubeconfig = cluster.operator_kubeconfig or cluster.kubeconfig
    if cluster.emulator is not None:  # its own token, so that its requests can be told from the test's and kubelet's
        config = yaml.safe_load(kubeconfig.read_text())
        config["users"][0]["user"]["token"] = OPERATOR_TOKEN
        kubeconfig = folder / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
    metrics_port, health_port = free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBERL_OPERATOR_METRICS_PORT": str(metrics_port)}
    env["KUBERL_OPERATOR_RESYNC_SECONDS"] = "2"  # status.step follows the controller closely enough to aim faults
    if cluster.worker_image:
        env["KUBERL_WORKER_IMAGE"] = cluster.worker_image
    command = [sys.executable, "-m", "kuberl_operator.cli", "operator", "--standalone"]
    command += ["--namespace", cluster.api.namespace, "--liveness", f"http://127.0.0.1:{health_port}/healthz"]
    process = subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not _healthy(health_port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(10)
            raise AssertionError(f"the operator did not become healthy:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    return Operator(process, metrics_port, log)


def stop_operator(operator: Operator) -> None:
    operator.process.send_signal(signal.SIGTERM)
    try:
        operator.process.wait(30)
    except subprocess.TimeoutExpired:
        operator.process.kill()
        operator.process.wait(10)


def _healthy(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}/healthz", timeout=1)[0] == 200
    except OSError:
        return False
