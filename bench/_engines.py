"""Rollout engines in their own processes, driven over a pipe through kuberl's real rollout-worker code.

A host runs one `RolloutWorker` (kuberl_workers.rollout.worker) whose engine is either the real vLLM `Engine` or
`CopyEngine`, the same weight path without vLLM; with a `relay_port` it also runs the worker's own HTTP server,
whose `/weights/<version>` relays what it fetches to the hosts below it (controller/relay.py).
Weights are loaded with `RolloutWorker._load`, the worker's own
code for `file://` (shared volume) and `http://` (download from trainer rank 0) URIs, so a benchmark times exactly
what a rollout pod does on a new policy version. Each host is a separate process, as each rollout pod is: engines
do not share a GIL, and vLLM's thread binding stays out of the benchmark's own process.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


def one_thread_per_process() -> str:
    """OMP_NUM_THREADS=1 unless set, as `kuberl run` starts every worker (launcher/run.py), for this process and the
    hosts it spawns. Call before torch is imported. On this shared 2-core machine it is also what keeps numbers
    comparable: with 2 torch threads, every op waits at a barrier for a thread another job has descheduled (a
    21M-parameter forward pass measured 1.24 s with 2 threads against 0.056 s with 1 while other jobs ran).
    """
    return os.environ.setdefault("OMP_NUM_THREADS", "1")


def scratch() -> str | None:
    """A memory-backed folder (tmpfs) for the benchmarks' files when the machine has one: the timings are then the
    CPU and memory cost of the weight path, not this shared disk's writeback (a cluster's volume or network adds its
    own cost on top). None: the default temp folder.
    """
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


class CopyEngine:
    """The engine side of a weight load without vLLM: read the safetensors as `Engine.load_weights` does and copy
    every tensor into resident parameters (vLLM's weight loaders make the same copy into the model).
    """

    def __init__(self) -> None:
        self.version = 0
        self.weight_load_seconds = 0.0
        self.weight_load_bytes = 0
        self.params: dict[str, Any] = {}

    def load_weights(self, path: Path, version: int) -> None:
        import torch

        from kuberl_workers.rollout.engine import iter_safetensors

        start = time.perf_counter()
        size = 0
        for name, tensor in iter_safetensors(path):
            held = self.params.get(name)
            if held is None or held.shape != tensor.shape:
                held = self.params[name] = torch.empty_like(tensor)
            held.copy_(tensor)
            size += tensor.numel() * tensor.element_size()
        self.weight_load_seconds = time.perf_counter() - start
        self.weight_load_bytes = size
        self.version = version

    def digest(self) -> str:
        """sha256 over the loaded tensors' names and bytes, in name order."""
        import hashlib

        out = hashlib.sha256()
        for name in sorted(self.params):
            out.update(name.encode())
            out.update(self.params[name].contiguous().view(-1).view(torch_uint8()).numpy().tobytes())
        return out.hexdigest()


def _serve(
    conn: Connection, kind: str, model_dir: str | None, engine_kwargs: dict[str, Any], relay_port: int | None
) -> None:
    """The host process: build the engine, then answer ("load", uri or (uri, sources)) / ("generate", chunks) /
    ("digest", None): sha256 of the loaded tensors (CopyEngine) / ("stop", None).
    """
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    tempfile.tempdir = scratch()  # where the worker downloads http:// weights
    import aiohttp
    import torch  # noqa: F401 - imported before "ready", so that no timed load pays for it

    import bench.common  # noqa: F401 - puts tests/ on sys.path for support.jobs
    from kuberl_workers.rollout.engine import Chunk, Engine
    from kuberl_workers.rollout.worker import RolloutWorker
    from support.jobs import TOKEN, job_config

    start = time.perf_counter()
    try:
        engine: Any = Engine(model_dir or "", **engine_kwargs) if kind == "vllm" else CopyEngine()
    except Exception as error:  # report it: the parent says what failed instead of hanging on the pipe
        conn.send({"error": f"{type(error).__name__}: {error}"})
        return
    config_dir = tempfile.mkdtemp(prefix="kuberl-bench-host-")
    cfg = job_config(Path(config_dir))
    if relay_port is not None:
        cfg = cfg.model_copy(update={"ports": cfg.ports.model_copy(update={"rollout": relay_port})})
    # the controller URL is never contacted: _load only talks to the weights URI
    worker = RolloutWorker(cfg, "http://127.0.0.1:9", TOKEN, f"bench-{os.getpid()}", "127.0.0.1")
    worker.engine = engine
    conn.send({"ready": time.perf_counter() - start})

    async def session_factory() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))

    # the worker's event loop runs all the time in its own thread, as in a pod: its relay server keeps serving the
    # hosts below it after its own load returned
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="worker-loop", daemon=True).start()

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    session = run(session_factory())  # one long-lived session, as the worker keeps
    runner = run(worker._serve_health()) if relay_port is not None else None
    version = 0
    while True:
        op, arg = conn.recv()
        if op == "stop":
            break
        try:
            began = time.perf_counter()
            if op == "load":
                # from a relay, (uri, sources, version): the version the tree is keyed by, as the controller's is
                uri, sources, version = arg if isinstance(arg, tuple) else (arg, None, version + 1)
                run(worker._load(version, uri, sources))
                reply = {
                    "wall": time.perf_counter() - began,
                    "source": worker.weights_source,
                    "load_seconds": engine.weight_load_seconds,
                    "bytes": engine.weight_load_bytes,
                }
            elif op == "generate":
                generated = engine.generate([Chunk(p, [], n, seed) for p, n, seed in arg])
                reply = {
                    "seconds": time.perf_counter() - began,
                    "outputs": [(g.token_ids, g.logprobs, g.stopped) for g in generated],
                }
            elif op == "digest":
                reply = {"digest": engine.digest()}
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as error:
            reply = {"error": f"{type(error).__name__}: {error}"}
        conn.send(reply)
    run(session.close())
    if runner is not None:
        run(runner.cleanup())
    loop.call_soon_threadsafe(loop.stop)
    worker.relay.close()
    shutil.rmtree(config_dir, ignore_errors=True)
    conn.send({"stopped": True})


class Host:
    """The parent's handle on one host process."""

    def __init__(
        self, kind: str, model_dir: str | None = None, relay_port: int | None = None, **engine_kwargs: Any
    ) -> None:
        context = multiprocessing.get_context("spawn")  # vLLM and torch threads do not survive fork
        self.conn, child = context.Pipe()
        self.kind, self.relay_port = kind, relay_port
        self.process = context.Process(target=_serve, args=(child, kind, model_dir, engine_kwargs, relay_port))
        self.process.start()
        child.close()
        self.startup: float | None = None

    def ready(self, timeout: float = 300.0) -> float:
        """Seconds the engine took to start (blocks until it has)."""
        if self.startup is None:
            self.startup = float(self.expect(timeout)["ready"])
        return self.startup

    def send(self, op: str, arg: Any = None) -> None:
        self.conn.send((op, arg))

    def expect(self, timeout: float = 600.0) -> dict[str, Any]:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{self.kind} host {self.process.pid} did not answer in {timeout:.0f}s")
        reply: dict[str, Any] = self.conn.recv()
        if "error" in reply:
            raise RuntimeError(f"{self.kind} host {self.process.pid}: {reply['error']}")
        return reply

    def call(self, op: str, arg: Any = None) -> dict[str, Any]:
        self.send(op, arg)
        return self.expect()

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.send("stop")
                self.conn.poll(30)
            except (OSError, EOFError):
                pass
            self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()  # this host only, by its own handle
            self.process.join(10)
        self.conn.close()


def load_all(hosts: list[Host], uri: str, relay: bool = False, fanout: int = 2) -> list[dict[str, Any]]:
    """Every host loads `uri` at once (as N rollout pods do on a 409); returns their replies. `relay`: each host
    is given its sources by the controller's RelayTree (hosts below the first FANOUT fetch from hosts above).
    """
    if not relay:
        for host in hosts:
            host.send("load", uri)
        return [host.expect() for host in hosts]
    from kuberl_workers.controller.relay import RelayTree

    tree = RelayTree(relay_url=lambda address, version: f"http://{address}/weights/{version}", fanout=fanout)
    version = int(uri.rstrip("/").rsplit("/", 1)[-1])
    addresses = {f"h{i}": f"127.0.0.1:{host.relay_port}" for i, host in enumerate(hosts)}
    for i, host in enumerate(hosts):
        host.send("load", (uri, tree.sources(f"h{i}", version, uri, addresses.get), version))
    return [host.expect() for host in hosts]


def torch_uint8() -> Any:
    import torch

    return torch.uint8
