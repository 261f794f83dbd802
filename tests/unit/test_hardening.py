"""The instances of issue #15's fault kinds that pure units can check, each with its right value
(docs/reliability.md lists every kind with its tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kuberl_workers.controller.rewards import format_reward, numeric, parse_number
from kuberl_workers.entry import EXIT_USAGE
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
