"""What a kube-apiserver does with a CRD's structural schema on create and update, emulated for tests.

Emulated: defaulting (`default`), strict field validation (unknown fields are errors, as with
`kubectl apply --validate=strict`), OpenAPI v3 validation (types, enums, bounds, patterns, formats; by
jsonschema's Draft 4 validator, whose boolean `exclusiveMinimum` matches OpenAPI v3.0), and CEL
`x-kubernetes-validations` including transition rules with `oldSelf` (by cel-python). Not emulated: CEL cost
limits, ratcheting, and list-type merge semantics.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

Problems = list[tuple[str, str]]


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """A copy of `obj` with schema defaults filled in, top-down, the way the API server defaults."""
    obj = copy.deepcopy(obj)
    _default_in_place(obj, schema)
    return obj


def _default_in_place(obj: Any, schema: dict[str, Any]) -> None:
    if isinstance(obj, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                _default_in_place(obj[key], sub)
    elif isinstance(obj, list) and "items" in schema:
        for item in obj:
            _default_in_place(item, schema["items"])


def unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> Problems:
    """Fields the schema does not declare (the API server prunes them, or refuses them in Strict mode)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out: Problems = []
    if isinstance(obj, dict) and "properties" in schema:
        for key, value in obj.items():
            if key not in schema["properties"]:
                if path or key not in ("apiVersion", "kind", "metadata"):
                    out.append((_join(path, key), "unknown field"))
            else:
                out += unknown_fields(value, schema["properties"][key], _join(path, key))
    elif isinstance(obj, list) and "items" in schema:
        for index, item in enumerate(obj):
            out += unknown_fields(item, schema["items"], _join(path, index))
    return out


def prune(obj: Any, schema: dict[str, Any]) -> Any:
    """A copy of `obj` without the fields the schema does not declare (what the API server stores)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return copy.deepcopy(obj)
    if isinstance(obj, dict) and "properties" in schema:
        props = schema["properties"]
        return {
            k: prune(v, props[k]) if k in props else v
            for k, v in obj.items()
            if k in props or k in ("apiVersion", "kind", "metadata")
        }
    if isinstance(obj, list) and "items" in schema:
        return [prune(item, schema["items"]) for item in obj]
    return copy.deepcopy(obj)


# OpenAPI failures after which the API server skips CEL (apiextensions-apiserver's hasBlockingErr: type,
# required, enum, maxLength, maxItems); bounds and patterns do not block.
BLOCKING = frozenset({"type", "required", "enum", "maxLength", "maxItems"})


def openapi_errors(obj: Any, schema: dict[str, Any]) -> list[jsonschema.ValidationError]:
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
    return list(validator.iter_errors(obj))


def openapi_problems(errors: list[jsonschema.ValidationError]) -> Problems:
    out: Problems = []
    for error in errors:
        path = ""
        for part in error.absolute_path:
            path = _join(path, part)
        if error.validator == "required":
            missing = error.message.split("'")[1]
            out.append((_join(path, missing), "Required value"))
        else:
            out.append((path, f"{error.validator}: {error.message}"))
    return out


def _typed(obj: Any, schema: dict[str, Any]) -> Any:
    """Values as CEL sees them: `type: number` is a double even when written as 1."""
    if schema.get("type") == "number" and isinstance(obj, int) and not isinstance(obj, bool):
        return float(obj)
    if isinstance(obj, dict) and "properties" in schema:
        return {k: _typed(v, schema["properties"].get(k, {})) for k, v in obj.items()}
    if isinstance(obj, list) and "items" in schema:
        return [_typed(v, schema["items"]) for v in obj]
    return obj


_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def _run(expr: str, activation: dict[str, Any]) -> Any:
    if expr not in _PROGRAMS:
        _PROGRAMS[expr] = _ENV.program(_ENV.compile(expr))
    return _PROGRAMS[expr].evaluate({k: json_to_cel(v) for k, v in activation.items()})


def cel_problems(obj: Any, schema: dict[str, Any], old: Any = None, path: str = "") -> Problems:
    """Evaluate every x-kubernetes-validations rule on the object tree; transition rules only where `old`
    has the same node (as the API server does)."""
    out: Problems = []
    for rule in schema.get("x-kubernetes-validations", []):
        is_transition = "oldSelf" in rule["rule"]
        if is_transition and old is None:
            continue
        activation = {"self": _typed(obj, schema)}
        if is_transition:
            activation["oldSelf"] = _typed(old, schema)
        result = _run(rule["rule"], activation)
        if isinstance(result, CELEvalError):
            raise AssertionError(f"CEL rule {rule['rule']!r} failed to evaluate at {path or '<root>'}: {result}")
        if not result:
            message = _run(rule["messageExpression"], activation) if "messageExpression" in rule else rule["message"]
            field = rule.get("fieldPath", "").lstrip(".")
            out.append((_join(path, field) if field else path, str(message)))
    if isinstance(obj, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key in obj:
                old_child = old.get(key) if isinstance(old, dict) else None
                out += cel_problems(obj[key], sub, old_child, _join(path, key))
    elif isinstance(obj, list) and "items" in schema:  # rules of list items, as the API server runs them
        for index, item in enumerate(obj):
            out += cel_problems(item, schema["items"], None, _join(path, index))
    return out


def admit(obj: dict[str, Any], schema: dict[str, Any], old: dict[str, Any] | None = None) -> Problems:
    """Problems the API server would report for a create (or, with `old`, an update) of `obj`.

    Unknown fields are reported (Strict field validation) and pruned; CEL runs unless a blocking OpenAPI
    error was found, as in the API server.
    """
    problems = unknown_fields(obj, schema)
    stored = apply_defaults(prune(obj, schema), schema)
    errors = openapi_errors(stored, schema)
    problems += openapi_problems(errors)
    if any(error.validator in BLOCKING for error in errors):
        return problems
    old_stored = apply_defaults(prune(old, schema), schema) if old is not None else None
    return problems + cel_problems(stored, schema, old_stored)
