"""The end-to-end tier: the real operator process against a cluster, with the test kubelet running real workers.

Without options the cluster is the emulated one (tests/support/cluster.py: kmock's API emulator, extended);
`--kube-config PATH` points the same tests at a real cluster, `--no-test-kubelet` leaves pods to its real nodes
(with `--worker-image IMAGE`): then the API-only test runs (deletions as faults, completion, garbage collection) and
the tests that kill processes or read the kubelet's files say they need the test kubelet.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.apiserver import EmulatedApiServer
from support.cluster import EmulatedCluster
from support.kubeapi import Api, Cluster, Operator, start_operator, stop_operator
from support.kubelet import TestKubelet
from support.prometheus import PrometheusServer


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    given = request.config.getoption("--kube-config")
    namespace = f"kuberl-e2e-{uuid.uuid4().hex[:6]}"
    # a module may name its own API server class (EMULATOR = ...), e.g. one that can trap the operator's requests
    emulated = None if given else EmulatedCluster(getattr(request.module, "EMULATOR", EmulatedApiServer)).start()
    if emulated is None:
        kubeconfig = Path(given)
    else:
        kubeconfig = emulated.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")
    api = Api(kubeconfig, namespace)
    api.run(lambda kube: kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}}))
    try:
        yield Cluster(
            kubeconfig,
            api,
            emulated.emulator if emulated else None,
            request.config.getoption("--worker-image"),
            request.config.getoption("--checkpoint-access-mode"),
        )
    finally:
        api.run(lambda kube: kube.call("DELETE", f"/api/v1/namespaces/{namespace}"))
        if emulated is not None:
            emulated.stop()


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """`kuberl operator` as a process, exactly as the container runs it (standalone, one namespace)."""
    operator = start_operator(cluster, tmp_path_factory.mktemp("operator"))
    try:
        yield operator
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
    kubelet = TestKubelet(cluster.api.connect, cluster.api.namespace, root).start()
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
