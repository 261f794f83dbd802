"""Models kuberl builds itself (no model hub), and where a job's model directory is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kuberl_workers.config import ModelConfig


def _tiny(seed: int) -> Path:
    from kuberl_workers.models.tiny import ensure_tiny

    return ensure_tiny(seed)


def _smollm2(seed: int) -> Path:
    from kuberl_workers.models.smollm2 import ensure_smollm2

    return ensure_smollm2()


BUILDERS: dict[str, Callable[[int], Path]] = {"tiny": _tiny, "smollm2-135m-instruct": _smollm2}
"""Built-in model name -> function building it once into the cache (or finding it there) for a seed."""


def model_dir(model: ModelConfig, seed: int) -> str:
    """The Hugging Face-format directory of the job's model (a built-in one is built on first use)."""
    if model.path:
        return model.path
    if model.builtin in BUILDERS:
        return str(BUILDERS[model.builtin](seed))
    raise ValueError(f"model: nothing to load (path unset, builtin {model.builtin!r})")
