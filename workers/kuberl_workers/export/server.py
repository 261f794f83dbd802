"""HTTP server of an export pod: lists a checkpoint volume's published versions and streams one as a tar.

`kuberl export JOB OUT` creates the pod and reads from it through the API server's pod proxy, so the user needs no
network path into the cluster, only RBAC for pods and pods/proxy. Requests carry the pod's one-time token in
`X-Kuberl-Token` (the API server's proxy consumes `Authorization`). The server exits after `idle_seconds` without a
request, so a pod whose CLI went away does not hold the claim for long.

    GET /healthz                -> 200
    GET /versions               -> {"versions": {"<version>": {"files": {name: bytes}, "missing": [name]}}}
    GET /versions/<version>.tar -> the version's files (flat), tar stream, no compression (safetensors do not shrink)
"""

from __future__ import annotations

import hmac
import json
import logging
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kuberl_workers.config import EXPORT_TOKEN_HEADER
from kuberl_workers.published import missing_files, published_versions

log = logging.getLogger(__name__)
TOKEN_HEADER = EXPORT_TOKEN_HEADER


def listing(root: Path) -> dict[str, dict[str, object]]:
    """{version: {"files": {name: bytes}, "missing": [required names absent]}} for every published version."""
    out: dict[str, dict[str, object]] = {}
    for version, folder in published_versions(root).items():
        files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and not p.is_symlink()}
        out[str(version)] = {"files": files, "missing": missing_files(folder)}
    return out


class ExportServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, host: str, port: int, token: str, idle_seconds: float) -> None:
        self.root, self.token, self.idle_seconds = root, token.encode(), idle_seconds
        self.last_request = time.monotonic()
        super().__init__((host, port), _Handler)

    def watch_idle(self) -> None:
        """Shut down once no request came for idle_seconds (run in a thread)."""
        while time.monotonic() - self.last_request < self.idle_seconds:
            time.sleep(min(5.0, self.idle_seconds / 4))
        log.info("no request for %.0f s: exiting", self.idle_seconds)
        self.shutdown()


class _Handler(BaseHTTPRequestHandler):
    server: ExportServer

    def log_message(self, format: str, *args: object) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.last_request = time.monotonic()
        if self.path == "/healthz":
            self._json(200, {"ok": True})
            return
        if not hmac.compare_digest(self.headers.get(TOKEN_HEADER, "").encode(), self.server.token):
            self._json(401, {"error": f"missing or wrong {TOKEN_HEADER}"})
            return
        versions = published_versions(self.server.root)
        if self.path == "/versions":
            self._json(200, {"versions": listing(self.server.root)})
            return
        name = self.path.removeprefix("/versions/").removesuffix(".tar")
        if not (self.path.startswith("/versions/") and self.path.endswith(".tar") and name.isdigit()):
            self._json(404, {"error": f"no such path {self.path!r}"})
            return
        folder = versions.get(int(name))
        if folder is None:
            self._json(404, {"error": f"no published version {name}; versions: {sorted(versions)}"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.end_headers()  # HTTP/1.0: the end of the stream is the connection's close
        with tarfile.open(fileobj=self.wfile, mode="w|") as tar:
            for file in sorted(folder.iterdir()):
                if file.is_file() and not file.is_symlink():
                    tar.add(file, arcname=file.name, recursive=False)
                    self.server.last_request = time.monotonic()  # a long transfer is not idleness


def serve(root: Path, host: str, port: int, token: str, idle_seconds: float) -> None:
    """Serve until idle for idle_seconds. Raises OSError when the address cannot be bound."""
    server = ExportServer(root, host, port, token, idle_seconds)
    threading.Thread(target=server.watch_idle, name="idle-exit", daemon=True).start()
    log.info("serving %s on %s:%d (%d versions)", root, host, port, len(published_versions(root)))
    server.serve_forever()
    server.server_close()
