"""RLJob status models: observations written only through the status subresource."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from kuberl_operator.api.conditions import ConditionType
from kuberl_operator.api.rules import ApiModel


def _timestamp(default: str | None = None) -> Any:
    return Field(default, json_schema_extra={"format": "date-time"})


class Condition(ApiModel):
    """One observed aspect of the job, in the Kubernetes condition convention."""

    type: ConditionType
    """Condition type (see the list of condition types)."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    """CamelCase machine-readable cause (see the list of reasons)."""
    message: str = Field("", max_length=32768)
    """Human-readable detail."""
    lastTransitionTime: str = Field(json_schema_extra={"format": "date-time"})
    """When status last changed (RFC 3339)."""
    observedGeneration: int | None = Field(None, ge=0)
    """metadata.generation the condition was computed from."""


class RoleStatus(ApiModel):
    """Pods of one role."""

    name: Literal["controller", "trainer", "rollout", "reward"]
    """Role name (`reward`: the job's reward server, spec.rewardServer)."""
    desired: int = Field(0, ge=0)
    """Pods wanted now (for rollouts: the scaling decision)."""
    ready: int = Field(0, ge=0)
    """Pods running and ready."""
    restarts: int = Field(0, ge=0)
    """Restarts of this role since the job started (for the trainer: gang restarts), disruptions included."""
    disruptions: int = Field(0, ge=0)
    """Of these, restarts after a disruption (preemption, eviction, node drain or shutdown: a DisruptionTarget
    condition or an Evicted/Preempting/Shutdown pod): not counted against faultTolerance.maxRestarts."""


class RLJobStatus(ApiModel):
    """Observed state of an RL job."""

    observedGeneration: int | None = Field(None, ge=0)
    """metadata.generation last reconciled."""
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Conditions keyed by type."""
    roles: list[RoleStatus] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Per-role pod counts keyed by name."""
    rollouts: str | None = None
    """Ready/desired rollout pods, e.g. `3/4` (for `kubectl get`)."""
    trainers: str | None = None
    """Ready/desired trainer pods, e.g. `2/2` (for `kubectl get`)."""
    rolloutReplicas: int | None = Field(None, ge=0)
    """Ready rollout pods (the scale subresource's status replicas)."""
    rolloutSelector: str | None = None
    """Label selector of the rollout pods (the scale subresource's selector)."""
    step: int | None = Field(None, ge=0)
    """Training steps completed."""
    policyVersion: int | None = Field(None, ge=0)
    """Weights version the rollout pool serves."""
    budgetFill: float | None = Field(None, ge=0.0)
    """Fraction of c3po.tokenBudget generated so far in the current step."""
    tokensPerSecond: float | None = Field(None, ge=0.0)
    """Rollout tokens per second across the pool (moving average)."""
    retention: int | None = Field(None, ge=0)
    """C3PO++ sigma in effect: c3po.retention, or the value automatic retention chose last."""
    tokensPurged: int | None = Field(None, ge=0)
    """Generated tokens C3PO++ discarded so far (groups purged past sigma): generation paid for, never trained."""
    lastCheckpoint: str | None = None
    """Path of the newest complete checkpoint."""
    latestModel: str | None = None
    """The newest published policy (`file://` URI as the pods mount the checkpoint volume): a complete Hugging Face
    model directory (weights, config, tokenizer, generation config). Once the job is Complete, the trained model:
    `kuberl export -n NAMESPACE JOB OUT` copies it (through an export pod that mounts the claim)."""
    avoidedNodes: list[str] = Field(default_factory=list)
    """Nodes the job's new pods avoid after repeated failures."""
    startTime: str | None = _timestamp()
    """When the job's pods were first created (RFC 3339)."""
    completionTime: str | None = _timestamp()
    """When the job became Complete or Failed (RFC 3339)."""
