"""The local launcher's supervision of a crashed child: what the child started goes with it (found by the chaos soak:
the controller's reward processes outlived a SIGKILL of the controller and were left running after the run)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kuberl_operator.api.rljob import RLJob
from kuberl_operator.launcher.children import Child
from kuberl_operator.launcher.report import Display
from kuberl_operator.launcher.run import LocalRun
from support.chaos import alive
from support.specs import minimal_job


@pytest.mark.parametrize("role", ["controller", "trainer"])
def test_a_crashed_child_takes_its_process_group_along(tmp_path: Path, role: str) -> None:
    run = LocalRun(RLJob.model_validate(minimal_job()), tmp_path, display=Display(io.StringIO()))
    # a leader that starts a helper in its own process group (as the controller's reward pool does), then waits
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $! && wait"], stdout=subprocess.PIPE, start_new_session=True
    )
    assert leader.stdout is not None
    helper = int(leader.stdout.readline())
    child = Child(role, 0, f"job-{role}-0", "127.0.0.1", proc=leader, started=time.monotonic())
    run.children = [child]
    try:
        os.kill(leader.pid, signal.SIGKILL)  # the leader alone, as the OOM killer would
        leader.wait(10)
        assert alive(helper)
        assert run._supervise(time.monotonic(), complete=False) is None  # a restart is scheduled, not the end
        assert child.restart_at is not None
        deadline = time.monotonic() + 10
        while alive(helper) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(helper), "the crashed child's helper process was left running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(helper, signal.SIGKILL)


def test_metrics_keep_each_step_once_and_mark_restarts(tmp_path: Path) -> None:
    from kuberl_operator.launcher.report import MetricsLog, plot

    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3, 4):
        log.add({"step": step, "rewardMean": 0.1 * step, "stepSeconds": 1.0})
    log.add({"step": 3, "rewardMean": 0.5, "stepSeconds": None, "afterRestart": True})  # restored at 2
    log.add({"step": 4, "rewardMean": 0.6, "stepSeconds": 1.0})
    again = MetricsLog(tmp_path / "metrics.jsonl")  # what a resumed run reads
    assert [r["step"] for r in again.rows] == [1, 2, 3, 4] and again.rows[2]["afterRestart"] is True
    assert [r["rewardMean"] for r in again.rows][2:] == [0.5, 0.6]
    picture = plot(again.rows, tmp_path / "progress.png")
    assert picture is not None and picture.stat().st_size > 1000


def test_start_deadline_bounds_the_wait_for_the_controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """faultTolerance.startDeadlineSeconds in `kuberl run`: a controller that never answers ends the run with
    StartDeadlineExceeded instead of a progress line at step 0 for ever."""
    out = io.StringIO()
    job = RLJob.model_validate(minimal_job(faultTolerance={"startDeadlineSeconds": 2}))
    run = LocalRun(job, tmp_path, display=Display(out))
    monkeypatch.setattr(run, "preflight", lambda: [])

    def start(child: Child) -> None:  # a worker that never serves
        child.proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
        child.started = time.monotonic()

    monkeypatch.setattr(run, "_start", start)
    began = time.monotonic()
    assert run.run() == 1
    assert time.monotonic() - began < 30
    assert "FAILED (StartDeadlineExceeded): the controller did not answer within" in out.getvalue()
    assert all(not c.running for c in run.children)
