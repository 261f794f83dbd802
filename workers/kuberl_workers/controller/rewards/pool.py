"""A process pool that keeps a slow, crashing or hostile reward from hurting the controller: each call runs in a
child process under a timeout; a call that times out, raises or kills its process scores 0 and is counted.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from kuberl_workers.controller.rewards.rules import MAX_COMPLETION_CHARS, RewardFn

log = logging.getLogger(__name__)


def _score(fn: RewardFn, completion: str, answer: str) -> float:
    value = float(fn(completion, answer))
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"reward is not finite: {value}")
    return value


class RewardPool:
    """Runs reward calls in `processes` spawned child processes, each under `timeout` seconds by default."""

    def __init__(self, processes: int = 2, timeout: float = 5.0) -> None:
        self.processes = processes
        self.timeout = timeout
        self.failures: dict[str, int] = {"timeout": 0, "error": 0, "crash": 0}
        self._context = multiprocessing.get_context("spawn")
        self._executor = self._new_executor()
        self._generation = 0

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.processes, mp_context=self._context)

    def _restart(self, generation: int) -> None:
        if generation != self._generation:
            return  # another failed call already replaced the pool
        self._generation += 1
        old = self._executor
        self._executor = self._new_executor()
        for process in list(getattr(old, "_processes", {}).values()):
            process.kill()  # a hung reward never returns: its process must go
        old.shutdown(wait=False, cancel_futures=True)

    async def call(
        self, function: Callable[..., Any], *args: Any, timeout: float | None = None, label: str = ""
    ) -> tuple[Any, str | None]:
        """(function(*args) run in a child, None), or (None, failure kind: `timeout`, `error` or `crash`).
        `function` and its arguments must pickle (a module-level function). Retries once when another call's
        failure broke the pool; a timeout or crash replaces the pool's processes.
        """
        loop = asyncio.get_running_loop()
        label = label or getattr(function, "__name__", str(function))
        for attempt in range(2):
            generation = self._generation
            future = loop.run_in_executor(self._executor, function, *args)
            try:
                return await asyncio.wait_for(future, timeout or self.timeout), None
            except TimeoutError:
                kind = "timeout"
            except BrokenProcessPool:
                if generation != self._generation and attempt == 0:
                    continue  # innocent victim of a restart: try again on the new pool
                kind = "crash"
            except Exception as error:  # any exception of a reward function is a zero reward
                log.warning("reward %s raised %s: %s", label, type(error).__name__, error)
                self.failures["error"] += 1
                return None, "error"
            self.failures[kind] += 1
            log.warning("reward %s failed (%s); scoring 0", label, kind)
            self._restart(generation)
            return None, kind
        return None, "crash"

    async def score(self, fn: RewardFn, completion: str, answer: str) -> tuple[float, str | None]:
        """(reward, failure kind or None) of a rule `fn(completion, answer) -> float`; a failure scores 0."""
        value, failure = await self.call(_score, fn, completion[:MAX_COMPLETION_CHARS], answer)
        return (0.0, failure) if failure else (float(value), None)

    def close(self) -> None:
        for process in list(getattr(self._executor, "_processes", {}).values()):
            process.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)
