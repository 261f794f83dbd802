"""What a failed local worker said last: shown on the console, so the reason is not only in logs/<process>.log."""

from __future__ import annotations

from pathlib import Path

from kuberl_workers.config import invalid_input_problems

TAIL_BYTES = 64_000


def _tail(path: Path) -> list[str]:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - TAIL_BYTES))
            return handle.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def invalid_input(path: Path) -> list[str]:
    """The problems a worker reported before exiting with EXIT_INVALID_INPUT, in order."""
    return invalid_input_problems(_tail(path))


def last_error(path: Path, name: str, lines: int = 12) -> str:
    """The last traceback or error lines of a process's log, indented, with where the whole log is."""
    tail = [line for line in _tail(path) if line.strip()]
    start = next((i for i in range(len(tail) - 1, -1, -1) if tail[i].startswith("Traceback")), None)
    shown = tail[start:][-lines:] if start is not None else tail[-lines:]
    body = "\n".join(f"    {line}" for line in shown) or "    (its log is empty)"
    return f"  last output of {name} ({path}):\n{body}"
