"""Reads the controller's prompt ledger from its newest checkpoint and checks that no prompt was lost or doubled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def done_log(checkpoints: Path) -> dict[str, Any]:
    newest = sorted(checkpoints.glob("controller-*.json"))[-1]
    body = newest.read_bytes().rstrip(b"\n").rpartition(b"\nsha256:")[0]
    return dict(json.loads(body)["scheduler"])


def assert_every_prompt_trained_once(checkpoints: Path) -> dict[str, Any]:
    """Every prompt the controller handed out is trained exactly once or still pending; returns the ledger."""
    state = done_log(checkpoints)
    trained = [index for index, _ in state["done"]]
    assert len(trained) == len(set(trained)), "a prompt was trained twice"
    pending = {g["prompt_index"] for g in state["groups"]} | set(state["requeue"]) | set(state["dropped"])
    missing = [i for i in range(state["cursor"]) if i not in trained and i not in pending]
    assert missing == [], f"prompts lost: {missing}"
    return state
