"""#17: the operator runs a job's reward server (spec.rewardServer) next to its workers, on the real API server
with the test kubelet: the job trains against it, a killed reward pod is recreated, and no rollout is lost."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from e2e.test_operator_e2e import wait_for

from support.kubeapi import Cluster, Operator
from support.kubelet import TestKubelet
from support.ledger import assert_every_prompt_trained_once
from support.reward_server import template
from support.specs import fault_drill_job

NAME = "rwd"
STEPS = 24
POD_IP = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}  # each pod binds its own IP


def _job(namespace: str, log: Path) -> dict[str, Any]:
    job = fault_drill_job(
        NAME,
        STEPS,
        model={"volume": "models", "path": "tiny", "dtype": "float32"},
        checkpoint={"volume": "checkpoints"},
    )
    job["metadata"]["namespace"] = namespace
    task = job["spec"]["task"]
    del task["reward"]
    task["rewards"] = [{"name": "judge", "http": {"serverPath": "/score", "timeoutSeconds": 5, "retries": 3}}]
    job["spec"]["rewardServer"] = {
        "replicas": 2,
        "template": template(str(log), "$(POD_IP)", env=[POD_IP]),
    }
    return job


def test_the_operator_runs_the_reward_server_and_recreates_a_killed_one(
    cluster: Cluster, operator: Operator, kubelet: TestKubelet | None, tmp_path: Path
) -> None:
    api = cluster.api
    if kubelet is None:
        pytest.skip("runs the reward server pods' processes: needs the test kubelet")
    log = tmp_path / "requests.jsonl"
    api.create("rljobs", copy.deepcopy(_job(api.namespace, log)))

    def status() -> dict[str, Any]:
        return dict((api.get("rljobs", NAME) or {}).get("status") or {})

    def explain() -> str:
        pods = {p["metadata"]["name"]: (p.get("status") or {}).get("phase") for p in api.list("pods")}
        logs = "\n".join(f"--- {n}\n{kubelet.log_of(n)[-1500:]}" for n in sorted(pods))
        return (
            f"status: {status()}\npods: {pods}\nevents: {api.reasons(NAME)}\n{operator.log.read_text()[-2000:]}\n{logs}"
        )

    def wait(probe: Any, what: str, timeout: float) -> None:
        wait_for(probe, what, timeout, explain)

    def step() -> int:
        return int(status().get("step") or 0)

    def restarts(role: str) -> int:
        return next((r["restarts"] for r in status().get("roles") or [] if r["name"] == role), 0)

    wait(lambda: step() >= 2, "the first steps", 300)
    pods = {p["metadata"]["name"]: p for p in api.list("pods")}
    assert {f"{NAME}-reward-0", f"{NAME}-reward-1"} <= set(pods), explain()
    service = api.get("services", f"{NAME}-reward")
    assert service is not None and service["spec"]["selector"]["kuberl.io/role"] == "reward"
    assert log.exists() and log.read_text().strip(), "the controller sent its rewards to the reward server"
    roles = {r["name"]: r for r in status()["roles"]}
    assert roles["reward"]["desired"] == 2

    kubelet.kill(f"{NAME}-reward-0")  # an OOM kill or a crash of the reward model's server
    wait(lambda: restarts("reward") == 1 and kubelet.started.count(f"{NAME}-reward-0") == 2, "reward-0 recreated", 120)
    assert "PodRecreated" in api.reasons(NAME)
    at_kill = step()
    wait(lambda: step() >= at_kill + 2, "training on after the kill", 300)

    def complete() -> bool:
        return any(c["type"] == "Complete" and c["status"] == "True" for c in status().get("conditions") or [])

    wait(complete, "Complete", 400)
    assert_every_prompt_trained_once(kubelet.root / "pvc" / "checkpoints")  # no rollout lost
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    assert sum(r["items"] for r in requests) > 0
    assert api.delete("rljobs", NAME)
