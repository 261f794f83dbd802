"""The trainer's small HTTP server: /healthz, /metrics, and (rank 0) /weights/N for engines without a shared
volume (bearer token required).
"""

from __future__ import annotations

import hmac
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kuberl_workers.published import version_dir


def serve(
    host: str, port: int, registry: CollectorRegistry, weights_dir: Path | None, token: str
) -> ThreadingHTTPServer:
    expected = f"Bearer {token}".encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet: metrics are scraped often
            return

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, b'{"ok": true}', "application/json")
            elif self.path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path.startswith("/weights/") and weights_dir is not None:
                if not hmac.compare_digest(self.headers.get("Authorization", "").encode(), expected):
                    self._send(401, b'{"error": "missing or wrong bearer token"}', "application/json")
                    return
                version = self.path.removeprefix("/weights/")
                file = (
                    version_dir(weights_dir, int(version)) / "model.safetensors"
                    if (version.isascii() and version.isdigit())
                    else None
                )
                if file is None or not file.is_file():
                    self._send(404, b'{"error": "no such weights version"}', "application/json")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(file.stat().st_size))
                self.end_headers()
                with file.open("rb") as handle:
                    self.connection.sendfile(handle)  # sendfile(2): the kernel copies, not Python
            else:
                self._send(404, b'{"error": "not found"}', "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="trainer-http").start()
    return server
