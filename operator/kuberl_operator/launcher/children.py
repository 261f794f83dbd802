"""Local worker processes: how the launcher starts and stops the same roles a cluster runs as pods."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuberl_operator.api.rljob import RLJob
from kuberl_workers.config import ENV_INDEX, ENV_POD_IP, ENV_REWARD_PORT, ENV_ROLE, ENV_WORKER_ID

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
    command: list[str] | None = None
    """What to run instead of the role's entry point (a reward server's own command)."""

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
            child.command or [sys.executable, "-m", f"kuberl_workers.{child.role}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopping it also stops what it started
        )
    child.started = time.monotonic()
    child.restart_at = None


_VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")  # Kubernetes' `$(VAR)` in command and args


def reward_server_command(template: dict[str, Any], port: int) -> tuple[list[str], dict[str, str]]:
    """The main container of a reward server template as a local process: (command, environment). The command is
    its command and args with `$(VAR)` expanded from its literal env values and `KUBERL_REWARD_PORT` (as the
    kubelet expands them) and `python` this interpreter; the environment is those values. ValueError when the
    template has no command (a pod could run the image's entrypoint; a process cannot).
    """
    containers = (template.get("spec") or {}).get("containers") or [{}]
    main = next((c for c in containers if c.get("name") == "reward"), containers[0])
    if not main.get("command"):
        raise ValueError("spec.rewardServer.template: kuberl run needs the main container's command")
    values = {e["name"]: str(e["value"]) for e in main.get("env") or [] if "value" in e}
    values[ENV_REWARD_PORT] = str(port)
    words = [_VARIABLE.sub(lambda m: values.get(m[1], m[0]), str(w)) for w in [*main["command"], *main.get("args", [])]]
    return [sys.executable if w == "python" else w for w in words], values


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


def local_problems(job: RLJob) -> list[str]:
    """Fields `kuberl run` cannot honour on one machine (it refuses the job naming them)."""
    out = []
    for i, reward in enumerate(job.spec.task.rewards or ()):
        if reward.python is not None and reward.python.configMap:
            out.append(f"spec.task.rewards[{i}].python.configMap: kuberl run reads no ConfigMaps; use python.path")
    if job.spec.rewardServer is not None:
        try:
            reward_server_command(job.spec.rewardServer.template, 0)
        except ValueError as error:
            out.append(str(error))
    return out
