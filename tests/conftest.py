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
        help="the cluster has real nodes: do not run pods as local processes (needs the worker image)",
    )
