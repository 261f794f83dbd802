"""What the operator reads off a job pod: its role and index, its phase, and how its worker container ended."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kuberl_operator import builders
from kuberl_operator.api.conditions import POD_START_REASONS
from kuberl_workers.config import invalid_input_problems


def role_of(pod: dict[str, Any]) -> tuple[str, int]:
    labels = pod["metadata"].get("labels") or {}
    return labels.get(builders.LABEL_ROLE, ""), int(labels.get(builders.LABEL_INDEX, "0"))


def phase(pod: dict[str, Any]) -> str | None:
    value = (pod.get("status") or {}).get("phase")
    return str(value) if value else None


def terminated(pod: dict[str, Any]) -> tuple[int | None, str]:
    """(exit code, termination message) of the pod's worker container, when it has terminated. A message that is
    a log's tail (terminationMessagePolicy FallbackToLogsOnError) is cut to the problems a worker marked in it.
    """
    role = role_of(pod)[0]
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        ended = (status.get("state") or {}).get("terminated")
        if status.get("name") == role and ended:
            message = str(ended.get("message") or "").strip()
            problems = invalid_input_problems(message.splitlines())
            return ended.get("exitCode"), "; ".join(problems) if problems else message
    return None, ""


# Pod status reasons of a pod the cluster took away (not a fault of the job): eviction (node pressure or the
# Eviction API), scheduler preemption, graceful node shutdown, a lost node.
DISRUPTION_REASONS = frozenset({"Evicted", "Preempting", "NodeShutdown", "Shutdown", "Terminated", "NodeLost"})


def disruption(pod: dict[str, Any]) -> str | None:
    """Why the cluster disrupted this pod (a DisruptionTarget condition's reason, e.g. PreemptionByScheduler,
    EvictionByEvictionAPI, DeletionByTaintManager, TerminationByKubelet; or an eviction/shutdown status reason),
    or None when it ended on its own or was deleted by a person.
    """
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            return str(condition.get("reason") or "DisruptionTarget")
    reason = status.get("reason")
    return str(reason) if reason in DISRUPTION_REASONS else None


def start_problem(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, message) when a pod cannot start: a container (or init container) waiting for a reason in
    conditions.POD_START_REASONS, or a PodScheduled=False/Unschedulable condition; None otherwise.
    """
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in POD_START_REASONS:
                message = str(waiting.get("message") or "").strip()
                where = f"{name}: container {container.get('name')}: {reason}"
                return str(reason), f"{where}: {message}"[:1000] if message else where
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            reason = str(condition.get("reason") or "Unschedulable")
            if reason in POD_START_REASONS:
                message = str(condition.get("message") or "").strip()
                return reason, f"{name}: {reason}: {message}"[:1000] if message else f"{name}: {reason}"
    return None


def start_deadline(pods: Sequence[dict[str, Any]], deadline: int, now: float) -> tuple[str | None, float | None]:
    """(why the job fails, None) when a pod has been Pending longer than `deadline` seconds since its creation
    (a late pod with a known reason, e.g. ImagePullBackOff, is named first); else (None, seconds until the next
    Pending pod would pass it, or None when no pod is Pending).
    """
    wait: float | None = None
    late: list[dict[str, Any]] = []
    for pod in pods:
        if phase(pod) not in (None, "Pending") or pod["metadata"].get("deletionTimestamp"):
            continue
        created = pod["metadata"].get("creationTimestamp")
        if not created:
            continue
        age = now - datetime.fromisoformat(str(created).replace("Z", "+00:00")).timestamp()
        if age > deadline:
            late.append(pod)
        wait = deadline - age if wait is None else min(wait, deadline - age)
    if late:
        problems = [problem[1] for pod in late if (problem := start_problem(pod))]
        why = problems[0] if problems else f"{late[0]['metadata']['name']}: Pending"
        return f"not started within faultTolerance.startDeadlineSeconds={deadline}s: {why}", None
    return None, None if wait is None else max(wait, 0.0) + 1.0
