"""Pod templates judged as the Kubernetes PodTemplateSpecs they become (Kubernetes' own strict schema)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kuberl_operator.api.podschema import schema_problems
from kuberl_operator.api.validate import validate_document
from support.specs import minimal_job

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_every_example_template_is_a_valid_pod_template(example: Path) -> None:
    spec = yaml.safe_load(example.read_text())["spec"]
    for role in ("controller", "trainer", "rollout"):
        assert schema_problems((spec.get(role) or {}).get("template") or {}) == []


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ({"spec": {"containers": "oops"}}, [("spec.containers", "must be an array (got 'oops')")]),
        ({"spec": {"nodeSelectr": {"a": "b"}}}, [("spec.nodeSelectr", "unknown field (not in the Kubernetes schema)")]),
        ({"spec": {"nodeSelector": {"a": 1}}}, [("spec.nodeSelector.a", "must be a string or null (got 1)")]),
        ({"spec": {"containers": [{"name": "rollout"}, {"image": "x"}]}}, [("spec.containers[1].name", "is required")]),
        (
            {"spec": {"containers": [{"resources": {"limits": {"memory": "lots"}}}]}},
            [
                (
                    "spec.containers[0].resources.limits.memory",
                    "is not a Kubernetes quantity (got 'lots'; e.g. 512Mi, 2Gi, 500m, 4)",
                )
            ],
        ),
        ({"metadata": {"labels": {"team": "rl"}}, "spec": {"priorityClassName": "x"}}, []),
        ({"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": 1, "cpu": "500m"}}}]}}, []),
    ],
)
def test_schema_problems(template: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert schema_problems(template) == expected


def test_validate_names_the_template_field() -> None:
    doc = minimal_job(trainer={"template": {"spec": {"containers": [{"name": "trainer", "imagePullPolicy": 3}]}}})
    assert [str(p) for p in validate_document(doc)] == [
        "spec.trainer.template.spec.containers[0].imagePullPolicy: must be a string or null (got 3)"
    ]
