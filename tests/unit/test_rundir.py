"""Run directories: unique per run, never laid over a user's files, continued only by --resume of the same job."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kuberl_operator.launcher.rundir import MARKER, RunDirError, claim, new_run_dir
from support.specs import minimal_job


def test_two_runs_in_the_same_second_get_two_directories(tmp_path: Path) -> None:
    now = datetime.datetime(2026, 11, 30, 17, 0, 0)
    first, second = new_run_dir(tmp_path, "job", now), new_run_dir(tmp_path, "job", now)
    assert (first.name, second.name) == ("job-20261130-170000", "job-20261130-170000-2")


def test_a_fresh_run_needs_a_new_or_empty_directory(tmp_path: Path) -> None:
    claim(tmp_path / "new", "job", resume=False)
    assert (tmp_path / "new" / MARKER).is_file()
    with pytest.raises(RunDirError, match="pass --resume to continue it"):
        claim(tmp_path / "new", "job", resume=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "job.yaml").write_text("my hand-written job")
    with pytest.raises(RunDirError, match="holds files that are not a kuberl run"):
        claim(mine, "job", resume=False)
    assert [p.name for p in mine.iterdir()] == ["job.yaml"]


def test_resume_only_a_run_of_the_same_job(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="not a kuberl run directory"):
        claim(tmp_path, "job", resume=True)
    claim(tmp_path / "run", "job", resume=False)
    claim(tmp_path / "run", "job", resume=True)
    with pytest.raises(RunDirError, match="a run of job 'job', not 'other'"):
        claim(tmp_path / "run", "other", resume=True)


def test_kuberl_run_in_the_jobs_own_folder_leaves_the_job_file_alone(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(minimal_job()))
    before = job.read_text()
    command = [sys.executable, "-m", "kuberl_operator.cli", "run", str(job), "--run-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "not empty" in done.stdout + done.stderr
    assert job.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["job.yaml"]
