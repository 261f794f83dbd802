"""Trainer strategies (trainer.strategy): how the gang holds the model, reduces gradients, checkpoints, and gathers
the weights it publishes. One interface, a registry by name; `ddp` here, `fsdp2` in trainer/fsdp2.py.

The step (trainer/step.py) and the entry point (trainer/__main__.py) call only this interface, so a strategy is a
module, not a branch. Calls marked *collective* must be made by every rank of the gang, in the same order.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class StrategyOptions:
    rank: int
    world: int
    device: torch.device
    compute_dtype: torch.dtype
    """The dtype forward and backward run in (the model's configured dtype)."""
    shard_group_size: int | None = None
    """fsdp2 only: ranks that shard one copy of the model (hybrid sharding); None: the whole gang."""


class Strategy:
    """The default methods are those of a gang where every rank holds the whole model (ddp)."""

    name: ClassVar[str]

    def __init__(self, options: StrategyOptions) -> None:
        self.options = options
        self.rank, self.world = options.rank, options.world

    def master_dtype(self) -> torch.dtype:
        """The dtype to load the trained model's parameters in (the optimizer updates these): float32, whatever the
        compute dtype. In bfloat16 a parameter keeps 8 significant bits, so an update below 1/256 of its magnitude
        (most of them at RL learning rates) would round away, and AdamW's moments would lose as much.
        """
        return torch.float32

    def compute(self) -> AbstractContextManager[object]:
        """The context forward passes run in: autocast to the compute dtype over float32 masters (ddp; matmuls in
        bfloat16, softmax and norms in float32, as torch.amp does). Nothing for a float32 model. fsdp2 casts the
        parameters itself (MixedPrecisionPolicy) and needs no autocast. float16 runs without loss scaling.
        """
        dtype = self.options.compute_dtype
        if dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.options.device.type, dtype=dtype)

    def prepare(self, model: nn.Module, trainable: bool = True) -> nn.Module:
        """Place the model for training (`trainable`) or as the frozen KL reference; returns the module to call."""
        return model.to(self.options.device)

    def load(
        self, directory: Path, dtype: torch.dtype, setup: Callable[[nn.Module], None], trainable: bool = True
    ) -> nn.Module:
        """*Collective*: the pretrained model in `directory` (Hugging Face format) in `dtype`, `setup` applied
        (gradient checkpointing, a frozen reference's eval mode), then `prepare`d. Every rank reads the files here;
        fsdp2 reads them on rank 0 only.
        """
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
        setup(model)
        return self.prepare(model, trainable)

    def micro_batch_counts(self, counts: list[int]) -> list[int]:
        """*Collective* where forward passes are: the number of micro-batches each mini-batch must run on this rank
        (at least `counts`); the step pads with empty micro-batches up to it.
        """
        return counts

    def sync_gradients(self, model: nn.Module) -> None:
        """*Collective*: average the gradients over the gang, once per optimizer step."""
        if self.world > 1:
            _all_reduce_gradients(model, self.world)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        """Clip by the global gradient norm; returns the norm before clipping."""
        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))

    def publish(
        self, directory: Path, version: int, model: nn.Module, keep: int, source: Path | None
    ) -> tuple[Path, int] | None:
        """*Collective*: write policy `version` for the rollout engines (trainer/weights.py `publish_weights`) from
        rank 0, in the compute dtype (what the engines run; half the bytes of the float32 masters in bfloat16);
        (its directory, bytes of tensors) on rank 0, None elsewhere.
        """
        from kuberl_workers.trainer.weights import publish_weights

        if self.rank != 0:
            return None
        return publish_weights(directory, version, model, keep, source, dtype=self.options.compute_dtype)

    def save_checkpoint(
        self, directory: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, keep: int
    ) -> None:
        """*Collective*: model + optimizer + step; the newest `keep` are kept."""
        from kuberl_workers.trainer.weights import save_checkpoint

        if self.rank == 0:
            save_checkpoint(directory, step, model, optimizer, keep)

    def newest_checkpoint(self, directory: Path, max_step: int | None = None) -> int:
        """The step of the newest complete checkpoint at or below `max_step` (0: none), without loading it."""
        from kuberl_workers.trainer.weights import newest_checkpoint

        return newest_checkpoint(directory, max_step)

    def load_checkpoint(
        self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, max_step: int | None = None
    ) -> int:
        """*Collective*: restore the newest good checkpoint at or below `max_step`; its step (0: none)."""
        from kuberl_workers.trainer.weights import load_checkpoint

        return load_checkpoint(directory, model, optimizer, max_step)


def _all_reduce_gradients(model: nn.Module, world: int) -> None:
    """Average gradients over the gang in one flattened buffer per dtype."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:  # a rank whose shard of this mini-batch is empty still joins the all-reduce
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params if p.grad is not None]
    for dtype in {g.dtype for g in grads}:
        same = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in same])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in same:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


class DDP(Strategy):
    """Every rank holds the whole model and optimizer state; gradients are all-reduced once per optimizer step
    (after accumulation over micro-batches: no DistributedDataParallel wrapper, whose per-backward all-reduce
    fights accumulation over uneven shards). For models whose weights, gradients and AdamW state (~16 bytes a
    parameter in float32) fit one device.
    """

    name = "ddp"


# name -> "module:Class": modules load only when chosen (fsdp2 imports torch.distributed.fsdp)
STRATEGIES: dict[str, str] = {
    "ddp": "kuberl_workers.trainer.strategy:DDP",
    "fsdp2": "kuberl_workers.trainer.fsdp2:FSDP2",
}


def make_strategy(name: str, options: StrategyOptions) -> Strategy:
    """The strategy registered as `name`; ValueError naming the known ones otherwise."""
    if name not in STRATEGIES:
        raise ValueError(f"trainer.strategy: unknown {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    module, cls = STRATEGIES[name].split(":")
    strategy: Strategy = getattr(importlib.import_module(module), cls)(options)
    return strategy
