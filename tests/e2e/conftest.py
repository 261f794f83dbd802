"""The end-to-end tier: the real operator process against a cluster, with the test kubelet running real workers.

Without options the cluster is the suite's own real control plane (etcd, kube-apiserver, kube-controller-manager:
tests/support/controlplane.py), with kuberl installed by `helm template | kubectl apply` and the operator running
as the chart's ServiceAccount (so the chart's RBAC is what allows or denies it). A module that needs to trap the
operator's requests names an emulated API server (`EMULATOR = ...`, tests/support/cluster.py: kmock's, extended)
and gets that instead. `--kube-config PATH` points the same tests at another real cluster, `--no-test-kubelet`
leaves pods to its real nodes (with `--worker-image IMAGE`): then the API-only test runs (deletions as faults,
completion, garbage collection) and the tests that kill processes or read the kubelet's files say they need the
test kubelet.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.apiserver import EmulatedApiServer
from support.cluster import EmulatedCluster
from support.controlplane import ControlPlane
from support.kubeapi import Api, Cluster, Operator, delete_all_jobs, start_operator, stop_operator
from support.kubelet import TestKubelet
from support.prometheus import PrometheusServer
from support.realcluster import (
    RELEASE_NAMESPACE,
    create_namespace,
    delete_jobs_then_namespace,
    install_chart,
    service_account_kubeconfig,
)


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    given = request.config.getoption("--kube-config")
    namespace = f"kuberl-e2e-{uuid.uuid4().hex[:6]}"
    emulator_class = getattr(request.module, "EMULATOR", None)
    if given:
        yield from _given_cluster(request, Path(given), namespace)
    elif emulator_class is not None:
        yield from _emulated_cluster(request, tmp_path_factory, emulator_class, namespace)
    else:
        plane: ControlPlane = request.getfixturevalue("control_plane")
        yield from _real_cluster(request, tmp_path_factory, plane, namespace)


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {
        "worker_image": request.config.getoption("--worker-image"),
        "access_mode": request.config.getoption("--checkpoint-access-mode"),
    }


def _given_cluster(request: pytest.FixtureRequest, kubeconfig: Path, namespace: str) -> Iterator[Cluster]:
    api = Api(kubeconfig, namespace)
    api.run(lambda kube: kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}}))
    try:
        yield Cluster(kubeconfig, api, None, **_options(request))
    finally:
        delete_jobs_then_namespace(kubeconfig, namespace)


def _emulated_cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    emulator_class: type[EmulatedApiServer],
    namespace: str,
) -> Iterator[Cluster]:
    emulated = EmulatedCluster(emulator_class).start()
    kubeconfig = emulated.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")
    api = Api(kubeconfig, namespace)
    api.run(lambda kube: kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}}))
    try:
        yield Cluster(kubeconfig, api, emulated.emulator, **_options(request))
    finally:
        emulated.stop()


def _real_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, plane: ControlPlane, namespace: str
) -> Iterator[Cluster]:
    """The README's install on the suite's control plane; the operator gets the chart's ServiceAccount token."""
    create_namespace(plane.kubeconfig, namespace)
    install_chart(plane.kubeconfig, namespace)
    folder = tmp_path_factory.mktemp("kube")
    operator_config = service_account_kubeconfig(plane, RELEASE_NAMESPACE, "kuberl", folder / "operator")
    api = Api(plane.kubeconfig, namespace)
    try:
        yield Cluster(plane.kubeconfig, api, None, operator_kubeconfig=operator_config, **_options(request))
    finally:
        delete_jobs_then_namespace(plane.kubeconfig, namespace)


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """`kuberl operator` as a process, exactly as the container runs it (standalone, one namespace). At teardown
    the module's RLJobs are deleted while it still runs (it releases their finalizers), then it stops."""
    operator = start_operator(cluster, tmp_path_factory.mktemp("operator"))
    try:
        yield operator
    finally:
        try:
            delete_all_jobs(cluster.api, timeout=60)
        finally:
            stop_operator(operator)


@pytest.fixture(scope="module")
def kubelet(
    request: pytest.FixtureRequest, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestKubelet | None]:
    if request.config.getoption("--no-test-kubelet"):
        yield None
        return
    root = tmp_path_factory.mktemp("kubelet")
    models = root / "pvc" / "models"
    models.mkdir(parents=True)
    from kuberl_workers.models.tiny import ensure_tiny

    shutil.copytree(ensure_tiny(0), models / "tiny")  # what a model PVC would hold
    real = cluster.emulator is None  # a real API server: PodGC and node lifecycle need Node objects and Leases
    # export pods are read through the API server's pod proxy, which refuses loopback pod IPs
    kubelet = TestKubelet(
        cluster.api.connect, cluster.api.namespace, root, register_nodes=real, routable=lambda pod: "-export-" in pod
    ).start()
    try:
        yield kubelet
    finally:
        kubelet.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """The real `prometheus` on a loopback port, with no targets until a test names them (pod IPs come late)."""
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus")).start()
    try:
        yield server
    finally:
        server.stop()
