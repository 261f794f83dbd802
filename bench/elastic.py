"""Elastic rollout scaling against the token budget: how fast the operator resizes the pool, and what it buys.

(a) Latency, on the emulated cluster with the real `kuberl operator` process: a stand-in controller answers the
    operator's /v1/demand with the real demand formula (`Scheduler.desired_replicas`: ceil(Phi / (targetStepSeconds
    x measured tokens/s per replica))) over a Phi and a per-replica throughput this benchmark changes; a stand-in
    kubelet marks new pods Ready at once. Measured from the change to: the scaler's first poll that sees it, the
    `kuberl.io/rollout-desired` patch (the desired replicas), the last pod created (or deleted), and status showing
    the new pool. No real workers run, so engine start is not part of (a).
(b) Step time, simulated (bench/_elastic_sim.py): the real C3PO++ `Scheduler` and the real `scaler.scale_once`
    (policy.scale, drain before shrink) over simulated rollout replicas of a fixed token rate that halves for the
    middle third of the run; elastic vs a fixed pool of the elastic run's average size and one of its peak size.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from functools import partial
from typing import Any

from bench import _cluster as bc
from bench._elastic_sim import RESYNC, SCALER_POLL, TARGET, Workload, compare, plot
from bench._emulator import access, describe
from bench.common import arguments, stopwatch, summary, write
from kuberl_operator import builders
from kuberl_operator.reconcile import SCALE_ANNOTATION
from kuberl_workers.controller.scheduler import Scheduler, SchedulerConfig
from support.specs import minimal_job

JOB = "bench-elastic"


class Demand:
    """The stand-in controller's demand signal: the real formula over a Phi and a per-replica rate we set."""

    def __init__(self, phi: int, rate: float, lo: int, hi: int, heartbeat: float = 5.0) -> None:
        self.phi, self.rate, self.lo, self.hi, self.heartbeat = phi, rate, lo, hi, heartbeat
        self.exits: dict[str, float] = {}  # drained pod -> when its worker exits (the stand-in kubelet reads it)
        self.rng = random.Random(1)

    def desired(self) -> int:
        cfg = SchedulerConfig(self.phi, 1, 8, 8, 1, 1, 8, 60.0)
        scheduler = Scheduler(cfg, lambda index: ([1], ""))
        scheduler.record_throughput("w", round(self.rate * 1000), 1000.0)  # one measured worker at `rate`
        return scheduler.desired_replicas(TARGET, self.lo, self.hi, 1)

    def reply(self, route: str, body: dict[str, Any] | None) -> dict[str, Any]:
        if route == "/v1/demand":
            return {"tokenBudget": self.phi, "desiredRolloutReplicas": self.desired(), "targetStepSeconds": TARGET}
        if route == "/v1/rollout/drain":  # a stand-in pod holds no leases: drained at once
            worker = (body or {}).get("worker") or ""
            # a drained worker sees the flag on its next heartbeat and exits 0, as rollout/worker.py does
            self.exits.setdefault(worker, time.monotonic() + self.rng.uniform(0, self.heartbeat))
            return {"worker": worker, "leases": 0, "drained": True}
        return {"step": 0, "policyVersion": 0, "steps": 1000, "complete": False}


def latency(quick: bool, cycles: int, window: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Scale the pool up and down by changing Phi and the throughput; one row per change."""
    # 2000 tokens per replica per target step: Phi 4000 wants 2 replicas (quick: min 2, so no initial scaling)
    demand = Demand(phi=4000, rate=200.0, lo=2 if quick else 1, hi=10, heartbeat=1 if quick else 5)
    changes = [("Phi x2", 8000, 200.0), ("throughput /2", 8000, 100.0), ("both back", 4000, 200.0)]
    if quick:
        changes = [("Phi x2", 8000, 200.0), ("Phi back", 4000, 200.0)]
    rollout = {"minReplicas": demand.lo, "maxReplicas": demand.hi, "targetStepSeconds": TARGET}
    job = minimal_job(rollout={**rollout, "scaleDownDelaySeconds": window})
    # many restarts allowed: a drained pod's exit counts as one (see the docs' reading), and must not fail the job
    job["spec"]["faultTolerance"] = {"maxRestarts": 1000, "heartbeatSeconds": int(demand.heartbeat)}
    job["metadata"]["name"] = JOB
    rng = random.Random(0)
    rows: list[dict[str, Any]] = []
    with (
        bc.cluster("bench-elastic") as bench,
        # --quick only checks that this runs: a 2 s resync keeps it short (the default, 10 s, otherwise)
        bc.operator(bench, resync=2 if quick else None) as operator,
        bc.stand_ins(bench, demand.reply) as (
            kubelet,
            controller,
        ),
    ):
        kubelet.exits = demand.exits
        job["metadata"]["namespace"] = bench.namespace

        def settled(target: int, since: float) -> bool:
            """The pool has `target` pods and the status says so."""
            pods = bench.api.list("pods", f"kuberl.io/job={JOB},kuberl.io/role=rollout")
            return len(pods) == target and _status_time(bench, since, target) is not None

        def explain() -> str:
            return operator.tail()

        start = time.monotonic()
        bench.api.create("rljobs", job)
        current = demand.desired()
        bc.wait_for(partial(settled, current, start), "the first pool", 60, explain=explain)
        if current > demand.lo:
            rows.append(_change(bench, controller, "job created", start, demand.lo, current))
        for label, phi, rate in [c for _ in range(cycles) for c in changes]:
            # demand changes at any moment: a random phase against the scaler's poll and the resync timer (changing
            # right after the previous change settled would always land just after a resync tick)
            time.sleep(rng.uniform(0.2, 2.0 if quick else RESYNC))
            demand.phi, demand.rate = phi, rate
            target, t0 = demand.desired(), time.monotonic()
            bc.wait_for(partial(settled, target, t0), f"{target} rollout pods", 60 + window, explain=explain)
            rows.append(_change(bench, controller, label, t0, current, target))
            current = target
        # the last drained workers exit (the stand-in kubelet empties `exits`); the operator reacts within a second
        bc.wait_for(lambda: not demand.exits, "the drained pods' exits", demand.heartbeat + 10)
        time.sleep(1)
        status = (bench.api.get("rljobs", JOB) or {}).get("status") or {}
        restarts = {r["name"]: r["restarts"] for r in status.get("roles") or []}
        after = {"rollout restarts in status": restarts.get("rollout"), "events": bench.api.reasons(JOB)}
        after["writes"] = _writes(bench, start)
    return rows, after


def _status_time(bench: bc.BenchCluster, since: float, target: int) -> float | None:
    for t, request in bench.requests_since(since):
        status = (request.data or {}).get("status") or {}
        if describe(request) == "UPDATE rljobs/status" and status.get("rolloutReplicas") == target:
            return t
    return None


def _change(
    bench: bc.BenchCluster, controller: bc.StandInController, label: str, t0: float, before: int, after: int
) -> dict[str, Any]:
    """Times from the demand change at t0, read from the stand-in controller's and the API server's records."""
    seen = next(t for t, route in controller.calls if t >= t0 and route == "/v1/demand")
    patched = pods = None
    verb = "CREATE pods" if after > before else "DELETE pods"
    # the pods that must come (or go): rollout indices between the two sizes
    names = {builders.pod_name(JOB, "rollout", i) for i in range(min(before, after), max(before, after))}
    for t, request in bench.requests_since(t0):
        what = describe(request)
        meta = (request.data or {}).get("metadata") or {}
        if patched is None and what == "UPDATE rljobs" and (meta.get("annotations") or {}).get(SCALE_ANNOTATION):
            patched = t if meta["annotations"][SCALE_ANNOTATION] == str(after) else None
        if what == verb and (request.name or meta.get("name")) in names:
            names.discard(request.name or meta.get("name"))
            pods = t if not names else None
    status = _status_time(bench, t0, after)
    assert patched is not None and pods is not None and status is not None, (label, patched, pods, status)
    return {
        "change": label,
        "replicas": f"{before} -> {after}",
        "poll sees it s": seen - t0,
        "desired patched s": patched - t0,
        "pods changed s": pods - t0,
        "status shows pool s": status - t0,
    }


def _writes(bench: bc.BenchCluster, since: float) -> list[str]:
    return [describe(r) for _, r in bench.requests_since(since) if access(r) == "WRITE"]


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    cycles = args.repeat or (1 if args.quick else 3)
    window = 0 if args.quick else 5
    with stopwatch() as elapsed:
        rows, after = latency(args.quick, cycles, window)
    measured = elapsed()
    changes = [r for r in rows if r["change"] != "job created"]  # that one includes the scaler daemon's start
    ups = [r for r in changes if int(r["replicas"].split()[-1]) > int(r["replicas"].split()[0])]
    downs = [r for r in changes if r not in ups]
    summaries = []
    for direction, group in (("up", ups), ("down", downs)):
        for key in ("poll sees it s", "desired patched s", "pods changed s", "status shows pool s"):
            if group:
                summaries.append(
                    {"direction": direction, "from the demand change to": key[:-2], **summary([r[key] for r in group])}
                )
    workload = Workload(steps=15 if args.quick else 45)
    with stopwatch() as simulated:
        sim_rows, runs = compare(workload)
    plot(runs, workload, args.plots / "elastic.png")
    up_pods = statistics.median(r["pods changed s"] for r in ups)
    elastic, average = sim_rows[0], sim_rows[1]
    events = after["events"]
    drained = sum(int(r["replicas"].split()[0]) - int(r["replicas"].split()[-1]) for r in downs)
    side_effects = {
        "scale-downs": len(downs),
        "pods drained away": drained,
        "ScaledDown events": events.count("ScaledDown"),
        "PodRecreated events": events.count("PodRecreated"),
        "rollout restarts in status": after["rollout restarts in status"],
    }
    write(
        "elastic",
        args,
        {
            "tables": {
                "(a) scaling latency, each change (emulated cluster, real operator)": rows,
                "(a) scaling latency, min/median/max": summaries,
                "(a) what the scale-downs left behind": [side_effects],
                "(b) simulated step time": sim_rows,
            },
            "headline": [
                f"scale-up: demand change -> new pods created, median {up_pods:.1f}s over {len(ups)} changes "
                f"(scaler poll every {SCALER_POLL:g}s; the scaler reconciles right after resizing)",
                f"scale-down: {side_effects['rollout restarts in status']} rollout restarts (PodRecreated warnings) "
                f"counted over {len(downs)} scale-downs (a drained worker's exit is a clean one)",
                f"simulated: elastic pool (avg {elastic['avg replicas']:.1f}) holds the slow third at "
                f"{elastic['step s (slow third)']:.1f}s/step vs {average['step s (slow third)']:.1f}s for a fixed "
                f"pool of its average size, finishing in {elastic['total s'] / average['total s']:.2f}x its time at "
                f"{elastic['replica-hours'] / average['replica-hours']:.2f}x its replica-hours",
            ],
            "workload": dataclasses.asdict(workload),
            "scale_down_delay_seconds": window,
            "after_the_changes": {**after, "writes": sorted(set(after["writes"]))},
            "seconds": {"latency": measured, "simulation": simulated()},
        },
    )


if __name__ == "__main__":
    main()
