"""What the kopf handlers delegate to: one API session, per-job serialisation, error classification."""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import ssl
from typing import Any

import aiohttp
import kopf

from kuberl_operator import builders
from kuberl_operator.api.rljob import RLJob
from kuberl_operator.kube import ApiError, Kube, path
from kuberl_operator.reconcile import reconcile_and_patch

log = logging.getLogger(__name__)
RETRY_SECONDS = 10
_state: dict[str, Any] = {}
_locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)


async def start(info: kopf.ConnectionInfo) -> None:
    """One aiohttp session to the API server, from kopf's own login (again after a re-login)."""
    await stop()
    context: ssl.SSLContext | bool
    if info.insecure:
        context = False
    else:
        context = ssl.create_default_context(cafile=info.ca_path) if info.ca_path else ssl.create_default_context()
        if info.certificate_path and info.private_key_path:
            context.load_cert_chain(info.certificate_path, info.private_key_path)
    headers = {"Authorization": f"{info.scheme or 'Bearer'} {info.token}"} if info.token else {}
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    _state["kube"] = Kube(info.server, session, headers, ssl=context)
    _state["probe_session"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))


async def stop() -> None:
    for key in ("kube", "probe_session"):
        item = _state.pop(key, None)
        session = item.session if isinstance(item, Kube) else item
        if session is not None:
            await session.close()


async def probe(job: RLJob, namespace: str) -> dict[str, Any] | None:
    """The job controller's /v1/status, with the job's token; None while it is unreachable."""
    kube: Kube = _state["kube"]
    secret = await kube.get(path(namespace, "secrets", builders.secret_name(job.metadata.name)))
    if not secret or "token" not in (secret.get("data") or {}):
        return None
    token = base64.b64decode(secret["data"]["token"]).decode()
    url = f"http://{builders.controller_service(job.metadata.name)}.{namespace}.svc:8000/v1/status"
    try:
        async with _state["probe_session"].get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            return dict(await response.json()) if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def reconcile(body: kopf.Body, logger: logging.Logger | kopf.Logger) -> None:
    """Serialise per job (handlers and the timer may fire together), classify errors for kopf."""
    key = f"{body.metadata.namespace}/{body.metadata.name}"
    async with _locks[key]:
        try:
            outcome = await reconcile_and_patch(_state["kube"], dict(body), probe=probe)
        except ApiError as error:
            if 400 <= error.status < 500 and error.status not in (404, 409, 429):
                raise kopf.PermanentError(str(error)) from error
            raise kopf.TemporaryError(str(error), delay=RETRY_SECONDS) from error
        except aiohttp.ClientError as error:
            raise kopf.TemporaryError(f"API server unreachable: {error}", delay=RETRY_SECONDS) from error
    if outcome.created or outcome.deleted:
        logger.info("created %s, deleted %s", outcome.created, outcome.deleted)
    if outcome.permanent_error:
        raise kopf.PermanentError(outcome.permanent_error)
