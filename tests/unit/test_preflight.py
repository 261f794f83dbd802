"""The workers' preflight: every bad input named with its field and file before anything runs; the policy fails
the job on EXIT_INVALID_INPUT instead of restarting; the launcher quotes a failed worker's last words."""

from __future__ import annotations

import json
from pathlib import Path

from kuberl_operator import policy
from kuberl_operator.api.rljob import RLJob
from kuberl_operator.launcher.logs import invalid_input, last_error
from kuberl_operator.render import worker_config
from kuberl_workers.config import EXIT_INVALID_INPUT, INVALID_INPUT_MARK, WorkerConfig
from kuberl_workers.models.tiny import build_tokenizer
from kuberl_workers.preflight import problems
from support.specs import minimal_job


def _config(tmp_path: Path, **spec: object) -> WorkerConfig:
    return worker_config(RLJob.model_validate(minimal_job(**spec)), str(tmp_path / "ckpt"))


def _model(folder: Path, context: int = 2048, tokenizer: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": context}))
    (folder / "model.safetensors").write_bytes(b"")
    if tokenizer:
        build_tokenizer(folder)  # the tiny model's byte-level tokenizer: real, and built in milliseconds
    return folder


def test_good_inputs_pass(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1", "answer": "2"}\n')
    model = _model(tmp_path / "m")
    task = {"dataset": {"path": str(data)}, "reward": "numeric"}
    assert problems(_config(tmp_path, model={"path": str(model)}, task=task)) == []


def test_every_problem_is_named_with_its_field_and_file(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2", "answer": 4}\n{"prompt": "3+3"}\n')
    model = _model(tmp_path / "m", context=64, tokenizer=False)
    task = {"dataset": {"path": str(data)}, "reward": "numeric", "maxPromptTokens": 40, "maxNewTokens": 64}
    found = problems(_config(tmp_path, model={"path": str(model)}, task=task))
    assert found == [
        f"model.path: {model}: no tokenizer (tokenizer.json or tokenizer.model)",
        f"task.dataset.path: {data}:3: field 'answer' missing or not a string or number",
    ]
    found = problems(_config(tmp_path, model={"path": str(_model(tmp_path / "m2", context=64))}, task=task))
    assert "exceeds the model's context of 64 tokens" in found[0]
    task["dataset"] = {"path": str(tmp_path / "missing.jsonl")}
    found = problems(_config(tmp_path, model={"path": str(tmp_path / "nope")}, task=task))
    assert found == [
        f"model.path: {tmp_path / 'nope'}: no such directory",
        f"task.dataset.path: {tmp_path / 'missing.jsonl'}: no such file",
    ]


def test_invalid_input_fails_at_once_other_exits_restart() -> None:
    failing = policy.on_failure(
        "controller", "j-controller-0", 0, 1, 5, 1, 10, exit_code=EXIT_INVALID_INPUT, detail="x"
    )
    assert (failing.action, failing.reason) == ("fail", "InvalidInput") and failing.message.endswith(": x")
    assert policy.on_failure("controller", "j-c-0", 0, 1, 5, 1, 10, exit_code=1).action == "restart_controller"


def test_the_launcher_quotes_the_problems_and_the_last_traceback(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_text(f"INFO start\nERROR {INVALID_INPUT_MARK}a.jsonl:3: bad\nERROR {INVALID_INPUT_MARK}model.path: x\n")
    assert invalid_input(log) == ["a.jsonl:3: bad", "model.path: x"]
    log.write_text("INFO start\nTraceback (most recent call last):\n  File x\nValueError: boom\n")
    shown = last_error(log, "j-trainer-0")
    assert "Traceback" in shown and shown.rstrip().endswith("ValueError: boom") and str(log) in shown


def test_no_prompt_fits_max_prompt_tokens(tmp_path: Path) -> None:
    """#15 kind 2: every prompt longer than task.maxPromptTokens was an endless refill loop; now it is refused
    before start, with the field and the length that would do."""
    task = {"dataset": {"builtin": "arithmetic"}, "reward": "numeric", "maxPromptTokens": 3, "promptFormat": "raw"}
    model = _model(tmp_path / "m")
    (found,) = problems(_config(tmp_path, model={"path": str(model)}, task=task))
    assert found.startswith("task.maxPromptTokens: none of 10000 prompts in a row fits in 3 tokens")
    assert "raise it to at least 4" in found
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a long prompt", "answer": "2"}\n{"prompt": "another long one", "answer": "3"}\n')
    task = {"dataset": {"path": str(data)}, "reward": "numeric", "maxPromptTokens": 5, "promptFormat": "raw"}
    (found,) = problems(_config(tmp_path, model={"path": str(model)}, task=task))
    assert found == (
        "task.maxPromptTokens: none of 2 prompts in a row fits in 5 tokens (the shortest renders to 13); raise it "
        "to at least 13"
    )


def test_broken_tokenizer_is_named(tmp_path: Path) -> None:
    model = _model(tmp_path / "m", tokenizer=False)
    (model / "tokenizer.json").write_text("{}")
    task = {"dataset": {"builtin": "arithmetic"}, "reward": "numeric"}
    (found,) = problems(_config(tmp_path, model={"path": str(model)}, task=task))
    assert found.startswith(f"model.path: {model}: the tokenizer does not load (")


def test_rewards_that_cannot_run_are_named(tmp_path: Path) -> None:
    """#17: a python reward that does not import, and an http reward without its auth value, fail the preflight."""
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    (tmp_path / "fine.py").write_text("def score(**kwargs):\n    return 1.0\n")
    rewards = [
        {"name": "broken", "python": {"function": "broken:score", "path": str(tmp_path / "broken.py")}},
        {"name": "missing", "python": {"function": "fine:nope", "path": str(tmp_path / "fine.py")}},
        {"name": "fine", "python": {"function": "fine:score", "path": str(tmp_path / "fine.py")}},
        {"name": "judge", "http": {"url": "http://127.0.0.1:9/score", "authSecret": {"name": "s", "key": "k"}}},
    ]
    task = {"dataset": {"builtin": "arithmetic"}, "rewards": rewards, "maxPromptTokens": 64}
    found = problems(_config(tmp_path, task=task))
    assert len(found) == 3, found
    assert found[0].startswith("task.rewards[0].python: broken:score does not load: ModuleNotFoundError")
    assert found[1].startswith("task.rewards[1].python: fine:nope does not load: AttributeError")
    assert found[2] == "task.rewards[3].http.authSecret: the environment variable KUBERL_REWARD_AUTH_JUDGE is not set"
