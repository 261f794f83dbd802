"""Tokenizers the controller uses to turn prompts into token ids and completions back into text."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from kuberl_workers.config import ModelConfig


class Tokenizer(Protocol):
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """Bytes as tokens (ids 0-255) plus BOS 256, EOS 257 and PAD 258: the tiny model's vocabulary without
    reading its files (for tests that need no model).
    """

    vocab_size = 259
    bos_id, eos_id, pad_id = 256, 257, 258

    def encode(self, text: str) -> list[int]:
        return [self.bos_id, *text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face `tokenizer.json` through the `tokenizers` library (no transformers import)."""

    def __init__(self, directory: str) -> None:
        from tokenizers import Tokenizer as _Tokenizer

        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"model.path: no tokenizer.json in {directory}")
        self._tok = _Tokenizer.from_file(str(path))
        ids = [self._tok.token_to_id(t) for t in ("</s>", "<|endoftext|>", "<|im_end|>", "<eos>")]
        self.eos_id: int = next((i for i in ids if i is not None), -1)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))


def load_tokenizer(model: ModelConfig, seed: int = 0) -> Tokenizer:
    """The job model's own tokenizer (the built-in tiny model's is byte-level, ids 0-255 being bytes)."""
    from kuberl_workers.models import model_dir

    return HFTokenizer(model_dir(model, seed))
