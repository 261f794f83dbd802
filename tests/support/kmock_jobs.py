"""One RLJob named `job` in the emulated API server, and what the scheduler and kubelet would write for its pods."""

from __future__ import annotations

from typing import Any, cast

from kuberl_operator.kube import Kube, path
from kuberl_operator.reconcile import SCALE_ANNOTATION
from support.apiserver import EmulatedApiServer, RecordingBus
from support.specs import minimal_job


async def new_job(kube: Kube, **spec: Any) -> dict[str, Any]:
    doc = minimal_job(**spec)
    await kube.create("default", "rljobs", doc)
    body = await kube.get(path("default", "rljobs", "job"))
    assert body is not None
    return body


async def body_of(kube: Kube) -> dict[str, Any]:
    body = await kube.get(path("default", "rljobs", "job"))
    assert body is not None
    return body


async def set_phase(kube: Kube, name: str, phase: str, ready: bool = True, node: str = "node-1") -> None:
    """What the scheduler (a binding) and the kubelet (status, through the subresource) would write."""
    pod = await kube.get(path("default", "pods", name))
    if pod is not None and not pod["spec"].get("nodeName"):
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"name": node}}
        await kube.call("POST", path("default", "pods", name, "binding"), binding)
    await kube.merge_patch(
        path("default", "pods", name, "status"),
        {"status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}},
    )


async def pods_of(kube: Kube) -> list[str]:
    return sorted(p["metadata"]["name"] for p in await kube.list("default", "pods", "kuberl.io/job=job"))


async def events_of(kube: Kube) -> list[tuple[str, str]]:
    return [(e["reason"], e["message"]) for e in await kube.list("default", "events", "")]


def deleted_pods(emulator: EmulatedApiServer) -> dict[str, dict[str, Any]]:
    """The last state of every deleted job pod, as the DELETED watch events carried it."""
    return {
        event["object"]["metadata"]["name"]: event["object"]
        for bus in cast(dict[Any, RecordingBus], emulator._buses).values()
        for event in bus.history
        if event["type"] == "DELETED" and "kuberl.io/role" in (event["object"]["metadata"].get("labels") or {})
    }


async def set_pool(kube: Kube, replicas: int) -> None:
    """What the scaler daemon writes: the rollout pool size it chose."""
    await kube.merge_patch(
        path("default", "rljobs", "job"), {"metadata": {"annotations": {SCALE_ANNOTATION: str(replicas)}}}
    )
