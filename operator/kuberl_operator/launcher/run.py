"""`kuberl run`: one RLJob as local processes, supervised with the operator's fault-tolerance policy."""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kuberl_operator import policy
from kuberl_operator.api import conditions as c
from kuberl_operator.api.rljob import RLJob
from kuberl_operator.launcher.children import (
    CONTROLLER_HOST,
    Child,
    reward_server_command,
    rollout_host,
    signal_group,
    spawn,
    stop_all,
    trainer_host,
)
from kuberl_operator.launcher.export import final_model
from kuberl_operator.launcher.logs import invalid_input, last_error
from kuberl_operator.launcher.report import (
    TRAINER_STATS,
    Display,
    MetricsLog,
    Progress,
    SampleLog,
    eval_summary,
    plot,
    print_summary,
    summary,
)
from kuberl_operator.launcher.rundir import RunDirError, claim
from kuberl_operator.render import worker_config
from kuberl_workers.config import (
    ENV_CONFIG,
    ENV_CONTROLLER_URL,
    ENV_TOKEN_FILE,
    ENV_TRAINER_MASTER,
    EVAL_LOG,
    Limits,
    Ports,
    WorkerConfig,
    invalid_input_problems,
)

TICK = 0.5
SCALE_EVERY = 2.0
STABLE_SECONDS = 30.0  # a process that ran this long has its consecutive-failure count reset


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_capacity() -> int:
    """Rollout engines this machine can hold: one per core, and about 3 GiB of memory each."""
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        by_memory = int(pages * size / 3 / 2**30)
    except (ValueError, OSError):
        by_memory = 1
    return max(1, min(os.cpu_count() or 1, by_memory))


class LocalRun:
    def __init__(
        self,
        job: RLJob,
        run_dir: Path,
        resume: bool = False,
        display: Display | None = None,
        capacity: int | None = None,
        source: Path | None = None,
    ) -> None:
        self.job = job
        self.source = source  # the job's file, for the resume hint
        self.run_dir = run_dir.resolve()
        self.resume = resume
        self.display = display or Display()
        self.capacity = capacity or local_capacity()
        self.children: list[Child] = []
        self.restarts = 0
        self.stopping = False
        self.low_since: float | None = None
        self.last_scale = 0.0
        self.last_step = 0
        self.restarted = resume  # the next recorded step follows downtime (a resume or a gang restart)
        self.cfg: WorkerConfig
        self.token = ""
        self.env: dict[str, str] = {}

    # --- setup ---------------------------------------------------------------------------------------

    def prepare(self) -> None:
        ckpt = self.run_dir / "checkpoints"
        try:
            claim(self.run_dir, self.job.metadata.name, self.resume)
        except RunDirError as error:
            raise SystemExit(str(error)) from None
        if self.resume and not any(ckpt.glob("controller-*.json")):
            self.display.message(f"no checkpoint in {ckpt} yet: starting from step 0")
        ckpt.mkdir(parents=True, exist_ok=True)
        token_file = self.run_dir / "token"
        if not token_file.exists():
            token_file.touch(mode=0o600)
            token_file.write_text(secrets.token_urlsafe(32))
        self.token = token_file.read_text().strip()
        ports = Ports(controller=_free_port(), rollout=_free_port(), trainer=_free_port(), rendezvous=_free_port())
        server = self.job.spec.rewardServer
        self.reward_ports = [_free_port() for _ in range(server.replicas if server else 0)]
        servers = tuple(f"http://127.0.0.1:{port}" for port in self.reward_ports)
        self.cfg = worker_config(self.job, str(ckpt), shared_checkpoints=True, reward_servers=servers).model_copy(
            update={"ports": ports, "limits": Limits(rolloutBatch=64)}
        )
        (self.run_dir / "config.json").write_text(self.cfg.model_dump_json(indent=2))
        (self.run_dir / "rljob.json").write_text(json.dumps(self.job.dump(), indent=2))
        self.env = {
            **os.environ,
            ENV_CONFIG: str(self.run_dir / "config.json"),
            ENV_TOKEN_FILE: str(token_file),
            ENV_CONTROLLER_URL: f"http://{CONTROLLER_HOST}:{ports.controller}",
            ENV_TRAINER_MASTER: trainer_host(0),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "PYTHONUNBUFFERED": "1",
        }
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        # a resumed run records from where its metrics end; steps the restored controller trains again lower it
        self.last_step = int(self.metrics.rows[-1]["step"]) if self.metrics.rows else 0
        self.samples = SampleLog(self.run_dir / "samples.jsonl")

    def _threads(self, role: str) -> str:
        """Torch threads per process unless the user set OMP_NUM_THREADS: the controller needs one; trainers and
        rollouts take turns (generation pauses while the gang trains), so each role may use the machine's cores,
        shared among its own processes.
        """
        if "OMP_NUM_THREADS" in os.environ or role == "controller":
            return os.environ.get("OMP_NUM_THREADS", "1")
        spec = self.job.spec
        processes = spec.trainer.replicas if role == "trainer" else min(spec.rollout.maxReplicas, self.capacity)
        return str(max(1, (os.cpu_count() or 1) // max(processes, 1)))

    def _start(self, child: Child) -> None:
        child.extra_env.setdefault("OMP_NUM_THREADS", self._threads(child.role))
        spawn(child, self.env, self.run_dir / "logs")
        self._write_pids()

    def _write_pids(self) -> None:
        pids = {c.name: c.proc.pid for c in self.children if c.proc is not None and c.running}
        (self.run_dir / "pids.json").write_text(json.dumps(pids))

    def _role(self, role: str) -> list[Child]:
        return [c for c in self.children if c.role == role]

    def _reward_servers(self) -> list[Child]:
        """spec.rewardServer's replicas as local processes (recreated on failure like rollout workers)."""
        server = self.job.spec.rewardServer
        if server is None:
            return []
        children = []
        for i, port in enumerate(self.reward_ports):
            command, env = reward_server_command(server.template, port)
            name = f"{self.job.metadata.name}-reward-{i}"
            children.append(Child("reward", i, name, "127.0.0.1", extra_env=env, command=command))
        return children

    def _add_rollout(self) -> Child:
        index = max((c.index for c in self._role("rollout")), default=-1) + 1
        child = Child("rollout", index, f"{self.job.metadata.name}-rollout-{index}", rollout_host(index))
        self.children.append(child)
        self._start(child)
        return child

    # --- the controller's API ------------------------------------------------------------------------

    def _api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"{self.env[ENV_CONTROLLER_URL]}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read() or b"null")
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            return None

    # --- supervision ---------------------------------------------------------------------------------

    def _failed(self, child: Child, now: float) -> int | None:
        """Apply the policy to a failed child; an exit code when the run must end."""
        code = child.proc.returncode if child.proc else None
        # What it started can outlive it (the controller's reward processes, when the OOM killer took the controller
        # alone): a pod's container would take them along, so the launcher does, or they run on as orphans.
        signal_group(child, signal.SIGKILL)
        if now - child.started > STABLE_SECONDS:
            child.consecutive = 0
        child.consecutive += 1
        spec = self.job.spec.faultTolerance
        decision = policy.on_failure(
            child.role,
            child.name,
            self.restarts,
            child.consecutive,
            spec.maxRestarts,
            spec.restartBackoffSeconds,
            spec.maxRestartBackoffSeconds,
            exit_code=code,
            detail="; ".join(invalid_input(self.run_dir / "logs" / f"{child.name}.log")),
        )
        if decision.action == "fail":
            self.display.message(f"FAILED ({decision.reason}): {decision.message}")
            if decision.reason != policy.INVALID_INPUT:
                self.display.message(last_error(self.run_dir / "logs" / f"{child.name}.log", child.name))
            return 1
        self.restarts += 1
        self.display.message(f"{decision.reason}: {decision.message} (exit code {code})")
        at = now + decision.delay
        if decision.action == "restart_pod":
            if child.role == "rollout":  # its leases go back now; a reward server holds none
                self._api("POST", "/v1/workers/lost", {"worker": child.name})
            child.restart_at = at
        else:
            # a trainer rank or the controller: the gang restarts from the last checkpoint (with the controller,
            # so that both resume from the same step)
            self.restarted = True
            for rank in self._role("trainer"):
                signal_group(rank, signal.SIGKILL)
                if rank.proc is not None:
                    rank.proc.wait()
                rank.restart_at = at
            if decision.action == "restart_controller":
                child.restart_at = at
        return None

    def _supervise(self, now: float, complete: bool) -> int | None:
        for child in list(self.children):
            if child.proc is None or child.restart_at is not None:
                if child.restart_at is not None and now >= child.restart_at:
                    self._start(child)
                continue
            if child.running:
                continue
            code = child.proc.returncode
            if child.role == "rollout" and (child.draining or complete) and code == 0:
                signal_group(child, signal.SIGKILL)  # anything it left behind (stop_all no longer sees it)
                self.children.remove(child)  # drained for a scale-down, or done
                continue
            if child.role == "trainer" and code == 0:
                continue  # trained the last step
            result = self._failed(child, now)
            if result is not None:
                return result
        return None

    def _scale(self, now: float, demand: dict[str, Any] | None) -> None:
        if demand is None or now - self.last_scale < SCALE_EVERY:
            return
        self.last_scale = now
        rollout = self.job.spec.rollout
        active = [c for c in self._role("rollout") if not c.draining]
        decision = policy.scale(
            int(demand["desiredRolloutReplicas"]),
            len(active),
            rollout.minReplicas,
            rollout.maxReplicas,
            rollout.replicas,
            self.capacity,
            self.low_since,
            now,
            rollout.scaleDownDelaySeconds,
        )
        self.low_since = decision.low_since
        while len(active) < decision.target:
            active.append(self._add_rollout())
            self.display.message(f"{policy.SCALED_UP}: {len(active)} rollout workers ({decision.reason})")
        while len(active) > decision.target:
            victim = max(active, key=lambda c: c.index)
            active.remove(victim)
            victim.draining = True
            self._api("POST", "/v1/rollout/drain", {"worker": victim.name})
            self.display.message(f"{policy.SCALED_DOWN}: draining {victim.name} ({decision.reason})")

    def _record(self, tokens_per_second: float) -> None:
        """Append every step trained since the last one recorded (the controller keeps a per-step history)."""
        entries = self._api("GET", f"/v1/history?since={self.last_step + 1}") or []
        for entry in entries:
            if "wallPublished" not in entry or entry["step"] <= self.last_step:
                continue
            previous = self.metrics.rows[-1]["wallPublished"] if self.metrics.rows and not self.restarted else None
            self.metrics.add(
                {
                    "step": entry["step"],
                    "rewardMean": entry["rewardMean"],
                    "tokens": entry["tokens"],
                    "tokensPerSecond": tokens_per_second,
                    "rolloutSeconds": entry["rolloutSeconds"],
                    "trainSeconds": entry.get("trainSeconds"),
                    "stepSeconds": entry["wallPublished"] - previous if previous else None,
                    "wallPublished": entry["wallPublished"],
                    "rollouts": sum(1 for c in self._role("rollout") if c.running),
                    "restarts": self.restarts,
                    **{k: entry[k] for k in TRAINER_STATS if k in entry},
                    **({"afterRestart": True} if self.restarted else {}),
                }
            )
            self.restarted = False
            self.last_step = entry["step"]
        self._show_samples()

    def _show_samples(self) -> None:
        """Append new samples to samples.jsonl and show the first of each new step."""
        records = self._api("GET", f"/v1/samples?since={self.samples.last_step + 1}") or []
        for step_first in self.samples.add(records):
            self.display.message(SampleLog.line(step_first))

    def preflight(self) -> list[str]:
        """The workers' own check of the job's inputs (kuberl_workers.preflight), before any process starts."""
        done = subprocess.run(
            [sys.executable, "-m", "kuberl_workers.preflight", "--config", str(self.run_dir / "config.json")],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode == 0:
            return []
        found = invalid_input_problems(done.stderr.splitlines())
        return found or [f"preflight exited with {done.returncode}: {done.stderr.strip()[-2000:]}"]

    def run(self) -> int:
        self.prepare()
        problems = self.preflight()
        if problems:
            self.display.message(
                f"FAILED ({policy.INVALID_INPUT}): nothing was started\n" + "\n".join(f"  {p}" for p in problems)
            )
            return 1
        name = self.job.metadata.name
        self.children = self._reward_servers()
        self.children += [Child("controller", 0, f"{name}-controller-0", CONTROLLER_HOST)]
        self.children += [
            Child("trainer", r, f"{name}-trainer-{r}", trainer_host(r)) for r in range(self.job.spec.trainer.replicas)
        ]
        for child in self.children:
            self._start(child)
        for _ in range(self.job.spec.rollout.minReplicas):
            self._add_rollout()
        ports = self.cfg.ports
        self.display.message(
            f"run directory {self.run_dir}\nmetrics: controller http://{CONTROLLER_HOST}:{ports.controller}/metrics, "
            f"trainer http://{trainer_host(0)}:{ports.trainer}/metrics, "
            f"rollouts http://{rollout_host(0)}:{ports.rollout}/metrics (127.0.1.N for worker N-1)"
        )
        interrupted: list[int] = []

        def on_signal(signum: int, frame: Any) -> None:
            interrupted.append(signum)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        started = time.monotonic()
        progress = Progress(job=name, steps=self.job.spec.algorithm.steps)
        code = 1
        deadline = self.job.spec.faultTolerance.startDeadlineSeconds
        answered = False
        try:
            while True:
                now = time.monotonic()
                if interrupted:
                    self.display.message(
                        "interrupted: stopping every process; resume with "
                        f"`kuberl run {self.source or 'FILE'} --resume --run-dir {self.run_dir}`"
                    )
                    code = 130
                    break
                status = self._api("GET", "/v1/status")
                answered = answered or status is not None
                if not answered and deadline is not None and now - started > deadline:
                    self.display.message(
                        f"FAILED ({c.START_DEADLINE_EXCEEDED}): the controller did not answer within "
                        f"faultTolerance.startDeadlineSeconds={deadline}s (see {self.run_dir / 'logs'})"
                    )
                    break
                complete = bool(status and status["complete"])
                result = self._supervise(now, complete)
                if result is not None:
                    code = result
                    break
                if status:
                    # a controller restored from its checkpoint re-trains the steps after it: record them again
                    self.last_step = min(self.last_step, int(status["policyVersion"]))
                    self._record(float(status["tokensPerSecond"]))
                    demand = self._api("GET", "/v1/demand")
                    if not complete:
                        self._scale(now, demand)
                    rows = self.metrics.rows
                    timed = [r["stepSeconds"] for r in rows if r.get("stepSeconds")]  # none right after a restart
                    pace = statistics.median(timed) if timed else math.inf
                    # the line for step N shows step N's reward: both from the same metrics row
                    if rows:
                        progress.step, progress.reward = int(rows[-1]["step"]), float(rows[-1]["rewardMean"])
                    progress.tokens_per_second, progress.budget_fill = status["tokensPerSecond"], status["budgetFill"]
                    progress.ready = sum(1 for c in self._role("rollout") if c.running and not c.draining)
                    progress.desired = int(demand["desiredRolloutReplicas"]) if demand else progress.ready
                    progress.eta = policy.steps_eta(progress.step, progress.steps, pace)
                waiting = (status or {}).get("waitingFor")
                progress.restarts = self.restarts
                progress.state = (
                    "complete"
                    if complete
                    else "waiting for a rollout worker"
                    if waiting == "rolloutWorkers"
                    else "running"
                )
                self.display.update(progress)
                if complete and all(not c.running for c in self._role("trainer")):
                    code = 0
                    break
                time.sleep(TICK)
        finally:
            stop_all(self.children)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.display.close()
            self._write_pids()
        items = summary(self.metrics.rows, time.monotonic() - started, self.restarts)
        picture = plot(self.metrics.rows, self.run_dir / "progress.png")
        final = final_model(self.run_dir)
        model = f"{final} (kuberl export {self.run_dir} OUT)" if final else "- (no weights published)"
        print_summary(
            self.display,
            [
                *items,
                ("final model", model),
                *eval_summary(self.run_dir / "checkpoints" / EVAL_LOG),
                ("metrics", str(self.metrics.path)),
                ("plot", str(picture) if picture else "-"),
            ],
        )
        return code
