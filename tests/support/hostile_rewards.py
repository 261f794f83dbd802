"""Reward functions that misbehave, for the reward pool's tests (importable by the pool's child processes)."""

from __future__ import annotations

import os
import time


def hangs(completion: str, answer: str) -> float:
    time.sleep(3600)
    return 1.0


def raises(completion: str, answer: str) -> float:
    raise RuntimeError("reward bug")


def exits(completion: str, answer: str) -> float:
    os._exit(3)


def not_a_number(completion: str, answer: str) -> float:
    return float("nan")
