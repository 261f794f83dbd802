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
