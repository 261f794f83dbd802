"""A scripted rollout engine and an event loop that drives the real Scheduler without HTTP or vLLM."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kuberl_workers.controller.scheduler import Batch, Scheduler, SchedulerConfig


def lengths_long_tail(seed: int, max_new: int) -> dict[tuple[int, int], int]:
    """Test-chosen completion lengths, (prompt index, sample) -> tokens: mostly short, a few hit the cap."""
    rng = random.Random(seed)
    table: dict[tuple[int, int], int] = {}
    for prompt in range(2000):
        for sample in range(16):
            table[prompt, sample] = min(max_new, max(1, int(rng.lognormvariate(2.0, 0.9))))
    return table


def source(index: int) -> tuple[list[int], str]:
    return [1000 + index % 97, 7], str(index)


@dataclass
class ScriptedEngine:
    """Emits token `prompt_index*100 + position` so that tests can tell which tokens belong where."""

    lengths: dict[tuple[int, int], int]
    scheduler: Scheduler

    def generate(self, rollout_id: int, output_len: int, max_tokens: int) -> tuple[list[int], str | None]:
        rollout = self.scheduler.rollouts[rollout_id]
        prompt_index = self.scheduler.groups[rollout.group].prompt_index
        target = self.lengths[prompt_index, rollout.sample]
        n = min(max_tokens, target - output_len)
        tokens = [prompt_index * 100 + output_len + i for i in range(n)]
        return tokens, ("stop" if output_len + n >= target else None)


@dataclass
class Run:
    batches: list[Batch] = field(default_factory=list)
    chunk_calls: int = 0


def reward_of(output: list[int]) -> float:
    return float(len(output) % 3 == 0)


def drive(
    sched: Scheduler, lengths: dict[tuple[int, int], int], steps: int, workers: int = 2, per_lease: int = 1000
) -> Run:
    """Round-robin workers lease, generate and complete until `steps` batches are trained."""
    engine = ScriptedEngine(lengths, sched)
    run = Run()
    now = 0.0
    while len(run.batches) < steps:
        progressed = False
        for w in range(workers):
            now += 1.0
            for chunk in sched.lease(f"w{w}", per_lease, now):
                tokens, finish = engine.generate(chunk.rollout_id, chunk.output_len, chunk.max_tokens)
                rollout = sched.complete(f"w{w}", chunk.lease_id, tokens, [-0.5] * len(tokens), finish, chunk.version)
                run.chunk_calls += 1
                progressed = True
                if rollout is not None and rollout.finished:
                    sched.rewarded(rollout.id, reward_of(rollout.output_ids))
        if sched.step_ready():
            run.batches.append(sched.close_step())
            sched.weights_published(sched.step)
            progressed = True
        if not progressed:
            raise AssertionError("scheduler made no progress")
    return run


def config(**overrides: int | float | None) -> SchedulerConfig:
    base = dict(
        token_budget=64,
        retention=1,
        pool_capacity=16,
        chunk_tokens=4,
        group_size=4,
        prompts_per_step=4,
        max_new_tokens=40,
        lease_seconds=30.0,
        seed=0,
    )
    base.update(overrides)  # type: ignore[arg-type]
    return SchedulerConfig(**base)  # type: ignore[arg-type]
