"""The trainer's checkpoints (model + optimizer + step) and the weights it publishes to the rollout engines."""

from __future__ import annotations

import copy
import io
import json
import shutil
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kuberl_workers import checkpoint
from kuberl_workers.published import WEIGHTS_PREFIX, version_dir
from kuberl_workers.trainer.logprobs import unwrap

TRAINER_PREFIX = "trainer"
# What a Hugging Face model directory holds besides the weights and config.json: the tokenizer (with its chat
# template) and the generation settings. Copied from the source model into every published version, so that each
# one is a complete model `from_pretrained`, `AutoTokenizer` and `vllm serve` load (`kuberl export` copies one).
COMPANION_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


def save_checkpoint(directory: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, keep: int) -> Path:
    """Model + optimizer + step, atomic and checksummed; the newest `keep` are kept. Tied parameters are one
    tensor in the state dict and torch.save stores it once.
    """
    buffer = io.BytesIO()
    torch.save({"step": step, "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    path = checkpoint.step_path(directory, TRAINER_PREFIX, step, ".pt")
    checkpoint.write_atomic(path, buffer.getvalue())
    checkpoint.prune(directory, TRAINER_PREFIX, keep, ".pt")
    return path


def newest_checkpoint(directory: Path, max_step: int | None = None) -> int:
    """The step of the newest checkpoint at or below `max_step` that passes its checksum (0 when there is none),
    without loading it: the gang agrees on a restore point with the controller before anything is loaded.
    """
    for step, path in checkpoint.candidates(directory, TRAINER_PREFIX, ".pt"):
        if max_step is not None and step > max_step:
            continue
        try:
            checkpoint.read_verified(path)
        except (checkpoint.CorruptCheckpoint, OSError):
            continue
        return step
    return 0


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
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"])
    return 0


def publishable_state(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The state dict with each tensor once: a parameter tied to an earlier one (the output head tied to the input
    embeddings) is left out, as `save_pretrained` does, and the loader (Hugging Face or vLLM) ties it again from
    the config's `tie_word_embeddings`. safetensors refuses tensors that share memory, so this is required.
    Floating-point tensors are cast to `dtype` when given (the compute dtype, over float32 masters).
    """
    seen: set[tuple[int, int]] = set()
    state: dict[str, torch.Tensor] = {}
    for name, tensor in unwrap(model).state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.detach().to(dtype)
        state[name] = tensor.detach().contiguous().cpu()
    return state


SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a safetensors file, known before its data (a sharded parameter's global shape)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * int(torch.Size(self.shape).numel())


def safetensors_order(specs: Iterable[TensorSpec]) -> list[TensorSpec]:
    """The order to write tensors in: larger elements first, then by name (as safetensors' own writer does), so
    that every tensor starts at a multiple of its element size.
    """
    return sorted(specs, key=lambda spec: (-spec.dtype.itemsize, spec.name))


def write_safetensors_stream(path: Path, specs: list[TensorSpec], tensors: Iterable[torch.Tensor]) -> int:
    """Write a safetensors file whose header is known up front (`specs`, in file order: `safetensors_order`) from
    `tensors`, which yields each tensor in that order and may produce it only then (a sharded parameter gathered
    just before): the writer holds one tensor at a time, never the whole state. Returns the bytes of tensor data.

    Format (https://github.com/huggingface/safetensors#format): an 8-byte little-endian header length, the JSON
    header (name -> dtype, shape, [begin, end) offsets into the data; `__metadata__`), padded with spaces to 8
    bytes, then the tensors' bytes back to back. Raises ValueError when a tensor does not match its spec or the
    counts differ; the caller writes into a staging directory, so a failure leaves no partial version.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": SAFETENSORS_DTYPES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    written = 0
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for spec, tensor in zip(specs, tensors, strict=True):
            if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                raise ValueError(f"{spec.name}: got {tensor.dtype} {tuple(tensor.shape)}, the header says {spec}")
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
            handle.write(data.data)
            written += spec.nbytes
    return written


def publish_weights(
    directory: Path,
    version: int,
    model: nn.Module,
    keep: int = 3,
    source: Path | None = None,
    write: Callable[[Path], int] | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Path, int]:
    """Write the policy for the rollout engines: `weights-<version>/` with `model.safetensors` and the model's
    `config.json` (a directory `from_pretrained` loads, tied weights tied again), plus the tokenizer and generation
    files of `source` (COMPANION_FILES; the model's own generation config where `source` has none), renamed into
    place atomically; the newest `keep` versions are kept. Returns (directory, bytes of tensors). `write(file)`
    writes the tensors and returns their bytes when the caller streams them (a sharded model's gathered
    parameters, trainer/fsdp2.py); by default the model's own `publishable_state` is saved, its floating-point
    tensors in `dtype` when given. With `dtype` the saved config names it (the tensors' dtype, not the masters').
    """
    from safetensors.torch import save_file

    target = version_dir(directory, version)
    staging = directory / f".{target.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if write is None:
        state = publishable_state(model, dtype)
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        size = sum(v.numel() * v.element_size() for v in state.values())
        del state
    else:
        size = write(staging / "model.safetensors")
    config: Any = getattr(unwrap(model), "config", None)
    if config is not None:
        if dtype is not None:  # the file's dtype, not the float32 masters': what `from_pretrained(dtype="auto")` reads
            config = copy.deepcopy(config)
            config.dtype = dtype
        config.save_pretrained(str(staging))
    for name in COMPANION_FILES:
        if source is not None and (source / name).is_file():
            shutil.copy2(source / name, staging / name)
    generation: Any = getattr(unwrap(model), "generation_config", None)
    if generation is not None and not (staging / "generation_config.json").exists():
        generation.save_pretrained(str(staging))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    for old in sorted(directory.glob(f"{WEIGHTS_PREFIX}-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target, size
