"""Tokenizers the controller uses to turn prompts (text or chat messages) into token ids and completions back into
text. The chat template is the tokenizer's own (`apply_chat_template`), never re-implemented here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from kuberl_workers.config import ModelConfig

Message = dict[str, str]


class Tokenizer(Protocol):
    eos_id: int
    has_chat_template: bool

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def encode_chat(self, messages: list[Message]) -> list[int]:
        """The messages rendered with the chat template, ending with the assistant's generation prompt."""
        ...


class ByteTokenizer:
    """Bytes as tokens (ids 0-255) plus BOS 256, EOS 257 and PAD 258: the tiny model's vocabulary without
    reading its files (for tests that need no model). No chat template.
    """

    vocab_size = 259
    bos_id, eos_id, pad_id = 256, 257, 258
    has_chat_template = False

    def encode(self, text: str) -> list[int]:
        return [self.bos_id, *text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def encode_chat(self, messages: list[Message]) -> list[int]:
        raise ValueError("the tokenizer has no chat template")


class HFTokenizer:
    """A Hugging Face tokenizer directory: `tokenizer.json` through the `tokenizers` library for encoding and
    decoding (fast to import), and `transformers.AutoTokenizer`, loaded on first use, for the chat template.
    """

    def __init__(self, directory: str) -> None:
        from tokenizers import Tokenizer as _Tokenizer

        root = Path(directory)
        if not root.is_dir():
            raise FileNotFoundError(f"model: no such directory {directory}")
        if not (root / "tokenizer.json").is_file():
            raise FileNotFoundError(f"model: no tokenizer.json in {directory}")
        self.directory = directory
        self._tok = _Tokenizer.from_file(str(root / "tokenizer.json"))
        self._chat: Any = None
        settings: dict[str, Any] = {}
        if (root / "tokenizer_config.json").is_file():
            settings = json.loads((root / "tokenizer_config.json").read_text(encoding="utf-8"))
        eos = settings.get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        candidates = [eos] if isinstance(eos, str) else []
        candidates += ["</s>", "<|endoftext|>", "<|im_end|>", "<eos>"]
        ids = [self._tok.token_to_id(t) for t in candidates]
        self.eos_id: int = next((i for i in ids if i is not None), -1)
        self.has_chat_template = bool(settings.get("chat_template")) or any(
            (root / name).is_file() for name in ("chat_template.jinja", "chat_template.json")
        )

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def encode_chat(self, messages: list[Message]) -> list[int]:
        if not self.has_chat_template:
            raise ValueError("the tokenizer has no chat template")
        if self._chat is None:
            from transformers import AutoTokenizer

            self._chat = AutoTokenizer.from_pretrained(self.directory)
        rendered = self._chat.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # the template writes the special tokens (BOS, role markers) itself: do not add them again
        return list(self._tok.encode(rendered, add_special_tokens=False).ids)


def load_tokenizer(model: ModelConfig, seed: int = 0) -> Tokenizer:
    """The job model's own tokenizer (the built-in models' are built with them)."""
    from kuberl_workers.models import model_dir

    return HFTokenizer(model_dir(model, seed))
