"""The built-in `tiny` model: a small Llama-architecture causal LM with a byte-level tokenizer, built locally.

Deterministic for a seed: every process that builds it gets the same weights and the same tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kuberl_workers.models.cache import build_once

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
VOCAB_SIZE = 259  # 256 bytes + BOS, EOS, PAD
BOS_ID, EOS_ID, PAD_ID = 256, 257, 258


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel pre-tokenizer's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def build_tokenizer(directory: Path) -> None:
    """A byte-level BPE tokenizer without merges: token id b is byte b, then BOS, EOS, PAD."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    vocab.update({BOS: BOS_ID, EOS: EOS_ID, PAD: PAD_ID})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BOS, EOS, PAD])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    fast.save_pretrained(str(directory))


def llama_config(hidden: int = 128, layers: int = 2, heads: int = 2) -> Any:
    """The tiny model's architecture (a LlamaConfig over the byte-level vocabulary), at any size."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        dtype="float32",
    )


def build_model(directory: Path, seed: int, hidden: int = 128, layers: int = 2) -> None:
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(hidden, layers))
    model.save_pretrained(str(directory), safe_serialization=True)
    GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID).save_pretrained(str(directory))


def warm_start(directory: Path, seed: int, steps: int = 400, batch: int = 64, lr: float = 3e-3) -> dict[str, float]:
    """A short supervised pass on the built-in arithmetic task (answers after the `=`), so that RL starts from
    a reward above zero but well below the ceiling. Deterministic for a seed; returns the final loss.
    """
    import random

    import torch
    from transformers import LlamaForCausalLM

    from kuberl_workers.controller.dataset import arithmetic

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = LlamaForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        # examples from a different index range than the RL task's prompts (which start at 0)
        examples = [arithmetic(seed + 7919, 10_000_000 + rng.randrange(10**9)) for _ in range(batch)]
        rows = [(list(p.encode()), [*a.encode(), EOS_ID]) for p, a in examples]
        width = max(len(p) + len(a) for p, a in rows)
        ids = torch.full((batch, width), PAD_ID)
        labels = torch.full((batch, width), -100)
        for i, (prompt, answer) in enumerate(rows):
            ids[i, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
            labels[i, len(prompt) : len(prompt) + len(answer)] = torch.tensor(answer)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20) * (1 - step / steps)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_value = float(loss.detach())
    model.save_pretrained(str(directory), safe_serialization=True)
    return {"loss": loss_value}


def ensure_tiny(seed: int = 0, root: Path | None = None) -> Path:
    """The tiny model's directory, built once per seed (under a file lock, so concurrent processes agree)."""

    def build(staging: Path) -> None:
        build_tokenizer(staging)
        build_model(staging, seed)
        warm_start(staging, seed)

    return build_once(f"tiny-v2-seed{seed}", build, root)
