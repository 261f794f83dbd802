"""Where each rollout engine fetches a new policy version from: a fan-out tree of engines relaying it to engines.

Without a shared volume the published weights are served over HTTP by trainer rank 0 (`weightsUri`). With every
engine pulling from there, one pod sends the whole model once per engine per version: at 7B in bf16 and 32
engines, ~450 GB through one pod per step, and a sync time that grows with the pool. Instead the engines that ask
for a version are placed, in the order they ask, in a tree whose root is the trainer: the trainer serves the first
FANOUT engines, each engine serves the next FANOUT, and so on. An engine serves a version while it still
downloads it (rollout/relay.py streams from the growing file), so the time of a sync is about one transfer plus a
per-hop latency: flat as the pool grows, and the trainer sends the model FANOUT times per version while no engine
fails (an engine that dies midway sends its subtree to their next sources).

The pool is elastic, so the tree is only a preference: an engine is given its ancestors (nearest first) that are
still alive, then the trainer; it falls back along that list when a source fails or is gone. A joining engine just
takes the next place in the current version's tree. Versions are independent trees (kept for the newest two).

Design notes (how the peers do it): OpenRLHF and slime broadcast the weights bucket by bucket over an NCCL group
that joins the trainer with the engines; verl's checkpoint engine does the same over NCCL, NIXL or Mooncake. A
collective needs a fixed membership per sync (a group re-formed whenever engines come or go) and, on CPU (gloo),
sends linearly from the root; the HTTP tree needs neither and runs everywhere kuberl does, so it is the transport
here. A GPU cluster with RDMA would add an NCCL transport behind the same `weightsSources` reply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

FANOUT = 2
"""Engines each source (the trainer or an engine) serves a version to."""


@dataclass
class RelayTree:
    """The per-version trees. `relay_url(address, version)` is an engine's URL for a version it relays."""

    relay_url: Callable[[str, int], str]
    fanout: int = FANOUT
    order: dict[int, list[str]] = field(default_factory=dict)  # version -> engines in the order they asked

    def sources(
        self, worker: str, version: int, trainer_uri: str, address_of: Callable[[str], str | None]
    ) -> list[str]:
        """The URLs `worker` should try for `version`, in order: its ancestors that are alive (address_of gives
        their address; None for an engine that is gone), nearest first, then `trainer_uri`.
        """
        placed = self.order.setdefault(version, [])
        for old in [v for v in self.order if v < version - 1]:
            del self.order[old]
        if worker not in placed:
            placed.append(worker)
        out = []
        position = placed.index(worker)
        while position >= self.fanout:  # the trainer serves positions 0 .. fanout-1
            position = (position - self.fanout) // self.fanout
            address = address_of(placed[position])
            if address:
                out.append(self.relay_url(address, version))
        return [*out, trainer_uri]
