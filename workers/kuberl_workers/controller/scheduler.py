"""C3PO++ token-budget scheduling over lossless work leases: the controller's deterministic core (no I/O).

Time is passed in (`now`, monotonic seconds) so that tests can drive any schedule of events.
The rules are in `shared/design/algorithms.md` and docs/architecture.md; in short:

- The inference pool P holds at most Omega rollouts; it is refilled with whole GRPO groups while the step is
  open, C < Phi, and fewer than `promptsPerStep` new groups were admitted this step.
- A rollout is generated in chunks of at most `chunkTokens`, each leased to one worker (TODO -> LEASED -> back to
  TODO on expiry, worker death or error; the rollout only changes when the current lease's result is accepted).
- A finished rollout adds its length to C; a group whose samples are all finished and rewarded enters Q.
- sigma > 0 (fixed, or chosen at each publish when c3po.retention is unset: controller/retention.py): the step
  closes when Q is non-empty and C >= Phi (or nothing more can be admitted and P is empty);
  unfinished rollouts carry over, age by one per policy update, and are purged (whole group) past sigma; at
  each publish, a group holding a token more than sigma versions old is purged too (no trained token is older).
- sigma = 0 (synchronous): at C >= Phi admission stops, and the step closes once P has drained, so nothing
  carries over.
- A purged group's prompt is requeued once as a fresh group, then dropped. Trained prompts go to the DONE log
  before the batch is handed out. A rollout whose chunk fails MAX_CHUNK_FAILURES times drops its group.

Cost: a lease of k chunks, a completion, a release and an expiry are O(k log n) / O(log n) in the pool size n
(controller/pool_index.py), and a worker's share of Omega O(1); only a publish (once a step) scans the pool.
`workers` is read-only outside this class (the shares are kept incrementally).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

from kuberl_workers.controller.pool_index import PoolIndex
from kuberl_workers.controller.retention import AutoRetention
from kuberl_workers.controller.state import (
    FINISH_REASONS,
    Batch,
    ChunkRequest,
    Counters,
    Group,
    Lease,
    Rollout,
    SchedulerConfig,
    WorkerRates,
    WorkerState,
    ewma,
)

# The scheduler's value types live in state.py; importers of this module get them here too.
__all__ = ["MAX_CHUNK_FAILURES", "Batch", "PromptSource", "Scheduler", "SchedulerConfig", "WorkerState"]

MAX_CHUNK_FAILURES = 3
"""A rollout whose chunk fails this many times (alone, on any worker) fails the same way again: its group is
dropped, counted and logged, and a fresh group takes its place in the step, so one poison prompt costs only
itself, never its batch or the job."""

PromptSource = Callable[[int], tuple[list[int], str] | None]
"""prompt index -> (prompt token ids, reference answer), or None to skip that prompt (too long)."""


def _auto(cfg: SchedulerConfig) -> AutoRetention | None:
    return None if cfg.retention is not None else AutoRetention(cfg.max_purged_share, cfg.max_retention)


class Scheduler:
    """The C3PO++ inference pool, training pool and lease table."""

    def __init__(self, cfg: SchedulerConfig, source: PromptSource) -> None:
        self.cfg = cfg
        self.source = source
        self.rollouts: dict[int, Rollout] = {}  # P plus finished rollouts waiting for their group
        self.groups: dict[int, Group] = {}
        self.ready: list[int] = []  # Q: ids of whole, rewarded groups
        self._ready: set[int] = set()  # the same, for membership
        self.requeue: deque[int] = deque()  # prompt indices of purged groups, admitted before new prompts
        self.requeued_once: set[int] = set()
        self.done: list[tuple[int, int]] = []  # DONE log: (prompt index, step it was trained in)
        self.dropped: list[int] = []
        self.failed: dict[int, str] = {}  # prompt index -> why its group was dropped (MAX_CHUNK_FAILURES)
        self.cursor = 0  # next dataset prompt index
        self.step = 0  # steps closed so far; the next batch is for step `step`
        self.version = 0  # policy version the rollouts must use
        self.budget_used = 0  # C
        self.admitted = 0  # new groups admitted this step
        self.awaiting_weights = False
        self.next_id = 0
        self.lease_seq = 0
        self.workers: dict[str, WorkerState] = {}
        self._rates = WorkerRates()
        self.counters = Counters()
        self.index = PoolIndex()
        self.auto_retention = _auto(cfg)
        self.generated_at_publish = 0  # counters.tokens_generated at the last publish
        self.refill()

    # --- the inference pool ------------------------------------------------------------------------------

    def in_flight(self) -> list[Rollout]:
        """The rollouts in P (a scan: for tests and once a step; `in_flight_count` is O(1))."""
        return [r for r in self.rollouts.values() if not r.finished]

    def in_flight_count(self) -> int:
        return self.index.unfinished

    def _budget_met(self) -> bool:
        return self.budget_used >= self.cfg.token_budget

    def _admission_open(self) -> bool:
        # refill only while C < Phi (the paper's `while C < Phi`), whatever sigma: a group admitted after the
        # budget is met could not generate before the step closes and would start one version old
        return not (self.awaiting_weights or self.admitted >= self.cfg.prompts_per_step or self._budget_met())

    def refill(self) -> None:
        """Admit whole groups while P has room for all G samples of one more."""
        while self._admission_open() and self.index.unfinished + self.cfg.group_size <= self.cfg.pool_capacity:
            requeued = bool(self.requeue)
            index = self.requeue.popleft() if requeued else self.cursor
            if not requeued:
                self.cursor += 1
            example = self.source(index)
            if example is None:
                continue
            prompt_ids, answer = example
            prompt = list(prompt_ids)  # one copy shared by the group's rollouts: nothing changes a prompt
            group = Group(id=self.next_id, prompt_index=index, answer=answer, rollouts=[], requeued=requeued)
            members = []
            for sample in range(self.cfg.group_size):
                self.next_id += 1
                rollout = Rollout(id=self.next_id, group=group.id, sample=sample, prompt_ids=prompt)
                self.rollouts[rollout.id] = rollout
                group.rollouts.append(rollout.id)
                members.append(rollout)
            self.groups[group.id] = group
            self.index.admitted(group, members)
            self.next_id += 1
            self.admitted += 1

    # --- leases ----------------------------------------------------------------------------------------

    def _quota(self, worker: str) -> int:
        """Rollouts a worker may hold at once: its throughput's share of Omega (equal shares until measured; an
        unmeasured worker counts as the mean measured one).
        """
        r = self._rates
        default = r.measured_sum / r.measured if r.measured else 1.0
        total = r.measured_sum + (r.active - r.measured) * default
        return max(1, math.ceil(self.cfg.pool_capacity * (self.workers[worker].tokens_per_second or default) / total))

    def _register(self, worker: str) -> WorkerState:
        state = self.workers.get(worker)
        if state is None:
            state = self.workers[worker] = WorkerState()
            self._rates.active += 1
        return state

    def _closing(self) -> bool:
        """sigma > 0 and the budget is met with a whole group finished: generation stops for this step (the
        paper's `while C < Phi`), and the step closes as soon as that group's rewards are in.
        """
        if self.cfg.retention == 0 or not self._budget_met():
            return False
        return bool(self.index.finished_groups)

    def lease(self, worker: str, max_rollouts: int, now: float) -> list[ChunkRequest]:
        """Hand `worker` up to `max_rollouts` chunks (none while draining, while the step is closing, or while
        new weights are awaited).
        """
        state = self._register(worker)
        if state.draining or self.awaiting_weights or max_rollouts <= 0 or self._closing():
            return []
        room = min(max_rollouts, self._quota(worker) - self.index.held_by(worker))
        # least-advanced first, then oldest: every rollout in P advances a chunk per round, as in the paper's
        # "generate for every rollout in P in parallel", even when engines take fewer than Omega at once
        taken = self.index.take(room)
        if not taken:
            return []
        cfg, rollouts, version = self.cfg, self.rollouts, self.version
        deadline, seed = now + cfg.lease_seconds, cfg.seed * 1_000_003
        out: list[ChunkRequest] = []
        leases: list[tuple[float, str, int]] = []
        for rollout_id in taken:
            rollout = rollouts[rollout_id]
            self.lease_seq += 1
            lease_id = f"{rollout_id}-{self.lease_seq}"
            rollout.lease = Lease(lease_id, worker, deadline, now)
            leases.append((deadline, lease_id, rollout_id))
            out.append(
                ChunkRequest(
                    lease_id,
                    rollout_id,
                    rollout.prompt_ids,
                    rollout.pieces,
                    len(rollout.pieces),
                    rollout.length,
                    min(cfg.chunk_tokens, cfg.max_new_tokens - rollout.length),
                    version,
                    (seed + rollout_id * 7_919 + rollout.chunks) % 2**31,
                )
            )
        self.index.leased(worker, leases)
        return out

    def _find_lease(self, lease_id: str, worker: str) -> Rollout | None:
        rollout_id = lease_id.partition("-")[0]
        rollout = self.rollouts.get(int(rollout_id)) if (rollout_id.isascii() and rollout_id.isdigit()) else None
        lease = rollout.lease if rollout is not None else None
        if lease is None or lease.id != lease_id or lease.worker != worker:
            return None
        return rollout

    def complete(
        self,
        worker: str,
        lease_id: str,
        new_ids: list[int],
        logprobs: list[float],
        finish_reason: str | None,
        version: int,
    ) -> Rollout | None:
        """Accept a chunk's result if `lease_id` is still the rollout's current lease; None if stale.

        Returns the rollout, which has finished when `finish_reason` is set (the caller computes its reward).
        """
        rollout = self._find_lease(lease_id, worker)
        if rollout is None:
            self.counters.leases_rejected += 1
            return None
        cfg, count = self.cfg, len(new_ids)
        length = rollout.length + count
        if count != len(logprobs) or count > cfg.chunk_tokens or length > cfg.max_new_tokens:
            raise ValueError(
                f"chunk of {count} tokens with {len(logprobs)} logprobs for a lease of at most "
                f"{min(cfg.max_new_tokens - rollout.length, cfg.chunk_tokens)} tokens"
            )
        if finish_reason is not None and finish_reason not in FINISH_REASONS:
            raise ValueError(f"finishReason must be one of {FINISH_REASONS} or null, got {finish_reason!r}")
        last = rollout.last_version
        if last is not None and version < last:  # the first version is then the oldest (publish)
            raise ValueError(f"version {version} is older than the rollout's last chunk's ({last})")
        self._unlease(rollout)
        rollout.add(new_ids, logprobs, version)
        rollout.chunks += 1
        self.counters.tokens_generated += count
        if finish_reason is None and length >= cfg.max_new_tokens:
            finish_reason = "length"
        if finish_reason is None:
            self.index.queue(rollout)
            return rollout
        rollout.finish_reason = finish_reason
        rollout.finished_in_step = self.step
        self.index.finished(rollout)
        self.budget_used += length
        if self.index.unfinished + cfg.group_size <= cfg.pool_capacity:  # the cheap half of refill's test first
            self.refill()
        return rollout

    def _unlease(self, rollout: Rollout) -> None:
        """Clear the rollout's lease (its result is in, or it goes back to the queue: the caller says which)."""
        assert rollout.lease is not None
        self.index.unleased(rollout.id, rollout.lease.worker)
        rollout.lease = None

    def _requeue(self, rollout: Rollout) -> None:
        self._unlease(rollout)
        self.index.queue(rollout)

    def release(self, worker: str, lease_id: str) -> bool:
        """A worker gives a lease back unfinished (engine error): its chunk returns to the queue."""
        rollout = self._find_lease(lease_id, worker)
        if rollout is None:
            return False
        self._requeue(rollout)
        self.counters.leases_requeued += 1
        return True

    def fail(self, worker: str, lease_id: str, reason: str) -> bool:
        """The chunk of a current lease failed (the engine refused it alone, or its result was invalid): the
        chunk returns to the queue, or, at the rollout's MAX_CHUNK_FAILURES-th failure, its whole group is dropped
        (recorded in `failed` with `reason`) and the step admits a replacement. False for a stale lease.
        """
        rollout = self._find_lease(lease_id, worker)
        if rollout is None:
            return False
        self._requeue(rollout)
        rollout.failures += 1
        self.counters.chunks_failed += 1
        if rollout.failures < MAX_CHUNK_FAILURES:
            self.counters.leases_requeued += 1
            return True
        group = self._discard(rollout.group)
        self.failed[group.prompt_index] = reason[:500]
        self.dropped.append(group.prompt_index)
        self.counters.prompts_dropped += 1
        self.counters.prompts_failed += 1
        self.admitted = max(0, self.admitted - 1)  # the step gets another group in its place
        self.refill()
        return True

    def _discard(self, group_id: int) -> Group:
        """Remove a group and its rollouts from P and Q; the tokens its rollouts added to this step's C go too."""
        group = self.groups.pop(group_id)
        members = [self.rollouts.pop(i) for i in group.rollouts]
        self.index.removed(group_id, members)
        for rollout in members:
            rollout.lease = None
            if rollout.finished_in_step == self.step:
                self.budget_used -= rollout.length
        if group_id in self._ready:
            self._ready.discard(group_id)
            self.ready.remove(group_id)
        return group

    def worker_lost(self, worker: str) -> int:
        """A worker died (missed heartbeats, pod gone): every lease it held returns to the queue."""
        lost = [self.rollouts[i] for i in sorted(self.index.held.get(worker, ()))]
        for rollout in lost:
            self._requeue(rollout)
        self.counters.leases_requeued += len(lost)
        state = self.workers.pop(worker, None)
        if state is not None:
            self._rates.forget(state)
        return len(lost)

    def expire(self, now: float) -> int:
        """Leases past their deadline return to the queue (a stalled worker's late result is then refused)."""
        expired = 0
        for lease_id, rollout_id in list(self.index.due(now)):
            if self._holds(rollout_id, lease_id):
                self._requeue(self.rollouts[rollout_id])
                expired += 1
        self.counters.leases_requeued += expired
        self.index.compact_deadlines(self._holds)
        return expired

    def _holds(self, rollout_id: int, lease_id: str) -> bool:
        """`lease_id` is still the current lease of rollout `rollout_id`."""
        rollout = self.rollouts.get(rollout_id)
        return rollout is not None and rollout.lease is not None and rollout.lease.id == lease_id

    def record_throughput(self, worker: str, tokens: int, seconds: float) -> None:
        if seconds > 0 and tokens > 0:
            state = self._register(worker)
            self._rates.forget(state)
            state.tokens_per_second = ewma(state.tokens_per_second, tokens / seconds)
            self._rates.add(state)

    def check_indexes(self) -> None:
        """Raise AssertionError where an index disagrees with a scan of the pool or the workers (for tests)."""
        self.index.check(self.rollouts, self.groups)
        scan = WorkerRates()
        for state in self.workers.values():
            scan.add(state)
        assert (scan.active, scan.measured) == (self._rates.active, self._rates.measured), (scan, self._rates)
        assert math.isclose(scan.measured_sum, self._rates.measured_sum, rel_tol=1e-9, abs_tol=1e-6)
        assert self._ready == set(self.ready)

    def forget_workers(self) -> None:
        """Forget every worker's state and throughput, as a restart does (leases are not touched)."""
        self.workers, self._rates = {}, WorkerRates()

    def drain(self, worker: str) -> int:
        """Stop leasing to `worker`; returns how many leases it still holds (0 means it may be stopped)."""
        state = self._register(worker)
        if not state.draining:
            self._rates.forget(state)
            state.draining = True
        return self.index.held_by(worker)

    # --- rewards and the training pool ------------------------------------------------------------------

    def rewarded(self, rollout_id: int, reward: float, scores: dict[str, float] | None = None) -> None:
        """Record a finished rollout's reward (and its named scores, task.rewards)."""
        rollout = self.rollouts.get(rollout_id)
        if rollout is None or not rollout.finished:
            return  # purged meanwhile
        first = rollout.reward is None
        rollout.reward = reward
        rollout.scores = dict(scores) if scores else {}
        if first and self.index.rewarded(rollout.group):  # its group's last reward: the group enters Q
            self.ready.append(rollout.group)
            self._ready.add(rollout.group)

    def _pending(self) -> bool:
        """Rollouts still generating or waiting for a reward: a group not in Q has one (a group enters Q as soon as
        its last reward is in).
        """
        return len(self.groups) > len(self._ready)

    def step_ready(self) -> bool:
        if self.awaiting_weights or not self.ready:
            return False
        exhausted = self.admitted >= self.cfg.prompts_per_step
        drained = not self._pending()
        if self.cfg.retention == 0:
            return (self._budget_met() or exhausted) and drained
        return self._budget_met() or (exhausted and drained)

    def close_step(self) -> Batch:
        """Hand Q to the trainers: record DONE first, then build the batch. Generation pauses until
        `weights_published` brings the next policy version.
        """
        if not self.step_ready():
            raise RuntimeError("step is not ready")
        groups = []
        for group_id in sorted(self.ready):  # admission order, whatever order the groups finished in
            group = self.groups.pop(group_id)
            self.done.append((group.prompt_index, self.step))
            members = [self.rollouts.pop(i) for i in group.rollouts]
            self.index.removed(group_id, members)
            groups.append(
                {
                    "promptIndex": group.prompt_index,
                    "answer": group.answer,
                    "promptIds": members[0].prompt_ids,
                    "rollouts": [
                        {
                            "outputIds": r.output_ids,
                            "logprobs": r.logprobs,
                            "versions": r.versions,
                            "reward": r.reward,
                            "scores": r.scores,
                            "finishReason": r.finish_reason,
                        }
                        for r in members
                    ],
                }
            )
        batch = Batch(step=self.step, groups=groups)
        self.ready, self._ready = [], set()
        self.step += 1
        self.budget_used = 0
        self.admitted = 0
        self.awaiting_weights = True
        return batch

    def weights_published(self, version: int) -> None:
        """The trainers published `version`: age the carried-over rollouts, purge past sigma, refill."""
        self.version = version
        if not self.awaiting_weights:
            return
        self.awaiting_weights = False
        # One pass: age the carried-over (unfinished) rollouts, and note per group the largest of its rollouts'
        # ages and its oldest token's age in versions. A group is purged past sigma by either: a rollout that
        # finished between the step's close and this publish was not in flight, yet its oldest token may be
        # sigma + 1 versions old by the next step, and no trained token may be older than sigma.
        oldest: dict[int, int] = {}
        tokens: dict[int, int] = {}  # group -> its rollouts' tokens (what purging it would waste)
        for rollout in self.rollouts.values():
            tokens[rollout.group] = tokens.get(rollout.group, 0) + rollout.length
            key = -1
            if rollout.finish_reason is None:
                rollout.age += 1
                key = rollout.age
            first = rollout.first_version
            if first is not None and version - first > key:
                key = version - first
            if key > oldest.get(rollout.group, -1):
                oldest[rollout.group] = key

        def purge_set(sigma: int) -> set[int]:
            return {group for group, key in oldest.items() if key > sigma}

        def purged_at(sigma: int) -> int:
            return sum(tokens[group] for group, key in oldest.items() if key > sigma)

        generated = self.counters.tokens_generated - self.generated_at_publish
        self.generated_at_publish = self.counters.tokens_generated
        sigma = self.cfg.retention if self.auto_retention is None else self.auto_retention.choose(generated, purged_at)
        assert sigma is not None
        for group_id in sorted(purge_set(sigma)):
            self.counters.tokens_purged += tokens[group_id]
            group = self._discard(group_id)
            self.counters.rollouts_purged += len(group.rollouts)
            if group.requeued or group.prompt_index in self.requeued_once:
                self.dropped.append(group.prompt_index)
                self.counters.prompts_dropped += 1
            else:
                self.requeued_once.add(group.prompt_index)
                self.requeue.append(group.prompt_index)
                self.counters.prompts_requeued += 1
        self.refill()

    # --- demand signal ---------------------------------------------------------------------------------

    @property
    def retention(self) -> int:
        """sigma now: the fixed one, or the one automatic retention chose last (it applies at the next publish)."""
        if self.auto_retention is not None:
            return self.auto_retention.sigma
        assert self.cfg.retention is not None
        return self.cfg.retention

    def budget_fill(self) -> float:
        return self.budget_used / self.cfg.token_budget

    def desired_replicas(self, target_step_seconds: float, lo: int, hi: int, current: int) -> int:
        """Rollout replicas needed to generate Phi tokens within the target time at the measured per-replica
        throughput, clamped to [lo, hi]; `current` (clamped) while nothing is measured yet.
        """
        rates = [s.tokens_per_second for s in self.workers.values() if s.tokens_per_second and not s.draining]
        if not rates:
            return min(max(current, lo), hi)
        per_replica = sum(rates) / len(rates)
        needed = math.ceil(self.cfg.token_budget / (target_step_seconds * per_replica))
        return min(max(needed, lo), hi)

    # --- checkpoint state ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to continue with the same data: leases are dropped (their work returns to TODO)."""
        return {
            "rollouts": [r.to_json() for r in self.rollouts.values()],
            "groups": [g.to_json() for g in self.groups.values()],
            "ready": self.ready,
            "requeue": list(self.requeue),
            "requeuedOnce": sorted(self.requeued_once),
            "done": self.done,
            "dropped": self.dropped,
            "failed": self.failed,
            "cursor": self.cursor,
            "step": self.step,
            "version": self.version,
            "budgetUsed": self.budget_used,
            "admitted": self.admitted,
            "awaitingWeights": self.awaiting_weights,
            "nextId": self.next_id,
            "leaseSeq": self.lease_seq,
            "counters": self.counters.__dict__,
            "autoRetention": self.auto_retention.state() if self.auto_retention else None,
            "generatedAtPublish": self.generated_at_publish,
        }

    @classmethod
    def restore(cls, cfg: SchedulerConfig, source: PromptSource, state: dict[str, Any]) -> Scheduler:
        self = cls.__new__(cls)
        self.cfg, self.source = cfg, source
        self.rollouts = {r["id"]: Rollout.from_json(r) for r in state["rollouts"]}
        self.groups = {g["id"]: Group.from_json(g) for g in state["groups"]}
        self.ready = list(state["ready"])
        self._ready = set(self.ready)
        self.requeue = deque(state["requeue"])
        self.requeued_once = set(state["requeuedOnce"])
        self.done = [(int(index), int(step)) for index, step in state["done"]]
        self.dropped = list(state["dropped"])
        self.failed = {int(index): why for index, why in state.get("failed", {}).items()}
        self.cursor, self.step, self.version = state["cursor"], state["step"], state["version"]
        self.budget_used, self.admitted = state["budgetUsed"], state["admitted"]
        self.awaiting_weights = state["awaitingWeights"]
        self.next_id, self.lease_seq = state["nextId"], state["leaseSeq"]
        self.workers, self._rates = {}, WorkerRates()
        self.counters = Counters(**state["counters"])
        self.index = PoolIndex.rebuild(self.rollouts, self.groups)
        self.auto_retention = _auto(cfg)
        if self.auto_retention is not None and state.get("autoRetention"):
            self.auto_retention.restore(state["autoRetention"])
        self.generated_at_publish = int(state.get("generatedAtPublish", self.counters.tokens_generated))
        return self
