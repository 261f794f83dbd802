"""The fsdp2 trainer strategy on gloo (CPU): sharded steps equal one process's, hybrid sharding too, and the sharded
(DCP) checkpoint restores on the same and on another world size."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.multiprocessing.spawn import spawn
from transformers import LlamaForCausalLM

from kuberl_workers.models.tiny import PAD_ID, build_model
from kuberl_workers.trainer.logprobs import unwrap
from kuberl_workers.trainer.step import make_optimizer, train_step
from kuberl_workers.trainer.strategy import Strategy, StrategyOptions, make_strategy
from kuberl_workers.trainer.weights import publishable_state
from support.batches import algo, synthetic_batch

ALGO = algo(klCoef=0.05)  # the KL term runs the sharded reference model too
GROUPS = (3, 1)  # 3 groups over 2 ranks, then 1: uneven shards and an empty one (padded micro-batches)
MICRO = 24  # tokens per micro-batch: several micro-batches per rank, unequal counts across ranks


def _model(directory: Path) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM.from_pretrained(str(directory), dtype=torch.float32)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, **kwargs: object) -> None:
    batch = synthetic_batch(step, groups=GROUPS[step])
    train_step(model, opt, batch, ALGO, temperature=1.0, pad_id=PAD_ID, max_tokens_per_micro_batch=MICRO, **kwargs)  # type: ignore[arg-type]


def _single(directory: Path) -> dict[str, torch.Tensor]:
    """The reference: one process, the default (ddp) strategy, both steps."""
    model, reference = _model(directory), _model(directory).requires_grad_(False)
    opt = make_optimizer(model, ALGO)
    for step in range(len(GROUPS)):
        _step(model, opt, step, reference=reference)
    return publishable_state(model)


def _rank(rank: int, world: int, port: int, directory: str, out: str, group: int, phase: str, ckpt: str) -> None:
    """One rank of an fsdp2 gang. phase: `full` (both steps), `save` (step 0, checkpoint, step 1) or `resume`
    (restore the checkpoint, step 1). Rank 0 writes the gathered weights to `out`."""
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        options = StrategyOptions(rank, world, torch.device("cpu"), torch.float32, group or None)
        strategy = make_strategy("fsdp2", options)
        reads = _count_weight_reads()
        # as the trainer loads: rank 0 reads the weights, the others build on the meta device and receive shards
        model = strategy.load(Path(directory), torch.float32, lambda m: None)
        reference = strategy.load(Path(directory), torch.float32, _freeze, trainable=False)
        assert reads() == (2 if rank == 0 or world == 1 else 0), (rank, reads())
        opt = make_optimizer(model, ALGO)
        kwargs = {"rank": rank, "world": world, "reference": reference, "strategy": strategy}
        if phase == "resume":
            assert strategy.newest_checkpoint(Path(ckpt)) == 1
            assert strategy.load_checkpoint(Path(ckpt), model, opt) == 1
        else:
            _step(model, opt, 0, **kwargs)
            if phase == "save":
                strategy.save_checkpoint(Path(ckpt), 1, model, opt, keep=2)
        _step(model, opt, 1, **kwargs)
        _publish(strategy, model, rank, out)
    finally:
        dist.destroy_process_group()


def _freeze(model: torch.nn.Module) -> None:
    model.requires_grad_(False)


def _count_weight_reads() -> Callable[[], int]:
    """Count this process's reads of a pretrained model's weights (from_pretrained calls) from now on."""
    import transformers

    calls = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    transformers.AutoModelForCausalLM.from_pretrained = counted  # type: ignore[method-assign]
    return lambda: len(calls)


def _publish(strategy: Strategy, model: torch.nn.Module, rank: int, out: str) -> None:
    """Publish the gathered weights as the trainer does (streamed into safetensors by rank 0); rank 0 saves what
    the file holds to `out`."""
    published = strategy.publish(Path(out).parent / f"weights-{rank}", 1, model, keep=1, source=None)
    if rank == 0:
        assert published is not None
        torch.save(load_file(published[0] / "model.safetensors"), out)
    else:
        assert published is None


def _gang(
    world: int, directory: Path, out: Path, group: int = 0, phase: str = "full", ckpt: Path | None = None
) -> dict[str, torch.Tensor]:
    args = (world, _port(), str(directory), str(out), group, phase, str(ckpt or out.parent / "ckpt"))
    spawn(_rank, args=args, nprocs=world, join=True)
    return dict(torch.load(out, weights_only=True))


def _assert_close(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert set(expected) == set(got), set(expected) ^ set(got)  # tied weights once, as publishable_state has them
    for key, value in expected.items():
        # gloo sums gradients in another order than one process; AdamW's 1/sqrt(v) magnifies that rounding where
        # gradients are tiny, far below one step's update (the ddp equality test allows the same)
        assert torch.allclose(value, got[key], atol=1e-4, rtol=1e-4), (key, (value - got[key]).abs().max())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny") / "model"
    build_model(directory, seed=0)
    return directory


def test_two_sharded_ranks_equal_one_process(tiny: Path, tmp_path: Path) -> None:
    _assert_close(_single(tiny), _gang(2, tiny, tmp_path / "two.pt"))


def test_hybrid_sharding_on_a_two_by_two_mesh_equals_one_process(tiny: Path, tmp_path: Path) -> None:
    """4 ranks: shard within groups of 2, replicate across the 2 groups (PaRO's hybrid)."""
    _assert_close(_single(tiny), _gang(4, tiny, tmp_path / "hybrid.pt", group=2))


def test_a_sharded_checkpoint_restores_and_continues_to_the_same_weights(tiny: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    uninterrupted = _gang(2, tiny, tmp_path / "saved.pt", phase="save", ckpt=ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["trainer-00000001.dcp"]
    resumed = _gang(2, tiny, tmp_path / "resumed.pt", phase="resume", ckpt=ckpt)
    for key, value in uninterrupted.items():
        assert torch.equal(value, resumed[key]), key  # same world size: the same computation, bit for bit
    # another world size: DCP reshards the model and AdamW state on load; one rank trains what two did
    _assert_close(uninterrupted, _gang(1, tiny, tmp_path / "one.pt", phase="resume", ckpt=ckpt))


def test_an_unknown_strategy_or_a_group_that_does_not_divide_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown 'zero3'; known: ddp, fsdp2"):
        make_strategy("zero3", StrategyOptions(0, 1, torch.device("cpu"), torch.float32))


def _tied_rank(rank: int, world: int, port: int, out: str, directory: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        strategy = make_strategy("fsdp2", StrategyOptions(rank, world, torch.device("cpu"), torch.float32))
        # rank 1 builds the tied model on the meta device: the head must be tied again to the received embeddings
        model = strategy.load(Path(directory), torch.float32, lambda m: None)
        inner = unwrap(model)
        assert inner.lm_head.weight is inner.model.embed_tokens.weight  # type: ignore[union-attr]
        _publish(strategy, model, rank, out)
    finally:
        dist.destroy_process_group()


def _tied() -> LlamaForCausalLM:
    from transformers import LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def test_tied_embeddings_are_gathered_once_as_save_pretrained_writes_them(tmp_path: Path) -> None:
    _tied().save_pretrained(str(tmp_path / "tied"))
    spawn(_tied_rank, args=(2, _port(), str(tmp_path / "tied.pt"), str(tmp_path / "tied")), nprocs=2, join=True)
    gathered = torch.load(tmp_path / "tied.pt", weights_only=True)
    expected = publishable_state(_tied())
    assert "lm_head.weight" not in expected and set(gathered) == set(expected)
    assert all(torch.equal(gathered[k], v) for k, v in expected.items())


def _alone(rank: int, directory: str, out: str) -> None:
    """fsdp2 with trainer.replicas 1, as the trainer runs it: no process group set up beforehand."""
    os.environ["OMP_NUM_THREADS"] = "1"
    assert not dist.is_initialized()
    strategy = make_strategy("fsdp2", StrategyOptions(0, 1, torch.device("cpu"), torch.float32))
    model = strategy.load(Path(directory), torch.float32, lambda m: None)
    reference = strategy.load(Path(directory), torch.float32, _freeze, trainable=False)
    opt = make_optimizer(model, ALGO)
    for step in range(len(GROUPS)):
        _step(model, opt, step, strategy=strategy, reference=reference)
    _publish(strategy, model, 0, out)
    dist.destroy_process_group()


def test_a_gang_of_one_runs_fsdp2_without_a_process_group_of_its_own(tiny: Path, tmp_path: Path) -> None:
    """Validation accepts fsdp2 with replicas 1; the trainer sets up no process group for one rank."""
    spawn(_alone, args=(str(tiny), str(tmp_path / "alone.pt")), nprocs=1, join=True)
    single = _single(tiny)
    got = dict(torch.load(tmp_path / "alone.pt", weights_only=True))
    _assert_close(single, got)
