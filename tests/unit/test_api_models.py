"""The RLJob pydantic models: defaults, round trips, catalogs shared with the workers, YAML loading."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from kuberl_operator.api import RLJob, RLJobStatus
from kuberl_operator.api.reward import RewardFunctionSpec
from kuberl_operator.api.spec import DatasetSpec, ModelSpec, RolloutSpec, TaskSpec
from kuberl_operator.api.validate import load_rljob, validate_document, validate_file
from kuberl_workers import catalog
from support.specs import minimal_job


def test_minimal_job_gets_documented_defaults() -> None:
    job = RLJob.model_validate(minimal_job())
    spec = job.spec
    assert spec.algorithm.icepop.enabled and (spec.algorithm.icepop.alpha, spec.algorithm.icepop.beta) == (0.5, 5.0)
    assert spec.algorithm.clipEpsilon == 0.2 and spec.algorithm.klCoef == 0.0 and spec.algorithm.name == "grpo"
    assert spec.trainer.replicas == 1 and spec.rollout.minReplicas == 1 and spec.rollout.replicas is None
    assert spec.checkpoint.volume is None and spec.suspend is False
    assert spec.c3po.retention is None  # automatic (controller/retention.py)


def test_dump_round_trips() -> None:
    job = RLJob.model_validate(minimal_job(rollout={"minReplicas": 1, "maxReplicas": 4, "replicas": 2}))
    again = RLJob.model_validate(job.dump())
    assert again == job
    assert "status" not in job.dump() and "replicas" in job.dump()["spec"]["rollout"]


def test_status_accepts_operator_written_status() -> None:
    status = RLJobStatus.model_validate(
        {
            "observedGeneration": 3,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Running",
                    "message": "",
                    "lastTransitionTime": "2026-11-23T10:00:00Z",
                }
            ],
            "roles": [{"name": "rollout", "desired": 3, "ready": 2, "restarts": 1}],
            "step": 4,
            "budgetFill": 0.5,
            "rollouts": "2/3",
        }
    )
    assert status.roles[0].ready == 2
    with pytest.raises(ValueError, match="type"):
        RLJobStatus.model_validate(
            {
                "conditions": [
                    {"type": "Happy", "status": "True", "reason": "X", "lastTransitionTime": "2026-11-23T10:00:00Z"}
                ]
            }
        )


def test_catalogs_match_the_workers() -> None:
    """The API's enums are the workers' registries: a name the API accepts is one the workers implement."""

    def literal(model: type[BaseModel], field: str) -> tuple[str, ...]:
        annotation = model.model_fields[field].annotation
        args = typing.get_args(annotation)
        inner = next((a for a in args if typing.get_origin(a) is typing.Literal), annotation)
        return typing.get_args(inner)

    assert literal(TaskSpec, "reward") == catalog.REWARD_NAMES
    assert literal(RewardFunctionSpec, "builtin") == catalog.BUILTIN_REWARDS
    assert literal(ModelSpec, "builtin") == catalog.BUILTIN_MODELS
    assert literal(DatasetSpec, "builtin") == catalog.BUILTIN_DATASETS
    assert literal(RolloutSpec, "engine") == catalog.ENGINES


def test_every_problem_reported_at_once() -> None:
    doc = minimal_job(
        rollout={"minReplicas": 4, "maxReplicas": 2, "bogus": 1},
        task={"dataset": {"builtin": "arithmetic"}, "reward": "nope", "promptsPerStep": 0, "maxNewTokens": 8},
        c3po={"chunkTokens": 64},
    )
    doc["metadata"]["name"] = "Bad_Name"
    rendered = sorted(str(p) for p in validate_document(doc))
    assert rendered == sorted(
        [
            "spec.rollout.minReplicas: must be <= maxReplicas",
            "spec.rollout.bogus: unknown field",
            "spec.task.reward: input should be 'exact_match', 'numeric', 'format' or 'math' (got 'nope')",
            "spec.task.promptsPerStep: input should be greater than or equal to 1 (got 0)",
            "spec.c3po.chunkTokens: must be <= task.maxNewTokens",
            "metadata.name: must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter) "
            "of at most 40 characters: pods and services are named after it",
        ]
    )


def test_wrong_kind_and_non_mapping() -> None:
    doc = minimal_job()
    doc["kind"] = "Job"
    assert [p.path for p in validate_document(doc)] == ["kind"]
    assert validate_document(["a"])[0].message == "expected an RLJob mapping, got list"


def test_yaml_floats_as_kubectl_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "apiVersion: kuberl.io/v1alpha1\nkind: RLJob\nmetadata: {name: j}\n"
        "spec:\n  model: {builtin: tiny}\n  task: {dataset: {builtin: arithmetic}, reward: numeric}\n"
        "  algorithm: {learningRate: 2e-6}\n"
    )
    assert load_rljob(path).spec.algorithm.learningRate == 2e-6


def test_multi_document_and_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("apiVersion: kuberl.io/v1alpha1\nkind: RLJob\nmetadata: {name: a}\nspec: {}\n---\n{}\n")
    paths = [p.path for p in validate_file(path)]
    assert "[0].spec.model" in paths and "[1].apiVersion" in paths
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    assert validate_file(bad)[0].message.startswith("cannot read")
    assert validate_file(tmp_path / "missing.yaml")[0].message.startswith("cannot read")
    with pytest.raises(ValueError, match=r"spec\.model"):
        load_rljob(path)


def test_validate_takes_the_document_as_the_api_server_stores_it() -> None:
    """Nulls dropped (then defaulted), integral floats in integer fields, a name from generateName."""
    from kuberl_operator.api.validate import as_stored

    doc = minimal_job(checkpoint=None, rollout={"minReplicas": 1.0, "maxReplicas": 2})
    doc["spec"]["task"]["promptsPerStep"] = 32.0
    doc["metadata"] = {"generateName": "quick-"}
    assert validate_document(doc) == []
    stored = as_stored(doc)
    assert "checkpoint" not in stored["spec"] and stored["spec"]["task"]["promptsPerStep"] == 32
    assert isinstance(stored["spec"]["rollout"]["minReplicas"], int)
    assert stored["metadata"]["name"].startswith("quick-") and doc["metadata"] == {"generateName": "quick-"}
    # not integral, a string, or a null that is required: still refused, at the field
    doc = minimal_job()
    doc["spec"]["task"]["promptsPerStep"] = 32.5
    assert [p.path for p in validate_document(doc)] == ["spec.task.promptsPerStep"]
    doc["spec"]["task"] = {"dataset": {"builtin": "arithmetic"}, "reward": None}
    assert [str(p) for p in validate_document(doc)] == [
        "spec.task: exactly one of task.reward or task.rewards must be set"
    ]
