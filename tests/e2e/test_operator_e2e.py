"""The real operator drives real workers: apply → pods → trains, scraped → faults survived → Complete → collected."""

from __future__ import annotations

import base64
import copy
import os
import subprocess
import sys
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
    if kubelet is None:  # real nodes: the next test covers them through the API alone
        pytest.skip("kills pod processes and reads their logs and checkpoint files: needs the test kubelet")
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

    assert_final_model_exports(cluster, kubelet, final, explain)

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
    elif cluster.operator_kubeconfig is not None:  # the real API server enforced the chart's RBAC all along
        assert_no_authorization_denials(operator)


def assert_final_model_exports(
    cluster: Cluster, kubelet: TestKubelet, final: dict[str, Any], explain: Callable[[], str]
) -> None:
    """`kuberl export JOB OUT` as a user runs it, after the job's pods are gone: an export pod reads the checkpoint
    claim and the CLI streams the newest version through the API server's pod proxy; the copy is the version
    status.latestModel names, byte for byte, and transformers loads it. The export pod is deleted after."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    volume = kubelet.root / "pvc" / "checkpoints"
    newest = volume / f"weights-{STEPS:08d}"
    assert final.get("latestModel", "").endswith(newest.name), final
    out = kubelet.root / "exported"

    def export(*extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "kuberl_operator.cli", "export", NAME, str(out), "-n", cluster.api.namespace]
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        return subprocess.run([*command, *extra], capture_output=True, text=True, env=env, timeout=300)

    refused = export("--step", "1")  # pruned long ago (checkpoint.keep): the error lists what exists
    assert refused.returncode == 1 and "no weights for step 1; published steps: [" in refused.stderr, refused
    assert not out.exists()
    done = export()
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{explain()}"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in newest.iterdir())
    for file in newest.iterdir():
        assert (out / file.name).read_bytes() == file.read_bytes(), file.name
    model = AutoModelForCausalLM.from_pretrained(out)
    published = load_file(str(newest / "model.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in published.items())
    wait_for(
        lambda: [p for p in cluster.api.list("pods") if "-export-" in p["metadata"]["name"]] == [],
        "the export pods deleted",
        60,
        explain,
    )


def assert_no_authorization_denials(operator: Operator) -> None:
    """The operator ran as the chart's ServiceAccount on a real API server: nothing it did was forbidden."""
    log = operator.log.read_text()
    assert "Forbidden" not in log and ": 403 " not in log, log[-3000:]


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


DELETIONS = "deletions"
DELETION_STEPS = 40  # about a second each here: the second deletion must land well before the end


def test_pods_deleted_by_someone_else_are_recovered_and_the_job_completes(
    cluster: Cluster, operator: Operator, kubelet: TestKubelet | None
) -> None:
    """API-only, so it also runs on real nodes (`--no-test-kubelet --worker-image IMAGE`): `kubectl delete pod` of a
    rollout pod and of a trainer rank are faults — counted, announced, recreated after backoff — and the job still
    trains to the end, then is garbage-collected. On real nodes the pods build the model (`builtin: tiny`)."""
    api = cluster.api
    claim = f"{DELETIONS}-checkpoints"  # its own: the other job's checkpoints must not look like this job's
    if kubelet is None:  # real nodes: a real claim (the test kubelet makes a folder per claim name)
        pvc = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {"accessModes": [cluster.access_mode], "resources": {"requests": {"storage": "1Gi"}}},
        }
        api.run(lambda kube: kube.call("POST", f"/api/v1/namespaces/{api.namespace}/persistentvolumeclaims", pvc))
    # real nodes build the tiny model in each pod; the test kubelet's pods read the one the fixture built (faster)
    model = {"builtin": "tiny"} if kubelet is None else JOB["spec"]["model"]
    job = fault_drill_job(DELETIONS, DELETION_STEPS, model=model, checkpoint={"volume": claim})
    job["metadata"]["namespace"] = api.namespace
    api.create("rljobs", job)
    patience = 300 if kubelet is not None else 900  # real nodes pull the worker image first

    def status() -> dict[str, Any]:
        return dict((api.get("rljobs", DELETIONS) or {}).get("status") or {})

    def restarts(role: str) -> int:
        return next((r["restarts"] for r in status().get("roles") or [] if r["name"] == role), 0)

    def uid(pod: str) -> str | None:
        return ((api.get("pods", pod) or {}).get("metadata") or {}).get("uid")

    def events() -> list[tuple[str, str]]:
        about = [e for e in api.list("events") if (e.get("involvedObject") or {}).get("name") == DELETIONS]
        return [(e["reason"], e["message"]) for e in about]

    def explain() -> str:
        pods = {p["metadata"]["name"]: (p.get("status") or {}).get("phase") for p in api.list("pods")}
        logs = "".join(f"--- {n}\n{kubelet.log_of(n)[-1500:]}\n" for n in sorted(pods)) if kubelet else ""
        operator_log = operator.log.read_text()[-3000:]
        return f"status: {status()}\npods: {pods}\nevents: {events()}\n--- operator\n{operator_log}\n{logs}"

    def step_at_least(n: int) -> Callable[[], bool]:
        return lambda: int(status().get("step") or 0) >= n

    def delete(role: str, reason: str) -> None:
        pod = f"{DELETIONS}-{role}-0"
        before = uid(pod)
        assert before and api.delete("pods", pod)
        wait_for(lambda: restarts(role) == 1 and uid(pod) not in (None, before), f"{pod} recreated", patience, explain)
        assert (reason, f"{pod} was deleted") in [(r, m.split(":")[0]) for r, m in events()], explain()

    wait_for(step_at_least(2), "the first steps", patience, explain)
    delete("rollout", "PodRecreated")
    at_delete = int(status().get("step") or 0)
    wait_for(step_at_least(at_delete + 3), "three more steps (past a checkpoint)", patience, explain)
    assert int(status()["step"]) < DELETION_STEPS - 5, f"too late to delete the trainer mid-training\n{explain()}"
    delete("trainer", "GangRestarted")
    assert restarts("controller") == 0

    def complete() -> bool:
        return any(c["type"] == "Complete" and c["status"] == "True" for c in status().get("conditions") or [])

    wait_for(complete, "Complete", patience + 300, explain)
    assert status()["step"] == DELETION_STEPS
    wait_for(lambda: api.list("pods", f"kuberl.io/job={DELETIONS}") == [], "pods cleaned up", 120, explain)
    if kubelet is not None:
        assert_every_prompt_trained_once(kubelet.root / "pvc" / claim)
    assert api.delete("rljobs", DELETIONS)
    wait_for(lambda: api.get("rljobs", DELETIONS) is None, "the RLJob deleted", 120, explain)
    for plural in ("configmaps", "secrets", "services"):
        wait_for(partial(api.list, plural, f"kuberl.io/job={DELETIONS}"), f"{plural} collected", 60, explain, gone=True)


def test_a_bad_dataset_line_fails_the_job_with_its_file_and_line_not_a_restart_loop(
    cluster: Cluster, operator: Operator, kubelet: TestKubelet | None
) -> None:
    """The controller's preflight finds line 3 bad and exits EXIT_INVALID_INPUT; the kubelet reports the log's tail
    as the termination message; the operator fails the job at once (InvalidInput), quoting file and line."""
    if kubelet is None:
        pytest.skip("writes the dataset into the claim's folder: needs the test kubelet")
    api, name = cluster.api, "baddata"
    claim = kubelet.root / "pvc" / "data"
    claim.mkdir(parents=True, exist_ok=True)
    rows = ['{"prompt": "1+1", "answer": "2"}', '{"prompt": "2+2", "answer": "4"}', '{"prompt": "3+3"}']
    (claim / "bad.jsonl").write_text("\n".join(rows) + "\n")
    job = fault_drill_job(name, 4, model=JOB["spec"]["model"], checkpoint={"volume": "checkpoints"})
    job["spec"]["task"]["dataset"] = {"volume": "data", "path": "bad.jsonl"}
    job["metadata"]["namespace"] = api.namespace
    api.create("rljobs", job)

    def failed() -> dict[str, Any]:
        status = (api.get("rljobs", name) or {}).get("status") or {}
        found: dict[str, Any] = next((c for c in status.get("conditions") or [] if c["type"] == "Failed"), {})
        return found if found.get("status") == "True" else {}

    def explain() -> str:
        return f"{api.get('rljobs', name)}\n{kubelet.log_of(f'{name}-controller-0')[-2000:]}"

    condition = wait_for(failed, "Failed/InvalidInput", 120, explain)
    assert condition["reason"] == "InvalidInput", condition
    assert "bad.jsonl:3: field 'answer' missing" in condition["message"], condition
    assert kubelet.started.count(f"{name}-controller-0") == 1  # not restarted
    assert ("InvalidInput" in api.reasons(name)) and "PodRecreated" not in api.reasons(name)
    wait_for(lambda: api.list("pods", f"kuberl.io/job={name}") == [], "pods deleted", 60, explain)
