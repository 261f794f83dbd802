"""Pins each behaviour the emulated API server adds to kmock, with what a real kube-apiserver does."""

from __future__ import annotations

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
    assert invalid.value.status == 422 and "spec.rollout.minReplicas: must be <= maxReplicas (3 > 1)" in str(
        invalid.value
    )
    with pytest.raises(ApiError) as immutable:
        await kube.merge_patch(path("default", "rljobs", "job"), {"spec": {"trainer": {"replicas": 3}}})
    assert immutable.value.status == 422 and "is immutable (2 -> 3)" in str(immutable.value)


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
