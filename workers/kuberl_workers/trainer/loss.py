"""GRPO advantages and the IcePop-masked clipped objective (shared/design/algorithms.md), in torch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """A_i = (R_i - mean R) / (std R + eps) over one group of G rewards (shape [G], population std; GRPO,
    DeepSeekMath eq. 3), returned in float32.

    All-equal rewards give exactly 0: the mean of a rounded value (0.9 in float32) is not the value itself, and
    a residue of 1e-8 divided by eps would be a spurious advantage of -0.056. Shifting by the first reward and
    computing in float64 makes the centred values of equal rewards exactly 0.
    """
    shifted = rewards.to(torch.float64) - rewards[0].to(torch.float64)
    centred = shifted - shifted.mean()
    return (centred / (centred.pow(2).mean().sqrt() + eps)).to(torch.float32)


def icepop_weight(k: Tensor, alpha: float, beta: float, enabled: bool = True) -> Tensor:
    """M(k) = k inside [alpha, beta], exactly 0 outside; 1 everywhere when IcePop is disabled. No gradient."""
    k = k.detach()
    if not enabled:
        return torch.ones_like(k)
    return torch.where((k >= alpha) & (k <= beta), k, torch.zeros_like(k))


@dataclass
class LossStats:
    """Token and sequence sums of one (micro-)batch; `add` merges micro-batches, the properties average."""

    tokens: int = 0
    masked_tokens: int = 0
    clipped_tokens: int = 0
    abs_logp_diff_sum: float = 0.0
    max_abs_logp_diff: float = 0.0
    sequences: int = 0
    kl_ref_sum: float = 0.0
    """Sum over sequences of the per-sequence mean k3 KL to the reference policy (0 without one)."""

    def add(self, other: LossStats) -> LossStats:
        return LossStats(
            tokens=self.tokens + other.tokens,
            masked_tokens=self.masked_tokens + other.masked_tokens,
            clipped_tokens=self.clipped_tokens + other.clipped_tokens,
            abs_logp_diff_sum=self.abs_logp_diff_sum + other.abs_logp_diff_sum,
            max_abs_logp_diff=max(self.max_abs_logp_diff, other.max_abs_logp_diff),
            sequences=self.sequences + other.sequences,
            kl_ref_sum=self.kl_ref_sum + other.kl_ref_sum,
        )

    @property
    def masked_fraction(self) -> float:
        return self.masked_tokens / self.tokens if self.tokens else 0.0

    @property
    def clipped_fraction(self) -> float:
        return self.clipped_tokens / self.tokens if self.tokens else 0.0

    @property
    def mean_abs_logp_diff(self) -> float:
        return self.abs_logp_diff_sum / self.tokens if self.tokens else 0.0

    @property
    def kl_ref(self) -> float:
        return self.kl_ref_sum / self.sequences if self.sequences else 0.0


def k3_kl(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(d) - d - 1 with d = logp_ref - logp (>= 0, unbiased under
    samples from pi; Schulman's "Approximating KL divergence", as in GRPO and verl's `low_var_kl`). Same shape.
    """
    d = logp_ref - logp
    return torch.exp(d) - d - 1


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
    logp_ref: Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[Tensor, LossStats]:
    """The negated objective over a [sequences, tokens] batch (shared/design/algorithms.md).

    `logp_new` carries the gradient (pi_train under theta), `logp_old` is pi_train under theta_old, `logp_infer`
    the engine's logprob of each sampled token, `advantages` one value per sequence, `mask` 1 on completion tokens.
    Each sequence contributes the mean over its tokens; the loss is the sum over sequences divided by
    `normaliser` (the number of sequences in the whole, possibly sharded, batch; this batch's count by default),
    so summing the losses of micro-batches with the whole batch's normaliser gives the whole batch's loss.
    With `logp_ref` (the frozen reference policy's logprobs) and `kl_coef` > 0, kl_coef x the k3 KL, averaged
    the same way, is added.
    """
    mask = mask.to(logp_new.dtype)
    k = torch.exp(logp_old.detach() - logp_infer)
    weight = icepop_weight(k, alpha, beta, enabled)
    ratio = torch.exp(logp_new - logp_old.detach())
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    lengths = mask.sum(dim=1).clamp(min=1)
    per_sequence = (weight * surrogate * mask).sum(dim=1) / lengths
    denominator = normaliser if normaliser is not None else max(len(per_sequence), 1)
    loss = -per_sequence.sum() / denominator
    kl_sum = 0.0
    if logp_ref is not None and kl_coef > 0:
        kl_per_sequence = (k3_kl(logp_new, logp_ref.detach()) * mask).sum(dim=1) / lengths
        loss = loss + kl_coef * kl_per_sequence.sum() / denominator
        kl_sum = float(kl_per_sequence.detach().sum())
    with torch.no_grad():
        valid = mask.bool()
        diff = (logp_old.detach() - logp_infer).abs()[valid]
        clipped = ((ratio < 1 - clip_eps) | (ratio > 1 + clip_eps))[valid]
        masked = (weight == 0)[valid] if enabled else torch.zeros_like(diff, dtype=torch.bool)
        stats = LossStats(
            tokens=int(valid.sum()),
            masked_tokens=int(masked.sum()),
            clipped_tokens=int(clipped.sum()),
            abs_logp_diff_sum=float(diff.sum()),
            max_abs_logp_diff=float(diff.max()) if diff.numel() else 0.0,
            sequences=int((mask.sum(dim=1) > 0).sum()),
            kl_ref_sum=kl_sum,
        )
    return loss, stats
