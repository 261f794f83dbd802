"""#17: `python -m kuberl_workers.rewardmodel` serves a one-label sequence classifier (a reward model) through
vLLM's pooling runner in the reward protocol; its rewards are the classifier's raw logits, as transformers computes
them, and a bad request is refused without taking the server down."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification


def _reward_model(tiny_dir: Path, out: Path) -> Path:
    """The tiny model's body under a one-label score head (a seeded random head): a real, if untrained, reward
    model in the Hugging Face format reward models ship in."""
    config = LlamaConfig.from_pretrained(tiny_dir)
    config.architectures = ["LlamaForSequenceClassification"]
    config.num_labels = 1
    config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    body = LlamaForCausalLM.from_pretrained(tiny_dir).model.state_dict()
    model.model.load_state_dict(body)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(out)
    return out


def _post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_reward_model_server_scores_raw_logits(tiny_dir: Path, tmp_path: Path) -> None:
    model_dir = _reward_model(tiny_dir, tmp_path / "rm")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    command = [sys.executable, "-m", "kuberl_workers.rewardmodel", "--model", str(model_dir), "--port", str(port)]
    command += ["--host", "127.0.0.1", "--max-model-len", "256", "--dtype", "float32"]
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(1)
        items = [
            {"prompt": "1+1=", "completion": "2", "answer": "2", "row": {}},
            {"prompt": [{"role": "user", "content": "2+2="}], "completion": "5", "answer": "4", "row": {}},
            {"prompt": "3*3=", "completion": "9" * 40, "answer": "9", "row": {}},
        ]
        status, body = _post(f"http://127.0.0.1:{port}/score", {"items": items})
        assert status == 200, body
        rewards = body["rewards"]
        assert len(rewards) == 3 and all(isinstance(r, float) for r in rewards)
        # the same numbers transformers gives for the same text (the tiny tokenizer has no chat template: turns
        # are joined by newlines)
        reference = LlamaForSequenceClassification.from_pretrained(model_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        texts = ["1+1=\n2", "2+2=\n5", "3*3=\n" + "9" * 40]
        with torch.no_grad():
            expected = [float(reference(**tokenizer(t, return_tensors="pt")).logits[0, 0]) for t in texts]
        assert max(abs(a - b) for a, b in zip(rewards, expected, strict=True)) < 1e-3, (rewards, expected)
        assert len(set(rewards)) == 3  # different texts, different rewards
        status, body = _post(f"http://127.0.0.1:{port}/score", {"items": [{"prompt": "x"}]})
        assert status == 400 and "completion" in body["error"]
        status, again = _post(f"http://127.0.0.1:{port}/score", {"items": items[:1]})
        assert status == 200 and abs(again["rewards"][0] - rewards[0]) < 1e-4  # still serving, deterministic
    finally:
        server.terminate()
        server.wait(30)
        log.close()
