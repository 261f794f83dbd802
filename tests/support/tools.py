"""Find the release binaries the chart and monitoring checks run (helm, promtool, prometheus, hadolint)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def tool(name: str) -> str:
    """The venv's copy (fetched by `make tools`), else one on PATH; a missing tool fails the test, never skips it."""
    local = Path(sys.prefix) / "bin" / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} not found in {local.parent} or on PATH: run `make tools`")
    return found
