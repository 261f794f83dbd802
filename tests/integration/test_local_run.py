"""`kuberl run` end to end: faults survived without losing data, Ctrl-C without orphans, then --resume."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.ledger import assert_every_prompt_trained_once
from support.localrun import metrics_steps, pid_of, processes_of, wait_step
from support.specs import fault_drill_job
from support.tfevents import scalars

JOB = fault_drill_job("faults", 8, model={"builtin": "tiny", "dtype": "float32"}, checkpoint={})
JOB["spec"]["reporting"] = {"tensorboard": True}


def _start(tmp_path: Path, run_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(JOB))
    env = {**os.environ, "KUBERL_CACHE": str(tmp_path.parent / "kuberl-cache")}
    return subprocess.Popen(
        [sys.executable, "-m", "kuberl_operator.cli", "run", str(job), "--run-dir", str(run_dir), *extra],
        env=env,
        stdout=(tmp_path / "run.log").open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_kills_are_survived_and_every_prompt_trained_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    log = tmp_path / "run.log"
    proc = _start(tmp_path, run_dir)
    seen: list[int] = []
    try:
        wait_step(run_dir, proc, 2, log, seen=seen)
        os.kill(pid_of(run_dir, "faults-rollout-0"), signal.SIGKILL)
        wait_step(run_dir, proc, 5, log, seen=seen)
        os.kill(pid_of(run_dir, "faults-trainer-0"), signal.SIGKILL)
        wait_step(run_dir, proc, 8, log, seen=seen)
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert "PodRecreated: faults-rollout-0" in output and "GangRestarted: faults-trainer-0" in output
    steps = metrics_steps(run_dir)
    assert steps[-1] == 8
    drops = [a - b for a, b in itertools.pairwise(seen) if b < a]
    assert all(drop <= 2 for drop in drops), seen  # never back by more than checkpoint.everySteps
    assert_every_prompt_trained_once(run_dir / "checkpoints")
    assert (run_dir / "progress.png").stat().st_size > 1000
    assert processes_of(run_dir) == []
    final = next(line for line in output.splitlines() if line.strip().startswith("final model"))
    assert final.split()[2:] == [f"{run_dir}/checkpoints/weights-00000008", "(kuberl", "export", str(run_dir), "OUT)"]
    board = scalars(run_dir / "checkpoints" / "tensorboard")  # the controller's event files, across restarts
    assert set(board["rollout/rewardMean"]) == set(range(1, 9)) and set(board["train/loss"]) == set(range(1, 9))
    _assert_exported_model_loads(run_dir, tmp_path / "exported")


def _assert_exported_model_loads(run_dir: Path, out: Path) -> None:
    """`kuberl export` gives a directory that transformers loads as it is: model, tokenizer, generation config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    def export(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "kuberl_operator.cli", "export", str(run_dir), str(out), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert export("--step", "99").returncode == 1  # not published: the error lists what is
    assert "published steps:" in export("--step", "99").stderr
    done = export()
    assert done.returncode == 0, done.stderr
    model: Any = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    GenerationConfig.from_pretrained(out)
    ids = tokenizer("12+7=", return_tensors="pt").input_ids
    generated: Any = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 4
    again = export()
    assert again.returncode == 1 and "not an empty directory" in again.stderr  # never overwritten


@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_interrupt_stops_everything_and_resume_continues(tmp_path: Path, sig: signal.Signals) -> None:
    run_dir = tmp_path / "run"
    log = tmp_path / "run.log"
    proc = _start(tmp_path, run_dir)
    try:
        wait_step(run_dir, proc, 3, log)
        children = processes_of(run_dir)
        assert len(children) >= 3  # controller, trainer, rollout (and their helpers)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert processes_of(run_dir) == [], "orphan processes after Ctrl-C"
    assert f"resume with `kuberl run {tmp_path / 'job.yaml'} --resume --run-dir {run_dir}`" in log.read_text()
    before = metrics_steps(run_dir)
    resumed = _start(tmp_path, run_dir, "--resume")
    assert resumed.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert metrics_steps(run_dir) == list(range(1, 9)), before  # each step once: re-trained steps replaced their rows
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resumed_at = [r["step"] for r in rows if r.get("afterRestart")]
    assert len(resumed_at) == 1 and resumed_at[0] <= max(before) + 1 and rows[resumed_at[0] - 1]["stepSeconds"] is None
    assert processes_of(run_dir) == []
