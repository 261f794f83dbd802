"""Prompt sources: JSONL files and built-in generated tasks, addressed by a stable prompt index."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from kuberl_workers.config import TaskConfig
from kuberl_workers.tokenizer import Tokenizer

Example = tuple[str, str]  # (prompt text, reference answer)


def arithmetic(seed: int, index: int) -> Example:
    """Sums and products whose answers run from one digit to six, so that completion lengths have a tail."""
    rng = random.Random(seed * 1_000_003 + index)
    kind = rng.random()
    if kind < 0.5:
        a, b, op = rng.randint(0, 9), rng.randint(0, 9), "+"
    elif kind < 0.85:
        a, b, op = rng.randint(10, 999), rng.randint(10, 999), "+"
    else:
        a, b, op = rng.randint(10, 999), rng.randint(10, 999), "*"
    return f"{a}{op}{b}=", str(a + b if op == "+" else a * b)


def read_jsonl(path: str, prompt_field: str, answer_field: str) -> list[Example]:
    """Every line a JSON object with the two fields; errors name the file, line and field."""
    rows: list[Example] = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON: {error.msg}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected an object")
            for field in (prompt_field, answer_field):
                if not isinstance(row.get(field), (str, int, float)):
                    raise ValueError(f"{path}:{number}: field {field!r} missing or not a string")
            rows.append((str(row[prompt_field]), str(row[answer_field])))
    if not rows:
        raise ValueError(f"{path}: no examples")
    return rows


class PromptSet:
    """prompt index -> (token ids, answer); indices past the end wrap around (epochs, in file order).

    A prompt longer than maxPromptTokens is skipped (None) and counted.
    """

    def __init__(self, task: TaskConfig, tokenizer: Tokenizer, seed: int) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = task.maxPromptTokens
        self.skipped = 0
        self._example: Callable[[int], Example]
        if task.datasetPath:
            rows = read_jsonl(task.datasetPath, task.promptField, task.answerField)
            self._example = lambda index: rows[index % len(rows)]
        elif task.datasetBuiltin == "arithmetic":
            self._example = lambda index: arithmetic(seed, index)
        else:
            raise ValueError(f"task.dataset: unknown builtin {task.datasetBuiltin!r}")

    def example(self, index: int) -> Example:
        return self._example(index)

    def __call__(self, index: int) -> tuple[list[int], str] | None:
        prompt, answer = self._example(index)
        ids = self.tokenizer.encode(prompt)
        if len(ids) > self.max_tokens:
            self.skipped += 1
            return None
        return ids, answer
