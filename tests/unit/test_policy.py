"""The shared fault-tolerance and scaling policy."""

from __future__ import annotations

import pytest

from kuberl_operator import policy


def test_backoff_doubles_and_caps() -> None:
    assert [policy.backoff(n, 10, 300) for n in range(0, 8)] == [0, 10, 20, 40, 80, 160, 300, 300]
    assert policy.backoff(5, 0, 300) == 0.0
    assert policy.backoff(10_000, 1, 60) == 60


@pytest.mark.parametrize(
    ("role", "action", "reason"),
    [
        ("rollout", "restart_pod", "PodRecreated"),
        ("trainer", "restart_gang", "GangRestarted"),
        ("controller", "restart_controller", "ControllerRestarted"),
    ],
)
def test_each_role_has_its_level(role: str, action: str, reason: str) -> None:
    decision = policy.on_failure(
        role, f"job-{role}-0", restarts_so_far=2, consecutive=2, max_restarts=5, base=1, cap=30
    )
    assert (decision.action, decision.reason, decision.delay) == (action, reason, 2.0)


def test_restart_limit_fails_the_job() -> None:
    decision = policy.on_failure(
        "rollout", "job-rollout-1", restarts_so_far=5, consecutive=1, max_restarts=5, base=1, cap=30
    )
    assert decision.action == "fail" and decision.reason == "RestartLimitExceeded"
    assert "maxRestarts=5" in decision.message
    assert policy.on_failure("rollout", "r", 0, 1, 0, 1, 1).action == "fail"


def test_avoided_nodes() -> None:
    assert policy.avoided_nodes({"a": 3, "b": 1, "c": 4}, threshold=3) == ["a", "c"]


def test_scale_up_at_once_down_after_window() -> None:
    up = policy.scale(desired=5, current=2, lo=1, hi=4, pinned=None, capacity=8, low_since=None, now=0, delay=60)
    assert up.target == 4 and up.low_since is None  # clamped to maxReplicas
    first = policy.scale(desired=1, current=4, lo=1, hi=4, pinned=None, capacity=8, low_since=None, now=100, delay=60)
    assert first.target == 4 and first.low_since == 100
    still = policy.scale(1, 4, 1, 4, None, 8, low_since=100, now=150, delay=60)
    assert still.target == 4
    down = policy.scale(1, 4, 1, 4, None, 8, low_since=100, now=161, delay=60)
    assert down.target == 1 and down.low_since is None
    recovered = policy.scale(4, 4, 1, 4, None, 8, low_since=100, now=120, delay=60)
    assert recovered.low_since is None  # demand came back: the window restarts


def test_pin_and_capacity() -> None:
    assert policy.scale(1, 1, 1, 8, pinned=3, capacity=8, low_since=None, now=0, delay=0).target == 3
    assert policy.scale(9, 1, 1, 8, pinned=None, capacity=2, low_since=None, now=0, delay=0).target == 2
    assert policy.scale(9, 1, 3, 8, pinned=None, capacity=2, low_since=None, now=0, delay=0).target == 3  # min wins


def test_eta() -> None:
    assert policy.steps_eta(0, 10, 5.0) == float("inf")
    assert policy.steps_eta(4, 10, 5.0) == 30.0
