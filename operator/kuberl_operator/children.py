"""API helpers for an RLJob's children: adoption, events, and pod deletions the operator signs."""

from __future__ import annotations

import datetime
import time
from typing import Any, cast

import kopf

from kuberl_operator.api.rljob import API_VERSION, KIND
from kuberl_operator.kube import ApiError, Kube, path

# Set on a pod just before the operator deletes it (the value says why). A pod that goes without it was deleted
# by someone else (kubectl, an API eviction, a node drain): a fault, recreated after backoff and counted.
DELETED_BY_ANNOTATION = "kuberl.io/deleted-by-operator"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def adopt(manifest: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """kopf.adopt: ownerReference to the RLJob (controller, blockOwnerDeletion: garbage-collected with it), the
    RLJob's namespace, and its labels on the child (ours win where both set one).
    """
    kopf.adopt(manifest, owner=kopf.Body(cast(kopf.RawBody, body)))
    return manifest


async def event(kube: Kube, body: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
    meta = body["metadata"]
    namespace = meta.get("namespace", "default")
    stamp = now()
    await kube.create(
        namespace,
        "events",
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": "kuberl-operator"},
        },
    )


async def delete_pod(kube: Kube, pod: dict[str, Any], why: str) -> bool:
    """Sign the pod (DELETED_BY_ANNOTATION), then delete it; False if it was already gone.

    One extra write per deletion buys telling our deletions from everybody else's: Kubernetes records no deleter.
    """
    meta = pod["metadata"]
    namespace = meta.get("namespace", "default")
    if (meta.get("annotations") or {}).get(DELETED_BY_ANNOTATION) is None:
        try:
            await kube.merge_patch(
                path(namespace, "pods", meta["name"]), {"metadata": {"annotations": {DELETED_BY_ANNOTATION: why}}}
            )
        except ApiError as error:
            if error.status == 404:
                return False
            raise
    return await kube.delete(namespace, "pods", meta["name"])


def deleted_by_someone_else(pod: dict[str, Any]) -> bool:
    return (pod["metadata"].get("annotations") or {}).get(DELETED_BY_ANNOTATION) is None
