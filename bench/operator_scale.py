"""Operator scale: many RLJobs on the emulated cluster with the real operator process, to convergence and at rest.

The real `kuberl operator` (standalone, default resync of 10 s) watches one namespace of the emulated API server
(tests/support/apiserver.py, in this process) into which N RLJobs are created at once. No worker runs: a stand-in
kubelet marks every pod Running and Ready as soon as it exists, and a stand-in controller answers every job's
/v1/status and /v1/demand probes with a constant reply (step 0, one rollout replica wanted), so that each job
settles at Ready=True. Measured: the time until every job has its children and a Ready status, then, over a
steady-state window, the operator's API requests (told apart by its own token) per job per minute, split into
reads and writes, and its CPU and RSS from /proc/<pid>.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
from typing import Any

from bench import _cluster as bc
from bench._emulator import access, describe
from bench.common import arguments, stopwatch, write
from support.specs import minimal_job

CHILDREN = 7  # ConfigMap, Secret, two Services, controller, trainer and rollout pods


def reply(route: str, body: dict[str, Any] | None) -> dict[str, Any]:
    """What a job's controller answers at rest: nothing moves, so nothing in the status should change."""
    if route == "/v1/demand":
        return {"desiredRolloutReplicas": 1, "tokenBudget": 4096, "budgetFill": 0.0, "rolloutReplicas": 1}
    return {"step": 0, "policyVersion": 0, "steps": 100, "complete": False, "budgetFill": 0.0, "tokensPerSecond": 0.0}


class Sampler:
    """The operator's CPU seconds and RSS, once a second, on a thread."""

    def __init__(self, operator: bc.OperatorProcess) -> None:
        self.operator = operator
        self.samples: list[tuple[float, float, float]] = []  # (monotonic, cpu seconds, rss MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.operator.cpu_seconds(), self.operator.rss_mib()))
            except OSError:
                return
            self._stop.wait(1.0)

    def now(self) -> tuple[float, float, float]:
        return time.monotonic(), self.operator.cpu_seconds(), self.operator.rss_mib()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def settled(bench: bc.BenchCluster, names: list[str]) -> bool:
    """Every job has its children and a Ready=True status (read from the API server's store, not over HTTP)."""

    def ready(job: dict[str, Any]) -> bool:
        conditions = (job.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    jobs = dict(bench.store("rljobs", lambda job: (job["metadata"]["name"], ready(job))).result(30))
    if not all(jobs.get(name) for name in names):
        return False
    objects = sum(len(bench.store(plural, lambda o: 1).result(30)) for plural in ("configmaps", "secrets", "services"))
    return objects + len(bench.store("pods", lambda o: 1).result(30)) >= CHILDREN * len(names)


def create_all(bench: bc.BenchCluster, names: list[str]) -> None:
    """All the RLJobs at once, over one connection pool, as `kubectl apply -f` of a folder would."""

    async def create(kube: Any) -> None:
        jobs = [minimal_job() for _ in names]
        for job, name in zip(jobs, names, strict=True):
            job["metadata"].update(name=name, namespace=bench.namespace)
        await asyncio.gather(*(kube.create(bench.namespace, "rljobs", job) for job in jobs))

    bench.api.run(create)


def requests_table(requests: list[tuple[float, Any]], jobs: int, minutes: float) -> list[dict[str, Any]]:
    counts = collections.Counter((access(r), describe(r)) for _, r in requests)
    rows: list[dict[str, Any]] = [
        {"kind": kind, "request": what, "count": n, "per job per minute": n / jobs / minutes}
        for (kind, what), n in sorted(counts.items(), key=lambda item: (item[0][0], -item[1]))
    ]
    for kind in ("READ", "WRITE"):
        n = sum(row["count"] for row in rows if row["kind"] == kind)
        rows.append({"kind": kind, "request": "all", "count": n, "per job per minute": n / jobs / minutes})
    return rows


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    jobs = 5 if args.quick else 100
    window = 15.0 if args.quick else 60.0  # at rest: 6 resyncs of every job in the full run
    names = [f"bench-scale-{i:03d}" for i in range(jobs)]
    with stopwatch() as elapsed, bc.cluster("bench-scale") as bench, bc.operator(bench) as operator:
        sampler = Sampler(operator)
        try:
            with bc.stand_ins(bench, reply) as (kubelet, _):
                kubelet.period = 0.5
                time.sleep(2)
                idle = sampler.now()
                start = time.monotonic()
                create_all(bench, names)
                created = time.monotonic()
                bc.wait_for(lambda: settled(bench, names), "every job settled", 600, period=1.0, explain=operator.tail)
                converged = sampler.now()
                time.sleep(window)
                end = sampler.now()
                everything = [(t, r) for t, r in bench.requests_since(start) if t <= end[0]]
                # everyone's requests (operator, stand-in kubelet, this benchmark): what the API server served
                served = len([t for t, _ in bench.requests_since(start, operator_only=False) if t <= converged[0]])
        finally:
            sampler.stop()
    converging = [(t, r) for t, r in everything if t <= converged[0]]
    steady = [(t, r) for t, r in everything if t > converged[0]]
    last_write = max((t for t, r in converging if access(r) == "WRITE"), default=start)
    minutes = (end[0] - converged[0]) / 60
    steady_rows = requests_table(steady, jobs, minutes)
    reads = next(r for r in steady_rows if r["request"] == "all" and r["kind"] == "READ")["per job per minute"]
    writes = next(r for r in steady_rows if r["request"] == "all" and r["kind"] == "WRITE")["per job per minute"]
    converge_rows = requests_table(converging, jobs, 1.0)
    summary_row = {
        "jobs": jobs,
        "create all s": created - start,
        "all settled s": converged[0] - start,
        "last operator write s": last_write - start,
        "API server req/s converging": served / (converged[0] - start),
        "RSS idle MiB": idle[2],
        "RSS settled MiB": converged[2],
        "RSS after window MiB": end[2],
        "CPU converging (cores)": (converged[1] - idle[1]) / (converged[0] - start),
        "CPU at rest (cores)": (end[1] - converged[1]) / (end[0] - converged[0]),
    }
    plot(sampler.samples, everything, start, converged[0], jobs, args.plots)
    write(
        "operator_scale",
        args,
        {
            "tables": {
                "convergence and resources": [summary_row],
                f"operator requests at rest ({window:.0f} s window), per job per minute": steady_rows,
                "operator requests while converging (totals; per job: count / jobs)": [
                    {k: v for k, v in row.items() if k != "per job per minute"} | {"per job": row["count"] / jobs}
                    for row in converge_rows
                ],
            },
            "headline": [
                f"{jobs} RLJobs settled in {summary_row['all settled s']:.1f}s; at rest the operator sends "
                f"{reads:.1f} reads and {writes:.2f} writes per job per minute (resync 10 s), "
                f"RSS {end[2]:.0f} MiB, CPU {summary_row['CPU at rest (cores)']:.2f} cores",
            ],
            "operator_requests_total": len(everything),
            "seconds": elapsed(),
        },
    )


def plot(
    samples: list[tuple[float, float, float]],
    requests: list[tuple[float, Any]],
    start: float,
    converged: float,
    jobs: int,
    folder: Any,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    for kind, colour in (("READ", "tab:blue"), ("WRITE", "tab:red")):
        per_second = collections.Counter(int(t - start) for t, r in requests if access(r) == kind and t >= start)
        seconds = range(max(per_second, default=0) + 1)
        top.plot(seconds, [per_second.get(s, 0) for s in seconds], color=colour, label=f"{kind.lower()}s/s")
    top.set(ylabel="operator requests / s", title=f"Operator: {jobs} RLJobs created at t=0 (emulated cluster)")
    top.axvline(converged - start, color="black", linestyle=":", label="all settled")
    top.legend(fontsize=8)
    kept = [(t - start, c, m) for t, c, m in samples if t >= start]
    times = [t for t, _, _ in kept]
    cpu = [(c1 - c0) / (t1 - t0) for (t0, c0, _), (t1, c1, _) in itertools.pairwise(kept)]
    bottom.plot(times[1:], cpu, color="tab:green", label="CPU (cores)")
    bottom.set(xlabel="seconds since the jobs were created", ylabel="CPU (cores)")
    memory = bottom.twinx()
    memory.plot(times, [m for _, _, m in kept], color="tab:purple", label="RSS (MiB)")
    memory.set(ylabel="RSS (MiB)")
    bottom.axvline(converged - start, color="black", linestyle=":")
    lines = bottom.get_lines()[:1] + memory.get_lines()
    bottom.legend(lines, [line.get_label() for line in lines], loc="center right", fontsize=8)
    figure.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    figure.savefig(folder / "operator_scale.png", dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
