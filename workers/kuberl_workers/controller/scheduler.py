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
(controller/pool_index.py), and a worker's share of Omega O(1) (controller/shares.py); only a publish (once a
step) scans the pool's groups (controller/retention.py purge_candidates) and the step's close its trained ones.
`workers` is read-only outside this class (the shares are kept incrementally). Checkpoints:
controller/scheduler_state.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from kuberl_workers.controller import scheduler_state
from kuberl_workers.controller.pool_index import PoolIndex
from kuberl_workers.controller.retention import auto_retention, purge_candidates
from kuberl_workers.controller.shares import WorkerShares, WorkerState
from kuberl_workers.controller.state import (
    FINISH_REASONS,
    Batch,
    ChunkRequest,
    Counters,
    Group,
    Rollout,
    SchedulerConfig,
    batch_group,
)

# The scheduler's value types live in state.py; importers of this module get them here too.
__all__ = ["MAX_CHUNK_FAILURES", "Batch", "PromptSource", "Scheduler", "SchedulerConfig", "WorkerState"]

MAX_CHUNK_FAILURES = 3
"""A rollout whose chunk fails this many times (alone, on any worker) fails the same way again: its group is
dropped, counted and logged, and a fresh group takes its place in the step, so one poison prompt costs only
itself, never its batch or the job."""

_new_chunk = tuple.__new__
"""Builds a ChunkRequest from one tuple of its fields (a NamedTuple's generated constructor costs twice as much)."""

PromptSource = Callable[[int], tuple[list[int], str] | None]
"""prompt index -> (prompt token ids, reference answer), or None to skip that prompt (too long)."""


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
        self.shares = WorkerShares()
        self.counters = Counters()
        self.index = PoolIndex()
        self.auto_retention = auto_retention(cfg)
        self.generated_at_publish = 0  # counters.tokens_generated at the last publish
        self.publishes = 0  # weights_published calls that opened a step: the clock of rollout ages (Group.born)
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
            group = Group(self.next_id, index, answer, [], requeued, self.publishes)
            members = []
            for sample in range(self.cfg.group_size):
                self.next_id += 1
                rollout = Rollout(self.next_id, group.id, sample, prompt)
                self.rollouts[rollout.id] = rollout
                group.rollouts.append(rollout.id)
                members.append(rollout)
            self.groups[group.id] = group
            self.index.admitted(group, members)
            self.next_id += 1
            self.admitted += 1

    # --- leases ----------------------------------------------------------------------------------------

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
        state = self.shares.workers.get(worker) or self.shares.register(worker)
        if state.draining or self.awaiting_weights or max_rollouts <= 0 or self._closing():
            return []
        index = self.index
        # least-advanced first, then oldest: every rollout in P advances a chunk per round, as in the paper's
        # "generate for every rollout in P in parallel", even when engines take fewer than Omega at once
        taken = index.take(min(max_rollouts, self.shares.quota(worker, self.cfg.pool_capacity) - index.held_by(worker)))
        if not taken:
            return []
        cfg, rollouts, version, seq = self.cfg, self.rollouts, self.version, self.lease_seq
        chunk_tokens, max_new, seed = cfg.chunk_tokens, cfg.max_new_tokens, cfg.seed * 1_000_003
        out: list[ChunkRequest] = []
        for rollout_id in taken:  # the controller's hottest loop: one tuple per chunk and no calls of our own
            rollout = rollouts[rollout_id]
            seq += 1
            length, pieces = rollout.length, rollout.pieces
            left = max_new - length
            rollout.lease = chunk = _new_chunk(
                ChunkRequest,
                (
                    f"{rollout_id}-{seq}",
                    rollout_id,
                    rollout.prompt_ids,
                    pieces,
                    len(pieces),
                    length,
                    chunk_tokens if chunk_tokens < left else left,
                    version,
                    (seed + rollout_id * 7_919 + rollout.chunks) % 2**31,
                    worker,
                ),
            )
            out.append(chunk)
        self.lease_seq = seq
        index.leased(worker, taken, self.lease_seq - len(taken) + 1, now + cfg.lease_seconds)
        return out

    def _find_lease(self, lease_id: str, worker: str) -> Rollout | None:
        """The rollout whose current lease is `lease_id`, held by `worker`; None for a stale or unknown id."""
        try:  # "<rollout id>-<sequence>"; the comparison below refuses anything lease() did not write
            rollout = self.rollouts.get(int(lease_id[: lease_id.index("-")]))
        except ValueError:
            return None
        chunk = rollout.lease if rollout is not None else None
        if chunk is None or chunk.lease_id != lease_id or chunk.worker != worker:
            return None
        return rollout

    def complete(
        self,
        worker: str,
        lease_id: str,
        new_ids: Sequence[int],
        logprobs: Sequence[float],
        finish_reason: str | None,
        version: int,
    ) -> Rollout | None:
        """Accept a chunk's result if `lease_id` is still the rollout's current lease; None if stale.

        The rollout keeps `new_ids` and `logprobs` as tuples: a tuple is kept as it is (the HTTP layer parses them
        so), any other sequence is copied into one.

        Returns the rollout, which has finished when `finish_reason` is set (the caller computes its reward).
        Raises ValueError, changing nothing, for a result the lease did not ask for.
        """
        rollout = self._find_lease(lease_id, worker)
        if rollout is None:
            self.counters.leases_rejected += 1
            return None
        chunk = rollout.lease
        assert chunk is not None
        cfg, count, pieces = self.cfg, len(new_ids), rollout.pieces
        length = rollout.length + count
        if count != len(logprobs) or count > chunk.max_tokens:
            raise ValueError(
                f"chunk of {count} tokens with {len(logprobs)} logprobs for a lease of at most "
                f"{chunk.max_tokens} tokens"
            )
        if finish_reason is not None and finish_reason not in FINISH_REASONS:
            raise ValueError(f"finishReason must be one of {FINISH_REASONS} or null, got {finish_reason!r}")
        if pieces:
            if version < pieces[-1][2]:  # the first version is then the oldest (publish)
                raise ValueError(f"version {version} is older than the rollout's last chunk's ({pieces[-1][2]})")
        else:
            group = self.groups[rollout.group]
            if group.first_version is None or version < group.first_version:
                group.first_version = version
        rollout.lease = None
        pieces.append((tuple(new_ids), tuple(logprobs), version))
        rollout.length = length
        rollout.chunks += 1
        self.counters.tokens_generated += count
        if finish_reason is None:
            if length < cfg.max_new_tokens:
                self.index.accepted(rollout, worker)
                return rollout
            finish_reason = "length"
        rollout.finish_reason = finish_reason
        rollout.finished_in_step = self.step
        index = self.index
        index.finished(rollout, worker)
        self.budget_used += length
        if index.unfinished + cfg.group_size <= cfg.pool_capacity:  # the cheap half of refill's test first
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
        lost = [self.rollouts[i] for i in sorted(self.index.forget(worker))]
        for rollout in lost:
            rollout.lease = None
            self.index.queue(rollout)
        self.counters.leases_requeued += len(lost)
        self.shares.remove(worker)
        return len(lost)

    def expire(self, now: float) -> int:
        """Leases past their deadline return to the queue (a stalled worker's late result is then refused)."""
        expired = 0
        for rollout_id, lease_id in list(self.index.due(now)):
            if self._current(rollout_id, lease_id):
                self._requeue(self.rollouts[rollout_id])
                expired += 1
        self.counters.leases_requeued += expired
        self.index.compact_deadlines(self._current)
        return expired

    def _current(self, rollout_id: int, lease_id: str) -> bool:
        """`lease_id` is still the current lease of rollout `rollout_id`."""
        rollout = self.rollouts.get(rollout_id)
        return rollout is not None and rollout.lease is not None and rollout.lease.lease_id == lease_id

    def record_throughput(self, worker: str, tokens: int, seconds: float) -> None:
        self.shares.record(worker, tokens, seconds)

    def check_indexes(self) -> None:
        """Raise AssertionError where an index disagrees with a scan of the pool or the workers (for tests)."""
        self.index.check(self.rollouts, self.groups)
        self.shares.check()
        assert self._ready == set(self.ready)
        for group in self.groups.values():  # the per-group fields the publish reads instead of a scan
            firsts = [f for f in (self.rollouts[i].first_version for i in group.rollouts) if f is not None]
            assert group.first_version == min(firsts, default=None), (group, firsts)
            assert group.born <= self.publishes, (group, self.publishes)

    def forget_workers(self) -> None:
        """Forget every worker's state and throughput, as a restart does (leases are not touched)."""
        self.shares = WorkerShares()

    def drain(self, worker: str) -> int:
        """Stop leasing to `worker`; returns how many leases it still holds (0 means it may be stopped)."""
        self.shares.drain(worker)
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
            groups.append(batch_group(group, members))
        batch = Batch(step=self.step, groups=groups)
        self.ready, self._ready = [], set()
        self.step += 1
        self.budget_used = 0
        self.admitted = 0
        self.awaiting_weights = True
        return batch

    def weights_published(self, version: int) -> None:
        """The trainers published `version`: the carried-over rollouts age by one, groups past sigma are purged,
        and P is refilled.
        """
        self.version = version
        if not self.awaiting_weights:
            return
        self.awaiting_weights = False
        self.publishes += 1
        # the smallest sigma whose purge is asked about: automatic retention asks about its current sigma and up, and
        # one below it (AutoRetention.choose); groups at or below it need no token count (most of the pool)
        auto = self.auto_retention
        lowest = self.retention if auto is None else max(1, auto.sigma - 1)
        candidates = purge_candidates(self.groups, self.rollouts, self.index, self.publishes, version, lowest)

        def purged_at(sigma: int) -> int:
            assert sigma >= lowest, (sigma, lowest)  # candidates hold only the groups past `lowest`
            return sum(tokens for _, key, tokens in candidates if key > sigma)

        generated = self.counters.tokens_generated - self.generated_at_publish
        self.generated_at_publish = self.counters.tokens_generated
        sigma = self.cfg.retention if self.auto_retention is None else self.auto_retention.choose(generated, purged_at)
        assert sigma is not None
        for group_id, key, tokens in sorted(candidates):  # in admission order
            if key <= sigma:
                continue
            self.counters.tokens_purged += tokens
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
        """Rollout replicas needed to generate Phi tokens within the target time (WorkerShares.desired_replicas)."""
        return self.shares.desired_replicas(self.cfg.token_budget, target_step_seconds, lo, hi, current)

    @property
    def workers(self) -> dict[str, WorkerState]:
        """What the scheduler knows of each rollout worker (read-only outside the scheduler)."""
        return self.shares.workers

    # --- checkpoint state (controller/scheduler_state.py) -----------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to continue with the same data: leases are dropped (their work returns to TODO)."""
        return scheduler_state.write(self)

    @classmethod
    def restore(cls, cfg: SchedulerConfig, source: PromptSource, state: dict[str, Any]) -> Scheduler:
        """The scheduler of a checkpoint's `state` (this version's form or an earlier one's)."""
        self = cls.__new__(cls)
        self.cfg, self.source = cfg, source
        self.shares = WorkerShares()  # throughput is re-measured after a restart
        self.auto_retention = auto_retention(cfg)
        scheduler_state.read(self, state)
        return self
