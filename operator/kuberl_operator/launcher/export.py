"""`kuberl export RUN_DIR OUT`: copy one published policy version out of a run (or a checkpoint directory).

Every version the trainer publishes (`checkpoints/weights-<step>/`) is already a complete model directory: weights
(tied ones stored once, as `save_pretrained` does), `config.json`, the tokenizer with its chat template and the
generation config (workers/kuberl_workers/trainer/weights.py). Exporting copies one, checked, to where the user wants
it, so that the run directory's pruning (`checkpoint.keep`) can never take it away. A cluster job's versions are
on its checkpoint volume: kuberl_operator/export_job.py reads them through an export pod.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kuberl_workers.published import VERSION_DIR, missing_files, published_versions


class ExportError(ValueError):
    """Nothing to export, or nowhere to put it; the message says which and what exists."""


def final_model(source: Path) -> Path | None:
    """The newest published version, or None."""
    versions = published_versions(source)
    return versions[max(versions)] if versions else None


def check_out(out: Path) -> None:
    """Raises ExportError unless `out` is absent or an empty directory (checked before anything is copied)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: exists and is not an empty directory (nothing was copied)")


def export(source: Path, out: Path, step: int | None = None) -> Path:
    """Copy version `step` (default: the newest) of `source` to `out`, which must not exist or be empty.

    Raises ExportError naming what is missing (the versions there are, or the files a version lacks).
    """
    if not source.is_dir():
        raise ExportError(
            f"{source}: no such directory (a `kuberl run` directory, a checkpoint directory, or one version)"
        )
    versions = published_versions(source)
    if (m := VERSION_DIR.match(source.name)) and step in (None, int(m[1])):  # the version the run summary named
        versions = {int(m[1]): source}
    if not versions:
        raise ExportError(f"{source}: no published weights (weights-<step>/ under it or under its checkpoints/)")
    chosen = max(versions) if step is None else step
    if chosen not in versions:
        listed = ", ".join(str(v) for v in versions)
        raise ExportError(f"{source}: no weights for step {chosen}; published steps: {listed}")
    version = versions[chosen]
    missing = missing_files(version)
    if missing:
        whole = [v for v, path in versions.items() if not missing_files(path)]
        hint = f"; complete versions: {whole} (--step N)" if whole else ""
        raise ExportError(f"{version}: lacks {', '.join(missing)}{hint}")
    check_out(out)
    staging = out.with_name(f".{out.name}.export")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(version, staging)
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return out
