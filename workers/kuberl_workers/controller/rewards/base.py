"""The reward interface: what a reward is given (RewardInput), what it returns (Scored), and the kinds' registry."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kuberl_workers.config import Limits, RewardConfig
from kuberl_workers.controller.rewards.pool import RewardPool


@dataclass(frozen=True)
class RewardInput:
    """One completion to score. `prompt` is the dataset's prompt (a string or chat messages), `completion` the
    decoded text, `answer` the reference answer, `row` the whole dataset row (JSON values).
    """

    prompt: Any
    completion: str
    answer: str
    row: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completion": self.completion, "answer": self.answer, "row": self.row}


@dataclass
class Scored:
    """A reward's result: `value` (0 on failure), named sub-scores, and why it failed (None when it did not)."""

    value: float
    parts: dict[str, float] = field(default_factory=dict)
    failure: str | None = None


class BadRewardValue(ValueError):
    """A reward returned something that is not a finite number or a dict of them; `reason` is the counted kind."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRewardValue("type", f"{what} is a {type(value).__name__}, not a number")
    number = float(value)
    if not math.isfinite(number):
        raise BadRewardValue("nan", f"{what} is not finite: {number}")
    return number


def normalize(raw: Any) -> tuple[float, dict[str, float]]:
    """A reward's return value -> (reward, named parts). A number is the reward; a dict maps names to numbers and
    its reward is its `score` key when present, else the sum of its values (verl's and TRL's conventions).
    Raises BadRewardValue (reason `type` or `nan`) for anything else.
    """
    if not isinstance(raw, dict):
        return _finite(raw, "the reward"), {}
    if not raw or not all(isinstance(key, str) for key in raw):
        raise BadRewardValue("type", "a dict reward needs at least one score, keyed by strings")
    parts = {key: _finite(value, f"score {key!r}") for key, value in raw.items()}
    total = parts.pop("score") if "score" in parts else sum(parts.values())
    return total, parts


class Scorer(ABC):
    """One reward of task.rewards. `score` never raises: a failure is Scored(0, failure=<reason>)."""

    kind: ClassVar[str]

    def __init__(self, cfg: RewardConfig, pool: RewardPool, limits: Limits) -> None:
        self.cfg = cfg
        self.pool = pool
        self.limits = limits

    @abstractmethod
    async def score(self, item: RewardInput) -> Scored: ...

    async def close(self) -> None:  # noqa: B027 (most kinds hold nothing of their own)
        """Release what the scorer holds (connections); the pool is closed by its owner."""


KINDS: dict[str, type[Scorer]] = {}


def register(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make `cls` the scorer of its `kind`."""
    KINDS[cls.kind] = cls
    return cls
