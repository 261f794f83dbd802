"""A seeded chaos driver for `kuberl run`: it SIGKILLs and SIGSTOPs the run's processes while the job trains and
records when each fault landed and how long training took to get past it; plus the checks the soak makes afterwards
(reward against a run without chaos, step rewinds, orphan processes)."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.net import http_get
from support.specs import fault_drill_job

POLL = 0.25


def chaos_job(
    name: str, steps: int, seed: int, rollouts: int, model: dict[str, Any], checkpoint: dict[str, Any]
) -> dict[str, Any]:
    """The fault-drill job grown for chaos: `rollouts` rollout workers (a kill leaves others), about 40 finished
    samples per step (a reward mean that says something), a restart budget no schedule exhausts, 8 s leases."""
    job = fault_drill_job(name, steps, model=model, checkpoint=checkpoint)
    spec = job["spec"]
    spec["seed"] = seed
    spec["task"].update(promptsPerStep=12, samplesPerPrompt=4)
    spec["algorithm"]["learningRate"] = 2e-4  # 1e-3 on batches this small collapses the reward
    spec["c3po"].update(tokenBudget=384, inferencePoolCapacity=48)
    spec["rollout"] = {"minReplicas": rollouts, "maxReplicas": rollouts}
    spec["faultTolerance"].update(maxRestarts=1000, maxRestartBackoffSeconds=4, leaseSeconds=8)
    return job


@dataclass(frozen=True)
class Plan:
    """What to break. Step-triggered faults (trainer, controller, stall) get distinct steps, one per equal slice of
    [2, steps - 3], so every one lands mid-training; rollout kills come every `rollout_kill_every` seconds."""

    seed: int
    steps: int
    trainer_kills: int = 2
    controller_kills: int = 1
    stalls: int = 1
    rollout_kill_every: tuple[float, float] = (3.0, 8.0)
    stall_seconds: float = 11.0  # past the job's 8 s lease
    stall_end: str = ""  # "cont" or "kill"; unset: SIGCONT for odd seeds, SIGKILL for even ones (both get covered)

    def step_faults(self) -> list[tuple[int, str]]:
        rng = random.Random(self.seed)
        kinds = ["trainer"] * self.trainer_kills + ["controller"] * self.controller_kills + ["stall"] * self.stalls
        rng.shuffle(kinds)
        span = (self.steps - 3 - 2) / max(len(kinds), 1)
        return [(2 + int(i * span) + rng.randrange(max(int(span), 1)), kind) for i, kind in enumerate(kinds)]


@dataclass
class Fault:
    kind: str  # kill-rollout, kill-trainer, kill-controller, stall-rollout
    target: str
    pid: int
    at: float  # seconds since the driver started
    step: int  # the highest policy version seen before it
    recovered: float | None = None  # seconds until the controller reported a version past `step`
    rejoined: float | None = None  # rollout targets: seconds until the victim served again
    detected: float | None = None  # stalls: seconds until the controller dropped the stalled worker
    ended: str = ""  # stalls: "cont" or "kill"
    refused: int | None = None  # stalls ended by SIGCONT: chunk results the controller refused since (late ones)
    rejected_before: float = 0.0


def alive(pid: int) -> bool:
    """A live process (a zombie its parent has not reaped yet counts as dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X")


def processes_of(run_dir: Path) -> list[int]:
    """Every process started for this run: they all carry its config path in their environment."""
    marker = f"=/{run_dir.relative_to('/')}/config.json".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes() and alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


def stop_run(proc: subprocess.Popen[bytes], run_dir: Path) -> None:
    """Cleanup after a failed test: wake stopped processes, Ctrl-C the launcher, then SIGKILL what is left."""
    for pid in processes_of(run_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in processes_of(run_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class LocalChaos:
    """Drives one `kuberl run` (its run directory) through a Plan; call `run(proc, timeout)`."""

    def __init__(self, run_dir: Path, job: str, plan: Plan) -> None:
        self.run_dir, self.job, self.plan = run_dir, job, plan
        self.rng = random.Random(plan.seed * 7919 + 1)
        self.pending = plan.step_faults()
        self.faults: list[Fault] = []
        self.seen: list[int] = []  # the controller's policy version at every poll
        self.started = time.monotonic()
        self.next_rollout_kill = self._after()  # kills wait anyway until two workers serve
        self.stalled: Fault | None = None
        self.stall_until = 0.0

    # --- observation -------------------------------------------------------------------------------------

    def clock(self) -> float:
        return time.monotonic() - self.started

    def _after(self, base: float = 0.0) -> float:
        return self.clock() + base + self.rng.uniform(*self.plan.rollout_kill_every)

    def status(self) -> dict[str, Any] | None:
        try:
            cfg = json.loads((self.run_dir / "config.json").read_text())
            token = (self.run_dir / "token").read_text().strip()
            code, body = http_get(f"http://127.0.0.2:{cfg['ports']['controller']}/v1/status", token, timeout=2)
            return dict(json.loads(body)) if code == 200 else None
        except (OSError, ValueError, KeyError):
            return None

    def rejected(self) -> float:
        """The controller's count of refused chunk results (a result whose lease had been taken back)."""
        try:
            cfg = json.loads((self.run_dir / "config.json").read_text())
            _, body = http_get(f"http://127.0.0.2:{cfg['ports']['controller']}/metrics", timeout=2)
        except (OSError, ValueError, KeyError):
            return 0.0
        found = re.search(rb"^kuberl_leases_rejected(?:_total)?(?:\{[^}]*\})? ([0-9.e+]+)$", body, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def pids(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads((self.run_dir / "pids.json").read_text()).items()}
        except (OSError, ValueError):
            return {}

    def serving(self, status: dict[str, Any], pids: dict[str, int]) -> list[str]:
        """Rollout workers registered with the controller, alive and not stopped by us."""
        stalled = self.stalled.target if self.stalled else None
        return sorted(
            name
            for name, worker in status["workers"].items()
            if worker["role"] == "rollout" and name != stalled and name in pids and alive(pids[name])
        )

    # --- faults ------------------------------------------------------------------------------------------

    def _kill(self, kind: str, target: str, pids: dict[str, int], step: int) -> Fault:
        """SIGKILL the process itself, not its group: what an OOM kill or a segfault does (children stay)."""
        fault = Fault(kind, target, pids[target], self.clock(), step)
        os.kill(fault.pid, signal.SIGKILL)
        self.faults.append(fault)
        return fault

    def _stall(self, target: str, pids: dict[str, int], step: int) -> None:
        fault = Fault("stall-rollout", target, pids[target], self.clock(), step, rejected_before=self.rejected())
        os.killpg(fault.pid, signal.SIGSTOP)  # the whole worker freezes (a GC pause, a frozen VM)
        self.faults.append(fault)
        self.stalled, self.stall_until = fault, self.clock() + self.plan.stall_seconds

    def _end_stall(self) -> None:
        fault = self.stalled
        if fault is None or self.clock() < self.stall_until:
            return
        end = self.plan.stall_end or ("cont" if self.plan.seed % 2 else "kill")
        fault.ended = end
        with contextlib.suppress(ProcessLookupError):
            if end == "kill":
                os.kill(fault.pid, signal.SIGKILL)
            os.killpg(fault.pid, signal.SIGCONT)  # a killed one's leftovers must not stay stopped either
        self.stalled = None

    def _quiet(self) -> bool:
        """No trainer or controller fault still unrecovered: the next one starts from a running job."""
        return all(f.recovered is not None for f in self.faults if f.kind in ("kill-trainer", "kill-controller"))

    def _track(self, status: dict[str, Any], pids: dict[str, int], version: int) -> None:
        now = self.clock()
        workers = status["workers"]
        for fault in self.faults:
            if fault.recovered is None and version > fault.step:
                fault.recovered = now - fault.at
            if fault.kind == "stall-rollout" and fault.detected is None and fault.target not in workers:
                fault.detected = now - fault.at
            if fault.kind.endswith("rollout") and fault.rejoined is None and fault.target in workers:
                pid = pids.get(fault.target, fault.pid)
                restarted = pid != fault.pid and alive(pid)
                resumed = fault.kind == "stall-rollout" and fault.ended == "cont" and fault.detected is not None
                if restarted or resumed:
                    fault.rejoined = now - fault.at
            if fault.ended == "cont" and fault.rejoined is not None and now - fault.at - fault.rejoined < 30:
                # chunks it generated before the stall arrive once its generate call finishes: watch for a while
                # (a restarted controller counts from 0 again: keep the largest difference)
                refused = int(self.rejected() - fault.rejected_before)
                fault.refused = max(fault.refused or 0, refused)

    def tick(self) -> None:
        self._end_stall()
        status, pids = self.status(), self.pids()
        if status is None:
            return
        version = int(status["policyVersion"])
        self.seen.append(version)
        step = max(self.seen)  # a fault is past once training is past the furthest point reached before it
        self._track(status, pids, version)
        if status["complete"]:
            return
        serving = self.serving(status, pids)
        trainer, controller = f"{self.job}-trainer-0", f"{self.job}-controller-0"
        # the first due step fault that can land now; one that cannot (no trainer registered, a gang still
        # restarting, nothing to stall) waits without holding up the others
        for due in [f for f in self.pending if version >= f[0]]:
            kind = due[1]
            gang_ok = self._quiet() and trainer in status["workers"]
            if kind == "trainer" and gang_ok and alive(pids.get(trainer, 0)):
                self._kill("kill-trainer", trainer, pids, step)
            elif kind == "controller" and gang_ok and alive(pids.get(controller, 0)):
                self._kill("kill-controller", controller, pids, step)
            elif kind == "stall" and self.stalled is None and serving:
                self._stall(self.rng.choice(serving), pids, step)
            else:
                continue
            self.pending.remove(due)
            return
        if self.clock() >= self.next_rollout_kill and len(serving) >= 2:  # a kill leaves another worker serving
            self._kill("kill-rollout", self.rng.choice(serving), pids, step)
            self.next_rollout_kill = self._after()

    def run(self, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
        """Inject faults until the launcher exits; fail if it takes longer than `timeout`."""
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            assert time.monotonic() < deadline, f"the run did not finish in {timeout:.0f}s\n{log.read_text()[-3000:]}"
            self.tick()
            time.sleep(POLL)
        if self.stalled is not None:
            self.stall_until = 0.0
            self._end_stall()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for fault in self.faults:
            out[fault.kind] = out.get(fault.kind, 0) + 1
        return out


def step_rewinds(seen: list[int]) -> list[int]:
    """How far the controller's version went back, each time it did (a restore from a checkpoint)."""
    return [a - b for a, b in itertools.pairwise(seen) if b < a]


def retrained(trainer_log: Path) -> list[int]:
    """How many steps the trainer trained again, each time it resumed behind where it had been (from its log's
    `step N: loss` lines, which every rank-0 incarnation appends to the same file)."""
    lines = re.finditer(r"trainer kuberl\.trainer: step (\d+): loss", trainer_log.read_text())
    steps = [int(m.group(1)) for m in lines]
    return [a - b + 1 for a, b in itertools.pairwise(steps) if b <= a]


def rewards_by_step(run_dir: Path) -> dict[int, float]:
    """The reward mean of every step (the last record wins: a rewound step is recorded again)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {int(r["step"]): float(r["rewardMean"]) for r in rows}


@dataclass
class RewardCheck:
    """The chaos run's mean reward over the last `k` steps against the reference run's.

    The step-to-step noise sigma is estimated from the reference's successive differences (the trend cancels):
    sigma = stdev(r[t+1] - r[t]) / sqrt(2). Two independent means of k steps then differ by sigma * sqrt(2 / k) in
    standard deviation; the chaos run passes unless it is more than three of those below the reference.
    """

    k: int
    reference: float
    chaos: float
    sigma: float
    tolerance: float = field(init=False)

    def __post_init__(self) -> None:
        self.tolerance = 3 * self.sigma * math.sqrt(2 / self.k)

    @property
    def ok(self) -> bool:
        return self.chaos >= self.reference - self.tolerance

    @classmethod
    def of(cls, reference: dict[int, float], chaos: dict[int, float], k: int) -> RewardCheck:
        steps = sorted(reference)
        assert sorted(chaos) == steps, f"steps differ: {sorted(chaos)} vs {steps}"
        curve = [reference[s] for s in steps]
        sigma = statistics.stdev(b - a for a, b in itertools.pairwise(curve)) / math.sqrt(2)
        tail = steps[-k:]
        return cls(k, statistics.fmean(reference[s] for s in tail), statistics.fmean(chaos[s] for s in tail), sigma)


def summary(faults: list[Fault]) -> dict[str, Any]:
    """Figures for the report: counts and recovery times (median and max, seconds) per fault kind."""
    out: dict[str, Any] = {}
    for kind in sorted({f.kind for f in faults}):
        mine = [f for f in faults if f.kind == kind]
        entry: dict[str, Any] = {"count": len(mine)}
        for attr in ("recovered", "rejoined", "detected"):
            values = [getattr(f, attr) for f in mine if getattr(f, attr) is not None]
            if values:
                entry[attr] = {"median": round(statistics.median(values), 1), "max": round(max(values), 1)}
        out[kind] = entry
    return out
