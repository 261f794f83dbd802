"""Node objects and Leases for the test kubelet on a real API server, as a kubelet's node status loop keeps them."""

from __future__ import annotations

import datetime

from kuberl_operator.kube import ApiError, Kube

LEASE_RENEW_SECONDS = 10  # a real kubelet renews every 10 s; the node lifecycle controller allows 40-50 s
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


async def heartbeat(kube: Kube, nodes: tuple[str, ...], register: bool) -> None:
    """Register the nodes (when `register`), report them Ready and renew their Leases."""
    now = datetime.datetime.now(datetime.UTC)
    stamp, micro = now.strftime("%Y-%m-%dT%H:%M:%SZ"), now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for node in nodes:
        if register:
            labels = {"kubernetes.io/hostname": node, "kuberl.io/test-kubelet": "true"}
            try:
                await kube.call("POST", "/api/v1/nodes", {"metadata": {"name": node, "labels": labels}})
            except ApiError as error:
                if error.status != 409:
                    raise
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "the kuberl test kubelet is posting ready status",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110"}
        addresses = [{"type": "InternalIP", "address": "127.77.0.1"}, {"type": "Hostname", "address": node}]
        status = {"conditions": [ready], "capacity": capacity, "allocatable": capacity, "addresses": addresses}
        await kube.merge_patch(f"/api/v1/nodes/{node}/status", {"status": status})
        spec = {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": micro}
        if await kube.get(f"{LEASES}/{node}") is None:
            await kube.call("POST", LEASES, {"metadata": {"name": node}, "spec": spec})
        else:
            await kube.merge_patch(f"{LEASES}/{node}", {"spec": spec})


async def delete_nodes(kube: Kube, nodes: tuple[str, ...]) -> list[str]:
    """Delete the nodes (their pods are then PodGC's); the errors, as text."""
    errors = []
    for node in nodes:
        try:
            await kube.call("DELETE", f"/api/v1/nodes/{node}")
        except ApiError as error:
            if error.status != 404:
                errors.append(repr(error))
    return errors
