"""GRPO advantages and the IcePop-masked clipped objective (shared/design/algorithms.md), in torch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """A_i = (R_i - mean R) / (std R + eps) over one group (population std); all-equal rewards give exactly 0."""
    centred = rewards - rewards.mean()
    return centred / (rewards.std(unbiased=False) + eps)


def icepop_weight(k: Tensor, alpha: float, beta: float, enabled: bool = True) -> Tensor:
    """M(k) = k inside [alpha, beta], exactly 0 outside; 1 everywhere when IcePop is disabled. No gradient."""
    k = k.detach()
    if not enabled:
        return torch.ones_like(k)
    return torch.where((k >= alpha) & (k <= beta), k, torch.zeros_like(k))


@dataclass
class LossStats:
    masked_fraction: float
    mean_abs_logp_diff: float
    max_abs_logp_diff: float
    clipped_fraction: float
    tokens: int


def icepop_grpo_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    logp_infer: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    alpha: float,
    beta: float,
    clip_eps: float,
    enabled: bool = True,
    normaliser: float | None = None,
) -> tuple[Tensor, LossStats]:
    """The negated objective over a [sequences, tokens] batch.

    `logp_new` carries the gradient (pi_train under theta), `logp_old` is pi_train under theta_old, `logp_infer`
    the engine's logprob of each sampled token, `advantages` one value per sequence, `mask` 1 on completion tokens.
    Each sequence contributes the mean over its tokens; the loss is the sum over sequences divided by
    `normaliser` (the number of sequences in the whole, possibly sharded, batch; this batch's count by default).
    """
    mask = mask.to(logp_new.dtype)
    k = torch.exp(logp_old.detach() - logp_infer)
    weight = icepop_weight(k, alpha, beta, enabled)
    ratio = torch.exp(logp_new - logp_old.detach())
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    per_token = weight * surrogate * mask
    lengths = mask.sum(dim=1).clamp(min=1)
    per_sequence = per_token.sum(dim=1) / lengths
    loss = -per_sequence.sum() / (normaliser if normaliser is not None else max(len(per_sequence), 1))
    with torch.no_grad():
        valid = mask.bool()
        diff = (logp_old.detach() - logp_infer).abs()[valid]
        clipped = ((ratio < 1 - clip_eps) | (ratio > 1 + clip_eps))[valid]
        masked = (weight == 0)[valid] if enabled else torch.zeros_like(diff, dtype=torch.bool)
        n = int(valid.sum())
        stats = LossStats(
            masked_fraction=float(masked.float().mean()) if n else 0.0,
            mean_abs_logp_diff=float(diff.mean()) if n else 0.0,
            max_abs_logp_diff=float(diff.max()) if n else 0.0,
            clipped_fraction=float(clipped.float().mean()) if n else 0.0,
            tokens=n,
        )
    return loss, stats
