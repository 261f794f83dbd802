"""`http` rewards: a remote reward service, sent batches of items as JSON (protocol: docs/protocol.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from kuberl_workers.config import reward_auth_env
from kuberl_workers.controller.rewards.base import BadRewardValue, RewardInput, Scored, Scorer, normalize, register

log = logging.getLogger(__name__)
BATCH_WAIT_SECONDS = 0.05  # an item waits at most this long for others to fill its batch
BACKOFF_SECONDS = 0.5  # first retry after this; doubled for each further one
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class RequestFailed(Exception):
    def __init__(self, reason: str, message: str, retry: bool) -> None:
        super().__init__(message)
        self.reason, self.retry = reason, retry


@register
class HttpScorer(Scorer):
    kind = "http"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._queue: asyncio.Queue[tuple[RewardInput, asyncio.Future[Scored]]] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._session: Any = None
        self.requests = 0
        self._inflight: set[asyncio.Task[None]] = set()
        self._urls = self.cfg.urls or ((self.cfg.url,) if self.cfg.url else ())
        self._turn = 0  # next replica of a reward server (client-side balancing; a retry moves on)

    async def score(self, item: RewardInput) -> Scored:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._sender = asyncio.get_running_loop().create_task(self._send_batches())
        future: asyncio.Future[Scored] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _send_batches(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + BATCH_WAIT_SECONDS
            while len(batch) < self.cfg.batchSize:
                left = deadline - asyncio.get_running_loop().time()
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(left, 0)))
                except TimeoutError:
                    break
            # batches go out concurrently: a slow one does not hold the next
            task = asyncio.get_running_loop().create_task(self._answer(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _answer(self, batch: list[tuple[RewardInput, asyncio.Future[Scored]]]) -> None:
        try:
            results = await self._post([item for item, _ in batch])
        except RequestFailed as error:
            log.warning("reward %s: %d items score 0: %s", self.cfg.name, len(batch), error)
            results = [Scored(0.0, failure=error.reason)] * len(batch)
        except Exception as error:  # never leave a future unanswered: its rollout would wait for ever
            log.exception("reward %s: unexpected failure", self.cfg.name)
            results = [Scored(0.0, failure=f"error:{type(error).__name__}")] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _post(self, items: list[RewardInput]) -> list[Scored]:
        """One batch, retried with exponential backoff; per-item results (a bad item costs only itself)."""
        attempt = 0
        while True:
            try:
                body = await self._request({"items": [item.as_json() for item in items]})
                return self._results(body, len(items))
            except RequestFailed as error:
                if not error.retry or attempt >= self.cfg.retries:
                    raise
                log.info("reward %s: %s; retry %d of %d", self.cfg.name, error, attempt + 1, self.cfg.retries)
                await asyncio.sleep(BACKOFF_SECONDS * 2**attempt)
                attempt += 1

    async def _request(self, payload: dict[str, Any]) -> Any:
        import aiohttp

        if self._session is None:
            headers = {}
            value = os.environ.get(self.cfg.authEnv or reward_auth_env(self.cfg.name))
            if value:
                headers[self.cfg.authHeader] = value
            self._session = aiohttp.ClientSession(headers=headers)
        self.requests += 1
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeoutSeconds or 30.0)
        url = self._urls[self._turn % len(self._urls)]
        self._turn += 1
        try:
            async with self._session.post(url, json=payload, timeout=timeout) as response:
                if response.status >= 500 or response.status == 429:
                    raise RequestFailed(f"http_{response.status}", f"HTTP {response.status}", retry=True)
                if response.status >= 400:
                    text = (await response.text())[:200]
                    raise RequestFailed(f"http_{response.status}", f"HTTP {response.status}: {text}", retry=False)
                raw = await response.content.read(MAX_RESPONSE_BYTES + 1)
        except TimeoutError:
            raise RequestFailed("timeout", f"no answer in {self.cfg.timeoutSeconds} s", retry=True) from None
        except aiohttp.ClientError as error:
            raise RequestFailed("connection", f"{type(error).__name__}: {error}", retry=True) from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise RequestFailed("bad_response", "response larger than 64 MiB", retry=False)
        import json

        try:
            return json.loads(raw)
        except ValueError:
            raise RequestFailed("bad_response", "response is not JSON", retry=False) from None

    def _results(self, body: Any, count: int) -> list[Scored]:
        rewards = body.get("rewards") if isinstance(body, dict) else None
        if not isinstance(rewards, list) or len(rewards) != count:
            got = len(rewards) if isinstance(rewards, list) else type(rewards).__name__
            raise RequestFailed("bad_response", f"expected {{rewards: [{count} values]}}, got {got}", retry=False)
        out = []
        for raw in rewards:
            try:
                value, parts = normalize(raw)
                out.append(Scored(value, parts))
            except BadRewardValue as error:
                out.append(Scored(0.0, failure=error.reason))
        return out

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        if self._session is not None:
            await self._session.close()
