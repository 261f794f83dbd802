"""The rollout worker's /healthz: a pod is Ready only once its vLLM engine has loaded (no engine here: none needed)."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from kuberl_workers.config import Ports
from kuberl_workers.rollout.worker import RolloutWorker
from support.jobs import TOKEN, job_config
from support.net import free_port


async def test_healthz_answers_503_until_the_engine_is_loaded(tmp_path: Path) -> None:
    cfg = job_config(tmp_path / "ckpt")
    cfg = cfg.model_copy(update={"ports": Ports(rollout=free_port())})
    worker = RolloutWorker(cfg, "http://127.0.0.1:1", TOKEN, "job-rollout-0", "127.0.0.1")
    runner = await worker._serve_health()
    url = f"http://127.0.0.1:{cfg.ports.rollout}/healthz"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as loading:
                assert loading.status == 503 and (await loading.json())["ok"] is False
            worker.engine = object()  # type: ignore[assignment]  # what run() sets once the engine is up
            async with session.get(url) as loaded:
                assert loaded.status == 200 and (await loaded.json()) == {"ok": True, "version": 0}
    finally:
        await runner.cleanup()
