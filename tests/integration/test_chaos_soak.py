"""Chaos soak of `kuberl run`: the same job twice, without and with a seeded chaos driver (rollout workers SIGKILLed
every few seconds, trainer and controller SIGKILLed, a rollout worker SIGSTOPped past its lease). The chaos run must
complete, train every prompt exactly once, never rewind further than one checkpoint interval, reach the reference's
reward within noise, and leave no process behind.

The short variant runs in `make test`; `make chaos` runs the full soak (30 steps) for each seed in
KUBERL_CHAOS_SEEDS (default 1,2,3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.chaos import (
    LocalChaos,
    Plan,
    RewardCheck,
    chaos_job,
    processes_of,
    retrained,
    rewards_by_step,
    step_rewinds,
    stop_run,
)
from support.chaos import summary as fault_summary
from support.ledger import assert_every_prompt_trained_once

CHECKPOINT_EVERY = 2  # fault_drill_job's checkpoint.everySteps: the furthest a restore may rewind


def _start(folder: Path, job: dict[str, Any], cache: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text(yaml.safe_dump(job))
    log, run_dir = folder / "run.log", folder / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kuberl_operator.cli", "run", str(folder / "job.yaml"), "--run-dir", str(run_dir)],
        env={**os.environ, "KUBERL_CACHE": str(cache)},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    return proc, run_dir, log


def _commands(pids: list[int]) -> dict[int, str]:
    out = {}
    for pid in pids:
        try:
            out[pid] = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())[:200]
        except OSError:
            out[pid] = "?"
    return out


def soak(tmp_path: Path, plan: Plan, rollouts: int, tail: int) -> dict[str, Any]:
    """Reference run, chaos run, every check; returns the figures."""
    cache = tmp_path.parent / "kuberl-cache"  # the session's: one tiny-model build per seed
    job = chaos_job(f"chaos-{plan.seed}", plan.steps, plan.seed, rollouts, {"builtin": "tiny", "dtype": "float32"}, {})
    figures: dict[str, Any] = {"seed": plan.seed, "steps": plan.steps, "rolloutWorkers": rollouts}

    began = time.monotonic()
    proc, reference_dir, log = _start(tmp_path / "reference", job, cache)
    try:
        assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        stop_run(proc, reference_dir)
    figures["referenceSeconds"] = round(time.monotonic() - began)

    began = time.monotonic()
    proc, run_dir, log = _start(tmp_path / "chaos", job, cache)
    driver = LocalChaos(run_dir, job["metadata"]["name"], plan)
    try:
        driver.run(proc, timeout=1500, log=log)
        assert proc.returncode == 0, log.read_text()[-3000:]
        leftovers = processes_of(run_dir)  # read before stop_run, which would kill them
    finally:
        stop_run(proc, run_dir)
    figures["chaosSeconds"] = round(time.monotonic() - began)
    assert leftovers == [], f"orphan processes: {_commands(leftovers)}"

    counts = driver.counts()
    figures["faults"] = fault_summary(driver.faults)
    figures["lateResultsRefused"] = [f.refused for f in driver.faults if f.kind == "stall-rollout"]
    assert counts.get("kill-trainer", 0) == plan.trainer_kills, counts
    assert counts.get("kill-controller", 0) == plan.controller_kills, counts
    assert counts.get("stall-rollout", 0) == plan.stalls, counts
    assert counts.get("kill-rollout", 0) >= 1, counts
    assert all(f.recovered is not None for f in driver.faults), driver.faults  # training got past every fault

    state = assert_every_prompt_trained_once(run_dir / "checkpoints")
    figures["prompts"] = {"trained": len(state["done"]), "dropped": len(state["dropped"])}
    # the controller's version may go back only to its last checkpoint, and a restarted trainer re-trains only
    # the steps since the last checkpoint
    rewinds = step_rewinds(driver.seen)
    again = retrained(run_dir / "logs" / f"{job['metadata']['name']}-trainer-0.log")
    figures["rewinds"], figures["retrained"] = rewinds, again
    assert all(r <= CHECKPOINT_EVERY for r in rewinds), rewinds
    assert all(r <= CHECKPOINT_EVERY for r in again), again

    reference, chaos = rewards_by_step(reference_dir), rewards_by_step(run_dir)
    check = RewardCheck.of(reference, chaos, tail)
    figures["reward"] = {
        "k": check.k,
        "reference": round(check.reference, 3),
        "chaos": round(check.chaos, 3),
        "sigma": round(check.sigma, 3),
        "tolerance": round(check.tolerance, 3),
        # not asserted (nothing promises bit-identical sampling), but telling: chaos need not change a single step
        "stepsIdentical": sum(1 for step, value in chaos.items() if reference.get(step) == value),
    }
    assert check.ok, figures["reward"]
    restarts = [json.loads(line)["restarts"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    figures["launcherRestarts"] = restarts[-1]
    print("chaos soak:", json.dumps(figures))
    (tmp_path / "figures.json").write_text(json.dumps(figures, indent=2))
    return figures


def test_chaos_soak_short(tmp_path: Path) -> None:
    """One seed, 12 steps, two rollout workers: one trainer kill, one controller kill, one stall (then SIGCONT:
    its late results must be rejected), rollout kills every 6-12 s."""
    plan = Plan(seed=0, steps=12, trainer_kills=1, rollout_kill_every=(6.0, 12.0), stall_end="cont")
    soak(tmp_path, plan, rollouts=2, tail=6)


def _seeds() -> list[int]:
    return [int(seed) for seed in os.environ.get("KUBERL_CHAOS_SEEDS", "1,2,3").split(",") if seed.strip()]


@pytest.mark.chaos
@pytest.mark.parametrize("seed", _seeds())
def test_chaos_soak(tmp_path: Path, seed: int) -> None:
    """30 steps, three rollout workers, two trainer kills, one controller kill, one stall, rollout kills every 3-8 s."""
    soak(tmp_path, Plan(seed=seed, steps=30), rollouts=3, tail=10)
