"""Pins each behaviour the emulated API server adds to kmock, with what a real kube-apiserver does."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from kuberl_operator.kube import ApiError, Kube, path
from support.apiserver import matches
from support.specs import minimal_job


async def _raw_create(kube: Kube, plural: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with kube.session.post(f"{kube.server}{path('default', plural)}", json=body) as response:
        return response.status, await response.json()


async def test_create_answers_201_with_uid_resource_version_generation(kube: Kube) -> None:
    """Real API server: POST returns 201 Created and sets uid, resourceVersion, generation, creationTimestamp."""
    status, obj = await _raw_create(
        kube, "configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {}}
    )
    meta = obj["metadata"]
    assert status == 201 and meta["uid"] and meta["resourceVersion"] and meta["generation"] == 1
    assert meta["creationTimestamp"].endswith("Z")
    again, _ = await _raw_create(
        kube, "configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}
    )
    assert again == 409  # AlreadyExists


async def test_stale_resource_version_conflicts(kube: Kube) -> None:
    """Real API server: an update whose metadata.resourceVersion is not the current one gets 409 Conflict."""
    await kube.create("default", "configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}})
    current = await kube.get(path("default", "configmaps", "a"))
    assert current is not None
    rv = current["metadata"]["resourceVersion"]
    await kube.merge_patch(
        path("default", "configmaps", "a"), {"metadata": {"resourceVersion": rv}, "data": {"x": "1"}}
    )
    with pytest.raises(ApiError) as stale:
        await kube.merge_patch(
            path("default", "configmaps", "a"), {"metadata": {"resourceVersion": rv}, "data": {"x": "2"}}
        )
    assert stale.value.status == 409


async def test_generation_moves_with_spec_only_and_status_is_isolated(kube: Kube) -> None:
    """Real API server with a status subresource: spec changes bump metadata.generation; status sent to the main
    resource is ignored; the /status subresource changes only status."""
    await kube.create("default", "rljobs", minimal_job())
    url = path("default", "rljobs", "job")
    await kube.merge_patch(url, {"metadata": {"labels": {"a": "b"}}, "status": {"step": 9}})
    job = await kube.get(url)
    assert job is not None and job["metadata"]["generation"] == 1 and "status" not in job
    await kube.merge_patch(url, {"spec": {"suspend": True}})
    await kube.merge_patch(url + "/status", {"status": {"step": 3}, "spec": {"suspend": False}})
    job = await kube.get(url)
    assert job is not None
    assert job["metadata"]["generation"] == 2 and job["spec"]["suspend"] is True and job["status"] == {"step": 3}


async def test_rljob_admission_defaults_and_rejects(kube: Kube) -> None:
    """Real API server with the CRD: schema defaults filled in, CEL and OpenAPI violations answered with 422 and
    the field, transition rules checked on update."""
    created = await kube.create("default", "rljobs", minimal_job(trainer={"replicas": 2}))
    assert created is not None and created["spec"]["c3po"]["tokenBudget"] == 4096
    assert created["spec"]["algorithm"]["icepop"] == {"enabled": True, "alpha": 0.5, "beta": 5.0}
    bad = minimal_job(rollout={"minReplicas": 3, "maxReplicas": 1})
    bad["metadata"]["name"] = "bad"
    with pytest.raises(ApiError) as invalid:
        await kube.create("default", "rljobs", bad)
    assert invalid.value.status == 422 and "spec.rollout.minReplicas: must be <= maxReplicas" in str(invalid.value)
    with pytest.raises(ApiError) as immutable:
        await kube.merge_patch(path("default", "rljobs", "job"), {"spec": {"trainer": {"replicas": 3}}})
    assert immutable.value.status == 422 and "is immutable" in str(immutable.value)


async def test_label_selectors(kube: Kube) -> None:
    """Real API server: ?labelSelector filters lists (equality and existence requirements)."""
    for name, labels in (("a", {"role": "x", "job": "j"}), ("b", {"role": "y", "job": "j"}), ("c", {})):
        await kube.create(
            "default",
            "pods",
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": {}},
        )
    names = lambda items: sorted(i["metadata"]["name"] for i in items)  # noqa: E731
    assert names(await kube.list("default", "pods", "job=j")) == ["a", "b"]
    assert names(await kube.list("default", "pods", "job=j,role!=x")) == ["b"]
    assert names(await kube.list("default", "pods", "!job")) == ["c"]
    assert matches({"a": "1"}, "a") and not matches({}, "a") and matches({"a": "1"}, "a==1")


async def test_owner_references_are_garbage_collected(kube: Kube) -> None:
    """Real API server (garbage collector, background propagation): deleting an owner deletes its dependents,
    transitively."""
    job = await kube.create("default", "rljobs", minimal_job())
    assert job is not None
    owner = {"apiVersion": "kuberl.io/v1alpha1", "kind": "RLJob", "name": "job", "uid": job["metadata"]["uid"]}
    pod = await kube.create(
        "default",
        "pods",
        {"apiVersion": "v1", "kind": "Pod", "spec": {}, "metadata": {"name": "p", "ownerReferences": [owner]}},
    )
    assert pod is not None
    await kube.create(
        "default",
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "grandchild",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": pod["metadata"]["uid"]}],
            },
        },
    )
    await kube.create(
        "default", "configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unrelated"}}
    )
    await kube.delete("default", "rljobs", "job")
    assert await kube.get(path("default", "pods", "p")) is None
    assert await kube.get(path("default", "configmaps", "grandchild")) is None
    assert await kube.get(path("default", "configmaps", "unrelated")) is not None


async def test_finalizers_hold_deletion(kube: Kube) -> None:
    """Real API server: deleting an object with finalizers only sets deletionTimestamp; it goes once the last
    finalizer is removed (kopf's kuberl.io/finalizer relies on this)."""
    doc = minimal_job()
    doc["metadata"]["finalizers"] = ["kuberl.io/finalizer"]
    await kube.create("default", "rljobs", doc)
    await kube.delete("default", "rljobs", "job")
    held = await kube.get(path("default", "rljobs", "job"))
    assert held is not None and held["metadata"]["deletionTimestamp"]
    await kube.merge_patch(path("default", "rljobs", "job"), {"metadata": {"finalizers": []}})
    assert await kube.get(path("default", "rljobs", "job")) is None


async def _watch(kube: Kube, plural: str, since: str, count: int) -> list[tuple[str, str, int]]:
    """The first `count` events of a watch from resourceVersion `since`: (type, name, resourceVersion)."""
    events = []
    params = {"watch": "true", "resourceVersion": since}
    async with kube.session.get(f"{kube.server}{path('default', plural)}", params=params) as response:
        async with asyncio.timeout(5):
            async for line in response.content:
                if line.strip():
                    event = json.loads(line)
                    meta = event["object"]["metadata"]
                    events.append((event["type"], meta["name"], int(meta["resourceVersion"])))
                    if len(events) == count:
                        break
    return events


def _cm(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {}}


async def test_watch_from_a_resource_version_replays_every_later_event(kube: Kube) -> None:
    """Real API server: a list answers with the store's resourceVersion; a watch from it delivers every change
    made after the list, in order, deletions included with a newer resourceVersion (what kopf's list+watch needs
    to lose nothing)."""
    await kube.create("default", "configmaps", _cm("a"))
    listed = await kube.call("GET", path("default", "configmaps"))
    since = listed["metadata"]["resourceVersion"]
    await kube.create("default", "configmaps", _cm("b"))
    await kube.merge_patch(path("default", "configmaps", "a"), {"data": {"x": "1"}})
    await kube.delete("default", "configmaps", "b")
    replayed = await _watch(kube, "configmaps", since, 3)
    assert [(t, n) for t, n, _ in replayed] == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    versions = [v for _, _, v in replayed]
    assert versions == sorted(versions) and versions[0] > int(since)
    assert await _watch(kube, "configmaps", str(versions[1]), 1) == [replayed[2]]


async def test_json_patch_test_operation_fails_with_422(kube: Kube) -> None:
    """Real API server: a JSON patch whose `test` fails is rejected whole with 422 (kopf guards its finalizer
    patches with a test on metadata.resourceVersion); a passing one applies add/replace/remove."""
    created = await kube.create("default", "configmaps", {**_cm("a"), "data": {"k": "v", "gone": "x"}})
    assert created is not None
    rv = created["metadata"]["resourceVersion"]
    url = path("default", "configmaps", "a")

    async def json_patch(ops: list[dict[str, Any]]) -> Any:
        return await kube.call("PATCH", url, ops, content_type="application/json-patch+json")

    with pytest.raises(ApiError) as stale:
        await json_patch(
            [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"}, {"op": "remove", "path": "/data/k"}]
        )
    assert stale.value.status == 422
    await json_patch(
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "add", "path": "/metadata/finalizers", "value": ["kuberl.io/finalizer"]},
            {"op": "replace", "path": "/data/k", "value": "w"},
            {"op": "remove", "path": "/data/gone"},
        ]
    )
    patched = await kube.get(url)
    assert patched is not None and patched["data"] == {"k": "w"}
    assert patched["metadata"]["finalizers"] == ["kuberl.io/finalizer"]


async def test_secret_string_data_is_stored_as_base64_data(kube: Kube) -> None:
    """Real API server: stringData is write-only, merged into data base64-encoded."""
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"token": "abc"}}
    await kube.create("default", "secrets", secret)
    stored = await kube.get(path("default", "secrets", "s"))
    assert stored is not None and "stringData" not in stored
    assert base64.b64decode(stored["data"]["token"]) == b"abc"


async def test_new_pods_are_pending_and_bound_once(kube: Kube) -> None:
    """Real API server: a new pod's status is phase Pending whatever the client sent; POST pods/NAME/binding sets
    spec.nodeName, and binding a bound pod is 409."""
    await kube.create(
        "default",
        "pods",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}, "status": {"phase": "Running"}},
    )
    pod = await kube.get(path("default", "pods", "p"))
    assert pod is not None and pod["status"] == {"phase": "Pending"}
    binding = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": "p"},
        "target": {"kind": "Node", "name": "n1"},
    }
    await kube.call("POST", path("default", "pods", "p", "binding"), binding)
    pod = await kube.get(path("default", "pods", "p"))
    assert pod is not None and pod["spec"]["nodeName"] == "n1"
    with pytest.raises(ApiError) as again:
        await kube.call("POST", path("default", "pods", "p", "binding"), binding)
    assert again.value.status == 409


async def test_namespaces_are_cluster_scoped(kube: Kube) -> None:
    """Real API server: /api/v1/namespaces lists (kopf's namespace observer), creates and reads namespaces."""
    await kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": "team-a"}})
    listed = await kube.call("GET", "/api/v1/namespaces")
    assert {"default", "team-a"} <= {n["metadata"]["name"] for n in listed["items"]}
    assert listed["metadata"]["resourceVersion"].isdigit()
    assert await kube.get("/api/v1/namespaces/team-a") is not None
    assert await kube.get("/api/v1/namespaces/nope") is None


async def test_releasing_the_last_finalizer_collects_dependents(kube: Kube) -> None:
    """Real API server: when an owner held by a finalizer finally goes, the garbage collector takes its
    dependents (how an RLJob's pods go after kopf releases kuberl.io/finalizer)."""
    doc = minimal_job()
    doc["metadata"]["finalizers"] = ["kuberl.io/finalizer"]
    job = await kube.create("default", "rljobs", doc)
    assert job is not None
    owner = {"apiVersion": "kuberl.io/v1alpha1", "kind": "RLJob", "name": "job", "uid": job["metadata"]["uid"]}
    await kube.create(
        "default", "configmaps", {**_cm("child"), "metadata": {"name": "child", "ownerReferences": [owner]}}
    )
    await kube.delete("default", "rljobs", "job")
    assert await kube.get(path("default", "configmaps", "child")) is not None  # the owner is only terminating
    await kube.merge_patch(path("default", "rljobs", "job"), {"metadata": {"finalizers": []}})
    assert await kube.get(path("default", "configmaps", "child")) is None


async def test_scale_subresource_maps_to_the_rollout_pin(kube: Kube) -> None:
    """Real API server with the CRD's scale subresource (`kubectl scale rlj job --replicas 2`): reads and writes
    .spec.rollout.replicas, reports .status.rolloutReplicas and the selector, validates like any spec change."""
    await kube.create("default", "rljobs", minimal_job(rollout={"minReplicas": 1, "maxReplicas": 3}))
    url = path("default", "rljobs", "job", "scale")
    await kube.merge_patch(
        path("default", "rljobs", "job", "status"), {"status": {"rolloutReplicas": 1, "rolloutSelector": "a=b"}}
    )
    scale = await kube.merge_patch(url, {"spec": {"replicas": 2}})
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 2
    assert scale["status"] == {"replicas": 1, "selector": "a=b"}
    job = await kube.get(path("default", "rljobs", "job"))
    assert job is not None and job["spec"]["rollout"]["replicas"] == 2 and job["metadata"]["generation"] == 2
    with pytest.raises(ApiError) as beyond:
        await kube.merge_patch(url, {"spec": {"replicas": 9}})
    assert beyond.value.status == 422 and "spec.rollout" in str(beyond.value)
