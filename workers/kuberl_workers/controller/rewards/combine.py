"""task.rewards as one reward: every configured reward scored concurrently, combined by weight."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

from kuberl_workers.config import Limits, RewardConfig
from kuberl_workers.controller.rewards.base import KINDS, RewardInput, Scored, Scorer
from kuberl_workers.controller.rewards.builtin import BuiltinScorer
from kuberl_workers.controller.rewards.pool import RewardPool
from kuberl_workers.controller.rewards.rules import RewardFn

Observer = Callable[[str, float, str | None], None]
"""Called after each reward of each completion: (reward name, seconds, failure reason or None)."""


class RewardSet:
    """reward(item) = sum over rewards of weight x score. A reward that fails scores 0 for that item only; its
    reason is counted in `failures[(name, reason)]`. `rule` replaces every reward by one rule (tests).
    """

    def __init__(
        self,
        rewards: tuple[RewardConfig, ...],
        limits: Limits,
        rule: RewardFn | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.pool = RewardPool(limits.rewardProcesses, limits.rewardTimeoutSeconds)
        if rule is not None:
            rewards = (RewardConfig(name="reward", kind="builtin", builtin="numeric"),)
        self.scorers: list[Scorer] = [KINDS[cfg.kind](cfg, self.pool, limits) for cfg in rewards]
        if rule is not None:
            assert isinstance(self.scorers[0], BuiltinScorer)
            self.scorers[0].rule = rule
        self.names = [s.cfg.name for s in self.scorers]
        self.failures: Counter[tuple[str, str]] = Counter()
        self.observe = observe

    async def _one(self, scorer: Scorer, item: RewardInput) -> Scored:
        started = time.monotonic()
        try:
            result = await scorer.score(item)
        except Exception as error:  # a scorer's own bug costs this item's score, not the controller
            result = Scored(0.0, failure=f"error:{type(error).__name__}")
        if result.failure:
            self.failures[(scorer.cfg.name, result.failure)] += 1
        if self.observe is not None:
            self.observe(scorer.cfg.name, time.monotonic() - started, result.failure)
        return result

    async def score(self, item: RewardInput) -> Scored:
        """The weighted reward, with each reward's score (and its named sub-scores as `name/part`) in `parts`;
        `failure` is the first failing reward's `name:reason`.
        """
        results = await asyncio.gather(*(self._one(s, item) for s in self.scorers))
        total, parts, failure = 0.0, {}, None
        for scorer, result in zip(self.scorers, results, strict=True):
            name = scorer.cfg.name
            total += scorer.cfg.weight * result.value
            parts[name] = result.value
            parts.update({f"{name}/{key}": value for key, value in result.parts.items()})
            if result.failure and failure is None:
                failure = f"{name}:{result.failure}"
        return Scored(total, parts, failure)

    async def close(self) -> None:
        for scorer in self.scorers:
            await scorer.close()
        self.pool.close()
