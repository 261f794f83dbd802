"""Helpers for tests of the controller's HTTP API: a small job spec and one step of rollouts driven by hand."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from support.jobs import TOKEN

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SPEC: dict[str, Any] = dict(
    task={
        "dataset": {"builtin": "arithmetic"},
        "reward": "numeric",
        "promptsPerStep": 2,
        "samplesPerPrompt": 2,
        "maxNewTokens": 8,
    },
    c3po={"tokenBudget": 4, "retention": 1, "inferencePoolCapacity": 4, "chunkTokens": 8},
    algorithm={"steps": 3},
    checkpoint={"everySteps": 1, "keep": 2},
)


async def generate_step(client: Client, worker: str = "r0") -> int:
    """Lease and answer every chunk with a correct-length, stopping completion; return chunks completed."""
    done = 0
    first = (await (await client.get("/v1/status", headers=AUTH)).json())["step"]
    for _ in range(50):
        status = await (await client.get("/v1/status", headers=AUTH)).json()
        reply = await client.post(
            "/v1/rollout/lease",
            json={"worker": worker, "maxRollouts": 8, "version": status["policyVersion"]},
            headers=AUTH,
        )
        chunks = (await reply.json())["chunks"]
        if not chunks:
            if (await client.get(f"/v1/trainer/batch?step={first}", headers=AUTH)).status == 200:
                return done
            await asyncio.sleep(0.1)
            continue
        results = [
            {
                "leaseId": c["leaseId"],
                "tokenIds": [52, 50],
                "logprobs": [-0.5, -0.25],
                "finishReason": "stop",
                "version": c["version"],
            }
            for c in chunks
        ]
        reply = await client.post(
            "/v1/rollout/complete", json={"worker": worker, "results": results, "seconds": 0.5}, headers=AUTH
        )
        assert reply.status == 200 and not (await reply.json())["rejected"]
        done += len(chunks)
    raise AssertionError("step never became ready")
