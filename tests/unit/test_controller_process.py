"""`python -m kuberl_workers.controller` as a real process: config and token from the env contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kuberl_workers.config import ENV_CONFIG, ENV_POD_IP, ENV_TOKEN_FILE, Ports
from kuberl_workers.models.tiny import ensure_tiny
from support.jobs import TOKEN, job_config
from support.net import free_port, http_get


def test_controller_process_serves_and_stops(tmp_path: Path) -> None:
    port = free_port()
    cfg = job_config(tmp_path / "ckpt").model_copy(update={"ports": Ports(controller=port)})
    (tmp_path / "config.json").write_text(cfg.model_dump_json())
    (tmp_path / "token").write_text(TOKEN + "\n")
    ensure_tiny(cfg.seed)  # built (about 15 s) before the clock starts: this test is about serving, not building
    env = {
        **os.environ,
        ENV_CONFIG: str(tmp_path / "config.json"),
        ENV_TOKEN_FILE: str(tmp_path / "token"),
        ENV_POD_IP: "127.0.0.1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "kuberl_workers.controller"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if http_get(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        assert http_get(f"{base}/v1/status")[0] == 401
        code, body = http_get(f"{base}/v1/demand", TOKEN)
        assert code == 200 and json.loads(body)["tokenBudget"] == cfg.c3po.tokenBudget
        code, body = http_get(f"{base}/metrics")
        assert code == 200 and b"kuberl_budget_fill" in body
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode in (0, -15), output
    assert TOKEN not in output  # the token never reaches the logs
