"""`kuberl export`: copy one published policy version out of a run (or a checkpoint volume) as a Hugging Face model.

Every version the trainer publishes (`checkpoints/weights-<step>/`) is already a complete model directory: weights
(tied ones stored once, as `save_pretrained` does), `config.json`, the tokenizer with its chat template and the
generation config (workers/kuberl_workers/trainer/weights.py). Exporting copies one, checked, to where the user wants
it, so that the run directory's pruning (`checkpoint.keep`) can never take it away.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

VERSION = re.compile(r"^weights-(\d+)$")
REQUIRED = ("config.json", "model.safetensors")


class ExportError(ValueError):
    """Nothing to export, or nowhere to put it; the message says which and what exists."""


def published_versions(source: Path) -> dict[int, Path]:
    """{step: directory} of the published versions under a run directory or a checkpoint directory."""
    folder = source / "checkpoints" if (source / "checkpoints").is_dir() else source
    found = {int(m[1]): p for p in folder.glob("weights-*") if p.is_dir() and (m := VERSION.match(p.name))}
    return dict(sorted(found.items()))


def final_model(source: Path) -> Path | None:
    """The newest published version, or None."""
    versions = published_versions(source)
    return versions[max(versions)] if versions else None


def export(source: Path, out: Path, step: int | None = None) -> Path:
    """Copy version `step` (default: the newest) of `source` to `out`, which must not exist or be empty.

    Raises ExportError naming what is missing (the versions there are, or the files a version lacks).
    """
    versions = published_versions(source)
    if not versions:
        raise ExportError(f"{source}: no published weights (weights-<step>/ under it or under its checkpoints/)")
    chosen = max(versions) if step is None else step
    if chosen not in versions:
        listed = ", ".join(str(v) for v in versions)
        raise ExportError(f"{source}: no weights for step {chosen}; published steps: {listed}")
    version = versions[chosen]
    missing = [name for name in REQUIRED if not (version / name).is_file()]
    if missing:
        raise ExportError(f"{version}: lacks {', '.join(missing)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: exists and is not an empty directory (nothing was copied)")
    staging = out.with_name(f".{out.name}.export")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(version, staging)
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return out
