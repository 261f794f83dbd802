"""The per-step statistics of a closed batch: one history entry (metrics.jsonl, TensorBoard, /v1/history)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from kuberl_workers.controller.scheduler import Batch


def rollout_stats(batch: Batch, purged: int, rollout_seconds: float) -> dict[str, Any]:
    """The rollout side of a step's history entry: rewards, lengths (in tokens), truncation, groups without signal,
    how many policy versions a rollout spans (C3PO++), the oldest version in the batch, and `purged`, the rollouts
    purged since the previous step. `step` is 1-based (the policy version the batch trains).
    """
    rollouts = [r for g in batch.groups for r in g["rollouts"]]
    rewards = [r["reward"] for r in rollouts]
    lengths = [len(r["outputIds"]) for r in rollouts]
    versions = [r["versions"] for r in rollouts if r["versions"]]
    return {
        "step": batch.step + 1,
        "rewardMean": statistics.fmean(rewards) if rewards else 0.0,
        "rewardStd": statistics.pstdev(rewards) if rewards else 0.0,
        "groups": len(batch.groups),
        "tokens": batch.tokens,
        "completions": len(lengths),
        "completionTokensMean": statistics.fmean(lengths) if lengths else 0.0,
        "completionTokensMax": max(lengths, default=0),
        "truncatedFraction": sum(1 for r in rollouts if r["finishReason"] == "length") / max(len(lengths), 1),
        "zeroAdvantageGroups": zero_advantage_groups(batch),
        "policyVersionsSpannedMax": max((len(set(v)) for v in versions), default=0),
        "oldestPolicyVersion": min((min(v) for v in versions), default=batch.step),
        "rolloutsPurged": purged,
        "scores": score_means(rollouts),
        "rolloutSeconds": rollout_seconds,
        "wallClosed": time.time(),
    }


def score_means(rollouts: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of each named score (task.rewards) over the batch's rollouts."""
    values: dict[str, list[float]] = {}
    for rollout in rollouts:
        for name, value in (rollout.get("scores") or {}).items():
            values.setdefault(name, []).append(value)
    return {name: statistics.fmean(v) for name, v in sorted(values.items())}


def zero_advantage_groups(batch: Batch) -> int:
    """Groups whose rewards are all equal: their GRPO advantages are 0 and they teach nothing."""
    return sum(1 for g in batch.groups if len({r["reward"] for r in g["rollouts"]}) == 1)
