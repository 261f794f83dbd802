"""Trainer tokens/s and peak RSS on SmolLM2-135M: kuberl before and after micro-batching, and TRL's GRPOTrainer.

One fixed GRPO batch of the example job's shape (examples/smollm2-math.yaml: P=8 prompts x G=4 completions x L=48
tokens; --quick: 2 x 2 x 8): the first P word problems of examples/data/word-problems.jsonl rendered with the
model's chat template (system prompt "Answer with a single number."), completions sampled once with the real model
(`model.generate`, seed 0, the job's temperature 0.7, exactly L tokens: `min_new_tokens` = L), rewards alternating
0/1 within each group (non-zero advantages), engine logprobs = the same model's logprobs of the sampled tokens at
that temperature (so IcePop masks nothing, as with a well-matched engine). The job's algorithm settings (AdamW,
lr 2e-5, IcePop on, clip 0.2, one update per batch), float32 on CPU, no gradient checkpointing. Variants:
- before: the pre-change trainer step, reproduced here (`before_train_step`, from git history): one forward over
  the whole shard with full-vocabulary float32 logits (log-softmax over all positions), loss, backward, AdamW, then
  a second no-grad full forward for its `kl_old` statistic;
- after: today's `train_step` (completion-only chunked log-probs, length-sorted token-bounded micro-batches with
  gradient accumulation) with one micro-batch, and with micro-batches of at most 2048 and 512 padded tokens
  (--quick: only 128, which still splits its ~220 tokens);
- TRL: TRL's GRPOTrainer (beta 0, num_iterations 1, loss_type "grpo", adamw_torch, same lr, weight decay, clipping
  and temperature, use_cpu, fp32, no gradient checkpointing), its `_generate_and_score_completions` overridden to
  return the same batch precomputed (prompt ids left-padded, completion ids, masks, kuberl's group advantages), so
  a Trainer step (callback on_step_begin -> on_step_end: input preparation, TRL's fused-head loss with its entropy,
  backward, clipping, AdamW) is its update alone.
Each variant runs in a fresh process of its own (this module with a hidden flag), so that its peak RSS
(`ru_maxrss`) is its own; every process uses the same torch thread count (--threads, 1 by default, as `kuberl run`
starts its workers: on a shared 2-core machine 2 threads made the same steps 2-5x slower and far noisier, the
effect bench/_engines.py describes). One warm-up step, then --repeat timed steps (3; --quick: one step, no warm-up).
Tokens/s counts the batch's completion tokens and its prompt + completion tokens (unpadded), the same for every
variant. The first step's gradient norm (before clipping) is reported as a check that all compute the same gradient.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench.common import ROOT, arguments, stopwatch, write

DATA = ROOT / "examples" / "data" / "word-problems.jsonl"
JOB = ROOT / "examples" / "smollm2-math.yaml"
SYSTEM = "Answer with a single number."
# variants: "before", "trl", "after-all" (one micro-batch) and "after-<N>" (micro-batches of at most N tokens)
FULL = ["before", "after-all", "after-2048", "after-512", "trl"]
QUICK = ["before", "after-128", "trl"]  # the quick batch is ~220 tokens: 128 still splits it


def label(key: str) -> str:
    if key == "before":
        return "before: pre-change train_step (reproduced)"
    if key == "trl":
        return "TRL GRPOTrainer update"
    cap = key.removeprefix("after-")
    return "after: train_step, one micro-batch" if cap == "all" else f"after: train_step, micro-batches <= {cap} tokens"


def cap(key: str) -> int:
    """max_tokens_per_micro_batch of an "after" variant."""
    value = key.removeprefix("after-")
    return 10**9 if value == "all" else int(value)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every measured process")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a variant key: measure it in this process
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)  # the batch and settings (JSON)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)  # untimed steps first


# --- the batch (built once, in the parent) -----------------------------------------------------------------------


def build_spec(prompts: int, group: int, length: int) -> dict[str, Any]:
    """The fixed batch in the controller's wire format, with the job's settings, the model and the pad id."""
    import torch
    import yaml
    from transformers import AutoModelForCausalLM

    from kuberl_operator.api.rljob import RLJob
    from kuberl_operator.render import worker_config
    from kuberl_workers.models.smollm2 import ensure_smollm2
    from kuberl_workers.tokenizer import HFTokenizer
    from kuberl_workers.trainer.logprobs import completion_logprobs
    from kuberl_workers.trainer.step import Sequence, to_tensors

    cfg = worker_config(RLJob.model_validate(yaml.safe_load(JOB.read_text())), tempfile.gettempdir())
    temperature = float(cfg.task.temperature)
    directory = ensure_smollm2()
    tokenizer = HFTokenizer(str(directory))
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:prompts]]
    chats = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["prompt"]}] for r in rows]
    prompt_ids = [tokenizer.encode_chat(c) for c in chats]
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    pad_id = int(model.config.pad_token_id if model.config.pad_token_id is not None else model.config.eos_token_id)
    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompt_ids])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    torch.manual_seed(0)
    with torch.no_grad():
        # exactly L new tokens; each prompt's G samples are consecutive rows
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, pad_token_id=pad_id)
        sampling.update(min_new_tokens=length, max_new_tokens=length, num_return_sequences=group)
        out = model.generate(input_ids=ids, attention_mask=attention, **sampling)
        completions = out[:, width:].tolist()
        seqs = [
            Sequence(prompt_ids[i // group] + c, len(prompt_ids[i // group]), [0.0] * length, 0.0)
            for i, c in enumerate(completions)
        ]
        t = to_tensors(seqs, pad_id, torch.device("cpu"))
        logp = completion_logprobs(model, t["ids"], t["mask"], temperature)
    groups = []
    for p, prompt in enumerate(prompt_ids):
        rollouts = []
        for j in range(group):
            i = p * group + j
            engine = logp[i, len(prompt) - 1 : len(prompt) - 1 + length].tolist()
            rollout = {
                "outputIds": completions[i],
                "logprobs": engine,
                "reward": float(j % 2),
                "versions": [0] * length,
            }
            rollouts.append({**rollout, "finishReason": "length"})  # exactly L tokens: cut at maxNewTokens
        groups.append({"promptIds": prompt, "promptIndex": p, "answer": rows[p]["answer"], "rollouts": rollouts})
    return {
        "batch": {"step": 1, "groups": groups},
        "algo": cfg.algorithm.model_dump(),
        "temperature": temperature,
        "pad_id": pad_id,
        "model": str(directory),
    }


# --- the pre-change trainer step, reproduced for comparison ------------------------------------------------------


def _before_tensors(groups: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """The old `_tensors`: padded [sequences, length] input ids, completion mask, engine logprobs, advantages."""
    import torch

    from kuberl_workers.trainer.loss import group_advantages

    rows, advantages = [], []
    for group in groups:
        advantages.append(group_advantages(torch.tensor([float(r["reward"]) for r in group["rollouts"]])))
        rows += [(group["promptIds"], r["outputIds"], r["logprobs"]) for r in group["rollouts"]]
    width = max(len(p) + len(o) for p, o, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width - 1)
    infer = torch.zeros(len(rows), width - 1)
    for i, (prompt, output, logprobs) in enumerate(rows):
        ids[i, : len(prompt) + len(output)] = torch.tensor(prompt + output)
        start = len(prompt) - 1
        mask[i, start : start + len(output)] = 1.0
        infer[i, start : start + len(output)] = torch.tensor(logprobs)
    return {"ids": ids, "mask": mask, "infer": infer, "advantages": torch.cat(advantages)}


def _before_token_logprobs(model: Any, ids: Any, temperature: float) -> Any:
    """The old `token_logprobs`: full-vocabulary float32 logits at every position, then log-softmax and gather."""
    import torch

    logits = model(input_ids=ids).logits[:, :-1].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def before_train_step(model: Any, optimizer: Any, batch: dict[str, Any], algo: Any, temperature: float, pad_id: int):
    """The old `train_step` on one process (world 1, so its all-reduce branch is left out): returns the grad norm."""
    import torch

    from kuberl_workers.trainer.loss import icepop_grpo_loss

    groups = batch["groups"]
    t = _before_tensors(groups, pad_id)
    model.train()
    logp_new = _before_token_logprobs(model, t["ids"], temperature)
    logp_old = logp_new.detach()
    knobs = {"alpha": algo.icepopAlpha, "beta": algo.icepopBeta, "clip_eps": algo.clipEpsilon}
    knobs |= {"enabled": algo.icepopEnabled, "normaliser": sum(len(g["rollouts"]) for g in groups)}
    loss, _ = icepop_grpo_loss(logp_new, logp_old, t["infer"], t["advantages"], t["mask"], **knobs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), algo.maxGradNorm))
    optimizer.step()
    with torch.no_grad():  # the old step's kl_old statistic: a second full forward after the update
        model.eval()
        after = _before_token_logprobs(model, t["ids"], temperature)
        valid = t["mask"].bool()
        float((logp_old - after)[valid].mean())
    return grad_norm


# --- one variant, in its own process ------------------------------------------------------------------------------


def _rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def measure_kuberl(key: str, spec: dict[str, Any], steps: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from kuberl_workers.config import AlgorithmConfig
    from kuberl_workers.trainer.step import make_optimizer, train_step

    algo = AlgorithmConfig.model_validate(spec["algo"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    optimizer = make_optimizer(model, algo)
    setup = _rss_gib()
    batch, temperature, pad_id = spec["batch"], spec["temperature"], spec["pad_id"]
    times, norms, micro = [], [], 1
    for _ in range(steps):
        with stopwatch() as seconds:
            if key == "before":
                norms.append(before_train_step(model, optimizer, batch, algo, temperature, pad_id))
            else:
                cfg = {"temperature": temperature, "pad_id": pad_id, "max_tokens_per_micro_batch": cap(key)}
                stats = train_step(model, optimizer, batch, algo, **cfg)
                norms.append(stats.grad_norm)
                micro = stats.micro_batches
        times.append(seconds())
    return {"times": times, "grad_norm": norms[0], "micro_batches": micro, "rss_setup_gib": setup}


def measure_trl(spec: dict[str, Any], steps: int, work: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset  # type: ignore[import-untyped]
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    from kuberl_workers.config import AlgorithmConfig
    from kuberl_workers.trainer.loss import group_advantages

    algo = AlgorithmConfig.model_validate(spec["algo"])
    groups, pad_id = spec["batch"]["groups"], spec["pad_id"]
    p, g = len(groups), len(groups[0]["rollouts"])
    prompts = [grp["promptIds"] for grp in groups for _ in range(g)]
    width = max(len(x) for x in prompts)
    completion_ids = torch.tensor([r["outputIds"] for grp in groups for r in grp["rollouts"]])
    completion_mask = torch.ones_like(completion_ids)
    length = completion_ids.shape[1]
    fixed = {  # the keys TRL 1.16's _compute_loss reads (no old/ref logprobs: num_iterations 1, beta 0, no vLLM)
        "prompt_ids": torch.tensor([[pad_id] * (width - len(x)) + x for x in prompts]),
        "prompt_mask": torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompts]),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.cat([group_advantages(torch.tensor([r["reward"] for r in x["rollouts"]])) for x in groups]),
        "num_items_in_batch": completion_mask.sum(),
    }
    times: list[float] = []

    def no_reward(completions: list[Any], **_: Any) -> list[float | None]:
        return [0.0] * len(completions)  # never called: generation and scoring are replaced

    class Fixed(GRPOTrainer):
        def _generate_and_score_completions(self, inputs: Any) -> Any:
            return dict(fixed)

    class Timed(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            times.append(time.perf_counter() - self.start)

    # as kuberl's update: beta 0, one update per batch, per-sequence token means, torch AdamW, the job's knobs
    settings: dict[str, Any] = dict(use_cpu=True, bf16=False, seed=0, beta=0.0, num_iterations=1, loss_type="grpo")
    settings |= dict(per_device_train_batch_size=p * g, num_generations=g, max_steps=steps)
    settings |= dict(temperature=spec["temperature"], epsilon=algo.clipEpsilon, max_grad_norm=algo.maxGradNorm)
    settings |= dict(optim="adamw_torch", learning_rate=algo.learningRate, weight_decay=algo.weightDecay)
    settings |= dict(lr_scheduler_type="constant", gradient_checkpointing=False, max_completion_length=length)
    # logged after on_step_end, outside the timed window: the log gives the first step's grad norm
    settings |= dict(logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, shuffle_dataset=False)
    config = GRPOConfig(output_dir=str(work / "trl"), **settings)
    trainer = Fixed(
        model=AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32),
        reward_funcs=no_reward,
        args=config,
        train_dataset=Dataset.from_dict({"prompt": ["unused"] * (p * steps)}),
        processing_class=AutoTokenizer.from_pretrained(spec["model"]),
        callbacks=[Timed()],
    )
    setup = _rss_gib()
    trainer.train()
    norms = [float(e["grad_norm"]) for e in trainer.state.log_history if "grad_norm" in e]
    return {"times": times, "grad_norm": norms[0] if norms else None, "micro_batches": 1, "rss_setup_gib": setup}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    spec = json.loads(args.spec.read_text())
    steps = args.warmup + args.repeat
    with tempfile.TemporaryDirectory(prefix="kuberl-bench-trainer-real-") as work:
        result = (
            measure_trl(spec, steps, Path(work)) if args.child == "trl" else measure_kuberl(args.child, spec, steps)
        )
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    result["threads"] = torch.get_num_threads()
    result["load_1min_at_end"] = os.getloadavg()[0]
    args.result.write_text(json.dumps(result))


# --- the parent: one process per variant, then the tables ---------------------------------------------------------


def run_variant(key: str, spec_path: Path, work: Path, threads: int, warmup: int, repeats: int) -> dict[str, Any]:
    result = work / f"{key}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "bench.trainer_real", "--child", key, "--spec", str(spec_path)]
    command += ["--result", str(result), "--threads", str(threads), "--warmup", str(warmup), "--repeat", str(repeats)]
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    return {**json.loads(result.read_text()), "warmup": warmup}


def row(key: str, measured: dict[str, Any], completion_tokens: int, total_tokens: int) -> dict[str, Any]:
    timed = measured["times"][measured["warmup"] :]
    seconds = median(timed)
    return {
        "variant": label(key),
        "micro-batches": measured["micro_batches"],
        "s/step median": seconds,
        "s/step min": min(timed),
        "completion tok/s": completion_tokens / seconds,
        "total tok/s": total_tokens / seconds,
        "RSS after set-up GiB": measured["rss_setup_gib"],
        "peak RSS GiB": measured["peak_rss_gib"],
        "peak - set-up GiB": measured["peak_rss_gib"] - measured["rss_setup_gib"],
        "grad norm (step 1)": measured["grad_norm"],
        "load 1 min": measured["load_1min_at_end"],
        "n": len(timed),
    }


def ratios(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed (tokens/s) and memory ratios: each after variant over before, and over TRL."""
    out = []
    for key in (k for k in rows if k.startswith("after")):
        for base in ("before", "trl"):
            ours, theirs = rows[key], rows[base]
            out.append(
                {
                    "comparison": f"{label(key)} / {label(base)}",
                    "tok/s ratio": theirs["s/step median"] / ours["s/step median"],
                    "peak RSS ratio": ours["peak RSS GiB"] / theirs["peak RSS GiB"],
                    "peak - set-up ratio": ours["peak - set-up GiB"] / theirs["peak - set-up GiB"],
                }
            )
    return out


def main() -> None:
    args = arguments(__doc__.splitlines()[0], options)
    if args.child:
        child(args)
        return
    quick = bool(args.quick)
    prompts, group, length = (2, 2, 8) if quick else (8, 4, 48)
    repeats = args.repeat or (1 if quick else 3)
    keys = QUICK if quick else FULL
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    load_before = os.getloadavg()
    with stopwatch() as elapsed, tempfile.TemporaryDirectory(prefix="kuberl-bench-trainer-real-") as tmp:
        import torch

        torch.set_num_threads(args.threads)
        spec = build_spec(prompts, group, length)
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        groups = spec["batch"]["groups"]
        completion_tokens = sum(len(r["outputIds"]) for g in groups for r in g["rollouts"])
        total_tokens = completion_tokens + sum(len(g["promptIds"]) * len(g["rollouts"]) for g in groups)
        raw, rows = {}, {}
        for key in keys:
            print(f"== {label(key)}", flush=True)
            raw[key] = run_variant(key, spec_path, Path(tmp), args.threads, 0 if quick else 1, repeats)
            rows[key] = row(key, raw[key], completion_tokens, total_tokens)
        seconds = elapsed()
    before, trl = rows["before"], rows["trl"]
    shape = f"{prompts} prompts x {group} x {length} tokens ({completion_tokens} completion, {total_tokens} in all)"
    headline = [f"SmolLM2-135M, float32, {args.threads} torch threads, {shape}, median of {repeats} steps:"]
    for key in keys:
        r = rows[key]
        headline.append(
            f"{r['variant']}: {r['s/step median']:.2f} s/step, {r['total tok/s']:.0f} tok/s (prompt + completion), "
            f"peak RSS {r['peak RSS GiB']:.2f} GiB ({r['micro-batches']} micro-batch(es))"
        )
    best = min((k for k in keys if k.startswith("after")), key=lambda k: rows[k]["s/step median"])
    headline.append(
        f"fastest after variant ({label(best)}): {before['s/step median'] / rows[best]['s/step median']:.2f}x "
        f"the before step's tokens/s, {trl['s/step median'] / rows[best]['s/step median']:.2f}x TRL's"
    )
    result = {
        "tables": {"trainer step on SmolLM2-135M": list(rows.values()), "ratios": ratios(rows)},
        "headline": headline,
        "batch": {"prompts": prompts, "group": group, "completion_tokens": length},
        "tokens": {"completion": completion_tokens, "total": total_tokens},
        "prompt_lengths": [len(g["promptIds"]) for g in groups],
        "threads": args.threads,
        "repeats": repeats,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "raw": raw,
        "seconds": round(seconds, 1),
    }
    write("trainer_real", args, result)


if __name__ == "__main__":
    main()
