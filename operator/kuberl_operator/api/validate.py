"""Validate RLJob documents and report every problem with its field path (`kuberl validate`)."""

from __future__ import annotations

import copy
import difflib
import functools
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import ValidationError

from kuberl_operator.api.podpolicy import POD_TEMPLATE_ERROR
from kuberl_operator.api.rljob import API_VERSION, KIND, RLJob
from kuberl_operator.api.rules import RULE_ERROR, rule_problems, transition_problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document, at a field path such as `spec.rollout.minReplicas`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def _join(loc: Iterable[Any]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def problems_of(error: ValidationError, rules: bool = True) -> list[Problem]:
    """Flatten a pydantic error into field-path problems, expanding kuberl's cross-field rules (or leaving
    them out with `rules=False`).
    """
    out: list[Problem] = []
    for err in error.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] == RULE_ERROR and not rules:
            continue
        if err["type"] == RULE_ERROR:
            for field, message in err["ctx"]["problems"]:
                out.append(Problem(_join(loc + tuple(field.split("."))) if field else _join(loc), message))
        elif err["type"] == POD_TEMPLATE_ERROR:
            out += [Problem(f"{_join(loc)}.{field}", message) for field, message in err["ctx"]["problems"]]
        elif err["type"] == "extra_forbidden":
            out.append(Problem(_join(loc), "unknown field" + _did_you_mean(loc)))
        elif err["type"] == "missing":
            out.append(Problem(_join(loc), "required field is missing"))
        else:
            message = err["msg"][0].lower() + err["msg"][1:]
            out.append(Problem(_join(loc), f"{message} (got {_show(err['input'])})"))
    return out


# what the API server appends to metadata.generateName (5 characters of its alphabet); a stand-in for validation
GENERATED_SUFFIX = "x2x2x"


@functools.cache
def _schema() -> dict[str, Any]:
    from kuberl_operator.api.crd import openapi_schema  # the CRD is generated from these models

    return openapi_schema()


def as_stored(doc: Any) -> Any:
    """`doc` as the API server stores it before validating it, so that `kuberl validate` agrees with it:
    explicit nulls dropped (none of RLJob's fields is nullable, so the API server prunes them), integral floats
    in integer fields made integers (`32.0` is stored as 32), and a name made from `metadata.generateName` when
    there is none. Defaults are left to the models. A copy; `doc` is not changed.
    """
    if not isinstance(doc, dict):
        return doc
    out = _normalised(doc, _schema())
    meta = out.get("metadata")
    if isinstance(meta, dict) and not meta.get("name") and isinstance(meta.get("generateName"), str):
        out["metadata"] = {**meta, "name": meta["generateName"] + GENERATED_SUFFIX}
    return out


def _normalised(value: Any, schema: dict[str, Any]) -> Any:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value  # kept as written (pod templates)
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is None:
            return dict(value)
        return {k: _normalised(v, props.get(k, {})) for k, v in value.items() if v is not None or k not in props}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_normalised(v, schema["items"]) for v in value]
    if schema.get("type") == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    """`; did you mean 'x'?` when the unknown field at `loc` is close to a field of the model it sits in."""
    model: Any = RLJob
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part) if isinstance(part, str) else None
        if field is None:
            return ""
        model = next((a for a in (field.annotation, *get_args(field.annotation)) if hasattr(a, "model_fields")), None)
        if model is None:
            return ""
    close = difflib.get_close_matches(str(loc[-1]), list(getattr(model, "model_fields", {})), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def validate_document(doc: Any) -> list[Problem]:
    """Problems of one parsed RLJob document, as the API server stores it (`as_stored`); empty when it is valid."""
    if not isinstance(doc, dict):
        return [Problem("", f"expected an RLJob mapping, got {type(doc).__name__}")]
    if isinstance(doc.get("kind"), str) and doc["kind"] != KIND:  # another kind of object: one line, not its fields
        found = f"kind {doc.get('kind')!r}, apiVersion {doc.get('apiVersion')!r}"
        return [Problem("kind", f"not an RLJob ({found}): expected kind {KIND!r}, apiVersion {API_VERSION!r}")]
    doc = as_stored(doc)
    try:
        RLJob.model_validate(doc)
    except ValidationError as error:
        # pydantic skips a parent's rules once a child failed; evaluate every rule over the raw document instead
        ruled = [Problem(path, message) for path, message in rule_problems(RLJob, doc)]
        return problems_of(error, rules=False) + ruled
    return []


def validate_update(old: RLJob, new: RLJob) -> list[Problem]:
    """Problems of changing `old` into `new` (immutable fields), as the CRD's transition rules check them."""
    return [Problem(path, message) for path, message in transition_problems(old.spec, new.spec)]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `2e-6` as a float, as kubectl's YAML parser does (PyYAML wants `2.0e-6`), and
    refuses a key given twice in one mapping (kubectl does too; PyYAML would keep the last silently).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


STDIN = Path("-")  # `kuberl validate -` and `kuberl run -`: the document comes from standard input


def with_overrides(doc: Any, overrides: Iterable[str]) -> Any:
    """`doc` with `--set path=value` overrides applied (dotted paths as in the error messages; values parsed as
    YAML: `--set spec.task.promptsPerStep=16`, `--set spec.suspend=true`). ValueError on a malformed one.
    """
    if not overrides:
        return doc
    if not isinstance(doc, dict):
        raise ValueError("--set: the document is not a mapping")
    doc = copy.deepcopy(doc)
    for override in overrides:
        where, sep, raw = override.partition("=")
        if not sep or not where or any(not part for part in where.split(".")):
            raise ValueError(f"--set {override!r}: expected dotted.path=value, e.g. spec.task.promptsPerStep=16")
        *parents, last = where.split(".")
        node = doc
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {override!r}: {part} is not a mapping")
            node = child
        node[last] = yaml.load(raw, Loader=_Loader) if raw else ""
    return doc


def load_documents(path: Path, overrides: Iterable[str] = ()) -> list[Any]:
    """The YAML documents of a file (STDIN: standard input), empty ones dropped, overrides applied to each."""
    if path == STDIN:
        docs = list(yaml.load_all(sys.stdin.read(), Loader=_Loader))
    else:
        with path.open(encoding="utf-8") as handle:
            docs = list(yaml.load_all(handle, Loader=_Loader))
    overrides = list(overrides)
    return [with_overrides(doc, overrides) for doc in docs if doc is not None]


def validate_file(path: Path, overrides: Iterable[str] = ()) -> list[Problem]:
    """Problems of every document in a YAML file; document index in the path when there are several."""
    try:
        docs = load_documents(path, overrides)
    except (OSError, yaml.YAMLError, ValueError) as error:
        return [Problem("", f"cannot read: {error}".replace("\n", " "))]
    return _validate_all(docs)


def _validate_all(docs: list[Any]) -> list[Problem]:
    if not docs:
        return [Problem("", "no YAML documents")]
    out: list[Problem] = []
    for index, doc in enumerate(docs):
        prefix = f"[{index}]." if len(docs) > 1 else ""
        out += [Problem(prefix + p.path if p.path else prefix.rstrip("."), p.message) for p in validate_document(doc)]
    return out


def load_rljob(path: Path, overrides: Iterable[str] = ()) -> RLJob:
    """The single RLJob in a file (STDIN: standard input, read once); ValueError listing every problem, as
    `kuberl validate` reports them, otherwise.
    """
    label = "<stdin>" if path == STDIN else str(path)
    try:
        docs = load_documents(path, overrides)
    except (OSError, yaml.YAMLError, ValueError) as error:
        raise ValueError(f"{label}: cannot read: {error}".replace("\n", " ")) from None
    problems = [str(p) for p in _validate_all(docs)]
    if len(docs) > 1:
        problems.append(f"expected one RLJob document, found {len(docs)} (kuberl run takes one job per file)")
    if problems:
        raise ValueError("\n".join(f"{label}: {p}" for p in problems))
    return RLJob.model_validate(as_stored(docs[0]))
