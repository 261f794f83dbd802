"""Fuzzing the workers' HTTP APIs (hypothesis): no 5xx, no hang, the right 4xx, and no corrupted state after.

The controller's API is driven in process (aiohttp's test server, the real app); the trainer's weight server
(a thread, the real handler) over loopback. The rollout worker serves only /healthz and /metrics (it pulls its
work), which the path fuzz covers for the trainer's equivalent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from kuberl_workers.config import Limits
from kuberl_workers.controller.http import make_app
from kuberl_workers.controller.rewards import numeric
from kuberl_workers.controller.scheduler import Scheduler
from kuberl_workers.controller.service import Controller
from kuberl_workers.tokenizer import ByteTokenizer
from kuberl_workers.trainer.server import serve
from support.jobs import TOKEN, job_config
from support.net import free_port, http_get

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SPEC: dict[str, Any] = dict(
    task={"dataset": {"builtin": "arithmetic"}, "reward": "numeric", "promptsPerStep": 2, "samplesPerPrompt": 2},
    c3po={"tokenBudget": 4, "retention": 1, "inferencePoolCapacity": 4, "chunkTokens": 8},
    algorithm={"steps": 3},
    checkpoint={"everySteps": 1, "keep": 2},
)
POSTS = [
    "/v1/workers/register",
    "/v1/workers/heartbeat",
    "/v1/workers/lost",
    "/v1/rollout/lease",
    "/v1/rollout/complete",
    "/v1/rollout/release",
    "/v1/rollout/drain",
    "/v1/trainer/published",
]
GETS = ["/v1/demand", "/v1/trainer/batch", "/v1/status", "/v1/history", "/healthz", "/metrics"]
# near-valid bodies: each endpoint's real shape, one field at a time replaced by anything
TEMPLATES: dict[str, dict[str, Any]] = {
    "/v1/workers/register": {"worker": "w", "role": "rollout", "version": 0, "address": "127.0.0.1"},
    "/v1/workers/heartbeat": {"worker": "w", "role": "rollout", "version": 0},
    "/v1/workers/lost": {"worker": "w"},
    "/v1/rollout/lease": {"worker": "w", "maxRollouts": 4, "version": 0},
    "/v1/rollout/complete": {
        "worker": "w",
        "results": [{"leaseId": "1-1", "tokenIds": [1], "logprobs": [0.0], "finishReason": "stop", "version": 0}],
        "seconds": 0.1,
    },
    "/v1/rollout/release": {"worker": "w", "leaseId": "1-1"},
    "/v1/rollout/drain": {"worker": "w"},
    "/v1/trainer/published": {"version": 1, "uri": "file:///tmp/x"},
}
ALLOWED = {200, 204, 400, 401, 404, 405, 409, 410, 413, 422}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, Any]:
    path = draw(st.sampled_from(sorted(TEMPLATES)))
    body = dict(TEMPLATES[path])
    key = draw(st.sampled_from(sorted(body)))
    body[key] = draw(json_values)
    return path, body


class Harness:
    """The real controller app on aiohttp's test server, driven from synchronous hypothesis tests."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        cfg = job_config(tmp / "ckpt", limits=Limits(maxRequestBytes=65536, rewardTimeoutSeconds=1.0), **SPEC)
        self.controller = Controller(cfg, tokenizer=ByteTokenizer(), reward=numeric)
        self.client: TestClient[web.Request, web.Application] = TestClient(
            TestServer(make_app(self.controller, TOKEN)), loop=self.loop
        )
        self.loop.run_until_complete(self.client.start_server())

    def send(self, method: str, path: str, data: bytes | None = None, auth: bool = True) -> tuple[int, str]:
        async def go() -> tuple[int, str]:
            headers = {**AUTH, "Content-Type": "application/json"} if auth else {}
            async with self.client.request(method, path, data=data, headers=headers) as response:
                return response.status, await response.text()

        return self.loop.run_until_complete(asyncio.wait_for(go(), timeout=10))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("fuzz"))
    yield h
    h.close()


def _check(status: int, text: str, what: str) -> None:
    assert status in ALLOWED, f"{what}: {status} {text[:300]}"
    if 400 <= status < 500 and status != 405:
        assert "error" in json.loads(text), f"{what}: a 4xx without an error message: {text[:300]}"


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(path=st.sampled_from(POSTS), body=json_values)
def test_any_json_body(harness: Harness, path: str, body: Any) -> None:
    status, text = harness.send("POST", path, json.dumps(body).encode())
    _check(status, text, f"POST {path} {body!r}")


@FUZZ
@given(case=near_valid())
def test_near_valid_bodies(harness: Harness, case: tuple[str, Any]) -> None:
    path, body = case
    status, text = harness.send("POST", path, json.dumps(body).encode())
    _check(status, text, f"POST {path} {body!r}")


@FUZZ
@given(
    path=st.sampled_from(POSTS + GETS),
    raw=st.binary(max_size=200),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    auth=st.booleans(),
)
def test_raw_bytes_methods_and_missing_tokens(harness: Harness, path: str, raw: bytes, method: str, auth: bool) -> None:
    status, text = harness.send(method, path, raw, auth=auth)
    assert status in ALLOWED, f"{method} {path} {raw!r}: {status} {text[:300]}"
    if not auth and path.startswith("/v1/"):
        assert status == 401


@FUZZ
@given(query=st.text(max_size=30), path=st.sampled_from(["/v1/trainer/batch", "/v1/history", "/v1/demand"]))
def test_query_strings(harness: Harness, query: str, path: str) -> None:
    status, text = harness.send("GET", f"{path}?step={query}&since={query}")
    _check(status, text, f"GET {path}?step={query!r}")


def test_state_survives_the_fuzz(harness: Harness) -> None:
    """After everything above: still serving, the state round-trips, and a real worker still gets work."""
    assert harness.send("GET", "/healthz")[0] == 200
    state = harness.controller.scheduler.state()
    restored = Scheduler.restore(
        harness.controller.sched_cfg, harness.controller.prompts, json.loads(json.dumps(state))
    )
    assert restored.state() == state
    for rollout in harness.controller.scheduler.rollouts.values():
        assert rollout.group in harness.controller.scheduler.groups
    status, _ = harness.send("POST", "/v1/workers/lost", json.dumps({"worker": "w"}).encode())
    assert status == 200
    version = json.loads(harness.send("GET", "/v1/status")[1])["policyVersion"]
    status, text = harness.send(
        "POST", "/v1/rollout/lease", json.dumps({"worker": "fresh", "maxRollouts": 4, "version": version}).encode()
    )
    assert status == 200 and json.loads(text)["chunks"], text


@pytest.fixture(scope="module")
def trainer_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("weights")
    (root / "weights-00000001").mkdir()
    (root / "weights-00000001" / "model.safetensors").write_bytes(b"w" * 100)
    port = free_port()
    server = serve("127.0.0.1", port, CollectorRegistry(), root, TOKEN)
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


@settings(max_examples=100, deadline=None)
@given(suffix=st.text(max_size=20), auth=st.booleans())
def test_trainer_weight_paths(trainer_server: str, suffix: str, auth: bool) -> None:
    from urllib.parse import quote

    status, body = http_get(f"{trainer_server}/weights/{quote(suffix)}", TOKEN if auth else None, timeout=5)
    assert status in ({200, 404} if auth else {401}), (suffix, status)
    if status == 200:
        assert body == b"w" * 100 and suffix.lstrip("0") == "1"
