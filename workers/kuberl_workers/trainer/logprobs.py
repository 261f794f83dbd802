"""Per-token log-probabilities of sampled tokens without full-vocabulary logits for the whole micro-batch.

The backbone runs once over the padded micro-batch; the output head, the temperature and the log-softmax are
applied only to the completion positions, `CHUNK_ROWS` positions at a time, each chunk under activation
checkpointing: a chunk's float32 [rows, vocab] logits exist only while that chunk is computed (forward) or
recomputed (backward). Peak logit memory is CHUNK_ROWS x vocab x 4 bytes (200 MiB for SmolLM2's 49,152-token
vocabulary, 600 MiB for Qwen2.5's 151,936) instead of sequences x length x vocab x 4.
The same approach as verl's and OpenRLHF's chunked/fused log-prob paths, in plain torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

CHUNK_ROWS = 1024


class LogprobModel(nn.Module):
    """A causal LM whose forward is `completion_logprobs`: the module FSDP2 shards as its root (trainer/fsdp2.py).

    FSDP2 gathers a unit's parameters in the unit's forward; the backbone and output head are called separately
    here, so the embeddings, final norm and head (the root unit's parameters) are gathered only if the call goes
    through a root module's forward: this one's.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, mask: Tensor, temperature: float, entropy: list[Tensor] | None = None) -> Tensor:
        return _completion_logprobs(self.model, ids, mask, temperature, entropy)


def unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a DistributedDataParallel or LogprobModel wrapper (or the model itself)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        wrapped: nn.Module = model.module
        return wrapped
    if isinstance(model, LogprobModel):
        inner: nn.Module = model.model
        return inner
    return model


def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module, float | None]:
    """(backbone returning hidden states, output head, final logit soft-cap or None) of a causal LM."""
    hf: Any = unwrap(model)
    backbone = hf.get_decoder() if hasattr(hf, "get_decoder") else None
    head = hf.get_output_embeddings()
    if backbone is None or head is None or backbone is hf:
        raise TypeError(f"{type(hf).__name__}: not a causal LM with a decoder and an output head")
    softcap = getattr(hf.config, "final_logit_softcapping", None)
    return backbone, head, float(softcap) if softcap else None


def _chunk_logprobs(
    head: nn.Module, hidden: Tensor, targets: Tensor, temperature: float, softcap: float | None, entropy: bool
) -> tuple[Tensor, Tensor | None]:
    logits = head(hidden).float()
    if softcap is not None:  # Gemma 2: logits are soft-capped before sampling, in the engine as well
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits / temperature
    picked = logits.gather(-1, targets[:, None]).squeeze(-1)
    normaliser = torch.logsumexp(logits, dim=-1)
    out: Tensor = picked - normaliser
    if not entropy:
        return out, None
    with torch.no_grad():  # a statistic, not part of the loss: H = logsumexp(z) - sum_v softmax(z)_v z_v
        spread = normaliser - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return out, spread


def completion_logprobs(
    model: nn.Module, ids: Tensor, mask: Tensor, temperature: float, entropy: list[Tensor] | None = None
) -> Tensor:
    """log pi(token t+1 | tokens <= t) under the sampling temperature, at the positions where `mask` is 1.

    `ids`: [sequences, length] long, right-padded; `mask`: [sequences, length - 1], 1 where position t's next
    token is a completion token. Returns float32 [sequences, length - 1], 0 where `mask` is 0. Differentiable
    when grad is enabled. With `entropy` (a list), the policy's entropy in nats at each masked position (under
    the same temperature; no gradient) is appended to it as float32 [masked positions]. Raises TypeError for a
    model without a decoder/output-head split.
    """
    if isinstance(model, LogprobModel):
        out: Tensor = model(ids, mask, temperature, entropy)
        return out
    return _completion_logprobs(model, ids, mask, temperature, entropy)


def _completion_logprobs(
    model: nn.Module, ids: Tensor, mask: Tensor, temperature: float, entropy: list[Tensor] | None
) -> Tensor:
    backbone, head, softcap = _parts(model)
    hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
    selected = mask.bool()
    rows = hidden[selected]
    targets = ids[:, 1:][selected]
    pieces = []
    want = entropy is not None
    for start in range(0, rows.shape[0], CHUNK_ROWS):
        h, t = rows[start : start + CHUNK_ROWS], targets[start : start + CHUNK_ROWS]
        if torch.is_grad_enabled():
            piece, spread = checkpoint(_chunk_logprobs, head, h, t, temperature, softcap, want, use_reentrant=False)
        else:
            piece, spread = _chunk_logprobs(head, h, t, temperature, softcap, want)
        pieces.append(piece)
        if entropy is not None and spread is not None:
            entropy.append(spread.detach())
    out = torch.zeros(selected.shape, dtype=torch.float32, device=ids.device)
    if pieces:
        out = out.masked_scatter(selected, torch.cat(pieces))
    elif torch.is_grad_enabled():
        # no completion position (an empty micro-batch that pads a rank's share under fsdp2): a zero that still
        # reaches every parameter, so that this rank's backward takes part in the gang's gradient collectives
        out = out + head(hidden[:1, :1]).float().sum() * 0.0
    return out


def token_logprobs(model: nn.Module, ids: Tensor, temperature: float) -> Tensor:
    """log pi(token t+1 | tokens <= t) at every position of `ids` [sequences, length]: [sequences, length - 1]."""
    mask = torch.ones(ids.shape[0], ids.shape[1] - 1, device=ids.device)
    return completion_logprobs(model, ids, mask, temperature)
