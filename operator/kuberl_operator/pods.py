"""What the operator reads off a job pod: its role and index, its phase, and how its worker container ended."""

from __future__ import annotations

from typing import Any

from kuberl_operator import builders
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
