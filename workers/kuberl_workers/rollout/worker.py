"""The rollout worker's loop: register, lease, generate, complete; heartbeat; follow the policy version."""

from __future__ import annotations

import asyncio
import hmac
import http.client
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from kuberl_workers.config import WorkerConfig
from kuberl_workers.models import model_dir
from kuberl_workers.rollout.engine import Chunk, Engine, Generated
from kuberl_workers.rollout.relay import Relay

log = logging.getLogger(__name__)
IDLE_SECONDS = 0.2
MAX_ENGINE_FAILURES = 5
FILE_WAIT_POLLS = 40
"""Half-second polls for published weights on a shared volume to appear (a restarted trainer republishes)."""
MAX_LOAD_FAILURES = 10
"""Weight loads in a row that fail (each after up to FILE_WAIT_POLLS / 2 s) before the worker gives up."""
"""Generate calls in a row in which not one chunk went through (the engine is broken, not one prompt): exit."""
Refused = list[tuple[dict[str, Any], str]]


class RolloutWorker:
    def __init__(self, cfg: WorkerConfig, controller_url: str, token: str, name: str, host: str) -> None:
        self.cfg, self.name, self.host = cfg, name, host
        self.url = controller_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.relay = Relay()  # serves the versions it fetches to the engines below it (controller/relay.py)
        self.engine: Engine | None = None
        self.version = 0
        self.weights_source = ""  # where the last version came from (a relay parent, trainer rank 0, a file)
        self.load_failures = 0
        self.draining = False
        self.done = False
        self.registry = CollectorRegistry()
        labels = {"job": cfg.job, "namespace": cfg.namespace, "role": "rollout"}
        names = list(labels)

        def gauge(metric: str, doc: str) -> Any:
            return Gauge(metric, doc, names, registry=self.registry).labels(**labels)

        self.m_tps = gauge("kuberl_rollout_worker_tokens_per_second", "Tokens per second of the last batch")
        self.m_batch = gauge("kuberl_rollout_batch_size", "Chunks in the last generate call")
        self.m_version = gauge("kuberl_rollout_policy_version", "Policy version this engine serves")
        self.m_load_seconds = gauge("kuberl_rollout_weight_load_seconds", "Seconds the last weight load took")
        self.m_load_bytes = gauge("kuberl_rollout_weight_load_bytes", "Bytes of the last weight load")
        self.m_errors = Counter(
            "kuberl_rollout_engine_errors", "Generate calls that failed", names, registry=self.registry
        ).labels(**labels)

    # --- HTTP to the controller --------------------------------------------------------------------------

    async def _post(self, session: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        for attempt in range(120):
            try:
                async with session.post(f"{self.url}{path}", json=body, headers=self.headers) as response:
                    data = await response.json() if response.content_type == "application/json" else None
                    if response.status >= 400 and response.status not in (409, 410):
                        raise RuntimeError(f"{path}: controller answered {response.status}: {data}")
                    return response.status, data
            except (aiohttp.ClientConnectionError, TimeoutError) as error:
                if attempt == 119:
                    raise
                log.info("controller unreachable (%s); retrying", error)
                await asyncio.sleep(1.0)
        raise AssertionError("unreachable")

    async def _heartbeats(self, session: aiohttp.ClientSession) -> None:
        while not self.done:
            _, reply = await self._post(
                session, "/v1/workers/heartbeat", {"worker": self.name, "role": "rollout", "version": self.version}
            )
            self.draining = bool(reply["drain"])
            self.done = self.done or bool(reply["complete"])
            await asyncio.sleep(self.cfg.fault.heartbeatSeconds)

    # --- weights -----------------------------------------------------------------------------------------

    async def _load(self, version: int, uri: str, sources: list[str] | None = None) -> None:
        assert self.engine is not None
        parsed = urlparse(uri)
        if not uri:  # version 0: the controller started over (a gang that lost its checkpoints), so does the engine
            await asyncio.to_thread(self.engine.load_weights, Path(model_dir(self.cfg.model, self.cfg.seed)), version)
        elif parsed.scheme == "file":
            path = Path(parsed.path)
            for _ in range(FILE_WAIT_POLLS):  # a restarted trainer republishes a pruned version: wait for it
                if path.exists():
                    break
                await asyncio.sleep(0.5)
            else:
                raise FileNotFoundError(
                    f"weights of version {version}: {path} did not appear within {FILE_WAIT_POLLS // 2}s"
                )
            await asyncio.to_thread(self.engine.load_weights, path, version)
        else:  # over HTTP: from an engine above this one in the relay tree, else from trainer rank 0
            began = time.perf_counter()
            target, source = await self.relay.fetch(version, sources or [uri], self.headers)
            self.weights_source = source
            log.info("fetched weights v%d from %s in %.2fs", version, source, time.perf_counter() - began)
            await asyncio.to_thread(self.engine.load_weights, target, version)
        self.version = version
        self.m_version.set(version)
        self.m_load_seconds.set(self.engine.weight_load_seconds)
        self.m_load_bytes.set(self.engine.weight_load_bytes)
        log.info(
            "loaded weights v%d in %.2fs (%d bytes)",
            version,
            self.engine.weight_load_seconds,
            self.engine.weight_load_bytes,
        )

    async def _follow(self, version: int, uri: str, sources: list[str] | None = None) -> None:
        """Load the version the controller names; a version whose weights cannot be had (its trainer gone with its
        files, e.g. before the controller starts over) is not fatal: the next lease names what to load now. Exits
        (raises) only after MAX_LOAD_FAILURES in a row.
        """
        try:
            await self._load(version, uri, sources)
            self.load_failures = 0
        except (OSError, http.client.HTTPException, aiohttp.ClientError, TimeoutError) as error:
            self.load_failures += 1
            if self.load_failures >= MAX_LOAD_FAILURES:
                raise
            log.warning("weights of version %d not loaded (%s); asking the controller again", version, error)
            await asyncio.sleep(1.0)

    # --- the loop ----------------------------------------------------------------------------------------

    async def _generate(self, chunks: list[dict[str, Any]]) -> tuple[list[tuple[dict[str, Any], Generated]], Refused]:
        """Generate a leased batch; when the engine refuses the batch, each chunk alone, so that one poison chunk
        (a prompt the engine refuses) costs only itself. Returns (chunk, result) pairs and (chunk, error) pairs.
        """
        assert self.engine is not None
        engine = self.engine

        def run(batch: list[dict[str, Any]]) -> list[Generated]:
            return engine.generate([Chunk(c["promptIds"], c["outputIds"], c["maxTokens"], c["seed"]) for c in batch])

        try:
            return list(zip(chunks, await asyncio.to_thread(run, chunks), strict=True)), []
        except Exception as error:
            log.warning("generate of %d chunks failed (%s: %s)", len(chunks), type(error).__name__, error)
            if len(chunks) == 1:
                return [], [(chunks[0], f"{type(error).__name__}: {error}")]
        done, refused = [], []
        for chunk in chunks:
            try:
                (result,) = await asyncio.to_thread(run, [chunk])
                done.append((chunk, result))
            except Exception as error:  # this chunk alone: the controller counts it against its rollout
                refused.append((chunk, f"{type(error).__name__}: {error}"))
        log.warning("alone: %d chunks went through, %d were refused", len(done), len(refused))
        return done, refused

    async def _serve_health(self) -> web.AppRunner:
        app = web.Application()

        async def healthz(request: web.Request) -> web.Response:
            # 503 until the engine has loaded (minutes for a large model): the pod is Ready only when it can generate
            return web.json_response(
                {"ok": self.engine is not None, "version": self.version}, status=200 if self.engine is not None else 503
            )

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def weights(request: web.Request) -> web.StreamResponse:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, self.headers["Authorization"].encode()):
                return web.json_response({"error": "missing or wrong bearer token"}, status=401)
            return await self.relay.serve(request)

        app.router.add_get("/healthz", healthz)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/weights/{version}", weights)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.cfg.ports.rollout).start()
        return runner

    async def run(self) -> int:
        runner = await self._serve_health()
        task = self.cfg.task
        self.engine = await asyncio.to_thread(
            Engine,
            model_dir(self.cfg.model, self.cfg.seed),
            dtype=self.cfg.model.dtype,
            seed=self.cfg.seed,
            max_model_len=task.maxPromptTokens + task.maxNewTokens,
            temperature=task.temperature,
            tensor_parallel_size=self.cfg.scale.tensorParallelSize,
            gpu_memory_utilization=self.cfg.scale.gpuMemoryUtilization,
        )
        failures = 0
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
                _, reply = await self._post(
                    session, "/v1/workers/register", {"worker": self.name, "role": "rollout", "address": self.host}
                )
                if reply["version"] > 0:
                    await self._follow(reply["version"], reply["weightsUri"], reply.get("weightsSources"))
                beats = asyncio.create_task(self._heartbeats(session))
                while not self.done:
                    if self.draining:
                        log.info("drained; stopping")
                        break
                    status, reply = await self._post(
                        session,
                        "/v1/rollout/lease",
                        {
                            "worker": self.name,
                            "maxRollouts": self.cfg.limits.rolloutBatch,
                            "version": self.version,
                        },
                    )
                    if status == 409:
                        await self._follow(reply["version"], reply["weightsUri"], reply.get("weightsSources"))
                        continue
                    self.done = bool(reply["complete"])
                    chunks = reply["chunks"]
                    if not chunks:
                        await asyncio.sleep(IDLE_SECONDS)
                        continue
                    start = time.perf_counter()
                    done, refused = await self._generate(chunks)
                    if refused:
                        self.m_errors.inc()
                        await self._post(
                            session,
                            "/v1/rollout/release",
                            {
                                "worker": self.name,
                                "leaseIds": [c["leaseId"] for c, _ in refused],
                                "error": refused[0][1],
                            },
                        )
                    if not done:  # not one chunk went through: the engine itself is failing
                        failures += 1
                        if failures >= MAX_ENGINE_FAILURES:
                            log.error("the engine failed %d times in a row; exiting", failures)
                            return 1
                        continue
                    failures = 0
                    seconds = time.perf_counter() - start
                    tokens = sum(len(g.token_ids) for _, g in done)
                    self.m_tps.set(tokens / seconds if seconds > 0 else 0.0)
                    self.m_batch.set(len(chunks))
                    results = [
                        {
                            "leaseId": c["leaseId"],
                            "tokenIds": g.token_ids,
                            "logprobs": g.logprobs,
                            "finishReason": "stop" if g.stopped else None,
                            "version": c["version"],
                        }
                        for c, g in done
                    ]
                    await self._post(
                        session, "/v1/rollout/complete", {"worker": self.name, "results": results, "seconds": seconds}
                    )
                beats.cancel()
        finally:
            await runner.cleanup()
            self.relay.close()
        return 0
