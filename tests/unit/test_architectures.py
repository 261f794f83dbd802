"""Any Hugging Face causal LM: Llama, Qwen2, Gemma and Gemma 2, tied and untied embeddings, train, checkpoint,
publish and reload (tied weights published once, loaded tied), on tiny random configs of each architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from kuberl_workers.models.tiny import PAD_ID
from kuberl_workers.trainer.logprobs import completion_logprobs
from kuberl_workers.trainer.step import make_optimizer, train_step
from kuberl_workers.trainer.weights import load_checkpoint, publish_weights, save_checkpoint
from support.archs import MATRIX, build
from support.batches import algo, synthetic_batch

ALGO = algo(klCoef=0.1, weightDecay=0.0)


def _tied(model: torch.nn.Module) -> bool:
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()  # type: ignore[operator]
    return bool(out.weight.data_ptr() == emb.weight.data_ptr())


@pytest.mark.parametrize(("arch", "tied"), MATRIX, ids=[f"{a}-{'tied' if t else 'untied'}" for a, t in MATRIX])
def test_train_checkpoint_publish_reload(tmp_path: Path, arch: str, tied: bool) -> None:
    directory = build(tmp_path / "model", arch, tied)
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).requires_grad_(False)
    assert _tied(model) == tied
    opt = make_optimizer(model, ALGO)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = train_step(
        model,
        opt,
        synthetic_batch(0),
        ALGO,
        temperature=0.9,
        pad_id=PAD_ID,
        reference=reference,
        max_tokens_per_micro_batch=32,
    )
    assert stats.grad_norm > 0 and stats.micro_batches > 1
    assert _tied(model) == tied  # training keeps the tie: one tensor, one update
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    save_checkpoint(tmp_path / "ckpt", 1, model, opt, keep=2)
    restored = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    assert load_checkpoint(tmp_path / "ckpt", restored, make_optimizer(restored, ALGO)) == 1
    assert _tied(restored) == tied

    path, size = publish_weights(tmp_path / "ckpt", 1, model)
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
    head = "lm_head.weight"
    assert (head in names) == (not tied), "a tied head is published once, as the input embeddings"
    reloaded = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    assert _tied(reloaded) == tied
    for name, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[name]), name
    assert size == sum(t.numel() * 4 for t in {id(p): p for p in model.parameters()}.values())
    assert torch.equal(restored.state_dict()[next(iter(names))], model.state_dict()[next(iter(names))])


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_chunked_logprobs_equal_full_logits(tmp_path: Path, arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunked head (any chunk size, soft-capping included) gives the full-vocabulary log-softmax's values
    and gradients."""
    from kuberl_workers.trainer import logprobs

    model = AutoModelForCausalLM.from_pretrained(str(build(tmp_path / arch, arch, True)), dtype=torch.float32)
    ids = torch.randint(0, 256, (3, 12))
    mask = torch.zeros(3, 11)
    mask[:, 4:] = 1
    mask[2, 9:] = 0
    logits = model(input_ids=ids).logits[:, :-1].float() / 0.7  # HF applies Gemma 2's soft cap itself
    full = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1) * mask
    (full.sum()).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    monkeypatch.setattr(logprobs, "CHUNK_ROWS", 5)
    spreads: list[torch.Tensor] = []
    chunked = completion_logprobs(model, ids, mask, 0.7, entropy=spreads)
    chunked.sum().backward()
    assert torch.allclose(chunked, full, atol=1e-5)
    # the entropy statistic equals -sum p log p of the full distribution at each completion position
    p = torch.softmax(logits.detach(), -1)
    expected_entropy = -(p * torch.log_softmax(logits.detach(), -1)).sum(-1)[mask.bool()]
    assert torch.allclose(torch.cat(spreads), expected_entropy, atol=1e-4)
    for name, grad in expected.items():
        got = model.get_parameter(name).grad
        assert got is not None and torch.allclose(got, grad, atol=1e-5, rtol=1e-4), name
