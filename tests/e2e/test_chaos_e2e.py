"""Chaos on the emulated cluster: while a job trains, its pods are deleted, marked Failed and evicted, and the operator
is SIGKILLed in the middle of a reconcile and started again. The job still completes with every prompt trained once,
no (role, index) ever has two pods, the status converges, and no pod process is left behind."""

from __future__ import annotations

import base64
import copy
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kuberl_workers.config import Ports
from support.chaos import alive
from support.cluster_chaos import (
    Sprung,
    TrappingApiServer,
    created_per_pod,
    evict,
    kill_operator_on,
    mark_failed,
    overlapping_pods,
    pod_history,
    processes_under,
)
from support.kubeapi import Cluster, Operator, start_operator, stop_operator
from support.kubelet import TestKubelet
from support.ledger import assert_every_prompt_trained_once
from support.net import http_get
from support.specs import fault_drill_job

EMULATOR = TrappingApiServer  # read by the `cluster` fixture (tests/e2e/conftest.py)
NAME = "chaos-e2e"
STEPS = 45  # room after the last fault: rollout pods are Ready only once vLLM has loaded (~30 s here)
SEED = 0  # picks the rollout victims; the kinds and their order are fixed so that each lands mid-training
JOB = fault_drill_job(
    NAME, STEPS, model={"volume": "models", "path": "tiny", "dtype": "float32"}, checkpoint={"volume": "checkpoints"}
)
JOB["spec"]["rollout"] = {"minReplicas": 2, "maxReplicas": 2}  # a rollout fault leaves the other one working
JOB["spec"]["faultTolerance"]["maxRestarts"] = 100
CONDITIONS = {"Ready", "Progressing", "Scaling", "Degraded", "Suspended", "Complete", "Failed"}


class Chaos:
    """The test's view of the job: status samples, the fault timeline, and how long each fault took to heal
    (its pod replaced by a ready one)."""

    def __init__(self, cluster: Cluster, kubelet: TestKubelet, folder: Path) -> None:
        self.cluster, self.api, self.kubelet, self.folder = cluster, cluster.api, kubelet, folder
        assert isinstance(cluster.emulator, TrappingApiServer)
        self.emulator: TrappingApiServer = cluster.emulator
        self.operators: list[Operator] = [start_operator(cluster, folder)]
        self.started = time.monotonic()
        self.timeline: list[tuple[float, str]] = []
        self.samples: list[dict[str, Any]] = []
        self.healing: list[tuple[str, str, str, float]] = []  # (fault, pod, its uid then, when)
        self.healed: dict[str, float] = {}

    def status(self) -> dict[str, Any]:
        found = dict((self.api.get("rljobs", NAME) or {}).get("status") or {})
        self.samples.append(found)
        if self.healing:
            pods = {p["metadata"]["name"]: p for p in self.api.list("pods")}
            for fault, pod, uid, since in list(self.healing):
                now = pods.get(pod) or {"metadata": {}}
                ready = any(c["type"] == "Ready" and c["status"] == "True" for c in _conditions(now))
                if now["metadata"].get("uid") not in (None, uid) and ready:
                    self.healed[fault] = round(time.monotonic() - since, 1)
                    self.healing.remove((fault, pod, uid, since))
        return found

    def explain(self) -> str:
        pods = {p["metadata"]["name"]: (p.get("status") or {}).get("phase") for p in self.api.list("pods")}
        logs = "\n".join(f"--- {n}\n{self.kubelet.log_of(n)[-1500:]}" for n in sorted(pods))
        return (
            f"timeline: {self.timeline}\nstatus: {self.status()}\npods: {pods}\nevents: {self.api.reasons(NAME)}\n"
            f"kubelet errors: {self.kubelet.errors[-5:]}\n--- operator\n{self.operators[-1].log.read_text()[-4000:]}\n"
            f"{logs}"
        )

    def wait_for(self, probe: Callable[[], Any], what: str, timeout: float, operator_lives: bool = True) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            assert not operator_lives or self.operators[-1].process.poll() is None, f"operator died\n{self.explain()}"
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.explain()}")

    def at_step(self, n: int) -> None:
        self.wait_for(lambda: int(self.status().get("step") or 0) >= n, f"step {n}", 300)

    def note(self, what: str) -> None:
        self.timeline.append((round(time.monotonic() - self.started, 1), what))

    def fault(self, what: str, pod: str, action: Callable[[], Any]) -> None:
        """Wait for `pod` to run (the previous fault's replacement may still be starting), then break it."""

        def running() -> bool:
            return ((self.api.get("pods", pod) or {}).get("status") or {}).get("phase") == "Running"

        self.wait_for(running, f"{pod} running", 300)
        self.healing.append((what, pod, (self.api.get("pods", pod) or {})["metadata"]["uid"], time.monotonic()))
        action()
        self.note(what)

    def operator_killed_on(self, method: str, pod: str) -> Sprung:
        """Arm the trap: the operator dies serving its next `method` of `pod`."""
        sprung = Sprung()
        self.emulator.trap = kill_operator_on(method, "pods", pod, self.operators[-1].process.pid, sprung)
        return sprung

    def restart_operator(self, sprung: Sprung) -> None:
        self.wait_for(lambda: sprung.at, "the trapped request", 120, operator_lives=False)
        self.operators[-1].process.wait(10)
        self.note(f"operator SIGKILLed serving {sprung.method} {sprung.path}")
        self.operators.append(start_operator(self.cluster, self.folder))
        self.healed.setdefault("operator restarts", 0.0)
        self.healed["operator restarts"] = round(max(self.healed["operator restarts"], time.monotonic() - sprung.at), 1)
        self.note("operator restarted")

    def controller_version(self) -> int:
        """The controller's own policy version, read as the operator reads it (pod address, the job's token)."""
        token = base64.b64decode((self.api.get("secrets", f"{NAME}-token") or {})["data"]["token"]).decode()
        url = f"http://{self.kubelet.ip_of(f'{NAME}-controller-0')}:{Ports().controller}/v1/status"
        try:
            code, body = http_get(url, token, timeout=2)
        except OSError:
            return -1
        return int(json.loads(body)["policyVersion"]) if code == 200 else -1

    def converged_after(self, transition: str) -> bool:
        """Every role ready == desired, Ready (again: since a transition later than `transition`), not Degraded."""
        now = self.status()
        conditions = {c["type"]: c for c in now.get("conditions") or []}
        return (
            all(r["ready"] == r["desired"] for r in now.get("roles") or [])
            and conditions["Ready"]["status"] == "True"
            and conditions["Ready"]["lastTransitionTime"] > transition
            and conditions["Degraded"]["status"] == "False"
            and conditions["Complete"]["status"] == "False"
        )

    def complete(self) -> bool:
        return any(c["type"] == "Complete" and c["status"] == "True" for c in self.status().get("conditions") or [])


def _conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list((obj.get("status") or {}).get("conditions") or [])


def test_job_survives_pod_chaos_and_operator_kills(cluster: Cluster, kubelet: TestKubelet | None, tmp_path: Path):
    if kubelet is None or not isinstance(cluster.emulator, TrappingApiServer):
        pytest.skip("needs the emulated cluster (its API server kills the operator mid-request) and the test kubelet")
    api, rng = cluster.api, random.Random(SEED)
    job = copy.deepcopy(JOB)
    job["metadata"]["namespace"] = api.namespace
    chaos = Chaos(cluster, kubelet, tmp_path)
    rollouts = [f"{NAME}-rollout-{rng.randrange(2)}" for _ in range(3)]
    trainer, controller = f"{NAME}-trainer-0", f"{NAME}-controller-0"
    try:
        api.create("rljobs", job)
        chaos.at_step(2)
        chaos.fault(f"deleted {rollouts[0]}", rollouts[0], lambda: api.delete("pods", rollouts[0]))
        chaos.at_step(4)
        sprung = chaos.operator_killed_on("DELETE", rollouts[1])  # deleting the Failed pod, before the status patch
        chaos.fault(f"{rollouts[1]} marked Failed", rollouts[1], lambda: mark_failed(api, rollouts[1]))
        chaos.restart_operator(sprung)
        chaos.at_step(6)
        chaos.fault(f"evicted {rollouts[2]}", rollouts[2], lambda: evict(api, kubelet, rollouts[2]))
        chaos.at_step(8)
        chaos.fault("evicted the trainer", trainer, lambda: evict(api, kubelet, trainer))
        chaos.at_step(int(chaos.status()["step"]) + 2)  # the gang is back and training
        # Aimed at the worst moment: between two checkpoints (an odd version; everySteps is 2), so that the new
        # controller restores a step the running trainer is already past.
        chaos.wait_for(lambda: chaos.controller_version() % 2 == 1, "an odd policy version", 120)
        ready_since = next(c for c in chaos.status()["conditions"] if c["type"] == "Ready")["lastTransitionTime"]
        sprung = chaos.operator_killed_on("POST", controller)  # creating the new controller pod
        chaos.fault("deleted the controller", controller, lambda: api.delete("pods", controller))
        chaos.restart_operator(sprung)
        last_fault = time.monotonic()
        chaos.wait_for(lambda: chaos.converged_after(ready_since), "convergence before completion", 300)
        chaos.note("converged")
        convergence = time.monotonic() - last_fault
        chaos.wait_for(chaos.complete, "Complete", 400)
        chaos.note("complete")
        final = chaos.status()
        assert final["step"] == STEPS and final.get("completionTime"), chaos.explain()
        conditions = {c["type"]: c for c in final["conditions"]}
        assert conditions["Failed"]["status"] == "False" and conditions["Ready"]["reason"] == "Succeeded"
        chaos.wait_for(lambda: api.list("pods") == [], "pods deleted after completion", 120)
    finally:
        chaos.emulator.trap = None
        stop_operator(chaos.operators[-1])
    for sample in chaos.samples:  # conditions sane all along: each type once, never Failed
        types = [c["type"] for c in sample.get("conditions") or []]
        assert len(types) == len(set(types)) and set(types) <= CONDITIONS, sample
        assert not any(c["type"] == "Failed" and c["status"] == "True" for c in sample.get("conditions") or [])
    events = pod_history(chaos.emulator)
    assert overlapping_pods(events, NAME) == []  # never two pods for one (role, index), not even for a moment
    created = created_per_pod(events, NAME)
    # the controller deletion restarted the trainer too (tests/unit/test_reconcile_kmock.py pins why)
    assert created[controller] == 2 and created[trainer] >= 3, created
    assert {"PodRecreated", "GangRestarted"} <= set(api.reasons(NAME)), api.reasons(NAME)
    assert_every_prompt_trained_once(kubelet.root / "pvc" / "checkpoints")
    chaos.wait_for(lambda: not kubelet.containers, "the kubelet's containers all stopped", 60, operator_lives=False)
    assert processes_under(str(kubelet.root / api.namespace)) == []
    assert all(not alive(op.process.pid) for op in chaos.operators)
    print(
        f"chaos e2e: {len(chaos.operators) - 1} operator kills, pods created {created}, healed after {chaos.healed}, "
        f"converged {convergence:.1f}s after the last fault, total {time.monotonic() - chaos.started:.0f}s\n"
        f"{chaos.timeline}"
    )
