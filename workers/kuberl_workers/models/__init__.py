"""Models kuberl builds itself (no download), and where a job's model directory is."""

from __future__ import annotations

from kuberl_workers.config import ModelConfig


def model_dir(model: ModelConfig, seed: int) -> str:
    """The Hugging Face-format directory of the job's model (the built-in one is built on first use)."""
    if model.path:
        return model.path
    if model.builtin == "tiny":
        from kuberl_workers.models.tiny import ensure_tiny

        return str(ensure_tiny(seed))
    raise ValueError(f"model: nothing to load (path unset, builtin {model.builtin!r})")
