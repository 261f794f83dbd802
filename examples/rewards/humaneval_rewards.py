"""Example user reward for examples/humaneval-code.yaml (a `python` reward: docs/rewards.md)."""

import re

FENCE = re.compile(r"```(?:python|py)\s*\n.*?```", re.DOTALL)


def fenced(prompt, completion, answer, row):
    """1.0 when the completion holds a fenced Python code block, as the prompt asks; else 0.0."""
    return float(FENCE.search(completion) is not None)
