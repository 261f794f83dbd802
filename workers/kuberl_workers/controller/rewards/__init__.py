"""Rewards: built-in rules, Python functions, remote services and sandboxed code behind one interface
(base.Scorer, registered by kind), combined by weight (combine.RewardSet), run off the event loop (pool.py).
"""

from kuberl_workers.controller.rewards import builtin, code, python_fn, remote  # noqa: F401  (register the kinds)
from kuberl_workers.controller.rewards.base import KINDS, RewardInput, Scored, Scorer, normalize
from kuberl_workers.controller.rewards.combine import RewardSet
from kuberl_workers.controller.rewards.pool import RewardPool
from kuberl_workers.controller.rewards.rules import (
    REGISTRY,
    RewardFn,
    exact_match,
    format_reward,
    math_reward,
    numeric,
    parse_number,
)

__all__ = [
    "KINDS",
    "REGISTRY",
    "RewardFn",
    "RewardInput",
    "RewardPool",
    "RewardSet",
    "Scored",
    "Scorer",
    "exact_match",
    "format_reward",
    "math_reward",
    "normalize",
    "numeric",
    "parse_number",
]
