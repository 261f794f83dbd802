"""On a GPU (`pytest -m gpu`; deselected by default, and this machine has none): an fsdp2 gang on NCCL trains a step
in bfloat16 mixed precision, publishes the gathered weights, and two vLLM engines on the GPU load them through the
relay (trainer rank 0 -> engine 0 -> engine 1) and generate the same tokens with them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from prometheus_client import CollectorRegistry
from safetensors.torch import load_file

from bench._engines import Host, load_all
from kuberl_workers.models.tiny import PAD_ID
from kuberl_workers.trainer.server import serve
from kuberl_workers.trainer.step import make_optimizer, train_step
from kuberl_workers.trainer.strategy import StrategyOptions, make_strategy
from support.batches import algo, synthetic_batch
from support.jobs import TOKEN

pytestmark = pytest.mark.gpu


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_fsdp2_on_nccl_publishes_weights_that_relayed_vllm_engines_generate_with(
    tiny_dir: Path, tmp_path: Path
) -> None:
    assert torch.cuda.is_available(), "the gpu marker needs an NVIDIA GPU"
    from transformers import AutoModelForCausalLM

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_port()}", rank=0, world_size=1)
    try:
        device = torch.device("cuda:0")
        strategy = make_strategy("fsdp2", StrategyOptions(0, 1, device, torch.bfloat16))
        model = strategy.prepare(AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=strategy.master_dtype()))
        optimizer = make_optimizer(model, algo())
        stats = train_step(
            model, optimizer, synthetic_batch(0), algo(), temperature=1.0, pad_id=PAD_ID, strategy=strategy
        )
        assert stats.grad_norm > 0
        assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 masters, sharded
        weights = tmp_path / "weights"
        published = strategy.publish(weights, 1, model, keep=3, source=tiny_dir)
        assert published is not None
        state = load_file(published[0] / "model.safetensors")
        assert all(t.dtype == torch.bfloat16 for t in state.values())  # streamed out in the compute dtype
    finally:
        dist.destroy_process_group()
    port = _port()
    server = serve("127.0.0.1", port, CollectorRegistry(), weights, TOKEN)
    hosts = [
        Host("vllm", str(tiny_dir), relay_port=_port(), dtype="float32", max_model_len=128, gpu_memory_utilization=0.2)
        for _ in range(2)
    ]
    prompts = [([256, 49, 43, 50, 61], 8, 7)]
    try:
        for host in hosts:
            host.ready()
        before = hosts[0].call("generate", prompts)["outputs"]
        replies = load_all(hosts, f"http://127.0.0.1:{port}/weights/1", relay=True, fanout=1)
        assert replies[1]["source"] == f"http://127.0.0.1:{hosts[0].relay_port}/weights/1"
        first, second = (host.call("generate", prompts)["outputs"] for host in hosts)
    finally:
        for host in hosts:
            host.close()
        server.shutdown()
    assert first == second and [o[1] for o in first] != [o[1] for o in before]
