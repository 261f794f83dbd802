"""`python` rewards: a `module:function` of the user's, imported and called inside a reward process."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kuberl_workers.controller.rewards.base import BadRewardValue, RewardInput, Scored, Scorer, normalize, register
from kuberl_workers.controller.rewards.rules import MAX_COMPLETION_CHARS

_loaded: dict[tuple[str, str | None], Callable[..., Any]] = {}  # per reward process: import once


def load_function(function: str, path: str | None) -> Callable[..., Any]:
    """Import `module:function`, with `path` (a directory, or a .py file's directory) first on the import path.
    Raises ImportError, AttributeError or TypeError with a message naming what is missing.
    """
    key = (function, path)
    if key in _loaded:
        return _loaded[key]
    module_name, _, attribute = function.partition(":")
    if path:
        where = Path(path)
        if not where.exists():
            raise ImportError(f"{path}: no such file or directory")
        folder = str((where.parent if where.suffix == ".py" else where).resolve())
        if folder not in sys.path:
            sys.path.insert(0, folder)
    module = importlib.import_module(module_name)
    fn: Callable[..., Any] | None = getattr(module, attribute, None)
    if fn is None:
        raise AttributeError(f"module {module_name!r} ({module.__file__}) has no {attribute!r}")
    if not callable(fn):
        raise TypeError(f"{function} is a {type(fn).__name__}, not a function")
    _loaded[key] = fn
    return fn


def check_loads(function: str, path: str | None) -> None:
    """Preflight, in a child process: the function imports (ImportError, AttributeError, TypeError if not)."""
    load_function(function, path)


def call(function: str, path: str | None, item: dict[str, Any]) -> Any:
    """Run in a reward process: the user's function on one item, by keyword."""
    return load_function(function, path)(**item)


@register
class PythonScorer(Scorer):
    kind = "python"

    async def score(self, item: RewardInput) -> Scored:
        fields = item.as_json() | {"completion": item.completion[:MAX_COMPLETION_CHARS]}
        raw, failure = await self.pool.call(
            call,
            self.cfg.function,
            self.cfg.path,
            fields,
            timeout=self.cfg.timeoutSeconds,
            label=self.cfg.name,
        )
        if failure:
            return Scored(0.0, failure=failure)
        try:
            value, parts = normalize(raw)
        except BadRewardValue as error:
            return Scored(0.0, failure=error.reason)
        return Scored(value, parts)
