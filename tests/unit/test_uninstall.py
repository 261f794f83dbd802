"""#15 kind 2: uninstall in the order docs/install.md gives leaves nothing stuck (the chart's pre-delete hook).

Against the emulated API server (tests/support/apiserver.py: finalizers hold deletion, owner references are
garbage-collected, JSON patch `test` fails with 422). It has no Deployment controller: the test plays its part,
deleting the operator's pod once the hook has scaled the Deployment to 0.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kmock import ResourceInfo

from kuberl_operator import uninstall
from kuberl_operator.cli import parser
from kuberl_operator.kube import Kube, path
from support.apiserver import EmulatedApiServer
from support.specs import minimal_job

OPERATOR_LABELS = {"app.kubernetes.io/name": "kuberl", "app.kubernetes.io/component": "operator"}
DEPLOYMENT = uninstall.deployment_path("kuberl-system", "kuberl")


@pytest.fixture
def apps(api: tuple[EmulatedApiServer, Kube]) -> Kube:
    api[0].resources["apps/v1/deployments"] = ResourceInfo(namespaced=True)
    return api[1]


async def _install(kube: Kube, namespace: str = "default", name: str = "job", finalizers: Any = None) -> None:
    """A running operator (Deployment + pod) and an RLJob it holds with its finalizer, with a pod of the job."""
    if await kube.get(DEPLOYMENT) is None:
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "kuberl", "namespace": "kuberl-system"},
            "spec": {"replicas": 1, "selector": {"matchLabels": OPERATOR_LABELS}, "template": {}},
        }
        await kube.call("POST", "/apis/apps/v1/namespaces/kuberl-system/deployments", deployment)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kuberl-abc", "labels": OPERATOR_LABELS}}
        await kube.create("kuberl-system", "pods", pod)
    doc = minimal_job()
    doc["metadata"].update(name=name, namespace=namespace, finalizers=finalizers or [uninstall.FINALIZER])
    job = await kube.create(namespace, "rljobs", doc)
    assert job is not None
    owner = {"apiVersion": "kuberl.io/v1alpha1", "kind": "RLJob", "name": name, "uid": job["metadata"]["uid"]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-controller-0", "ownerReferences": [owner]}}
    await kube.create(namespace, "pods", pod)


async def _deployment_controller(kube: Kube) -> None:
    """What the Deployment controller does once replicas is 0: the operator's pod goes."""
    while True:
        found = await kube.get(DEPLOYMENT)
        if found is not None and found["spec"]["replicas"] == 0:
            await kube.delete("kuberl-system", "pods", "kuberl-abc")
            return
        await asyncio.sleep(0.05)


async def test_the_documented_order_leaves_nothing_stuck(apps: Kube) -> None:
    kube = apps
    await _install(kube)
    await _install(kube, "team-b", "other", finalizers=["example.com/keep", uninstall.FINALIZER])
    # before the fix: the finalizer holds the job in Terminating and its pod runs on
    gc = asyncio.create_task(_deployment_controller(kube))
    released = await uninstall.run(kube, "kuberl-system", "kuberl", (), timeout=10)  # helm uninstall
    await gc
    assert sorted(released) == ["default/job", "team-b/other"]
    assert (await kube.get(DEPLOYMENT) or {})["spec"]["replicas"] == 0
    job = await kube.get(path("default", "rljobs", "job"))
    assert job is not None and not job["metadata"].get("finalizers")  # the RLJob stays, as documented
    other = await kube.get(path("team-b", "rljobs", "other"))
    assert other is not None and other["metadata"]["finalizers"] == ["example.com/keep"]  # not ours: kept
    await kube.delete("default", "rljobs", "job")  # kubectl delete crd deletes every RLJob: nothing holds it
    assert await kube.get(path("default", "rljobs", "job")) is None
    assert await kube.get(path("default", "pods", "job-controller-0")) is None  # collected with its job


async def test_only_the_watched_namespaces_and_a_missing_deployment_is_fine(apps: Kube) -> None:
    kube = apps
    await _install(kube, "team-a", "a")
    await _install(kube, "team-b", "b")
    await kube.delete("kuberl-system", "pods", "kuberl-abc")
    assert await uninstall.run(kube, "kuberl-system", "gone", ("team-a",), timeout=1) == ["team-a/a"]
    assert (await kube.get(path("team-b", "rljobs", "b")) or {})["metadata"]["finalizers"] == [uninstall.FINALIZER]


async def test_an_operator_that_does_not_stop_is_named_and_nothing_is_released(apps: Kube) -> None:
    kube = apps
    await _install(kube)
    with pytest.raises(TimeoutError, match="did not stop within 0s: kuberl-abc"):
        await uninstall.run(kube, "kuberl-system", "kuberl", (), timeout=0.2)
    job = await kube.get(path("default", "rljobs", "job"))
    assert job is not None and job["metadata"]["finalizers"] == [uninstall.FINALIZER]  # a running operator re-adds


def test_the_hook_command_line_parses() -> None:
    args = parser().parse_args(
        ["release-finalizers", "--operator-namespace=ns", "--deployment=kuberl", "--namespace=a", "--timeout=5"]
    )
    assert (args.operator_namespace, args.deployment, args.namespace, args.timeout) == ("ns", "kuberl", ["a"], 5.0)
