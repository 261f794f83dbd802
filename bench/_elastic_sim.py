"""Part (b) of bench.elastic: step time with an elastic rollout pool vs fixed pools, simulated.

What is real: the C3PO++ `Scheduler` (admission, leases, the token budget, carry-over), the controller's demand
formula (`Scheduler.desired_replicas` over the throughput it measured), and the operator's `scaler.scale_once`
(policy.scale, the scale-down window, drain before shrink). What is simulated: time (a discrete-event loop), the
rollout replicas (each a fixed token rate, tokens / rate seconds per leased batch), completion lengths
(log-normal), training (a fixed time, rollouts idle meanwhile), pod start (a fixed delay until a new replica
generates), and reconcile (pods follow the scaler's annotation at the next resync tick, as part (a) measures).
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import math
import random
import statistics
from typing import Any, cast

from bench import common  # noqa: F401 - puts tests/ on sys.path for support.*
from kuberl_operator import builders
from kuberl_operator.reconcile import SCALE_ANNOTATION
from kuberl_operator.scaler import ScalerState, scale_once
from kuberl_workers.controller.scheduler import Scheduler, SchedulerConfig
from support.specs import minimal_job

SCALER_POLL = 5.0  # handlers.scale_forever's interval
TARGET = 10.0  # targetStepSeconds of both parts
RESYNC = 10.0  # the operator's default KUBERL_OPERATOR_RESYNC_SECONDS


@dataclasses.dataclass(frozen=True)
class Workload:
    steps: int = 45
    phi: int = 8192
    group: int = 8
    prompts_per_step: int = 16
    capacity: int = 64  # Omega
    chunk: int = 64
    max_new: int = 512
    train_seconds: float = 5.0  # trainer step + weight sync, rollouts idle meanwhile (awaiting weights)
    rates: tuple[float, float] = (400.0, 200.0)  # tokens/s per replica; the slow rate in the middle third
    start_seconds: float = 30.0  # a new rollout pod until its engine generates (scheduling, start, vLLM load)
    resync: float = RESYNC  # annotation -> pods waits for the next reconcile tick (measured in part (a))
    lo: int = 1
    hi: int = 16
    scale_down_delay: int = 60  # the RLJob default

    def rate(self, step: int) -> float:
        third = self.steps // 3
        return self.rates[1] if third <= step < 2 * third else self.rates[0]


class _Kube:
    """Where scale_once writes: the annotation lands on the simulated RLJob body, events are dropped."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    async def merge_patch(self, url: str, patch: dict[str, Any]) -> None:
        self.body["metadata"]["annotations"].update(patch["metadata"]["annotations"])

    async def create(self, *args: Any) -> None:
        return None


def simulate(w: Workload, fixed: int | None, seed: int = 0) -> dict[str, Any]:
    """Discrete-event run to w.steps steps; `fixed` replicas, or elastic (None) from w.lo."""
    rng = random.Random(seed)
    lengths: dict[tuple[int, int], int] = {}
    cfg = SchedulerConfig(w.phi, 1, w.capacity, w.chunk, w.group, w.prompts_per_step, w.max_new, 1e9, seed)
    sched = Scheduler(cfg, lambda index: ([1000 + index % 97, 7], str(index)))
    job = minimal_job(rollout={"minReplicas": w.lo, "maxReplicas": w.hi, "targetStepSeconds": TARGET})
    job["spec"]["rollout"]["scaleDownDelaySeconds"] = w.scale_down_delay
    # the elastic pool starts at the first phase's demand, as if it had settled before step 1 (no warm-up)
    first = min(max(math.ceil(w.phi / (TARGET * w.rates[0])), w.lo), w.hi)
    job["metadata"].update(name="sim", annotations={SCALE_ANNOTATION: str(fixed or first)})
    kube, state, loop = _Kube(job), ScalerState(), asyncio.new_event_loop()
    created: dict[str, float] = {}  # replica -> when its pod was created (cost starts)
    active: dict[str, float] = {}  # replica -> when its engine can generate
    busy: set[str] = set()
    events: list[tuple[float, int, str, Any]] = []
    seq = itertools.count()
    now, step_started, cost = 0.0, 0.0, 0.0
    step_times: list[float] = []
    timeline: list[tuple[float, int]] = []

    def name(i: int) -> str:
        return builders.pod_name("sim", "rollout", i)

    def push(at: float, what: str, payload: Any = None) -> None:
        heapq.heappush(events, (at, next(seq), what, payload))

    for i in range(fixed or first):
        created[name(i)] = active[name(i)] = 0.0
    if fixed is None:
        push(SCALER_POLL, "poll")
        push(w.resync, "tick")

    async def demand(_job: Any, _ns: str) -> dict[str, Any]:
        return {"desiredRolloutReplicas": sched.desired_replicas(TARGET, w.lo, w.hi, max(len(active), 1))}

    async def drain(_job: Any, _ns: str, pod: str) -> bool:
        return pod not in created or sched.drain(pod) == 0

    def dispatch() -> None:
        for worker in sorted(active):
            if worker in busy or active[worker] > now:
                continue
            chunks = sched.lease(worker, 256, now)
            if not chunks:
                continue
            results = []
            for chunk in chunks:
                rollout = sched.rollouts[chunk.rollout_id]
                key = (sched.groups[rollout.group].prompt_index, rollout.sample)
                if key not in lengths:  # long-tailed completion lengths, as LLM answers are
                    lengths[key] = min(w.max_new, max(1, int(rng.lognormvariate(4.8, 0.8))))
                n = min(chunk.max_tokens, lengths[key] - chunk.output_len)
                results.append((chunk, n, "stop" if chunk.output_len + n >= lengths[key] else None))
            tokens = sum(n for _, n, _ in results)
            busy.add(worker)
            push(now + tokens / w.rate(sched.step), "done", (worker, results, tokens / w.rate(sched.step)))

    while len(step_times) < w.steps:
        dispatch()
        now, _, what, payload = heapq.heappop(events)
        if what == "done":
            worker, results, seconds = payload
            busy.discard(worker)
            tokens = 0
            for chunk, n, finish in results:
                rollout = sched.complete(worker, chunk.lease_id, [5] * n, [-0.5] * n, finish, chunk.version)
                tokens += n
                if rollout is not None and rollout.finished:
                    sched.rewarded(rollout.id, float(rollout.length % 2))
            if worker in sched.workers or worker in active:
                sched.record_throughput(worker, tokens, seconds)
            if sched.step_ready():
                sched.close_step()
                push(now + w.train_seconds, "trained")
        elif what == "trained":
            sched.weights_published(sched.step)
            step_times.append(now - step_started)
            step_started = now
        elif what == "poll":
            loop.run_until_complete(scale_once(cast(Any, kube), job, demand, drain, state, now))
            push(now + SCALER_POLL, "poll")
        elif what == "tick":  # reconcile: pods follow the annotation
            want = int(job["metadata"]["annotations"][SCALE_ANNOTATION])
            for i in range(want):
                if name(i) not in created:
                    sched.worker_lost(name(i))  # a new pod of an old name starts undrained
                    created[name(i)], active[name(i)] = now, now + w.start_seconds
                    push(now + w.start_seconds, "started")
            for replica in [r for r in created if int(r.rsplit("-", 1)[1]) >= want]:
                cost += now - created.pop(replica)
                active.pop(replica)
                sched.worker_lost(replica)
            push(now + w.resync, "tick")
        timeline.append((now, len(created)))
    loop.close()
    cost += sum(now - t for t in created.values())
    return {"step_times": step_times, "seconds": now, "replica_seconds": cost, "timeline": timeline}


def compare(w: Workload) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    runs = {"elastic": simulate(w, None)}
    average = runs["elastic"]["replica_seconds"] / runs["elastic"]["seconds"]
    peak = max(n for _, n in runs["elastic"]["timeline"])
    runs[f"fixed {round(average)} (elastic's average)"] = simulate(w, round(average))
    runs[f"fixed {peak} (elastic's peak)"] = simulate(w, peak)
    third = w.steps // 3
    rows = []
    for label, run in runs.items():
        times = run["step_times"]
        slow = times[third : 2 * third]
        fast = times[:third] + times[2 * third :]
        rows.append(
            {
                "pool": label,
                "avg replicas": run["replica_seconds"] / run["seconds"],
                "step s (fast thirds)": statistics.median(fast),
                "step s (slow third)": statistics.median(slow),
                "p95 step s": sorted(times)[math.ceil(0.95 * len(times)) - 1],
                "total s": run["seconds"],
                "replica-hours": run["replica_seconds"] / 3600,
            }
        )
    return rows, runs


def plot(runs: dict[str, dict[str, Any]], w: Workload, path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=False)
    for label, run in runs.items():
        top.plot(range(1, len(run["step_times"]) + 1), run["step_times"], marker=".", label=label)
        times, counts = zip(*run["timeline"], strict=True)
        bottom.step(times, counts, where="post", label=label)
    third = w.steps // 3
    top.axvspan(third + 0.5, 2 * third + 0.5, color="grey", alpha=0.15, label="throughput halved")
    top.axhline(TARGET + w.train_seconds, color="black", linestyle=":", label="target + train")
    top.set(xlabel="step", ylabel="step time (s)", title="Simulated step time: elastic vs fixed rollout pools")
    bottom.set(xlabel="simulated time (s)", ylabel="rollout pods")
    top.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
