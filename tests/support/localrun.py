"""Watching a `kuberl run` from outside: its metrics rows, its controller's step, its processes (integration tier)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from support.net import http_get


def metrics_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def controller_step(run_dir: Path) -> int | None:
    """The controller's own step counter, read through its API with the run's token."""
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
        code, body = http_get(
            f"http://127.0.0.2:{cfg['ports']['controller']}/v1/status",
            (run_dir / "token").read_text().strip(),
            timeout=2,
        )
        return int(json.loads(body)["policyVersion"]) if code == 200 else None
    except (OSError, ValueError, KeyError):
        return None


def wait_step(
    run_dir: Path,
    proc: subprocess.Popen[bytes],
    step: int,
    log: Path,
    timeout: float = 240,
    seen: list[int] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        observed = controller_step(run_dir)
        if seen is not None and observed is not None:
            seen.append(observed)
        if max(metrics_steps(run_dir), default=-1) >= step:
            return
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"step {step} not reached:\n{log.read_text()[-3000:]}")


def pid_of(run_dir: Path, name: str) -> int:
    return int(json.loads((run_dir / "pids.json").read_text())[name])


def processes_of(run_dir: Path) -> list[int]:
    marker = f"=/{run_dir.relative_to('/')}/config.json".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
