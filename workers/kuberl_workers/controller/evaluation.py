"""Held-out evaluation (spec.eval): eval chunks leased to the rollout pool ahead of training work, scored, summarised.

A round evaluates one policy version: the first `maxPrompts` usable prompts of the eval dataset, `samplesPerPrompt`
completions each, every completion generated whole in one chunk (at most task.maxNewTokens). Eval chunks never
count toward the C3PO++ token budget and are never trained on. Lease ids start with `e` so the controller routes
their results here. A chunk whose lease expires goes back to the queue; one that fails MAX_EVAL_FAILURES times
scores 0 and is counted, so a round always ends.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuberl_workers.config import EVAL_LOG, EvalConfig, TaskConfig
from kuberl_workers.controller.dataset import PromptSet
from kuberl_workers.tokenizer import Tokenizer

log = logging.getLogger(__name__)
EVAL_INDEX_BASE = 1 << 40
"""Built-in generated tasks draw eval prompts from indices training never reaches (it counts up from 0)."""
MAX_EVAL_FAILURES = 3
PASS_REWARD = 1.0
"""A completion passes when its reward is at least this (a correct answer under every built-in reward)."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt from n samples of which c pass: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021,
    "Evaluating Large Language Models Trained on Code", eq. 1). Requires 1 <= k <= n.
    """
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass(eq=False)  # identity: an item is one completion of one round
class Item:
    prompt: int  # position among the eval prompts
    sample: int
    lease: str = ""
    worker: str = ""
    deadline: float = 0.0
    failures: int = 0
    reward: float | None = None
    version: int = 0
    tokens: int = 0


@dataclass
class Round:
    version: int
    items: list[Item]
    started: float
    queue: deque[int] = field(default_factory=deque)  # indices into items, not leased and not done


class Evaluator:
    """One per controller. `due` / `start` open a round; `lease`, `complete`, `fail`, `expire` and `scored` run it;
    the summary of a finished round is appended to `<checkpoint dir>/eval.jsonl` and returned by `scored`.
    """

    def __init__(
        self,
        cfg: EvalConfig,
        task: TaskConfig,
        tokenizer: Tokenizer,
        seed: int,
        final_version: int,
        lease_seconds: float,
        directory: Path,
        on_summary: Callable[[dict[str, Any]], None] = lambda summary: None,
    ) -> None:
        self.cfg, self.seed, self.final_version, self.lease_seconds = cfg, seed, final_version, lease_seconds
        self.max_new_tokens = task.maxNewTokens
        eval_task = task.model_copy(
            update={
                "datasetPath": cfg.datasetPath,
                "datasetBuiltin": cfg.datasetBuiltin,
                "datasetFormat": cfg.datasetFormat,
                "promptField": cfg.promptField,
                "answerField": cfg.answerField,
            }
        )
        self.prompt_set = PromptSet(eval_task, tokenizer, seed)
        # loaded now, so that eval prompts that cannot be used fail the controller's start (ValueError naming the
        # field, as task prompts do) instead of every round
        self.prompts: list[tuple[list[int], str]] = self._load()
        self.on_summary = on_summary
        self.log_path = directory / EVAL_LOG
        self.done: set[int] = {row["policyVersion"] for row in self.rows()}
        self.round: Round | None = None
        self.leases_made = 0

    def rows(self) -> list[dict[str, Any]]:
        """Summaries written so far (a controller restart keeps them; a line cut short by a crash is skipped)."""
        if not self.log_path.is_file():
            return []
        rows = []
        for line in self.log_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows

    def _load(self) -> list[tuple[list[int], str]]:
        base = EVAL_INDEX_BASE if self.cfg.datasetBuiltin else 0
        found: list[tuple[list[int], str]] = []
        self.indices: list[int] = []  # prompt set index of each of found: its dataset row, for the rewards
        index = 0
        limit = self.prompt_set.max_skips + self.cfg.maxPrompts  # the PromptSet's own bound raises before this
        try:
            while len(found) < self.cfg.maxPrompts and index < limit:
                prompt = self.prompt_set(base + index)
                index += 1
                if prompt is not None:
                    found.append(prompt)
                    self.indices.append(base + index - 1)
                if self.cfg.datasetPath and index >= self.prompt_set.max_skips:
                    break  # a file has no more prompts than its rows
        except ValueError as error:
            raise ValueError(f"eval.dataset: {error}") from None
        if not found:
            raise ValueError(f"eval.dataset: none of its {index} prompts fits in task.maxPromptTokens")
        return found

    @property
    def busy(self) -> bool:
        return self.round is not None

    def due(self, version: int) -> bool:
        wanted = version % self.cfg.everySteps == 0 or version == self.final_version
        return wanted and version not in self.done and self.round is None

    def start(self, version: int, now: float) -> None:
        n = self.cfg.samplesPerPrompt
        items = [Item(prompt=p, sample=s) for p in range(len(self.prompts)) for s in range(n)]
        self.round = Round(version=version, items=items, started=now, queue=deque(range(len(items))))
        log.info("eval of policy version %d: %d prompts x %d samples", version, len(self.prompts), n)

    def lease(self, worker: str, max_chunks: int, version: int, now: float) -> list[dict[str, Any]]:
        """Up to `max_chunks` eval chunks for `worker`, which serves `version`."""
        r = self.round
        if r is None:
            return []
        chunks: list[dict[str, Any]] = []
        while r.queue and len(chunks) < max_chunks:
            position = r.queue.popleft()
            item = r.items[position]
            self.leases_made += 1  # a counter, not the clock: two leases in one millisecond must differ
            item.lease = f"e{r.version}-{position}-{item.failures}-{self.leases_made}"
            item.worker, item.deadline = worker, now + self.lease_seconds
            prompt_ids, _ = self.prompts[item.prompt]
            chunks.append(
                {
                    "leaseId": item.lease,
                    "rolloutId": -1 - position,
                    "promptIds": prompt_ids,
                    "outputIds": [],
                    "maxTokens": self.max_new_tokens,
                    "version": version,
                    "seed": (self.seed * 1_000_003 + r.version * 65_537 + position) % (1 << 31),
                }
            )
        return chunks

    def _leased(self, lease_id: str, worker: str) -> Item | None:
        r = self.round
        if r is None or not lease_id.startswith(f"e{r.version}-"):
            return None
        try:
            position = int(lease_id.split("-")[1])
        except (IndexError, ValueError):
            return None
        item = r.items[position] if 0 <= position < len(r.items) else None
        if item is None or item.lease != lease_id or item.worker != worker or item.reward is not None:
            return None
        return item

    def complete(self, worker: str, lease_id: str, version: int) -> Item | None:
        """The item a result finishes, to be scored; None for a stale or unknown lease (the result is dropped)."""
        item = self._leased(lease_id, worker)
        if item is None:
            return None
        item.lease, item.version = "", version
        return item

    def fail(self, worker: str, lease_id: str, reason: str) -> bool:
        item = self._leased(lease_id, worker)
        if item is None or self.round is None:
            return False
        item.lease, item.failures = "", item.failures + 1
        if item.failures >= MAX_EVAL_FAILURES:
            log.warning("eval prompt %d failed %d times (%s): scored 0", item.prompt, item.failures, reason)
            self.scored(item, 0.0)
        else:
            self.round.queue.append(self.round.items.index(item))
        return True

    def release(self, worker: str, lease_id: str) -> bool:
        """A draining worker hands an eval chunk back unfinished: it returns to the queue (not a failure)."""
        item = self._leased(lease_id, worker)
        if item is None or self.round is None:
            return False
        item.lease = ""
        self.round.queue.append(self.round.items.index(item))
        return True

    def held_by(self, worker: str) -> int:
        """Eval leases `worker` holds now."""
        return 0 if self.round is None else sum(1 for i in self.round.items if i.lease and i.worker == worker)

    def release_worker(self, worker: str) -> int:
        """A worker is gone: its eval leases go back to the queue."""
        r = self.round
        if r is None:
            return 0
        back = [i for i, item in enumerate(r.items) if item.lease and item.worker == worker]
        for position in back:
            r.items[position].lease = ""
            r.queue.append(position)
        return len(back)

    def expire(self, now: float) -> int:
        r = self.round
        if r is None:
            return 0
        late = [i for i, item in enumerate(r.items) if item.lease and item.deadline < now]
        for position in late:
            r.items[position].lease = ""
            r.queue.append(position)
        return len(late)

    def scored(self, item: Item, reward: float) -> dict[str, Any] | None:
        """Record a reward; when it was the round's last, write and return the round's summary."""
        r = self.round
        if r is None or not any(i is item for i in r.items):
            return None
        item.reward = reward
        if any(i.reward is None for i in r.items):
            return None
        summary = self._summary(r, time.time())
        self.round = None
        self.done.add(r.version)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(summary, sort_keys=True) + "\n")
        log.info("eval of policy version %d: %s", r.version, summary)
        self.on_summary(summary)
        return summary

    def _summary(self, r: Round, wall: float) -> dict[str, Any]:
        n = self.cfg.samplesPerPrompt
        by_prompt: dict[int, list[float]] = {}
        for item in r.items:
            by_prompt.setdefault(item.prompt, []).append(item.reward or 0.0)
        rewards = [item.reward or 0.0 for item in r.items]
        passes = [sum(1 for x in scores if x >= PASS_REWARD) for scores in by_prompt.values()]
        return {
            "policyVersion": r.version,
            "prompts": len(by_prompt),
            "samplesPerPrompt": n,
            "rewardMean": statistics.fmean(rewards) if rewards else 0.0,
            "passAt1": statistics.fmean(pass_at_k(n, c, 1) for c in passes) if passes else 0.0,
            f"passAt{n}": statistics.fmean(pass_at_k(n, c, n) for c in passes) if passes else 0.0,
            "completionTokensMean": statistics.fmean(i.tokens for i in r.items) if r.items else 0.0,
            "failed": sum(1 for i in r.items if i.failures >= MAX_EVAL_FAILURES),
            "policyVersionsUsed": sorted({i.version for i in r.items}),
            "wallTime": wall,
        }
