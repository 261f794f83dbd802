"""The controller's HTTP API (docs/protocol.md): bearer-token auth, size limits, validated bodies."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kuberl_workers import batch_codec
from kuberl_workers.controller.scheduler import Batch
from kuberl_workers.controller.service import Controller

log = logging.getLogger(__name__)
CONTROLLER: web.AppKey[Controller] = web.AppKey("controller", Controller)
TICK_SECONDS = 0.2


class BatchBodies:
    """The encoded bodies of the batches served last: every rank of the trainer gang fetches the same batch, and
    encoding it is the controller's largest cost per step at scale (batch_codec.py), so it is done once per batch
    and encoding. A batch is never changed once closed; a restored controller serves new Batch objects, which miss.
    """

    KEEP = 4

    def __init__(self) -> None:
        self._bodies: dict[tuple[int, str], tuple[Batch, bytes]] = {}

    def body(self, batch: Batch, encoding: str) -> bytes:
        key = (batch.step, encoding)
        cached = self._bodies.get(key)
        if cached is not None and cached[0] is batch:
            return cached[1]
        body = batch_codec.encode(batch.step, batch.groups, encoding)
        self._bodies.pop(key, None)
        self._bodies[key] = (batch, body)
        while len(self._bodies) > self.KEEP:
            del self._bodies[next(iter(self._bodies))]
        return body


BATCH_BODIES: web.AppKey[BatchBodies] = web.AppKey("batch_bodies", BatchBodies)

WorkerName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")]
TokenId = Annotated[int, Field(ge=0, lt=2**31)]
Logprob = Annotated[float, Field(le=1e-3, ge=-1e4, allow_inf_nan=False)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RegisterRequest(_Body):
    worker: WorkerName
    role: Literal["rollout", "trainer"]
    version: int = Field(0, ge=0)
    step: int = Field(0, ge=0)
    address: str = Field("", max_length=512)


class HeartbeatRequest(_Body):
    worker: WorkerName
    role: Literal["rollout", "trainer"]
    version: int = Field(0, ge=0)


class LeaseRequest(_Body):
    worker: WorkerName
    maxRollouts: int = Field(ge=1, le=65536)
    version: int = Field(ge=0)


class ChunkResult(_Body):
    leaseId: str = Field(min_length=1, max_length=64)
    # tuples: parsed in pydantic-core straight into what the scheduler keeps (Scheduler.complete copies a list)
    tokenIds: tuple[TokenId, ...] = Field(max_length=131072)
    logprobs: tuple[Logprob, ...] = Field(max_length=131072)
    finishReason: Literal["stop", "length"] | None
    version: int = Field(ge=0)


class CompleteRequest(_Body):
    worker: WorkerName
    results: list[ChunkResult] = Field(max_length=65536)
    seconds: float = Field(0.0, ge=0.0, le=86400.0)


class ReleaseRequest(_Body):
    worker: WorkerName
    leaseIds: list[Annotated[str, Field(max_length=64)]] = Field(max_length=65536)
    error: str | None = Field(None, max_length=4000)
    """Set when these chunks failed alone (the engine refused each of them): each failure is counted against its
    rollout, whose group is dropped at the MAX_CHUNK_FAILURES-th. Unset: given back unfinished, not counted."""


class DrainRequest(_Body):
    worker: WorkerName


class PublishedRequest(_Body):
    version: int = Field(ge=1)
    weightsUri: str = Field(max_length=4096)
    checkpoint: bool = False
    trainSeconds: float = Field(0.0, ge=0.0)
    stats: dict[Annotated[str, Field(max_length=64)], Annotated[float, Field(allow_inf_nan=False)]] = Field(
        default_factory=dict, max_length=32
    )
    """The trainer's statistics of the step (loss, gradNorm, klRef, ...), recorded in the step's history."""


B = TypeVar("B", bound=_Body)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def _parse(request: web.Request, model: type[B]) -> B:
    """The validated body; 400 naming the field (413 comes from aiohttp's client_max_size)."""
    raw = await request.read()
    try:  # one pass in pydantic-core, JSON to validated model (token lists straight into tuples)
        return model.model_validate_json(raw)
    except ValidationError as error:
        errors = error.errors()
        if errors and errors[0]["type"] == "json_invalid":
            raise web.HTTPBadRequest(
                text=json.dumps({"error": f"body is not JSON: {errors[0]['msg']}"}), content_type="application/json"
            ) from None
        problems = [f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in errors[:20]]
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "invalid request", "problems": problems}), content_type="application/json"
        ) from None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _auth_middleware(token: str) -> Any:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        controller = request.app[CONTROLLER]
        if request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                controller.bad_requests += 1
                return _error(401, "missing or wrong bearer token")
        try:
            return await handler(request)
        except web.HTTPException as error:
            if 400 <= error.status < 500:
                controller.bad_requests += 1
            raise
        except Exception:  # a bug must not take the controller down: log it, answer 500, keep serving
            log.exception("error handling %s %s", request.method, request.path)
            return _error(500, "internal error")

    return middleware


async def register(request: web.Request) -> web.Response:
    c, body = request.app[CONTROLLER], await _parse(request, RegisterRequest)
    c.registered(body.worker, body.role, body.version, body.address)
    reply: dict[str, Any] = {
        "version": c.scheduler.version,
        "weightsUri": c.weights_uri,
        "heartbeatSeconds": c.cfg.fault.heartbeatSeconds,
        "leaseSeconds": c.cfg.fault.leaseSeconds,
    }
    if body.role == "trainer":
        reply["resumeStep"] = c.trainer_resume_step(body.step)
    else:
        reply["weightsSources"] = c.weight_sources(body.worker)
    return web.json_response(reply)


async def heartbeat(request: web.Request) -> web.Response:
    c, body = request.app[CONTROLLER], await _parse(request, HeartbeatRequest)
    if body.role == "rollout":
        c.note_version(body.worker, body.version)
    else:
        c.seen(body.worker, body.role, body.version)
    draining = body.worker in c.scheduler.workers and c.scheduler.workers[body.worker].draining
    return web.json_response(
        {"version": c.scheduler.version, "weightsUri": c.weights_uri, "drain": draining, "complete": c.complete}
    )


async def lease(request: web.Request) -> web.Response:
    c, body = request.app[CONTROLLER], await _parse(request, LeaseRequest)
    c.note_version(body.worker, body.version)
    if body.version != c.scheduler.version:
        return _error(
            409,
            f"worker serves version {body.version}; load version {c.scheduler.version} first",
            version=c.scheduler.version,
            weightsUri=c.weights_uri,
            weightsSources=c.weight_sources(body.worker),
        )
    return web.json_response({"chunks": c.lease(body.worker, body.maxRollouts), "complete": c.complete})


async def complete(request: web.Request) -> web.Response:
    c, body = request.app[CONTROLLER], await _parse(request, CompleteRequest)
    c.seen(body.worker, "rollout")
    # dict(r), not model_dump(): the token lists are handed over as parsed, not deep-copied once more per chunk
    accepted, rejected, invalid = c.accept(body.worker, [dict(r) for r in body.results], body.seconds)
    return web.json_response({"accepted": accepted, "rejected": rejected, "invalid": invalid})


async def release(request: web.Request) -> web.Response:
    c, body = request.app[CONTROLLER], await _parse(request, ReleaseRequest)
    c.seen(body.worker, "rollout")
    if body.error is not None:
        return web.json_response({"released": [i for i in body.leaseIds if c.fail_chunk(body.worker, i, body.error)]})
    return web.json_response({"released": [i for i in body.leaseIds if c.release_chunk(body.worker, i)]})


async def drain(request: web.Request) -> web.Response:
    c, body = request.app[CONTROLLER], await _parse(request, DrainRequest)
    held = c.drain(body.worker)
    return web.json_response({"worker": body.worker, "leases": held, "drained": held == 0})


async def demand(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROLLER].demand())


async def batch(request: web.Request) -> web.Response:
    c = request.app[CONTROLLER]
    raw = request.query.get("step", "")
    if not (raw.isascii() and raw.isdigit()):
        return _error(400, "query parameter step: expected a non-negative integer")
    encoding = request.query.get("encoding", "json")
    if encoding not in batch_codec.ENCODINGS:
        return _error(400, f"query parameter encoding: expected one of {', '.join(batch_codec.ENCODINGS)}")
    found = c.batch(int(raw))
    if found is None:
        if c.complete:
            return _error(410, "the job is complete", complete=True)
        if c.trainer_behind(int(raw)):
            return _error(
                409,
                f"step {raw} is beyond the controller's step {c.scheduler.step} (it was restored from an older "
                "checkpoint): restart the trainer gang",
                step=c.scheduler.step,
            )
        return web.Response(status=204)
    return web.Response(body=request.app[BATCH_BODIES].body(found, encoding), content_type="application/json")


async def published(request: web.Request) -> web.Response:
    c, body = request.app[CONTROLLER], await _parse(request, PublishedRequest)
    try:
        outcome = c.published(body.version, body.weightsUri, body.checkpoint, body.trainSeconds, body.stats)
    except ValueError as error:
        return _error(409, str(error), version=c.scheduler.version)
    return web.json_response(
        {
            "version": c.scheduler.version,
            "complete": c.complete,
            "outcome": outcome,
            "lastCheckpoint": c.last_checkpoint,
        }
    )


async def lost(request: web.Request) -> web.Response:
    c, body = request.app[CONTROLLER], await _parse(request, DrainRequest)
    return web.json_response({"worker": body.worker, "requeued": c.lost(body.worker)})


async def history(request: web.Request) -> web.Response:
    raw = request.query.get("since", "0")
    if not (raw.isascii() and raw.isdigit()):
        return _error(400, "query parameter since: expected a non-negative integer")
    since = int(raw)
    return web.json_response([h for h in request.app[CONTROLLER].history if h["step"] >= since])


async def samples(request: web.Request) -> web.Response:
    raw = request.query.get("since", "0")
    if not (raw.isascii() and raw.isdigit()):
        return _error(400, "query parameter since: expected a non-negative integer")
    return web.json_response(request.app[CONTROLLER].samples.since(int(raw)))


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROLLER].status())


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[CONTROLLER].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _ticker(app: web.Application) -> Any:
    controller = app[CONTROLLER]

    async def loop() -> None:
        while True:
            try:
                controller.tick()
            except Exception:
                log.exception("controller tick failed")
            await asyncio.sleep(TICK_SECONDS)

    task = asyncio.get_running_loop().create_task(loop())
    yield
    task.cancel()
    await controller.aclose()


def make_app(controller: Controller, token: str) -> web.Application:
    app = web.Application(client_max_size=controller.cfg.limits.maxRequestBytes, middlewares=[_auth_middleware(token)])
    app[CONTROLLER] = controller
    app[BATCH_BODIES] = BatchBodies()
    app.cleanup_ctx.append(_ticker)
    app.router.add_post("/v1/workers/register", register)
    app.router.add_post("/v1/workers/heartbeat", heartbeat)
    app.router.add_post("/v1/workers/lost", lost)
    app.router.add_post("/v1/rollout/lease", lease)
    app.router.add_post("/v1/rollout/complete", complete)
    app.router.add_post("/v1/rollout/release", release)
    app.router.add_post("/v1/rollout/drain", drain)
    app.router.add_get("/v1/demand", demand)
    app.router.add_get("/v1/trainer/batch", batch)
    app.router.add_post("/v1/trainer/published", published)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/history", history)
    app.router.add_get("/v1/samples", samples)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
