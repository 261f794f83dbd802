"""Controller + 1 rollout worker + 1 trainer as real processes on the tiny model for 3 steps."""

from __future__ import annotations

import json
import os
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
