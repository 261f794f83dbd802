"""The rollout engine on real vLLM: logprobs agree with the trainer, continuation, in-place weight updates."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from kuberl_workers.rollout.engine import Chunk, Engine
from kuberl_workers.trainer.logprobs import token_logprobs

PROMPTS = [[256, 49, 50, 43, 55, 61], [256, 57, 42, 56, 61], [256, 49, 48, 48, 43, 49, 61]]


def _trainer_logprobs(model_dir: Path, prompt: list[int], output: list[int]) -> torch.Tensor:
    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        logp = token_logprobs(model, torch.tensor([prompt + output]), temperature=1.0)
    return logp[0, len(prompt) - 1 :]


def test_engine_logprobs_match_trainer_fp32(engine: Engine, tiny_dir: Path) -> None:
    assert engine.version == 0
    results = engine.generate([Chunk(p, [], 12, seed=i) for i, p in enumerate(PROMPTS)])
    for prompt, result in zip(PROMPTS, results, strict=True):
        assert len(result.token_ids) == len(result.logprobs) == 12 and not result.stopped
        expected = _trainer_logprobs(tiny_dir, prompt, result.token_ids)
        assert torch.allclose(torch.tensor(result.logprobs), expected, atol=1e-4), (result.logprobs, expected)


def test_continuation_keeps_earlier_tokens(engine: Engine, tiny_dir: Path) -> None:
    prompt = PROMPTS[0]
    (first,) = engine.generate([Chunk(prompt, [], 4, seed=11)])
    (second,) = engine.generate([Chunk(prompt, first.token_ids, 4, seed=12)])
    assert len(second.token_ids) == 4  # only new tokens come back; the first four are not re-sampled
    whole = first.token_ids + second.token_ids
    expected = _trainer_logprobs(tiny_dir, prompt, whole)
    assert torch.allclose(torch.tensor(first.logprobs + second.logprobs), expected, atol=1e-4)


def test_weight_update_changes_generation_without_restart(engine: Engine, other_weights: Path, tiny_dir: Path) -> None:
    chunks = [Chunk(p, [], 10, seed=3) for p in PROMPTS]
    before = engine.generate(chunks)
    llm = engine.llm
    engine.load_weights(other_weights, version=7)
    after = engine.generate(chunks)
    assert engine.llm is llm and engine.version == 7 and engine.weight_load_bytes > 0
    assert [r.token_ids for r in after] != [r.token_ids for r in before]
    assert max(max(r.logprobs) for r in after) > -1.0  # the sharpened policy is confident
    engine.load_weights(tiny_dir, version=8)  # and back: the same seeds give the same tokens again
    assert [r.token_ids for r in engine.generate(chunks)] == [r.token_ids for r in before]


async def test_a_poison_chunk_costs_only_itself(engine: Engine, tmp_path: Path) -> None:
    """#15 kind 1: vLLM refuses a whole generate call for one empty prompt ("decoder prompt cannot be empty"), and
    every chunk of the batch failed with it. Right: the worker retries each chunk alone; only the poison one is
    refused (and reported with vLLM's reason), the others come back generated."""
    from kuberl_workers.rollout.worker import RolloutWorker
    from support.jobs import TOKEN, job_config

    worker = RolloutWorker(job_config(tmp_path / "ckpt"), "http://127.0.0.1:1", TOKEN, "w", "127.0.0.1")
    worker.engine = engine
    chunks = [
        {"leaseId": f"{i}-1", "promptIds": p, "outputIds": [], "maxTokens": 4, "seed": i}
        for i, p in enumerate([PROMPTS[0], [], PROMPTS[1]])
    ]
    done, refused = await worker._generate(chunks)
    assert [c["leaseId"] for c, _ in done] == ["0-1", "2-1"]
    assert all(len(g.token_ids) == 4 for _, g in done)
    ((chunk, error),) = refused
    assert chunk["leaseId"] == "1-1" and "empty" in error, error


RELOAD_WITH_ENGINE_CORE_PROCESS = """
import json, sys
from pathlib import Path
from kuberl_workers.rollout.engine import Chunk, Engine
engine = Engine(sys.argv[1], dtype="float32", seed=0, max_model_len=64, temperature=1.0)
chunks = [Chunk(p, [], 8, seed=3) for p in json.loads(sys.argv[3])]
before = [g.token_ids for g in engine.generate(chunks)]
engine.load_weights(Path(sys.argv[2]), version=1)
other = [g.token_ids for g in engine.generate(chunks)]
engine.load_weights(Path(sys.argv[1]), version=0)
back = [g.token_ids for g in engine.generate(chunks)]
print("RESULT " + json.dumps({"before": before, "other": other, "back": back, "bytes": engine.weight_load_bytes}))
"""


def test_weight_reload_with_the_multiprocess_engine_core(tiny_dir: Path, other_weights: Path) -> None:
    """#15 kind 3: with vLLM's default multiprocess engine core (what the GPU image runs) a tensor iterator cannot
    cross into the engine process ("generator is not serializable"); the worker loads by path inside it."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RELOAD_WITH_ENGINE_CORE_PROCESS, str(tiny_dir), str(other_weights), json.dumps(PROMPTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    result = json.loads(lines[0][len("RESULT ") :])
    assert result["other"] != result["before"] and result["back"] == result["before"]
    assert result["bytes"] > 0
