"""Options and fixtures shared by every tier: where the end-to-end tier finds its cluster; the real control plane."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.controlplane import ASSETS_HELP, ControlPlane, assets_dir


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kuberl")
    group.addoption(
        "--kube-config",
        metavar="PATH",
        default=None,
        help="run the end-to-end tier against the cluster of this kubeconfig instead of the suite's own control plane",
    )
    group.addoption(
        "--no-test-kubelet",
        action="store_true",
        help="the cluster has real nodes: do not run pods as local processes (needs --worker-image)",
    )
    group.addoption(
        "--worker-image",
        metavar="IMAGE",
        default=None,
        help="the worker image the operator gives job pods on a cluster with real nodes (KUBERL_WORKER_IMAGE)",
    )
    group.addoption(
        "--checkpoint-access-mode",
        default="ReadWriteOnce",
        help="access mode of the checkpoint PVC the tier creates on real nodes (ReadWriteMany for multi-node)",
    )


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A real etcd + kube-apiserver + kube-controller-manager, once per test run (a few seconds to start).

    Missing binaries fail the test, as a missing helm does: `make tools` unpacks them (support/controlplane.py).
    """
    assets = assets_dir()
    if assets is None:
        raise AssertionError(f"no Kubernetes control plane binaries: {ASSETS_HELP}")
    plane = ControlPlane(assets, tmp_path_factory.mktemp("control-plane")).start()
    try:
        yield plane
    finally:
        plane.stop()
