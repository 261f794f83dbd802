"""The controller's data: rollouts with per-token logprobs and versions, GRPO groups, leases, trained batches."""

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
