"""Elastic rollout scaling for one RLJob: demand signal -> policy.scale -> the desired-size annotation,
draining rollout pods before the pool shrinks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kuberl_operator import builders, metrics, policy
from kuberl_operator.api.rljob import RLJob
from kuberl_operator.children import event
from kuberl_operator.kube import Kube, path
from kuberl_operator.reconcile import SCALE_ANNOTATION, desired_rollouts

Demand = Callable[[RLJob, str], Awaitable[dict[str, Any] | None]]
Drain = Callable[[RLJob, str, str], Awaitable[bool]]


@dataclass
class ScalerState:
    low_since: float | None = None
    resized: bool = False  # the last decision wrote a new pool size: reconcile now, not at the next resync


async def scale_once(
    kube: Kube, body: dict[str, Any], demand: Demand, drain: Drain, state: ScalerState, now: float
) -> policy.ScaleDecision | None:
    """One scaling decision. Scale-up writes the annotation at once; scale-down first drains the pods that
    will go (the controller stops leasing to them) and only lowers the size once they hold no work.
    """
    meta = body["metadata"]
    try:
        job = RLJob.model_validate(
            {
                "apiVersion": body["apiVersion"],
                "kind": body["kind"],
                "metadata": {"name": meta["name"], "namespace": meta.get("namespace", "default")},
                "spec": body["spec"],
            }
        )
    except ValidationError:
        return None  # nothing to scale: reconcile fails the job with InvalidSpec and the field
    if job.spec.suspend:
        return None
    namespace = job.metadata.namespace or "default"
    signal = await demand(job, namespace)
    if signal is None:
        return None
    rollout = job.spec.rollout
    current = desired_rollouts(job, body)
    low_since = state.low_since
    decision = policy.scale(
        int(signal["desiredRolloutReplicas"]),
        current,
        rollout.minReplicas,
        rollout.maxReplicas,
        rollout.replicas,
        rollout.maxReplicas,
        state.low_since,
        now,
        rollout.scaleDownDelaySeconds,
    )
    state.low_since = decision.low_since
    state.resized = False
    if decision.target == current:
        return decision
    if decision.target < current:
        victims = [builders.pod_name(job.metadata.name, "rollout", i) for i in range(decision.target, current)]
        drained = [await drain(job, namespace, victim) for victim in victims]
        if not all(drained):  # keep the window open: shrink as soon as the victims hold no work
            state.low_since = low_since
            return policy.ScaleDecision(current, low_since, "draining " + ", ".join(victims))
    await kube.merge_patch(
        path(namespace, "rljobs", job.metadata.name),
        {"metadata": {"annotations": {SCALE_ANNOTATION: str(decision.target)}}},
    )
    state.resized = True
    reason = policy.SCALED_UP if decision.target > current else policy.SCALED_DOWN
    metrics.SCALING.labels(job.metadata.name, namespace, "up" if decision.target > current else "down").inc()
    await event(kube, body, reason, f"rollout pool {current} -> {decision.target}: {decision.reason}")
    return decision
