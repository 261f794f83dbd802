"""The trainer's step on a real (tiny) transformers model: sharding equivalence and checkpoint resume."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import spawn
from transformers import LlamaForCausalLM

from kuberl_workers import checkpoint
from kuberl_workers.config import AlgorithmConfig
from kuberl_workers.models.tiny import PAD_ID, build_model
from kuberl_workers.trainer.step import (
    TRAINER_PREFIX,
    load_checkpoint,
    make_optimizer,
    publish_weights,
    save_checkpoint,
    train_step,
)
from support.batches import synthetic_batch

ALGO = AlgorithmConfig(
    icepopEnabled=True,
    icepopAlpha=0.5,
    icepopBeta=5.0,
    clipEpsilon=0.2,
    klCoef=0.0,
    learningRate=1e-3,
    weightDecay=0.01,
    maxGradNorm=1.0,
    steps=10,
)


def _model(directory: Path) -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(str(directory), torch_dtype=torch.float32)
    return model


def _tiny(tmp_path: Path) -> Path:
    directory = tmp_path / "tiny"
    if not (directory / "model.safetensors").exists():
        build_model(directory, seed=0)
    return directory


def test_step_changes_weights_and_reports(tmp_path: Path) -> None:
    model = _model(_tiny(tmp_path))
    opt = make_optimizer(model, ALGO)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = train_step(model, opt, synthetic_batch(0), ALGO, temperature=1.0, pad_id=PAD_ID)
    assert stats.grad_norm > 0 and stats.sequences == 16 and stats.tokens > 0
    assert 0.0 <= stats.masked_fraction <= 1.0 and stats.mean_abs_logp_diff > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_resume_gives_the_same_next_step(tmp_path: Path) -> None:
    directory = _tiny(tmp_path)
    model = _model(directory)
    opt = make_optimizer(model, ALGO)
    train_step(model, opt, synthetic_batch(0), ALGO, temperature=1.0, pad_id=PAD_ID)
    save_checkpoint(tmp_path / "ckpt", 1, model, opt, keep=2)
    train_step(model, opt, synthetic_batch(1), ALGO, temperature=1.0, pad_id=PAD_ID)
    uninterrupted = model.state_dict()

    resumed = _model(directory)
    opt2 = make_optimizer(resumed, ALGO)
    assert load_checkpoint(tmp_path / "ckpt", resumed, opt2) == 1
    train_step(resumed, opt2, synthetic_batch(1), ALGO, temperature=1.0, pad_id=PAD_ID)
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, uninterrupted[key]), key


def test_corrupt_trainer_checkpoint_falls_back(tmp_path: Path) -> None:
    model = _model(_tiny(tmp_path))
    opt = make_optimizer(model, ALGO)
    save_checkpoint(tmp_path / "ckpt", 1, model, opt, keep=3)
    save_checkpoint(tmp_path / "ckpt", 2, model, opt, keep=3)
    newest = checkpoint.step_path(tmp_path / "ckpt", TRAINER_PREFIX, 2, ".pt")
    newest.write_bytes(newest.read_bytes()[:100])
    assert load_checkpoint(tmp_path / "ckpt", model, opt) == 1


def test_publish_weights_loadable(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model = _model(_tiny(tmp_path))
    path, size = publish_weights(tmp_path / "ckpt", 1, model)
    loaded = load_file(str(path / "model.safetensors"))
    assert size > 0 and torch.equal(loaded["lm_head.weight"], model.state_dict()["lm_head.weight"])


def _rank(rank: int, world: int, port: int, directory: str, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model(Path(directory)))
        opt = make_optimizer(model, ALGO)
        for step in range(2):
            train_step(
                model,
                opt,
                synthetic_batch(step, groups=3),
                ALGO,
                temperature=1.0,
                pad_id=PAD_ID,
                rank=rank,
                world=world,
            )
        if rank == 0:
            torch.save(model.module.state_dict(), out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_rank(tmp_path: Path) -> None:
    directory = _tiny(tmp_path)
    single = _model(directory)
    opt = make_optimizer(single, ALGO)
    for step in range(2):  # 3 groups over 2 ranks: an uneven shard must still give the same update
        train_step(single, opt, synthetic_batch(step, groups=3), ALGO, temperature=1.0, pad_id=PAD_ID)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "two.pt"
    spawn(_rank, args=(2, port, str(directory), str(out)), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    for key, value in single.state_dict().items():
        assert torch.allclose(value, two[key], atol=2e-5, rtol=1e-4), (key, (value - two[key]).abs().max())
