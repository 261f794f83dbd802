"""MLflow and Weights & Biases reporters (spec.reporting.mlflow, spec.reporting.wandb), as TRL's `report_to`.

Metric names are TensorBoard's tags (`rollout/rewardMean`, `train/loss`, `eval/passAt1`, ...) at step = the
training step (evaluation: the policy version). Each run is keyed by the job: its id is kept in the checkpoint
directory, so a restarted controller continues the same run instead of starting a second one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from kuberl_workers.config import WorkerConfig
from kuberl_workers.controller.reporting import scalars
from kuberl_workers.controller.tensorboard import tag

EVAL_SKIPPED = {"policyVersion", "wallTime"}


def _run_id_file(cfg: WorkerConfig, name: str) -> Path:
    return Path(cfg.checkpoint.dir) / name


class MlflowReporter:
    """An MLflow run in experiment `reporting.mlflow.experiment` (default: the job's name) at the tracking URI."""

    def __init__(self, cfg: WorkerConfig) -> None:
        from mlflow.tracking import MlflowClient

        # MLflow's own retries back off for minutes; the controller's reporter thread should hear of a dead server
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        uri = cfg.reporting.mlflowTrackingUri or ""
        if uri.startswith("file:"):  # MLflow keeps its file store in maintenance mode behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = cfg.reporting.mlflowExperiment or cfg.job
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found is not None else self.client.create_experiment(name)
        keep = _run_id_file(cfg, "mlflow-run-id")
        run_id = keep.read_text().strip() if keep.is_file() else ""
        if not run_id:
            run = self.client.create_run(experiment, run_name=cfg.job, tags={"kuberl.job": cfg.job})
            run_id = run.info.run_id
            keep.parent.mkdir(parents=True, exist_ok=True)
            keep.write_text(run_id)
        self.run_id = run_id

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def write(self, entry: dict[str, Any]) -> None:
        self._log({tag(k): v for k, v in scalars(entry).items()}, int(entry["step"]))

    def write_eval(self, summary: dict[str, Any]) -> None:
        values = scalars(summary, EVAL_SKIPPED)
        self._log({f"eval/{k}": v for k, v in values.items()}, int(summary["policyVersion"]))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbReporter:
    """A W&B run in project `reporting.wandb.project`; `offline` mode writes under `<checkpoint dir>/wandb`
    (upload later with `wandb sync`), `online` needs WANDB_API_KEY in the controller's environment.
    """

    def __init__(self, cfg: WorkerConfig) -> None:
        import wandb

        keep = _run_id_file(cfg, "wandb-run-id")
        run_id = keep.read_text().strip() if keep.is_file() else ""
        directory = Path(cfg.checkpoint.dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.reporting.wandbProject,
            entity=cfg.reporting.wandbEntity,
            name=cfg.job,
            id=run_id or None,
            resume="allow",
            dir=str(directory),
            mode=cfg.reporting.wandbMode,
            config={"job": cfg.job, "seed": cfg.seed, "algorithm": cfg.algorithm.model_dump()},
        )
        keep.write_text(self.run.id)
        # eval rounds have their own x-axis: W&B's step only grows, and a round finishes after later steps
        self.run.define_metric("eval/policyVersion")
        self.run.define_metric("eval/*", step_metric="eval/policyVersion")

    def write(self, entry: dict[str, Any]) -> None:
        self.run.log({tag(k): v for k, v in scalars(entry).items()}, step=int(entry["step"]))

    def write_eval(self, summary: dict[str, Any]) -> None:
        values = {f"eval/{k}": v for k, v in scalars(summary, EVAL_SKIPPED).items()}
        self.run.log(values | {"eval/policyVersion": float(summary["policyVersion"])}, commit=False)

    def close(self) -> None:
        self.run.finish()
