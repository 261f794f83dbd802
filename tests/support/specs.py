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
