"""The operator's Prometheus metrics (served on :8080/metrics)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()
JOB = ("job", "namespace")
RECONCILES = Counter("kuberl_operator_reconciles", "Reconciles by result", ("result",), registry=REGISTRY)
for _result in ("changed", "unchanged", "error"):
    RECONCILES.labels(_result)  # exported at 0 from the start: rate() and the dashboard see 0, not "no data"
RECONCILE_SECONDS = Histogram("kuberl_operator_reconcile_seconds", "Reconcile duration", registry=REGISTRY)
JOBS = Gauge(
    "kuberl_operator_job_condition", "1 when the job's condition is True", (*JOB, "condition"), registry=REGISTRY
)
REPLICAS = Gauge(
    "kuberl_operator_replicas", "Pods per role: desired and ready", (*JOB, "role", "kind"), registry=REGISTRY
)
RESTARTS = Gauge(
    "kuberl_operator_restarts",
    "Restarts per role (rollout: pod, trainer: gang, controller)",
    (*JOB, "role"),
    registry=REGISTRY,
)
SCALING = Counter("kuberl_operator_scaling_decisions", "Rollout pool resizes", (*JOB, "direction"), registry=REGISTRY)


def observe_status(job: str, namespace: str, status: dict[str, Any]) -> None:
    for direction in ("up", "down"):
        SCALING.labels(job, namespace, direction)  # 0 until the first resize, so increase() has a series to read
    for condition in status.get("conditions") or []:
        JOBS.labels(job, namespace, condition["type"]).set(1.0 if condition["status"] == "True" else 0.0)
    for role in status.get("roles") or []:
        REPLICAS.labels(job, namespace, role["name"], "desired").set(role["desired"])
        REPLICAS.labels(job, namespace, role["name"], "ready").set(role["ready"])
        RESTARTS.labels(job, namespace, role["name"]).set(role.get("restarts", 0))


def forget(job: str, namespace: str) -> None:
    """Drop a deleted job's series: a gone Failed job must not keep KuberlJobFailed firing."""
    for metric in (JOBS, REPLICAS, RESTARTS, SCALING):
        for labels in [key for key in list(metric._metrics) if key[:2] == (job, namespace)]:
            metric.remove(*labels)
