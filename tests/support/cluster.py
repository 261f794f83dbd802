"""An emulated cluster for the end-to-end tier: the extended kmock API server, served on a port from its own thread.

It holds what a fresh cluster with kuberl's CRD applied would hold: the built-in resources the operator and kopf
use (discovery with verbs and scopes), the namespaces `default` and `kube-system`, and the RLJob CRD object.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import yaml
from kmock import ResourceInfo, Server

from support.apiserver import EmulatedApiServer

ALL_VERBS = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
RESOURCES: dict[str, ResourceInfo] = {
    "v1/pods": ResourceInfo(
        namespaced=True, kind="Pod", singular="pod", verbs=ALL_VERBS, subresources={"status", "binding"}
    ),
    "v1/configmaps": ResourceInfo(namespaced=True, kind="ConfigMap", singular="configmap", verbs=ALL_VERBS),
    "v1/secrets": ResourceInfo(namespaced=True, kind="Secret", singular="secret", verbs=ALL_VERBS),
    "v1/services": ResourceInfo(namespaced=True, kind="Service", singular="service", verbs=ALL_VERBS),
    "v1/events": ResourceInfo(namespaced=True, kind="Event", singular="event", verbs=ALL_VERBS),
    "v1/namespaces": ResourceInfo(namespaced=False, kind="Namespace", singular="namespace", verbs=ALL_VERBS),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ResourceInfo(
        namespaced=False, kind="CustomResourceDefinition", singular="customresourcedefinition", verbs=ALL_VERBS
    ),
    "kuberl.io/v1alpha1/rljobs": ResourceInfo(
        namespaced=True,
        kind="RLJob",
        singular="rljob",
        shortnames={"rlj"},
        verbs=ALL_VERBS,
        subresources={"status", "scale"},
    ),
}
CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "rljobs.kuberl.io.yaml"


class EmulatedCluster:
    """Start with `start()`, use `url`/`emulator`, `write_kubeconfig()`; `stop()` at the end."""

    def __init__(self, emulator_class: type[EmulatedApiServer] = EmulatedApiServer) -> None:
        self.emulator_class = emulator_class
        self.url = ""
        self.emulator: EmulatedApiServer | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="emulated-apiserver", daemon=True)

    def start(self) -> EmulatedCluster:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the emulated API server did not start")
        return self

    def stop(self) -> None:
        if self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(30)

    def write_kubeconfig(self, target: Path, namespace: str = "default") -> Path:
        config: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "emulated-cluster-token"}}],
            "contexts": [
                {"name": "emulated", "context": {"cluster": "emulated", "user": "tester", "namespace": namespace}}
            ],
            "current-context": "emulated",
        }
        target.write_text(yaml.safe_dump(config))
        return target

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        async with self.emulator_class() as emulator, Server(emulator) as server:
            for resource, info in RESOURCES.items():
                emulator.resources[resource] = info
            crd = yaml.safe_load(CRD_FILE.read_text())
            emulator.objects["apiextensions.k8s.io/v1/customresourcedefinitions", None, crd["metadata"]["name"]] = crd
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self._ready.set()
            await self._stopped.wait()
