"""Run directories of `kuberl run`: each one unique, never laid over a user's files, continued only by --resume.

A run directory is marked by `kuberl-run.json` (the job's name and when the run began). A fresh run needs a
directory that does not exist or is empty; `--resume` needs one this marker says belongs to the same job.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

MARKER = "kuberl-run.json"


class RunDirError(ValueError):
    """The directory cannot take this run; the message says why and what to do instead."""


def new_run_dir(base: Path, job: str, now: datetime.datetime | None = None) -> Path:
    """`base/<job>-<YYYYmmdd-HHMMSS>`, made here and now; `-2`, `-3`, ... when another run took that second."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    base.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = base / (f"{job}-{stamp}" if n == 1 else f"{job}-{stamp}-{n}")
        try:
            candidate.mkdir()  # atomic: two runs started in the same second get different directories
        except FileExistsError:
            continue
        return candidate
    raise RunDirError(f"{base}: no free run directory name for {job} at {stamp}")


def claim(run_dir: Path, job: str, resume: bool) -> None:
    """Make `run_dir` this run's, or raise RunDirError: a fresh run only in a new or empty directory, `--resume`
    only in a run directory of the same job.
    """
    marker = run_dir / MARKER
    if resume:
        if not marker.is_file():
            raise RunDirError(f"{run_dir} is not a kuberl run directory (no {MARKER}): nothing to resume")
        owner = json.loads(marker.read_text()).get("job")
        if owner != job:
            raise RunDirError(f"{run_dir} is a run of job {owner!r}, not {job!r}: --resume continues the same job")
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        hint = "pass --resume to continue it" if marker.is_file() else "it holds files that are not a kuberl run"
        raise RunDirError(f"{run_dir} is not empty ({hint}); choose a new --run-dir (nothing was written)")
    run_dir.mkdir(parents=True, exist_ok=True)
    began = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    marker.write_text(json.dumps({"job": job, "began": began}) + "\n")
