"""Pod deletions at the request level (kmock's emulator): ours signed, anybody else's a fault; drained exits clean."""

from __future__ import annotations

from typing import Any

from kuberl_operator.children import DELETED_BY_ANNOTATION, deleted_by_someone_else
from kuberl_operator.kube import Kube, path
from kuberl_operator.reconcile import BACKOFF_ANNOTATION, reconcile_and_patch
from support.apiserver import EmulatedApiServer
from support.kmock_jobs import body_of, deleted_pods, events_of, new_job, pods_of, set_phase, set_pool


class Lost:
    """Records the controller's /v1/workers/lost calls reconcile makes."""

    def __init__(self) -> None:
        self.workers: list[str] = []

    async def __call__(self, job: Any, namespace: str, pod: str) -> None:
        self.workers.append(pod)


def restarts(body: dict[str, Any]) -> dict[str, int]:
    return {r["name"]: r["restarts"] for r in body["status"]["roles"]}


async def test_every_deletion_by_the_operator_is_signed_with_its_reason(api: tuple[EmulatedApiServer, Kube]) -> None:
    emulator, kube = api
    await reconcile_and_patch(kube, await new_job(kube, rollout={"minReplicas": 1, "maxReplicas": 3}))
    await set_pool(kube, 3)
    await reconcile_and_patch(kube, await body_of(kube))
    await set_pool(kube, 2)
    await reconcile_and_patch(kube, await body_of(kube))
    await set_phase(kube, "job-rollout-1", "Failed", ready=False)
    await reconcile_and_patch(kube, await body_of(kube))
    await kube.merge_patch(path("default", "rljobs", "job"), {"spec": {"suspend": True}})
    await reconcile_and_patch(kube, await body_of(kube))
    deleted = deleted_pods(emulator)
    signed = {name: pod["metadata"]["annotations"][DELETED_BY_ANNOTATION] for name, pod in deleted.items()}
    assert signed == {
        "job-rollout-2": "scaled-down",
        "job-rollout-1": "restart",
        "job-rollout-0": "suspended",
        "job-controller-0": "suspended",
        "job-trainer-0": "suspended",
    }
    assert not any(deleted_by_someone_else(pod) for pod in deleted.values())


async def test_a_pod_deleted_by_someone_else_is_a_fault_recreated_after_backoff(
    api: tuple[EmulatedApiServer, Kube],
) -> None:
    emulator, kube = api
    await reconcile_and_patch(kube, await new_job(kube, faultTolerance={"restartBackoffSeconds": 10}))
    for name in await pods_of(kube):
        await set_phase(kube, name, "Running")
    assert await kube.delete("default", "pods", "job-rollout-0")  # kubectl delete pod
    gone = deleted_pods(emulator)["job-rollout-0"]
    assert deleted_by_someone_else(gone)
    lost, now = Lost(), 1000.0
    outcome = await reconcile_and_patch(kube, await body_of(kube), clock=lambda: now, lost=lost, gone=[gone])
    assert "job-rollout-0" not in outcome.created and lost.workers == ["job-rollout-0"]
    body = await body_of(kube)
    assert restarts(body)["rollout"] == 1 and "job-rollout-0" in body["metadata"]["annotations"][BACKOFF_ANNOTATION]
    assert ("PodRecreated", "job-rollout-0 was deleted: recreating it in 10s") in await events_of(kube)
    later = await reconcile_and_patch(kube, await body_of(kube), clock=lambda: now + 11, lost=lost)
    assert later.created == ["job-rollout-0"] and restarts(await body_of(kube))["rollout"] == 1  # counted once


async def test_a_deleted_pod_that_is_no_longer_wanted_is_no_fault(api: tuple[EmulatedApiServer, Kube]) -> None:
    emulator, kube = api
    await reconcile_and_patch(kube, await new_job(kube, rollout={"minReplicas": 1, "maxReplicas": 3}))
    await set_pool(kube, 2)
    await reconcile_and_patch(kube, await body_of(kube))
    await set_pool(kube, 1)
    assert await kube.delete("default", "pods", "job-rollout-1")  # somebody was quicker than the scale-down
    outcome = await reconcile_and_patch(kube, await body_of(kube), gone=[deleted_pods(emulator)["job-rollout-1"]])
    assert outcome.created == [] and restarts(await body_of(kube))["rollout"] == 0
    assert not [reason for reason, _ in await events_of(kube) if reason == "PodRecreated"]


async def test_a_deleted_trainer_restarts_the_gang_once(api: tuple[EmulatedApiServer, Kube]) -> None:
    emulator, kube = api
    spec = {"trainer": {"replicas": 2}, "faultTolerance": {"restartBackoffSeconds": 0}}
    await reconcile_and_patch(kube, await new_job(kube, **spec))
    for name in await pods_of(kube):
        await set_phase(kube, name, "Running")
    assert await kube.delete("default", "pods", "job-trainer-0")
    outcome = await reconcile_and_patch(kube, await body_of(kube), gone=[deleted_pods(emulator)["job-trainer-0"]])
    assert outcome.deleted == ["job-trainer-1"] and sorted(outcome.created) == ["job-trainer-0", "job-trainer-1"]
    reasons = [reason for reason, _ in await events_of(kube)]
    assert reasons.count("GangRestarted") == 1 and restarts(await body_of(kube))["trainer"] == 1


async def test_a_drained_rollout_that_exited_is_no_failure(api: tuple[EmulatedApiServer, Kube]) -> None:
    """A pod drained for a scale-down may exit before the pool size comes down: not a restart, not a warning; it
    comes back only if it is still wanted after a backoff (the scaler lowers the size meanwhile)."""
    _, kube = api
    spec = {"rollout": {"minReplicas": 1, "maxReplicas": 2}, "faultTolerance": {"restartBackoffSeconds": 5}}
    await reconcile_and_patch(kube, await new_job(kube, **spec))
    await set_pool(kube, 2)
    await reconcile_and_patch(kube, await body_of(kube))
    await set_phase(kube, "job-rollout-1", "Succeeded", ready=False)
    lost, now = Lost(), 1000.0
    outcome = await reconcile_and_patch(kube, await body_of(kube), clock=lambda: now, lost=lost)
    assert outcome.deleted == ["job-rollout-1"] and outcome.created == [] and lost.workers == ["job-rollout-1"]
    body = await body_of(kube)
    assert restarts(body)["rollout"] == 0 and not [e for e in await events_of(kube) if e[0] == "PodRecreated"]
    ready = next(x for x in body["status"]["conditions"] if x["type"] == "Ready")
    assert ready["reason"] != "Restarting"
    await set_pool(kube, 1)
    assert (await reconcile_and_patch(kube, await body_of(kube), clock=lambda: now + 6)).created == []


async def test_leases_of_a_failed_or_replaced_rollout_go_back_at_once(api: tuple[EmulatedApiServer, Kube]) -> None:
    _, kube = api
    await reconcile_and_patch(kube, await new_job(kube, faultTolerance={"restartBackoffSeconds": 0}))
    for name in await pods_of(kube):
        await set_phase(kube, name, "Running")
    lost = Lost()
    await set_phase(kube, "job-rollout-0", "Failed", ready=False)
    await reconcile_and_patch(kube, await body_of(kube), lost=lost)
    assert lost.workers == ["job-rollout-0"]
    await set_phase(kube, "job-rollout-0", "Running")
    template = {"metadata": {"labels": {"team": "rl"}}}
    await kube.merge_patch(path("default", "rljobs", "job"), {"spec": {"rollout": {"template": template}}})
    assert (await reconcile_and_patch(kube, await body_of(kube), lost=lost)).deleted == ["job-rollout-0"]
    assert lost.workers == ["job-rollout-0", "job-rollout-0"]  # the rolling update's victim held leases too
