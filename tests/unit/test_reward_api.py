"""#17: the reward API (task.rewards): every field changes what the controller gets or is refused, and every bad
reward spec is refused naming its field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from unit.test_field_audit import leaves

from kuberl_operator import builders
from kuberl_operator.api.reward import RewardFunctionSpec
from kuberl_operator.api.rljob import RLJob
from kuberl_operator.api.validate import validate_document
from support.specs import DELETE, minimal_job, set_path

REWARDS = [
    {"name": "correct", "builtin": "math"},
    {"name": "mine", "weight": 0.5, "python": {"function": "my_rewards:score", "configMap": "my-rewards"}},
    {"name": "judge", "http": {"url": "http://judge.team.svc:8000/score", "authSecret": {"name": "j", "key": "k"}}},
    {"name": "tests", "code": {}},
]
BASE = minimal_job(task={"dataset": {"builtin": "humaneval"}, "rewards": REWARDS, "maxPromptTokens": 64})
# a changed value for each leaf of one reward: (index of the reward in REWARDS, value)
CHANGES: dict[str, tuple[int, Any]] = {
    "name": (0, "right"),
    "weight": (0, 2.0),
    "builtin": (0, "numeric"),
    "python.function": (1, "other:fn"),
    "python.path": (1, "rewards/"),  # with configMap: refused
    "python.volume": (1, "code"),  # without path: refused
    "python.configMap": (1, "other"),
    "python.timeoutSeconds": (1, 3.0),
    "http.url": (2, "https://judge.example/v1/score"),
    "http.authSecret.name": (2, "other"),
    "http.authSecret.key": (2, "token"),
    "http.authHeader": (2, "X-Api-Key"),
    "http.batchSize": (2, 4),
    "http.timeoutSeconds": (2, 5.0),
    "http.retries": (2, 0),
    "http.serverPath": (2, "/score"),  # with url: refused (one or the other)
    "code.testsField": (3, "tests"),
    "code.entryPointField": (3, "fn"),
    "code.timeoutSeconds": (3, 3.0),
    "code.cpuSeconds": (3, 2),
    "code.memoryMiB": (3, 256),
    "code.outputKiB": (3, 64),
}


def observed(doc: dict[str, Any]) -> str:
    job = RLJob.model_validate(doc)
    cfg = builders.render_config(job)
    return json.dumps([cfg.model_dump(mode="json"), builders.build_pod(job, cfg, "controller", 0)], sort_keys=True)


def with_reward(index: int, path: str, value: Any) -> dict[str, Any]:
    rewards = json.loads(json.dumps(REWARDS))
    rewards[index] = set_path(rewards[index], path, value)
    return set_path(BASE, "spec.task.rewards", rewards)


def test_the_base_job_is_valid_and_every_leaf_has_a_change() -> None:
    assert validate_document(BASE) == []
    assert set(CHANGES) == set(leaves(RewardFunctionSpec))


@pytest.mark.parametrize("path", sorted(CHANGES))
def test_each_reward_field_changes_the_controller_or_is_refused(path: str) -> None:
    index, value = CHANGES[path]
    doc = with_reward(index, path, value)
    problems = validate_document(doc)
    if problems:
        named = (f"spec.task.rewards[{index}]", "spec.rewardServer")  # serverPath also needs a reward server
        assert all(str(p).startswith(named) for p in problems), problems
        return
    assert observed(doc) != observed(BASE), f"task.rewards[].{path}: accepted, but nothing the controller gets changes"


@pytest.mark.parametrize(
    ("reward", "expected"),
    [
        ({"name": "a"}, "spec.task.rewards[0]: exactly one of builtin, python, http or code must be set"),
        (
            {"name": "a", "builtin": "numeric", "code": {}},
            "spec.task.rewards[0]: exactly one of builtin, python, http or code must be set",
        ),
        ({"name": "Bad-Name", "builtin": "numeric"}, "spec.task.rewards[0].name: string should match pattern"),
        ({"name": "a", "builtin": "regex"}, "spec.task.rewards[0].builtin: input should be"),
        ({"name": "a", "python": {"function": "no_colon"}}, "spec.task.rewards[0].python.function: string should"),
        (
            {"name": "a", "python": {"function": "m:f", "configMap": "c", "path": "p"}},
            "spec.task.rewards[0].python.configMap: configMap and path exclude each other",
        ),
        (
            {"name": "a", "python": {"function": "m:f", "volume": "v"}},
            "spec.task.rewards[0].python.volume: needs path",
        ),
        (
            {"name": "a", "python": {"function": "m:f", "path": "../up", "volume": "v"}},
            "spec.task.rewards[0].python.path: must not contain '..'",
        ),
        ({"name": "a", "http": {"url": "ftp://x"}}, "spec.task.rewards[0].http.url: string should match pattern"),
        ({"name": "a", "http": {"url": "http://x", "batchSize": 0}}, "spec.task.rewards[0].http.batchSize: input"),
        ({"name": "a", "http": {"url": "http://x", "retries": 11}}, "spec.task.rewards[0].http.retries: input"),
        ({"name": "a", "code": {"memoryMiB": 1}}, "spec.task.rewards[0].code.memoryMiB: input should be greater"),
        ({"name": "a", "weight": float("nan"), "builtin": "numeric"}, "spec.task.rewards[0].weight"),
    ],
)
def test_a_bad_reward_is_refused_naming_its_field(reward: dict[str, Any], expected: str) -> None:
    doc = set_path(BASE, "spec.task.rewards", [reward])
    problems = [str(p) for p in validate_document(doc)]
    assert any(p.startswith(expected) for p in problems), problems


def test_reward_names_unique_and_reward_or_rewards() -> None:
    doc = set_path(BASE, "spec.task.rewards", [{"name": "a", "builtin": "numeric"}, {"name": "a", "code": {}}])
    assert [str(p) for p in validate_document(doc)] == ["spec.task.rewards: reward names must be unique"]
    both = set_path(BASE, "spec.task.reward", "numeric")
    assert [str(p) for p in validate_document(both)] == [
        "spec.task: exactly one of task.reward or task.rewards must be set"
    ]
    neither = set_path(BASE, "spec.task.rewards", DELETE)
    assert [str(p) for p in validate_document(neither)] == [
        "spec.task: exactly one of task.reward or task.rewards must be set"
    ]


def test_the_controller_pod_gets_the_reward_code_and_secrets() -> None:
    job = RLJob.model_validate(BASE)
    cfg = builders.render_config(job)
    pod = builders.build_pod(job, cfg, "controller", 0)
    container = pod["spec"]["containers"][0]
    assert {"name": "reward-mine", "configMap": {"name": "my-rewards"}} in pod["spec"]["volumes"]
    assert {"name": "reward-mine", "mountPath": "/var/kuberl/rewards/mine", "readOnly": True} in container[
        "volumeMounts"
    ]
    secret = {"name": "KUBERL_REWARD_AUTH_JUDGE", "valueFrom": {"secretKeyRef": {"name": "j", "key": "k"}}}
    assert secret in container["env"]
    python = next(r for r in cfg.task.rewards if r.kind == "python")
    assert python.path == "/var/kuberl/rewards/mine" and python.function == "my_rewards:score"
    assert next(r for r in cfg.task.rewards if r.kind == "http").authEnv == "KUBERL_REWARD_AUTH_JUDGE"
    trainer = builders.build_pod(job, cfg, "trainer", 0)  # no reward code or secrets outside the controller
    assert "KUBERL_REWARD_AUTH_JUDGE" not in json.dumps(trainer)


def test_kuberl_run_refuses_a_configmap_reward(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kuberl_operator.cli import main

    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(BASE))
    assert main(["run", str(job), "--run-dir", str(tmp_path / "run")]) == 1
    assert "spec.task.rewards[1].python.configMap: kuberl run reads no ConfigMaps" in capsys.readouterr().err


SERVER = {
    "replicas": 2,
    "port": 9000,
    "template": {
        "spec": {
            "containers": [
                {
                    "name": "reward",
                    "image": "registry.example/rm:1",
                    "command": ["serve"],
                    "args": ["$(KUBERL_REWARD_PORT)"],
                }
            ]
        }
    },
}


def _with_server(**server: Any) -> dict[str, Any]:
    doc = set_path(BASE, "spec.task.rewards", [{"name": "judge", "http": {"serverPath": "/score"}}])
    return set_path(doc, "spec.rewardServer", {**SERVER, **server})


def test_a_reward_server_is_built_and_the_http_reward_goes_to_its_replicas() -> None:
    from kuberl_operator.reward_server import build_reward_pod, build_reward_service

    job = RLJob.model_validate(_with_server())
    cfg = builders.render_config(job)
    name = job.metadata.name
    assert cfg.task.rewards[0].urls == tuple(
        f"http://{name}-reward-{i}.{name}-reward.default.svc:9000/score" for i in range(2)
    )
    pod = build_reward_pod(job, 1)
    main = pod["spec"]["containers"][0]
    assert main["command"] == ["serve"] and main["args"] == ["$(KUBERL_REWARD_PORT)"]  # the user's own
    assert {"name": "KUBERL_REWARD_PORT", "value": "9000"} in main["env"]
    assert pod["spec"]["subdomain"].endswith("-reward") and pod["spec"]["hostname"].endswith("-reward-1")
    assert pod["metadata"]["labels"]["kuberl.io/role"] == "reward" and pod["spec"]["restartPolicy"] == "Never"
    service = build_reward_service(job)
    assert service is not None and service["spec"]["clusterIP"] == "None"
    # every field of the server changes what runs
    for field, value in (("replicas", 3), ("port", 9001), ("template", {"spec": {"containers": [{"command": ["x"]}]}})):
        other = RLJob.model_validate(_with_server(**{field: value}))
        before = (builders.render_config(job).model_dump(), build_reward_pod(job, 0))
        after = (builders.render_config(other).model_dump(), build_reward_pod(other, 0))
        assert before != after, field


def test_reward_server_specs_refused_naming_the_field() -> None:
    no_server = set_path(BASE, "spec.task.rewards", [{"name": "judge", "http": {"serverPath": "/score"}}])
    assert [str(p) for p in validate_document(no_server)] == [
        "spec.rewardServer: needed: an http reward in task.rewards has serverPath (a path on the job's reward server)"
    ]
    both = set_path(BASE, "spec.task.rewards", [{"name": "j", "http": {"url": "http://x", "serverPath": "/s"}}])
    assert "spec.task.rewards[0].http: exactly one of url or serverPath must be set" in [
        str(p) for p in validate_document(both)
    ]
    root = _with_server(
        template={"spec": {"containers": [{"command": ["serve"], "securityContext": {"runAsUser": 0}}]}}
    )
    assert [p.path for p in validate_document(root)] == [
        "spec.rewardServer.template.spec.containers[0].securityContext.runAsUser"
    ]
    assert [p.path for p in validate_document(_with_server(replicas=0))] == ["spec.rewardServer.replicas"]


def test_kuberl_run_needs_the_reward_servers_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kuberl_operator.cli import main

    job = tmp_path / "job.yaml"
    doc = _with_server(template={"spec": {"containers": [{"image": "registry.example/rm:1"}]}})
    doc = set_path(doc, "spec.task.rewards", [{"name": "judge", "http": {"serverPath": "/score"}}])
    job.write_text(json.dumps(doc))
    assert main(["run", str(job), "--run-dir", str(tmp_path / "run")]) == 1
    assert "spec.rewardServer.template: kuberl run needs the main container's command" in capsys.readouterr().err


def test_kuberl_template_of_the_gpu_reward_model_example_is_valid_kubernetes() -> None:
    """examples/reward-model-gpu.yaml: the reward server pods and Service kuberl would create, each a valid
    Kubernetes object (kubernetes-validate, strict)."""
    import subprocess
    import sys

    import kubernetes_validate
    import yaml

    example = Path(__file__).resolve().parents[2] / "examples" / "reward-model-gpu.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "kuberl_operator.cli", "template", str(example)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    rewards = [d for d in docs if d["metadata"]["name"].startswith("chat-rm-reward")]
    assert sorted(d["metadata"]["name"] for d in rewards) == ["chat-rm-reward", "chat-rm-reward-0", "chat-rm-reward-1"]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.33", strict=True)
    pod = next(d for d in rewards if d["kind"] == "Pod")
    assert pod["spec"]["containers"][0]["command"] == ["python", "-m", "kuberl_workers.rewardmodel"]
