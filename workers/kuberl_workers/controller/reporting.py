"""Experiment trackers the controller reports to (spec.reporting): one interface, a registry of implementations.

Each reporter gets every trained step's history entry (the fields of metrics.jsonl) and every held-out evaluation
round. A tracker that cannot be opened or written to never stops training: the failure is logged once, naming the
spec field, and that reporter is dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from kuberl_workers.config import WorkerConfig

log = logging.getLogger(__name__)
SKIPPED = {"step", "wallClosed", "wallPublished"}


class Reporter(Protocol):
    def write(self, entry: dict[str, Any]) -> None:
        """One trained step: a history entry whose `step` is the step (1-based)."""

    def write_eval(self, summary: dict[str, Any]) -> None:
        """One evaluation round (controller/evaluation.py) at its `policyVersion`."""

    def close(self) -> None: ...


def scalars(entry: dict[str, Any], skipped: set[str] = SKIPPED) -> dict[str, float]:
    """The numeric fields of an entry (bools and bookkeeping fields left out), as floats; each named reward score
    (task.rewards, the entry's `scores`) as `rewards/<name>`.
    """
    out = {
        name: float(value)
        for name, value in sorted(entry.items())
        if name not in skipped and isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    return out | {f"rewards/{name}": float(value) for name, value in sorted((entry.get("scores") or {}).items())}


def _tensorboard(cfg: WorkerConfig) -> Reporter:
    from kuberl_workers.controller.tensorboard import StepWriter

    return StepWriter(Path(cfg.checkpoint.dir) / "tensorboard")


def _mlflow(cfg: WorkerConfig) -> Reporter:
    from kuberl_workers.controller.tracking import MlflowReporter

    return MlflowReporter(cfg)


def _wandb(cfg: WorkerConfig) -> Reporter:
    from kuberl_workers.controller.tracking import WandbReporter

    return WandbReporter(cfg)


# spec field -> (enabled in this config?, factory)
REGISTRY: dict[str, tuple[Callable[[WorkerConfig], bool], Callable[[WorkerConfig], Reporter]]] = {
    "reporting.tensorboard": (lambda cfg: cfg.reporting.tensorboard, _tensorboard),
    "reporting.mlflow": (lambda cfg: cfg.reporting.mlflowTrackingUri is not None, _mlflow),
    "reporting.wandb": (lambda cfg: cfg.reporting.wandbProject is not None, _wandb),
}


class Reporters:
    """The enabled reporters of a job. They are opened and written in one background thread, in order: a slow or
    unreachable tracker never blocks the controller's event loop (see also the module docstring).
    """

    def __init__(self, cfg: WorkerConfig, queue_size: int = 10_000) -> None:
        self.active: dict[str, Reporter] = {}
        self._calls: queue.Queue[Callable[[], None] | None] = queue.Queue(queue_size)
        wanted = {field: factory for field, (enabled, factory) in REGISTRY.items() if enabled(cfg)}
        self._thread: threading.Thread | None = None
        if wanted:
            self._thread = threading.Thread(target=self._run, name="reporters", daemon=True)
            self._thread.start()
            self._submit(lambda: self._open(cfg, wanted))

    def _open(self, cfg: WorkerConfig, wanted: dict[str, Callable[[WorkerConfig], Reporter]]) -> None:
        for field, factory in wanted.items():
            try:
                self.active[field] = factory(cfg)
            except Exception as error:  # an unreachable tracker must not stop training
                log.error("%s: cannot be opened (%s: %s); not reporting there", field, type(error).__name__, error)

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            call()

    def _submit(self, call: Callable[[], None]) -> None:
        if self._thread is None:
            return
        try:
            self._calls.put_nowait(call)
        except queue.Full:  # the trackers fell far behind: drop this entry rather than hold the controller
            log.warning("reporters are %d entries behind; an entry was dropped", self._calls.qsize())

    def _each(self, call: Callable[[Reporter], None]) -> None:
        for field, reporter in list(self.active.items()):
            try:
                call(reporter)
            except Exception as error:
                log.error("%s: writing failed (%s: %s); reporting there stops", field, type(error).__name__, error)
                del self.active[field]

    def write(self, entry: dict[str, Any]) -> None:
        self._submit(lambda: self._each(lambda r: r.write(entry)))

    def write_eval(self, summary: dict[str, Any]) -> None:
        self._submit(lambda: self._each(lambda r: r.write_eval(summary)))

    def close(self, timeout: float = 30.0) -> None:
        """Flush what is queued (waiting at most `timeout` seconds), then close every reporter."""
        if self._thread is None:
            return
        self._submit(lambda: self._each(lambda r: r.close()))
        self._calls.put(None)
        self._thread.join(timeout)
        self._thread = None
