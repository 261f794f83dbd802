"""The end-to-end tier: the real operator process against a cluster, with the test kubelet running real workers.

Without options the cluster is the emulated one (tests/support/cluster.py: kmock's API emulator, extended);
`--kube-config PATH` points the same tests at a real cluster, `--no-test-kubelet` leaves pods to its real nodes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from support.cluster import EmulatedCluster
from support.kubeapi import OPERATOR_TOKEN, Api, Cluster, Operator
from support.kubelet import TestKubelet
from support.net import free_port, http_get
from support.prometheus import PrometheusServer


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    given = request.config.getoption("--kube-config")
    namespace = f"kuberl-e2e-{uuid.uuid4().hex[:6]}"
    emulated = None if given else EmulatedCluster().start()
    if emulated is None:
        kubeconfig = Path(given)
    else:
        kubeconfig = emulated.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")
    api = Api(kubeconfig, namespace)
    api.run(lambda kube: kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}}))
    try:
        yield Cluster(kubeconfig, api, emulated.emulator if emulated else None)
    finally:
        api.run(lambda kube: kube.call("DELETE", f"/api/v1/namespaces/{namespace}"))
        if emulated is not None:
            emulated.stop()


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """`kuberl operator` as a process, exactly as the container runs it (standalone, one namespace)."""
    folder = tmp_path_factory.mktemp("operator")
    log = folder / "operator.log"
    kubeconfig = cluster.kubeconfig
    if cluster.emulator is not None:  # its own token, so that its requests can be told from the test's and kubelet's
        config = yaml.safe_load(kubeconfig.read_text())
        config["users"][0]["user"]["token"] = OPERATOR_TOKEN
        kubeconfig = folder / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
    metrics_port, health_port = free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBERL_OPERATOR_METRICS_PORT": str(metrics_port)}
    env["KUBERL_OPERATOR_RESYNC_SECONDS"] = "2"  # status.step follows the controller closely enough to aim faults
    command = [sys.executable, "-m", "kuberl_operator.cli", "operator", "--standalone"]
    command += ["--namespace", cluster.api.namespace, "--liveness", f"http://127.0.0.1:{health_port}/healthz"]
    process = subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not _healthy(health_port):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)
    try:
        yield Operator(process, metrics_port, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _healthy(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}/healthz", timeout=1)[0] == 200
    except OSError:
        return False


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
