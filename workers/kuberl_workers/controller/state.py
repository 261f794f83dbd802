"""The controller's data: rollouts with per-token logprobs and versions, GRPO groups, leases, trained batches, and the
scheduler's config, per-worker state and counters.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, TypeVar

FINISH_REASONS = ("stop", "length")
T = TypeVar("T")


def _flat(parts: Iterable[tuple[T, ...]]) -> list[T]:
    out: list[T] = []
    for part in parts:
        out += part
    return out


Piece = tuple[tuple[int, ...], tuple[float, ...], int]
"""One accepted chunk of a rollout: (token ids, their logprobs, the policy version that generated them)."""


@dataclass(slots=True)
class Rollout:
    """One completion of a prompt, growing chunk by chunk, possibly across policy versions.

    Its tokens are kept as the accepted chunks (`pieces`), not as flat lists: appending a chunk is O(1), where
    extending three lists of up to maxNewTokens reallocated and copied them on most chunks, and tuples of numbers
    are not tracked by CPython's cyclic garbage collector, which visited every token of every list of the pool at
    each collection (together half the scheduler's time at Omega = 4096; docs/benchmarks.md). `output_ids`,
    `logprobs` and `versions` give the flat per-token lists (a copy each time).
    """

    id: int
    group: int
    sample: int
    prompt_ids: list[int]
    pieces: list[Piece] = field(default_factory=list)
    """Accepted chunks in order; only ever appended to (a leased chunk's context is a prefix of it)."""
    length: int = 0
    """Tokens generated so far (the pieces' total)."""
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
    lease: ChunkRequest | None = None
    """The chunk leased now (its `worker` holds it), or None."""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    # extending a list by whole tuples runs in C at a few ns a token (4x faster than itertools.chain)
    @property
    def output_ids(self) -> list[int]:
        return _flat(piece[0] for piece in self.pieces)

    @property
    def logprobs(self) -> list[float]:
        return _flat(piece[1] for piece in self.pieces)

    @property
    def versions(self) -> list[int]:
        """The policy version of each token."""
        out: list[int] = []
        for tokens, _, version in self.pieces:
            out += [version] * len(tokens)
        return out

    @property
    def first_version(self) -> int | None:
        """The version of its oldest token (None before the first chunk)."""
        return self.pieces[0][2] if self.pieces else None

    @property
    def last_version(self) -> int | None:
        return self.pieces[-1][2] if self.pieces else None

    def add(self, token_ids: list[int], logprobs: list[float], version: int) -> None:
        """Append one accepted chunk."""
        self.pieces.append((tuple(token_ids), tuple(logprobs), version))
        self.length += len(token_ids)

    def to_json(self) -> dict[str, Any]:
        """The checkpoint form: flat per-token lists (leases do not survive a restart: their work returns to the
        queue).
        """
        out: dict[str, Any] = {name: getattr(self, name) for name in self.__slots__ if name not in _DERIVED}
        out.update(prompt_ids=list(self.prompt_ids), scores=dict(self.scores))
        out.update(output_ids=self.output_ids, logprobs=self.logprobs, versions=self.versions)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rollout:
        data = dict(data)
        tokens, logprobs, versions = data.pop("output_ids"), data.pop("logprobs"), data.pop("versions")
        for name in _DERIVED:  # derived from the tokens below, or not kept ("age": see Group.born)
            data.pop(name, None)
        rollout = cls(**data)
        start = 0
        for end in range(1, len(tokens) + 1):  # one piece per run of equal versions
            if end == len(tokens) or versions[end] != versions[start]:
                rollout.add(tokens[start:end], logprobs[start:end], versions[start])
                start = end
        return rollout


def batch_group(group: Group, members: list[Rollout]) -> dict[str, Any]:
    """A trained group as the batch carries it to the trainers (docs/protocol.md): flat per-token lists."""
    return {
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


_DERIVED = ("pieces", "length", "lease", "age")
"""Rollout fields not kept as they are (`age`: the checkpoint's, from which restore derives Group.born)."""


@dataclass(slots=True)
class Group:
    """The G samples of one prompt; it enters the training pool only when all are finished and rewarded."""

    id: int
    prompt_index: int
    answer: str
    rollouts: list[int]
    requeued: bool = False
    """This group re-runs a prompt whose first group was purged (a second purge drops the prompt)."""
    born: int = 0
    """The scheduler's publish count when the group was admitted: an unfinished rollout's age (policy updates it
    has lived through unfinished, the C3PO++ retention period) is the publishes since, as all G start together."""
    first_version: int | None = None
    """The policy version of the group's oldest token (None before its first chunk)."""

    def to_json(self) -> dict[str, Any]:
        """The checkpoint form, without `born` and `first_version` (controller/scheduler_state.py)."""
        return {k: v for k, v in asdict(self).items() if k not in ("born", "first_version")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Group:
        return cls(**data)


class ChunkRequest(NamedTuple):
    """A lease: up to `max_tokens` more tokens of one rollout, asked of the rollout worker `worker`.

    A named tuple, not a dataclass: the scheduler builds one per chunk, thousands a second at cluster scale, and a
    tuple is built in half the time (Scheduler.lease builds it with tuple.__new__, skipping even the argument
    parsing of the generated constructor).
    """

    lease_id: str
    rollout_id: int
    prompt_ids: list[int]
    pieces: list[Piece]
    """The rollout's own list of accepted chunks, not a copy: it is only ever appended to, so its first
    `piece_count` are this chunk's context however far the rollout has grown since (a lease copies no tokens)."""
    piece_count: int
    output_len: int
    """Tokens in that context."""
    max_tokens: int
    version: int
    seed: int
    worker: str

    @property
    def output_ids(self) -> list[int]:
        """The rollout's tokens when the chunk was leased (a copy)."""
        return _flat(piece[0] for piece in self.pieces[: self.piece_count])

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
