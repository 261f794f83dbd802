"""Atomic, checksummed checkpoint files shared by the controller and the trainers.

A file is written to a temporary name, fsynced and renamed, so a reader sees the old file or the new one,
never half of one. Its last line is `sha256:<hex>` of everything before it: a truncated or corrupted file is
detected, and `latest_good` falls back to the previous good one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class CorruptCheckpoint(ValueError):
    """The file's checksum line is missing or does not match its content."""


def write_atomic(path: Path, payload: bytes) -> None:
    """Write `payload` plus its checksum line to `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(payload).hexdigest()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as handle:
        handle.write(payload + b"\nsha256:" + digest.encode() + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_verified(path: Path) -> bytes:
    """The payload of a file written by `write_atomic`; CorruptCheckpoint if it fails its checksum."""
    data = path.read_bytes()
    body, sep, trailer = data.rstrip(b"\n").rpartition(b"\nsha256:")
    if not sep:
        raise CorruptCheckpoint(f"{path}: no checksum line (truncated?)")
    if hashlib.sha256(body).hexdigest().encode() != trailer.strip():
        raise CorruptCheckpoint(f"{path}: checksum mismatch")
    return body


def write_json(path: Path, state: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(state, separators=(",", ":"), sort_keys=True).encode())


def read_json(path: Path) -> dict[str, Any]:
    value = json.loads(read_verified(path))
    if not isinstance(value, dict):
        raise CorruptCheckpoint(f"{path}: not a JSON object")
    return value


def step_path(directory: Path, prefix: str, step: int, suffix: str = ".json") -> Path:
    return directory / f"{prefix}-{step:08d}{suffix}"


def candidates(directory: Path, prefix: str, suffix: str = ".json") -> list[tuple[int, Path]]:
    """Checkpoint files of one kind, newest step first."""
    found = []
    for path in directory.glob(f"{prefix}-*{suffix}") if directory.is_dir() else []:
        number = path.name[len(prefix) + 1 : len(path.name) - len(suffix)]
        if number.isascii() and number.isdigit():
            found.append((int(number), path))
    return sorted(found, reverse=True)


def latest_good_json(directory: Path, prefix: str, max_step: int | None = None) -> tuple[int, dict[str, Any]] | None:
    """The newest checkpoint (at or below `max_step`) that passes its checksum; corrupt ones are skipped."""
    for step, path in candidates(directory, prefix):
        if max_step is not None and step > max_step:
            continue
        try:
            return step, read_json(path)
        except (CorruptCheckpoint, ValueError, OSError) as error:
            log.warning("skipping bad checkpoint: %s", error)
    return None


def prune(directory: Path, prefix: str, keep: int, suffix: str = ".json") -> list[Path]:
    """Delete all but the newest `keep` checkpoints of one kind."""
    removed = []
    for _, path in candidates(directory, prefix, suffix)[keep:]:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed
