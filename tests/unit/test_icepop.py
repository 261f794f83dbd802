"""IcePop and GRPO against hand-computed values (shared/design/algorithms.md)."""

from __future__ import annotations

import math

import pytest
import torch

from kuberl_workers.trainer.loss import group_advantages, icepop_grpo_loss, icepop_weight


def test_group_advantages() -> None:
    a = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(a, torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5)  # mean .5, population std .5
    same = group_advantages(torch.tensor([0.7, 0.7, 0.7]))
    assert torch.equal(same, torch.zeros(3)) and not torch.isnan(same).any()


def test_icepop_band() -> None:
    k = torch.tensor([0.4, 0.5, 1.0, 5.0, 5.1])
    assert icepop_weight(k, 0.5, 5.0).tolist() == [0.0, 0.5, 1.0, 5.0, 0.0]
    assert icepop_weight(k, 0.5, 5.0, enabled=False).tolist() == [1.0] * 5


def test_hand_computed_loss_and_gradient() -> None:
    """One sequence, three tokens, advantage 1, at theta == theta_old (ratio 1, no clipping):
    d loss / d logp_new_t = -M(k_t) / 3, with k = exp(logp_old - logp_infer)."""
    logp_old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    # token 0: k = 1; token 1: k = 0.5/0.2 = 2.5 (inside, weighted 2.5); token 2: k = 0.5/0.05 = 10 (dropped)
    logp_infer = torch.log(torch.tensor([[0.5, 0.2, 0.05]]))
    logp_new = logp_old.clone().requires_grad_(True)
    loss, stats = icepop_grpo_loss(
        logp_new, logp_old, logp_infer, torch.tensor([1.0]), torch.ones(1, 3), alpha=0.5, beta=5.0, clip_eps=0.2
    )
    assert loss.item() == pytest.approx(-(1.0 + 2.5 + 0.0) / 3)
    loss.backward()
    assert logp_new.grad is not None
    assert logp_new.grad[0].tolist() == pytest.approx([-1 / 3, -2.5 / 3, 0.0])
    assert logp_new.grad[0, 2].item() == 0.0  # outside the band: exactly zero gradient
    assert stats.masked_fraction == pytest.approx(1 / 3)
    assert stats.max_abs_logp_diff == pytest.approx(math.log(10))


def test_disabled_equals_plain_clipped_grpo() -> None:
    torch.manual_seed(0)
    logp_old = -torch.rand(4, 6)
    logp_infer = logp_old + 0.3 * torch.randn(4, 6)
    logp_new = (logp_old + 0.2 * torch.randn(4, 6)).requires_grad_(True)
    adv = torch.tensor([1.0, -0.5, 0.3, -0.8])
    mask = torch.ones(4, 6)
    mask[1, 4:] = 0
    loss, _ = icepop_grpo_loss(
        logp_new, logp_old, logp_infer, adv, mask, alpha=0.5, beta=5.0, clip_eps=0.2, enabled=False
    )
    ratio = torch.exp(logp_new - logp_old)
    plain = torch.minimum(ratio * adv[:, None], ratio.clamp(0.8, 1.2) * adv[:, None]) * mask
    expected = -(plain.sum(1) / mask.sum(1)).mean()
    assert torch.allclose(loss, expected)


def test_equal_rewards_contribute_nothing() -> None:
    logp_old = -torch.rand(3, 5)
    logp_new = logp_old.clone().requires_grad_(True)
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0]))
    loss, _ = icepop_grpo_loss(logp_new, logp_old, logp_old, adv, torch.ones(3, 5), alpha=0.5, beta=5.0, clip_eps=0.2)
    loss.backward()
    assert loss.item() == 0.0 and logp_new.grad is not None and not torch.isnan(logp_new.grad).any()
    assert torch.count_nonzero(logp_new.grad) == 0


def test_k3_kl_value_and_gradient_by_hand() -> None:
    """One sequence, two tokens, advantage 0 (only the KL term acts), klCoef 0.5.
    d = logp_ref - logp: token 0 d = ln 2, token 1 d = 0. k3 = exp(d) - d - 1 = (1 - ln 2, 0); mean over the
    sequence's 2 tokens (0.1534...) x 0.5 is the loss. d k3 / d logp = 1 - exp(d) = (-1, 0) -> x 0.5 / 2."""
    logp = torch.log(torch.tensor([[0.25, 0.5]])).requires_grad_(True)
    ref = torch.log(torch.tensor([[0.5, 0.5]]))
    loss, stats = icepop_grpo_loss(
        logp,
        logp.detach(),
        logp.detach(),
        torch.tensor([0.0]),
        torch.ones(1, 2),
        alpha=0.5,
        beta=5.0,
        clip_eps=0.2,
        logp_ref=ref,
        kl_coef=0.5,
    )
    assert loss.item() == pytest.approx(0.5 * (1 - math.log(2)) / 2)
    assert stats.kl_ref == pytest.approx((1 - math.log(2)) / 2)
    loss.backward()
    assert logp.grad is not None
    assert logp.grad[0].tolist() == pytest.approx([0.5 * -1.0 / 2, 0.0])


def test_kl_coefficient_zero_adds_nothing() -> None:
    logp = torch.log(torch.tensor([[0.25, 0.5]]))
    args = (logp, logp, logp, torch.tensor([1.0]), torch.ones(1, 2))
    plain, _ = icepop_grpo_loss(*args, alpha=0.5, beta=5.0, clip_eps=0.2)
    zero, stats = icepop_grpo_loss(*args, alpha=0.5, beta=5.0, clip_eps=0.2, logp_ref=logp - 1, kl_coef=0.0)
    assert torch.equal(plain, zero) and stats.kl_ref == 0.0
