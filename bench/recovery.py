"""Fault recovery on the emulated cluster: a rollout worker or a trainer SIGKILLed, timed until work resumes.

The real `kuberl operator` process drives real workers (controller, trainer, two vLLM rollout engines on CPU, the
tiny model) through the test kubelet, which runs each pod as a local process (docs/operations.md, "Testing
against a cluster"). A fault is a SIGKILL of the pod's process, as an OOM kill or a crash. The phases are read from
the API server's request times (the kubelet's status reports, the operator's deletes and creates), the
controller's own API polled every 0.1 s (its worker table, per-worker throughput and policy version), and the
trainer's log. At the end the controller's prompt ledger is checked: no prompt lost or trained twice.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench import _cluster as bc
from bench._emulator import describe
from bench.common import arguments, stopwatch, summary, write
from kuberl_workers.models.tiny import ensure_tiny
from support.ledger import assert_every_prompt_trained_once
from support.net import http_get
from support.specs import fault_drill_job

JOB = "bench-recovery"
ROLLOUTS = 2  # one survives each rollout kill and takes over the lost work
RESUMED = re.compile(r"^(\S+ \S+) INFO trainer .*resumes at step (\d+)", re.M)


def job(namespace: str, rollouts: int) -> dict[str, Any]:
    spec = fault_drill_job(
        JOB,
        100_000,
        model={"volume": "models", "path": "tiny", "dtype": "float32"},
        checkpoint={"volume": "checkpoints"},
    )
    spec["metadata"]["namespace"] = namespace
    spec["spec"]["rollout"] = {"minReplicas": rollouts, "maxReplicas": rollouts}
    spec["spec"]["faultTolerance"]["maxRestarts"] = 100
    return spec


class ControllerWatch:
    """Polls the job controller's /v1/status and /v1/demand every `period` s on a thread; keeps what it saw."""

    def __init__(self, address: str, token: str, period: float = 0.1) -> None:
        self.address, self.token, self.period = address, token, period
        self.seen: list[tuple[float, dict[str, Any], dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="controller-watch", daemon=True)
        self._thread.start()

    def _get(self, route: str) -> dict[str, Any] | None:
        try:
            code, body = http_get(f"http://{self.address}:{bc.CONTROLLER_PORT}{route}", self.token, timeout=2)
            return dict(json.loads(body)) if code == 200 else None
        except (OSError, ValueError):
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            status, demand = self._get("/v1/status"), self._get("/v1/demand")
            if status is not None and demand is not None:
                self.seen.append((time.monotonic(), status, demand))
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def latest(self) -> dict[str, Any]:
        return self.seen[-1][1] if self.seen else {}

    def step(self) -> int:
        return int(self.latest().get("step") or 0)

    def wait_steps(self, more: int, timeout: float, explain: Any) -> None:
        target = self.step() + more
        bc.wait_for(lambda: self.step() >= target, f"step {target}", timeout, explain=explain)

    def first(self, since: float, test: Any) -> float | None:
        return next((t for t, status, demand in list(self.seen) if t >= since and test(status, demand)), None)


def pod_report(bench: bc.BenchCluster, pod: str, since: float, phase: str, ready: bool = False) -> float | None:
    """When the kubelet first reported `pod` in `phase` (and Ready, if asked) after `since`."""
    for t, request in bench.requests_since(since, operator_only=False):
        if describe(request) != "UPDATE pods/status" or request.name != pod:
            continue
        status = (request.data or {}).get("status") or {}
        is_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if (status.get("phase") == phase or (phase == "" and ready)) and (is_ready or not ready):
            return t
    return None


def operator_call(bench: bc.BenchCluster, verb: str, pod: str, since: float) -> float | None:
    for t, request in bench.requests_since(since):
        name = request.name or ((request.data or {}).get("metadata") or {}).get("name")
        if describe(request) == verb and name == pod:
            return t
    return None


def need(value: float | None, what: str, explain: Any) -> float:
    if value is None:
        raise RuntimeError(f"not observed: {what}\n{explain()}")
    return value


def kill_rollout(
    bench: bc.BenchCluster, kubelet: bc.BenchKubelet, watch: ControllerWatch, explain: Any, engine: bool = True
) -> dict[str, Any]:
    """Kill rollout-0; the phases until the replacement generates (with `engine`) or until its process started."""
    pod = f"{JOB}-rollout-0"
    step_before = watch.step()
    t0 = time.monotonic()
    kubelet.kill(pod)

    def gone(status: dict[str, Any], demand: dict[str, Any]) -> bool:
        return pod not in (status.get("workers") or {})

    def back(status: dict[str, Any], demand: dict[str, Any]) -> bool:
        return bool((demand.get("perReplicaTokensPerSecond") or {}).get(pod))

    # declared dead after missed heartbeats: its leases return to the queue and its throughput entry goes
    requeued = bc.wait_for(lambda: watch.first(t0, gone), "the worker declared dead", 60, explain=explain)
    if engine:  # the replacement's first accepted chunk: its throughput appears in the demand signal again
        bc.wait_for(lambda: watch.first(requeued, back), "the replacement's first chunk", 300, explain=explain)
    else:
        bc.wait_for(lambda: kubelet.started.count(pod) >= 2, "the replacement's process", 60, explain=explain)
        time.sleep(1)  # its Running report
    failed = need(pod_report(bench, pod, t0, "Failed"), "pod Failed", explain)
    deleted = need(operator_call(bench, "DELETE pods", pod, failed), "pod deleted", explain)
    created = need(operator_call(bench, "CREATE pods", pod, deleted), "pod created", explain)
    running = need(pod_report(bench, pod, created, "Running"), "pod Running", explain)
    ready = pod_report(bench, pod, created, "", ready=True)  # its readiness probe (the health server) passes
    registered = first_chunk = None
    if engine:  # after the old worker was declared dead: until then the table lists it under the same name
        registered = need(
            watch.first(max(running, requeued), lambda s, d: pod in s.get("workers", {})), "registered", explain
        )
        first_chunk = need(watch.first(registered, back), "first chunk", explain)
    lost = re.findall(
        rf"worker {pod} missed its heartbeats; (\d+) leases requeued", kubelet.log_of(f"{JOB}-controller-0")
    )
    return {
        "declared dead, leases requeued s": requeued - t0,
        "detected (pod Failed) s": failed - t0,
        "operator deletes s": deleted - failed,
        "backoff, pod created s": created - deleted,
        "process started s": running - created,
        "pod Ready after start s": ready - running if ready else None,  # not a phase: shows what Ready means
        "engine loaded, registered s": registered - running if registered else None,
        "weights loaded, first chunk s": first_chunk - registered if first_chunk and registered else None,
        "replacement working s": first_chunk - t0 if first_chunk else None,
        "chunks requeued": int(lost[-1]) if lost else None,
        "steps during recovery": watch.step() - step_before,
    }


def kill_trainer(
    bench: bc.BenchCluster, kubelet: bc.BenchKubelet, watch: ControllerWatch, explain: Any
) -> dict[str, Any]:
    pod = f"{JOB}-trainer-0"
    starts = kubelet.started.count(pod)
    t0 = time.monotonic()
    kubelet.kill(pod)

    def resumed() -> tuple[float, int] | None:
        """When the new trainer logged `resumes at step K` (on this clock), and K."""
        found = RESUMED.findall(kubelet.log_of(pod)) if kubelet.started.count(pod) > starts else []
        if not found:
            return None
        wall = datetime.datetime.strptime(found[-1][0], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return wall - (time.time() - time.monotonic()), int(found[-1][1])

    at, resumed_at = bc.wait_for(resumed, "the new trainer's resume", 240, explain=explain)
    # the last version the killed trainer published: nothing is published between its death and the resume
    version = max(int(s.get("policyVersion") or 0) for t, s, _ in list(watch.seen) if t <= at)
    newer = bc.wait_for(
        lambda: watch.first(at, lambda s, d: int(s.get("policyVersion") or 0) > version),
        "a new step",
        240,
        explain=explain,
    )
    failed = need(pod_report(bench, pod, t0, "Failed"), "pod Failed", explain)
    deleted = need(operator_call(bench, "DELETE pods", pod, failed), "pod deleted", explain)
    created = need(operator_call(bench, "CREATE pods", pod, deleted), "pod created", explain)
    running = need(pod_report(bench, pod, created, "Running"), "pod Running", explain)
    return {
        "detected (pod Failed) s": failed - t0,
        "operator deletes gang s": deleted - failed,
        "backoff, pod created s": created - deleted,
        "process started s": running - created,
        "loaded checkpoint, registered s": at - running,
        "replayed, first new step s": newer - at,
        "first new step s": newer - t0,
        "steps retrained": version - resumed_at,
    }


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    repeat = args.repeat or (1 if args.quick else 2)
    rollout_rows: list[dict[str, Any]] = []
    trainer_rows: list[dict[str, Any]] = []
    with stopwatch() as elapsed, bc.cluster("bench-recovery") as bench:
        block = bc.loopback_block()
        with (
            bc.operator(bench) as operator,
            bc.test_kubelet(bench, block, {"tiny": ensure_tiny(0)}) as kubelet,
        ):
            # --quick: one rollout pod (one engine start less); the full run has a survivor that takes over
            bench.api.create("rljobs", job(bench.namespace, 1 if args.quick else ROLLOUTS))

            def explain() -> str:
                pods = {p["metadata"]["name"]: (p.get("status") or {}).get("phase") for p in bench.api.list("pods")}
                logs = "\n".join(f"--- {n}\n{kubelet.log_of(n)[-1200:]}" for n in sorted(pods))
                return (
                    f"pods: {pods}\nkubelet errors: {kubelet.errors[-3:]}\n--- operator\n{operator.tail(2000)}\n{logs}"
                )

            controller = f"{JOB}-controller-0"
            secret = bc.wait_for(
                lambda: bench.api.get("secrets", f"{JOB}-token"), "the job's token", 60, explain=explain
            )
            token = base64.b64decode(secret["data"]["token"]).decode()
            watch = ControllerWatch(kubelet.ip_of(controller), token)
            try:
                started = time.monotonic()
                watch.wait_steps(2, 300, explain)
                first_steps = time.monotonic() - started
                for _ in range(repeat):
                    if args.quick:  # one engine start only, the job's: the replacement's is not waited for
                        trainer_rows.append(kill_trainer(bench, kubelet, watch, explain))
                        watch.wait_steps(3, 120, explain)  # and a checkpoint written after the recovery
                        rollout_rows.append(kill_rollout(bench, kubelet, watch, explain, engine=False))
                        continue
                    rollout_rows.append(kill_rollout(bench, kubelet, watch, explain))
                    # past a checkpoint (every 2 steps): the trainer kill retrains at most a step or two
                    watch.wait_steps(3, 120, explain)
                    trainer_rows.append(kill_trainer(bench, kubelet, watch, explain))
                    watch.wait_steps(3, 120, explain)  # and a checkpoint written after the recovery
                final_step = watch.step()
                # the ledger of the newest controller checkpoint, written after the last fault was recovered
                ledger = assert_every_prompt_trained_once(kubelet.root / "pvc" / "checkpoints")
            finally:
                watch.stop()
    trained = [index for index, _ in ledger["done"]]
    pending = {g["prompt_index"] for g in ledger["groups"]} | set(ledger["requeue"]) | set(ledger["dropped"])
    lost = [i for i in range(ledger["cursor"]) if i not in trained and i not in pending]
    ledger_row = {
        "prompts handed out": ledger["cursor"],
        "trained": len(trained),
        "trained twice": len(trained) - len(set(trained)),
        "lost": len(lost),
        "dropped by the purge rule": len(ledger["dropped"]),
        "leases requeued": ledger["counters"]["leases_requeued"],
        "results rejected (stale lease)": ledger["counters"]["leases_rejected"],
    }
    tables = {
        "rollout worker killed (s from SIGKILL, phases in order)": rollout_rows,
        "trainer killed (s from SIGKILL, phases in order)": trainer_rows,
        "rollout kill, min/median": _summaries(rollout_rows),
        "trainer kill, min/median": _summaries(trainer_rows),
        "prompt ledger at the newest checkpoint after the faults": [ledger_row],
    }
    working = [r["replacement working s"] for r in rollout_rows if r["replacement working s"] is not None]
    back = f"replacement generating after {statistics.median(working):.1f}s" if working else "(--quick: not waited for)"
    requeue = statistics.median(r["declared dead, leases requeued s"] for r in rollout_rows)
    new_step = statistics.median(r["first new step s"] for r in trainer_rows)
    plot(rollout_rows, trainer_rows, args.plots / "recovery.png")
    write(
        "recovery",
        args,
        {
            "tables": tables,
            "headline": [
                f"rollout worker killed: its chunks back in the queue after {requeue:.1f}s (3 missed 1-s heartbeats), "
                f"{back} (median of {len(rollout_rows)})",
                f"trainer killed: first new step after {new_step:.1f}s (median of {len(trainer_rows)}); "
                f"prompts lost {len(lost)}, trained twice {ledger_row['trained twice']}",
            ],
            "first_steps_seconds": first_steps,
            "final_step": final_step,
            "seconds": elapsed(),
        },
    )


def _summaries(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for key in rows[0]:
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            stats = summary(values)
            out.append(
                {"phase": key, "min": stats["min"], "median": stats["median"], "max": stats["max"], "n": stats["n"]}
            )
    return out


ROLLOUT_PHASES = [
    "detected (pod Failed) s",
    "operator deletes s",
    "backoff, pod created s",
    "process started s",
    "engine loaded, registered s",
    "weights loaded, first chunk s",
]
LEGEND = [
    "detected (pod Failed)",
    "operator deletes (gang)",
    "restart backoff, pod created",
    "process started",
    "vLLM engine / trainer model + checkpoint",
    "first chunk / replay + first new step",
]
TRAINER_PHASES = [
    "detected (pod Failed) s",
    "operator deletes gang s",
    "backoff, pod created s",
    "process started s",
    "loaded checkpoint, registered s",
    "replayed, first new step s",
]


def plot(rollout_rows: list[dict[str, Any]], trainer_rows: list[dict[str, Any]], path: Path) -> None:
    """The median of each phase, stacked in order: where the time goes after a kill."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.2))
    colours = [plt.get_cmap("tab10")(i) for i in range(10)]
    for y, (rows, phases) in enumerate(((trainer_rows, TRAINER_PHASES), (rollout_rows, ROLLOUT_PHASES))):
        left = 0.0
        for i, phase in enumerate(phases):
            values = [r[phase] for r in rows if r[phase] is not None]
            if not values:
                continue
            width = statistics.median(values)
            axis.barh(y, width, left=left, color=colours[i], edgecolor="white", label=LEGEND[i] if y == 1 else None)
            left += width
        axis.text(left + 0.5, y, f"{left:.1f} s", va="center", fontsize=8)
    axis.set_yticks([0, 1], ["trainer killed", "rollout worker killed"])
    axis.set(xlabel="seconds after SIGKILL (median of each phase)", title="Fault recovery on the emulated cluster")
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
