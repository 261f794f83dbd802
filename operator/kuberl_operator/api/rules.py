"""Cross-field rules, written once: enforced by pydantic and emitted as the CRD's CEL `x-kubernetes-validations`."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

# The error type pydantic reports for a failed rule; `ctx["problems"]` holds (field, message) pairs.
RULE_ERROR = "kuberl_rule"


@dataclass(frozen=True)
class Rule:
    """One rule in two languages that must agree: CEL for the API server, Python for pydantic.

    `cel` is evaluated with `self` bound to the object the rule sits on (and `oldSelf` for transition rules);
    `message` is fixed text, the CEL `message`; `check` returns the same text, or None when the rule holds. (Not a
    `messageExpression`: the API server cost-estimates those, and `string()` of a field costs so much that it
    refuses the whole CRD.)
    `field` names the field (relative to the object) the error is reported at.
    """

    cel: str
    message: str
    field: str
    check: Callable[..., str | None]
    transition: bool = False
    # False where the field is outside the schema's declared properties (metadata.name at the root).
    cel_field_path: bool = True

    def to_cel(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.cel, "message": self.message}
        if self.field and self.cel_field_path:
            out["fieldPath"] = f".{self.field}"
            out["reason"] = "FieldValueInvalid"
        return out


def _emit_rules(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules = getattr(cls, "rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.to_cel() for rule in rules]


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def ordered(left: str, op: str, right: str, why: str = "") -> Rule:
    """The rule `left op right` over two (dotted) fields, reported at `left` as `must be <op> <right>[ why]`."""
    message = f"must be {op} {right}" + (f" {why}" if why else "")

    def check(m: Any) -> str | None:
        return None if _COMPARE[op](_get(m, left), _get(m, right)) else message

    return Rule(cel=f"self.{left} {op} self.{right}", message=message, field=left, check=check)


def stays_inside(field: str) -> Rule:
    """No ".." in a path: it must not climb out of its volume (a file named "a..b" is refused too: CEL has no
    path splitting).
    """
    message = "must not contain '..' (it would leave its volume)"
    return Rule(
        cel=f"!has(self.{field}) || !self.{field}.contains('..')",
        message=message,
        field=field,
        check=lambda m: message if ".." in (getattr(m, field) or "") else None,
    )


def needs(field: str, needed: str) -> Rule:
    message = f"needs {needed} (the directory or file inside the volume)"
    return Rule(
        cel=f"!has(self.{field}) || has(self.{needed})",
        message=message,
        field=field,
        check=lambda m: message if getattr(m, field) is not None and getattr(m, needed) is None else None,
    )


def only_without(field: str, other: str, why: str) -> Rule:
    """`field` may be set only while `other` is unset (`why` is the message)."""
    return Rule(
        cel=f"!has(self.{other}) || !has(self.{field})",
        message=why,
        field=field,
        check=lambda m: why if getattr(m, other) is not None and getattr(m, field) is not None else None,
    )


class ApiModel(BaseModel):
    """Base of every API model: unknown fields refused, `rules` checked after validation.

    Field names are the camelCase YAML keys themselves, so Python, YAML, CEL and error paths share one spelling.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # like the API server: "3" is not an integer
        use_attribute_docstrings=True,
        json_schema_extra=lambda schema, cls: _emit_rules(schema, cls),
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        problems = [(r.field, msg) for r in self.rules if not r.transition and (msg := r.check(self))]
        if problems:
            summary = "; ".join(f"{field}: {msg}" if field else msg for field, msg in problems)
            raise PydanticCustomError(RULE_ERROR, "{summary}", {"summary": summary, "problems": problems})
        return self

    def dump(self) -> dict[str, Any]:
        """The YAML/JSON form: camelCase keys, unset optional fields left out."""
        return self.model_dump(exclude_none=True, mode="json")


def transition_problems(old: BaseModel, new: BaseModel, prefix: str = "spec") -> list[tuple[str, str]]:
    """Evaluate transition rules (`oldSelf`) over two versions of the same model tree: (path, message) pairs."""
    problems: list[tuple[str, str]] = []
    for rule in getattr(type(new), "rules", ()):
        if rule.transition and type(old) is type(new) and (msg := rule.check(old, new)):
            problems.append((f"{prefix}.{rule.field}" if rule.field else prefix, msg))
    for name in type(new).model_fields:
        old_child, new_child = getattr(old, name, None), getattr(new, name, None)
        if isinstance(old_child, BaseModel) and isinstance(new_child, BaseModel):
            problems += transition_problems(old_child, new_child, f"{prefix}.{name}")
    return problems


def _model_class(annotation: Any) -> type[ApiModel] | None:
    candidates = (annotation, *get_args(annotation))
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, ApiModel)), None)


def _defaulted_view(cls: type[ApiModel], raw: dict[str, Any]) -> SimpleNamespace:
    """Attribute view of a raw mapping with the model's defaults filled in, as the API server defaults
    before it evaluates CEL; values are not type-checked (a rule over a wrongly typed field is skipped).
    """
    values: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        value = raw[name] if name in raw else info.get_default(call_default_factory=True)
        sub = _model_class(info.annotation)
        if sub is not None and isinstance(value, BaseModel):
            value = value.model_dump()
        if sub is not None and isinstance(value, dict):
            value = _defaulted_view(sub, value)
        values[name] = value
    return SimpleNamespace(**values)


def rule_problems(cls: type[ApiModel], raw: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Evaluate every (non-transition) rule of a raw document tree, even where other fields are invalid, so
    that one pass reports every problem: (path, message) pairs.
    """
    if not isinstance(raw, dict):
        return []
    problems: list[tuple[str, str]] = []
    view = _defaulted_view(cls, raw)
    for rule in cls.rules:
        if rule.transition:
            continue
        try:
            message = rule.check(view)
        except (TypeError, AttributeError, ValueError, ArithmeticError):
            continue  # an input of the wrong type (or out of its bounds) is reported by type validation
        if message:
            path = ".".join(p for p in (prefix, rule.field) if p)
            problems.append((path, message))
    for name, info in cls.model_fields.items():
        sub = _model_class(info.annotation)
        path = f"{prefix}.{name}" if prefix else name
        if sub is not None and name in raw:
            problems += rule_problems(sub, raw[name], path)
        item = _list_item_class(info.annotation)
        if item is not None and isinstance(raw.get(name), list):
            for index, element in enumerate(raw[name]):
                problems += rule_problems(item, element, f"{path}[{index}]")
    return problems


def _list_item_class(annotation: Any) -> type[ApiModel] | None:
    """X of a `list[X] | None` field whose X is an API model."""
    for candidate in (annotation, *get_args(annotation)):
        if get_origin(candidate) is list:
            return _model_class(get_args(candidate)[0])
    return None
