"""Rank 0's HTTP server: weights for engines without a shared volume (token required), metrics, health."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

from kuberl_workers.trainer.server import serve
from support.net import free_port, http_get


def test_weights_served_with_token_only(tmp_path: Path) -> None:
    weights = tmp_path / "weights-00000003"
    weights.mkdir()
    payload = bytes(range(256)) * 5000  # over one 1 MiB block
    (weights / "model.safetensors").write_bytes(payload)
    registry = CollectorRegistry()
    Gauge("kuberl_trainer_step", "steps", registry=registry).set(3)
    port = free_port()
    server = serve("127.0.0.1", port, registry, tmp_path, "secret-token-0123456789")
    try:
        base = f"http://127.0.0.1:{port}"
        assert http_get(f"{base}/weights/3")[0] == 401
        assert http_get(f"{base}/weights/3", "wrong")[0] == 401
        assert http_get(f"{base}/weights/3", "secret-token-0123456789") == (200, payload)
        assert http_get(f"{base}/weights/4", "secret-token-0123456789")[0] == 404
        assert http_get(f"{base}/weights/../../etc/passwd", "secret-token-0123456789")[0] == 404
        assert b"kuberl_trainer_step 3.0" in http_get(f"{base}/metrics")[1]
        assert http_get(f"{base}/healthz")[0] == 200
    finally:
        server.shutdown()
