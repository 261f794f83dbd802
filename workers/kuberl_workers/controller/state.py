"""The controller's data: rollouts with per-token logprobs and versions, GRPO groups, leases, trained batches, and the
scheduler's config, per-worker state and counters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

FINISH_REASONS = ("stop", "length")


@dataclass(slots=True)
class Lease:
    """A chunk of one rollout handed to one worker until `deadline` (monotonic seconds)."""

    id: str
    worker: str
    deadline: float
    started: float


@dataclass
class Rollout:
    """One completion of a prompt, growing chunk by chunk, possibly across policy versions."""

    id: int
    group: int
    sample: int
    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    age: int = 0
    """Policy updates this rollout has lived through while unfinished (C3PO++ retention period)."""
    chunks: int = 0
    """Chunks accepted so far; part of each lease id and of the engine's sampling seed."""
    finish_reason: str | None = None
    reward: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    """Each reward's score of task.rewards (and `name/part` sub-scores); `reward` is their weighted sum."""
    finished_in_step: int | None = None
    """The step whose token budget C this rollout's length was added to (when it finished)."""
    failures: int = 0
    """Chunks of this rollout that failed (the engine refused them, or their result was invalid)."""
    lease: Lease | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("lease")  # leases do not survive a restart: their work returns to the queue
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rollout:
        return cls(**data)


@dataclass
class Group:
    """The G samples of one prompt; it enters the training pool only when all are finished and rewarded."""

    id: int
    prompt_index: int
    answer: str
    rollouts: list[int]
    requeued: bool = False
    """This group re-runs a prompt whose first group was purged (a second purge drops the prompt)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Group:
        return cls(**data)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 4x to build, and the scheduler builds one per chunk
class ChunkRequest:
    """What a rollout worker is asked to generate: up to `max_tokens` more tokens of one rollout."""

    lease_id: str
    rollout_id: int
    prompt_ids: list[int]
    output_ids: list[int]
    max_tokens: int
    version: int
    seed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "leaseId": self.lease_id,
            "rolloutId": self.rollout_id,
            "promptIds": self.prompt_ids,
            "outputIds": self.output_ids,
            "maxTokens": self.max_tokens,
            "version": self.version,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class SchedulerConfig:
    token_budget: int
    retention: int | None  # None: automatic (controller/retention.py), between 1 and max_retention
    pool_capacity: int
    chunk_tokens: int
    group_size: int
    prompts_per_step: int
    max_new_tokens: int
    lease_seconds: float
    seed: int = 0
    max_purged_share: float = 0.05  # automatic retention only
    max_retention: int = 8  # automatic retention only


@dataclass
class WorkerState:
    """What the scheduler knows of one rollout worker."""

    tokens_per_second: float | None = None
    draining: bool = False


@dataclass
class Counters:
    """Monotonic event counts, exported as metrics."""

    leases_requeued: int = 0
    leases_rejected: int = 0
    rollouts_purged: int = 0
    prompts_requeued: int = 0
    prompts_dropped: int = 0
    tokens_generated: int = 0
    chunks_failed: int = 0
    prompts_failed: int = 0
    tokens_purged: int = 0


@dataclass
class Batch:
    """One training step's data: whole groups, each rollout with per-token logprobs and versions."""

    step: int
    groups: list[dict[str, Any]]

    @property
    def tokens(self) -> int:
        return sum(len(r["outputIds"]) for g in self.groups for r in g["rollouts"])


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
