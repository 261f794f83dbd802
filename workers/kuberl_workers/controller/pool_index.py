"""Indexes over the scheduler's inference pool, so that a lease, a completion and an expiry cost O(log n), not a scan.

At cluster scale (Omega = 4096 rollouts in flight, 256 replicas) a scan of the pool per lease and per completion
cost more than the step it schedules (docs/benchmarks.md). The scheduler keeps its rollouts and groups as before and
tells this index every change; the index answers the questions the hot paths ask:

- the next chunks to lease: the unleased, unfinished rollouts with the fewest chunks, then the oldest (a binary heap
  of one int per entry, chunks << ID_BITS | id, with lazy deletion: a popped entry counts only if it is still the
  rollout's current key; ints compare several times faster than tuples, and a lease takes its k chunks in one call);
- the leases a worker holds (a set per worker), and the leases past their deadline (a heap with one entry per lease
  call, whose chunks share a deadline: its rollout ids and first lease number, no tokens; each is checked against
  its rollout's current lease when the entry falls due, and the heap is compacted when stale entries outnumber the
  live leases);
- how many rollouts are in flight, whether some group has all its rollouts finished, and whether all are rewarded
  (counts per group).

A completion is one call (`accepted` or `finished`), as it runs thousands of times a second at that scale.
`check(rollouts, groups)` recomputes everything by scanning, for tests.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping

from kuberl_workers.controller.state import Group, Rollout

ID_BITS = 40
"""Rollout ids below 2**40 (a trillion) share a heap entry with their chunk count."""
ID_MASK = (1 << ID_BITS) - 1


class PoolIndex:
    def __init__(self) -> None:
        self._todo_heap: list[int] = []
        self._todo: dict[int, int] = {}  # rollout id -> its key in the heap, while it waits for a lease
        self.held: dict[str, set[int]] = {}  # worker -> ids of the rollouts it holds a lease on (may be empty)
        # (deadline, call number, its rollout ids, the lease number of the first): lease i is "<id>-<first + i>"
        self._deadlines: list[tuple[float, int, list[int], int]] = []
        self._calls = 0
        self.unfinished = 0  # rollouts in flight (P)
        self._left: dict[int, int] = {}  # group id -> its rollouts not finished yet
        self._unrewarded: dict[int, int] = {}  # group id -> its rollouts without a reward yet
        self.finished_groups: set[int] = set()  # groups whose rollouts have all finished

    @classmethod
    def rebuild(cls, rollouts: Mapping[int, Rollout], groups: Mapping[int, Group]) -> PoolIndex:
        """The index of a restored pool (restored rollouts hold no lease)."""
        index = cls()
        for group in groups.values():
            members = [rollouts[i] for i in group.rollouts]
            index._left[group.id] = sum(1 for r in members if not r.finished)
            index._unrewarded[group.id] = sum(1 for r in members if r.reward is None)
            index.unfinished += index._left[group.id]
            if index._left[group.id] == 0:
                index.finished_groups.add(group.id)
            for rollout in members:
                if not rollout.finished and rollout.lease is None:
                    index.queue(rollout)
        return index

    # --- chunks waiting for a lease ------------------------------------------------------------------------

    def queue(self, rollout: Rollout) -> None:
        """`rollout` (unfinished, unleased) waits for its next chunk's lease."""
        key = rollout.chunks << ID_BITS | rollout.id
        self._todo[rollout.id] = key
        heapq.heappush(self._todo_heap, key)

    def unqueue(self, rollout_id: int) -> None:
        self._todo.pop(rollout_id, None)

    def take(self, count: int) -> list[int]:
        """Up to `count` ids of the least-advanced (then oldest) rollouts waiting for a lease, removed from the
        queue, in that order.
        """
        if len(self._todo_heap) > 2 * len(self._todo) + 1024:  # bound the stale entries (checked once a call)
            self._todo_heap = sorted(self._todo.values())
        heap, todo, pop = self._todo_heap, self._todo, heapq.heappop
        out: list[int] = []
        while heap and len(out) < count:
            key = pop(heap)
            rollout_id = key & ID_MASK
            if todo.get(rollout_id) == key:
                del todo[rollout_id]
                out.append(rollout_id)
        return out

    def waiting(self) -> int:
        return len(self._todo)

    # --- leases ---------------------------------------------------------------------------------------------

    def leased(self, worker: str, rollout_ids: list[int], first: int, deadline: float) -> None:
        """`worker` holds these leases now, one per rollout, until `deadline`; their lease numbers run from `first`
        (lease ids "<rollout id>-<number>", Scheduler.lease). `rollout_ids` is kept: the caller must not change it.
        """
        held = self.held.get(worker)
        if held is None:
            held = self.held[worker] = set()
        held.update(rollout_ids)
        self._calls += 1
        heapq.heappush(self._deadlines, (deadline, self._calls, rollout_ids, first))

    def unleased(self, rollout_id: int, worker: str) -> None:
        held = self.held.get(worker)
        if held is not None:
            held.discard(rollout_id)

    def accepted(self, rollout: Rollout, worker: str) -> None:
        """`worker`'s lease on `rollout` ended with its chunk accepted (the chunk is counted); the rollout waits for
        its next chunk's lease. The same as unleased + queue, in one call.
        """
        self.held[worker].discard(rollout.id)
        key = rollout.chunks << ID_BITS | rollout.id
        self._todo[rollout.id] = key
        heapq.heappush(self._todo_heap, key)

    def held_by(self, worker: str) -> int:
        held = self.held.get(worker)
        return 0 if held is None else len(held)

    def forget(self, worker: str) -> set[int]:
        """The ids of the rollouts `worker` holds leases on, no longer counted as its (it is gone)."""
        return self.held.pop(worker, set())

    @staticmethod
    def _leases(entry: tuple[float, int, list[int], int]) -> Iterator[tuple[int, str]]:
        _, _, rollout_ids, first = entry
        return ((rollout_id, f"{rollout_id}-{first + i}") for i, rollout_id in enumerate(rollout_ids))

    def due(self, now: float) -> Iterable[tuple[int, str]]:
        """(rollout id, lease id) of every lease whose deadline is <= now, removed; the caller checks that it is
        still its rollout's current lease.
        """
        while self._deadlines and self._deadlines[0][0] <= now:
            yield from self._leases(heapq.heappop(self._deadlines))

    def compact_deadlines(self, current: Callable[[int, str], bool]) -> None:
        """Drop the entries whose leases have all ended (`current(rollout id, lease id)` is False), once there are
        more entries than twice the live leases: a completed lease leaves its entry behind until its deadline, and
        hundreds of lease calls a second within a lease period would otherwise pile up.
        """
        if len(self._deadlines) > 4096 and len(self._deadlines) > 2 * sum(len(h) for h in self.held.values()):
            self._deadlines = [e for e in self._deadlines if any(current(*lease) for lease in self._leases(e))]
            heapq.heapify(self._deadlines)

    # --- groups and rollouts ----------------------------------------------------------------------------------

    def admitted(self, group: Group, rollouts: Iterable[Rollout]) -> None:
        size = len(group.rollouts)
        self._left[group.id] = self._unrewarded[group.id] = size
        self.unfinished += size
        todo, heap, push = self._todo, self._todo_heap, heapq.heappush
        for rollout in rollouts:  # queue(rollout) for each, without the calls
            key = todo[rollout.id] = rollout.chunks << ID_BITS | rollout.id
            push(heap, key)

    def finished(self, rollout: Rollout, worker: str) -> None:
        """`worker`'s lease on `rollout` ended with its last chunk accepted: the rollout has finished."""
        self.held[worker].discard(rollout.id)
        self.unfinished -= 1
        left = self._left[rollout.group] = self._left[rollout.group] - 1
        if left == 0:
            self.finished_groups.add(rollout.group)

    def unfinished_in(self, group_id: int) -> int:
        """Rollouts of `group_id` not finished yet."""
        return self._left[group_id]

    def rewarded(self, group_id: int) -> bool:
        """A rollout of `group_id` got its first reward; True when every rollout of the group has one now."""
        self._unrewarded[group_id] -= 1
        return self._unrewarded[group_id] == 0

    def removed(self, group_id: int, rollouts: Iterable[Rollout]) -> None:
        """A group left the pool (trained, purged or dropped) with these rollouts."""
        for rollout in rollouts:
            self.unqueue(rollout.id)
            if rollout.lease is not None:
                self.unleased(rollout.id, rollout.lease.worker)
        self.unfinished -= self._left.pop(group_id, 0)
        self._unrewarded.pop(group_id, None)
        self.finished_groups.discard(group_id)

    def check(self, rollouts: Mapping[int, Rollout], groups: Mapping[int, Group]) -> None:
        """Raise AssertionError where the index disagrees with a scan of the pool (for tests)."""
        waiting = sorted(r.chunks << ID_BITS | r.id for r in rollouts.values() if not r.finished and r.lease is None)
        assert sorted(self._todo.values()) == waiting, (sorted(self._todo.values()), waiting)
        holders: dict[str, set[int]] = {}
        for rollout in rollouts.values():
            if rollout.lease is not None:
                holders.setdefault(rollout.lease.worker, set()).add(rollout.id)
        held = {worker: ids for worker, ids in self.held.items() if ids}
        assert held == holders, (held, holders)
        live = {
            rollout_id
            for entry in self._deadlines
            for rollout_id, lease_id in self._leases(entry)
            if (owner := rollouts.get(rollout_id)) is not None and owner.lease and owner.lease.lease_id == lease_id
        }
        assert live == {i for ids in holders.values() for i in ids}, "a lease without a deadline entry"
        unrewarded = {g.id: sum(1 for i in g.rollouts if rollouts[i].reward is None) for g in groups.values()}
        assert self._unrewarded == unrewarded, (self._unrewarded, unrewarded)
        assert self.unfinished == sum(1 for r in rollouts.values() if not r.finished)
        done = {g.id for g in groups.values() if all(rollouts[i].finished for i in g.rollouts)}
        assert self.finished_groups == done, (self.finished_groups, done)
