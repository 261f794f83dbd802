"""Local worker processes: how the launcher starts and stops the same roles a cluster runs as pods."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kuberl_workers.config import ENV_INDEX, ENV_POD_IP, ENV_ROLE, ENV_WORKER_ID

# Each role listens on its own loopback address, as pods have their own IPs: ports never collide.
CONTROLLER_HOST = "127.0.0.2"


def trainer_host(rank: int) -> str:
    return f"127.0.0.{10 + rank}"


def rollout_host(index: int) -> str:
    return f"127.0.1.{index % 250 + 1}"


@dataclass
class Child:
    role: str
    index: int
    name: str
    host: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    consecutive: int = 0
    draining: bool = False
    restart_at: float | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def spawn(child: Child, base_env: dict[str, str], log_dir: Path) -> None:
    """Start the role's entry point (`python -m kuberl_workers.<role>`) in its own process group."""
    env = {
        **base_env,
        **child.extra_env,
        ENV_ROLE: child.role,
        ENV_INDEX: str(child.index),
        ENV_WORKER_ID: child.name,
        ENV_POD_IP: child.host,
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{child.name}.log").open("ab") as log:
        child.proc = subprocess.Popen(
            [sys.executable, "-m", f"kuberl_workers.{child.role}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopping it also stops what it started
        )
    child.started = time.monotonic()
    child.restart_at = None


def signal_group(child: Child, sig: signal.Signals) -> None:
    if child.proc is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, sig)


def stop_all(children: list[Child], grace: float = 10.0) -> None:
    """SIGTERM every process group, wait up to `grace`, then SIGKILL what is left: no orphans."""
    for child in children:
        signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        if child.proc is None:
            continue
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for child in children:
        signal_group(child, signal.SIGKILL)  # the group may outlive its leader (reward pool children)
        if child.proc is not None and child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
