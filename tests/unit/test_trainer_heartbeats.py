"""The trainer heartbeats from a thread while a long step runs, and stops when its main loop makes no progress."""

from __future__ import annotations

import time
from typing import Any

from kuberl_workers.trainer.__main__ import Heartbeats


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        assert (method, path) == ("POST", "/v1/workers/heartbeat") and body is not None
        self.calls.append(body)
        if len(self.calls) == 2:
            raise ConnectionError("controller restarting")  # a failed beat must not stop the thread
        return 200, {}


def test_beats_during_progress_and_pauses_on_a_stall() -> None:
    client = Recorder()
    beats = Heartbeats(client, "job-trainer-0", every=0.05, stall_seconds=0.4)  # type: ignore[arg-type]
    beats.start()
    try:
        for _ in range(8):  # a "long training step": micro-batches report progress, no poll of the controller
            beats.progress(3)
            time.sleep(0.05)
        during = len(client.calls)
        assert during >= 4 and client.calls[-1] == {"worker": "job-trainer-0", "role": "trainer", "version": 3}
        time.sleep(0.8)  # the main loop hangs: after stall_seconds the beats stop, so the controller sees it
        stalled = len(client.calls)
        time.sleep(0.3)
        assert len(client.calls) == stalled and stalled <= during + 9
    finally:
        beats.stop()
        beats.join(timeout=2)
    assert not beats.is_alive()
