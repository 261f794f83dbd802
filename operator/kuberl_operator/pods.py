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
