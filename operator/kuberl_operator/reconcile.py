"""The one idempotent, level-based reconcile of an RLJob: observe, act on the difference, patch status once."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kuberl_operator import builders, policy
from kuberl_operator import status as st
from kuberl_operator.api import conditions as c
from kuberl_operator.api.rljob import RLJob
from kuberl_operator.api.validate import problems_of
from kuberl_operator.children import adopt, announce_refusals, create_child, delete_pod, event
from kuberl_operator.children import now as _now
from kuberl_operator.kube import Kube, path
from kuberl_operator.pods import disruption, phase, role_of, start_deadline, terminated
from kuberl_operator.reward_server import build_reward_pod, build_reward_service
from kuberl_operator.settings import Settings

BACKOFF_ANNOTATION = "kuberl.io/recreate-after"
# {"consecutive": {pod: n}, "nodes": {node: n}, "resting": [pod]}; resting: a drained rollout that exited, whose
# backoff is a pause before it may come back (if still wanted), not a restart
FAILURES_ANNOTATION = "kuberl.io/failures"
SCALE_ANNOTATION = "kuberl.io/rollout-desired"  # written by the scaler daemon

DEFAULTS = Settings()
JOB_ENDING = ("suspended", "finished", "failed-job")  # deletion reasons that take every pod, the controller too
ControllerProbe = Callable[[RLJob, str], Awaitable[dict[str, Any] | None]]
WorkerLost = Callable[[RLJob, str, str], Awaitable[object]]  # tell the controller a rollout pod is gone


@dataclass
class Outcome:
    status_patch: dict[str, Any] = field(default_factory=dict)
    permanent_error: str | None = None
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    requeue_after: float | None = None  # seconds until a pod's restart backoff ends
    refused: list[str] = field(default_factory=list)  # children the API server refused: "<kind> <name>: <why>"

    def requeue(self, seconds: float) -> None:
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def _failures(consecutive: dict[str, int], nodes: dict[str, int], resting: set[str]) -> str:
    value: dict[str, Any] = {"consecutive": consecutive, "nodes": nodes}
    if resting:
        value["resting"] = sorted(resting)
    return json.dumps(value, sort_keys=True)


def _annotation(body: dict[str, Any], key: str) -> dict[str, Any]:
    raw = (body["metadata"].get("annotations") or {}).get(key)
    try:
        value = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def desired_rollouts(job: RLJob, body: dict[str, Any]) -> int:
    rollout = job.spec.rollout
    raw = (body["metadata"].get("annotations") or {}).get(SCALE_ANNOTATION, "")
    wanted = (
        rollout.replicas
        if rollout.replicas is not None
        else int(raw)
        if (raw.isascii() and raw.isdigit())
        else rollout.minReplicas
    )
    return min(max(wanted, rollout.minReplicas), rollout.maxReplicas)


async def _invalid(kube: Kube, body: dict[str, Any], error: ValidationError, now: str) -> Outcome:
    problems = "; ".join(str(p) for p in problems_of(error))
    old = body.get("status") or {}
    failed = next((x for x in old.get("conditions") or [] if x.get("type") == c.FAILED), None)
    if not (failed and failed.get("status") == "True" and failed.get("message") == problems):
        await event(kube, body, c.INVALID_SPEC, problems, warning=True)
    seen = st.Observed(
        generation=body["metadata"].get("generation", 0),
        pods=[],
        desired={"controller": 0, "trainer": 0, "rollout": 0},
        restarts={},
        failed=(c.INVALID_SPEC, problems),
    )
    return Outcome(status_patch=st.diff(old, st.compute(old, seen, now)), permanent_error=problems)


async def reconcile(
    kube: Kube,
    body: dict[str, Any],
    probe: ControllerProbe | None = None,
    clock: Callable[[], float] = time.time,
    settings: Settings = DEFAULTS,
    *,
    lost: WorkerLost | None = None,
    gone: Sequence[dict[str, Any]] = (),
) -> Outcome:
    """Bring the job's children toward the spec; return the status patch ({} when nothing changed).

    `gone`: pods deleted by someone else since the last reconcile (their last state, from the DELETED watch
    event): a fault like a failed pod, since no pod object is left to see it in.
    """
    now = _now()
    meta = body["metadata"]
    name, namespace = meta["name"], meta.get("namespace", "default")
    old = body.get("status") or {}
    try:
        job = RLJob.model_validate(
            {
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind"),
                "metadata": {"name": name, "namespace": namespace},
                "spec": body.get("spec"),
            }
        )
    except ValidationError as error:
        return await _invalid(kube, body, error, now)
    job.metadata.labels = meta.get("labels")
    outcome = Outcome()
    pods = await kube.list(namespace, "pods", builders.selector(name))
    restarts = {r["name"]: int(r.get("restarts", 0)) for r in old.get("roles") or []}
    disruptions = {r["name"]: int(r.get("disruptions", 0)) for r in old.get("roles") or []}
    terminal = {x["type"] for x in old.get("conditions") or [] if x.get("status") == "True"} & {c.COMPLETE, c.FAILED}
    failed: tuple[str, str] | None = None
    if c.FAILED in terminal:
        prior = next(x for x in old["conditions"] if x["type"] == c.FAILED)
        failed = (prior["reason"], prior["message"])
    desired = {
        "controller": 1,
        "trainer": job.spec.trainer.replicas,
        "rollout": desired_rollouts(job, body),
        "rolloutMin": job.spec.rollout.minReplicas,
    }
    if job.spec.rewardServer is not None:
        desired["reward"] = job.spec.rewardServer.replicas
    report = await probe(job, namespace) if probe is not None else None
    complete = c.COMPLETE in terminal or bool(report and report.get("complete"))
    backoff = _annotation(body, BACKOFF_ANNOTATION)
    failures = _annotation(body, FAILURES_ANNOTATION)
    consecutive: dict[str, int] = dict(failures.get("consecutive") or {})
    nodes: dict[str, int] = dict(failures.get("nodes") or {})
    resting: set[str] = set(failures.get("resting") or [])
    restarting = False
    annotations_before = (
        json.dumps(backoff, sort_keys=True),
        _failures(consecutive, nodes, resting),
    )

    async def release(pod: dict[str, Any]) -> None:
        """A rollout pod went while the job runs on: its leases go back to the queue now, not at expiry."""
        if lost is not None and role_of(pod)[0] == "rollout":
            await lost(job, namespace, pod["metadata"]["name"])

    async def delete_pods(victims: list[dict[str, Any]], why: str) -> None:
        for pod in victims:
            if await delete_pod(kube, pod, why):
                outcome.deleted.append(pod["metadata"]["name"])
            if why not in JOB_ENDING:  # the controller goes too: nothing to tell it
                await release(pod)

    if job.spec.suspend or complete or failed:
        await delete_pods(pods, "suspended" if job.spec.suspend else "finished")
        pods = []
    else:
        await _ensure_shared_children(kube, body, job, outcome, settings)
        ft = job.spec.faultTolerance
        exited = [p for p in pods if role_of(p)[0] == "rollout" and phase(p) == "Succeeded"]
        if exited:  # drained for a scale-down, before the pool size came down: a clean exit, not a fault
            pause = policy.backoff(1, ft.restartBackoffSeconds, ft.maxRestartBackoffSeconds)
            for pod in exited:
                backoff[pod["metadata"]["name"]] = clock() + pause
                resting.add(pod["metadata"]["name"])
            outcome.requeue(pause)
            await delete_pods(exited, "exited")
            pods = [p for p in pods if p not in exited]
        faults = [
            (p, "failed")
            for p in pods
            if phase(p) == "Failed" or (phase(p) == "Succeeded" and role_of(p)[0] == "controller")
        ]
        wanted_now = {("controller", 0), *(("trainer", i) for i in range(desired["trainer"]))}
        wanted_now |= {("rollout", i) for i in range(desired["rollout"])}
        wanted_now |= {("reward", i) for i in range(desired.get("reward", 0))}
        faults += [(p, "was deleted") for p in gone if role_of(p) in wanted_now and p not in pods]
        for pod, what in faults:
            role, _ = role_of(pod)
            pod_id = pod["metadata"]["name"]
            node = (pod.get("spec") or {}).get("nodeName")
            disrupted = disruption(pod)
            if node and what == "failed" and not disrupted:  # a deletion or preemption says nothing of the node
                nodes[node] = nodes.get(node, 0) + 1
            consecutive[pod_id] = consecutive.get(pod_id, 0) + (0 if disrupted else 1)
            code, detail = terminated(pod)
            decision = policy.on_failure(
                role,
                pod_id,
                sum(restarts.values()) - sum(disruptions.values()),
                consecutive[pod_id],
                ft.maxRestarts,
                ft.restartBackoffSeconds,
                ft.maxRestartBackoffSeconds,
                what,
                exit_code=code,
                detail=detail,
                disrupted=disrupted,
            )
            await event(kube, body, decision.reason, decision.message, warning=True)
            if decision.action == "fail":
                failed = (decision.reason, decision.message)
                await delete_pods(pods, "failed-job")
                pods = []
                break
            restarting = True
            restarts[role] = restarts.get(role, 0) + 1
            if disrupted:
                disruptions[role] = disruptions.get(role, 0) + 1
            victims = [pod] if pod in pods else []
            if decision.action in ("restart_gang", "restart_controller"):
                victims += [p for p in pods if role_of(p)[0] == "trainer" and p is not pod]
            for name_ in {pod_id, *(v["metadata"]["name"] for v in victims)}:
                backoff[name_] = clock() + decision.delay
            outcome.requeue(decision.delay)
            if not victims:  # deleted by someone else: nothing left to delete, but its leases must go back
                await release(pod)
            await delete_pods(victims, "restart")
            pods = [p for p in pods if p not in victims]
        if not failed and ft.startDeadlineSeconds is not None:
            late, wait = start_deadline(pods, ft.startDeadlineSeconds, clock())
            if late is not None:
                failed = (c.START_DEADLINE_EXCEEDED, late)
                await event(kube, body, c.START_DEADLINE_EXCEEDED, late, warning=True)
                await delete_pods(pods, "failed-job")
                pods = []
            elif wait is not None:
                outcome.requeue(wait)
        if not failed:
            wanted = [("controller", 0)] + [("trainer", i) for i in range(desired["trainer"])]
            present = {role_of(p) for p in pods}
            # The controller and the trainer ranks restart together however a pod went. Failures and the deletions
            # the watch reported are handled above; a deletion nobody saw (the operator was down) leaves only a
            # missing pod, but the remaining trainers must go too: a new controller restores its last checkpoint,
            # which running trainers are already past (they would wait forever for a batch it never closes), and a
            # rank cannot rejoin a running gang.
            missing = [builders.pod_name(name, r, i) for r, i in wanted if (r, i) not in present]
            stranded = [
                p
                for p in pods
                if role_of(p)[0] == "trainer"
                and not p["metadata"].get("deletionTimestamp")
                and (p.get("status") or {}).get("phase") != "Succeeded"
            ]
            if missing and stranded:
                delay = policy.backoff(1, ft.restartBackoffSeconds, ft.maxRestartBackoffSeconds)
                message = (
                    f"{', '.join(missing)} gone: restarting the trainer gang from its last checkpoint in {delay:g}s"
                )
                await event(kube, body, policy.GANG_RESTARTED, message, warning=True)
                for pod in stranded:
                    backoff[pod["metadata"]["name"]] = clock() + delay
                restarting = True
                outcome.requeue(delay)
                await delete_pods(stranded, "restart")
                pods = [p for p in pods if p not in stranded]
                present = {role_of(p) for p in pods}
            avoid = policy.avoided_nodes(nodes, ft.nodeFailureThreshold)
            cfg = builders.render_config(job)
            # reward servers first: the controller's rewards go there
            wanted = [("reward", i) for i in range(desired.get("reward", 0))] + wanted
            wanted += [("rollout", i) for i in range(desired["rollout"])]
            for role, index in wanted:
                pod_id = builders.pod_name(name, role, index)
                if (role, index) in present:
                    continue
                if backoff.get(pod_id, 0) > clock():
                    restarting = restarting or pod_id not in resting
                    outcome.requeue(backoff[pod_id] - clock())
                    continue
                backoff.pop(pod_id, None)
                resting.discard(pod_id)
                built = (
                    build_reward_pod(job, index, settings.worker_image, avoid)
                    if role == "reward"
                    else builders.build_pod(job, cfg, role, index, settings.worker_image, avoid)
                )
                manifest = adopt(built, body)
                await create_child(kube, namespace, "pods", manifest, outcome)
            extra = [p for p in pods if role_of(p)[0] == "rollout" and role_of(p)[1] >= desired["rollout"]]
            await delete_pods(extra, "scaled-down")
            pods = [p for p in pods if p not in extra]
            await _roll_rollouts(kube, body, job, pods, desired["rollout"], outcome, delete_pods)
            new_avoided = sorted(set(avoid) - set(old.get("avoidedNodes") or []))
            if new_avoided:
                await event(
                    kube,
                    body,
                    policy.NODE_AVOIDED,
                    f"new pods avoid {', '.join(new_avoided)}: at least {ft.nodeFailureThreshold} pod failures there "
                    "(faultTolerance.nodeFailureThreshold)",
                    warning=True,
                )
            for pod in pods:
                if st.pod_ready(pod):  # it ran: its next failure starts the backoff over
                    consecutive.pop(pod["metadata"]["name"], None)
    if (
        json.dumps(backoff, sort_keys=True),
        _failures(consecutive, nodes, resting & set(backoff)),
    ) != annotations_before:
        await kube.merge_patch(
            path(namespace, "rljobs", name),
            {
                "metadata": {
                    "annotations": {
                        BACKOFF_ANNOTATION: json.dumps(backoff, sort_keys=True),
                        FAILURES_ANNOTATION: _failures(consecutive, nodes, resting & set(backoff)),
                    }
                }
            },
        )
    seen = st.Observed(
        generation=meta.get("generation", 0),
        pods=pods,
        desired=desired,
        restarts=restarts,
        disruptions=disruptions,
        controller=report,
        suspended=job.spec.suspend,
        failed=failed,
        complete=complete,
        restarting=restarting,
        avoided_nodes=policy.avoided_nodes(nodes, job.spec.faultTolerance.nodeFailureThreshold),
        selector=builders.selector(name, "rollout"),
        start_time=now if outcome.created else None,
        completion_time=now if (complete or failed) else None,
        refused=outcome.refused,
    )
    new = st.compute(old, seen, now)
    await _announce_start_problem(kube, body, old, new)
    await announce_refusals(kube, body, old, outcome.refused)
    outcome.status_patch = st.diff(old, new)
    if failed and c.FAILED not in terminal:
        outcome.permanent_error = failed[1]
    return outcome


async def _roll_rollouts(
    kube: Kube,
    body: dict[str, Any],
    job: RLJob,
    pods: list[dict[str, Any]],
    desired: int,
    outcome: Outcome,
    delete_pods: Callable[[list[dict[str, Any]], str], Awaitable[None]],
) -> None:
    """A changed rollout template replaces rollout pods one at a time: only while every other one is ready, so the
    pool never drops by more than one; the replaced pod's leases go back to the controller's queue.
    """
    wanted = builders.template_hash(job, "rollout")
    rollouts = sorted((p for p in pods if role_of(p)[0] == "rollout"), key=lambda p: role_of(p)[1])
    stale = [
        p for p in rollouts if (p["metadata"].get("annotations") or {}).get(builders.ANNOTATION_SPEC_HASH) != wanted
    ]
    if not stale or outcome.created or len(rollouts) < desired or not all(st.pod_ready(p) for p in rollouts):
        return
    victim = stale[0]["metadata"]["name"]
    await delete_pods(stale[:1], "rolling-update")
    if victim in outcome.deleted:
        outcome.requeue(0)
        await event(
            kube,
            body,
            policy.ROLLOUT_UPDATED,
            f"{victim} replaced for the new rollout template ({len(stale) - 1} more to go)",
        )


async def _ensure_shared_children(
    kube: Kube, body: dict[str, Any], job: RLJob, outcome: Outcome, settings: Settings
) -> None:
    """ConfigMap (kept in sync with the spec), Secret (a random token, created once), Services, NetworkPolicy."""
    namespace = job.metadata.namespace or "default"
    cfg = builders.render_config(job)
    config_map = adopt(builders.build_config_map(job, cfg), body)
    existing = await kube.get(path(namespace, "configmaps", config_map["metadata"]["name"]))
    if existing is None:
        await create_child(kube, namespace, "configmaps", config_map, outcome)
    elif existing.get("data") != config_map["data"]:
        await kube.merge_patch(
            path(namespace, "configmaps", config_map["metadata"]["name"]), {"data": config_map["data"]}
        )
    secret_name = builders.secret_name(job.metadata.name)
    if await kube.get(path(namespace, "secrets", secret_name)) is None:
        secret = adopt(builders.build_secret(job, secrets.token_urlsafe(32)), body)
        await create_child(kube, namespace, "secrets", secret, outcome)
    reward = build_reward_service(job)
    for service in builders.build_services(job, cfg) + ([reward] if reward else []):
        if await kube.get(path(namespace, "services", service["metadata"]["name"])) is None:
            await create_child(kube, namespace, "services", adopt(service, body), outcome)
    if settings.network_policy:
        policy_name = builders.network_policy_name(job.metadata.name)
        if await kube.get(path(namespace, "networkpolicies", policy_name)) is None:
            manifest = builders.build_network_policy(job, cfg, settings.operator_namespace, settings.metrics_from)
            await create_child(kube, namespace, "networkpolicies", adopt(manifest, body), outcome)


async def _announce_start_problem(kube: Kube, body: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> None:
    """One Warning event when the Ready condition starts to name why a pod cannot start (ImagePullBackOff, ...)."""

    def ready(status: dict[str, Any]) -> tuple[str, str]:
        found: dict[str, Any] = next((x for x in status.get("conditions") or [] if x.get("type") == c.READY), {})
        return found.get("reason", ""), found.get("message", "")

    reason, message = ready(new)
    if reason in c.POD_START_REASONS and ready(old)[0] != reason:
        await event(kube, body, reason, message, warning=True)


async def reconcile_and_patch(
    kube: Kube,
    body: dict[str, Any],
    probe: ControllerProbe | None = None,
    clock: Callable[[], float] = time.time,
    settings: Settings = DEFAULTS,
    *,
    lost: WorkerLost | None = None,
    gone: Sequence[dict[str, Any]] = (),
) -> Outcome:
    """reconcile(), then one status patch through the status subresource, and only if something changed."""
    outcome = await reconcile(kube, body, probe, clock, settings, lost=lost, gone=gone)
    if outcome.status_patch:
        meta = body["metadata"]
        await kube.merge_patch(
            path(meta.get("namespace", "default"), "rljobs", meta["name"], "status"), {"status": outcome.status_patch}
        )
    return outcome
