"""A small synchronous client of the controller's API (trainer side), with retries on connection errors."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger(__name__)


class ControllerError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"controller answered {status}: {body[:500]}")
        self.status = status


class ControllerClient:
    def __init__(self, url: str, token: str, timeout: float = 30.0, retry_seconds: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self._auth = f"Bearer {token}"
        self.timeout = timeout
        self.retry_seconds = retry_seconds

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """(status, decoded JSON or None). Connection failures are retried for `retry_seconds` (a controller
        restart); HTTP errors other than 204/409/410 raise ControllerError.
        """
        data = json.dumps(body).encode() if body is not None else None
        deadline = time.monotonic() + self.retry_seconds
        while True:
            request = urllib.request.Request(
                f"{self.url}{path}",
                data=data,
                method=method,
                headers={"Authorization": self._auth, "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                    return response.status, json.loads(raw) if raw else None
            except urllib.error.HTTPError as error:
                raw = error.read().decode(errors="replace")
                if error.code in (409, 410):
                    return error.code, json.loads(raw) if raw else None
                raise ControllerError(error.code, raw) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                if time.monotonic() > deadline:
                    raise
                log.info("controller unreachable (%s); retrying", error)
                time.sleep(1.0)
