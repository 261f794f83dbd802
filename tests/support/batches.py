"""Synthetic training batches in the controller's wire format."""

from __future__ import annotations

import random
from typing import Any


def synthetic_batch(step: int, groups: int = 4, group_size: int = 4, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed * 1000 + step)
    out = []
    for g in range(groups):
        prompt = [256, *(rng.randrange(48, 58) for _ in range(4)), 61]
        rollouts = []
        for i in range(group_size):
            length = rng.randint(2, 9)
            rollouts.append(
                {
                    "outputIds": [rng.randrange(0, 256) for _ in range(length)],
                    "logprobs": [-5.5 + rng.uniform(-0.3, 0.3) for _ in range(length)],
                    "versions": [step] * length,
                    "reward": float((g + i) % 2),
                    "finishReason": "stop",
                }
            )
        out.append({"promptIndex": step * groups + g, "answer": "1", "promptIds": prompt, "rollouts": rollouts})
    return {"step": step, "groups": out}


def algo(**overrides: Any) -> Any:
    """An AlgorithmConfig for trainer tests: GRPO + IcePop at a step size a tiny model moves under."""
    from kuberl_workers.config import AlgorithmConfig

    base: dict[str, Any] = {
        "icepopEnabled": True,
        "icepopAlpha": 0.5,
        "icepopBeta": 5.0,
        "clipEpsilon": 0.2,
        "klCoef": 0.0,
        "learningRate": 1e-3,
        "weightDecay": 0.01,
        "maxGradNorm": 1.0,
        "steps": 10,
    }
    return AlgorithmConfig(**{**base, **overrides})
