"""`kuberl run` with a 2-rank fsdp2 gang (gloo, CPU): trains, publishes loadable weights gathered from the shards,
writes sharded DCP checkpoints, and a killed rank's gang restarts from them and finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from support.localrun import metrics_steps, pid_of, processes_of, wait_step
from support.specs import fault_drill_job

STEPS = 6
JOB = fault_drill_job("sharded", STEPS, model={"builtin": "tiny", "dtype": "float32"}, checkpoint={})
JOB["spec"]["trainer"] = {"replicas": 2, "strategy": "fsdp2", "maxTokensPerMicroBatch": 32}
JOB["spec"]["algorithm"]["klCoef"] = 0.05  # the sharded reference model runs too


def test_a_two_rank_fsdp2_gang_trains_checkpoints_and_survives_a_killed_rank(tmp_path: Path) -> None:
    job, run_dir, log = tmp_path / "job.yaml", tmp_path / "run", tmp_path / "run.log"
    job.write_text(yaml.safe_dump(JOB))
    env = {**os.environ, "KUBERL_CACHE": str(tmp_path.parent / "kuberl-cache")}
    command = [sys.executable, "-m", "kuberl_operator.cli", "run", str(job), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        wait_step(run_dir, proc, 3, log, timeout=300)  # past the checkpoint of step 2
        os.kill(pid_of(run_dir, "sharded-trainer-1"), signal.SIGKILL)  # one rank dies: the whole gang restarts
        assert proc.wait(timeout=400) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert "GangRestarted: sharded-trainer-1" in output, output[-4000:]
    assert metrics_steps(run_dir)[-1] == STEPS
    checkpoints = run_dir / "checkpoints"
    shards = sorted(p.name for p in (checkpoints / f"trainer-{STEPS:08d}.dcp").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own shards
    trainer_log = (run_dir / "logs" / "sharded-trainer-0.log").read_text()
    assert "rank 0/2 resumes at step 2 (fsdp2)" in trainer_log, trainer_log[-3000:]
    from transformers import AutoModelForCausalLM

    published = checkpoints / f"weights-{STEPS:08d}"
    model = AutoModelForCausalLM.from_pretrained(published)  # whole, from the gathered shards
    state = model.state_dict()
    tensors = load_file(str(published / "model.safetensors"))
    assert set(tensors) == set(state)  # the tiny model's head is not tied: every tensor, each gathered whole
    assert all(torch.equal(state[k], v) for k, v in tensors.items())
    assert processes_of(run_dir) == []
