"""Automatic C3PO++ retention (c3po.retention unset): sigma sized by the waste a purge would cause, not by hand.

A fixed sigma below what the job's completion lengths need purges whole groups every step (docs/benchmarks.md:
sigma=1 wasted 71% of the generated tokens on a long tail), and one far above it trains staler tokens than needed.
At each publish the scheduler asks `choose` which sigma to purge with, giving the tokens generated since the last
publish and a function that says how many tokens a purge at a given sigma would discard:

- sigma rises by one (up to `max_sigma`) while the tokens purged over the last WINDOW steps, this purge included,
  would exceed `max_share` of the tokens generated over them;
- sigma falls by one after WINDOW publishes in a row at which sigma - 1 would have purged nothing.

The inputs are the pool's own rollouts (their ages and versions), so the choice follows the observed completion
lengths and throughput; it is deterministic, so a restored controller makes the same choices.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kuberl_workers.controller.state import Group, Rollout, SchedulerConfig

if TYPE_CHECKING:
    from kuberl_workers.controller.pool_index import PoolIndex

WINDOW = 4


class AutoRetention:
    def __init__(self, max_share: float, max_sigma: int, sigma: int = 1) -> None:
        if not 0.0 < max_share < 1.0 or max_sigma < 1:
            raise ValueError(f"max_share must be in (0, 1) and max_sigma >= 1, got {max_share}, {max_sigma}")
        self.max_share, self.max_sigma = max_share, max_sigma
        self.sigma = min(sigma, max_sigma)
        self.history: deque[tuple[int, int]] = deque(maxlen=WINDOW - 1)  # (generated, purged) of earlier steps
        self.quiet = 0  # publishes in a row at which sigma - 1 would have purged nothing

    def choose(self, generated: int, purged_at: Callable[[int], int]) -> int:
        """The sigma to purge with at this publish. `generated`: tokens generated since the last publish;
        `purged_at(sigma)`: tokens a purge at `sigma` would discard (non-increasing in sigma); it is asked about
        max(1, self.sigma - 1) and up only (Scheduler.weights_published counts tokens from there).
        """
        earlier_generated = sum(g for g, _ in self.history)
        earlier_purged = sum(p for _, p in self.history)
        allowed = self.max_share * (earlier_generated + generated)
        while self.sigma < self.max_sigma and earlier_purged + purged_at(self.sigma) > allowed:
            self.sigma += 1
        used = self.sigma
        self.history.append((generated, purged_at(used)))
        self.quiet = self.quiet + 1 if used > 1 and purged_at(used - 1) == 0 else 0
        if self.quiet >= WINDOW:  # from the next publish on
            self.sigma, self.quiet = used - 1, 0
        return used

    def state(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "history": [list(h) for h in self.history], "quiet": self.quiet}

    def restore(self, state: dict[str, Any]) -> None:
        self.sigma = min(int(state["sigma"]), self.max_sigma)
        self.history = deque(((int(g), int(p)) for g, p in state["history"]), maxlen=WINDOW - 1)
        self.quiet = int(state["quiet"])


def auto_retention(cfg: SchedulerConfig) -> AutoRetention | None:
    """The job's automatic retention, or None when c3po.retention fixes sigma."""
    return None if cfg.retention is not None else AutoRetention(cfg.max_purged_share, cfg.max_retention)


def purge_candidates(
    groups: Mapping[int, Group],
    rollouts: Mapping[int, Rollout],
    index: PoolIndex,
    publishes: int,
    version: int,
    sigma: int,
) -> list[tuple[int, int, int]]:
    """(group id, key, tokens) of each group with key > `sigma`, at the publish of `version` (the `publishes`-th).

    A group's key is the larger of its unfinished rollouts' age (publishes lived through unfinished: all G were
    admitted together, at Group.born) and its oldest token's age in versions; a group is purged past sigma by
    either. A rollout that finished between the step's close and this publish was not in flight, yet its oldest
    token may be sigma + 1 versions old by the next step, and no trained token may be older than sigma. `tokens`
    is what purging the group would waste. One pass over the groups, not the rollouts.
    """
    out = []
    for group in groups.values():
        key = publishes - group.born if index.unfinished_in(group.id) else -1
        first = group.first_version
        if first is not None and version - first > key:
            key = version - first
        if key > sigma:
            out.append((group.id, key, sum(rollouts[i].length for i in group.rollouts)))
    return out
