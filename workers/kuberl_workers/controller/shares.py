"""The rollout workers the scheduler knows: measured throughput, draining, and each one's share of Omega in O(1)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class WorkerState:
    """What the scheduler knows of one rollout worker."""

    tokens_per_second: float | None = None
    draining: bool = False


@dataclass
class WorkerRates:
    """Sums over the workers that are not draining, kept as they change: a share of Omega costs O(1)."""

    active: int = 0
    measured: int = 0
    measured_sum: float = 0.0

    def forget(self, state: WorkerState) -> None:
        """`state` stops counting (it drains, goes, or its rate is about to change: then `add` follows)."""
        if state.draining:
            return
        self.active -= 1
        if state.tokens_per_second:
            self.measured -= 1
            self.measured_sum -= state.tokens_per_second

    def add(self, state: WorkerState) -> None:
        if state.draining:
            return
        self.active += 1
        if state.tokens_per_second:
            self.measured += 1
            self.measured_sum += state.tokens_per_second


def ewma(old: float | None, new: float, weight: float = 0.3) -> float:
    return new if old is None else (1 - weight) * old + weight * new


class WorkerShares:
    """Per-worker state and the running sums over it: a worker's share of Omega (its lease quota) costs O(1)."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerState] = {}
        self.rates = WorkerRates()

    def register(self, worker: str) -> WorkerState:
        state = self.workers.get(worker)
        if state is None:
            state = self.workers[worker] = WorkerState()
            self.rates.active += 1
        return state

    def quota(self, worker: str, capacity: int) -> int:
        """Rollouts `worker` (registered) may hold at once: its throughput's share of `capacity` (equal shares until
        measured; an unmeasured worker counts as the mean measured one).
        """
        r = self.rates
        default = r.measured_sum / r.measured if r.measured else 1.0
        total = r.measured_sum + (r.active - r.measured) * default
        return max(1, math.ceil(capacity * (self.workers[worker].tokens_per_second or default) / total))

    def record(self, worker: str, tokens: int, seconds: float) -> None:
        """`worker` generated `tokens` in `seconds`: its throughput estimate moves (EWMA)."""
        if seconds > 0 and tokens > 0:
            state = self.register(worker)
            self.rates.forget(state)
            state.tokens_per_second = ewma(state.tokens_per_second, tokens / seconds)
            self.rates.add(state)

    def drain(self, worker: str) -> None:
        """`worker` gets no more leases and no share."""
        state = self.register(worker)
        if not state.draining:
            self.rates.forget(state)
            state.draining = True

    def remove(self, worker: str) -> None:
        state = self.workers.pop(worker, None)
        if state is not None:
            self.rates.forget(state)

    def desired_replicas(self, token_budget: int, target_step_seconds: float, lo: int, hi: int, current: int) -> int:
        """Rollout replicas needed to generate `token_budget` tokens within the target time at the measured
        per-replica throughput, clamped to [lo, hi]; `current` (clamped) while nothing is measured yet.
        """
        rates = [s.tokens_per_second for s in self.workers.values() if s.tokens_per_second and not s.draining]
        if not rates:
            return min(max(current, lo), hi)
        per_replica = sum(rates) / len(rates)
        needed = math.ceil(token_budget / (target_step_seconds * per_replica))
        return min(max(needed, lo), hi)

    def check(self) -> None:
        """Raise AssertionError where the running sums disagree with a scan of the workers (for tests)."""
        scan = WorkerRates()
        for state in self.workers.values():
            scan.add(state)
        assert (scan.active, scan.measured) == (self.rates.active, self.rates.measured), (scan, self.rates)
        assert math.isclose(scan.measured_sum, self.rates.measured_sum, rel_tol=1e-9, abs_tol=1e-6)
