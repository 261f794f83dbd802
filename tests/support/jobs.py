"""Worker configs for tests, rendered from an RLJob through the same function the operator uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kuberl_operator.api.rljob import RLJob
from kuberl_operator.render import worker_config
from kuberl_workers.config import Limits, WorkerConfig
from support.specs import minimal_job

TOKEN = "test-token-0123456789abcdef"


def job_config(checkpoint_dir: Path, limits: Limits | None = None, **spec: Any) -> WorkerConfig:
    cfg = worker_config(RLJob.model_validate(minimal_job(**spec)), str(checkpoint_dir))
    return cfg.model_copy(update={"limits": limits}) if limits else cfg
