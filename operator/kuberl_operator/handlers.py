"""What the kopf handlers delegate to: one API session, per-job serialisation, error classification."""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
from typing import Any

import aiohttp
import kopf

from kuberl_operator import builders, metrics
from kuberl_operator.api.rljob import RLJob
from kuberl_operator.children import deleted_by_someone_else
from kuberl_operator.kube import ApiError, Kube, path
from kuberl_operator.reconcile import reconcile_and_patch
from kuberl_operator.scaler import ScalerState, scale_once
from kuberl_operator.settings import Settings
from kuberl_workers.config import Ports

log = logging.getLogger(__name__)
RETRY_SECONDS = 10
CONTROLLER_PORT = Ports().controller
_state: dict[str, Any] = {}
_locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
_tokens: dict[str, str] = {}
_requeued: dict[str, asyncio.Task[None]] = {}


def configure(settings: Settings) -> None:
    """Take the operator's settings and serve its metrics (:8080/metrics unless configured otherwise)."""
    from prometheus_client import start_http_server

    _state["settings"] = settings
    if "metrics" not in _state:
        _state["metrics"] = start_http_server(settings.metrics_port, registry=metrics.REGISTRY)


def connect(info: kopf.ConnectionInfo, session: aiohttp.ClientSession) -> Kube:
    """A client of the API server kopf logged in to, with kopf's own TLS context and headers: every credential
    form of a kubeconfig kopf reads (token, basic auth, client certificate and CA as files or as embedded
    `*-data`, insecure-skip-tls-verify).
    """
    return Kube(info.server, session, info.as_http_headers(), ssl=info.as_ssl_context())


async def start(info: kopf.ConnectionInfo) -> None:
    """One aiohttp session to the API server, from kopf's own login (again after a re-login)."""
    await stop()
    _state["kube"] = connect(info, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)))
    _state["probe_session"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))


async def stop() -> None:
    for key in ("kube", "probe_session"):
        item = _state.pop(key, None)
        session = item.session if isinstance(item, Kube) else item
        if session is not None:
            await session.close()


async def _controller(
    job: RLJob, namespace: str, method: str, route: str, body: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Call the job controller's API with the job's token (read from its Secret); None while unreachable."""
    key = f"{namespace}/{job.metadata.name}"
    token = _tokens.get(key)
    if token is None:  # the Secret's token never changes once created: one read per job, not one per probe
        secret = await _state["kube"].get(path(namespace, "secrets", builders.secret_name(job.metadata.name)))
        if not secret or "token" not in (secret.get("data") or {}):
            return None
        token = _tokens[key] = base64.b64decode(secret["data"]["token"]).decode()
    # The pod's own address rather than the headless Service's DNS name: the same pod, without DNS caching
    # pointing at a recreated controller's old address.
    pod = await _state["kube"].get(path(namespace, "pods", builders.pod_name(job.metadata.name, "controller", 0)))
    address = ((pod or {}).get("status") or {}).get("podIP")
    if not address:
        return None
    url = f"http://{address}:{CONTROLLER_PORT}{route}"
    try:
        async with _state["probe_session"].request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            return dict(await response.json()) if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def probe(job: RLJob, namespace: str) -> dict[str, Any] | None:
    return await _controller(job, namespace, "GET", "/v1/status")


async def demand(job: RLJob, namespace: str) -> dict[str, Any] | None:
    return await _controller(job, namespace, "GET", "/v1/demand")


async def drain(job: RLJob, namespace: str, pod: str) -> bool:
    reply = await _controller(job, namespace, "POST", "/v1/rollout/drain", {"worker": pod})
    return bool(reply and reply.get("drained"))


async def worker_lost(job: RLJob, namespace: str, pod: str) -> None:
    """A rollout pod went: its leases return to the queue now (else after its missed heartbeats)."""
    await _controller(job, namespace, "POST", "/v1/workers/lost", {"worker": pod})


async def scale_forever(body: kopf.Body, stopped: kopf.DaemonStopped, interval: float = 5.0) -> None:
    """The per-job scaler daemon: one decision every `interval` seconds until the job goes away."""
    import time

    state = ScalerState()
    while not stopped:
        await scale_step(dict(body), state, time.monotonic())
        await stopped.wait(interval)


async def scale_step(body: dict[str, Any], state: ScalerState, now: float) -> None:
    """One scaling decision; a new pool size is reconciled at once (kopf sees no change in its own `kuberl.io/`
    annotations, so no update handler would run before the next resync).
    """
    meta = body["metadata"]
    try:
        await scale_once(_state["kube"], body, demand, drain, state, now)
    except (ApiError, aiohttp.ClientError) as error:
        log.warning("scaling %s/%s failed: %s", meta.get("namespace"), meta["name"], error)
        return
    if state.resized:
        await reconcile_by_name(meta.get("namespace") or "default", meta["name"])


async def reconcile(body: kopf.Body, logger: logging.Logger | kopf.Logger) -> None:
    """The kopf handlers' entry: reconcile the job this body names (if it is still the same object)."""
    await _reconcile_stored(body.metadata.namespace or "default", body.metadata.name or "", body.metadata.uid, logger)


async def _reconcile_stored(
    namespace: str,
    name: str,
    uid: str | None,
    logger: logging.Logger | kopf.Logger,
    gone: list[dict[str, Any]] | None = None,
) -> None:
    """Serialise per job (handlers, pod events and the timer may fire together), classify errors for kopf.

    The stored RLJob is read under the job's lock: a body handed over earlier may predate the previous reconcile's
    own writes (the watch lags), and a finished job could then look unfinished and get pods again. `uid` None
    (a pod event or a requeue) skips a job that is being deleted.
    """
    async with _locks[f"{namespace}/{name}"]:
        try:
            with metrics.RECONCILE_SECONDS.time():
                body = await _state["kube"].get(path(namespace, "rljobs", name))
                if body is None or (uid is not None and body["metadata"].get("uid") != uid):
                    return  # gone, or deleted and created anew
                if uid is None and body["metadata"].get("deletionTimestamp"):
                    return
                outcome = await reconcile_and_patch(
                    _state["kube"],
                    body,
                    probe=probe,
                    settings=_state.get("settings") or Settings(),
                    lost=worker_lost,
                    gone=gone or [],
                )
        except ApiError as error:
            metrics.RECONCILES.labels("error").inc()
            if 400 <= error.status < 500 and error.status not in (404, 409, 429):
                raise kopf.PermanentError(str(error)) from error
            raise kopf.TemporaryError(str(error), delay=RETRY_SECONDS) from error
        except aiohttp.ClientError as error:
            metrics.RECONCILES.labels("error").inc()
            raise kopf.TemporaryError(f"API server unreachable: {error}", delay=RETRY_SECONDS) from error
    metrics.RECONCILES.labels(
        "changed" if outcome.status_patch or outcome.created or outcome.deleted else "unchanged"
    ).inc()
    metrics.observe_status(name, namespace, {**(body.get("status") or {}), **outcome.status_patch})
    if outcome.created or outcome.deleted:
        logger.info("created %s, deleted %s", outcome.created, outcome.deleted)
    if outcome.requeue_after is not None:
        _requeue(namespace, name, outcome.requeue_after)
    if outcome.permanent_error:
        raise kopf.PermanentError(outcome.permanent_error)


def _requeue(namespace: str, name: str, delay: float) -> None:
    """Reconcile again when a restart backoff ends, instead of waiting for the next timer tick."""
    key = f"{namespace}/{name}"
    if key in _requeued and not _requeued[key].done():
        return
    _requeued[key] = asyncio.create_task(_reconcile_later(namespace, name, max(delay, 0.0) + 0.1))


async def _reconcile_later(namespace: str, name: str, delay: float) -> None:
    await asyncio.sleep(delay)
    await reconcile_by_name(namespace, name)


async def reconcile_by_name(namespace: str, name: str, gone: list[dict[str, Any]] | None = None) -> None:
    """Reconcile a job by name (from a pod event, the scaler or a requeue); errors wait for the next timer tick."""
    try:
        await _reconcile_stored(namespace, name, None, log, gone)
    except (kopf.PermanentError, kopf.TemporaryError, ApiError, aiohttp.ClientError) as error:
        log.warning("reconciling %s/%s failed: %s", namespace, name, error)


def job_deleted(body: kopf.Body) -> None:
    metrics.forget(body.metadata.name or "", body.metadata.namespace or "default")


async def pod_changed(body: kopf.Body, event_type: str | None) -> None:
    """A job pod failed, finished, got ready or went away: reconcile its RLJob now, not at the next tick.

    A pod deleted by someone else (no signature of ours) is handed to reconcile as a fault: once it is gone,
    nothing in the cluster says it ever went.
    """
    owner = next((ref for ref in body.metadata.get("ownerReferences") or [] if ref.get("kind") == "RLJob"), None)
    phase = (body.get("status") or {}).get("phase")
    if owner is None:
        return
    namespace = body.metadata.namespace or "default"
    if event_type == "DELETED":
        raw = dict(body)
        await reconcile_by_name(namespace, owner["name"], [raw] if deleted_by_someone_else(raw) else None)
    elif phase in ("Failed", "Succeeded") or _ready(body):
        await reconcile_by_name(namespace, owner["name"])


def _ready(body: kopf.Body) -> bool:
    return any(
        cond.get("type") == "Ready" and cond.get("status") == "True"
        for cond in (body.get("status") or {}).get("conditions") or []
    )
