"""pydantic and the CRD (OpenAPI schema + CEL, evaluated as the API server would) agree on what is valid."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from kuberl_operator.api.rljob import RLJob
from kuberl_operator.api.validate import validate_document, validate_update
from support.celcases import INVALID, boundary_specs, valid_specs
from support.schema_server import admit, apply_defaults, cel_problems, openapi_errors, unknown_fields
from support.specs import minimal_job, set_path


def _mutate(mutations: dict[str, Any]) -> dict[str, Any]:
    doc = minimal_job()
    for path, value in mutations.items():
        doc = set_path(doc, path, value)
    return doc


def _server_paths(problems: list[tuple[str, str]]) -> set[str]:
    # The root rule on metadata.name has no fieldPath (metadata is not in the schema's properties), so the
    # API server reports it at the root; pydantic reports the field itself.
    return {path or "metadata.name" for path, _ in problems}


def test_at_least_twenty_invalid_cases() -> None:
    assert len(INVALID) >= 20
    assert sum(1 for _, m, _ in INVALID if any(isinstance(v, dict) or "rollout" in k for k, v in m.items())) >= 5


@pytest.mark.parametrize(("case", "mutations", "paths"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_spec_rejected_by_both(
    schema: dict[str, Any], case: str, mutations: dict[str, Any], paths: set[str]
) -> None:
    doc = _mutate(mutations)
    ours = validate_document(doc)
    theirs = admit(doc, schema)
    assert {p.path for p in ours} == paths, ours
    assert _server_paths(theirs) == paths, theirs


def test_rule_messages_identical(schema: dict[str, Any]) -> None:
    """Where a CEL rule fails, the API server's messageExpression and pydantic's message are the same text."""
    compared = 0
    for _, mutations, _ in INVALID:
        doc = _mutate(mutations)
        stored = apply_defaults(doc, schema)
        if unknown_fields(doc, schema) or openapi_errors(stored, schema):
            continue  # messages of type and bound errors are each tool's own
        ours = {(p.path, p.message) for p in validate_document(doc)}
        theirs = {(path or "metadata.name", message) for path, message in cel_problems(stored, schema)}
        assert ours == theirs
        compared += 1
    assert compared >= 12


def test_immutable_trainer_replicas(schema: dict[str, Any]) -> None:
    old = minimal_job(trainer={"replicas": 2})
    new = minimal_job(trainer={"replicas": 4})
    ours = validate_update(RLJob.model_validate(old), RLJob.model_validate(new))
    theirs = admit(new, schema, old=old)
    assert [(p.path, p.message) for p in ours] == theirs == [("spec.trainer.replicas", "is immutable")]
    same = minimal_job(trainer={"replicas": 2, "gradientCheckpointing": True})
    assert validate_update(RLJob.model_validate(old), RLJob.model_validate(same)) == []
    assert admit(same, schema, old=old) == []


# --- property-based: generated specs ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=valid_specs())
def test_generated_valid_specs_accepted_by_both(schema: dict[str, Any], doc: dict[str, Any]) -> None:
    assert validate_document(doc) == []
    assert admit(doc, schema) == []
    # and both fill in the same defaults
    assert RLJob.model_validate(doc).dump()["spec"] == apply_defaults(doc, schema)["spec"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=boundary_specs())
def test_generated_boundary_specs_same_verdict(schema: dict[str, Any], doc: dict[str, Any]) -> None:
    ours = {(p.path, p.message) for p in validate_document(doc)}
    theirs = set(admit(doc, schema))
    assert ours == theirs
