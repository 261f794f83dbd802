"""A child the API server refuses: recorded with the API server's message, the other children still made, the
status and one Warning event say which child and why (the real API server's refusals: tests/e2e/test_real_apiserver)."""

from __future__ import annotations

import json
from typing import Any

from kuberl_operator.kube import ApiError, Kube
from kuberl_operator.reconcile import reconcile_and_patch
from support.apiserver import EmulatedApiServer
from support.kmock_jobs import body_of, events_of, new_job, pods_of

FORBIDDEN = {
    "kind": "Status",
    "status": "Failure",
    "message": 'pods "job-rollout-0" is forbidden: no PriorityClass with name preemptible was found',
    "reason": "Forbidden",
    "code": 403,
}


class RefusingKube(Kube):
    """The client, but the API server answers 403 to creating `job-rollout-0` (as the Priority admission does)."""

    async def create(self, namespace: str, plural: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if body["metadata"]["name"] == "job-rollout-0":
            raise ApiError(403, "POST", f"/api/v1/namespaces/{namespace}/pods", json.dumps(FORBIDDEN))
        return await super().create(namespace, plural, body)


def _condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in body["status"]["conditions"] if c["type"] == kind)


async def test_refused_pod_is_a_condition_and_one_warning_event(api: tuple[EmulatedApiServer, Kube]) -> None:
    _, plain = api
    kube = RefusingKube(plain.server, plain.session)
    await new_job(kube)
    outcome = await reconcile_and_patch(kube, await body_of(kube))
    assert outcome.refused == [f"Pod job-rollout-0: {FORBIDDEN['message']}"]
    assert await pods_of(kube) == ["job-controller-0", "job-trainer-0"]  # the others are still made
    body = await body_of(kube)
    degraded, ready = _condition(body, "Degraded"), _condition(body, "Ready")
    assert (degraded["status"], degraded["reason"]) == ("True", "CreateRefused")
    assert "no PriorityClass with name preemptible" in degraded["message"]
    assert (ready["reason"], ready["message"]) == ("CreateRefused", degraded["message"])
    for _ in range(2):  # retried on every resync, announced once
        await reconcile_and_patch(kube, await body_of(kube))
    assert [r for r, _ in await events_of(kube)].count("CreateRefused") == 1
    # the cause goes (the PriorityClass is created): the pod is made and the condition clears
    outcome = await reconcile_and_patch(plain, await body_of(plain))
    assert outcome.created == ["job-rollout-0"] and outcome.refused == []
    assert _condition(await body_of(plain), "Degraded")["reason"] != "CreateRefused"


async def test_a_server_error_is_not_a_refusal(api: tuple[EmulatedApiServer, Kube]) -> None:
    """5xx, 409 and 429 are the API server's state, not the request's fault: they propagate (kopf retries)."""
    for status in (500, 409, 429, 404):
        assert not ApiError(status, "POST", "/x", "{}").refused
    for status in (400, 403, 422):
        assert ApiError(status, "POST", "/x", json.dumps({"message": "why"})).refused
    assert ApiError(422, "POST", "/x", json.dumps({"message": "why"})).message == "why"
    assert ApiError(502, "POST", "/x", "<html>bad gateway</html>").message == "<html>bad gateway</html>"
