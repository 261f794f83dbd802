"""Fault-tolerance and scaling decisions as pure functions: the operator and the local launcher both use them.

Nothing here touches a process, a pod or the clock; callers pass in counts and times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from kuberl_workers.config import EXIT_INVALID_INPUT

Action = Literal["restart_pod", "restart_gang", "restart_controller", "fail"]

# Event reasons (Kubernetes events and launcher log lines).
POD_RECREATED = "PodRecreated"
GANG_RESTARTED = "GangRestarted"
CONTROLLER_RESTARTED = "ControllerRestarted"
RESTART_LIMIT_EXCEEDED = "RestartLimitExceeded"
INVALID_INPUT = "InvalidInput"
NODE_AVOIDED = "NodeAvoided"
SCALED_UP = "ScaledUp"
SCALED_DOWN = "ScaledDown"
ROLLOUT_UPDATED = "RolloutUpdated"


@dataclass(frozen=True)
class Restart:
    action: Action
    delay: float
    reason: str
    message: str


def backoff(consecutive_failures: int, base: float, cap: float) -> float:
    """base, 2 base, 4 base, ... for the 1st, 2nd, 3rd consecutive failure of one replica, at most cap."""
    if consecutive_failures <= 0 or base <= 0:
        return 0.0
    return float(min(cap, base * 2 ** min(consecutive_failures - 1, 62)))


def on_failure(
    role: str,
    name: str,
    restarts_so_far: int,
    consecutive: int,
    max_restarts: int,
    base: float,
    cap: float,
    what: str = "failed",
    exit_code: int | None = None,
    detail: str = "",
    disrupted: str | None = None,
) -> Restart:
    """What to do when a process or pod of `role` failed (or, `what`, was deleted or evicted).

    A rollout worker is recreated alone; any trainer rank takes the whole gang down and back (torch.distributed
    cannot lose a rank); the controller restarts from its checkpoint. The restart that would exceed
    `max_restarts` (counted over all roles) fails the job instead, and so does exit code EXIT_INVALID_INPUT (the
    worker found the job's input invalid: `detail` says why; a restart would find it again). A pod the cluster
    took away (`disrupted`: preemption, eviction, drain) is restarted whatever the count: `restarts_so_far`
    excludes such restarts, since kuberl is meant for preemptible capacity and no work is lost.
    """
    if exit_code == EXIT_INVALID_INPUT:
        return Restart("fail", 0.0, INVALID_INPUT, f"{name} found the job's input invalid: {detail or 'see its log'}")
    if disrupted:
        what = f"was disrupted ({disrupted}; not counted against faultTolerance.maxRestarts)"
    elif restarts_so_far >= max_restarts:
        return Restart(
            "fail",
            0.0,
            RESTART_LIMIT_EXCEEDED,
            f"{name} {what} after {restarts_so_far} restarts (faultTolerance.maxRestarts={max_restarts})",
        )
    delay = backoff(consecutive, base, cap)
    if role == "trainer":
        return Restart(
            "restart_gang",
            delay,
            GANG_RESTARTED,
            f"{name} {what}: restarting the trainer gang from its last checkpoint in {delay:g}s",
        )
    if role == "controller":
        return Restart(
            "restart_controller",
            delay,
            CONTROLLER_RESTARTED,
            f"{name} {what}: restarting the controller from its last checkpoint in {delay:g}s",
        )
    return Restart("restart_pod", delay, POD_RECREATED, f"{name} {what}: recreating it in {delay:g}s")


def avoided_nodes(failures_by_node: dict[str, int], threshold: int) -> list[str]:
    """Nodes with at least `threshold` failures of this job's pods: new pods get anti-affinity against them."""
    return sorted(node for node, count in failures_by_node.items() if count >= threshold)


@dataclass(frozen=True)
class ScaleDecision:
    target: int
    low_since: float | None
    """When demand first fell below the current size (None while it is not below)."""
    reason: str


def scale(
    desired: int,
    current: int,
    lo: int,
    hi: int,
    pinned: int | None,
    capacity: int,
    low_since: float | None,
    now: float,
    delay: float,
) -> ScaleDecision:
    """The rollout pool size to move to: clamp(pinned or desired) to [lo, min(hi, capacity)]; scale up at once,
    scale down only after demand stayed low for `delay` seconds (a stabilisation window).
    """
    ceiling = max(lo, min(hi, capacity))
    target = min(max(pinned if pinned is not None else desired, lo), ceiling)
    if target > current:
        return ScaleDecision(
            target, None, f"demand {desired} > {current} replicas" if pinned is None else f"pinned to {pinned}"
        )
    if target < current:
        since = now if low_since is None else low_since
        if now - since >= delay:
            return ScaleDecision(target, None, f"demand stayed at {target} < {current} for {now - since:.0f}s")
        return ScaleDecision(current, since, "waiting for the scale-down window")
    return ScaleDecision(current, None, "stable")


def steps_eta(steps_done: int, steps_total: int, seconds_per_step: float) -> float:
    """Seconds left at the current pace (inf before the first step)."""
    if steps_done <= 0 or not math.isfinite(seconds_per_step):
        return math.inf
    return max(steps_total - steps_done, 0) * seconds_per_step
