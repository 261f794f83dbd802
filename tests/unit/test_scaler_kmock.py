"""The elastic scaler against kmock's Kubernetes emulator, with a scripted demand signal."""

from __future__ import annotations

from typing import Any

from kuberl_operator.kube import Kube, path
from kuberl_operator.reconcile import SCALE_ANNOTATION, reconcile_and_patch
from kuberl_operator.scaler import ScalerState, scale_once
from support.specs import minimal_job


async def _body(kube: Kube) -> dict[str, Any]:
    body = await kube.get(path("default", "rljobs", "job"))
    assert body is not None
    return body


async def test_scale_up_now_down_after_drain_and_window(kube: Kube) -> None:
    doc = minimal_job(rollout={"minReplicas": 1, "maxReplicas": 4, "scaleDownDelaySeconds": 30})
    await kube.create("default", "rljobs", doc)
    await reconcile_and_patch(kube, await _body(kube))
    wanted = {"n": 3}
    drained: list[str] = []
    holding = {"job-rollout-2": True}

    async def demand(job: Any, namespace: str) -> dict[str, Any]:
        return {"desiredRolloutReplicas": wanted["n"]}

    async def drain(job: Any, namespace: str, pod: str) -> bool:
        drained.append(pod)
        return not holding.get(pod, False)

    state = ScalerState()
    up = await scale_once(kube, await _body(kube), demand, drain, state, now=0)
    assert up is not None and up.target == 3
    assert (await _body(kube))["metadata"]["annotations"][SCALE_ANNOTATION] == "3"
    created = (await reconcile_and_patch(kube, await _body(kube))).created
    assert sorted(created) == ["job-rollout-1", "job-rollout-2"]

    wanted["n"] = 1
    waiting = await scale_once(kube, await _body(kube), demand, drain, state, now=10)
    assert waiting is not None and waiting.target == 3  # inside the scale-down window
    still = await scale_once(kube, await _body(kube), demand, drain, state, now=45)
    assert still is not None and still.target == 3 and "draining" in still.reason  # rollout-2 holds a lease
    holding.clear()
    down = await scale_once(kube, await _body(kube), demand, drain, state, now=50)
    assert down is not None and down.target == 1 and drained[-2:] == ["job-rollout-1", "job-rollout-2"]
    deleted = (await reconcile_and_patch(kube, await _body(kube))).deleted
    assert sorted(deleted) == ["job-rollout-1", "job-rollout-2"]
    reasons = [e["reason"] for e in await kube.list("default", "events", "")]
    assert reasons == ["ScaledUp", "ScaledDown"]


async def test_pin_wins(kube: Kube) -> None:
    doc = minimal_job(rollout={"minReplicas": 1, "maxReplicas": 4, "replicas": 2})
    await kube.create("default", "rljobs", doc)

    async def demand(job: Any, namespace: str) -> dict[str, Any]:
        return {"desiredRolloutReplicas": 4}

    async def drain(job: Any, namespace: str, pod: str) -> bool:
        return True

    decision = await scale_once(kube, await _body(kube), demand, drain, ScalerState(), now=0)
    assert decision is not None and decision.target == 2  # kubectl scale pinned it
