"""Prompt sources and rendering: JSONL and Parquet rows, chat messages, the tokenizer's own chat template, system
prompts and raw text; every bad row named by file:line (or row) and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kuberl_workers.config import TaskConfig
from kuberl_workers.controller.dataset import PromptRenderer, PromptSet, read_examples
from kuberl_workers.tokenizer import ByteTokenizer, HFTokenizer

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _task(**fields: Any) -> TaskConfig:
    base: dict[str, Any] = {
        "datasetBuiltin": "arithmetic",
        "reward": "numeric",
        "promptsPerStep": 2,
        "samplesPerPrompt": 2,
        "maxPromptTokens": 512,
        "maxNewTokens": 8,
        "temperature": 1.0,
    }
    return TaskConfig(**{**base, **fields})


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> HFTokenizer:
    """The tiny byte-level tokenizer with a chat template added (as an instruct model's tokenizer has one)."""
    from transformers import AutoTokenizer

    from kuberl_workers.models.tiny import build_tokenizer

    directory = tmp_path_factory.mktemp("chat-tok")
    build_tokenizer(directory)
    tok = AutoTokenizer.from_pretrained(str(directory))
    tok.chat_template = TEMPLATE
    tok.save_pretrained(str(directory))
    return HFTokenizer(str(directory))


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_strings_and_messages(tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    path = _write_jsonl(tmp_path / "d.jsonl", [{"q": "1+1?", "a": 2}, {"q": messages, "a": "4"}])
    assert read_examples(str(path), "q", "a") == [("1+1?", "2"), (messages, "4")]


def test_parquet_rows_like_verl(tmp_path: Path) -> None:
    table = pa.table(
        {
            "prompt": [[{"role": "user", "content": "3*3?"}], [{"role": "user", "content": "5-1?"}]],
            "answer": ["9", "4"],
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    rows = read_examples(str(tmp_path / "train.parquet"), "prompt", "answer")
    assert rows == [([{"role": "user", "content": "3*3?"}], "9"), ([{"role": "user", "content": "5-1?"}], "4")]
    pq.write_table(pa.table({"prompt": ["x"], "answer": [None]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet:row 1: field 'answer' missing"):
        read_examples(str(tmp_path / "bad.parquet"), "prompt", "answer")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        read_examples(str(tmp_path / "junk.parquet"), "prompt", "answer")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{nope", r"d\.jsonl:2: not JSON"),
        ('{"prompt": "", "answer": "1"}', r"d\.jsonl:2: field 'prompt' is empty"),
        ('{"prompt": [], "answer": "1"}', r"d\.jsonl:2: field 'prompt' is an empty message list"),
        ('{"prompt": [{"role": "robot", "content": "x"}], "answer": "1"}', r"d\.jsonl:2: prompt\[0\]: expected"),
        ('{"prompt": "x"}', r"d\.jsonl:2: field 'answer' missing"),
        ('{"prompt": true, "answer": "1"}', r"d\.jsonl:2: field 'prompt' missing or not a string"),
        ("[1, 2]", r"d\.jsonl:2: expected an object"),
    ],
)
def test_bad_rows_are_named(tmp_path: Path, line: str, message: str) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "ok", "answer": "1"}, line])
    with pytest.raises(ValueError, match=message):
        read_examples(str(path), "prompt", "answer")


def test_chat_template_renders_system_prompt_and_generation_prompt(chat_tokenizer: HFTokenizer) -> None:
    render = PromptRenderer(_task(promptFormat="chat", systemPrompt="Be brief."), chat_tokenizer)
    ids = render("1+1?")
    assert (
        chat_tokenizer._tok.decode(ids, skip_special_tokens=False)
        == "<|system|>Be brief.</s><|user|>1+1?</s><|assistant|>"
    )
    own = [{"role": "user", "content": "2+2?"}]
    assert (
        chat_tokenizer._tok.decode(render(own), skip_special_tokens=False) == "<|user|>2+2?</s><|assistant|>"
    )  # rows keep their own system
    auto = PromptRenderer(_task(), chat_tokenizer)
    assert (
        auto.format == "chat"
        and chat_tokenizer._tok.decode(auto("1+1?"), skip_special_tokens=False) == "<|user|>1+1?</s><|assistant|>"
    )
    raw = PromptRenderer(_task(promptFormat="raw"), chat_tokenizer)
    assert chat_tokenizer._tok.decode(raw("1+1?"), skip_special_tokens=False) == "1+1?"
    with pytest.raises(ValueError, match=r"needs task\.promptFormat chat"):
        raw(own)


def test_formats_the_tokenizer_cannot_do_fail_at_start() -> None:
    byte = ByteTokenizer()
    assert PromptRenderer(_task(), byte).format == "raw"
    with pytest.raises(ValueError, match=r"task\.promptFormat: chat, but the model's tokenizer has no chat template"):
        PromptRenderer(_task(promptFormat="chat"), byte)
    with pytest.raises(ValueError, match=r"task\.systemPrompt: needs the chat format"):
        PromptRenderer(_task(systemPrompt="Be brief."), byte)


def test_prompt_set_reads_the_configured_file(tmp_path: Path, chat_tokenizer: HFTokenizer) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": "x" * 600, "answer": "1"}])
    prompts = PromptSet(_task(datasetBuiltin=None, datasetPath=str(path), systemPrompt="S"), chat_tokenizer, seed=0)
    first = prompts(0)
    assert first is not None and chat_tokenizer._tok.decode(first[0], skip_special_tokens=False).startswith(
        "<|system|>S</s>"
    )
    assert prompts(1) is None and prompts.skipped == 1  # longer than maxPromptTokens: skipped and counted
    assert prompts(2) == first  # indices wrap around
