"""spec.reporting.tensorboard: each step's statistics as TensorBoard scalars, read back from the event files."""

from __future__ import annotations

from pathlib import Path

from kuberl_operator.api.rljob import RLJob
from kuberl_operator.render import worker_config
from kuberl_workers.controller.tensorboard import StepWriter
from support.specs import minimal_job
from support.tfevents import scalars


def test_steps_are_written_as_scalars_by_group(tmp_path: Path) -> None:
    writer = StepWriter(tmp_path / "tb")
    for step in (1, 2):
        writer.write({"step": step, "rewardMean": 0.25 * step, "loss": -0.5, "rolloutSeconds": 2.0, "wallClosed": 9.0})
    writer.close()
    found = scalars(tmp_path / "tb")
    assert found["rollout/rewardMean"] == {1: 0.25, 2: 0.5}
    assert found["train/loss"] == {1: -0.5, 2: -0.5} and found["time/rolloutSeconds"][2] == 2.0
    assert not any("wall" in tag for tag in found)


def test_the_spec_field_reaches_the_workers() -> None:
    job = RLJob.model_validate(minimal_job(reporting={"tensorboard": True}))
    assert worker_config(job, "/ckpt").reporting.tensorboard is True
    assert worker_config(RLJob.model_validate(minimal_job()), "/ckpt").reporting.tensorboard is False
