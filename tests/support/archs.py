"""Tiny random Hugging Face causal LMs of the architectures kuberl must carry (Llama, Qwen2, Gemma, Gemma 2), tied
and untied, over the tiny model's byte-level tokenizer: cheap stand-ins for Qwen2.5, Llama 3.2 and Gemma checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kuberl_workers.models.tiny import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, build_tokenizer

# (architecture, tied): Gemma models always tie their embeddings.
MATRIX = [("llama", True), ("llama", False), ("qwen2", True), ("qwen2", False), ("gemma", True), ("gemma2", True)]


def config(arch: str, tied: bool) -> Any:
    import transformers

    common: dict[str, Any] = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 128,  # head_dim 64: vLLM's CPU attention has no kernel for smaller heads
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 512,
        "tie_word_embeddings": tied,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
    }
    if arch == "llama":
        return transformers.LlamaConfig(**common)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "gemma":
        return transformers.GemmaConfig(**common, head_dim=64)
    if arch == "gemma2":  # soft-capped final logits: the trainer's log-probs must apply the cap too
        return transformers.Gemma2Config(**common, head_dim=64, final_logit_softcapping=30.0, sliding_window=64)
    raise ValueError(arch)


def build(directory: Path, arch: str, tied: bool, seed: int = 0) -> Path:
    """A Hugging Face directory with random weights of the architecture and the byte-level tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config(arch, tied), dtype=torch.float32)
    model.save_pretrained(str(directory))
    build_tokenizer(directory)
    return directory
