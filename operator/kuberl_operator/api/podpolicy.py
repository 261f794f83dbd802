"""What a user's pod template may not do: privileges, host access, and the parts kuberl owns.

The CRD keeps templates as free-form objects (a full PodTemplateSpec schema would be most of the CRD), so these
rules are the operator's: a job whose template breaks one gets `Failed`/`InvalidSpec` naming the field, no pods.
A template must also be a valid PodTemplateSpec (api/podschema.py), checked here too.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from kuberl_operator.api.podschema import schema_problems

POD_TEMPLATE_ERROR = "pod_template"
HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")
RESERVED_LABEL_PREFIXES = ("kuberl.io/", "app.kubernetes.io/")
RESERVED_ENV_PREFIX = "KUBERL_"

OWNED_COMMAND = "is owned by kuberl (it runs `python -m kuberl_workers.<role>`)"

Problems = list[tuple[str, str]]


def template_problems(template: dict[str, Any], own_command: bool = True) -> Problems:
    """Every refused setting in a pod template, as (path inside the template, message): kuberl's policy, then
    whatever makes it an invalid Kubernetes PodTemplateSpec (api/podschema.py). `own_command`: kuberl runs the main
    container's command (worker roles); a reward server's template brings its own.
    """
    out = _policy_problems(template, own_command)
    seen = {where for where, _ in out}
    return out + [(where, message) for where, message in schema_problems(template) if where not in seen]


def _policy_problems(template: dict[str, Any], own_command: bool = True) -> Problems:
    out: Problems = []
    metadata, spec = template.get("metadata"), template.get("spec")
    for key, value in (("metadata", metadata), ("spec", spec)):
        if value is not None and not isinstance(value, dict):
            out.append((key, f"must be an object (got {type(value).__name__})"))
    if isinstance(metadata, dict):
        for key in (metadata.get("labels") or {}) if isinstance(metadata.get("labels"), dict) else {}:
            if str(key).startswith(RESERVED_LABEL_PREFIXES):
                out.append((f"metadata.labels.{key}", "is reserved: kuberl's selectors and ownership use it"))
    if not isinstance(spec, dict):
        return out
    for key in HOST_NAMESPACES:
        if spec.get(key) is True:
            out.append((f"spec.{key}", "host namespaces are refused (the pod would share the node's)"))
    if spec.get("restartPolicy") not in (None, "Never"):
        out.append(("spec.restartPolicy", "is owned by kuberl (Never: the operator decides about restarts)"))
    for i, volume in enumerate(_list(spec.get("volumes"))):
        if isinstance(volume, dict) and "hostPath" in volume:
            out.append((f"spec.volumes[{i}].hostPath", "hostPath volumes are refused (node filesystem access)"))
    out += _security_problems("spec.securityContext", spec.get("securityContext"), pod_level=True)
    for group in ("containers", "initContainers", "ephemeralContainers"):
        for i, container in enumerate(_list(spec.get(group))):
            if not isinstance(container, dict):
                out.append((f"spec.{group}[{i}]", "must be an object"))
                continue
            where = f"spec.{group}[{i}]"
            out += _security_problems(f"{where}.securityContext", container.get("securityContext"))
            worker = (group == "containers" and i == 0) or container.get("name") in ("controller", "trainer", "rollout")
            if own_command and worker:
                for owned in ("command", "args"):
                    if owned in container:
                        out.append(
                            (f"{where}.{owned}", "is owned by kuberl (it runs `python -m kuberl_workers.<role>`)")
                        )
            for j, env in enumerate(_list(container.get("env"))):
                name = env.get("name") if isinstance(env, dict) else None
                if isinstance(name, str) and name.startswith(RESERVED_ENV_PREFIX):
                    out.append((f"{where}.env[{j}].name", f"{name}: KUBERL_* variables are kuberl's worker contract"))
    return out


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _security_problems(where: str, context: Any, pod_level: bool = False) -> Problems:
    if context is None:
        return []
    if not isinstance(context, dict):
        return [(where, "must be an object")]
    out: Problems = []
    if context.get("runAsUser") == 0:
        out.append((f"{where}.runAsUser", "root (0) is refused: job pods run as a non-root user"))
    if context.get("runAsNonRoot") is False:
        out.append((f"{where}.runAsNonRoot", "false is refused: job pods run as a non-root user"))
    if pod_level:
        return out
    if context.get("privileged") is True:
        out.append((f"{where}.privileged", "privileged containers are refused"))
    if context.get("allowPrivilegeEscalation") is True:
        out.append((f"{where}.allowPrivilegeEscalation", "true is refused"))
    capabilities = context.get("capabilities")
    if isinstance(capabilities, dict) and capabilities.get("add"):
        out.append((f"{where}.capabilities.add", f"adding capabilities is refused (got {capabilities['add']!r})"))
    return out


def check_template(template: dict[str, Any], own_command: bool = True) -> dict[str, Any]:
    """The pydantic after-validator of every role's `template`."""
    problems = template_problems(template, own_command)
    if problems:
        summary = "; ".join(f"{path}: {message}" for path, message in problems)
        raise PydanticCustomError(POD_TEMPLATE_ERROR, "{summary}", {"summary": summary, "problems": problems})
    return template


PodTemplate = Annotated[
    dict[str, Any],
    Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}),
    AfterValidator(check_template),
]
"""A role's pod template in the API: free-form in the CRD, checked by check_template."""

ServerPodTemplate = Annotated[
    dict[str, Any],
    Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}),
    AfterValidator(lambda template: check_template(template, own_command=False)),
]
"""A reward server's pod template: as PodTemplate, but its main container's command and args are the user's."""
