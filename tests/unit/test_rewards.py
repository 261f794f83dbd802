"""Reward functions and the reward pool's isolation of bad ones."""

from __future__ import annotations

import asyncio
import time

import pytest

from kuberl_workers.controller.rewards import REGISTRY, RewardPool, exact_match, format_reward, numeric
from support import hostile_rewards


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("42", "42", 1.0),
        (" 42\n", "42", 1.0),
        ("so 6*7 = 42", "42", 1.0),
        ("42.0", "42", 1.0),
        ("41", "42", 0.0),
        ("no digits", "42", 0.0),
        ("-3", "-3", 1.0),
        ("", "0", 0.0),
    ],
)
def test_numeric(completion: str, answer: str, expected: float) -> None:
    assert numeric(completion, answer) == expected


def test_exact_match_and_format() -> None:
    assert exact_match(" yes ", "yes") == 1.0 and exact_match("yes!", "yes") == 0.0
    assert format_reward("42", "42") == pytest.approx(1.0)
    assert format_reward("it is 42", "42") == pytest.approx(0.9)
    assert format_reward("41", "42") == pytest.approx(0.1)
    assert set(REGISTRY) == {"exact_match", "numeric", "format", "math"}


def test_huge_hostile_completion_is_bounded() -> None:
    start = time.monotonic()
    assert numeric("9" * 5_000_000 + " 7", "7") == 1.0
    assert time.monotonic() - start < 5


def test_pool_survives_hang_raise_crash_and_nan() -> None:
    async def scenario() -> list[tuple[float, str | None]]:
        pool = RewardPool(processes=2, timeout=1.5)
        try:
            results = list(
                await asyncio.gather(
                    pool.score(hostile_rewards.hangs, "1", "1"),
                    pool.score(numeric, "5", "5"),
                    pool.score(hostile_rewards.raises, "1", "1"),
                )
            )
            results.append(await pool.score(hostile_rewards.exits, "1", "1"))
            results.append(await pool.score(hostile_rewards.not_a_number, "1", "1"))
            results.append(await pool.score(numeric, "7", "7"))  # the pool still serves
            assert pool.failures == {"timeout": 1, "error": 2, "crash": 1}
            return results
        finally:
            pool.close()

    start = time.monotonic()
    results = asyncio.run(scenario())
    assert time.monotonic() - start < 30
    assert results == [(0.0, "timeout"), (1.0, None), (0.0, "error"), (0.0, "crash"), (0.0, "error"), (1.0, None)]
