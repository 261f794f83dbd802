"""One GRPO + IcePop training step on a (sharded) batch from the controller, and the trainer's checkpoints."""

from __future__ import annotations

import io
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kuberl_workers import checkpoint
from kuberl_workers.config import AlgorithmConfig
from kuberl_workers.trainer.loss import group_advantages, icepop_grpo_loss

TRAINER_PREFIX = "trainer"
WEIGHTS_PREFIX = "weights"


@dataclass
class StepStats:
    step: int
    loss: float
    grad_norm: float
    masked_fraction: float
    mean_abs_logp_diff: float
    max_abs_logp_diff: float
    clipped_fraction: float
    kl_old: float
    reward_mean: float
    sequences: int
    tokens: int
    train_seconds: float


def shard(groups: list[dict[str, Any]], rank: int, world: int) -> list[dict[str, Any]]:
    """This rank's groups (round robin), so that every rank sees whole GRPO groups."""
    return groups[rank::world]


def _tensors(groups: list[dict[str, Any]], pad_id: int) -> dict[str, Tensor]:
    """Padded [sequences, length] tensors: input ids, completion mask, engine logprobs, advantages."""
    rows, advantages = [], []
    for group in groups:
        rewards = torch.tensor([float(r["reward"]) for r in group["rollouts"]])
        advantages.append(group_advantages(rewards))
        rows += [(group["promptIds"], r["outputIds"], r["logprobs"]) for r in group["rollouts"]]
    width = max(len(p) + len(o) for p, o, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width - 1)
    infer = torch.zeros(len(rows), width - 1)
    for i, (prompt, output, logprobs) in enumerate(rows):
        ids[i, : len(prompt) + len(output)] = torch.tensor(prompt + output)
        # logits at position t predict token t + 1: completion token j sits at input position len(prompt) + j
        start = len(prompt) - 1
        mask[i, start : start + len(output)] = 1.0
        infer[i, start : start + len(output)] = torch.tensor(logprobs)
    return {"ids": ids, "mask": mask, "infer": infer, "advantages": torch.cat(advantages)}


def token_logprobs(model: nn.Module, ids: Tensor, temperature: float) -> Tensor:
    """log pi(token t+1 | tokens <= t) for every position, under the sampling temperature."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    algo: AlgorithmConfig,
    *,
    temperature: float,
    pad_id: int,
    rank: int = 0,
    world: int = 1,
) -> StepStats:
    """Sharded forward/backward; DDP (or a manual all-reduce) averages gradients; one AdamW update."""
    start = time.perf_counter()
    groups = batch["groups"]
    local = shard(groups, rank, world)
    total_sequences = sum(len(g["rollouts"]) for g in groups)
    t = _tensors(local, pad_id)
    model.train()
    logp_new = token_logprobs(model, t["ids"], temperature)
    logp_old = logp_new.detach()  # one update per batch: theta_old is the weights this step starts from
    # The loss is normalised by the global sequence count and scaled by world size, because DDP averages
    # gradients over ranks: the result equals the single-rank gradient of the whole batch.
    loss, stats = icepop_grpo_loss(
        logp_new,
        logp_old,
        t["infer"],
        t["advantages"],
        t["mask"],
        alpha=algo.icepopAlpha,
        beta=algo.icepopBeta,
        clip_eps=algo.clipEpsilon,
        enabled=algo.icepopEnabled,
        normaliser=total_sequences / world,
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    if world > 1 and not isinstance(model, nn.parallel.DistributedDataParallel):
        for param in model.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad /= world
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), algo.maxGradNorm))
    optimizer.step()
    with torch.no_grad():
        model.eval()
        after = token_logprobs(model, t["ids"], temperature)
        valid = t["mask"].bool()
        kl_old = float((logp_old - after)[valid].mean()) if valid.any() else 0.0
    rewards = [float(r["reward"]) for g in groups for r in g["rollouts"]]
    return StepStats(
        step=int(batch["step"]),
        loss=float(loss.detach()) * world,
        grad_norm=grad_norm,
        masked_fraction=stats.masked_fraction,
        mean_abs_logp_diff=stats.mean_abs_logp_diff,
        max_abs_logp_diff=stats.max_abs_logp_diff,
        clipped_fraction=stats.clipped_fraction,
        kl_old=kl_old,
        reward_mean=sum(rewards) / max(len(rewards), 1),
        sequences=sum(len(g["rollouts"]) for g in local),
        tokens=stats.tokens,
        train_seconds=time.perf_counter() - start,
    )


def make_optimizer(model: nn.Module, algo: AlgorithmConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        model.parameters(), lr=algo.learningRate, betas=(0.9, 0.999), weight_decay=algo.weightDecay
    )


# --- checkpoints and published weights ----------------------------------------------------------------------


def save_checkpoint(directory: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, keep: int) -> Path:
    """Model + optimizer + step, atomic and checksummed; the newest `keep` are kept."""
    buffer = io.BytesIO()
    torch.save({"step": step, "model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    path = checkpoint.step_path(directory, TRAINER_PREFIX, step, ".pt")
    checkpoint.write_atomic(path, buffer.getvalue())
    checkpoint.prune(directory, TRAINER_PREFIX, keep, ".pt")
    return path


def load_checkpoint(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, max_step: int | None = None
) -> int:
    """Restore the newest good checkpoint at or below `max_step`; returns its step (0 when there is none)."""
    for step, path in checkpoint.candidates(directory, TRAINER_PREFIX, ".pt"):
        if max_step is not None and step > max_step:
            continue
        try:
            state = torch.load(io.BytesIO(checkpoint.read_verified(path)), weights_only=True)
        except (checkpoint.CorruptCheckpoint, OSError, RuntimeError):
            continue
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"])
    return 0


def publish_weights(directory: Path, version: int, model: nn.Module, keep: int = 3) -> tuple[Path, int]:
    """Write the policy as safetensors for the rollout engines (atomic: a directory renamed into place)."""
    from safetensors.torch import save_file

    target = directory / f"{WEIGHTS_PREFIX}-{version:08d}"
    staging = directory / f".{target.name}.staging"
    staging.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in _unwrap(model).state_dict().items()}
    save_file(state, str(staging / "model.safetensors"))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    for old in sorted(directory.glob(f"{WEIGHTS_PREFIX}-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target, sum(v.numel() * v.element_size() for v in state.values())


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def stats_dict(stats: StepStats) -> dict[str, Any]:
    return asdict(stats)
