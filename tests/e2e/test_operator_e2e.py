"""The real operator drives real workers: apply → pods → trains, scraped → faults survived → Complete → collected."""

from __future__ import annotations

import base64
import copy
import subprocess
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import pytest
import yaml

from support.helm_docs import CHART
from support.kubeapi import OPERATOR_TOKEN, Cluster, Operator
from support.kubelet import TestKubelet
from support.ledger import assert_every_prompt_trained_once
from support.net import http_get
from support.prometheus import PrometheusServer, check_live, metrics_address
from support.rbac import Grant, granted, requested
from support.specs import fault_drill_job
from support.tools import tool

T = TypeVar("T")
NAME = "e2e"
STEPS = 40  # about a second each here: enough that both faults land mid-training
JOB = fault_drill_job(
    NAME, STEPS, model={"volume": "models", "path": "tiny", "dtype": "float32"}, checkpoint={"volume": "checkpoints"}
)


def wait_for(probe: Callable[[], T], what: str, timeout: float, explain: Callable[[], str], gone: bool = False) -> T:
    """Poll until probe() is truthy (falsy with gone=True)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if bool(value) != gone:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{explain()}")


def test_job_trains_survives_pod_and_gang_faults_completes_and_is_collected(
    cluster: Cluster, operator: Operator, kubelet: TestKubelet | None, prometheus: PrometheusServer
) -> None:
    api = cluster.api
    if kubelet is None:  # real nodes: the model is built inside the pods
        pytest.skip("needs the test kubelet: the job reads its model from a PVC the kubelet provides")
    job = copy.deepcopy(JOB)
    job["metadata"]["namespace"] = api.namespace
    api.create("rljobs", job)

    def status() -> dict[str, Any]:
        return dict((api.get("rljobs", NAME) or {}).get("status") or {})

    def explain() -> str:
        pods = {p["metadata"]["name"]: (p.get("status") or {}).get("phase") for p in api.list("pods")}
        logs = "\n".join(f"--- {n}\n{kubelet.log_of(n)[-1500:]}" for n in sorted(pods))
        return (
            f"status: {status()}\npods: {pods}\nevents: {api.reasons(NAME)}\nkubelet errors: {kubelet.errors[-5:]}\n"
            f"--- operator\n{operator.log.read_text()[-3000:]}\n{logs}"
        )

    def step_at_least(n: int) -> Callable[[], bool]:
        return lambda: int(status().get("step") or 0) >= n

    def restarts(role: str) -> int:
        return next((r["restarts"] for r in status().get("roles") or [] if r["name"] == role), 0)

    wait_for(step_at_least(2), "the first steps", 300, explain)
    pods = {p["metadata"]["name"]: p for p in api.list("pods")}
    assert set(pods) == {f"{NAME}-controller-0", f"{NAME}-trainer-0", f"{NAME}-rollout-0"}, explain()
    for pod in pods.values():
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "RLJob"
        assert pod["metadata"]["labels"]["kuberl.io/job"] == NAME

    # the Grafana dashboard and the alerts read only series these processes export; every panel has data
    targets = {name: metrics_address(pod) for name, pod in pods.items()}
    check_live(prometheus, {"operator": f"127.0.0.1:{operator.metrics_port}", **targets}, api.namespace, NAME)

    def crash(role: str, reason: str) -> None:
        """SIGKILL the role's first pod's process (a crash or an OOM kill); wait until the operator recreated it."""
        pod = f"{NAME}-{role}-0"
        kubelet.kill(pod)
        wait_for(lambda: restarts(role) == 1 and kubelet.started.count(pod) == 2, f"{pod} recreated", 120, explain)
        assert reason in api.reasons(NAME)

    crash("rollout", "PodRecreated")

    at_kill = int(status().get("step") or 0)
    wait_for(step_at_least(at_kill + 3), "two more steps (past a checkpoint)", 300, explain)
    crash("trainer", "GangRestarted")  # the gang restarts from the checkpoint

    def complete() -> bool:
        conditions = {c["type"]: c for c in status().get("conditions") or []}
        return bool(conditions.get("Complete", {}).get("status") == "True")

    _, exposition = http_get(f"http://127.0.0.1:{operator.metrics_port}/metrics")
    metrics = exposition.decode()
    labels = f'job="{NAME}",namespace="{api.namespace}"'
    assert f'kuberl_operator_restarts{{{labels},role="rollout"}} 1.0' in metrics
    assert f'kuberl_operator_restarts{{{labels},role="trainer"}} 1.0' in metrics
    assert 'kuberl_operator_reconciles_total{result="changed"}' in metrics

    wait_for(complete, "Complete", 400, explain)
    final = status()
    assert final["step"] == STEPS and final.get("completionTime")
    wait_for(lambda: api.list("pods") == [], "pods cleaned up after completion", 60, explain)
    assert_every_prompt_trained_once(kubelet.root / "pvc" / "checkpoints")

    secret = api.get("secrets", f"{NAME}-token")
    assert secret is not None
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert_secret_nowhere(token, api, operator, kubelet)

    assert api.delete("rljobs", NAME)
    wait_for(lambda: api.get("rljobs", NAME) is None, "the RLJob deleted (finalizer released)", 60, explain)
    for plural in ("configmaps", "secrets", "services"):
        wait_for(partial(api.list, plural, f"kuberl.io/job={NAME}"), f"{plural} collected", 60, explain, gone=True)
    if cluster.emulator is not None:
        assert_operator_requests_granted_by_chart(cluster, operator)


def assert_secret_nowhere(token: str, api: Any, operator: Operator, kubelet: TestKubelet) -> None:
    """The per-job token appears in no log (operator, every pod process), no event and not in the status."""
    assert len(token) >= 32
    places = {"operator log": operator.log.read_text(), "status": str(api.get("rljobs", NAME).get("status"))}
    places["events"] = str([(e.get("reason"), e.get("message")) for e in api.list("events")])
    places |= {f"log of {pod}": kubelet.log_of(pod) for pod in set(kubelet.started)}
    assert all(places.values()) and len(places) >= 5
    leaked = [where for where, text in places.items() if token in text]
    assert not leaked, f"the job token leaked into {leaked}"


def assert_operator_requests_granted_by_chart(cluster: Cluster, operator: Operator) -> None:
    """Every (group, resource, verb) the operator used in this whole run is granted by the Helm chart's RBAC,
    rendered the way this operator ran (one watched namespace, standalone)."""
    assert cluster.emulator is not None
    used = requested(cluster.emulator._requests, f"Bearer {OPERATOR_TOKEN}")
    # what this run must have exercised, or the check proves little
    exercised = {Grant("", "pods", "create"), Grant("", "pods", "delete"), Grant("kuberl.io", "rljobs/status", "patch")}
    assert exercised <= used, sorted(used)
    out = subprocess.run(
        [tool("helm"), "template", "kuberl", str(CHART), "--set", f"watchNamespaces={{{cluster.api.namespace}}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    grants = granted(doc for doc in yaml.safe_load_all(out) if doc)
    assert used <= grants, f"the operator used, the chart does not grant: {sorted(used - grants)}\n{operator.log}"
