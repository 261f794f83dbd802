"""Published weights reload into real vLLM for each architecture family, tied embeddings included: after one
training step and an in-place reload, the engine's sampled-token logprobs equal the trained model's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from kuberl_workers.models.tiny import PAD_ID
from kuberl_workers.rollout.engine import Chunk, Engine
from kuberl_workers.trainer.logprobs import token_logprobs
from kuberl_workers.trainer.step import make_optimizer, train_step
from kuberl_workers.trainer.weights import publish_weights
from support.archs import build
from support.batches import algo, synthetic_batch

# a large step: the reloaded engine must sample from visibly different weights
ALGO = algo(icepopEnabled=False, learningRate=5e-2, weightDecay=0.0, maxGradNorm=100.0, steps=1)
PROMPTS = [[256, 49, 50, 43, 55, 61], [256, 57, 42, 56, 61]]


@pytest.mark.parametrize(("arch", "tied"), [("qwen2", True), ("gemma", True), ("llama", False)])
def test_trained_weights_reload_into_vllm(tmp_path: Path, arch: str, tied: bool) -> None:
    directory = build(tmp_path / "model", arch, tied)
    engine = Engine(str(directory), dtype="float32", seed=0, max_model_len=64, temperature=1.0)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
        train_step(model, make_optimizer(model, ALGO), synthetic_batch(0), ALGO, temperature=1.0, pad_id=PAD_ID)
        path, _ = publish_weights(tmp_path / "ckpt", 1, model)
        engine.load_weights(path, version=1)
        results = engine.generate([Chunk(p, [], 8, seed=i) for i, p in enumerate(PROMPTS)])
        model.eval()
        for prompt, result in zip(PROMPTS, results, strict=True):
            with torch.no_grad():
                expected = token_logprobs(model, torch.tensor([prompt + result.token_ids]), 1.0)[0, len(prompt) - 1 :]
            assert torch.allclose(torch.tensor(result.logprobs), expected, atol=2e-3), (arch, result.logprobs, expected)
    finally:
        del engine
