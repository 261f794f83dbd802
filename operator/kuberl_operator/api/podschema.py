"""A pod template checked as the Kubernetes PodTemplateSpec it becomes, before any pod is built or sent.

The CRD keeps templates free-form, so without this a template the API server would refuse (`containers: "oops"`,
an unknown field, `memory: lots`) passes `kuberl validate` and the CRD and fails only at pod creation. The schema is
Kubernetes' own OpenAPI schema in its strict form (unknown fields refused), from the `kubernetes-validate` package;
resource quantities are parsed by the Kubernetes Python client's `parse_quantity`.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

# The Kubernetes minor version whose schema templates are checked against (the one the suite's API server runs).
KUBERNETES_SCHEMA_VERSION = "1.36"
ROLE_CONTAINERS = ("controller", "trainer", "rollout")
# what build_pod sets on the role's container: a template may leave it out
OWNED_FIELDS = {"name": "placeholder", "image": "placeholder"}

Problems = list[tuple[str, str]]


@functools.cache
def _validator() -> Any:
    import jsonschema
    from kubernetes_validate.utils import schema_contents
    from referencing import Registry, Resource

    folder = f"kubernetes-json-schema/v{KUBERNETES_SCHEMA_VERSION}.0-local-strict"
    schema = schema_contents(f"{folder}/podtemplatespec-v1.json", KUBERNETES_SCHEMA_VERSION)
    definitions = schema_contents(f"{folder}/_definitions.json", KUBERNETES_SCHEMA_VERSION)
    registry: Registry[Any] = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _with_owned_fields(template: dict[str, Any]) -> dict[str, Any]:
    """The template with what kuberl fills in on the role's container (the one named after a role, else the
    first), so that only what the user wrote is judged.
    """
    out = copy.deepcopy(template)
    spec = out.get("spec")
    if not isinstance(spec, dict):
        return out
    containers = spec.get("containers")
    if containers is None:
        spec["containers"] = [dict(OWNED_FIELDS)]
    elif isinstance(containers, list) and containers and all(isinstance(c, dict) for c in containers):
        main = next((c for c in containers if c.get("name") in ROLE_CONTAINERS), containers[0])
        for key, value in OWNED_FIELDS.items():
            main.setdefault(key, value)
    return out


def schema_problems(template: dict[str, Any]) -> Problems:
    """Every way `template` is not a valid Kubernetes PodTemplateSpec, as (path inside the template, message);
    the most specific error of each place, at most one per path.
    """
    found: dict[str, str] = {}
    candidate = _with_owned_fields(template)
    for error in _validator().iter_errors(candidate):
        leaf = error
        where = _path(leaf.absolute_path)
        if leaf.validator == "additionalProperties":
            known = set((leaf.schema.get("properties") or {}).keys())
            extra = sorted(set(leaf.instance) - known) if isinstance(leaf.instance, dict) else []
            for key in extra:
                found.setdefault(_path([*leaf.absolute_path, key]), "unknown field (not in the Kubernetes schema)")
            continue
        if leaf.validator == "required":
            missing = leaf.message.split("'")[1]
            found.setdefault(_path([*leaf.absolute_path, missing]), "is required")
            continue
        found.setdefault(where, _message(leaf))
    found.update({k: v for k, v in _quantity_problems(candidate).items() if k not in found})
    return sorted(found.items())


def _message(error: Any) -> str:
    if error.validator == "type":
        wanted = error.validator_value
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        return f"must be {'an' if str(wanted)[0] in 'aeio' else 'a'} {wanted} (got {_show(error.instance)})"
    if error.validator == "enum":
        return f"must be one of {', '.join(map(str, error.validator_value))} (got {_show(error.instance)})"
    return f"{error.message[:200]}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _quantity_problems(template: dict[str, Any]) -> dict[str, str]:
    from kubernetes.utils.quantity import parse_quantity

    out: dict[str, str] = {}
    spec = template.get("spec")
    if not isinstance(spec, dict):
        return out
    for group in ("containers", "initContainers"):
        containers = spec.get(group)
        for i, container in enumerate(containers if isinstance(containers, list) else []):
            resources = container.get("resources") if isinstance(container, dict) else None
            for kind in ("limits", "requests"):
                values = resources.get(kind) if isinstance(resources, dict) else None
                for name, value in (values or {}).items() if isinstance(values, dict) else ():
                    try:
                        parse_quantity(value)  # type: ignore[no-untyped-call]
                    except (ValueError, TypeError, ArithmeticError):
                        out[f"spec.{group}[{i}].resources.{kind}.{name}"] = (
                            f"is not a Kubernetes quantity (got {_show(value)}; e.g. 512Mi, 2Gi, 500m, 4)"
                        )
    return out
