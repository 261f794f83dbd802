"""The instances of issue #15's fault kinds that pure units can check, each with its right value
(docs/reliability.md lists every kind with its tests)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from kuberl_workers.config import TaskConfig
from kuberl_workers.controller.dataset import MAX_SKIPS_IN_A_ROW, PromptSet, read_examples
from kuberl_workers.controller.rewards import format_reward, numeric, parse_number
from kuberl_workers.controller.scheduler import Scheduler, SchedulerConfig
from kuberl_workers.entry import EXIT_USAGE
from kuberl_workers.tokenizer import ByteTokenizer
from kuberl_workers.trainer.loss import group_advantages

# ---- Kind 5: numerics and parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize("rewards", [[0.9] * 8, [0.1] * 8, [0.3] * 7, [1e-7] * 3, [123456.789] * 16, [0.0], [0.9, 0.9]])
def test_equal_rewards_give_exactly_zero_advantage(rewards: list[float]) -> None:
    assert group_advantages(torch.tensor(rewards)).tolist() == [0.0] * len(rewards)


def test_format_reward_groups_of_equal_scores_have_zero_advantage() -> None:
    assert format_reward("12", "12") == 1.0
    assert format_reward("so 5", "5") == pytest.approx(0.9)
    assert group_advantages(torch.tensor([format_reward("so 5", "5")] * 8)).tolist() == [0.0] * 8  # 0.9 each


def test_unequal_rewards_are_still_normalised() -> None:
    a = group_advantages(torch.tensor([0.1, 0.9, 0.1, 0.9]))
    assert a.dtype == torch.float32
    assert a.tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0], abs=1e-5)


@pytest.mark.parametrize(
    ("completion", "answer", "right"),
    [
        ("$70,000", "70000", 1.0),
        ("70000", "70,000", 1.0),
        ("0.00001", "1e-05", 1.0),
        ("-5", "1e-05", 0.0),
        ("The answer is 3.0", "3", 1.0),
        ("1/2", "0.5", 1.0),
        ("-1/2", "-0.5", 1.0),
        ("+7", "7", 1.0),
        ("1.5E3", "1500", 1.0),
        ("x = -3.", "-3", 1.0),
        ("about 12.50 dollars", "12.5", 1.0),
        ("1,5", "15", 0.0),  # not a thousands separator: two numbers, the last is 5
        ("1,234,567", "1234567", 1.0),
        ("5", "-5", 0.0),
        ("1/0", "1", 0.0),
        ("no number here", "4", 0.0),
        ("1e99999", "1", 0.0),
    ],
)
def test_numeric_compares_numbers_as_numbers(completion: str, answer: str, right: float) -> None:
    assert numeric(completion, answer) == right


def test_parse_number_refuses_what_has_no_value() -> None:
    assert parse_number("3/0") is None
    assert parse_number("1e5000") is None
    assert parse_number("70,000") == 70000


# ---- Also: every entry point answers --help; a missing config is one line ---------------------------------------

ROLES = ("controller", "trainer", "rollout", "preflight")


@pytest.mark.parametrize("role", ROLES)
def test_entry_points_answer_help(role: str) -> None:
    done = subprocess.run([sys.executable, "-m", f"kuberl_workers.{role}", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"python -m kuberl_workers.{role}" in done.stdout
    assert "KUBERL_CONFIG" in done.stdout and "KUBERL_TOKEN_FILE" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("role", ROLES)
def test_missing_or_bad_config_is_one_clear_line(role: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERL_")}
    cases = {
        "": "no worker config: pass --config FILE or set KUBERL_CONFIG",
        str(tmp_path / "nope.json"): f"cannot read the worker config {tmp_path / 'nope.json'}",
    }
    (tmp_path / "bad.json").write_text("{}")
    cases[str(tmp_path / "bad.json")] = f"{tmp_path / 'bad.json'}: invalid worker config at job: Field required"
    for config, message in cases.items():
        done = subprocess.run(
            [sys.executable, "-m", f"kuberl_workers.{role}"],
            capture_output=True,
            text=True,
            env={**env, "KUBERL_CONFIG": config} if config else env,
        )
        assert done.returncode == EXIT_USAGE
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"kuberl_workers.{role}: error: {message}"), line
        assert "Traceback" not in done.stderr


# ---- Kind 1: one poison item costs only that item ------------------------------------------------------------


def _task(**fields: Any) -> TaskConfig:
    base: dict[str, Any] = {
        "datasetBuiltin": "arithmetic",
        "reward": "numeric",
        "promptsPerStep": 2,
        "samplesPerPrompt": 2,
        "maxPromptTokens": 64,
        "maxNewTokens": 8,
        "temperature": 1.0,
    }
    return TaskConfig(**{**base, **fields})


def test_empty_prompt_is_refused_at_its_line(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "", "answer": "3"}\n')
    with pytest.raises(ValueError, match=rf"^{data}:2: field 'prompt' is empty$"):
        read_examples(str(data), "prompt", "answer")


@pytest.mark.parametrize(
    ("row", "field"),
    [
        (r'{"prompt": "Add \ud83d 2+2=", "answer": "4"}', "prompt"),
        (r'{"prompt": "2+2=", "answer": "4\udc00"}', "answer"),
        (r'{"prompt": [{"role": "user", "content": "\ud83d"}], "answer": "4"}', "prompt[0].content"),
    ],
)
def test_lone_surrogate_is_refused_at_its_line(tmp_path: Path, row: str, field: str) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(row + "\n")
    with pytest.raises(
        ValueError, match=rf"^{data}:1: field '{re.escape(field)}' is not valid Unicode: lone surrogate"
    ):
        read_examples(str(data), "prompt", "answer")
    (tmp_path / "ok.jsonl").write_text('{"prompt": "Add \\ud83d\\ude00 2+2=", "answer": "4"}\n')  # a whole pair is fine
    assert read_examples(str(tmp_path / "ok.jsonl"), "prompt", "answer") == [("Add \U0001f600 2+2=", "4")]


class _Refusing(ByteTokenizer):
    """A tokenizer whose encoding refuses one prompt (as a chat template may raise on one row)."""

    def encode(self, text: str) -> list[int]:
        if "poison" in text:
            raise TypeError("cannot encode this one")
        return super().encode(text)


def test_a_prompt_that_cannot_be_rendered_is_skipped_and_counted(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": "1"}) + "\n" for p in ("a=", "poison", "b=")))
    prompts = PromptSet(_task(datasetBuiltin=None, datasetPath=str(data), promptFormat="raw"), _Refusing(), 0)
    assert [prompts(i) is None for i in range(3)] == [False, True, False]
    assert (prompts.skipped, prompts.render_failures) == (1, 1)


def test_no_usable_prompt_is_an_error_naming_the_field_not_an_endless_loop() -> None:
    """maxPromptTokens 3 with the arithmetic task: the scheduler's refill skipped 5 million prompts in 3 s."""
    prompts = PromptSet(_task(maxPromptTokens=3, promptFormat="raw"), ByteTokenizer(), 0)
    cfg = SchedulerConfig(64, 0, 4, 8, 2, 2, 8, 30.0)
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"^task.maxPromptTokens: none of 10000 prompts in a row fits in 3 tokens"):
        Scheduler(cfg, prompts)
    assert time.monotonic() - started < 10
    assert prompts.skipped == MAX_SKIPS_IN_A_ROW


# ---- Kind 2: a running job says what its step waits for ---------------------------------------------------------


def _ready_pod(role: str) -> dict[str, Any]:
    ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    return {"metadata": {"name": f"j-{role}-0", "labels": {"kuberl.io/role": role}}, "status": ready}


@pytest.mark.parametrize(
    ("report", "reason", "text"),
    [
        ({"step": 4, "waitingFor": "rollouts"}, "WaitingForRollouts", "rollouts that train policy version 5"),
        ({"step": 4, "waitingFor": "rolloutWorkers"}, "NoRolloutWorkers", "no rollout worker connected"),
        ({"step": 5, "waitingFor": "weights"}, "WaitingForTrainer", "trainer gang to publish policy version 5"),
        ({"step": 5, "waitingFor": ""}, "Running", "all pods ready"),
    ],
)
def test_progressing_names_what_the_step_waits_for_and_since_when(
    report: dict[str, Any], reason: str, text: str
) -> None:
    from kuberl_operator.status import Observed, compute

    seen = Observed(
        generation=1,
        pods=[_ready_pod(role) for role in ("controller", "trainer", "rollout")],
        desired={"controller": 1, "trainer": 1, "rollout": 1},
        restarts={},
        controller={**report, "waitingSince": "2026-12-01T02:00:00Z"},
    )
    status = compute({}, seen, "2026-12-01T02:05:00Z")
    progressing = next(cond for cond in status["conditions"] if cond["type"] == "Progressing")
    assert progressing["reason"] == reason and text in progressing["message"]
    assert ("since 2026-12-01T02:00:00Z" in progressing["message"]) == (reason != "Running")
    again = compute(status, seen, "2026-12-01T02:06:00Z")  # the same wait a resync later: nothing to patch
    assert again == status


def test_the_controller_reports_its_wait_and_keeps_its_start(tmp_path: Path) -> None:
    from kuberl_workers.controller.service import Controller
    from support.jobs import job_config

    controller = Controller(job_config(tmp_path / "ckpt"), tokenizer=ByteTokenizer())
    first = controller.status()
    assert first["waitingFor"] == "rolloutWorkers" and first["waitingSince"].endswith("Z")
    controller.registered("r0", "rollout", 0, "10.0.0.1")
    second = controller.status()
    assert second["waitingFor"] == "rollouts"
    controller.scheduler.awaiting_weights = True  # the batch closed: now the trainer gang is waited for
    assert controller.status()["waitingFor"] == "weights"
    assert controller.status()["waitingSince"] == controller.status()["waitingSince"]
