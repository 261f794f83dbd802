"""Atomic, checksummed checkpoint files."""

from __future__ import annotations

from pathlib import Path

import pytest

from kuberl_workers import checkpoint


def test_round_trip_and_fallback_past_corruption(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        checkpoint.write_json(checkpoint.step_path(tmp_path, "controller", step), {"step": step})
    assert checkpoint.latest_good_json(tmp_path, "controller") == (3, {"step": 3})
    newest = checkpoint.step_path(tmp_path, "controller", 3)
    data = bytearray(newest.read_bytes())
    data[5] ^= 0xFF  # one flipped byte
    newest.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CorruptCheckpoint, match="checksum mismatch"):
        checkpoint.read_json(newest)
    assert checkpoint.latest_good_json(tmp_path, "controller") == (2, {"step": 2})
    middle = checkpoint.step_path(tmp_path, "controller", 2)
    middle.write_bytes(middle.read_bytes()[:7])  # truncated mid-write by a crash
    with pytest.raises(checkpoint.CorruptCheckpoint):
        checkpoint.read_json(middle)
    assert checkpoint.latest_good_json(tmp_path, "controller") == (1, {"step": 1})
    assert checkpoint.latest_good_json(tmp_path, "controller", max_step=0) is None


def test_prune_keeps_newest(tmp_path: Path) -> None:
    for step in range(5):
        checkpoint.write_json(checkpoint.step_path(tmp_path, "c", step), {})
    removed = checkpoint.prune(tmp_path, "c", keep=2)
    assert sorted(p.name for p in removed) == ["c-00000000.json", "c-00000001.json", "c-00000002.json"]
    assert [s for s, _ in checkpoint.candidates(tmp_path, "c")] == [4, 3]
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind
