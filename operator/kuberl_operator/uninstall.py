"""Helm's pre-delete hook: stop the operator, then release its finalizer from every RLJob, so nothing hangs.

kopf puts `kuberl.io/finalizer` on every RLJob (its timers and daemons require one). Once the operator is gone,
nothing would remove it: deleting the CRD, or any RLJob, would hang in Terminating with the job's pods running.
The hook scales the operator to zero first (a running operator would put the finalizer back), waits for its pods
to go, then removes the finalizer. The RLJobs stay, as `helm uninstall` promises; deleting them (or the CRD)
afterwards completes at once and the garbage collector takes their pods.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from kuberl_operator.kube import ApiError, Kube, path

log = logging.getLogger(__name__)
FINALIZER = "kuberl.io/finalizer"
RLJOBS_ALL_NAMESPACES = "/apis/kuberl.io/v1alpha1/rljobs"


def deployment_path(namespace: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"


async def stop_operator(kube: Kube, namespace: str, deployment: str, timeout: float, poll: float = 1.0) -> int:
    """Scale the operator's Deployment to 0 and wait until none of its pods is left; returns the pods waited for.

    Raises TimeoutError naming the pods still there after `timeout` seconds; a missing Deployment is fine (0).
    """
    found = await kube.get(deployment_path(namespace, deployment))
    if found is None:
        log.info("deployment %s/%s not found: nothing to stop", namespace, deployment)
        return 0
    await kube.merge_patch(deployment_path(namespace, deployment), {"spec": {"replicas": 0}})
    labels = found["spec"]["selector"].get("matchLabels") or {}
    selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
    deadline = time.monotonic() + timeout
    first: int | None = None
    while True:
        pods = [p["metadata"]["name"] for p in await kube.list(namespace, "pods", selector)]
        first = len(pods) if first is None else first
        if not pods:
            return first
        if time.monotonic() > deadline:
            raise TimeoutError(f"the operator's pods did not stop within {timeout:.0f}s: {', '.join(sorted(pods))}")
        log.info("waiting for the operator's pods to stop: %s", ", ".join(sorted(pods)))
        await asyncio.sleep(poll)


async def release_finalizers(kube: Kube, namespaces: Sequence[str] = ()) -> list[str]:
    """Remove kuberl's finalizer from every RLJob (in `namespaces`, or in all); returns `namespace/name` of each.

    A JSON patch that tests the finalizer list first: another controller's finalizer added meanwhile is kept (the
    patch fails with 422 and the job is read again).
    """
    jobs: list[dict[str, Any]] = []
    if namespaces:
        for namespace in namespaces:
            jobs += await kube.list(namespace, "rljobs", "")
    else:
        jobs = list(((await kube.call("GET", RLJOBS_ALL_NAMESPACES)) or {}).get("items") or [])
    released = []
    for job in jobs:
        meta = job["metadata"]
        where = path(meta.get("namespace") or "default", "rljobs", meta["name"])
        for _ in range(5):
            finalizers = list(meta.get("finalizers") or [])
            if FINALIZER not in finalizers:
                break
            patch = [
                {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in finalizers if f != FINALIZER]},
            ]
            try:
                await kube.call("PATCH", where, patch, content_type="application/json-patch+json")
            except ApiError as error:
                if error.status == 404:
                    break
                if error.status != 422:
                    raise
                meta = ((await kube.get(where)) or {"metadata": {}})["metadata"]
                continue
            released.append(f"{meta.get('namespace') or 'default'}/{meta['name']}")
            break
    return released


async def run(kube: Kube, namespace: str, deployment: str, namespaces: Sequence[str], timeout: float) -> list[str]:
    """The hook: stop the operator, then release the finalizers (see the module docstring)."""
    await stop_operator(kube, namespace, deployment, timeout)
    released = await release_finalizers(kube, namespaces)
    for name in released:
        log.info("released %s from RLJob %s", FINALIZER, name)
    return released
