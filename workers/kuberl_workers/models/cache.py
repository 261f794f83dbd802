"""The local model cache: each built-in model is built once into a directory, under a file lock."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """$KUBERL_CACHE, or ~/.cache/kuberl."""
    return Path(os.environ.get("KUBERL_CACHE", Path.home() / ".cache" / "kuberl"))


def build_once(name: str, build: Callable[[Path], None], root: Path | None = None) -> Path:
    """`root/name`, made by `build(staging directory)` the first time (staged, then renamed into place) and
    found afterwards. Concurrent processes wait on a file lock, so exactly one builds and all agree.
    """
    root = root or cache_dir()
    target = root / name
    if (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with (root / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "model.safetensors").is_file():
            staging = root / f".{name}.staging-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            build(staging)
            staging.rename(target)
    return target
