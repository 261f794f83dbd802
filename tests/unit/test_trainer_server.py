"""Rank 0's HTTP server: weights for engines without a shared volume (token required), metrics, health."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

from kuberl_workers.trainer.server import serve


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_weights_served_with_token_only(tmp_path: Path) -> None:
    weights = tmp_path / "weights-00000003"
    weights.mkdir()
    payload = bytes(range(256)) * 5000  # over one 1 MiB block
    (weights / "model.safetensors").write_bytes(payload)
    registry = CollectorRegistry()
    Gauge("kuberl_trainer_step", "steps", registry=registry).set(3)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = serve("127.0.0.1", port, registry, tmp_path, "secret-token-0123456789")
    try:
        base = f"http://127.0.0.1:{port}"
        assert _get(f"{base}/weights/3")[0] == 401
        assert _get(f"{base}/weights/3", "wrong")[0] == 401
        assert _get(f"{base}/weights/3", "secret-token-0123456789") == (200, payload)
        assert _get(f"{base}/weights/4", "secret-token-0123456789")[0] == 404
        assert _get(f"{base}/weights/../../etc/passwd", "secret-token-0123456789")[0] == 404
        assert b"kuberl_trainer_step 3.0" in _get(f"{base}/metrics")[1]
        assert _get(f"{base}/healthz")[0] == 200
    finally:
        server.shutdown()
