"""The layout of published policy versions in a checkpoint directory: `weights-<version>/`, each a whole model.

The trainer writes them (trainer/weights.py); `kuberl export` copies one out, from a run directory on this machine
or, through an export pod, from a cluster job's checkpoint volume. Stdlib only: the operator reads this layout too.
"""

from __future__ import annotations

import re
from pathlib import Path

WEIGHTS_PREFIX = "weights"
VERSION_DIR = re.compile(rf"^{WEIGHTS_PREFIX}-(\d+)$")
# Without these a directory is not a model `from_pretrained` loads (the tokenizer files are copied when the source
# model has them; a model without a tokenizer is still a model).
REQUIRED_FILES = ("config.json", "model.safetensors")


def version_dir(directory: Path, version: int) -> Path:
    """`<directory>/weights-<version, 8 digits>`."""
    return directory / f"{WEIGHTS_PREFIX}-{version:08d}"


def published_versions(source: Path) -> dict[int, Path]:
    """{policy version: directory}, oldest first, under a run directory (its `checkpoints/`) or a checkpoint
    directory. Staging directories (`.weights-*.staging`) are not versions.
    """
    folder = source / "checkpoints" if (source / "checkpoints").is_dir() else source
    found = {
        int(m[1]): p for p in folder.glob(f"{WEIGHTS_PREFIX}-*") if p.is_dir() and (m := VERSION_DIR.match(p.name))
    }
    return dict(sorted(found.items()))


def missing_files(version: Path) -> list[str]:
    """The REQUIRED_FILES `version` lacks (empty when it is a loadable model directory)."""
    return [name for name in REQUIRED_FILES if not (version / name).is_file()]
