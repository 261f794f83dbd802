"""RLJob documents for tests."""

from __future__ import annotations

import copy
from typing import Any

_MINIMAL: dict[str, Any] = {
    "apiVersion": "kuberl.io/v1alpha1",
    "kind": "RLJob",
    "metadata": {"name": "job", "namespace": "default"},
    "spec": {
        "model": {"builtin": "tiny"},
        "task": {"dataset": {"builtin": "arithmetic"}, "reward": "numeric"},
    },
}


def minimal_job(**spec: Any) -> dict[str, Any]:
    """The smallest valid RLJob; keyword arguments replace top-level spec sections."""
    doc = copy.deepcopy(_MINIMAL)
    doc["spec"].update(copy.deepcopy(spec))
    return doc


def set_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `doc` with the dotted `path` set to `value` (intermediate mappings created); a value of
    DELETE removes the field."""
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return doc


DELETE = object()


def fault_drill_job(name: str, steps: int, model: dict[str, Any], checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A tiny, fast job for fault tests (local run and cluster): one rollout pod, quick restarts, frequent
    checkpoints."""
    return {
        "apiVersion": "kuberl.io/v1alpha1",
        "kind": "RLJob",
        "metadata": {"name": name},
        "spec": {
            "seed": 0,
            "model": model,
            "task": {
                "dataset": {"builtin": "arithmetic"},
                "reward": "numeric",
                "promptsPerStep": 4,
                "samplesPerPrompt": 2,
                "maxPromptTokens": 16,
                "maxNewTokens": 12,
            },
            "algorithm": {"steps": steps, "learningRate": 5e-4},
            "c3po": {"tokenBudget": 24, "retention": 1, "inferencePoolCapacity": 8, "chunkTokens": 4},
            "rollout": {"minReplicas": 1, "maxReplicas": 1},
            "faultTolerance": {
                "maxRestarts": 6,
                "restartBackoffSeconds": 1,
                "leaseSeconds": 20,
                "heartbeatSeconds": 1,
            },
            "checkpoint": {"everySteps": 2, "keep": 3, **checkpoint},
        },
    }
