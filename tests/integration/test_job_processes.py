"""Controller + 1 rollout worker + 1 trainer as real processes on the tiny model for 3 steps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from kuberl_workers.config import (
    ENV_CONFIG,
    ENV_CONTROLLER_URL,
    ENV_INDEX,
    ENV_POD_IP,
    ENV_TOKEN_FILE,
    Limits,
    Ports,
)
from support.jobs import TOKEN, job_config
from support.net import free_port


def _get(url: str, auth: bool = True) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"} if auth else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
        if response.headers.get_content_type() == "application/json":
            return response.status, json.loads(body) if body else None
        return response.status, body.decode()


def test_three_steps_with_real_processes(tmp_path: Path, tiny_dir: Path) -> None:
    ports = Ports(controller=free_port(), rollout=free_port(), trainer=free_port(), rendezvous=free_port())
    cfg = job_config(
        tmp_path / "ckpt",
        model={"path": str(tiny_dir), "dtype": "float32"},
        task={
            "dataset": {"builtin": "arithmetic"},
            "reward": "numeric",
            "promptsPerStep": 4,
            "samplesPerPrompt": 2,
            "maxPromptTokens": 16,
            "maxNewTokens": 8,
        },
        c3po={"tokenBudget": 16, "retention": 1, "inferencePoolCapacity": 8, "chunkTokens": 4},
        algorithm={"steps": 3, "learningRate": 1e-3},
        checkpoint={"everySteps": 3, "keep": 2},
        eval={"dataset": {"builtin": "arithmetic"}, "everySteps": 2, "samplesPerPrompt": 2, "maxPrompts": 3},
    ).model_copy(update={"ports": ports, "limits": Limits(rolloutBatch=4)})
    (tmp_path / "config.json").write_text(cfg.model_dump_json())
    (tmp_path / "token").write_text(TOKEN)
    url = f"http://127.0.0.1:{ports.controller}"
    env = {
        **os.environ,
        ENV_CONFIG: str(tmp_path / "config.json"),
        ENV_TOKEN_FILE: str(tmp_path / "token"),
        ENV_CONTROLLER_URL: url,
        ENV_POD_IP: "127.0.0.1",
        ENV_INDEX: "0",
        "OMP_NUM_THREADS": "1",
    }
    logs = {role: (tmp_path / f"{role}.log").open("w") for role in ("controller", "rollout", "trainer")}
    procs = {
        role: subprocess.Popen(
            [sys.executable, "-m", f"kuberl_workers.{role}"], env=env, stdout=logs[role], stderr=subprocess.STDOUT
        )
        for role in ("controller", "rollout", "trainer")
    }
    try:
        deadline = time.monotonic() + 240
        status: dict[str, Any] = {}
        batches: dict[int, Any] = {}  # collected while served: the final checkpoint retires them
        rollout_metrics = ""  # read while the worker runs: it exits once the job is complete
        while time.monotonic() < deadline:
            for role, proc in procs.items():
                assert proc.poll() is None or (role == "trainer" and proc.returncode == 0), (
                    role,
                    (tmp_path / f"{role}.log").read_text()[-3000:],
                )
            try:
                status = _get(f"{url}/v1/status")[1]
                if status["policyVersion"] >= 1 and not rollout_metrics:
                    rollout_metrics = _get(f"http://127.0.0.1:{ports.rollout}/metrics", auth=False)[1]
                for step in range(status["step"]):
                    if step not in batches:
                        code, batch = _get(f"{url}/v1/trainer/batch?step={step}")
                        if code == 200:
                            batches[step] = batch
            except OSError:  # not up yet; 410 once complete
                status = status if status.get("complete") else {}
            if status.get("complete"):
                break
            time.sleep(0.05)
        assert status.get("policyVersion") == 3, (status, (tmp_path / "trainer.log").read_text()[-3000:])
        assert procs["trainer"].wait(timeout=60) == 0
        # every trained rollout carries a version per token; the long tail makes some span two versions
        spanning = 0
        assert {0, 1} <= set(batches)
        for step, batch in batches.items():
            for group in batch["groups"]:
                for rollout in group["rollouts"]:
                    assert len(rollout["versions"]) == len(rollout["outputIds"]) == len(rollout["logprobs"])
                    assert rollout["versions"] == sorted(rollout["versions"]) and max(rollout["versions"]) <= step
                    spanning += len(set(rollout["versions"])) > 1
        assert spanning > 0
        controller_metrics = _get(f"{url}/metrics", auth=False)[1]
        assert "kuberl_policy_versions_spanned_bucket" in controller_metrics
        assert 'kuberl_step{job="job",namespace="default",role="controller"} 3.0' in controller_metrics
        assert 'kuberl_rollout_policy_version{job="job",namespace="default",role="rollout"}' in rollout_metrics
        assert "kuberl_rollout_weight_load_seconds" in rollout_metrics
        assert (tmp_path / "ckpt" / "trainer-00000003.pt").is_file()
        assert (tmp_path / "ckpt" / "controller-00000003.json").is_file()
        # held-out evaluation: the baseline, every second version and the last, by the real engine and reward
        evals = [json.loads(line) for line in (tmp_path / "ckpt" / "eval.jsonl").read_text().splitlines()]
        assert [e["policyVersion"] for e in evals] == [0, 2, 3]
        assert all(
            e["prompts"] == 3 and e["samplesPerPrompt"] == 2 and 0 <= e["passAt1"] <= e["passAt2"] for e in evals
        )
        assert all(e["completionTokensMean"] > 0 and e["failed"] == 0 for e in evals)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for handle in logs.values():
            handle.close()


def test_a_gang_that_lost_its_checkpoints_starts_over_with_the_controller(tmp_path: Path, tiny_dir: Path) -> None:
    """#15 kind 4, with real processes: no checkpoint volume (each pod its own emptyDir), the trainer killed after
    step 3 and its checkpoints gone with it. Before, the controller told the new trainer to resume at step 3, which
    it trained from the initial weights. Now controller, trainer and engine all go back to step 0 and finish.
    """
    ports = Ports(controller=free_port(), rollout=free_port(), trainer=free_port(), rendezvous=free_port())
    spec: dict[str, Any] = dict(
        model={"path": str(tiny_dir), "dtype": "float32"},
        task={
            "dataset": {"builtin": "arithmetic"},
            "reward": "numeric",
            "promptsPerStep": 2,
            "samplesPerPrompt": 2,
            "maxPromptTokens": 16,
            "maxNewTokens": 4,
        },
        c3po={"tokenBudget": 8, "retention": 1, "inferencePoolCapacity": 4, "chunkTokens": 4},
        algorithm={"steps": 5, "learningRate": 1e-3},
        checkpoint={"everySteps": 2, "keep": 2},
    )
    env = {
        **os.environ,
        ENV_TOKEN_FILE: str(tmp_path / "token"),
        ENV_CONTROLLER_URL: f"http://127.0.0.1:{ports.controller}",
        ENV_POD_IP: "127.0.0.1",
        ENV_INDEX: "0",
        "OMP_NUM_THREADS": "1",
    }
    (tmp_path / "token").write_text(TOKEN)
    for role in ("controller", "rollout", "trainer"):  # a checkpoint directory per process, as emptyDirs are
        cfg = job_config(tmp_path / f"{role}-ckpt", **spec).model_copy(update={"ports": ports})
        (tmp_path / f"{role}.json").write_text(cfg.model_dump_json())
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = []

    def launch(role: str, log_name: str) -> None:
        logs.append((tmp_path / log_name).open("w"))
        procs[role] = subprocess.Popen(
            [sys.executable, "-m", f"kuberl_workers.{role}"],
            env={**env, ENV_CONFIG: str(tmp_path / f"{role}.json")},
            stdout=logs[-1],
            stderr=subprocess.STDOUT,
        )

    def status() -> dict[str, Any]:
        try:
            return dict(_get(f"{env[ENV_CONTROLLER_URL]}/v1/status")[1])
        except OSError:
            return {}

    def wait_for(done: Any, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            for role, proc in procs.items():
                assert proc.poll() is None or (role == "trainer" and proc.returncode == 0), (role, _logs(tmp_path))
            now = status()
            if done(now):
                return now
            time.sleep(0.1)
        raise AssertionError(f"{what} not reached: {status()}\n{_logs(tmp_path)}")

    for role in ("controller", "rollout", "trainer"):
        launch(role, f"{role}.log")
    try:
        wait_for(lambda s: s.get("policyVersion", 0) >= 3, "policy version 3")
        procs["trainer"].send_signal(signal.SIGKILL)
        procs["trainer"].wait(timeout=30)
        shutil.rmtree(tmp_path / "trainer-ckpt")  # the pod's emptyDir is gone with it
        launch("trainer", "trainer-2.log")
        wait_for(lambda s: s.get("complete"), "completion")
        assert procs["trainer"].wait(timeout=60) == 0, _logs(tmp_path)
        assert "resumes at step 0" in (tmp_path / "trainer-2.log").read_text()
        assert "starting over from step 0" in (tmp_path / "controller.log").read_text()
        assert "loaded weights v0" in (tmp_path / "rollout.log").read_text()  # the engine went back too
        trained = [line for line in (tmp_path / "trainer-2.log").read_text().splitlines() if ": loss " in line]
        assert [line.split("step ")[1].split(":")[0] for line in trained] == ["1", "2", "3", "4", "5"]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for handle in logs:
            handle.close()


def _logs(directory: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(directory.glob("*.log")))
