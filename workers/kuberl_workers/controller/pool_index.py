"""Indexes over the scheduler's inference pool, so that a lease, a completion and an expiry cost O(log n), not a scan.

At cluster scale (Omega = 4096 rollouts in flight, 256 replicas) a scan of the pool per lease and per completion
cost more than the step it schedules (docs/benchmarks.md). The scheduler keeps its rollouts and groups as before and
tells this index every change; the index answers the questions the hot paths ask:

- the next chunks to lease: the unleased, unfinished rollouts with the fewest chunks, then the oldest (a binary heap
  of one int per entry, chunks << ID_BITS | id, with lazy deletion: a popped entry counts only if it is still the
  rollout's current key; ints compare several times faster than tuples, and a lease takes its k chunks in one call);
- the leases a worker holds (a set per worker), and the leases past their deadline (a heap of deadlines, lazily
  checked against the rollout's current lease, compacted when stale entries outnumber live ones);
- how many rollouts are in flight, whether some group has all its rollouts finished, and whether all are rewarded
  (counts per group).

`check(rollouts, groups)` recomputes everything by scanning, for tests.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping

from kuberl_workers.controller.state import Group, Rollout

ID_BITS = 40
"""Rollout ids below 2**40 (a trillion) share a heap entry with their chunk count."""
ID_MASK = (1 << ID_BITS) - 1


class PoolIndex:
    def __init__(self) -> None:
        self._todo_heap: list[int] = []
        self._todo: dict[int, int] = {}  # rollout id -> its key in the heap, while it waits for a lease
        self.held: dict[str, set[int]] = {}  # worker -> ids of the rollouts it holds a lease on
        self._deadlines: list[tuple[float, str, int]] = []  # (deadline, lease id, rollout id)
        self._leases = 0  # leases held now (the live entries of _deadlines)
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
        if len(self._todo_heap) > 2 * len(self._todo) + 1024:  # bound the stale entries
            self._todo_heap = sorted(self._todo.values())

    def unqueue(self, rollout_id: int) -> None:
        self._todo.pop(rollout_id, None)

    def take(self, count: int) -> list[int]:
        """Up to `count` ids of the least-advanced (then oldest) rollouts waiting for a lease, removed from the
        queue, in that order.
        """
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

    def leased(self, worker: str, leases: list[tuple[float, str, int]]) -> None:
        """`worker` holds these leases now: (deadline, lease id, rollout id) each."""
        held = self.held.get(worker)
        if held is None:
            held = self.held[worker] = set()
        push, deadlines = heapq.heappush, self._deadlines
        for entry in leases:
            held.add(entry[2])
            push(deadlines, entry)
        self._leases += len(leases)

    def unleased(self, rollout_id: int, worker: str) -> None:
        held = self.held.get(worker)
        if held is not None and rollout_id in held:
            held.remove(rollout_id)
            self._leases -= 1
            if not held:
                del self.held[worker]

    def held_by(self, worker: str) -> int:
        return len(self.held.get(worker, ()))

    def due(self, now: float) -> Iterable[tuple[str, int]]:
        """(lease id, rollout id) of every lease entry whose deadline is <= now, removed; the caller checks that
        it is still the rollout's current lease.
        """
        while self._deadlines and self._deadlines[0][0] <= now:
            _, lease_id, rollout_id = heapq.heappop(self._deadlines)
            yield lease_id, rollout_id

    def compact_deadlines(self, current: Callable[[int, str], bool]) -> None:
        """Drop deadline entries of leases that ended (`current(rollout id, lease id)` is False), once they
        outnumber the live ones: a completed lease leaves its entry behind until its deadline, and thousands of
        chunks a second within a lease period would otherwise pile up.
        """
        if len(self._deadlines) > 2 * self._leases + 4096:
            self._deadlines = [e for e in self._deadlines if current(e[2], e[1])]
            heapq.heapify(self._deadlines)

    # --- groups and rollouts ----------------------------------------------------------------------------------

    def admitted(self, group: Group, rollouts: Iterable[Rollout]) -> None:
        size = len(group.rollouts)
        self._left[group.id] = self._unrewarded[group.id] = size
        self.unfinished += size
        for rollout in rollouts:
            self.queue(rollout)

    def finished(self, rollout: Rollout) -> None:
        """`rollout` (just completed, lease cleared) has finished."""
        self.unfinished -= 1
        self._left[rollout.group] -= 1
        if self._left[rollout.group] == 0:
            self.finished_groups.add(rollout.group)

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
        assert self.held == holders, (self.held, holders)
        assert self._leases == sum(len(ids) for ids in holders.values()), (self._leases, holders)
        unrewarded = {g.id: sum(1 for i in g.rollouts if rollouts[i].reward is None) for g in groups.values()}
        assert self._unrewarded == unrewarded, (self._unrewarded, unrewarded)
        assert self.unfinished == sum(1 for r in rollouts.values() if not r.finished)
        done = {g.id for g in groups.values() if all(rollouts[i].finished for i in g.rollouts)}
        assert self.finished_groups == done, (self.finished_groups, done)
