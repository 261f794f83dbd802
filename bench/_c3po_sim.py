"""A discrete-event engine pool that drives kuberl's real C3PO++ Scheduler at cluster scale (bench.c3po).

Each replica behaves like `rollout/worker.py`: lease up to `slots` chunks, generate them in one vLLM call, complete
them all, lease again. The call's duration comes from the calibrated per-iteration latency at the batch size still
running (chunks that hit EOS early leave the batch), so a replica holding a few long-tail rollouts runs at the
small-batch speed. Training and weight sync are fixed costs per step; generation pauses meanwhile, as in kuberl.
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kuberl_workers.controller.scheduler import Scheduler, SchedulerConfig

T = TypeVar("T")


@dataclass(frozen=True)
class EngineModel:
    """Per-iteration latency of one engine replica as a function of its running batch (from the calibration)."""

    batches: tuple[int, ...]
    latency: tuple[float, ...]  # seconds per decode iteration at each batch size

    @classmethod
    def from_calibration(cls, document: dict[str, Any]) -> EngineModel:
        rows = sorted(document["engine"], key=lambda r: r["batch"])
        measured = [r["batch"] * r["seconds"] / r["tokens"] for r in rows]
        # a smaller batch is never slower than a larger one: an inversion is another job's noise, so each size
        # takes the fastest latency measured at it or any larger size
        latency = [min(measured[i:]) for i in range(len(measured))]
        return cls(tuple(r["batch"] for r in rows), tuple(latency))

    def iteration(self, batch: int) -> float:
        xs, ys = self.batches, self.latency
        if batch <= xs[0]:
            return ys[0]
        i = min(bisect.bisect_left(xs, batch), len(xs) - 1)  # beyond the table: the last segment's slope
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (batch - x0) / (x1 - x0)

    def tokens_per_second(self, batch: int) -> float:
        return batch / self.iteration(batch)

    def call_seconds(self, lengths: list[int]) -> float:
        """One generate call: iteration k runs the chunks that still have a k-th token to produce."""
        seconds, done = 0.0, 0
        for j, n in enumerate(sorted(lengths)):
            if n > done:
                seconds += (n - done) * self.iteration(len(lengths) - j)
                done = n
        return seconds


@dataclass(frozen=True)
class Costs:
    """The per-step costs outside generation: training proportional to tokens, a fixed weight sync."""

    train_tokens_per_second: float  # the whole trainer gang
    sync_seconds: float  # publish + in-place load (the engines load in parallel)

    def train_seconds(self, tokens: int) -> float:
        return tokens / self.train_tokens_per_second


@dataclass(frozen=True)
class Workload:
    """Completion lengths: lognormal, capped at maxNewTokens, a property of (prompt, sample) shared by both modes."""

    median_tokens: float
    sigma: float
    max_new_tokens: int
    seed: int = 0
    # tuples, not lists: the cache outlives every simulation of a bench run, and tuples of ints leave the cyclic
    # garbage collector's view, so the harness does not slow the collections it times inside the scheduler
    cache: dict[int, tuple[int, ...]] = field(default_factory=dict, compare=False, hash=False)

    def length(self, prompt: int, sample: int, group_size: int) -> int:
        if prompt not in self.cache:
            rng = random.Random(self.seed * 1_000_003 + prompt)
            mu = math.log(self.median_tokens)
            self.cache[prompt] = tuple(
                min(self.max_new_tokens, max(1, round(rng.lognormvariate(mu, self.sigma)))) for _ in range(group_size)
            )
        return self.cache[prompt][sample]

    def mean(self, samples: int = 200_000) -> float:
        """The capped distribution's mean, by sampling (it sizes Phi and the equal-token comparison)."""
        rng = random.Random(12345)
        mu = math.log(self.median_tokens)
        return (
            sum(min(self.max_new_tokens, max(1, round(rng.lognormvariate(mu, self.sigma)))) for _ in range(samples))
            / samples
        )


@dataclass
class SimResult:
    """The measured steps (after the warm-up): per step its start (the publish that opened it), close and data."""

    replicas: int
    starts: list[float]  # len = steps + 1: the last is the publish that ends the last step
    closes: list[float]
    tokens: list[int]
    spans: Counter[int]  # policy versions spanned by each trained rollout -> count
    wasted: int  # tokens discarded in the window: purged rollouts' (partial or finished) and rejected late results'
    calls: list[tuple[float, float]]  # every generate call (start, end) that overlaps the window
    purged: int
    dropped: int
    scheduler_seconds: float  # wall time inside the real Scheduler's methods over the measured steps
    total_steps: int  # the measured steps
    chunks: int = 0  # chunk results handed to the Scheduler over the measured steps

    def summary(self) -> dict[str, Any]:
        steps = len(self.closes)
        window = (self.starts[0], self.starts[-1])
        phases = list(zip(self.starts, self.closes, strict=False))
        e2e = window[1] - window[0]
        rollout = sum(c - s for s, c in phases)
        busy_e2e = sum(max(0.0, min(b, window[1]) - max(a, window[0])) for a, b in self.calls)
        busy_rollout = sum(max(0.0, min(b, c) - max(a, s)) for a, b in self.calls for s, c in phases)
        tokens = sum(self.tokens)
        trained = sum(self.spans.values())
        return {
            "steps": steps,
            "tokens_per_step": tokens / steps,
            "rollout_s_per_step": rollout / steps,
            "step_s": e2e / steps,
            "rollout_s_per_Mtok": rollout / tokens * 1e6,
            "e2e_s_per_Mtok": e2e / tokens * 1e6,
            "util_rollout": busy_rollout / (self.replicas * rollout),
            "util_e2e": busy_e2e / (self.replicas * e2e),
            "spans_mean": sum(k * v for k, v in self.spans.items()) / trained,
            "spans": {k: self.spans[k] / trained for k in sorted(self.spans)},
            "mean_len": tokens / trained,
            # of the tokens that left the pool, the share thrown away rather than trained
            "wasted": self.wasted / (self.wasted + tokens),
            "purged": self.purged,
            "dropped": self.dropped,
            "scheduler_ms_per_step": self.scheduler_seconds / self.total_steps * 1e3,
            "chunks_per_step": self.chunks / self.total_steps,
            # every chunk is one lease and one completion; rewards, refills and the publish are shared among them
            "scheduler_us_per_chunk": self.scheduler_seconds / max(self.chunks, 1) * 1e6,
        }


def load_calibration(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def simulate(
    cfg: SchedulerConfig,
    replicas: int,
    slots: int,
    engine: EngineModel,
    costs: Costs,
    workload: Workload,
    steps: int,
    warmup: int,
) -> SimResult:
    """Run the real Scheduler against `replicas` simulated engines for `warmup + steps` steps; measure the last."""

    def source(index: int) -> tuple[list[int], str]:
        return [256, 48 + index % 10, 61], ""

    sched = Scheduler(cfg, source)
    names = [f"r{i}" for i in range(replicas)]
    for name in names:
        sched.lease(name, 0, 0.0)  # register every replica before the first lease, so Omega is shared evenly
    # a fresh tuple per chunk result, as the controller's HTTP layer parses them (one longer than a chunk, so that
    # no slice is the whole tuple, which Python would hand back instead of a new one)
    zeros_i, zeros_f = (0,) * (cfg.chunk_tokens + 1), (0.0,) * (cfg.chunk_tokens + 1)
    events: list[tuple[float, int, int, Any]] = []  # (time, sequence, replica or -1 for a publish, payload)
    seq = 0
    idle = list(range(replicas))
    now = 0.0
    starts, closes, tokens = [0.0], [], []
    spans: Counter[int] = Counter()
    calls: list[tuple[float, float]] = []
    purged = dropped = 0
    wasted = 0

    def pool_tokens() -> int:
        # tokens held by rollouts in the scheduler (in flight or waiting for their group); a publish removes only
        # purged rollouts and adds empty ones, so the drop across it is exactly the purged tokens
        return sum(r.length for r in sched.rollouts.values())

    in_scheduler = 0.0  # wall time inside the Scheduler's own methods (the simulation's bookkeeping excluded)

    def timed(method: Callable[..., T], *args: Any) -> T:
        nonlocal in_scheduler
        clock = time.perf_counter()
        try:
            return method(*args)
        finally:
            in_scheduler += time.perf_counter() - clock

    payload_seconds = [0.0] * replicas
    chunks_done = 0
    while len(starts) <= warmup + steps:
        measuring = len(starts) > warmup  # the step now running is a measured one
        if not sched.awaiting_weights:
            while idle:
                replica = idle[-1]
                chunks = timed(sched.lease, names[replica], slots, now)
                if not chunks:
                    break  # an idle replica got nothing: no other idle one would
                idle.pop()
                plan = []
                for chunk in chunks:
                    leased = sched.rollouts[chunk.rollout_id]
                    target = workload.length(sched.groups[leased.group].prompt_index, leased.sample, cfg.group_size)
                    n = min(chunk.max_tokens, target - chunk.output_len)
                    plan.append((chunk, n, chunk.output_len + n >= target))
                seq += 1
                end = now + engine.call_seconds([n for _, n, _ in plan])
                calls.append((now, end))
                payload_seconds[replica] = end - now
                heapq.heappush(events, (end, seq, replica, plan))
        if not events:
            raise RuntimeError("simulation stalled: nothing in flight and no step to close")
        now, _, replica, payload = heapq.heappop(events)
        if replica < 0:  # the trainers published the next version: the next step starts
            starts.append(now)
            held = pool_tokens()
            timed(sched.weights_published, payload)
            if len(starts) == warmup + 1:  # the measurement starts here: drop what came before
                calls = [c for c in calls if c[1] > now]
                purged, dropped = sched.counters.rollouts_purged, sched.counters.prompts_dropped
                in_scheduler = 0.0  # over the measured steps too (the warm-up holds the first fill of Omega)
            elif len(starts) > warmup + 1:
                wasted += held - pool_tokens()
            continue
        idle.append(replica)
        # the per-replica throughput the controller measures (it shares Omega by it; equal replicas here)
        timed(sched.record_throughput, names[replica], sum(n for _, n, _ in payload), payload_seconds[replica])
        for chunk, n, finished in payload:
            new_ids, logprobs, finish = zeros_i[:n], zeros_f[:n], "stop" if finished else None
            rollout = timed(sched.complete, names[replica], chunk.lease_id, new_ids, logprobs, finish, chunk.version)
            if measuring:
                wasted += n if rollout is None else 0  # a late result for a purged rollout, rejected
                chunks_done += 1
            if rollout is not None and rollout.finished:
                timed(sched.rewarded, rollout.id, 0.0)
        if timed(sched.step_ready):
            batch = timed(sched.close_step)
            if measuring:
                closes.append(now)
                tokens.append(batch.tokens)
                spans.update(len(set(r["versions"])) for g in batch.groups for r in g["rollouts"])
            seq += 1
            publish = now + costs.train_seconds(batch.tokens) + costs.sync_seconds
            heapq.heappush(events, (publish, seq, -1, sched.step))
    return SimResult(
        replicas,
        starts[warmup:],
        closes,
        tokens,
        spans,
        wasted,
        [c for c in calls if c[1] > starts[warmup]],
        sched.counters.rollouts_purged - purged,
        sched.counters.prompts_dropped - dropped,
        in_scheduler,
        steps,
        chunks_done,
    )
