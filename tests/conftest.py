"""Options shared by every tier: where the end-to-end tier finds its cluster."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kuberl")
    group.addoption(
        "--kube-config",
        metavar="PATH",
        default=None,
        help="run the end-to-end tier against the cluster of this kubeconfig instead of the emulated one",
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
