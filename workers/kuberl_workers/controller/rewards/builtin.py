"""`builtin` rewards: the controller's rules (rules.py), each call in a reward process under the timeout."""

from __future__ import annotations

from kuberl_workers.controller.rewards.base import RewardInput, Scored, Scorer, register
from kuberl_workers.controller.rewards.rules import REGISTRY, RewardFn


@register
class BuiltinScorer(Scorer):
    kind = "builtin"
    rule: RewardFn | None = None  # a test may put its own rule here (Controller(reward=...))

    async def score(self, item: RewardInput) -> Scored:
        rule = self.rule or REGISTRY[self.cfg.builtin or self.cfg.name]
        value, failure = await self.pool.score(rule, item.completion, item.answer)
        return Scored(value, failure=failure)
