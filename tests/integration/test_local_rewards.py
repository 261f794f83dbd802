"""#17: `kuberl run` of short jobs whose reward is a Python function from a file plus a weighted built-in, and one
served by a separate local HTTP reward server process; each named score lands in metrics.jsonl."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from support.reward_server import template
from support.specs import fault_drill_job

TESTS = Path(__file__).resolve().parents[1]
USER_REWARD = """
import re

def shaped(prompt, completion, answer, row):
    numbers = re.findall(r"-?[0-9]+", completion)
    return {"score": float(bool(numbers) and numbers[-1] == answer), "digits": float(bool(numbers))}
"""


def _job(name: str, rewards: list[dict[str, Any]]) -> dict[str, Any]:
    job = fault_drill_job(name, 2, model={"builtin": "tiny", "dtype": "float32"}, checkpoint={})
    task = job["spec"]["task"]
    del task["reward"]
    task["rewards"] = rewards
    return job


def _run(tmp_path: Path, job: dict[str, Any], env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "kuberl_operator.cli", "run", str(path), "--run-dir", str(run_dir)],
        env={**os.environ, "KUBERL_CACHE": str(tmp_path.parent / "kuberl-cache"), **(env or {})},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_python_reward_from_a_file_plus_a_weighted_builtin(tmp_path: Path) -> None:
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "my_rewards.py").write_text(USER_REWARD)
    rows = _run(
        tmp_path,
        _job(
            "pyreward",
            [
                {"name": "mine", "python": {"function": "my_rewards:shaped", "path": "rewards/my_rewards.py"}},
                {"name": "style", "weight": 0.1, "builtin": "format"},
            ],
        ),
    )
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        scores = row["scores"]
        assert set(scores) == {"mine", "mine/digits", "style"}
        assert abs(row["rewardMean"] - (scores["mine"] + 0.1 * scores["style"])) < 1e-9  # linear weights
        assert 0.0 <= scores["mine"] <= scores["mine/digits"] <= 1.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_reward_served_by_a_local_http_reward_server(tmp_path: Path) -> None:
    port, log = _free_port(), tmp_path / "requests.jsonl"
    server = subprocess.Popen(
        [sys.executable, "-m", "support.reward_server", str(port), str(log)],
        env={**os.environ, "PYTHONPATH": str(TESTS), "REWARD_TOKEN": "test-token"},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        job = _job(
            "httpreward",
            [
                {
                    "name": "judge",
                    "http": {"url": f"http://127.0.0.1:{port}/score", "authSecret": {"name": "judge", "key": "token"}},
                }
            ],
        )
        rows = _run(tmp_path, job, env={"KUBERL_REWARD_AUTH_JUDGE": "Bearer test-token"})
    finally:
        server.terminate()
        server.wait(30)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(set(r["scores"]) == {"judge", "judge/has_number"} for r in rows)
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    completions = sum(r["completions"] for r in rows)
    assert requests and sum(r["items"] for r in requests) >= completions  # every trained completion was scored there


def test_the_jobs_own_reward_server_runs_as_local_processes(tmp_path: Path) -> None:
    """spec.rewardServer under `kuberl run`: its replicas run as local processes from the template's command (with
    `$(KUBERL_REWARD_PORT)` expanded), and an http reward with serverPath is sent to them in turn."""
    log = tmp_path / "requests.jsonl"
    job = _job("ownserver", [{"name": "judge", "http": {"serverPath": "/score"}}])
    job["spec"]["rewardServer"] = {
        "replicas": 2,
        "template": template(str(log)),
    }
    rows = _run(tmp_path, job)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(set(r["scores"]) == {"judge", "judge/has_number"} for r in rows)
    logs = sorted((tmp_path / "run" / "logs").glob("ownserver-reward-*.log"))
    assert [p.name for p in logs] == ["ownserver-reward-0.log", "ownserver-reward-1.log"]
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    assert sum(r["items"] for r in requests) >= sum(r["completions"] for r in rows)
