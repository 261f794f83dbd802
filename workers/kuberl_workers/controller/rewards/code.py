"""`code` rewards: the completion's program run with the row's tests in the sandbox (sandbox.py): 1 or 0."""

from __future__ import annotations

import re
from typing import Any

from kuberl_workers.controller.rewards import sandbox
from kuberl_workers.controller.rewards.base import RewardInput, Scored, Scorer, register
from kuberl_workers.controller.rewards.rules import MAX_COMPLETION_CHARS

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_IMPORT = re.compile(r"^(?:import|from)\s+\S.*$", re.MULTILINE)
# The sandbox's own limits are the ones that count; the reward process waits this much longer before it gives up.
POOL_GRACE_SECONDS = 10.0


def program(completion: str, row: dict[str, Any], tests_field: str, entry_field: str) -> str | None:
    """The program to run: the completion's last fenced code block (or the whole completion), preceded by the
    row's prompt when the completion only continues it (HumanEval's completion style: no `def <entry point>`)
    or else by the prompt's import lines; then the row's tests and `check(<entry point>)`. None when the row has
    no tests.
    """
    tests = row.get(tests_field)
    if not isinstance(tests, str) or not tests.strip():
        return None
    blocks = _FENCE.findall(completion[:MAX_COMPLETION_CHARS])
    code = blocks[-1] if blocks else completion[:MAX_COMPLETION_CHARS]
    entry = row.get(entry_field)
    prompt: str = row["prompt"] if isinstance(row.get("prompt"), str) else ""
    if isinstance(entry, str) and f"def {entry}(" not in code and f"def {entry}(" in prompt:
        code = prompt + code
    else:
        code = "\n".join(_IMPORT.findall(prompt)) + "\n" + code
    check = f"\n\ncheck({entry})\n" if isinstance(entry, str) and entry.isidentifier() else "\n"
    return f"{code}\n\n{tests}{check}"


@register
class CodeScorer(Scorer):
    kind = "code"

    async def score(self, item: RewardInput) -> Scored:
        cfg = self.cfg
        source = program(item.completion, item.row, cfg.testsField, cfg.entryPointField)
        if source is None:
            return Scored(0.0, failure="no_tests")
        wall = cfg.timeoutSeconds or 10.0
        limits = sandbox.SandboxLimits(wall, cfg.cpuSeconds, cfg.memoryMiB, cfg.outputKiB)
        result, failure = await self.pool.call(
            sandbox.run, source, limits, timeout=wall + POOL_GRACE_SECONDS, label=cfg.name
        )
        if failure:
            return Scored(0.0, failure=failure)
        return Scored(1.0) if result.passed else Scored(0.0, failure=result.reason)
