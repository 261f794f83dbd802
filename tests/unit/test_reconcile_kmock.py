"""reconcile() at the request level against kmock's Kubernetes emulator (kopf's own testing library)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kuberl_operator.kube import Kube, path
from kuberl_operator.reconcile import BACKOFF_ANNOTATION, reconcile_and_patch
from kuberl_operator.settings import Settings
from support.apiserver import EmulatedApiServer, UncheckedApiServer
from support.kmock_jobs import body_of as _body
from support.kmock_jobs import events_of as _events
from support.kmock_jobs import new_job as _job
from support.kmock_jobs import pods_of as _pods
from support.kmock_jobs import set_phase as _set_phase


async def test_create_builds_every_child_with_owner_references(api: tuple[EmulatedApiServer, Kube]) -> None:
    _, kube = api
    body = await _job(kube, trainer={"replicas": 2}, rollout={"minReplicas": 2, "maxReplicas": 3})
    outcome = await reconcile_and_patch(kube, body)
    assert sorted(outcome.created) == sorted(
        [
            "job-config",
            "job-token",
            "job-controller",
            "job-trainer",
            "job-controller-0",
            "job-trainer-0",
            "job-trainer-1",
            "job-rollout-0",
            "job-rollout-1",
        ]
    )
    pods = await kube.list("default", "pods", "kuberl.io/job=job")
    assert all(p["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"] for p in pods)
    status = (await _body(kube))["status"]
    assert status["trainers"] == "0/2" and status["rollouts"] == "0/2"
    ready = next(x for x in status["conditions"] if x["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Pending")


async def test_second_reconcile_without_changes_writes_nothing(api: tuple[EmulatedApiServer, Kube]) -> None:
    _, kube = api
    await reconcile_and_patch(kube, await _job(kube))
    for name in await _pods(kube):
        await _set_phase(kube, name, "Running")
    await reconcile_and_patch(kube, await _body(kube))  # observes readiness: one status patch
    status = (await _body(kube))["status"]
    assert next(x for x in status["conditions"] if x["type"] == "Ready")["reason"] == "Running"
    writes_before = kube.writes
    outcome = await reconcile_and_patch(kube, await _body(kube))
    assert outcome.status_patch == {} and outcome.created == [] and kube.writes == writes_before


async def test_failed_rollout_pod_recreated_after_backoff(api: tuple[EmulatedApiServer, Kube]) -> None:
    _, kube = api
    await reconcile_and_patch(kube, await _job(kube, faultTolerance={"restartBackoffSeconds": 10}))
    await _set_phase(kube, "job-rollout-0", "Failed", ready=False)
    now = [1000.0]
    outcome = await reconcile_and_patch(kube, await _body(kube), clock=lambda: now[0])
    assert outcome.deleted == ["job-rollout-0"] and "job-rollout-0" not in outcome.created
    body = await _body(kube)
    assert "job-rollout-0" in body["metadata"]["annotations"][BACKOFF_ANNOTATION]
    assert {r["name"]: r["restarts"] for r in body["status"]["roles"]}["rollout"] == 1
    assert "job-rollout-0" not in (await reconcile_and_patch(kube, body, clock=lambda: now[0] + 5)).created
    now[0] += 11
    assert "job-rollout-0" in (await reconcile_and_patch(kube, await _body(kube), clock=lambda: now[0])).created


async def test_trainer_failure_restarts_the_gang(api: tuple[EmulatedApiServer, Kube]) -> None:
    _, kube = api
    await reconcile_and_patch(
        kube, await _job(kube, trainer={"replicas": 3}, faultTolerance={"restartBackoffSeconds": 0})
    )
    await _set_phase(kube, "job-trainer-1", "Failed", ready=False)
    outcome = await reconcile_and_patch(kube, await _body(kube))
    gang = ["job-trainer-0", "job-trainer-1", "job-trainer-2"]
    assert sorted(outcome.deleted) == gang  # every rank goes, not only the failed one
    assert sorted(outcome.created) == gang  # and comes back at once (backoff 0), from the checkpoint
    body = await _body(kube)
    assert {r["name"]: r["restarts"] for r in body["status"]["roles"]}["trainer"] == 1


@pytest.mark.parametrize("gone", ["job-controller-0", "job-trainer-1"])
async def test_a_deleted_controller_or_rank_restarts_the_trainer_gang(
    api: tuple[EmulatedApiServer, Kube], gone: str
) -> None:
    """A deletion leaves no Failed pod; the running ranks must still go (found by the e2e chaos test: a controller
    recreated from its checkpoint while the trainer ran on left the trainer waiting for a batch of a later step)."""
    _, kube = api
    await reconcile_and_patch(
        kube, await _job(kube, trainer={"replicas": 2}, faultTolerance={"restartBackoffSeconds": 0})
    )
    for name in await _pods(kube):
        await _set_phase(kube, name, "Running")
    assert await kube.delete("default", "pods", gone)
    outcome = await reconcile_and_patch(kube, await _body(kube))
    gang = ["job-trainer-0", "job-trainer-1"]
    assert sorted(outcome.deleted) == sorted(set(gang) - {gone})
    assert sorted(p for p in outcome.created if p.startswith("job-") and p[-1].isdigit()) == sorted({gone, *gang})
    assert any(reason == "GangRestarted" and gone in message for reason, message in await _events(kube))
    assert (await reconcile_and_patch(kube, await _body(kube))).deleted == []  # once, not on every reconcile


async def test_restart_limit_fails_the_job_and_cleans_up(api: tuple[EmulatedApiServer, Kube]) -> None:
    _, kube = api
    await reconcile_and_patch(kube, await _job(kube, faultTolerance={"maxRestarts": 0}))
    await _set_phase(kube, "job-controller-0", "Failed", ready=False)
    outcome = await reconcile_and_patch(kube, await _body(kube))
    assert outcome.permanent_error is not None and "maxRestarts=0" in outcome.permanent_error
    assert await _pods(kube) == []
    failed = next(x for x in (await _body(kube))["status"]["conditions"] if x["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "RestartLimitExceeded")


@pytest.mark.parametrize("api", [UncheckedApiServer], indirect=True)
async def test_invalid_spec_gets_condition_and_warning_event_and_no_pods(api: tuple[EmulatedApiServer, Kube]) -> None:
    _, kube = api
    body = await _job(kube, rollout={"minReplicas": 4, "maxReplicas": 2})  # a cluster that skipped CEL
    outcome = await reconcile_and_patch(kube, body)
    assert outcome.permanent_error == "spec.rollout.minReplicas: must be <= maxReplicas"
    assert await _pods(kube) == []
    failed = next(x for x in (await _body(kube))["status"]["conditions"] if x["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and "spec.rollout.minReplicas" in failed["message"]
    events = await kube.list("default", "events", "")
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "InvalidSpec")]
    assert "spec.rollout.minReplicas" in events[0]["message"]


async def test_privileged_template_is_refused_by_the_operator(api: tuple[EmulatedApiServer, Kube]) -> None:
    """The CRD keeps templates free-form; the operator refuses privileges: Failed/InvalidSpec naming the field."""
    _, kube = api
    template = {"spec": {"containers": [{"name": "rollout", "securityContext": {"privileged": True}}]}}
    outcome = await reconcile_and_patch(kube, await _job(kube, rollout={"template": template}))
    field = "spec.rollout.template.spec.containers[0].securityContext.privileged"
    assert outcome.permanent_error == f"{field}: privileged containers are refused"
    assert await _pods(kube) == []
    failed = next(x for x in (await _body(kube))["status"]["conditions"] if x["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and field in failed["message"]


async def test_suspend_deletes_pods_and_keeps_status(api: tuple[EmulatedApiServer, Kube]) -> None:
    _, kube = api
    await reconcile_and_patch(kube, await _job(kube))
    await kube.merge_patch(path("default", "rljobs", "job"), {"spec": {"suspend": True}})
    outcome = await reconcile_and_patch(kube, await _body(kube))
    assert len(outcome.deleted) == 3 and await _pods(kube) == []
    suspended = next(x for x in (await _body(kube))["status"]["conditions"] if x["type"] == "Suspended")
    assert suspended["status"] == "True"
    await kube.merge_patch(path("default", "rljobs", "job"), {"spec": {"suspend": False}})
    assert len((await reconcile_and_patch(kube, await _body(kube))).created) == 3


async def test_completion_reported_by_the_controller(api: tuple[EmulatedApiServer, Kube]) -> None:
    _, kube = api
    await reconcile_and_patch(kube, await _job(kube))

    async def probe(job: Any, namespace: str) -> dict[str, Any]:
        return {
            "complete": True,
            "step": 100,
            "policyVersion": 100,
            "budgetFill": 0.0,
            "tokensPerSecond": 12.5,
            "lastCheckpoint": "/var/kuberl/checkpoints/controller-00000100.json",
        }

    await reconcile_and_patch(kube, await _body(kube), probe=probe)
    status = (await _body(kube))["status"]
    assert await _pods(kube) == [] and status["step"] == 100 and "completionTime" in status
    complete = next(x for x in status["conditions"] if x["type"] == "Complete")
    assert complete["status"] == "True"


async def test_rollout_template_change_replaces_rollout_pods_one_at_a_time(
    api: tuple[EmulatedApiServer, Kube],
) -> None:
    _, kube = api
    await reconcile_and_patch(kube, await _job(kube, rollout={"minReplicas": 2, "maxReplicas": 2}))
    for name in await _pods(kube):
        await _set_phase(kube, name, "Running")
    template = {"metadata": {"labels": {"team": "rl"}}}
    await kube.merge_patch(path("default", "rljobs", "job"), {"spec": {"rollout": {"template": template}}})
    first = await reconcile_and_patch(kube, await _body(kube))
    assert first.deleted == ["job-rollout-0"]  # one pod only; trainer and controller untouched
    assert ("RolloutUpdated", "job-rollout-0 replaced for the new rollout template (1 more to go)") in await _events(
        kube
    )
    second = await reconcile_and_patch(kube, await _body(kube))
    assert second.created == ["job-rollout-0"] and second.deleted == []  # recreated; the other waits for it
    assert (await reconcile_and_patch(kube, await _body(kube))).deleted == []  # still not ready
    await _set_phase(kube, "job-rollout-0", "Running")
    assert (await reconcile_and_patch(kube, await _body(kube))).deleted == ["job-rollout-1"]
    pod = await kube.get(path("default", "pods", "job-rollout-0"))
    assert pod is not None and pod["metadata"]["labels"]["team"] == "rl"


async def test_failures_on_a_node_make_new_pods_avoid_it(api: tuple[EmulatedApiServer, Kube]) -> None:
    _, kube = api
    spec = {"nodeFailureThreshold": 2, "restartBackoffSeconds": 0, "maxRestarts": 10}
    await reconcile_and_patch(kube, await _job(kube, faultTolerance=spec))
    for _ in range(2):
        await _set_phase(kube, "job-rollout-0", "Failed", ready=False, node="bad-node")
        await reconcile_and_patch(kube, await _body(kube))
    body = await _body(kube)
    assert body["status"]["avoidedNodes"] == ["bad-node"]
    reasons = [reason for reason, _ in await _events(kube)]
    assert reasons.count("NodeAvoided") == 1 and reasons.count("PodRecreated") == 2
    pod = await kube.get(path("default", "pods", "job-rollout-0"))
    assert pod is not None
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][-1]["values"] == ["bad-node"]
    await reconcile_and_patch(kube, await _body(kube))
    assert [reason for reason, _ in await _events(kube)].count("NodeAvoided") == 1  # said once


async def test_operator_settings_give_pods_the_worker_image_and_the_job_a_network_policy(
    api: tuple[EmulatedApiServer, Kube],
) -> None:
    _, kube = api
    settings = Settings(
        worker_image="registry.example/kuberl/worker-cpu:1.2.3",
        network_policy=True,
        operator_namespace="kuberl-system",
        metrics_from=[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
    )
    outcome = await reconcile_and_patch(kube, await _job(kube), settings=settings)
    assert "job-pods" in outcome.created
    pod = await kube.get(path("default", "pods", "job-controller-0"))
    assert pod is not None and pod["spec"]["containers"][0]["image"] == settings.worker_image
    policy = await kube.get("/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/job-pods")
    assert policy is not None and policy["metadata"]["ownerReferences"][0]["kind"] == "RLJob"
    ingress = policy["spec"]["ingress"]
    assert ingress[0]["from"] == [{"podSelector": {"matchLabels": {"kuberl.io/job": "job"}}}]
    assert ingress[1]["ports"] == [{"protocol": "TCP", "port": 8000}]  # the operator: controller port only
    assert ingress[1]["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kuberl-system"}
    assert ingress[2]["from"] == settings.metrics_from
    writes = kube.writes
    await reconcile_and_patch(kube, await _body(kube), settings=settings)
    assert kube.writes == writes  # the policy exists: not written again


async def test_without_network_policy_setting_no_policy_is_requested(api: tuple[EmulatedApiServer, Kube]) -> None:
    _, kube = api
    await reconcile_and_patch(kube, await _job(kube))
    assert await kube.get("/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/job-pods") is None


async def test_disruptions_are_recreated_without_counting_against_max_restarts(
    api: tuple[EmulatedApiServer, Kube],
) -> None:
    """#15 kind 7: with maxRestarts 3, the fourth preemption of a rollout pod failed the job though no work was
    lost. Right: a pod the cluster took away (DisruptionTarget, Evicted) is recreated whatever the count, the
    restart is still shown, and its node is not blamed; a plain failure still counts."""
    _, kube = api
    await reconcile_and_patch(
        kube, await _job(kube, faultTolerance={"maxRestarts": 1, "restartBackoffSeconds": 0, "nodeFailureThreshold": 1})
    )
    disruptions = [
        {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]},
        {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]},
        {"reason": "Evicted", "message": "The node was low on resource: memory."},
        {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}]},
        {"reason": "Terminated", "message": "Pod was terminated in response to imminent node shutdown."},
    ]
    for status in disruptions:
        await _set_phase(kube, "job-rollout-0", "Failed", ready=False)
        await kube.merge_patch(path("default", "pods", "job-rollout-0", "status"), {"status": status})
        outcome = await reconcile_and_patch(kube, await _body(kube))
        assert outcome.permanent_error is None
        assert "job-rollout-0" in outcome.created
    body = await _body(kube)
    roles = {r["name"]: r for r in body["status"]["roles"]}
    assert (roles["rollout"]["restarts"], roles["rollout"]["disruptions"]) == (5, 5)
    assert body["status"]["avoidedNodes"] == []
    messages = [m for reason, m in await _events(kube) if reason == "PodRecreated"]
    assert len(messages) == 5 and "PreemptionByScheduler; not counted against faultTolerance.maxRestarts" in messages[0]
    await _set_phase(kube, "job-rollout-0", "Failed", ready=False)  # a real failure: counted (1 of 1)
    assert (await reconcile_and_patch(kube, await _body(kube))).permanent_error is None
    await _set_phase(kube, "job-rollout-0", "Failed", ready=False)
    await reconcile_and_patch(kube, await _body(kube))
    failed = next(x for x in (await _body(kube))["status"]["conditions"] if x["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "RestartLimitExceeded")


async def test_a_pod_that_cannot_start_says_why_and_fails_at_the_start_deadline(
    api: tuple[EmulatedApiServer, Kube],
) -> None:
    """#15 kind 2: every pod Pending in ImagePullBackOff read only "waiting for pods" for 168 hours. Right: the
    waiting reason in the Ready condition and one Warning event; with startDeadlineSeconds, Failed with it."""
    _, kube = api
    now = [time.time()]
    await reconcile_and_patch(kube, await _job(kube, faultTolerance={"startDeadlineSeconds": 600}))
    waiting = {
        "phase": "Pending",
        "containerStatuses": [
            {
                "name": "rollout",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "nope:1"'}},
            }
        ],
    }
    await kube.merge_patch(path("default", "pods", "job-rollout-0", "status"), {"status": waiting})
    unschedulable = {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes available"}
        ],
    }
    outcome = await reconcile_and_patch(kube, await _body(kube), clock=lambda: now[0])
    # creationTimestamp has whole seconds and the reconcile runs a moment later: a few seconds of slack, not one
    assert outcome.requeue_after is not None and 500 < outcome.requeue_after <= 605
    ready = next(x for x in (await _body(kube))["status"]["conditions"] if x["type"] == "Ready")
    assert (ready["reason"], ready["message"]) == (
        "ImagePullBackOff",
        'job-rollout-0: container rollout: ImagePullBackOff: Back-off pulling image "nope:1"',
    )
    await reconcile_and_patch(kube, await _body(kube), clock=lambda: now[0])  # the event is not repeated
    assert [r for r, _ in await _events(kube)].count("ImagePullBackOff") == 1
    await kube.merge_patch(path("default", "pods", "job-trainer-0", "status"), {"status": unschedulable})
    now[0] += 601
    outcome = await reconcile_and_patch(kube, await _body(kube), clock=lambda: now[0])
    failed = next(x for x in (await _body(kube))["status"]["conditions"] if x["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "StartDeadlineExceeded")
    assert failed["message"].startswith("not started within faultTolerance.startDeadlineSeconds=600s: job-")
    assert "ImagePullBackOff" in failed["message"] or "Unschedulable" in failed["message"]
    assert await _pods(kube) == []
