"""Samples a person can read: a few (prompt, completion, reward, finish reason, versions) records per step."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from kuberl_workers.tokenizer import Tokenizer

log = logging.getLogger("kuberl.samples")
SAMPLES_PER_STEP = 4
"""Records kept per step: the best and the worst completion of the first two groups of the batch."""
KEPT_STEPS = 200
MAX_CHARS = 4000


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def pick(step: int, groups: list[dict[str, Any]], tokenizer: Tokenizer) -> list[dict[str, Any]]:
    """Up to SAMPLES_PER_STEP records of a closed batch; `step` is the policy version it trains (1-based)."""
    records: list[dict[str, Any]] = []
    for group in groups[: SAMPLES_PER_STEP // 2]:
        ranked = sorted(group["rollouts"], key=lambda r: r["reward"], reverse=True)
        chosen = [ranked[0], *([ranked[-1]] if ranked[-1] is not ranked[0] else [])]
        prompt = tokenizer.decode(group["promptIds"])
        for rollout in chosen:
            records.append(
                {
                    "step": step,
                    "promptIndex": group["promptIndex"],
                    "prompt": _clip(prompt),
                    "completion": _clip(tokenizer.decode(rollout["outputIds"])),
                    "answer": group["answer"],
                    "reward": rollout["reward"],
                    "finishReason": rollout["finishReason"],
                    "versions": sorted(set(rollout["versions"])),
                    "completionTokens": len(rollout["outputIds"]),
                }
            )
    return records


class SampleLog:
    """The newest KEPT_STEPS steps' samples, for GET /v1/samples; each step's first one is also logged (so that
    `kubectl logs` of the controller pod shows what the model writes).
    """

    def __init__(self) -> None:
        self.records: deque[dict[str, Any]] = deque(maxlen=KEPT_STEPS * SAMPLES_PER_STEP)

    def add(self, records: list[dict[str, Any]]) -> None:
        self.records.extend(records)
        if records:
            first = records[0]
            log.info(
                "sample step %d reward %.3f (%s, %d tokens): %r -> %r",
                first["step"],
                first["reward"],
                first["finishReason"],
                first["completionTokens"],
                first["prompt"][-200:],
                first["completion"][:400],
            )

    def since(self, step: int) -> list[dict[str, Any]]:
        return [r for r in self.records if r["step"] >= step]
