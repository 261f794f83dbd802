"""Kind 4 of #15: the trainer gang, the controller and the checkpoints agree on one restore point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from kuberl_workers.controller.http import make_app
from kuberl_workers.controller.rewards import numeric
from kuberl_workers.controller.service import Controller
from kuberl_workers.tokenizer import ByteTokenizer
from kuberl_workers.trainer.resume import ResumeMismatch, agree_resume_step
from support.controller_http import AUTH, SPEC, Client, generate_step
from support.jobs import TOKEN, job_config

# --- the trainer's side: pure ----------------------------------------------------------------------------


def _newest(steps: set[int]) -> Callable[[int | None], int]:
    return lambda cap: max((s for s in steps | {0} if cap is None or s <= cap), default=0)


def test_gang_without_checkpoints_resumes_at_zero_even_when_the_controller_is_ahead() -> None:
    offers: list[int] = []

    def controller(step: int) -> int:  # one that can replay nothing: it rewinds to step 0 when asked for 0
        offers.append(step)
        return step

    assert agree_resume_step(_newest(set()), controller) == 0
    assert offers == [0]


def test_the_controller_answer_lower_than_any_checkpoint_falls_back_to_an_older_one() -> None:
    answers = iter([3, 2])  # asked with 4 the controller restored its step 3; the gang has 2 and 4 only
    assert agree_resume_step(_newest({2, 4}), lambda step: min(step, next(answers))) == 2


def test_ranks_with_different_checkpoints_agree_on_the_oldest() -> None:
    other_rank = _newest({2})  # rank 1's volume has only step 2 (rank 0's has 2 and 4)
    offers: list[int] = []

    def register(step: int) -> int:
        offers.append(step)
        return step

    step = agree_resume_step(_newest({2, 4}), register, gang_min=lambda s: min(s, other_rank(s)))
    assert step == 2 and offers == [2]


def test_rounds_are_bounded_when_the_controller_keeps_moving() -> None:
    answers = iter(range(99, 0, -1))  # a controller whose answer drops every round (never the same twice)
    with pytest.raises(ResumeMismatch, match="after 32 rounds"):
        agree_resume_step(lambda cap: cap if cap is not None else 100, lambda step: min(step, next(answers)))


def test_a_controller_asking_for_a_later_step_is_refused() -> None:
    with pytest.raises(ResumeMismatch, match="asked to resume at step 5, but the gang has step 0"):
        agree_resume_step(_newest(set()), lambda step: 5)


# --- the controller's side: over HTTP ----------------------------------------------------------------------


async def _publish(client: Client, version: int, checkpoint: bool) -> None:
    reply = await client.post(
        "/v1/trainer/published",
        json={"version": version, "weightsUri": f"file:///w/{version}", "checkpoint": checkpoint},
        headers=AUTH,
    )
    assert reply.status == 200, await reply.text()


async def _run_steps(client: Client, steps: int, every: int) -> list[list[int]]:
    """Generate and publish `steps` steps (a checkpoint each `every`); the prompt indices of each batch."""
    prompts = []
    for step in range(steps):
        await generate_step(client)
        batch = await (await client.get(f"/v1/trainer/batch?step={step}", headers=AUTH)).json()
        prompts.append(sorted(g["promptIndex"] for g in batch["groups"]))
        await _publish(client, step + 1, checkpoint=(step + 1) % every == 0)
    return prompts


async def _client(tmp_path: Path, every: int) -> Client:
    spec: dict[str, Any] = {**SPEC, "algorithm": {"steps": 8}, "checkpoint": {"everySteps": every, "keep": 4}}
    controller = Controller(job_config(tmp_path / "ckpt", **spec), tokenizer=ByteTokenizer(), reward=numeric)
    client = TestClient(TestServer(make_app(controller, TOKEN)))
    await client.start_server()
    return client


async def _register_trainer(client: Client, step: int) -> int:
    reply = await client.post(
        "/v1/workers/register", json={"worker": "t0", "role": "trainer", "step": step}, headers=AUTH
    )
    return int((await reply.json())["resumeStep"])


async def test_a_gang_that_lost_its_checkpoints_restarts_the_controller_from_step_zero(tmp_path: Path) -> None:
    client = await _client(tmp_path, every=2)
    try:
        first = await _run_steps(client, 3, every=2)  # controller checkpoints at 2; replay holds step 2
        assert await _register_trainer(client, 0) == 0  # was 3: step 3 trained from the initial weights
        status = await (await client.get("/v1/status", headers=AUTH)).json()
        assert (status["step"], status["policyVersion"], status["latestModel"]) == (0, 0, "")
        rollout = await (
            await client.post("/v1/workers/register", json={"worker": "r1", "role": "rollout"}, headers=AUTH)
        ).json()
        assert (rollout["version"], rollout["weightsUri"]) == (0, "")  # engines go back to the initial weights
        again = await _run_steps(client, 1, every=2)
        # the first prompts again, nothing skipped (which of them a step holds depends on when rewards arrive)
        assert min(again[0]) <= min(first[0])
        history = await (await client.get("/v1/history?since=0", headers=AUTH)).json()
        assert [e["step"] for e in history] == [1]
    finally:
        await client.close()


async def test_a_gang_at_the_checkpoint_replays_and_an_older_one_rewinds_the_controller(tmp_path: Path) -> None:
    client = await _client(tmp_path, every=2)
    try:
        await _run_steps(client, 5, every=2)  # checkpoints 2 and 4; replay holds step 4
        assert await _register_trainer(client, 4) == 4  # replayed: the controller stays at step 5
        assert (await (await client.get("/v1/status", headers=AUTH)).json())["step"] == 5
        assert await _register_trainer(client, 3) == 2  # no trainer checkpoint 3 normally; rewinds to its 2
        status = await (await client.get("/v1/status", headers=AUTH)).json()
        assert (status["step"], status["latestModel"]) == (2, "file:///w/2")
    finally:
        await client.close()


async def test_a_trainer_beyond_a_restored_controller_is_told_to_restart(tmp_path: Path) -> None:
    client = await _client(tmp_path, every=2)
    await _run_steps(client, 3, every=2)
    await client.close()
    restored = await _client(tmp_path, every=2)  # the controller alone restarted: back at its checkpoint 2
    try:
        reply = await restored.get("/v1/trainer/batch?step=3", headers=AUTH)
        assert reply.status == 409 and (await reply.json())["step"] == 2
        assert (await restored.get("/v1/trainer/batch?step=2", headers=AUTH)).status == 204  # being generated
        assert await _register_trainer(restored, 3) == 2
    finally:
        await restored.close()
