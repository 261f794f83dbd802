"""API helpers for an RLJob's children: adoption, events, and pod deletions the operator signs."""

from __future__ import annotations

import datetime
import time
from typing import Any, Protocol, cast

import kopf

from kuberl_operator.api import conditions as cond
from kuberl_operator.api.podschema import schema_problems
from kuberl_operator.api.rljob import API_VERSION, KIND
from kuberl_operator.kube import ApiError, Kube, path

# Set on a pod just before the operator deletes it (the value says why). A pod that goes without it was deleted
# by someone else (kubectl, an API eviction, a node drain): a fault, recreated after backoff and counted.
DELETED_BY_ANNOTATION = "kuberl.io/deleted-by-operator"


class Refusals(Protocol):
    """What create_child records into (reconcile's Outcome)."""

    created: list[str]
    refused: list[str]


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


async def create_child(kube: Kube, namespace: str, plural: str, manifest: dict[str, Any], outcome: Refusals) -> None:
    """Create one child. A pod is first checked against Kubernetes' pod schema (not sent when it fails); a
    request the API server refuses (invalid, forbidden, admission) is recorded in `outcome.refused` with the API
    server's message instead of raised, so the other children are still created and the status says why.
    """
    kind, name = manifest.get("kind", plural), manifest["metadata"]["name"]
    if plural == "pods":
        problems = schema_problems({"metadata": manifest["metadata"], "spec": manifest["spec"]})
        if problems:
            outcome.refused.append(f"{kind} {name} not sent: " + "; ".join(f"{p}: {m}" for p, m in problems))
            return
    try:
        await kube.create(namespace, plural, manifest)
    except ApiError as error:
        if not error.refused:
            raise
        outcome.refused.append(f"{kind} {name}: {error.message}")
        return
    outcome.created.append(name)


async def announce_refusals(kube: Kube, body: dict[str, Any], old: dict[str, Any], refused: list[str]) -> None:
    """One Warning event per new set of refusals (not one per retry): when the Degraded message changes."""
    if not refused:
        return
    message = "; ".join(refused)
    degraded: dict[str, Any] = next((x for x in old.get("conditions") or [] if x.get("type") == cond.DEGRADED), {})
    if degraded.get("reason") != cond.CREATE_REFUSED or degraded.get("message") != message:
        await event(kube, body, cond.CREATE_REFUSED, message, warning=True)
