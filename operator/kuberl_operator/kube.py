"""A thin asyncio client of the Kubernetes API (aiohttp, as kopf uses), for the few calls reconcile makes."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

CORE = {"pods", "configmaps", "secrets", "services", "events"}
GROUPS = {"networkpolicies": "/apis/networking.k8s.io/v1"}


class ApiError(RuntimeError):
    """A refused request. `message` is the API server's own explanation (its Status object's `message`)."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: {status} {body[:300]}")
        self.status, self.body = status, body
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        self.message = str(parsed.get("message") or body) if isinstance(parsed, dict) else body[:1000]

    @property
    def refused(self) -> bool:
        """The request itself is at fault (invalid, forbidden, admission): retrying it unchanged cannot help.
        Not a conflict (409: exists), throttling (429) or a server error (5xx).
        """
        return 400 <= self.status < 500 and self.status not in (404, 409, 429)


def path(namespace: str, plural: str, name: str | None = None, subresource: str | None = None) -> str:
    prefix = "/api/v1" if plural in CORE else GROUPS.get(plural, "/apis/kuberl.io/v1alpha1")
    out = f"{prefix}/namespaces/{namespace}/{plural}"
    if name:
        out += f"/{name}"
    if subresource:
        out += f"/{subresource}"
    return out


class Kube:
    def __init__(
        self, server: str, session: aiohttp.ClientSession, headers: dict[str, str] | None = None, ssl: Any = None
    ) -> None:
        self.server = server.rstrip("/")
        self.session = session
        self.headers = headers or {}
        self.ssl = ssl
        self.requests = 0
        self.writes = 0

    async def call(
        self,
        method: str,
        url_path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Any:
        self.requests += 1
        if method != "GET":
            self.writes += 1
        headers = {**self.headers, "Content-Type": content_type, "Accept": "application/json", **(headers or {})}
        async with self.session.request(
            method,
            f"{self.server}{url_path}",
            params=params,
            ssl=self.ssl,
            data=json.dumps(body) if body is not None else None,
            headers=headers,
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise ApiError(response.status, method, url_path, text)
            return json.loads(text) if text else None

    async def download(self, url_path: str, headers: dict[str, str], sink: Callable[[bytes], Awaitable[None]]) -> int:
        """GET `url_path` and hand its body to `sink` chunk by chunk (1 MiB); returns the bytes received.
        Raises ApiError on a status >= 400 (with the start of the body).
        """
        self.requests += 1
        received = 0
        async with self.session.get(
            f"{self.server}{url_path}", ssl=self.ssl, headers={**self.headers, **headers}
        ) as response:
            if response.status >= 400:
                raise ApiError(
                    response.status, "GET", url_path, (await response.content.read(4096)).decode(errors="replace")
                )
            async for chunk in response.content.iter_chunked(1 << 20):
                received += len(chunk)
                await sink(chunk)
        return received

    async def get(self, url_path: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.call("GET", url_path)
            return result
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def list(self, namespace: str, plural: str, selector: str) -> list[dict[str, Any]]:
        result = await self.call("GET", path(namespace, plural), params={"labelSelector": selector})
        return list((result or {}).get("items") or [])

    async def create(self, namespace: str, plural: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create; an object that already exists (409) is not an error: reconcile is idempotent."""
        try:
            result: dict[str, Any] = await self.call("POST", path(namespace, plural), body)
            return result
        except ApiError as error:
            if error.status == 409:
                return None
            raise

    async def merge_patch(self, url_path: str, body: dict[str, Any]) -> Any:
        return await self.call("PATCH", url_path, body, content_type="application/merge-patch+json")

    async def delete(self, namespace: str, plural: str, name: str) -> bool:
        try:
            await self.call("DELETE", path(namespace, plural, name))
            return True
        except ApiError as error:
            if error.status == 404:
                return False
            raise
