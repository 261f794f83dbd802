"""#17: each reward kind and each way it fails (timeout, exception, NaN, wrong type, HTTP 5xx, connection refused,
hostile code): the failing item scores 0 with a counted reason and the rewards keep serving."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kuberl_workers.config import Limits, RewardConfig
from kuberl_workers.controller.dataset import humaneval_rows
from kuberl_workers.controller.rewards import RewardInput, RewardSet, math_reward, normalize
from kuberl_workers.controller.rewards.base import BadRewardValue
from kuberl_workers.controller.rewards.code import program

# (reference answer, completion, expected): math-verify's equivalence, with the numeric rule for what it misreads
MATH_CASES = [
    ("\\frac{1}{2}", "The answer is \\boxed{0.5}", 1.0),
    ("1/2", "so $\\frac12$", 1.0),
    ("0.5", "\\boxed{\\frac{1}{2}}", 1.0),
    ("70000", "The answer is 70,000.", 1.0),
    ("1,234", "\\boxed{1234}", 1.0),
    ("1234", "The total is 1,234 dollars", 1.0),
    ("3", "The answer is $\\boxed{3}$", 1.0),
    ("-3", "The answer is -3.", 1.0),
    ("3", "The answer is -3.", 0.0),
    ("x+1", "\\boxed{1+x}", 1.0),
    ("x^2+2x+1", "\\boxed{(x+1)^2}", 1.0),
    ("50\\%", "\\boxed{0.5}", 1.0),
    ("50%", "the answer is 50%", 1.0),
    ("1e-5", "\\boxed{0.00001}", 1.0),
    ("2.5e3", "so it is 2500", 1.0),
    ("1.5\\times10^{-3}", "\\boxed{0.0015}", 1.0),
    ("10^{3}", "\\boxed{1000}", 1.0),
    ("\\sqrt{2}/2", "\\boxed{\\frac{\\sqrt2}{2}}", 1.0),
    ("2\\pi", "\\boxed{6.283185307}", 1.0),
    ("[1,2]", "\\boxed{[1,2]}", 1.0),
    ("(1,2)", "\\boxed{[1,2]}", 0.0),
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}", 1.0),
    ("\\dfrac{3}{4}", "\\boxed{\\tfrac34}", 1.0),
    ("3/4", "The answer is 0.75", 1.0),
    ("72^\\circ", "\\boxed{72}", 1.0),
    ("5 \\text{ m}", "\\boxed{5}", 1.0),
    ("12 cm", "\\boxed{12}", 1.0),
    ("\\text{(B)}", "\\boxed{B}", 1.0),
    ("2", "\\boxed{2.0}", 1.0),
    ("0.333", "\\boxed{1/3}", 0.0),
    ("\\frac{2}{3}", "\\boxed{0.67}", 0.0),
    ("5", "The answer is 6", 0.0),
    ("7", "no answer here", 0.0),
    ("42", "First 41, then \\boxed{42}", 1.0),
    ("42", "\\boxed{42} and later 41", 1.0),
]


@pytest.mark.parametrize(("answer", "completion", "expected"), MATH_CASES)
def test_math_reward(answer: str, completion: str, expected: float) -> None:
    assert math_reward(completion, answer) == expected


def test_normalize_numbers_and_dicts() -> None:
    assert normalize(0.5) == (0.5, {})
    assert normalize({"score": 1.0, "format": 0.2}) == (1.0, {"format": 0.2})
    assert normalize({"a": 0.25, "b": 0.5}) == (0.75, {"a": 0.25, "b": 0.5})
    for bad, reason in [(float("nan"), "nan"), ("1", "type"), (None, "type"), (True, "type"), ({}, "type")]:
        with pytest.raises(BadRewardValue) as caught:
            normalize(bad)
        assert caught.value.reason == reason


def item(completion: str = "42", answer: str = "42", row: dict[str, Any] | None = None) -> RewardInput:
    return RewardInput("What is 6*7?", completion, answer, row or {"prompt": "What is 6*7?", "answer": answer})


MODULE = """
import math, time

def score(prompt, completion, answer, row):
    return {"correct": float(completion.strip() == answer), "short": 1.0 / (1 + len(completion))}

def fails(**kwargs):
    raise RuntimeError("bug in the user's reward")

def nan(**kwargs):
    return math.nan

def text(**kwargs):
    return "1.0"

def slow(**kwargs):
    time.sleep(60)
    return 1.0
"""


async def test_python_rewards_from_a_file_and_their_failures(tmp_path: Path) -> None:
    (tmp_path / "user_rewards.py").write_text(MODULE)
    path = str(tmp_path / "user_rewards.py")

    def python(name: str, function: str, weight: float = 1.0) -> RewardConfig:
        return RewardConfig(
            name=name, kind="python", function=f"user_rewards:{function}", path=path, weight=weight, timeoutSeconds=3
        )

    configs = (
        python("mine", "score", 0.5),
        python("fails", "fails"),
        python("nan", "nan"),
        python("text", "text"),
        python("slow", "slow"),
        RewardConfig(name="rule", kind="builtin", builtin="numeric"),
    )
    rewards = RewardSet(configs, Limits(rewardProcesses=2))
    try:
        scored = await rewards.score(item())
        assert scored.parts["mine/correct"] == 1.0 and scored.parts["mine/short"] == pytest.approx(1 / 3)
        assert scored.value == pytest.approx(0.5 * (1 + 1 / 3) + 1.0)  # failures add 0
        assert {k: v for k, v in rewards.failures.items()} == {
            ("fails", "error"): 1,
            ("nan", "nan"): 1,
            ("text", "type"): 1,
            ("slow", "timeout"): 1,
        }
        again = await rewards.score(item("41"))  # the pool serves after a timeout replaced its processes
        assert again.parts["rule"] == 0.0 and again.parts["mine/correct"] == 0.0
    finally:
        await rewards.close()


class RewardServer:
    """A local reward service speaking docs/protocol.md, with scripted failures."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[str | None] = []
        self.fail_first = 0
        self.status = 503
        self.delay = 0.0
        self.reply: Any = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(request.headers.get("Authorization"))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=self.status, text="busy")
        if self.reply is not None:
            return web.json_response(self.reply)
        rewards = [float(i["completion"] == i["answer"]) for i in body["items"]]
        return web.json_response({"rewards": rewards})


@pytest.fixture
async def server() -> Any:
    service = RewardServer()
    app = web.Application()
    app.router.add_post("/score", service.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    service.url = f"http://127.0.0.1:{port}/score"  # type: ignore[attr-defined]
    yield service
    await runner.cleanup()


def http(url: str, **fields: Any) -> RewardConfig:
    return RewardConfig(name="judge", kind="http", url=url, **{"timeoutSeconds": 2.0, "retries": 2, **fields})


async def test_http_reward_batches_authenticates_and_retries(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERL_REWARD_AUTH_JUDGE", "Bearer s3cret")
    rewards = RewardSet((http(server.url, batchSize=4, authEnv="KUBERL_REWARD_AUTH_JUDGE"),), Limits())
    try:
        server.fail_first = 1  # one 503, then served: the retry scores it
        results = await asyncio.gather(*(rewards.score(item(str(40 + i), "42")) for i in range(6)))
        assert [r.value for r in results] == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
        assert sorted(len(r["items"]) for r in server.requests[1:]) == [2, 4]  # batches of at most 4
        assert server.headers[0] == "Bearer s3cret" and not rewards.failures
        assert set(server.requests[0]["items"][0]) == {"prompt", "completion", "answer", "row"}
    finally:
        await rewards.close()


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ({"fail_first": 10, "status": 503}, "http_503"),  # retried, then given up
        ({"fail_first": 10, "status": 400}, "http_400"),  # not retried
        ({"delay": 5.0}, "timeout"),
        ({"reply": {"rewards": [1.0, 2.0]}}, "bad_response"),
        ({"reply": {"rewards": ["x"]}}, "type"),
        ({"reply": {"rewards": [None]}}, "type"),
    ],
)
async def test_http_reward_failures_score_zero_by_reason(server: Any, setup: dict[str, Any], reason: str) -> None:
    for key, value in setup.items():
        setattr(server, key, value)
    rewards = RewardSet((http(server.url, retries=1, timeoutSeconds=1.0),), Limits())
    try:
        scored = await rewards.score(item())
        assert (scored.value, scored.failure) == (0.0, f"judge:{reason}")
        assert rewards.failures == {("judge", reason): 1}
        tries = 1 if reason in ("http_400", "bad_response", "type") else 2
        assert len(server.requests) == tries
    finally:
        await rewards.close()


async def test_http_reward_connection_refused() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    rewards = RewardSet((http(f"http://127.0.0.1:{port}/score", retries=1),), Limits())
    try:
        scored = await rewards.score(item())
        assert scored.failure == "judge:connection"
    finally:
        await rewards.close()


HOSTILE = {
    "fork_bomb": ("import os\nwhile True:\n    os.fork()", "denied_process"),
    "infinite_loop": ("while True:\n    pass", "cpu_time"),
    "sleeps": ("import time\ntime.sleep(600)", "timeout"),
    "rm_rf": ("import shutil\nshutil.rmtree('/')", "denied_file"),
    "reads_token": ("print(open('/var/run/secrets/kubernetes.io/serviceaccount/token').read())", "denied_file"),
    "reads_controller_files": ("import os\nprint(os.listdir('/'))", "denied_file"),
    "opens_socket": ("import socket\nsocket.socket().connect(('127.0.0.1', 80))", "denied_network"),
    "prints_1gb": ("import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 2**20)", "output_limit"),
    "allocates_8gb": ("x = bytearray(8 * 2**30)", "memory"),
    "subprocess": ("import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])", "denied_process"),
    "ctypes": ("import ctypes\nctypes.CDLL(None)", "denied_native"),
}


async def test_hostile_code_scores_zero_by_kind_and_the_controller_stays_healthy() -> None:
    code = RewardConfig(name="tests", kind="code", timeoutSeconds=4, cpuSeconds=2, memoryMiB=256, outputKiB=64)
    rewards = RewardSet((code,), Limits(rewardProcesses=2))
    row = {"test": "def check(f):\n    assert f() == 1\n", "entry_point": "solve"}
    try:
        for name, (body, reason) in HOSTILE.items():
            completion = f"```python\ndef solve():\n    return 1\n\n{body}\n```"
            scored = await rewards.score(item(completion, "", row))
            assert (scored.value, scored.failure) == (0.0, f"tests:{reason}"), name
        good = await rewards.score(item("```python\ndef solve():\n    return 1\n```", "", row))
        wrong = await rewards.score(item("```python\ndef solve():\n    return 2\n```", "", row))
        assert (good.value, good.failure, wrong.value, wrong.failure) == (1.0, None, 0.0, "tests:tests_failed")
        assert rewards.failures[("tests", "denied_process")] == 2
    finally:
        await rewards.close()
    assert Path("/").exists() and any(Path("/").iterdir())


async def test_humaneval_canonical_solutions_pass_and_prompts_alone_fail() -> None:
    problems = humaneval_rows()
    assert len(problems) == 164
    rewards = RewardSet((RewardConfig(name="tests", kind="code"),), Limits(rewardProcesses=2))
    try:
        sample = problems[:12]
        # as an instruct model answers: the whole function in a fenced block; and HumanEval's own continuation
        fenced = [f"```python\n{p['prompt']}{p['canonical_solution']}```" for p in sample]
        passed = await asyncio.gather(*(rewards.score(item(c, "", p)) for c, p in zip(fenced, sample, strict=True)))
        assert [s.value for s in passed] == [1.0] * len(sample), [s.failure for s in passed]
        body = await rewards.score(item(sample[0]["canonical_solution"], "", sample[0]))
        empty = await rewards.score(item("    pass\n", "", sample[0]))
        assert (body.value, empty.value) == (1.0, 0.0)
    finally:
        await rewards.close()


def test_program_assembly() -> None:
    row = {
        "prompt": "from typing import List\n\ndef f(x: List[int]) -> int:\n",
        "test": "def check(c): pass",
        "entry_point": "f",
    }
    whole = program(
        "Sure:\n```python\ndef f(x: List[int]) -> int:\n    return 1\n```\nDone.", row, "test", "entry_point"
    )
    assert whole is not None and whole.startswith("from typing import List\ndef f(") and whole.endswith("check(f)\n")
    continued = program("    return 1\n", row, "test", "entry_point")
    assert continued is not None and continued.startswith(row["prompt"] + "    return 1")
    assert program("x", {"prompt": "p"}, "test", "entry_point") is None
    assert json.dumps(row)  # rows stay JSON (they are sent to http rewards as they are)
