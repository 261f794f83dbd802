"""A test kubelet: binds pending pods to pretend nodes, runs each pod's container command as a local process, and
reports the pod's phase, IP and readiness through the API (so it works against any API server).

What it stands in for, and how (named so that no one mistakes it for a real node):
- scheduling: a pod is bound (pods/binding) to the first of `nodes` its required node affinity allows;
- the container: the main container's command runs as a local process in its own process group, with the host's
  environment as the image's baseline plus the pod's env (values, fieldRefs, secret/configMap keys);
- the pod network: each pod name gets a fixed loopback address 127.77.x.y (its `status.podIP`), except the pods
  `routable` names, which get this machine's own address (the API server's pod proxy refuses loopback addresses;
  such a pod must bind its IP, as kuberl's export pod does, and two of them cannot share a port); cluster DNS is
  emulated by rewriting `*.svc` host names in env values to the address of the pod they resolve to;
- volumes: configMaps and secrets are written out, emptyDirs are per-pod folders, a persistentVolumeClaim is a
  folder per claim shared by all pods; mount paths in env values and in mounted configMap files are rewritten to
  those folders (no chroot), and so are they where `$(VAR)` brings such an env value into the command or args;
- probes: the readinessProbe's httpGet (or tcpSocket) is polled every `period` seconds instead of its periodSeconds;
- nodes (with `register_nodes`, on a real API server): a Node object per name, Ready, with its Lease in
  kube-node-lease renewed every 10 s, so that the controller-manager neither force-deletes the pods bound to it
  (PodGC) nor taints it unreachable; deleted from the API at stop;
- termination messages: under `terminationMessagePolicy: FallbackToLogsOnError`, a failed container's message is
  its log's tail (80 lines, 2 KiB), as a kubelet's fallback (the worker's own /dev/termination-log is not given);
- graceful deletion: a pod the API server marked for deletion (deletionTimestamp) has its process stopped
  (SIGTERM, then SIGKILL after 10 s), then the deletion is confirmed with gracePeriodSeconds 0, as a kubelet does.
Not emulated: resource limits, image pulls, init and sidecar containers, terminationGracePeriodSeconds.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kuberl_operator.kube import ApiError, Kube, path
from support.net import host_address
from support.nodes import LEASE_RENEW_SECONDS, delete_nodes, heartbeat

VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
SVC_HOST = re.compile(r"(?:([a-z0-9-]+)\.)?([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?")
# every pod kuberl makes: the operator's and the CLI's (export pods, managed-by kuberl-cli)
MANAGED = "app.kubernetes.io/part-of=kuberl"


@dataclass
class Container:
    uid: str
    process: subprocess.Popen[bytes]
    ip: str
    ready: bool = False
    log: Path = field(default_factory=Path)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TestKubelet:
    __test__ = False  # not a pytest test class

    def __init__(
        self,
        connect: Callable[[aiohttp.ClientSession], Kube],
        namespace: str,
        root: Path,
        nodes: tuple[str, ...] = ("node-a", "node-b", "node-c"),
        period: float = 0.5,
        register_nodes: bool = False,
        routable: Callable[[str], bool] = lambda pod: False,
    ) -> None:
        self.connect, self.namespace, self.root, self.nodes, self.period = connect, namespace, root, nodes, period
        self.routable = routable
        self.register_nodes = register_nodes
        self._renewed = 0.0
        self.containers: dict[str, Container] = {}
        self.finished: dict[str, int] = {}  # pod uid -> exit code, reported and never restarted
        self.started: list[str] = []  # pod names, in start order (a restart appends the name again)
        self.ips: dict[str, str] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._session: aiohttp.ClientSession
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="test-kubelet", daemon=True)

    def start(self) -> TestKubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        with self._lock:
            for name in list(self.containers):
                self._terminate(name)

    def kill(self, pod: str, sig: int = signal.SIGKILL) -> None:
        """What an OOM kill or a crash does to the pod's container."""
        with self._lock:
            os.killpg(self.containers[pod].process.pid, sig)

    def ip_of(self, pod: str) -> str:
        """Derived from the pod's name, not from the order pods appear: test sessions running side by side on one
        machine collide only if they use the same job names."""
        if pod not in self.ips and self.routable(pod):
            self.ips[pod] = host_address()
        if pod not in self.ips:
            taken = set(self.ips.values())
            n = zlib.crc32(pod.encode()) % 62500
            while (ip := f"127.77.{n // 250}.{n % 250 + 2}") in taken:
                n = (n + 1) % 62500
            self.ips[pod] = ip
        return self.ips[pod]

    def log_of(self, pod: str) -> str:
        logs = sorted((self.root / self.namespace).glob(f"{pod}-*/container.log"), key=lambda p: p.stat().st_mtime)
        return logs[-1].read_text(errors="replace") if logs else ""

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            self._session = session  # also for the readiness probes
            kube = self.connect(session)
            while not self._stop.is_set():
                try:
                    if self.register_nodes and time.monotonic() - self._renewed > LEASE_RENEW_SECONDS:
                        await heartbeat(kube, self.nodes, register=self._renewed == 0.0)
                        self._renewed = time.monotonic()
                    await self._sync(kube)
                except (ApiError, aiohttp.ClientError, OSError, KeyError, ValueError) as error:
                    self.errors.append(repr(error))
                await asyncio.sleep(self.period)
            if self.register_nodes:
                self.errors += await delete_nodes(kube, self.nodes)

    async def _sync(self, kube: Kube) -> None:
        pods = await kube.list(self.namespace, "pods", MANAGED)
        live = {p["metadata"]["name"]: p for p in pods if not p["metadata"].get("deletionTimestamp")}
        with self._lock:
            for name, container in list(self.containers.items()):
                pod = live.get(name)
                if pod is None or pod["metadata"]["uid"] != container.uid:
                    self._terminate(name)  # deleted: stop it before a successor may take its address
        for pod in pods:  # a graceful deletion waits for its kubelet: its process is stopped above, confirm it
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") and (pod.get("spec") or {}).get("nodeName") in self.nodes:
                options = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}
                options["preconditions"] = {"uid": meta["uid"]}
                try:
                    await kube.call("DELETE", path(self.namespace, "pods", meta["name"]), options)
                except ApiError as error:
                    if error.status not in (404, 409):  # gone already, or a successor took the name
                        raise
        for name, pod in live.items():
            spec, status = pod.get("spec") or {}, pod.get("status") or {}
            uid = pod["metadata"]["uid"]
            if not spec.get("nodeName"):
                node = self._schedule(pod)
                if node is not None:
                    await kube.call("POST", path(self.namespace, "pods", name, "binding"), _binding(name, node))
                continue
            if spec["nodeName"] not in self.nodes or uid in self.finished:
                continue
            running = self.containers.get(name)
            if running is None and status.get("phase", "Pending") == "Pending":
                await self._start(kube, pod)
            elif running is not None:
                await self._report(kube, pod, running)

    def _schedule(self, pod: dict[str, Any]) -> str | None:
        terms = (
            ((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {}).get(
                "requiredDuringSchedulingIgnoredDuringExecution"
            )
            or {}
        ).get("nodeSelectorTerms") or []
        excluded = {
            value
            for term in terms
            for expression in term.get("matchExpressions") or []
            if expression.get("key") == "kubernetes.io/hostname" and expression.get("operator") == "NotIn"
            for value in expression.get("values") or []
        }
        return next((node for node in self.nodes if node not in excluded), None)

    async def _start(self, kube: Kube, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        name, ip = meta["name"], self.ip_of(meta["name"])
        pod_dir = self.root / self.namespace / f"{name}-{meta['uid'][:8]}"
        pod_dir.mkdir(parents=True, exist_ok=True)
        main = spec["containers"][0]
        mounts = await self._volumes(kube, spec, main, pod_dir)
        env = {**os.environ}
        for item in main.get("env") or []:
            value = await self._env_value(kube, pod, ip, item)
            if not _in_repository(value):  # a test's own files (PYTHONPATH) are host paths, even under /tmp
                value = _rewrite(value, mounts)
            env[item["name"]] = await self._resolve(kube, value)
        # the kubelet expands `$(VAR)` in command and args from the container's env (unknown ones stay as they are)
        words = [VARIABLE.sub(lambda m: env.get(m[1], m[0]), w) for w in main["command"] + main.get("args", [])]
        command = [sys.executable if part == "python" else part for part in words]
        log = pod_dir / "container.log"
        process = subprocess.Popen(
            command, env=env, cwd=pod_dir, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        with self._lock:
            self.containers[name] = Container(meta["uid"], process, ip, log=log)
            self.started.append(name)
        now = _now()
        await self._patch_status(
            kube,
            name,
            {
                "phase": "Running",
                "hostIP": "127.77.0.1",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "startTime": now,
                "conditions": _conditions(False),
                "containerStatuses": [
                    {
                        "name": main["name"],
                        "image": main.get("image", ""),
                        "imageID": "",
                        "ready": False,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    }
                ],
            },
        )

    async def _report(self, kube: Kube, pod: dict[str, Any], container: Container) -> None:
        name = pod["metadata"]["name"]
        code = container.process.poll()
        if code is not None:
            with self._lock:
                self.containers.pop(name, None)
            self.finished[container.uid] = code
            exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N, as container runtimes
            terminated = {"exitCode": exit_code, "reason": "Completed" if code == 0 else "Error", "finishedAt": _now()}
            main = pod["spec"]["containers"][0]
            if code != 0 and main.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                terminated["message"] = _log_tail(container.log)  # the kubelet's fallback: the log's tail
            await self._patch_status(
                kube,
                name,
                {
                    "phase": "Succeeded" if code == 0 else "Failed",
                    "conditions": _conditions(False),
                    "containerStatuses": [
                        {
                            "name": pod["spec"]["containers"][0]["name"],
                            "image": "",
                            "imageID": "",
                            "ready": False,
                            "restartCount": 0,
                            "state": {"terminated": terminated},
                        }
                    ],
                },
            )
            return
        readiness = pod["spec"]["containers"][0].get("readinessProbe") or {}
        probe = readiness.get("httpGet")
        if "tcpSocket" in readiness:  # a reward server's default probe: the port accepts connections
            ready = await self._tcp_probe(container.ip, readiness["tcpSocket"]["port"])
        else:
            ready = True if probe is None else await self._probe(container.ip, pod, probe)
        if ready != container.ready:
            container.ready = ready
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            await self._patch_status(
                kube,
                name,
                {"conditions": _conditions(ready), "containerStatuses": [{**s, "ready": ready} for s in statuses]},
            )

    async def _tcp_probe(self, ip: str, port: int) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 2)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    async def _probe(self, ip: str, pod: dict[str, Any], probe: dict[str, Any]) -> bool:
        port = probe["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p.get("name") == port)
        url = f"http://{ip}:{port}{probe.get('path', '/')}"
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                return 200 <= response.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _patch_status(self, kube: Kube, name: str, status: dict[str, Any]) -> None:
        try:
            await kube.merge_patch(path(self.namespace, "pods", name, "status"), {"status": status})
        except ApiError as error:
            if error.status != 404:  # deleted meanwhile
                raise

    async def _volumes(self, kube: Kube, spec: dict[str, Any], main: dict[str, Any], pod_dir: Path) -> dict[str, str]:
        """Materialise the volumes; return {mountPath: local folder} for the main container."""
        folders: dict[str, Path] = {}
        for volume in spec.get("volumes") or []:
            folder = pod_dir / "volumes" / volume["name"]
            if "persistentVolumeClaim" in volume:
                folder = self.root / "pvc" / volume["persistentVolumeClaim"]["claimName"]
            folder.mkdir(parents=True, exist_ok=True)
            folders[volume["name"]] = folder
            for kind, key, decode in (("configMap", "name", False), ("secret", "secretName", True)):
                if kind not in volume:
                    continue
                plural = "configmaps" if kind == "configMap" else "secrets"
                obj = await kube.get(path(self.namespace, plural, volume[kind][key])) or {}
                for item, value in (obj.get("data") or {}).items():
                    (folder / item).write_bytes(base64.b64decode(value) if decode else value.encode())
        mounts = {m["mountPath"]: str(folders[m["name"]]) for m in main.get("volumeMounts") or []}
        for volume in spec.get("volumes") or []:
            if "configMap" in volume:  # cluster DNS answers names wherever they are written, files included
                for file in folders[volume["name"]].iterdir():
                    file.write_text(await self._resolve(kube, _rewrite(file.read_text(), mounts)))
        return mounts

    async def _env_value(self, kube: Kube, pod: dict[str, Any], ip: str, item: dict[str, Any]) -> str:
        if "value" in item:
            return str(item["value"])
        source = item.get("valueFrom") or {}
        if "fieldRef" in source:
            fields: dict[str, str] = {
                "metadata.name": pod["metadata"]["name"],
                "metadata.namespace": self.namespace,
                "metadata.uid": pod["metadata"]["uid"],
                "status.podIP": ip,
                "spec.nodeName": pod["spec"].get("nodeName", ""),
            }
            return fields[source["fieldRef"]["fieldPath"]]
        for kind, plural in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
            if kind in source:
                obj = await kube.get(path(self.namespace, plural, source[kind]["name"])) or {}
                value = (obj.get("data") or {})[source[kind]["key"]]
                return base64.b64decode(value).decode() if plural == "secrets" else str(value)
        raise ValueError(f"env {item['name']}: unsupported source {source}")

    async def _resolve(self, kube: Kube, value: str) -> str:
        """Cluster DNS: `pod.service.ns.svc` is that pod's address; `service.ns.svc` the address of the (first)
        pod the service selects."""
        for found in list(SVC_HOST.finditer(value)):
            hostname, service, namespace = found.groups()
            if hostname is None:
                svc = await kube.get(path(namespace, "services", service))
                selector = ",".join(f"{k}={v}" for k, v in ((svc or {}).get("spec") or {}).get("selector", {}).items())
                selected = await kube.list(namespace, "pods", selector) if selector else []
                if not selected:
                    continue
                hostname = sorted(p["metadata"]["name"] for p in selected)[0]
            value = value.replace(found.group(0), self.ip_of(hostname))
        return value

    def _terminate(self, name: str) -> None:
        container = self.containers.pop(name)
        if container.process.poll() is None:
            os.killpg(container.process.pid, signal.SIGTERM)
            try:
                container.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(container.process.pid, signal.SIGKILL)
                container.process.wait(10)


REPOSITORY = Path(__file__).resolve().parents[2]


def _in_repository(value: str) -> bool:
    """`value` is one or more absolute host paths (os.pathsep-separated) inside this checkout: the test points a
    pod at its own files. A checkout under /tmp would otherwise have them rewritten into the pod's /tmp mount."""
    parts = [part for part in value.split(os.pathsep) if part]
    return bool(parts) and all(os.path.isabs(p) and Path(p).resolve().is_relative_to(REPOSITORY) for p in parts)


def _rewrite(text: str, mounts: dict[str, str]) -> str:
    """One pass (a folder may itself lie under a mount path such as /tmp), longest mount path first."""
    if not mounts:
        return text
    alternatives = "|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True))
    return re.sub(rf"(?<![\w/.-])({alternatives})(?=/|\"|$|\s)", lambda m: mounts[m.group(1)], text)


def _log_tail(log: Path, lines: int = 80, limit: int = 2048) -> str:
    """What a kubelet puts in the termination message under FallbackToLogsOnError: the last 80 lines, 2 KiB."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])[-limit:]


def _binding(name: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }


def _conditions(ready: bool) -> list[dict[str, Any]]:
    now = _now()
    return [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        {"type": "Initialized", "status": "True", "lastTransitionTime": now},
        {"type": "ContainersReady", "status": str(ready), "lastTransitionTime": now},
        {"type": "Ready", "status": str(ready), "lastTransitionTime": now},
    ]
