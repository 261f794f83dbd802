"""Held-out evaluation (spec.eval, #18): pass@k, eval chunks ahead of training work, rounds that always end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from kuberl_workers.controller.evaluation import EVAL_INDEX_BASE, MAX_EVAL_FAILURES, pass_at_k
from kuberl_workers.controller.http import make_app
from kuberl_workers.controller.rewards import numeric
from kuberl_workers.controller.service import Controller
from kuberl_workers.tokenizer import ByteTokenizer
from support.controller_http import AUTH, SPEC, Client, generate_step
from support.jobs import TOKEN, job_config

EVAL = {"dataset": {"builtin": "arithmetic"}, "everySteps": 2, "samplesPerPrompt": 2, "maxPrompts": 3}


@pytest.mark.parametrize(
    ("n", "c", "k", "right"),
    [(5, 0, 1, 0.0), (5, 5, 1, 1.0), (5, 2, 1, 0.4), (5, 2, 5, 1.0), (4, 1, 2, 0.5), (10, 3, 4, 1 - 35 / 210)],
)
def test_pass_at_k_is_the_unbiased_estimator(n: int, c: int, k: int, right: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(right)


async def _client(tmp_path: Path, **spec: Any) -> tuple[Client, Controller]:
    cfg = job_config(tmp_path / "ckpt", **{**SPEC, "eval": EVAL, **spec})
    controller = Controller(cfg, tokenizer=ByteTokenizer(), reward=numeric)
    client = TestClient(TestServer(make_app(controller, TOKEN)))
    await client.start_server()
    await client.post("/v1/workers/register", json={"worker": "r0", "role": "rollout"}, headers=AUTH)
    return client, controller


async def _lease(client: Client, n: int = 8, version: int = 0) -> list[dict[str, Any]]:
    reply = await client.post(
        "/v1/rollout/lease", json={"worker": "r0", "maxRollouts": n, "version": version}, headers=AUTH
    )
    return list((await reply.json())["chunks"])


async def _answer(client: Client, chunks: list[dict[str, Any]], texts: list[str]) -> dict[str, Any]:
    results = [
        {
            "leaseId": c["leaseId"],
            "tokenIds": list(text.encode()),
            "logprobs": [-0.5] * len(text),
            "finishReason": "stop",
            "version": c["version"],
        }
        for c, text in zip(chunks, texts, strict=True)
    ]
    reply = await client.post("/v1/rollout/complete", json={"worker": "r0", "results": results}, headers=AUTH)
    return dict(await reply.json())


async def _eval_rows(tmp_path: Path, count: int) -> list[dict[str, Any]]:
    path = tmp_path / "ckpt" / "eval.jsonl"
    for _ in range(200):  # rewards are scored in child processes
        if path.is_file() and len(rows := path.read_text().splitlines()) >= count:
            return [json.loads(r) for r in rows]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {count} eval rows in {path}")


async def test_a_round_is_leased_first_scored_and_summarised(tmp_path: Path) -> None:
    client, controller = await _client(tmp_path)
    try:
        assert (await (await client.get("/v1/status", headers=AUTH)).json())["complete"] is False
        controller.tick()  # version 0 is due: the baseline before any training
        chunks = await _lease(client)
        evals = [c for c in chunks if c["leaseId"].startswith("e")]
        assert len(evals) == 6 and chunks[:6] == evals  # eval chunks first, then training work
        assert all(c["outputIds"] == [] and c["maxTokens"] == 8 for c in evals)  # whole completions
        assert controller.evaluator is not None and controller.evaluator.prompts is not None
        answers = [controller.evaluator.prompts[int(c["leaseId"].split("-")[1]) // 2][1] for c in evals]
        # sample 0 of each prompt right, sample 1 wrong: pass@1 0.5, pass@2 1.0
        texts = [a if i % 2 == 0 else "no" for i, a in enumerate(answers)]
        reply = await _answer(client, evals, texts)
        assert sorted(reply["accepted"]) == sorted(c["leaseId"] for c in evals)
        (row,) = await _eval_rows(tmp_path, 1)
        assert (row["policyVersion"], row["prompts"], row["samplesPerPrompt"]) == (0, 3, 2)
        assert (row["rewardMean"], row["passAt1"], row["passAt2"], row["failed"]) == (0.5, 0.5, 1.0, 0)
        assert row["policyVersionsUsed"] == [0]
        assert (await (await client.get("/v1/status", headers=AUTH)).json())["eval"]["passAt2"] == 1.0
        again = await _answer(client, evals[:1], ["1"])  # a late duplicate is refused, changes nothing
        assert again["rejected"] == [evals[0]["leaseId"]]
        # the training batch holds none of the eval prompts (they come from a range training never reaches)
        training = [c for c in chunks if not c["leaseId"].startswith("e")]
        assert training and all(c["rolloutId"] >= 0 for c in training)
        assert all(g.prompt_index < EVAL_INDEX_BASE for g in controller.scheduler.groups.values())
    finally:
        await client.close()


async def test_a_chunk_that_keeps_failing_scores_zero_and_the_round_ends(tmp_path: Path) -> None:
    client, controller = await _client(tmp_path, eval={**EVAL, "maxPrompts": 1, "samplesPerPrompt": 1})
    try:
        controller.tick()
        for attempt in range(MAX_EVAL_FAILURES):
            (chunk,) = [c for c in await _lease(client, 1) if c["leaseId"].startswith("e")]
            reply = await client.post(
                "/v1/rollout/release",
                json={"worker": "r0", "leaseIds": [chunk["leaseId"]], "error": f"engine refused ({attempt})"},
                headers=AUTH,
            )
            assert (await reply.json())["released"] == [chunk["leaseId"]]
        (row,) = await _eval_rows(tmp_path, 1)
        assert (row["failed"], row["rewardMean"], row["passAt1"]) == (1, 0.0, 0.0)
        assert controller.last_eval == row  # reported like any other round
        assert not [c for c in await _lease(client, 1) if c["leaseId"].startswith("e")]  # the round is over
    finally:
        await client.close()


async def test_expired_and_lost_eval_leases_go_back_to_the_queue(tmp_path: Path) -> None:
    client, controller = await _client(tmp_path, eval={**EVAL, "maxPrompts": 1, "samplesPerPrompt": 1})
    try:
        controller.tick()
        first = [c for c in await _lease(client, 1) if c["leaseId"].startswith("e")]
        assert first and not [c for c in await _lease(client, 1) if c["leaseId"].startswith("e")]
        assert controller.lost("r0") >= 0  # the pod went: its eval lease returns
        await client.post("/v1/workers/register", json={"worker": "r0", "role": "rollout"}, headers=AUTH)
        second = [c for c in await _lease(client, 1) if c["leaseId"].startswith("e")]
        assert second and second[0]["leaseId"] != first[0]["leaseId"]
        assert (await _answer(client, first, ["1"]))["rejected"] == [first[0]["leaseId"]]  # the old lease is stale
        assert controller.evaluator is not None
        controller.evaluator.expire(controller.clock() + 10_000)  # past the lease: back to the queue again
        third = [c for c in await _lease(client, 1) if c["leaseId"].startswith("e")]
        assert third and third[0]["leaseId"] != second[0]["leaseId"]
    finally:
        await client.close()


async def test_the_job_completes_only_after_the_last_version_is_evaluated(tmp_path: Path) -> None:
    client, controller = await _client(tmp_path, algorithm={"steps": 1}, eval={**EVAL, "everySteps": 5})
    try:
        controller.tick()
        baseline = [c for c in await _lease(client, 6) if c["leaseId"].startswith("e")]
        await _answer(client, baseline, ["x"] * len(baseline))
        await _eval_rows(tmp_path, 1)
        await generate_step(client)
        reply = await client.post(
            "/v1/trainer/published", json={"version": 1, "weightsUri": "u1", "checkpoint": False}, headers=AUTH
        )
        assert (await reply.json())["complete"] is False  # trained, but version 1 (the last) is not evaluated yet
        controller.tick()
        evals = [c for c in await _lease(client, 8, version=1) if c["leaseId"].startswith("e")]
        assert len(evals) == 6 and all(c["version"] == 1 for c in evals)
        await _answer(client, evals, ["x"] * 6)
        rows = await _eval_rows(tmp_path, 2)
        assert [r["policyVersion"] for r in rows] == [0, 1]
        assert (await (await client.get("/v1/status", headers=AUTH)).json())["complete"] is True
    finally:
        await client.close()


@pytest.mark.parametrize(("volume", "root"), [("data", "/var/kuberl/data"), ("held-out", "/var/kuberl/eval-data")])
def test_pods_mount_the_eval_dataset_volume(volume: str, root: str) -> None:
    from kuberl_operator import builders
    from kuberl_operator.api.rljob import RLJob
    from support.specs import minimal_job

    doc = minimal_job(
        task={"dataset": {"path": "train.jsonl", "volume": "data"}, "reward": "numeric"},
        eval={"dataset": {"path": "test.jsonl", "volume": volume}, "everySteps": 5},
    )
    job = RLJob.model_validate(doc)
    cfg = builders.render_config(job)
    assert cfg.eval is not None and cfg.eval.datasetPath == f"{root}/test.jsonl" and cfg.eval.everySteps == 5
    pod = builders.build_pod(job, cfg, "controller", 0)
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert claims == {"data", volume} and root in mounts


def test_kuberl_run_summary_shows_the_first_and_last_round(tmp_path: Path) -> None:
    from kuberl_operator.launcher.report import eval_summary

    path = tmp_path / "eval.jsonl"
    assert eval_summary(path) == []
    rows = [
        {"policyVersion": 0, "rewardMean": 0.1, "passAt1": 0.05, "prompts": 32},
        {"policyVersion": 80, "rewardMean": 0.6, "passAt1": 0.55, "prompts": 32},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{cut sho")  # a line cut by a crash is skipped
    ((label, text),) = eval_summary(path)
    assert label == "eval" and "reward 0.100 -> 0.600, pass@1 0.050 -> 0.550 (policy versions 0 -> 80" in text


def test_eval_prompts_that_cannot_fit_fail_the_start_naming_the_field(tmp_path: Path) -> None:
    data = tmp_path / "held-out.jsonl"
    data.write_text(json.dumps({"prompt": "x" * 500, "answer": "1"}) + "\n")
    cfg = job_config(tmp_path / "ckpt", **{**SPEC, "eval": {"dataset": {"path": str(data)}}})
    with pytest.raises(ValueError, match=r"^eval\.dataset: .*task\.maxPromptTokens"):
        Controller(cfg, tokenizer=ByteTokenizer(), reward=numeric)


async def test_a_draining_worker_gets_no_eval_chunks_and_its_eval_leases_keep_it(tmp_path: Path) -> None:
    client, controller = await _client(tmp_path, eval={**EVAL, "maxPrompts": 1, "samplesPerPrompt": 2})
    try:
        controller.tick()
        (held,) = [c for c in await _lease(client, 1) if c["leaseId"].startswith("e")]
        drain = await (await client.post("/v1/rollout/drain", json={"worker": "r0"}, headers=AUTH)).json()
        assert drain == {"worker": "r0", "leases": 1, "drained": False}  # its eval lease still counts
        assert not [c for c in await _lease(client, 4) if c["leaseId"].startswith("e")]
        reply = await client.post(
            "/v1/rollout/release", json={"worker": "r0", "leaseIds": [held["leaseId"]]}, headers=AUTH
        )
        assert (await reply.json())["released"] == [held["leaseId"]]  # handed back: not a failure
        assert controller.evaluator is not None and controller.evaluator.round is not None
        assert all(item.failures == 0 for item in controller.evaluator.round.items)
    finally:
        await client.close()
