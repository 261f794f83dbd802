"""The weight relay with engines in their own processes, through the rollout worker's own code: 1, 2 and 4 engines
get identical tensors, and two real vLLM engines, the second fed by the first, generate with the new weights."""

from __future__ import annotations

import hashlib
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from bench._engines import Host, load_all
from kuberl_workers.trainer.server import serve
from support.jobs import TOKEN


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _digest(path: Path) -> str:
    """What CopyEngine.digest computes, from the published file itself."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(path))
    out = hashlib.sha256()
    for name in sorted(state):
        out.update(name.encode())
        out.update(state[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return out.hexdigest()


@pytest.fixture
def trainer(tmp_path: Path, tiny_dir: Path, other_weights: Path) -> Iterator[tuple[str, Path]]:
    """Trainer rank 0's weight server with version 1 (the base weights) and 2 (another policy)."""
    for version, source in ((1, tiny_dir / "model.safetensors"), (2, other_weights)):
        folder = tmp_path / "weights" / f"weights-{version:08d}"
        folder.mkdir(parents=True)
        shutil.copyfile(source, folder / "model.safetensors")
    port = _port()
    server = serve("127.0.0.1", port, CollectorRegistry(), tmp_path / "weights", TOKEN)
    try:
        yield f"http://127.0.0.1:{port}/weights", tmp_path / "weights"
    finally:
        server.shutdown()


def test_one_two_and_four_engines_get_identical_tensors(trainer: tuple[str, Path]) -> None:
    url, folder = trainer
    expected = _digest(folder / "weights-00000002" / "model.safetensors")
    hosts = [Host("copy", relay_port=_port()) for _ in range(4)]
    try:
        for host in hosts:
            host.ready()
        for n in (1, 2, 4):  # with 4, the last two fetch from the first engine, which relays while it downloads
            replies = load_all(hosts[:n], f"{url}/2", relay=True)
            assert len({r["bytes"] for r in replies}) == 1
            assert {host.call("digest")["digest"] for host in hosts[:n]} == {expected}
            relayed = f"http://127.0.0.1:{hosts[0].relay_port}/weights/2"
            assert [r["source"] for r in replies] == [f"{url}/2"] * min(n, 2) + [relayed] * (n - 2)
    finally:
        for host in hosts:
            host.close()


def test_a_vllm_engine_fed_by_another_generates_as_it_does(trainer: tuple[str, Path], tiny_dir: Path) -> None:
    url, _ = trainer
    hosts = [
        Host("vllm", str(tiny_dir), relay_port=_port(), dtype="float32", max_model_len=128, temperature=1.0)
        for _ in range(2)
    ]
    prompts = [([256, 49, 43, 50, 61], 8, 7), ([256, 55, 42, 51, 61], 8, 11)]  # (prompt ids, new tokens, seed)
    try:
        for host in hosts:
            host.ready()
        before = hosts[1].call("generate", prompts)["outputs"]
        load_all(hosts, f"{url}/2", relay=True, fanout=1)  # a chain: trainer -> engine 0 -> engine 1
        first, second = (host.call("generate", prompts)["outputs"] for host in hosts)
    finally:
        for host in hosts:
            host.close()
    assert first == second  # same weights, same seeds: the same tokens and logprobs
    assert [o[1] for o in second] != [o[1] for o in before]  # and not the base model's
