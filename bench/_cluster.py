"""Shared plumbing of the cluster benchmarks: the emulated cluster (bench/_emulator.py), the real operator process, a
stand-in kubelet and a stand-in controller, and /proc readings of a process.

Everything here is started in a context manager that stops it again, also when the benchmark fails: the operator
process, the test kubelet's pod processes, the API server thread and the stand-in servers.
"""

from __future__ import annotations

import asyncio
import copy
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from bench import common  # noqa: F401 - puts tests/ on sys.path for support.*
from bench._emulator import TimedApiServer, by_operator
from kuberl_operator.kube import Kube, path
from support.cluster import EmulatedCluster
from support.kubeapi import OPERATOR_TOKEN, Api
from support.kubelet import TestKubelet
from support.net import free_port, http_get

CONTROLLER_PORT = 8000


def _stop_on_sigterm() -> None:
    """`make bench` may be interrupted with SIGTERM: turn it into SystemExit so that every `finally` cleans up."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


@dataclass
class BenchCluster:
    emulated: EmulatedCluster
    api: Api
    kubeconfig: Path
    operator_kubeconfig: Path
    folder: Path

    @property
    def emulator(self) -> TimedApiServer:
        assert isinstance(self.emulated.emulator, TimedApiServer)
        return self.emulated.emulator

    @property
    def namespace(self) -> str:
        return self.api.namespace

    def requests_since(self, start: float, operator_only: bool = True) -> list[tuple[float, Any]]:
        return [(t, r) for t, r in list(self.emulator.stamps) if t >= start and (not operator_only or by_operator(r))]

    def store(self, plural: str, project: Callable[[dict[str, Any]], Any]) -> Any:
        """`project(object)` of each stored object of `plural` in the bench namespace, read on the API server's own
        loop straight from its store: no HTTP and no JSON, so that watching 100 jobs does not load the server.
        """

        async def read() -> list[Any]:
            return [
                project(obj.raw)
                for (resource, namespace, _), obj in self.emulator.objects.items()
                if resource.plural == plural and namespace == self.namespace and not obj.deleted
            ]

        return asyncio.run_coroutine_threadsafe(read(), self.emulated._loop)


@contextmanager
def cluster(prefix: str) -> Iterator[BenchCluster]:
    """An emulated cluster with one fresh namespace `<prefix>-<random>`; the operator gets its own token."""
    _stop_on_sigterm()
    folder = Path(tempfile.mkdtemp(prefix=f"kuberl-{prefix}-"))
    emulated = EmulatedCluster(TimedApiServer).start()
    try:
        kubeconfig = emulated.write_kubeconfig(folder / "kubeconfig")
        config = yaml.safe_load(kubeconfig.read_text())
        config["users"][0]["user"]["token"] = OPERATOR_TOKEN  # its requests are told from ours by this token
        operator_kubeconfig = folder / "operator-kubeconfig"
        operator_kubeconfig.write_text(yaml.safe_dump(config))
        namespace = f"{prefix}-{uuid.uuid4().hex[:6]}"
        api = Api(kubeconfig, namespace)
        api.run(lambda kube: kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}}))
        yield BenchCluster(emulated, api, kubeconfig, operator_kubeconfig, folder)
    finally:
        emulated.stop()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def cpu_seconds(self) -> float:
        """User + system CPU time of the operator (all its threads), from /proc/<pid>/stat."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@contextmanager
def operator(bench: BenchCluster, resync: float | None = None) -> Iterator[OperatorProcess]:
    """`kuberl operator --standalone` as a process watching the bench namespace, as the container runs it."""
    log = bench.folder / "operator.log"
    metrics_port, health_port = free_port(), free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(bench.operator_kubeconfig),
        "KUBERL_OPERATOR_METRICS_PORT": str(metrics_port),
    }
    env.pop("KUBERL_OPERATOR_RESYNC_SECONDS", None)
    if resync is not None:
        env["KUBERL_OPERATOR_RESYNC_SECONDS"] = str(resync)
    command = [sys.executable, "-m", "kuberl_operator.cli", "operator", "--standalone"]
    command += ["--namespace", bench.namespace, "--liveness", f"http://127.0.0.1:{health_port}/healthz"]
    process = subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    handle = OperatorProcess(process, metrics_port, log)
    try:
        deadline = time.monotonic() + 90
        while not _healthy(health_port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not start:\n{handle.tail()}")
            time.sleep(0.2)
        yield handle
    finally:
        process.send_signal(signal.SIGTERM)
        try:  # kopf's graceful stop can take several seconds; nothing of it is measured, and the cluster goes too
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _healthy(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}/healthz", timeout=1)[0] == 200
    except OSError:
        return False


def loopback_block(port: int = CONTROLLER_PORT) -> str:
    """A random 127.N.0.0/16 block whose first address can bind `port`: pod addresses here never meet those of
    the end-to-end tests (127.77.x.y) or of another benchmark running at the same time.
    """
    for _ in range(50):
        block = f"127.{random.randint(100, 250)}"
        with socket.socket() as sock:
            try:
                sock.bind((f"{block}.0.2", port))
            except OSError:
                continue
        return block
    raise RuntimeError("no free loopback block")


class BenchKubelet(TestKubelet):
    """The test kubelet with pod addresses in a loopback block of its own (see loopback_block)."""

    def __init__(self, *args: Any, block: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.block = block

    def ip_of(self, pod: str) -> str:
        if pod not in self.ips:
            n = len(self.ips) + 2
            self.ips[pod] = f"{self.block}.{n // 250}.{n % 250}"
        return self.ips[pod]


@contextmanager
def test_kubelet(bench: BenchCluster, block: str, models: dict[str, Path] | None = None) -> Iterator[BenchKubelet]:
    """The test kubelet (real worker processes); `models` are copied into the `models` claim first."""
    root = bench.folder / "kubelet"
    for name, source in (models or {}).items():
        shutil.copytree(source, root / "pvc" / "models" / name)
    kubelet = BenchKubelet(bench.api.connect, bench.namespace, root, block=block)
    kubelet.start()
    try:
        yield kubelet
    finally:
        kubelet.stop()


class AsyncThread:
    """An asyncio loop on a thread of its own, for the stand-in servers."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class StandInKubelet:
    """Marks every pending job pod Running and Ready at once (no process runs): controller pods get the stand-in
    controller's address, other pods an address in the same block that nothing listens on.
    """

    bench: BenchCluster
    controller_ip: str
    period: float = 0.2
    started: dict[str, float] = field(default_factory=dict)  # pod uid -> when it was marked Ready
    # pod name -> when its (pretend) process exits 0, as a drained rollout worker does: the pod turns Succeeded
    exits: dict[str, float] = field(default_factory=dict)
    _stop: asyncio.Event | None = None

    async def run(self) -> None:
        self._stop = asyncio.Event()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            kube = self.bench.api.connect(session)
            while not self._stop.is_set():
                with suppress(aiohttp.ClientError, OSError, RuntimeError):  # the next round retries
                    await self._sync(kube)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.period)

    async def _sync(self, kube: Kube) -> None:
        namespace = self.bench.namespace
        metas = await asyncio.wrap_future(self.bench.store("pods", lambda pod: copy.deepcopy(pod["metadata"])))
        names = {meta["name"] for meta in metas}
        for gone in [name for name, at in self.exits.items() if at <= time.monotonic() and name not in names]:
            del self.exits[gone]  # deleted before its process would have exited
        patches: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for meta in metas:
            if meta["uid"] in self.started and self.exits.get(meta["name"], math.inf) <= time.monotonic():
                del self.exits[meta["name"]]
                patches.append((meta, {"phase": "Succeeded", "conditions": [{"type": "Ready", "status": "False"}]}))
            if meta["uid"] in self.started or meta.get("deletionTimestamp"):
                continue
            role = (meta.get("labels") or {}).get("kuberl.io/role")
            ip = self.controller_ip if role == "controller" else self.controller_ip.rsplit(".", 1)[0] + ".250"
            conditions = [{"type": t, "status": "True"} for t in ("PodScheduled", "Initialized", "Ready")]
            patches.append((meta, {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "conditions": conditions}))
            self.started[meta["uid"]] = time.monotonic()
        # at once, as many nodes' kubelets would report (one after another, 300 pods took half a minute)
        results = await asyncio.gather(
            *(kube.merge_patch(path(namespace, "pods", m["name"], "status"), {"status": st}) for m, st in patches),
            return_exceptions=True,
        )
        for (meta, status), result in zip(patches, results, strict=True):
            if isinstance(result, Exception):  # reported again next round
                if status["phase"] == "Running":
                    self.started.pop(meta["uid"], None)
                else:
                    self.exits[meta["name"]] = time.monotonic()


class StandInController:
    """A stand-in job controller on `ip`:8000 answering the operator's probes (/v1/status, /v1/demand,
    /v1/rollout/drain) from `reply(route, body)`; it records when each route was asked.
    """

    def __init__(self, ip: str, reply: Callable[[str, dict[str, Any] | None], dict[str, Any]]) -> None:
        self.ip, self.reply = ip, reply
        self.calls: list[tuple[float, str]] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()

        async def handle(request: web.Request) -> web.Response:
            body = await request.json() if request.can_read_body else None
            self.calls.append((time.monotonic(), request.path))
            return web.json_response(self.reply(request.path, body))

        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.ip, CONTROLLER_PORT).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextmanager
def stand_ins(
    bench: BenchCluster, reply: Callable[[str, dict[str, Any] | None], dict[str, Any]]
) -> Iterator[tuple[StandInKubelet, StandInController]]:
    """The stand-in kubelet and controller, on one background loop."""
    ip = loopback_block() + ".0.2"
    loop = AsyncThread("stand-ins")
    controller = StandInController(ip, reply)
    kubelet = StandInKubelet(bench, ip)
    task = None
    try:
        loop.run(controller.start())
        task = asyncio.run_coroutine_threadsafe(kubelet.run(), loop.loop)
        yield kubelet, controller
    finally:  # never raise from here: that would hide the benchmark's own error
        if kubelet._stop is not None:
            loop.loop.call_soon_threadsafe(kubelet._stop.set)
        if task is not None:
            with suppress(Exception):
                task.result(10)
            task.cancel()
        with suppress(Exception):
            loop.run(controller.stop(), timeout=10)
        loop.stop()


def wait_for(
    probe: Callable[[], Any], what: str, timeout: float, period: float = 0.1, explain: Callable[[], str] = str
) -> Any:
    """Poll until probe() is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{explain()}")
        time.sleep(period)
