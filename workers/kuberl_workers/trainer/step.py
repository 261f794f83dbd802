"""One GRPO + IcePop training step on this rank's shard of a batch: length-sorted, token-bounded micro-batches,
gradient accumulation, optional PPO epochs / mini-batches and a KL penalty to a frozen reference model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kuberl_workers.config import AlgorithmConfig
from kuberl_workers.trainer.logprobs import completion_logprobs, unwrap
from kuberl_workers.trainer.loss import LossStats, group_advantages, icepop_grpo_loss
from kuberl_workers.trainer.strategy import DDP, Strategy, StrategyOptions


@dataclass
class StepStats:
    step: int
    loss: float
    grad_norm: float
    masked_fraction: float
    mean_abs_logp_diff: float
    max_abs_logp_diff: float
    clipped_fraction: float
    kl_ref: float
    entropy: float
    """Mean policy entropy over the completion tokens of this rank's shard, nats per token (before the update)."""
    """Mean k3 KL to the reference policy per completion (0 when klCoef is 0)."""
    reward_mean: float
    sequences: int
    tokens: int
    micro_batches: int
    updates: int
    train_seconds: float


@dataclass(frozen=True)
class Sequence:
    """One completion to train on: prompt + output token ids, the engine's logprobs, its group's advantage."""

    ids: list[int]
    prompt_len: int
    infer: list[float]
    advantage: float


def shard(groups: list[dict[str, Any]], rank: int, world: int) -> list[dict[str, Any]]:
    """This rank's groups (round robin), so that every rank sees whole GRPO groups."""
    return groups[rank::world]


def sequences(groups: list[dict[str, Any]]) -> list[Sequence]:
    """Flatten groups into sequences with group-normalised advantages (computed over whole groups)."""
    out = []
    for group in groups:
        advantages = group_advantages(torch.tensor([float(r["reward"]) for r in group["rollouts"]]))
        for rollout, advantage in zip(group["rollouts"], advantages.tolist(), strict=True):
            ids = list(group["promptIds"]) + list(rollout["outputIds"])
            out.append(Sequence(ids, len(group["promptIds"]), list(rollout["logprobs"]), advantage))
    return out


def micro_batches(seqs: list[Sequence], max_tokens: int) -> list[list[Sequence]]:
    """Length-sorted (longest first) micro-batches of at most `max_tokens` padded tokens (rows x longest row),
    so little of each is padding; a sequence longer than `max_tokens` gets one of its own.
    """
    batches: list[list[Sequence]] = []
    current: list[Sequence] = []
    for seq in sorted(seqs, key=lambda s: len(s.ids), reverse=True):
        width = len(current[0].ids) if current else len(seq.ids)
        if current and (len(current) + 1) * width > max_tokens:
            batches.append(current)
            current = []
        current.append(seq)
    if current:
        batches.append(current)
    return batches


def to_tensors(seqs: list[Sequence], pad_id: int, device: torch.device) -> dict[str, Tensor]:
    """Right-padded [rows, width] ids; [rows, width - 1] completion mask and engine logprobs; [rows] advantages.
    Position t predicts token t + 1, so completion token j sits at position prompt_len - 1 + j.
    """
    width = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width - 1)
    infer = torch.zeros(len(seqs), width - 1)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq.ids)] = torch.tensor(seq.ids)
        start, n = seq.prompt_len - 1, len(seq.ids) - seq.prompt_len
        mask[i, start : start + n] = 1.0
        infer[i, start : start + n] = torch.tensor(seq.infer[:n])
    advantages = torch.tensor([s.advantage for s in seqs])
    return {k: v.to(device) for k, v in {"ids": ids, "mask": mask, "infer": infer, "advantages": advantages}.items()}


@dataclass
class _Micro:
    tensors: dict[str, Tensor]
    old: Tensor | None = None
    ref: Tensor | None = None


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
    max_tokens_per_micro_batch: int = 8192,
    reference: nn.Module | None = None,
    progress: Callable[[], None] | None = None,
    strategy: Strategy | None = None,
) -> StepStats:
    """Train on `batch` ({"step", "groups"} from the controller): ppoEpochs x miniBatches optimizer steps.

    Every rank takes its shard of each mini-batch (whole GRPO groups), accumulates gradients over token-bounded
    micro-batches with the loss normalised by the mini-batch's global sequence count, and the gang averages the
    gradients once per optimizer step: the result equals the single-process gradient of the whole mini-batch.
    theta_old's logprobs come from one no-grad pass before the first update when there is more than one update
    (with one update they equal theta's, so no extra pass is made). `reference` (needed when klCoef > 0) is the
    frozen initial policy. `progress` is called after each micro-batch (the trainer heartbeats from it).
    `strategy` (default: ddp) reduces the gradients and clips them; where its forward passes are collective
    (fsdp2), every rank runs as many micro-batches per mini-batch as the busiest one, padding with empty ones.
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    strategy = strategy or DDP(StrategyOptions(rank, world, device, next(model.parameters()).dtype))
    groups = batch["groups"]
    minis = [groups[j :: algo.miniBatches] for j in range(algo.miniBatches)]
    minis = [m for m in minis if m]
    updates = algo.ppoEpochs * len(minis)
    plans: list[tuple[int, list[_Micro]]] = []
    for mini in minis:
        local = sequences(shard(mini, rank, world))
        micros = [_Micro(to_tensors(mb, pad_id, device)) for mb in micro_batches(local, max_tokens_per_micro_batch)]
        plans.append((sum(len(g["rollouts"]) for g in mini), micros))
    needed = strategy.micro_batch_counts([len(micros) for _, micros in plans])
    for (_, micros), count in zip(plans, needed, strict=True):
        micros += [_Micro(_empty(pad_id, device)) for _ in range(count - len(micros))]
    use_ref = reference is not None and algo.klCoef > 0
    if updates > 1 or use_ref:
        with torch.no_grad():
            for _, micros in plans:
                for m in micros:
                    t = m.tensors
                    if updates > 1:
                        model.eval()
                        with strategy.compute():
                            m.old = completion_logprobs(model, t["ids"], t["mask"], temperature)
                    if use_ref:
                        assert reference is not None
                        with strategy.compute():
                            m.ref = completion_logprobs(reference, t["ids"], t["mask"], temperature)
                    if progress:
                        progress()
    model.train()
    total = LossStats()
    loss_sum, grad_norm, n_micro = 0.0, 0.0, 0
    spreads: list[torch.Tensor] = []  # per-token policy entropy of the batch as sampled (epoch 0)
    for epoch in range(algo.ppoEpochs):
        for mini_sequences, micros in plans:
            optimizer.zero_grad(set_to_none=True)
            stats = LossStats()
            for m in micros:
                t = m.tensors
                with strategy.compute():  # backward runs outside autocast, as torch.amp prescribes
                    logp = completion_logprobs(model, t["ids"], t["mask"], temperature, spreads if epoch == 0 else None)
                loss, s = icepop_grpo_loss(
                    logp,
                    m.old if m.old is not None else logp.detach(),
                    t["infer"],
                    t["advantages"],
                    t["mask"],
                    alpha=algo.icepopAlpha,
                    beta=algo.icepopBeta,
                    clip_eps=algo.clipEpsilon,
                    enabled=algo.icepopEnabled,
                    normaliser=mini_sequences / world,
                    logp_ref=m.ref,
                    kl_coef=algo.klCoef if use_ref else 0.0,
                )
                loss.backward()  # type: ignore[no-untyped-call]
                stats = stats.add(s)
                loss_sum += float(loss.detach()) / len(plans) / algo.ppoEpochs  # this rank's estimate
                n_micro += 1
                if progress:
                    progress()
            strategy.sync_gradients(model)
            grad_norm = strategy.clip_grad_norm(model, algo.maxGradNorm)
            optimizer.step()
            if epoch == 0:
                total = total.add(stats)  # statistics of the batch as sampled (before this step's updates)
    rewards = [float(r["reward"]) for g in groups for r in g["rollouts"]]
    return StepStats(
        step=int(batch["step"]),
        loss=loss_sum,
        grad_norm=grad_norm,
        masked_fraction=total.masked_fraction,
        mean_abs_logp_diff=total.mean_abs_logp_diff,
        max_abs_logp_diff=total.max_abs_logp_diff,
        clipped_fraction=total.clipped_fraction,
        kl_ref=total.kl_ref,
        entropy=float(torch.cat(spreads).mean()) if spreads else 0.0,
        reward_mean=sum(rewards) / max(len(rewards), 1),
        sequences=total.sequences,
        tokens=total.tokens,
        micro_batches=n_micro,
        updates=updates,
        train_seconds=time.perf_counter() - start,
    )


def _empty(pad_id: int, device: torch.device) -> dict[str, Tensor]:
    """A micro-batch of one padding row with no completion token: its loss and gradient are zero, but its forward
    and backward take part in the gang's collectives.
    """
    ids = torch.full((1, 2), pad_id, dtype=torch.long)
    zeros = torch.zeros(1, 1)
    tensors = {"ids": ids, "mask": zeros, "infer": zeros.clone(), "advantages": torch.zeros(1)}
    return {k: v.to(device) for k, v in tensors.items()}


def make_optimizer(model: nn.Module, algo: AlgorithmConfig) -> torch.optim.Optimizer:
    params = [p for p in unwrap(model).parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=algo.learningRate, betas=(0.9, 0.999), weight_decay=algo.weightDecay)


def stats_dict(stats: StepStats) -> dict[str, Any]:
    return asdict(stats)
