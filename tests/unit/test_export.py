"""`kuberl export`: which version is copied, and the errors that name what exists (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kuberl_operator.launcher.export import ExportError, export, final_model, published_versions


def _version(folder: Path, step: int, complete: bool = True) -> Path:
    path = folder / f"weights-{step:08d}"
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if complete:
        (path / "model.safetensors").write_bytes(b"w")
    (path / "tokenizer.json").write_text("{}")
    return path


def test_the_newest_version_by_default_and_a_chosen_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for step in (2, 10, 4):
        _version(run / "checkpoints", step)
    assert list(published_versions(run)) == [2, 4, 10]
    assert final_model(run) == run / "checkpoints" / "weights-00000010"
    assert sorted(p.name for p in export(run, tmp_path / "out").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    export(run / "checkpoints", tmp_path / "four", step=4)  # a checkpoint volume's folder works too
    assert (tmp_path / "four" / "model.safetensors").exists()


def test_errors_name_what_is_missing_and_nothing_is_overwritten(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ExportError, match="no published weights"):
        export(run, tmp_path / "out")
    _version(run / "checkpoints", 2)
    _version(run / "checkpoints", 3, complete=False)
    with pytest.raises(ExportError, match="published steps: 2, 3"):
        export(run, tmp_path / "out", step=7)
    with pytest.raises(ExportError, match=r"lacks model\.safetensors"):
        export(run, tmp_path / "out")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("a user's file")
    with pytest.raises(ExportError, match="not an empty directory"):
        export(run, taken, step=2)
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]
