"""The C3PO++ scheduler's checkpoint form: what Scheduler.state writes and Scheduler.restore reads.

JSON-ready: flat per-token lists per rollout, groups, the training and requeue logs, counters and the automatic
retention's window. Leases are not kept: a restored pool holds none, and their chunks wait for a lease again.
The form is the one earlier versions write and read (a controller image can be rolled back mid-job): each rollout
keeps its age, from which restore derives its group's Group.born; Group.first_version is recomputed.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from kuberl_workers.controller.pool_index import PoolIndex
from kuberl_workers.controller.state import Counters, Group, Rollout

if TYPE_CHECKING:
    from kuberl_workers.controller.scheduler import Scheduler


def write(s: Scheduler) -> dict[str, Any]:
    """Everything needed to continue with the same data."""
    return {
        "rollouts": [_rollout(s, r) for r in s.rollouts.values()],
        "groups": [g.to_json() for g in s.groups.values()],
        "ready": s.ready,
        "requeue": list(s.requeue),
        "requeuedOnce": sorted(s.requeued_once),
        "done": s.done,
        "dropped": s.dropped,
        "failed": s.failed,
        "cursor": s.cursor,
        "step": s.step,
        "version": s.version,
        "budgetUsed": s.budget_used,
        "admitted": s.admitted,
        "awaitingWeights": s.awaiting_weights,
        "nextId": s.next_id,
        "leaseSeq": s.lease_seq,
        "counters": s.counters.__dict__,
        "autoRetention": s.auto_retention.state() if s.auto_retention else None,
        "generatedAtPublish": s.generated_at_publish,
        "publishes": s.publishes,
    }


def _rollout(s: Scheduler, rollout: Rollout) -> dict[str, Any]:
    out = rollout.to_json()
    # publishes lived through unfinished; a finished rollout's age no longer matters (nor did it before)
    out["age"] = 0 if rollout.finished else s.publishes - s.groups[rollout.group].born
    return out


def read(s: Scheduler, state: dict[str, Any]) -> None:
    """Fill `s` (config, source, workers and automatic retention already set) from `state`."""
    s.rollouts = {r["id"]: Rollout.from_json(r) for r in state["rollouts"]}
    s.groups = {g["id"]: Group.from_json(g) for g in state["groups"]}
    s.publishes = int(state.get("publishes", 0))
    ages = {r["id"]: int(r.get("age", 0)) for r in state["rollouts"]}
    for group in s.groups.values():
        members = [s.rollouts[i] for i in group.rollouts]
        # its rollouts in flight were admitted together: their age is the group's
        group.born = s.publishes - max((ages[r.id] for r in members if not r.finished), default=0)
        versions = [r.first_version for r in members if r.first_version is not None]
        group.first_version = min(versions, default=None)
    s.ready = list(state["ready"])
    s._ready = set(s.ready)
    s.requeue = deque(state["requeue"])
    s.requeued_once = set(state["requeuedOnce"])
    s.done = [(int(index), int(step)) for index, step in state["done"]]
    s.dropped = list(state["dropped"])
    s.failed = {int(index): why for index, why in state.get("failed", {}).items()}
    s.cursor, s.step, s.version = state["cursor"], state["step"], state["version"]
    s.budget_used, s.admitted = state["budgetUsed"], state["admitted"]
    s.awaiting_weights = state["awaitingWeights"]
    s.next_id, s.lease_seq = state["nextId"], state["leaseSeq"]
    s.counters = Counters(**state["counters"])
    s.index = PoolIndex.rebuild(s.rollouts, s.groups)
    if s.auto_retention is not None and state.get("autoRetention"):
        s.auto_retention.restore(state["autoRetention"])
    s.generated_at_publish = int(state.get("generatedAtPublish", s.counters.tokens_generated))
