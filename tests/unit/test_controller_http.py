"""The controller's HTTP API with aiohttp's test client: auth, limits, bad input, the step loop, checkpoints."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kuberl_workers import batch_codec
from kuberl_workers.config import Limits
from kuberl_workers.controller.http import make_app
from kuberl_workers.controller.rewards import RewardFn, numeric
from kuberl_workers.controller.service import Controller
from kuberl_workers.tokenizer import ByteTokenizer
from support import hostile_rewards
from support.controller_http import AUTH, SPEC, generate_step
from support.jobs import TOKEN, job_config

Client = TestClient[web.Request, web.Application]


async def _client(tmp_path: Path, reward: RewardFn = numeric, limits: Limits | None = None) -> Client:
    cfg = job_config(tmp_path / "ckpt", limits=limits or Limits(maxRequestBytes=4096, rewardTimeoutSeconds=1.0), **SPEC)
    controller = Controller(cfg, tokenizer=ByteTokenizer(), reward=reward)
    client = TestClient(TestServer(make_app(controller, TOKEN)))
    await client.start_server()
    return client


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    c = await _client(tmp_path)
    yield c
    await c.close()


async def test_token_required_and_server_keeps_serving(client: Client) -> None:
    assert (await client.get("/v1/status")).status == 401
    assert (await client.get("/v1/status", headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await client.get("/v1/status", headers={"Authorization": TOKEN})).status == 401
    assert (await client.get("/healthz")).status == 200
    response = await client.get("/v1/status", headers=AUTH)
    assert response.status == 200 and (await response.json())["step"] == 0


async def test_oversized_and_malformed_bodies(client: Client) -> None:
    big = await client.post("/v1/rollout/complete", data=b"x" * 10_000, headers=AUTH)
    assert big.status == 413
    bad_json = await client.post("/v1/rollout/lease", data=b"{nope", headers=AUTH)
    assert bad_json.status == 400 and "not JSON" in (await bad_json.json())["error"]
    wrong = await client.post("/v1/rollout/lease", json={"worker": "w", "maxRollouts": "3", "version": 0}, headers=AUTH)
    assert wrong.status == 400
    assert any(p.startswith("maxRollouts:") for p in (await wrong.json())["problems"])
    nested = await client.post(
        "/v1/rollout/complete",
        json={
            "worker": "w",
            "results": [
                {"leaseId": "1-1", "tokenIds": [1, -2], "logprobs": [0.0, 0.0], "finishReason": None, "version": 0}
            ],
        },
        headers=AUTH,
    )
    assert nested.status == 400 and any(p.startswith("results.0.tokenIds.1") for p in (await nested.json())["problems"])
    unknown = await client.post("/v1/rollout/drain", json={"worker": "w", "evil": True}, headers=AUTH)
    assert unknown.status == 400
    assert (await client.get("/v1/trainer/batch?step=-1", headers=AUTH)).status == 400
    assert (await client.get("/v1/status", headers=AUTH)).status == 200  # still serving


async def test_step_loop_over_http(client: Client, tmp_path: Path) -> None:
    reg = await client.post("/v1/workers/register", json={"worker": "r0", "role": "rollout"}, headers=AUTH)
    assert (await reg.json())["version"] == 0
    stale = await client.post("/v1/rollout/lease", json={"worker": "r0", "maxRollouts": 1, "version": 5}, headers=AUTH)
    assert stale.status == 409 and (await stale.json())["version"] == 0
    assert await generate_step(client) >= 2
    batch = await (await client.get("/v1/trainer/batch?step=0", headers=AUTH)).json()
    group = batch["groups"][0]
    assert group["rollouts"][0]["outputIds"] == [52, 50] and group["rollouts"][0]["versions"] == [0, 0]
    assert {r["reward"] for g in batch["groups"] for r in g["rollouts"]} <= {0.0, 1.0}
    # the trainer's form: the same batch with binary per-token arrays (the test worker's logprobs are float32 values)
    binary = await (await client.get("/v1/trainer/batch?step=0&encoding=binary", headers=AUTH)).json()
    assert binary["encoding"] == "binary" and batch_codec.decode(binary) == batch
    wrong = await client.get("/v1/trainer/batch?step=0&encoding=xml", headers=AUTH)
    assert wrong.status == 400 and "encoding" in (await wrong.json())["error"]
    samples = await (await client.get("/v1/samples?since=1", headers=AUTH)).json()
    assert samples and samples[0]["step"] == 1 and samples[0]["completion"] == "42"
    assert {"prompt", "answer", "reward", "finishReason", "versions", "completionTokens"} <= set(samples[0])
    assert samples[0]["finishReason"] == "stop" and samples[0]["versions"] == [0]
    assert (await client.get("/v1/samples?since=x", headers=AUTH)).status == 400
    assert await (await client.get("/v1/samples?since=2", headers=AUTH)).json() == []
    pub = await client.post(
        "/v1/trainer/published",
        json={
            "version": 1,
            "weightsUri": "file:///w/1",
            "checkpoint": True,
            "trainSeconds": 0.3,
            "stats": {"loss": 0.5, "klRef": 0.01},
        },
        headers=AUTH,
    )
    assert (await pub.json())["lastCheckpoint"].endswith("controller-00000001.json")
    history = await (await client.get("/v1/history?since=1", headers=AUTH)).json()
    assert history[0]["loss"] == 0.5 and history[0]["klRef"] == 0.01 and history[0]["completions"] >= 2
    rollout_side = {"completionTokensMax", "rewardStd", "zeroAdvantageGroups", "policyVersionsSpannedMax"}
    assert rollout_side | {"oldestPolicyVersion", "rolloutsPurged"} <= set(history[0])
    assert history[0]["policyVersionsSpannedMax"] >= 1 and history[0]["rolloutsPurged"] >= 0
    bad = await client.post(
        "/v1/trainer/published",
        json={"version": 2, "weightsUri": "u", "stats": {"loss": float("nan")}},
        headers=AUTH,
    )
    assert bad.status == 400
    assert (tmp_path / "ckpt" / "controller-00000001.json").is_file()
    demand = await (await client.get("/v1/demand", headers=AUTH)).json()
    assert demand["tokenBudget"] == 4 and demand["desiredRolloutReplicas"] >= 1
    assert demand["perReplicaTokensPerSecond"]["r0"] > 0
    beat = await (
        await client.post("/v1/workers/heartbeat", json={"worker": "r0", "role": "rollout", "version": 1}, headers=AUTH)
    ).json()
    assert beat == {"version": 1, "weightsUri": "file:///w/1", "drain": False, "complete": False}
    metrics = await (await client.get("/metrics")).text()
    for name in (
        "kuberl_reward_bucket",
        "kuberl_budget_fill",
        "kuberl_rollout_tokens_per_second",
        "kuberl_policy_versions_spanned_bucket",
        "kuberl_step_phase_seconds_bucket",
        "kuberl_leases_requeued_total",
        "kuberl_rollouts_purged_total",
        "kuberl_reward_failures_total",
        "kuberl_workers_alive",
        "kuberl_desired_rollout_replicas",
    ):
        assert name in metrics, name
    assert 'job="job",namespace="default",role="controller"' in metrics
    drain = await (await client.post("/v1/rollout/drain", json={"worker": "r0"}, headers=AUTH)).json()
    assert drain == {"worker": "r0", "leases": 0, "drained": True}


async def test_restart_restores_checkpointed_state(tmp_path: Path) -> None:
    client = await _client(tmp_path)
    await generate_step(client)
    await client.post(
        "/v1/trainer/published", json={"version": 1, "weightsUri": "u1", "checkpoint": True}, headers=AUTH
    )
    before = await (await client.get("/v1/status", headers=AUTH)).json()
    await client.close()
    again = await _client(tmp_path)
    try:
        after = await (await again.get("/v1/status", headers=AUTH)).json()
        assert (after["step"], after["policyVersion"], after["doneLog"]) == (before["step"], 1, before["doneLog"])
        trainer = await again.post(
            "/v1/workers/register", json={"worker": "t0", "role": "trainer", "step": 1}, headers=AUTH
        )
        assert (await trainer.json())["resumeStep"] == 1
        rollout = await again.post("/v1/workers/register", json={"worker": "r9", "role": "rollout"}, headers=AUTH)
        assert (await rollout.json())["weightsUri"] == "u1"  # engines can load the checkpointed version
    finally:
        await again.close()


async def test_hanging_reward_does_not_stall_the_step(tmp_path: Path) -> None:
    client = await _client(tmp_path, reward=hostile_rewards.hangs)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await generate_step(client)
        assert loop.time() - start < 20
        batch = await (await client.get("/v1/trainer/batch?step=0", headers=AUTH)).json()
        assert all(r["reward"] == 0.0 for g in batch["groups"] for r in g["rollouts"])
        metrics = await (await client.get("/metrics")).text()
        failures = (
            'kuberl_reward_failures_total{job="job",namespace="default",reason="timeout",reward="reward",'
            'role="controller"}'
        )
        assert failures in metrics
    finally:
        await client.close()


async def test_replayed_and_future_versions_and_lost_workers(client: Client) -> None:
    await generate_step(client)
    first = await client.post("/v1/trainer/published", json={"version": 1, "weightsUri": "u1"}, headers=AUTH)
    assert (await first.json())["outcome"] == "advanced"
    again = await client.post("/v1/trainer/published", json={"version": 1, "weightsUri": "u1"}, headers=AUTH)
    assert (await again.json())["outcome"] == "replayed"  # a restarted gang re-trained step 0
    future = await client.post("/v1/trainer/published", json={"version": 5, "weightsUri": "u5"}, headers=AUTH)
    assert future.status == 409
    reply = await client.post("/v1/rollout/lease", json={"worker": "r1", "maxRollouts": 2, "version": 1}, headers=AUTH)
    held = len((await reply.json())["chunks"])
    lost = await client.post("/v1/workers/lost", json={"worker": "r1"}, headers=AUTH)
    assert held > 0 and (await lost.json()) == {"worker": "r1", "requeued": held}


async def test_a_rollout_pod_recreated_under_its_name_starts_clean(client: Client) -> None:
    """The same pod name registering again is a new process: the old one's leases go back to the queue at once (not
    after its heartbeats run out), and a drain aimed at the old one does not stop the new one."""
    await client.post("/v1/workers/register", json={"worker": "r0", "role": "rollout"}, headers=AUTH)
    lease = await client.post("/v1/rollout/lease", json={"worker": "r0", "maxRollouts": 2, "version": 0}, headers=AUTH)
    held = len((await lease.json())["chunks"])
    assert held == 2
    drain = await (await client.post("/v1/rollout/drain", json={"worker": "r0"}, headers=AUTH)).json()
    assert drain == {"worker": "r0", "leases": held, "drained": False}
    await client.post("/v1/workers/register", json={"worker": "r0", "role": "rollout"}, headers=AUTH)
    metrics = await (await client.get("/metrics")).text()
    assert re.search(rf"^kuberl_leases_requeued_total{{[^}}]*}} {held}\.0$", metrics, re.MULTILINE), metrics
    beat = await client.post(
        "/v1/workers/heartbeat", json={"worker": "r0", "role": "rollout", "version": 0}, headers=AUTH
    )
    assert (await beat.json())["drain"] is False
    again = await client.post("/v1/rollout/lease", json={"worker": "r0", "maxRollouts": 2, "version": 0}, headers=AUTH)
    assert len((await again.json())["chunks"]) == held  # the requeued rollouts, to the new process


async def test_one_invalid_result_costs_only_its_chunk(client: Client) -> None:
    """#15 kind 1: a 400 for the whole request left the valid results of the batch unapplied (or half-applied) and
    made the rollout worker exit. Right: each result is applied or refused on its own, and a chunk the engine
    refused alone is counted against its rollout until its group is dropped."""
    await client.post("/v1/workers/register", json={"worker": "r0", "role": "rollout"}, headers=AUTH)
    lease = await client.post("/v1/rollout/lease", json={"worker": "r0", "maxRollouts": 3, "version": 0}, headers=AUTH)
    good, bad, poison = (await lease.json())["chunks"]
    results = [
        {"leaseId": good["leaseId"], "tokenIds": [52], "logprobs": [-0.5], "finishReason": None, "version": 0},
        {"leaseId": bad["leaseId"], "tokenIds": [52] * 9, "logprobs": [-0.5] * 9, "finishReason": None, "version": 0},
    ]
    reply = await client.post("/v1/rollout/complete", json={"worker": "r0", "results": results}, headers=AUTH)
    body = await reply.json()
    assert reply.status == 200 and body["accepted"] == [good["leaseId"]] and body["rejected"] == []
    assert body["invalid"] == [{"leaseId": bad["leaseId"], "error": body["invalid"][0]["error"]}]
    assert "chunk of 9 tokens" in body["invalid"][0]["error"]
    status = await (await client.get("/v1/status", headers=AUTH)).json()
    assert status["policyVersion"] == 0  # still serving
    failed = await client.post(
        "/v1/rollout/release",
        json={"worker": "r0", "leaseIds": [poison["leaseId"]], "error": "decoder prompt cannot be empty"},
        headers=AUTH,
    )
    assert (await failed.json())["released"] == [poison["leaseId"]]
    metrics = await (await client.get("/metrics")).text()
    assert re.search(r"^kuberl_chunks_failed_total\{[^}]*\} 2\.0$", metrics, re.M), metrics


async def test_a_batch_is_encoded_once_for_the_whole_gang(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every trainer rank fetches the whole batch; encoding it is the controller's largest cost per step at scale."""
    calls: list[str] = []
    encode = batch_codec.encode

    def counting(step: int, groups: list[dict[str, Any]], encoding: str) -> bytes:
        calls.append(encoding)
        return encode(step, groups, encoding)

    monkeypatch.setattr(batch_codec, "encode", counting)
    await client.post("/v1/workers/register", json={"worker": "r0", "role": "rollout"}, headers=AUTH)
    await generate_step(client)  # it fetches the batch (JSON) to see the step closed
    assert calls == ["json"]
    calls.clear()
    bodies = [await (await client.get("/v1/trainer/batch?step=0&encoding=binary", headers=AUTH)).read() for _ in "abcd"]
    assert len(set(bodies)) == 1 and calls == ["binary"]
    json_bodies = [await (await client.get("/v1/trainer/batch?step=0", headers=AUTH)).read() for _ in "ab"]
    assert calls == ["binary"] and json_bodies[0] == json_bodies[1] != bodies[0]  # the JSON one was kept too
