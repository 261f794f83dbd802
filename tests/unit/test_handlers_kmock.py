"""What the kopf handlers delegate to, against kmock's emulator: scale-ups reach pods at once, deletions are faults."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import kopf
import pytest

from kuberl_operator import handlers
from kuberl_operator.kube import Kube, path
from kuberl_operator.reconcile import SCALE_ANNOTATION, reconcile_and_patch
from kuberl_operator.scaler import ScalerState
from support.apiserver import EmulatedApiServer
from support.kmock_jobs import body_of, deleted_pods, events_of, new_job, pods_of, set_phase


@pytest.fixture
def operator_api(api: tuple[EmulatedApiServer, Kube], monkeypatch: pytest.MonkeyPatch) -> Iterator[Kube]:
    """The handlers' API session is the emulator's; the job's controller answers nothing (no pod has an IP)."""
    monkeypatch.setitem(handlers._state, "kube", api[1])
    yield api[1]


async def test_a_scale_up_creates_pods_at_once_not_at_the_next_resync(
    operator_api: Kube, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = operator_api
    await reconcile_and_patch(kube, await new_job(kube, rollout={"minReplicas": 1, "maxReplicas": 4}))

    async def demand(job: Any, namespace: str) -> dict[str, Any]:
        return {"desiredRolloutReplicas": 3}

    monkeypatch.setattr(handlers, "demand", demand)
    await handlers.scale_step(await body_of(kube), ScalerState(), now=0.0)
    assert (await body_of(kube))["metadata"]["annotations"][SCALE_ANNOTATION] == "3"
    assert [p for p in await pods_of(kube) if "rollout" in p] == ["job-rollout-0", "job-rollout-1", "job-rollout-2"]
    writes = kube.writes
    await handlers.scale_step(await body_of(kube), ScalerState(), now=1.0)  # same demand: no decision, no writes
    assert kube.writes == writes


async def test_pod_deleted_by_someone_else_counts_as_a_restart(operator_api: Kube) -> None:
    kube = operator_api
    await reconcile_and_patch(kube, await new_job(kube, faultTolerance={"restartBackoffSeconds": 30}))
    for name in await pods_of(kube):
        await set_phase(kube, name, "Running")
    pod = await kube.get(path("default", "pods", "job-rollout-0"))
    assert pod is not None and await kube.delete("default", "pods", "job-rollout-0")
    await handlers.pod_changed(kopf.Body(cast(kopf.RawBody, pod)), "DELETED")
    body = await body_of(kube)
    assert {r["name"]: r["restarts"] for r in body["status"]["roles"]}["rollout"] == 1
    assert ("PodRecreated", "job-rollout-0 was deleted: recreating it in 30s") in await events_of(kube)
    assert "job-rollout-0" not in await pods_of(kube)  # after the backoff, not at once


async def test_pods_the_operator_deleted_are_not_faults(
    api: tuple[EmulatedApiServer, Kube], operator_api: Kube
) -> None:
    """A rolling update deletes a pod that is still wanted: signed, so its DELETED event is no fault."""
    kube = operator_api
    await reconcile_and_patch(kube, await new_job(kube))
    for name in await pods_of(kube):
        await set_phase(kube, name, "Running")
    template = {"metadata": {"labels": {"team": "rl"}}}
    await kube.merge_patch(path("default", "rljobs", "job"), {"spec": {"rollout": {"template": template}}})
    assert (await reconcile_and_patch(kube, await body_of(kube))).deleted == ["job-rollout-0"]
    gone = deleted_pods(api[0])["job-rollout-0"]  # as the watch delivers it to on_pod
    await handlers.pod_changed(kopf.Body(cast(kopf.RawBody, gone)), "DELETED")
    body = await body_of(kube)
    assert all(r["restarts"] == 0 for r in body["status"]["roles"])
    assert not [reason for reason, _ in await events_of(kube) if reason == "PodRecreated"]
    assert "job-rollout-0" in await pods_of(kube)  # replaced at once, with the new template
