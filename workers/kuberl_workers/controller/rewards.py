"""Rule-based reward functions and a process pool that keeps a slow, crashing or hostile one from hurting the
controller: each call runs in a child process under a timeout; a failure scores 0 and is counted.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from kuberl_workers.catalog import REWARD_NAMES

log = logging.getLogger(__name__)

RewardFn = Callable[[str, str], float]
# Completions are cut to this many characters before scoring: a reward never sees unbounded input.
MAX_COMPLETION_CHARS = 65536
# A number as people write it: sign, thousands separators (groups of exactly three digits), decimals, an
# exponent, or a fraction. Bounded repetitions keep the scan linear on hostile input.
_NUMBER = re.compile(
    r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3}){1,21}|\d{1,64})(?:\.\d{1,64})?(?:[eE][-+]?\d{1,4})?"
    r"(?:\s{0,2}/\s{0,2}\d{1,64})?"
)
_MAX_EXPONENT = 1000  # Fraction(10) ** 10**9 would hang: larger exponents are no answer anyone checks


def parse_number(token: str) -> Fraction | None:
    """One number token (as `_NUMBER` matches it) -> its exact value; None for a zero denominator or a huge
    exponent. "70,000" = 70000, "1e-05" = 1/100000, "3.0" = 3, "-1/2" = -0.5.
    """
    text = token.replace(",", "").replace(" ", "")
    numerator, _, denominator = text.partition("/")
    try:
        decimal = Decimal(numerator)
        if abs(decimal.adjusted()) > _MAX_EXPONENT:
            return None
        value = Fraction(decimal)
        if denominator:
            value /= Fraction(int(denominator))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None
    return value


def _last_number(text: str) -> Fraction | None:
    found = _NUMBER.findall(text[-MAX_COMPLETION_CHARS:])
    return parse_number(found[-1]) if found else None


def exact_match(completion: str, answer: str) -> float:
    """1 when the completion, trimmed, equals the answer, trimmed."""
    return float(completion[:MAX_COMPLETION_CHARS].strip() == answer.strip())


def numeric(completion: str, answer: str) -> float:
    """1 when the last number in the completion equals the answer's number as an exact rational: thousands
    separators, a sign, a currency symbol around it, scientific notation, trailing zeros and fractions compare by
    value ("$70,000" = "70000", "0.00001" = "1e-05", "1/2" = "0.5"; "-5" != "1e-05").
    """
    got, want = _last_number(completion), _last_number(answer)
    return float(got is not None and want is not None and got == want)


def format_reward(completion: str, answer: str) -> float:
    """0.9 x numeric, plus 0.1 when the completion is just the number (a well-formed answer line)."""
    well_formed = _NUMBER.fullmatch(completion[:MAX_COMPLETION_CHARS].strip()) is not None
    return 0.9 * numeric(completion, answer) + 0.1 * well_formed


REGISTRY: dict[str, RewardFn] = {"exact_match": exact_match, "numeric": numeric, "format": format_reward}
assert tuple(REGISTRY) == REWARD_NAMES, "the API's reward enum and the registry must list the same names"


def _score(fn: RewardFn, completion: str, answer: str) -> float:
    value = float(fn(completion, answer))
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"reward is not finite: {value}")
    return value


class RewardPool:
    """Scores completions in child processes; a call that times out, raises or kills its process scores 0."""

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

    async def score(self, fn: RewardFn, completion: str, answer: str) -> tuple[float, str | None]:
        """(reward, failure kind or None). Retries once when another call's failure broke the pool."""
        loop = asyncio.get_running_loop()
        for attempt in range(2):
            generation = self._generation
            future = loop.run_in_executor(self._executor, _score, fn, completion[:MAX_COMPLETION_CHARS], answer)
            try:
                return await asyncio.wait_for(future, self.timeout), None
            except TimeoutError:
                kind = "timeout"
            except BrokenProcessPool:
                if generation != self._generation and attempt == 0:
                    continue  # innocent victim of a restart: try again on the new pool
                kind = "crash"
            except Exception as error:  # any exception of a reward function is a zero reward
                log.warning("reward %s raised %s: %s", getattr(fn, "__name__", fn), type(error).__name__, error)
                self.failures["error"] += 1
                return 0.0, "error"
            self.failures[kind] += 1
            log.warning("reward %s failed (%s); scoring 0", getattr(fn, "__name__", fn), kind)
            self._restart(generation)
            return 0.0, kind
        return 0.0, "crash"

    def close(self) -> None:
        for process in list(getattr(self._executor, "_processes", {}).values()):
            process.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)
