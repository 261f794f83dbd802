"""The `fsdp2` trainer strategy: parameters, gradients and AdamW state sharded over the gang with
`torch.distributed.fsdp.fully_shard` (FSDP2, per-parameter DTensor sharding), optionally hybrid.

- Sharding: each decoder layer (the model's `_no_split_modules` classes) is one FSDP unit, the root another (the
  embeddings, the final norm and a tied output head share it); the root is a LogprobModel around the Hugging Face
  model, so that the trainer's log-prob pass (backbone, then the head on completion positions) is its forward.
  Forward all-gathers a unit's parameters and frees them after (reshard_after_forward); backward reduce-scatters
  its gradients, averaged over the gang.
- Hybrid sharding (PaRO's idea, trainer.shardGroupSize = g < world): a 2-D device mesh (world / g replicas x g
  shards); a unit is sharded within a group of g ranks (e.g. a node) and replicated across groups, so the slow
  links between groups carry only the gradient all-reduce, not the per-layer all-gathers.
- Mixed precision: the trained parameters (and so AdamW's update) stay float32, sharded; forward and backward run
  in the model's dtype (bfloat16 by default on GPUs) and gradients are reduced in float32
  (MixedPrecisionPolicy). With a float32 model there is nothing to mix.
- The KL reference model is sharded the same way (frozen, in the compute dtype).
- Every rank runs the same number of forward passes (units all-gather in them): a rank with fewer micro-batches
  in a mini-batch runs empty ones (zero loss) to match the gang (`micro_batch_counts`).
- Checkpoints: torch.distributed.checkpoint (DCP), one directory `trainer-<step>.dcp/` written by all ranks,
  each its own shards, complete once `.metadata` is in it (DCP writes it last; the directory is renamed into
  place after a barrier). DCP reshards on load, so a checkpoint restores on another world size or group size too
  (each rank reads the slices its new shards need); the data each rank trains on changes with the world size.
- Publishing: the weights are gathered one parameter at a time (`full_tensor`), cast to the compute dtype, and
  rank 0 streams each into the version's safetensors file as it arrives (the header is written first from the
  global shapes): no device and no rank's CPU ever holds more than one unsharded parameter beyond its shards.
- Loading: rank 0 reads the pretrained model; the other ranks build it on the meta device and receive their
  shards from rank 0 (`load`), so a node holds one copy of the model in memory at start, not one per rank.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from kuberl_workers import checkpoint
from kuberl_workers.trainer.logprobs import LogprobModel, unwrap
from kuberl_workers.trainer.strategy import Strategy, StrategyOptions
from kuberl_workers.trainer.weights import (
    TRAINER_PREFIX,
    TensorSpec,
    publish_weights,
    safetensors_order,
    write_safetensors_stream,
)

SUFFIX = ".dcp"


class FSDP2(Strategy):
    name = "fsdp2"

    def __init__(self, options: StrategyOptions) -> None:
        super().__init__(options)
        group = options.shard_group_size or options.world
        if options.world % group:
            raise ValueError(f"trainer.shardGroupSize: {group} does not divide trainer.replicas {options.world}")
        device_type = options.device.type
        if options.world == 1 and not dist.is_initialized():  # a gang of one: FSDP2 still needs a process group
            backend = "nccl" if device_type == "cuda" else "gloo"
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)  # type: ignore[attr-defined]
        self.mesh: DeviceMesh = (
            init_device_mesh(device_type, (options.world,), mesh_dim_names=("shard",))
            if group == options.world
            else init_device_mesh(device_type, (options.world // group, group), mesh_dim_names=("replicate", "shard"))
        )

    def compute(self) -> AbstractContextManager[object]:
        return nullcontext()  # MixedPrecisionPolicy casts the gathered parameters to the compute dtype

    def prepare(self, model: nn.Module, trainable: bool = True) -> nn.Module:
        mixed = trainable and self.options.compute_dtype != torch.float32
        policy = (
            MixedPrecisionPolicy(param_dtype=self.options.compute_dtype, reduce_dtype=torch.float32)
            if mixed
            else MixedPrecisionPolicy()
        )
        layers = set(getattr(model, "_no_split_modules", None) or ())
        for module in list(model.modules()):
            if type(module).__name__ in layers:
                fully_shard(module, mesh=self.mesh, mp_policy=policy)
        root = LogprobModel(model)  # the root unit's forward runs the backbone and the chunked head
        fully_shard(root, mesh=self.mesh, mp_policy=policy)
        return root

    def load(
        self, directory: Path, dtype: torch.dtype, setup: Callable[[nn.Module], None], trainable: bool = True
    ) -> nn.Module:
        """Rank 0 reads the pretrained model; the other ranks build it on the meta device (no memory), shard it,
        allocate only their shards, and receive the weights from rank 0 one tensor at a time
        (`set_model_state_dict(broadcast_from_rank0=True)`), then the buffers (rotary tables and other
        non-persistent ones are in no state dict). A node's memory holds one copy of the model, not one per rank.
        """
        from transformers import AutoConfig, AutoModelForCausalLM

        if self.world == 1:
            return super().load(directory, dtype, setup, trainable)
        if self.rank == 0:
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
            # fully_shard copies each parameter into its shard and leaves these: the full values rank 0 sends
            full = {name: tensor.detach() for name, tensor in model.state_dict().items()}
        else:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
                    AutoConfig.from_pretrained(directory), dtype=dtype
                )
            full = {}
        setup(model)
        root = self.prepare(model, trainable)
        if self.rank != 0:
            root.to_empty(device=self.options.device)
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(unwrap(root), full, options=options)
        del full
        for buffer in root.buffers():
            dist.broadcast(buffer, src=0)
        return root

    def micro_batch_counts(self, counts: list[int]) -> list[int]:
        if self.world == 1:
            return counts
        tensor = torch.tensor(counts, dtype=torch.int64, device=self.options.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [int(v) for v in tensor.tolist()]

    def sync_gradients(self, model: nn.Module) -> None:
        """Nothing left to do: backward reduce-scattered (and, hybrid, all-reduced) the gradients already."""

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        norm: Any = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)

    def publish(
        self, directory: Path, version: int, model: nn.Module, keep: int, source: Path | None
    ) -> tuple[Path, int] | None:
        specs, gathered = self._gathered(model)
        if self.rank != 0:
            for _ in gathered:  # the other ranks take part in every gather, in the same order
                pass
            return None
        try:
            return publish_weights(
                directory,
                version,
                model,
                keep,
                source,
                write=functools.partial(write_safetensors_stream, specs=specs, tensors=gathered),
                dtype=self.options.compute_dtype,
            )
        except BaseException:
            for _ in gathered:  # finish the gathers the other ranks wait in, then fail (a full disk, say)
                pass
            raise

    def _gathered(self, model: nn.Module) -> tuple[list[TensorSpec], Iterator[Tensor]]:
        """The published tensors' specs (each tied tensor once, floating ones in the compute dtype, in file order)
        and a generator that gathers them one by one in that order (*collective*), whole on rank 0's CPU.
        """
        model = unwrap(model)
        params = dict(model.named_parameters())  # tied parameters once, under their first name
        tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - set(params)
        state = {name: params.get(name, value) for name, value in model.state_dict().items() if name not in tied}
        # the loader ties the head again from the config (tie_word_embeddings), as save_pretrained does

        def dtype(tensor: Tensor) -> torch.dtype:
            return self.options.compute_dtype if tensor.is_floating_point() else tensor.dtype

        specs = safetensors_order(TensorSpec(name, dtype(t), tuple(t.shape)) for name, t in state.items())

        def gather() -> Iterator[Tensor]:
            for spec in specs:
                tensor = state[spec.name].detach().to(spec.dtype)  # cast the shard: half the bytes gathered in bf16
                full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
                yield full.to("cpu") if self.rank == 0 else full
                del full, tensor

        return specs, gather()

    def save_checkpoint(
        self, directory: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, keep: int
    ) -> None:
        target = _path(directory, step)
        staging = target.with_name(f".{target.name}.staging")
        if self.rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self._barrier()
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp_save({"model": model_state, "optim": optim_state}, checkpoint_id=str(staging))
        self._barrier()
        if self.rank == 0:
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            for _, old in _complete(directory)[keep:]:
                shutil.rmtree(old, ignore_errors=True)
        self._barrier()

    def newest_checkpoint(self, directory: Path, max_step: int | None = None) -> int:
        return next((step for step, _ in _complete(directory) if max_step is None or step <= max_step), 0)

    def load_checkpoint(
        self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, max_step: int | None = None
    ) -> int:
        step = self.newest_checkpoint(directory, max_step)
        if step == 0:
            return 0
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp_load({"model": model_state, "optim": optim_state}, checkpoint_id=str(_path(directory, step)))  # in place
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
        return step

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _path(directory: Path, step: int) -> Path:
    return checkpoint.step_path(directory, TRAINER_PREFIX, step, SUFFIX)


def _complete(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete DCP checkpoints (DCP writes `.metadata` last), newest first."""
    return [(s, p) for s, p in checkpoint.candidates(directory, TRAINER_PREFIX, SUFFIX) if (p / ".metadata").is_file()]
