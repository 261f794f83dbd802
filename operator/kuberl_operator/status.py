"""RLJob status as a pure function of what was observed: pods, the controller's report, restarts, the spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kuberl_operator.api import conditions as c
from kuberl_operator.pods import start_problem

ROLES = ("controller", "trainer", "rollout", "reward")  # reward: only for a job with spec.rewardServer


@dataclass
class Observed:
    """What one reconcile saw. `pods` are the job's pods as returned by the API."""

    generation: int
    pods: list[dict[str, Any]]
    desired: dict[str, int]
    restarts: dict[str, int]
    disruptions: dict[str, int] = field(default_factory=dict)  # restarts (of `restarts`) caused by disruptions
    controller: dict[str, Any] | None = None  # /v1/status of the job's controller, when reachable
    suspended: bool = False
    failed: tuple[str, str] | None = None  # (reason, message) of a terminal failure
    complete: bool = False
    restarting: bool = False
    avoided_nodes: list[str] = field(default_factory=list)
    selector: str = ""
    start_time: str | None = None
    completion_time: str | None = None
    refused: list[str] = field(default_factory=list)  # "<kind> <name>: <API server's message>" per refused create


def pod_ready(pod: dict[str, Any]) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        cond.get("type") == "Ready" and cond.get("status") == "True" for cond in status.get("conditions") or []
    )


def _count_ready(pods: list[dict[str, Any]], role: str) -> int:
    return sum(1 for p in pods if p["metadata"]["labels"].get("kuberl.io/role") == role and pod_ready(p))


def set_condition(
    old: list[dict[str, Any]], ctype: str, status: bool, reason: str, message: str, now: str, generation: int
) -> dict[str, Any]:
    """The condition, keeping lastTransitionTime when its status did not change."""
    value = "True" if status else "False"
    previous = next((x for x in old if x.get("type") == ctype), None)
    changed = previous is None or previous.get("status") != value
    return {
        "type": ctype,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now if changed or previous is None else previous["lastTransitionTime"],
        "observedGeneration": generation,
    }


def _step_wait(report: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, message) of what the controller's current step waits for, from its /v1/status."""
    waiting = report.get("waitingFor") or ""
    if waiting not in c.STEP_WAITS:
        return None
    step = int(report.get("step") or 0)
    what = {
        "rollouts": f"generating the rollouts that train policy version {step + 1}",
        "rolloutWorkers": f"no rollout worker connected: the rollouts for policy version {step + 1} cannot start",
        "weights": f"waiting for the trainer gang to publish policy version {step}",
    }[waiting]
    return c.STEP_WAITS[waiting], f"{what} (since {report.get('waitingSince', '?')})"


def compute(old: dict[str, Any], seen: Observed, now: str) -> dict[str, Any]:
    """The whole new status. Compare with the old one to decide whether to patch (never patch an equal one)."""
    pods = seen.pods
    roles = [r for r in ROLES if r in seen.desired]
    ready = {role: _count_ready(pods, role) for role in roles}
    report = seen.controller or {}
    old_conditions = old.get("conditions") or []
    all_ready = all(ready[r] >= seen.desired[r] for r in roles) and seen.desired["trainer"] > 0
    terminal = seen.failed is not None or seen.complete
    if seen.failed:
        summary = seen.failed
    elif seen.complete:
        summary = (c.SUCCEEDED, f"trained {report.get('step', old.get('step', ''))} steps")
    elif seen.suspended:
        summary = (c.SUSPENDED_BY_USER, "spec.suspend is true: pods deleted, checkpoints kept")
    elif seen.restarting:
        summary = (c.RESTARTING, "recreating failed pods")
    elif seen.refused:
        summary = (c.CREATE_REFUSED, "; ".join(seen.refused))
    elif all_ready:
        summary = (c.RUNNING, "all pods ready")
    elif stuck := next((problem for p in pods if (problem := start_problem(p))), None):
        summary = stuck  # the kubelet's or the scheduler's reason: ImagePullBackOff, Unschedulable, ...
    else:
        summary = (
            c.PENDING,
            "waiting for pods: "
            + ", ".join(f"{r} {ready[r]}/{seen.desired[r]}" for r in roles if ready[r] < seen.desired[r]),
        )
    rollout_gap = ready["rollout"] != seen.desired["rollout"]
    below_min = not terminal and not seen.suspended and ready["rollout"] < seen.desired.get("rolloutMin", 0)
    degraded_reason = (
        c.CREATE_REFUSED
        if seen.refused and not terminal
        else c.ROLLOUTS_BELOW_MINIMUM
        if below_min
        else c.RESTARTING
        if seen.restarting
        else c.NODES_AVOIDED
        if seen.avoided_nodes
        else c.HEALTHY
    )
    progressing = (_step_wait(report) if summary[0] == c.RUNNING else None) or summary
    conds = [
        set_condition(old_conditions, c.READY, summary[0] == c.RUNNING, summary[0], summary[1], now, seen.generation),
        set_condition(
            old_conditions,
            c.PROGRESSING,
            not terminal and not seen.suspended,
            *progressing,
            now,
            seen.generation,
        ),
        set_condition(
            old_conditions,
            c.SCALING,
            not terminal and not seen.suspended and rollout_gap,
            c.SCALING_UP if ready["rollout"] < seen.desired["rollout"] else c.SCALING_DOWN if rollout_gap else c.STABLE,
            f"rollouts {ready['rollout']}/{seen.desired['rollout']}",
            now,
            seen.generation,
        ),
        set_condition(
            old_conditions,
            c.DEGRADED,
            degraded_reason != c.HEALTHY,
            degraded_reason,
            ", ".join(seen.avoided_nodes)
            if degraded_reason == c.NODES_AVOIDED
            else "; ".join(seen.refused)
            if degraded_reason == c.CREATE_REFUSED
            else "",
            now,
            seen.generation,
        ),
        set_condition(
            old_conditions,
            c.SUSPENDED,
            seen.suspended,
            c.SUSPENDED_BY_USER if seen.suspended else c.RUNNING,
            "",
            now,
            seen.generation,
        ),
        set_condition(
            old_conditions,
            c.COMPLETE,
            seen.complete,
            c.SUCCEEDED if seen.complete else c.PENDING,
            "",
            now,
            seen.generation,
        ),
        set_condition(
            old_conditions,
            c.FAILED,
            seen.failed is not None,
            seen.failed[0] if seen.failed else c.HEALTHY,
            seen.failed[1] if seen.failed else "",
            now,
            seen.generation,
        ),
    ]
    status: dict[str, Any] = {
        "observedGeneration": seen.generation,
        "conditions": conds,
        "roles": [
            {
                "name": r,
                "desired": seen.desired[r],
                "ready": ready[r],
                "restarts": seen.restarts.get(r, 0),
                "disruptions": seen.disruptions.get(r, 0),
            }
            for r in roles
        ],
        "rollouts": f"{ready['rollout']}/{seen.desired['rollout']}",
        "trainers": f"{ready['trainer']}/{seen.desired['trainer']}",
        "rolloutReplicas": ready["rollout"],
        "rolloutSelector": seen.selector,
        "avoidedNodes": list(seen.avoided_nodes),
    }
    for key, source in (
        ("step", "step"),
        ("policyVersion", "policyVersion"),
        ("budgetFill", "budgetFill"),
        ("tokensPerSecond", "tokensPerSecond"),
        ("retention", "retention"),
        ("tokensPurged", "tokensPurged"),
        ("lastCheckpoint", "lastCheckpoint"),
        ("latestModel", "latestModel"),
    ):
        value = report.get(source, old.get(key))
        if value not in (None, ""):
            status[key] = round(value, 4) if isinstance(value, float) else value
    if seen.start_time or old.get("startTime"):
        status["startTime"] = old.get("startTime") or seen.start_time
    if seen.completion_time or old.get("completionTime"):
        status["completionTime"] = old.get("completionTime") or seen.completion_time
    return status


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that turns `old` into `new` (keys that disappear are set to None); {} when equal."""
    patch: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch
