"""Pods and Service of a job's reward server (spec.rewardServer): pure builders, as in builders.py."""

from __future__ import annotations

import copy
from typing import Any

from kuberl_operator.api.rljob import RLJob
from kuberl_operator.builders import (
    DEFAULT_WORKER_IMAGE,
    LABEL_JOB,
    LABEL_ROLE,
    Manifest,
    _avoid,
    _meta,
    _security,
    pod_name,
)
from kuberl_workers.config import ENV_REWARD_PORT

ROLE = "reward"
MAIN_CONTAINER = "reward"


def reward_service(job: str) -> str:
    """The headless Service giving each reward server pod a DNS name."""
    return f"{job}-reward"


def reward_server_urls(job: RLJob) -> tuple[str, ...]:
    """Base URL of each replica (`http://<pod>.<service>.<namespace>.svc:<port>`); () without a reward server."""
    server = job.spec.rewardServer
    if server is None:
        return ()
    name, namespace = job.metadata.name, job.metadata.namespace or "default"
    return tuple(
        f"http://{pod_name(name, ROLE, i)}.{reward_service(name)}.{namespace}.svc:{server.port}"
        for i in range(server.replicas)
    )


def build_reward_service(job: RLJob) -> Manifest | None:
    server, name = job.spec.rewardServer, job.metadata.name
    if server is None:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(job, reward_service(name), ROLE),
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_JOB: name, LABEL_ROLE: ROLE},
            "ports": [{"name": "reward", "port": server.port, "targetPort": "reward"}],
        },
    }


def build_reward_pod(
    job: RLJob, index: int, image: str = DEFAULT_WORKER_IMAGE, avoid_nodes: list[str] | None = None
) -> Manifest:
    """Reward server pod `index`: the user's template, with the port variable, the port, a TCP readiness probe
    unless the template has one, restartPolicy Never (the operator recreates it) and kuberl's security defaults
    (the template's own securityContext wins).
    """
    server = job.spec.rewardServer
    assert server is not None, "no spec.rewardServer"
    name = job.metadata.name
    template = copy.deepcopy(server.template)
    pod_spec: dict[str, Any] = dict(template.get("spec") or {})
    containers = [dict(c) for c in pod_spec.get("containers") or []] or [{}]
    main = next((c for c in containers if c.get("name") == MAIN_CONTAINER), containers[0])
    env = [e for e in main.get("env") or [] if e.get("name") != ENV_REWARD_PORT]
    main.update(
        {
            "name": main.get("name") or MAIN_CONTAINER,
            "image": main.get("image") or job.spec.image or image,
            "env": [{"name": ENV_REWARD_PORT, "value": str(server.port)}, *env],
            "ports": [{"name": "reward", "containerPort": server.port}],
            "readinessProbe": main.get("readinessProbe") or {"tcpSocket": {"port": server.port}, "periodSeconds": 5},
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *(main.get("volumeMounts") or [])],
            "securityContext": {**_security(), **(main.get("securityContext") or {})},
        }
    )
    pod_spec.update(
        {
            "containers": containers,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "hostname": pod_name(name, ROLE, index),
            "subdomain": reward_service(name),
            "volumes": [{"name": "tmp", "emptyDir": {}}, *(pod_spec.get("volumes") or [])],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, **(pod_spec.get("securityContext") or {})},
        }
    )
    if avoid_nodes:
        pod_spec["affinity"] = _avoid(pod_spec.get("affinity"), avoid_nodes)
    metadata = _meta(job, pod_name(name, ROLE, index), ROLE, index)
    user_meta = template.get("metadata") or {}
    metadata["labels"] = {**(user_meta.get("labels") or {}), **metadata["labels"]}
    if user_meta.get("annotations"):
        metadata["annotations"] = dict(user_meta["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
