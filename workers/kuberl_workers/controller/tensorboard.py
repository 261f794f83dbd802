"""TensorBoard event files of each trained step's statistics (spec.reporting.tensorboard), by tensorboardX.

One scalar per numeric field of the controller's per-step history entry (the same fields as `kuberl run`'s
metrics.jsonl), grouped as `rollout/...`, `train/...` and `time/...`, at global step = the training step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kuberl_workers.config import TRAINER_STAT_FIELDS

TIME_FIELDS = {"rolloutSeconds", "trainSeconds"}
TRAIN_FIELDS = set(TRAINER_STAT_FIELDS)
SKIPPED = {"step", "wallClosed", "wallPublished"}


def tag(field: str) -> str:
    group = "time" if field in TIME_FIELDS else "train" if field in TRAIN_FIELDS else "rollout"
    return f"{group}/{field}"


class StepWriter:
    """Writes one history entry per call into `folder` (made when needed); flushes after each step."""

    def __init__(self, folder: Path) -> None:
        from tensorboardX import SummaryWriter

        folder.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(logdir=str(folder), flush_secs=10)

    def write(self, entry: dict[str, Any]) -> None:
        step = int(entry["step"])
        for field, value in sorted(entry.items()):
            if field not in SKIPPED and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag(field), float(value), global_step=step)
        for name, value in sorted((entry.get("scores") or {}).items()):  # task.rewards' named scores
            self.writer.add_scalar(f"rewards/{name}", float(value), global_step=step)
        self.writer.flush()

    def write_eval(self, summary: dict[str, Any]) -> None:
        """A held-out evaluation round (controller/evaluation.py) as `eval/...` at global step = its policy version."""
        step = int(summary["policyVersion"])
        for field, value in sorted(summary.items()):
            if field not in {"policyVersion", "wallTime"} and isinstance(value, (int, float)):
                self.writer.add_scalar(f"eval/{field}", float(value), global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
