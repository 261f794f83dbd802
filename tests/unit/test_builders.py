"""Pure builders: manifests checked against Kubernetes' own schemas, labels, security, templates, avoidance."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kuberl_operator.api.rljob import RLJob
from kuberl_operator.builders import (
    CHECKPOINT_DIR,
    build_config_map,
    build_pod,
    build_secret,
    build_services,
    labels,
    render_config,
    selector,
    template_hash,
)
from kuberl_workers.config import WorkerConfig
from support.specs import minimal_job


def _job(**spec: Any) -> RLJob:
    return RLJob.model_validate(minimal_job(**spec))


def _validate(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, "1.31", strict=True)


@pytest.mark.parametrize("role", ["controller", "trainer", "rollout"])
def test_pods_are_valid_and_restricted(role: str) -> None:
    job = _job(checkpoint={"volume": "ckpt"})
    pod = build_pod(job, render_config(job), role, 1, avoid_nodes=["node-a"])
    _validate(pod)
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", f"kuberl_workers.{role}"]
    assert pod["metadata"]["name"] == f"job-{role}-1"
    assert pod["metadata"]["labels"] == {**labels("job", role, 1)}
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["KUBERL_CONTROLLER_URL"]["value"] == "http://job-controller.default.svc:8000"
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "ckpt"}} in pod["spec"]["volumes"]
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][-1]["values"] == ["node-a"]


def test_user_template_merged_but_kuberl_owns_the_container() -> None:
    template = {
        "metadata": {"labels": {"team": "rl"}, "annotations": {"a": "b"}},
        "spec": {
            "containers": [
                {
                    "name": "rollout",
                    "image": "my/vllm:1",
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                    "env": [{"name": "EXTRA", "value": "1"}],
                }
            ],
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "priorityClassName": "preemptible",
        },
    }
    job = _job(rollout={"template": template})
    # validation refuses a template that sets these (the hostile-input tests); should one get past it, the
    # builder still owns the container: defence in depth
    assert job.spec.rollout.template is not None
    smuggled = job.spec.rollout.template["spec"]["containers"][0]
    smuggled["command"] = ["sh", "-c", "evil"]
    smuggled["env"].append({"name": "KUBERL_ROLE", "value": "trainer"})
    template = copy.deepcopy(job.spec.rollout.template)
    pod = build_pod(job, render_config(job), "rollout", 0)
    _validate(pod)
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "my/vllm:1" and container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["command"] == ["python", "-m", "kuberl_workers.rollout"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EXTRA"] == "1" and env["KUBERL_ROLE"] == "rollout"
    assert pod["spec"]["priorityClassName"] == "preemptible" and pod["spec"]["tolerations"]
    assert pod["metadata"]["labels"]["team"] == "rl" and pod["metadata"]["annotations"]["a"] == "b"
    assert pod["metadata"]["annotations"]["kuberl.io/template-hash"] == template_hash(job, "rollout")
    assert job.spec.rollout.template == template  # the spec itself is not mutated


def test_template_hash_follows_the_role_template_and_image_only() -> None:
    base = _job()
    assert template_hash(base, "rollout") == template_hash(_job(), "rollout")
    labelled = _job(rollout={"template": {"metadata": {"labels": {"x": "y"}}}})
    assert template_hash(labelled, "rollout") != template_hash(base, "rollout")
    assert template_hash(labelled, "trainer") == template_hash(base, "trainer")
    assert template_hash(_job(image="other:1"), "rollout") != template_hash(base, "rollout")


def test_trainer_dns_and_services() -> None:
    job = _job(trainer={"replicas": 4})
    cfg = render_config(job)
    pod = build_pod(job, cfg, "trainer", 2)
    assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == ("job-trainer-2", "job-trainer")
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["KUBERL_TRAINER_MASTER"] == "job-trainer-0.job-trainer.default.svc"
    services = build_services(job, cfg)
    for service in services:
        _validate(service)
    assert [s["metadata"]["name"] for s in services] == ["job-controller", "job-trainer"]
    assert services[1]["spec"]["publishNotReadyAddresses"] is True


def test_config_map_secret_and_config() -> None:
    job = _job(
        model={"volume": "models", "path": "qwen"},
        task={"dataset": {"volume": "data", "path": "train.jsonl"}, "reward": "numeric"},
    )
    cfg = render_config(job)
    assert cfg.model.path == "/var/kuberl/model/qwen" and cfg.task.datasetPath == "/var/kuberl/data/train.jsonl"
    assert cfg.checkpoint.dir == CHECKPOINT_DIR and cfg.checkpoint.shared is False  # emptyDir: serve weights
    config_map = build_config_map(job, cfg)
    secret = build_secret(job, "s3cr3t-token-value")
    _validate(config_map)
    _validate(secret)
    assert WorkerConfig.model_validate_json(config_map["data"]["config.json"]) == cfg
    assert "s3cr3t" not in yaml.safe_dump(config_map)
    pod = build_pod(job, cfg, "trainer", 0)
    mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["model"]["readOnly"] and mounts["data"]["mountPath"] == "/var/kuberl/data"


def test_selector() -> None:
    assert selector("job", "rollout") == "kuberl.io/job=job,kuberl.io/role=rollout"
    assert selector("job") == "kuberl.io/job=job"
