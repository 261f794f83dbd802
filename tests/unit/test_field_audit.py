"""#15 kind 3: every RLJob spec field is implemented or refused, never silently ignored.

Each leaf field of the spec is changed, one at a time, from the minimal job. The change must be refused by
validation, or change what the workers get (the rendered WorkerConfig, pods, Services), or be one of the fields the
operator itself acts on (restarts, scaling, suspension), read by the module named in OPERATOR_POLICY. A new field
fails this test until it is placed. Then every WorkerConfig field must be read somewhere in the workers.
"""

from __future__ import annotations

import ast
import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from kuberl_operator import builders
from kuberl_operator.api.rljob import RLJob
from kuberl_operator.api.spec import RLJobSpec
from kuberl_operator.api.validate import validate_document
from kuberl_operator.reward_server import build_reward_pod, build_reward_service
from kuberl_workers.config import WorkerConfig
from support.specs import DELETE, minimal_job, set_path

ROOT = Path(__file__).resolve().parents[2]
BASE = minimal_job(
    task={"dataset": {"builtin": "arithmetic"}, "reward": "numeric", "maxPromptTokens": 64},
    eval={"dataset": {"builtin": "arithmetic"}},
    reporting={"mlflow": {"trackingUri": "file:/tmp/mlruns"}, "wandb": {"project": "p"}},
)
# A changed value for each field whose type gives none by itself (strings, paths, optional and free-form fields).
SAMPLES: dict[str, Any] = {
    "model.path": "models/m",
    "c3po.retention": 3,
    "trainer.shardGroupSize": 1,
    "c3po.maxPurgedTokenShare": 0.1,
    "c3po.maxRetention": 4,
    "model.volume": "models",
    "model.builtin": "smollm2-135m-instruct",
    "task.dataset.path": "data/train.jsonl",
    "task.dataset.volume": "data",
    "task.dataset.builtin": None,
    "task.dataset.promptField": "question",
    "task.dataset.answerField": "solution",
    "eval.dataset.path": "data/held-out.jsonl",
    "eval.dataset.volume": "evaldata",
    "eval.dataset.builtin": None,
    "eval.dataset.promptField": "question",
    "eval.dataset.answerField": "solution",
    "task.systemPrompt": "Answer with a number.",
    "trainer.template": {"spec": {"nodeSelector": {"pool": "gpu"}}},
    "rollout.template": {"spec": {"nodeSelector": {"pool": "spot"}}},
    "controller.template": {"spec": {"nodeSelector": {"pool": "cpu"}}},
    "rollout.replicas": 2,
    "checkpoint.volume": "ckpt",
    "faultTolerance.startDeadlineSeconds": 600,
    "image": "registry.example/worker:1",
    "reporting.mlflow.trackingUri": "http://mlflow.example:5000",
    "reporting.mlflow.experiment": "grpo",
    "reporting.wandb.project": "other",
    "reporting.wandb.entity": "team",
    "task.reward": "math",
    # the reward server's fields are audited with a job that uses one in tests/unit/test_reward_api.py
    "rewardServer.replicas": 2,
    "rewardServer.port": 9000,
    "rewardServer.template": {"spec": {"containers": [{"command": ["serve"]}]}},
    # every field of one reward is audited in tests/unit/test_reward_api.py
    "task.rewards": [{"name": "correct", "builtin": "numeric"}, {"name": "style", "builtin": "format", "weight": 0.1}],
}
# Fields the operator (and `kuberl run`) act on themselves rather than hand to the workers: the module that reads
# each. Checked: the module's source reads the field by name.
OPERATOR_POLICY: dict[str, list[str]] = {
    "rollout.minReplicas": ["reconcile.py", "scaler.py", "launcher/run.py"],
    "rollout.maxReplicas": ["scaler.py", "launcher/run.py"],
    "rollout.scaleDownDelaySeconds": ["scaler.py", "launcher/run.py"],
    "faultTolerance.maxRestarts": ["reconcile.py", "launcher/run.py"],
    "faultTolerance.restartBackoffSeconds": ["reconcile.py", "launcher/run.py"],
    "faultTolerance.maxRestartBackoffSeconds": ["reconcile.py", "launcher/run.py"],
    "faultTolerance.nodeFailureThreshold": ["reconcile.py"],  # `kuberl run` has one node: nothing to avoid
    "faultTolerance.startDeadlineSeconds": ["pods.py", "launcher/run.py"],
    "suspend": ["reconcile.py", "scaler.py", "cli.py"],  # `kuberl run` refuses a suspended job
}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel) and candidate.model_fields:
            return candidate
    return None


def leaves(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Dotted path -> field info of every leaf field (nested API models are walked, free-form objects are leaves)."""
    found: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        inner = _model_of(info.annotation)
        if inner is not None and inner.__name__ != "PodTemplate":
            found |= leaves(inner, f"{prefix}{name}.")
        else:
            found[f"{prefix}{name}"] = info
    return found


def _current(path: str) -> Any:
    job = RLJob.model_validate(BASE).spec.model_dump()
    for part in path.split("."):
        job = job[part]
    return job


def alternative(path: str, info: Any) -> Any:
    """Another value for the field: from SAMPLES, else the next literal, the negated bool, a larger number."""
    if path in SAMPLES:
        return SAMPLES[path]
    current = _current(path)
    args = [a for a in typing.get_args(info.annotation) if a is not types.NoneType]
    literal = next((a for a in [info.annotation, *args] if typing.get_origin(a) is typing.Literal), None)
    if literal is not None:  # a one-value enum (algorithm.name, rollout.engine): anything else must be refused
        return next((v for v in typing.get_args(literal) if v != current), f"not-{current}")
    if isinstance(current, bool):
        return not current
    if isinstance(current, int):
        return current + 1
    if isinstance(current, float):
        return current / 2 if current else 0.1
    raise AssertionError(f"{path}: no alternative value; add one to SAMPLES")


def observed(doc: dict[str, Any]) -> str:
    """Everything the workers get from the operator for this job, as one comparable text."""
    job = RLJob.model_validate(doc)
    cfg = builders.render_config(job)
    pods = [builders.build_pod(job, cfg, role, 0) for role in ("controller", "trainer", "rollout")]
    if job.spec.rewardServer is not None:  # the operator runs it as the job's reward role
        pods += [build_reward_pod(job, 0), build_reward_service(job) or {}]
    return json.dumps([cfg.model_dump(mode="json"), pods, builders.build_services(job, cfg)], sort_keys=True)


SPEC_FIELDS = leaves(RLJobSpec)


def test_every_field_has_a_place() -> None:
    assert set(OPERATOR_POLICY) <= set(SPEC_FIELDS)


@pytest.mark.parametrize("path", sorted(SPEC_FIELDS))
def test_a_changed_field_changes_what_runs_or_is_refused(path: str) -> None:
    value = alternative(path, SPEC_FIELDS[path])
    doc = set_path(BASE, f"spec.{path}", value)
    if path == "model.volume":  # a volume needs a path on it, as the API says
        doc = set_path(doc, "spec.model.path", "m")
    for dataset in ("task.dataset", "eval.dataset"):  # a file instead of the built-in task: one or the other
        if path in (f"{dataset}.volume", f"{dataset}.path"):
            doc = set_path(set_path(doc, f"spec.{dataset}.path", "d.jsonl"), f"spec.{dataset}.builtin", None)
        if path in (f"{dataset}.promptField", f"{dataset}.answerField", f"{dataset}.format"):
            doc = set_path(set_path(doc, f"spec.{dataset}.path", "d.jsonl"), f"spec.{dataset}.builtin", None)
            base = set_path(set_path(BASE, f"spec.{dataset}.path", "d.jsonl"), f"spec.{dataset}.builtin", None)
            assert not validate_document(doc) and observed(doc) != observed(base), f"spec.{path} changes nothing"
            return
    if path == "task.rewards":  # the full form instead of the shorthand: one or the other
        doc = set_path(doc, "spec.task.reward", DELETE)
    problems = validate_document(doc)
    if problems:
        assert all(str(p).startswith("spec.") for p in problems), problems  # refused, naming a field
        return
    if path in OPERATOR_POLICY:
        name = path.rsplit(".", 1)[-1]
        for module in OPERATOR_POLICY[path]:
            source = (ROOT / "operator" / "kuberl_operator" / module).read_text()
            assert f".{name}" in source, f"{module} does not read {path}"
        return
    assert observed(doc) != observed(BASE), f"spec.{path}: accepted, but nothing the workers get changes"


def _config_leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    found = []
    for name, info in model.model_fields.items():
        inner = _model_of(info.annotation)
        found += _config_leaves(inner, f"{prefix}{name}.") if inner is not None else [f"{prefix}{name}"]
    return found


def _attributes_read(directory: Path, skip: str) -> set[str]:
    names: set[str] = set()
    for file in directory.rglob("*.py"):
        if file.name == skip:
            continue
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
    return names


def test_every_worker_config_field_is_read_by_the_workers() -> None:
    read = _attributes_read(ROOT / "workers" / "kuberl_workers", skip="config.py")
    unread = [path for path in _config_leaves(WorkerConfig) if path.rsplit(".", 1)[-1] not in read]
    assert not unread, f"WorkerConfig fields no worker reads: {unread}"


def test_kuberl_run_refuses_a_suspended_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It was accepted and ignored: the job ran."""
    from kuberl_operator.cli import main

    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(BASE))
    assert main(["run", str(job), "--set", "spec.suspend=true", "--run-dir", str(tmp_path / "run")]) == 1
    assert "spec.suspend is true: nothing to run" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
